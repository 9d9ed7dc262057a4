"""Reward-model training end to end on a real local Ray cluster (DeepSpeed on gloo): a few Bradley-Terry steps
from a tiny causal LM, resumed from its checkpoint, and the export scoring completions in a RewardWorker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from raylhf.config import RMConfig, build_config
from raylhf.config.sections import RewardConfig
from raylhf.demo.tasks.rm_pairs import arithmetic_pair_splits
from raylhf.driver.startup import start_reward
from rewards.base import RewardBatch
from rewards.model import SequenceRewardModel

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _pairs_file(path: Path, n: int) -> Path:
    train, _ = arithmetic_pair_splits(n, 4, max_operand=9)
    with path.open("w") as f:
        for k, p in enumerate(train):
            f.write(json.dumps({"prompt": p.example.messages, "chosen": p.example.chosen,
                                "rejected": p.example.rejected, "gap": k % 2}) + "\n")
    return path


def test_rm_trains_resumes_and_scores_in_a_reward_worker(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.rm import run_rm

    base = {
        "model.path": str(tiny_model_dir), "data.train_files": str(_pairs_file(tmp_path / "pairs.jsonl", 40)),
        "rm.num_steps": 3, "rm.batch_size": 8, "rm.eval_fraction": 0.2, "rm.margin_column": "gap",
        "policy.micro_batch_size": 4, "policy.lr": 1e-3, "policy.num_cpus_per_worker": 1,
        "checkpoint.save_every": 2, "logging.run_dir": str(tmp_path / "runs"), "logging.run_name": "rm",
        "logging.progress": False,
    }
    res = run_rm(build_config(RMConfig, overrides=list(base.items())))
    train_rows = [h for h in res.history if "loss/total" in h]
    assert [h["step"] for h in train_rows] == [1, 2, 3]
    for key in ("loss/bt", "rewards/accuracies", "rewards/margins", "grad_norm", "lr"):
        assert key in train_rows[-1], key
    assert res.eval_before["eval/loss"] > 0 and 0.0 <= res.eval_after["eval/accuracy"] <= 1.0
    assert res.eval_after["eval/margin"] != res.eval_before["eval/margin"]  # the model moved

    # resume after step 2: the third step repeats what the uninterrupted run did
    step2 = tmp_path / "runs" / "rm" / "checkpoints" / "step-000002"
    assert (step2 / "hf" / "config.json").exists()
    again = run_rm(build_config(RMConfig, overrides=[*base.items(), ("checkpoint.resume", str(step2)),
                                                     ("checkpoint.save_final", False)]))
    resumed = [h for h in again.history if h.get("step") == 3 and "loss/total" in h][-1]
    assert resumed["loss/total"] == pytest.approx(train_rows[-1]["loss/total"], rel=1e-4)

    # raylhf eval rm on the export: the run's last held-out numbers
    from raylhf.trainers.rm import evaluate

    assert res.checkpoint
    got = evaluate(build_config(RMConfig, overrides=[*base.items(), ("model.path", res.checkpoint)]))
    assert got == pytest.approx(res.eval_after, abs=1e-6)

    # the export is a one-output sequence classifier that a reward actor loads and scores with
    exported = AutoConfig.from_pretrained(res.checkpoint)
    assert exported.num_labels == 1 and exported.architectures == ["LlamaForSequenceClassification"]
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    replies = ["2+3=5", "5", "2+3=7"]
    items = [{"prompt": msgs[0]["content"], "completion": c, "completion_ids": [], "prompt_messages": msgs,
              "rendered_prompt": ""} for c in replies]
    cfg = RewardConfig(functions=[], models=[{"name": "rm", "path": res.checkpoint, "dtype": "float32"}])
    reward = start_reward(cfg, {})
    try:
        out = reward.call("score", items)[0]
    finally:
        reward.shutdown()
    here = SequenceRewardModel({"name": "rm", "path": res.checkpoint, "dtype": "float32"}).score_texts(
        RewardBatch(prompts=[msgs[0]["content"]] * 3, completions=replies, prompt_messages=[msgs] * 3))
    assert out["per_function"]["rm"] == pytest.approx(here, abs=1e-5)
    assert out["total"] == pytest.approx(here, abs=1e-5) and len(set(here)) == 3
