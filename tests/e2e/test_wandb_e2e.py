"""W&B end to end: a 2-step GRPO on the tiny model with ``logging.report_to: [tensorboard, wandb]`` under
WANDB_MODE=offline (no network, no API key); the metrics are read back from the offline run's
transaction log under the run dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_logging import (  # tests/ is on sys.path (rootdir conftest)
    read_complete_wandb_run,
    use_offline_wandb,
)

from raylhf.config import GRPOConfig, build_config
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_grpo_reports_to_wandb_offline(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    from raylhf.trainers.grpo import run_grpo

    use_offline_wandb(monkeypatch, tmp_path)
    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    cfg = build_config(GRPOConfig, overrides=list({
        "model.path": str(tiny_model_dir), "data.train_files": [str(train)], "data.columns": cols,
        "grpo.num_steps": 2, "grpo.prompt_batch_size": 4, "grpo.samples_per_prompt": 4,
        "rollout.max_new_tokens": 8, "policy.micro_batch_size": 8,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.run_name": "wandb-e2e",
        "logging.report_to": ["tensorboard", "wandb"], "logging.wandb_tags": ["e2e"],
        "checkpoint.save_final": False,
        "reward.functions": [{"name": "accuracy"}],
    }.items()))
    res = run_grpo(cfg)
    assert [h["step"] for h in res.history] == [1, 2]

    run = read_complete_wandb_run(res.run_dir)
    assert run.get("complete"), "the offline W&B log never got its exit record"
    assert run["name"] == "wandb-e2e" and run["tags"] == ["e2e"]
    assert run["config"]["grpo"]["num_steps"] == 2  # the resolved config is the run config
    assert run["config"]["logging"]["report_to"] == ["tensorboard", "wandb"]
    for row in res.history:  # every metric of metrics.jsonl, same name, same step
        logged = run["history"][row["step"]]
        for k, v in row.items():
            if k != "step":
                assert logged[k] == pytest.approx(v, nan_ok=True), (row["step"], k)
    assert (res.run_dir / "curves.png").exists()
    assert run["history"][2]["curves/_type"] == "image-file"
    assert any((res.run_dir / "tensorboard").iterdir())

    out, err = capfd.readouterr()  # pytest's stdout is not a terminal: plain lines, no bar
    steps = [ln for ln in out.splitlines() if ln.startswith("[step ")]
    assert [ln.split("]")[0] for ln in steps] == ["[step 1", "[step 2"]
    assert not any("\r" in ln for ln in steps) and "grpo: 100%" not in out + err
    # best effort (worker logs reach the driver asynchronously): the filtered reload warning never shows
    assert "RotaryEmbedding: Failed to load weights" not in out + err
