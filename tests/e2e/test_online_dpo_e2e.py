"""Online DPO through the real driver: rollouts paired best vs worst, DPO updates with the reference group."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylhf.config import OnlineDPOConfig, build_config
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_online_dpo_two_rounds(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.online_dpo import run_online_dpo

    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    digits = tmp_path / "digits.py"  # dense: a random model's completions get distinct rewards, so pairs form
    digits.write_text("def digits(completions, **kw):\n"
                      "    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]\n")
    cfg = build_config(OnlineDPOConfig, overrides=list({
        "model.path": str(tiny_model_dir), "data.train_files": [str(train)], "data.columns": cols,
        "reward.functions": [{"name": f"{digits}:digits"}], "online_dpo.num_steps": 2,
        "online_dpo.prompt_batch_size": 4, "online_dpo.samples_per_prompt": 4, "policy.lr": 1e-3,
        "rollout.max_new_tokens": 8, "policy.micro_batch_size": 4, "rollout.num_cpus_per_engine": 1,
        "policy.num_cpus_per_worker": 1, "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
        "checkpoint.save_final": False,
    }.items()))
    res = run_online_dpo(cfg)
    assert "reference" in res.placement
    rows = [r for r in res.history if "dpo/pairs" in r]
    assert [r["step"] for r in rows] == [1, 2]
    trained = [r for r in rows if "loss/total" in r]
    assert trained, rows
    for key in ("rewards/accuracies", "rewards/margins", "grad_norm", "time/sync"):
        assert key in trained[0], key
    assert trained[0]["loss/total"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at round 1: log 2
