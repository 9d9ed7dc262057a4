"""LoRA SFT end to end through Ray + DeepSpeed: two ZeRO-3 ranks train multi-turn chats, the loss and the
held-out loss fall, and the export is a plain HF model (adapter merged) that reproduces the saved adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylhf.config import SFTConfig, build_config
from raylhf.driver.weight_sync import sync_weights

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_lora_sft_on_two_zero3_ranks_exports_a_merged_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from actors.common import forward_logprobs
    from raylhf.demo.tasks.arithmetic import write_jsonl
    from raylhf.demo.tasks.chat_data import two_turn_chats
    from raylhf.trainers.sft import run_sft

    train = write_jsonl(two_turn_chats(11, seed=5, max_operand=9), tmp_path / "chat.jsonl")
    cfg = build_config(SFTConfig, overrides=[
        ("model.path", str(tiny_model_dir)), ("data.train_files", [str(train)]), ("data.shuffle", False),
        ("sft.num_steps", 4), ("sft.batch_size", 4), ("sft.eval_fraction", 0.25), ("sft.eval_batch_size", 2),
        ("sft.loss_scale", "last_round"),
        ("policy.tuner.type", "lora"), ("policy.tuner.lora_rank", 8), ("policy.tuner.lora_dropout", 0.0),
        ("policy.lr", 5e-3), ("policy.num_workers", 2), ("policy.zero_stage", 3), ("policy.micro_batch_size", 2),
        ("policy.num_cpus_per_worker", 1), ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False),
    ])
    res = run_sft(cfg)
    ckpt, history = res.checkpoint, res.history

    train_rows = [r for r in history if "loss/ce" in r]
    evals = [(r["step"], r["eval/loss"]) for r in history if "eval/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [s for s, _ in evals] == [0, 4]  # 3 held-out rows, in calls of 2 padded to the 2 ranks
    assert train_rows[-1]["loss/ce"] < train_rows[0]["loss/ce"]
    assert evals[-1][1] < evals[0][1]
    assert evals[0][1] == pytest.approx(train_rows[0]["loss/ce"], rel=0.2)  # same task, untrained model

    assert ckpt is not None
    out = Path(ckpt)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # plain transformers, no peft
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                        out / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = [torch.arange(3, 40), torch.arange(50, 70)]
    with torch.no_grad():
        lp_merged, attn, _ = forward_logprobs(merged, ids)
        lp_adapter, _, _ = forward_logprobs(adapter, ids)
        lp_base, _, _ = forward_logprobs(base, ids)
    assert float(((lp_merged - lp_adapter) * attn).abs().max()) < 1e-5
    assert float(((lp_merged - lp_base) * attn).abs().max()) > 1e-3  # the adapter did train

    # raylhf eval sft on the export (a fresh, zero LoRA on the merged weights): the run's last held-out loss
    from raylhf.trainers.sft import evaluate

    got = evaluate(cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": ckpt})}))
    assert got["eval/loss"] == pytest.approx(evals[-1][1], rel=1e-5)


def test_lora_policy_syncs_merged_weights_into_vllm(tiny_model_dir: Path) -> None:
    """GRPO with LoRA: after an update, weight sync sends the base model's names with the adapter merged, and
    the engine's log-probs match the LoRA policy's (fp32, the full-tuning parity tolerance 2e-4)."""
    from raylhf.config.sections import PolicyConfig, RolloutConfig, TunerConfig
    from raylhf.core.batch import Objective
    from raylhf.driver.startup import start_policy, start_rollout

    from .helpers import engine_policy_logprob_diff, tiny_batch

    lora = TunerConfig(type="lora", lora_rank=4, lora_dropout=0.0)
    policy = start_policy(PolicyConfig(lr=2e-2, micro_batch_size=4, tuner=lora), str(tiny_model_dir), "float32",
                             10, 0, "PACK")
    rollout = start_rollout(RolloutConfig(max_new_tokens=8), str(tiny_model_dir), "float32", 256, "PACK")
    try:
        batch = tiny_batch(8)
        policy.call_split("train_step", batch, Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch))
        seqs = [x.tolist() for x in tiny_batch(4, seed=1).input_ids]
        stale = engine_policy_logprob_diff(policy, rollout, seqs)
        sync_weights(policy, rollout, bucket_mb=1)
        fresh = engine_policy_logprob_diff(policy, rollout, seqs)
        print(f"LoRA policy: logprob diff before sync {stale:.3g}, after {fresh:.3g}")
        assert stale > 1e-2, "the update should have moved the policy away from the engine"
        assert fresh < 2e-4
    finally:
        policy.shutdown()
        rollout.shutdown()
