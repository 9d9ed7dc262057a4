"""Placement on a fixed local cluster (4 CPUs, started by init_ray): fail at once when a group can never fit,
wait (and say who holds the resources) when other groups hold what it needs."""

from __future__ import annotations

import time

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from actors.calls import WorkerError
from actors.group import ActorGroup, BaseWorker
from raylhf.config.sections import PolicyConfig
from raylhf.driver.startup import start_policy

pytestmark = pytest.mark.slow


def test_impossible_group_fails_fast_with_the_numbers(local_ray: None) -> None:
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as err:
        # through the driver's own start function: it names the config fields that size the group
        start_policy(PolicyConfig(num_workers=8, num_cpus_per_worker=1.0), "unused", "float32", 1, 0, "PACK")
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert elapsed < 10, (elapsed, msg)
    assert "cannot place 8 x {CPU: 1} (strategy PACK)" in msg, msg
    assert "8 CPU asked in all, 4 CPU on the nodes together" in msg, msg
    assert "CPU 4 total / 4 free" in msg, msg  # the per-node table
    assert "cannot add nodes (a local cluster started by raylhf" in msg, msg
    assert "policy.num_workers, policy.num_cpus_per_worker" in msg, msg
    assert not [p for p in ray.util.placement_group_table().values() if p["state"] != "REMOVED"]


def test_group_blocked_by_another_waits_and_names_the_holder(local_ray: None, capsys: pytest.CaptureFixture[str],
                                                             ) -> None:
    holder = placement_group([{"CPU": 3.0}], name="holder")
    ray.get(holder.ready(), timeout=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkerError) as err:
            ActorGroup(BaseWorker, 2, name="reward", num_cpus=1.0, start_timeout_s=3)
        assert time.monotonic() - t0 >= 3  # waited: the holder may free its CPUs
        msg = str(err.value)
        assert "within 3s" in msg and "held by placement groups: holder (1 x {CPU: 3})" in msg, msg
        assert "CPU 4 total / 1 free" in msg, msg
        assert "[raylhf] reward: waiting for 2 x {CPU: 1}" in capsys.readouterr().out
    finally:
        remove_placement_group(holder)
