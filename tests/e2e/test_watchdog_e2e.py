"""The phase watchdog on a local cluster: a call that outlives ``call_timeout_s`` ends with PhaseTimeoutError
naming the silent ranks and where they are stuck (their Python stacks), in seconds, never a hang."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

from actors import watchdog
from actors.calls import PhaseTimeoutError
from actors.group import ActorGroup, BaseWorker
from raylhf.config.sections import RewardConfig, RewardFunctionConfig
from raylhf.driver.startup import start_reward

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module


class Napper(BaseWorker):
    def setup(self) -> None:
        pass

    def nap_on_odd_ranks(self, seconds: float) -> int:
        if self.rank % 2:
            time.sleep(seconds)
        return self.rank


def test_silent_rank_is_reported_with_its_stack(local_ray: None, capsys: pytest.CaptureFixture[str]) -> None:
    group = ActorGroup(Napper, 2, name="nappers", num_cpus=0.5, call_timeout_s=3)
    try:
        assert group.call("nap_on_odd_ranks", 0) == [0, 1]  # quick calls pass under the watchdog
        t0 = time.monotonic()
        with pytest.raises(PhaseTimeoutError) as err:
            group.call("nap_on_odd_ranks", 60)
        elapsed = time.monotonic() - t0
        msg = str(err.value)
        assert 3 <= elapsed < 15, (elapsed, msg)
        assert msg.startswith("nappers.nap_on_odd_ranks: no answer within 3s from rank(s) 1 of the 2 called"), msg
        assert "raise runtime.phase_timeout_s" in msg and "answered: 0; silent: 1" in msg, msg
        assert "--- rank 1: Napper, pid " in msg, msg
        # the thread running the call comes first, and its innermost frame is the sleep
        call_thread = msg.split("--- rank 1:", 1)[1].splitlines()[1]
        assert call_thread.endswith("(running the actor call 'nap_on_odd_ranks'):"), msg
        assert "in nap_on_odd_ranks\n      time.sleep(seconds)" in msg, msg
        assert err.value.what == "nappers.nap_on_odd_ranks" and not err.value.died
        assert "[raylhf] watchdog" in capsys.readouterr().err  # in the log even if the caller swallows it
        # an explicit timeout wins over the group's (0: no limit for this call)
        assert group.call_rank0("nap_on_odd_ranks", 0, timeout_s=0) == 0
    finally:
        group.shutdown()


class GilHolder(BaseWorker):
    def setup(self) -> None:
        pass

    def backtrack(self) -> object:
        return re.match(r"(a+)+$", "a" * 34 + "b")  # catastrophic backtracking in C: holds the GIL for minutes


def test_frozen_rank_is_named_and_dumped_by_py_spy(local_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "STACKS_WAIT_S", 2.0)
    group = ActorGroup(GilHolder, 1, name="frozen", num_cpus=0.5, call_timeout_s=2)
    try:
        with pytest.raises(PhaseTimeoutError) as err:
            group.call("backtrack")
        msg = str(err.value)
        assert "--- rank 0: no stacks: did not answer the stack request within 2s" in msg, msg
        assert "state ALIVE" in msg, msg
        if watchdog.find_py_spy() is None:
            assert "pip install py-spy" in msg, msg
        else:  # py-spy reads the frozen process from outside; without ptrace rights it says why
            assert "py-spy dump --pid" in msg, msg
            assert "backtrack" in msg or "exit 0" not in msg, msg
    finally:
        group.shutdown()


SLOW_REWARD = '''
import time


def slow_reward(completions, **kwargs):
    time.sleep(60)
    return [1.0 for _ in completions]
'''


def test_hung_reward_function_is_named(local_ray: None, tmp_path: Path) -> None:
    plugin = tmp_path / "slow_plugin.py"
    plugin.write_text(SLOW_REWARD)
    cfg = RewardConfig(functions=[RewardFunctionConfig(name=f"{plugin}:slow_reward")], num_cpus=0.5)
    group = start_reward(cfg, {}, call_timeout_s=3)
    try:
        items = [{"prompt": "1+1?", "completion": "2", "completion_ids": [5]}]
        t0 = time.monotonic()
        with pytest.raises(PhaseTimeoutError) as err:
            group.call_split("score", items)
        elapsed = time.monotonic() - t0
        msg = str(err.value)
        assert 3 <= elapsed < 15, (elapsed, msg)
        assert msg.startswith("reward.score: no answer within 3s from rank(s) 0 of the 1 called"), msg
        assert "runtime.phase_timeout_s" in msg and "--- rank 0: RewardWorker" in msg, msg
        # the actor call waits on the reward loop; the reward function sleeps in one of asyncio's threads
        assert "(running the actor call 'score')" in msg and "in run\n" in msg, msg
        assert "in slow_reward\n      time.sleep(60)" in msg, msg
    finally:
        group.shutdown()
