"""Optimizer and tuner plugins end to end through Ray + DeepSpeed (+ vLLM):

* an SFT run with the example plugin file (``plugins:`` in the config, so the policy actors load it through
  RAYLHF_PLUGINS) on ZeRO-2 steps with the file's SGD factory and its own step-decay schedule;
* GRPO-style weight sync with the ``full``, ``lora`` and ``ia3`` tuners: after a train step and a sync the vLLM
  engine's log-probs moved and equal the policy's; the merged export of an IA3 policy reproduces it; the bytes
  and seconds of each sync are printed (docs/performance.md quotes them).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from raylhf.config import SFTConfig, build_config
from raylhf.driver.weight_sync import sync_weights

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "optimizer_sgd.py"


def test_plugin_sgd_factory_steps_an_sft_run_on_zero2(tmp_path: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.demo.tasks.arithmetic import write_jsonl
    from raylhf.demo.tasks.chat_data import two_turn_chats
    from raylhf.trainers.sft import run_sft

    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    train = write_jsonl(two_turn_chats(16, seed=3, max_operand=9), tmp_path / "chat.jsonl")
    cfg = build_config(SFTConfig, overrides=[
        ("plugins", [str(EXAMPLE)]), ("model.path", str(tiny_model_dir)), ("data.train_files", [str(train)]),
        ("data.shuffle", False), ("sft.num_steps", 4), ("sft.batch_size", 4), ("sft.eval_fraction", 0.0),
        ("policy.optimizer", "sgd_step_decay"),
        ("policy.optimizer_kwargs", {"momentum": 0.9, "decay_every": 1, "decay": 0.5}),
        ("policy.lr", 0.4), ("policy.zero_stage", 2), ("policy.micro_batch_size", 4),
        ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False), ("checkpoint.save_final", False),
    ])
    history = run_sft(cfg).history
    rows = [r for r in history if "loss/ce" in r]
    print("SGD plugin run: lr", [r["lr"] for r in rows], "loss", [round(r["loss/ce"], 4) for r in rows])
    # the factory's StepLR halves the rate every step (the default schedule would keep policy.lr constant)
    assert [r["lr"] for r in rows] == pytest.approx([0.4, 0.2, 0.1, 0.05])
    assert rows[-1]["loss/ce"] < rows[0]["loss/ce"]


def test_full_lora_ia3_policies_sync_into_vllm(tmp_path: Path, tiny_model_dir: Path) -> None:
    import ray
    from transformers import AutoModelForCausalLM

    from actors.common import forward_logprobs
    from raylhf.config.sections import PolicyConfig, RolloutConfig, TunerConfig
    from raylhf.core.batch import Objective
    from raylhf.driver.startup import start_policy, start_rollout

    from .helpers import engine_policy_logprob_diff, tiny_batch

    rollout = start_rollout(RolloutConfig(max_new_tokens=8), str(tiny_model_dir), "float32", 256, "PACK")
    seqs = [x.tolist() for x in tiny_batch(4, seed=1).input_ids]

    def engine_lp() -> list[torch.Tensor]:
        return [torch.tensor(x[1:]) for x in rollout.call_rank0("score_logprobs", seqs, [1] * len(seqs))]

    tuners = {"full": TunerConfig(), "lora": TunerConfig(type="lora", lora_rank=4, lora_dropout=0.0),
              "ia3": TunerConfig(type="ia3")}
    lrs = {"full": 1e-3, "lora": 2e-2, "ia3": 5e-2}
    report = []
    try:
        for name, tuner in tuners.items():
            policy = start_policy(PolicyConfig(lr=lrs[name], micro_batch_size=4, tuner=tuner),
                                     str(tiny_model_dir), "float32", 10, 0, "PACK")
            try:
                sync_weights(policy, rollout, bucket_mb=64)  # the engine starts from this policy's weights
                before = engine_lp()
                batch = tiny_batch(8)
                policy.call_split("train_step", batch, Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch))
                t0 = time.perf_counter()
                refs = policy.call("export_weights", 64)[0]
                t_export = time.perf_counter() - t0
                rollout.call("load_weights", refs)
                t_sync = time.perf_counter() - t0
                nbytes = sum(t.numel() * t.element_size() for ref in refs for _, t in ray.get(ref))
                after = engine_lp()
                moved = max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))
                parity = engine_policy_logprob_diff(policy, rollout, seqs)
                report.append(f"{name}: sync {nbytes / 2**20:.2f} MiB in {t_sync:.3f} s (export {t_export:.3f} s); "
                              f"engine log-probs moved {moved:.3g}, engine vs policy {parity:.2g}")
                print(report[-1])
                assert moved > 1e-3, f"{name}: the engine's log-probs should change after the sync"
                assert parity < 2e-4, f"{name}: the engine should equal the policy after the sync"
                if name == "ia3":  # the export is a plain HF model with the IA3 vectors merged in, plus the adapter
                    out = Path(policy.call("save", str(tmp_path / "ia3"))[0])
                    assert (out / "adapter" / "adapter_config.json").is_file()
                    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
                    ids = [torch.tensor(s) for s in seqs]
                    with torch.no_grad():
                        lp, _, _ = forward_logprobs(merged, ids)
                    mine = policy.call("logprobs", ids)[0]
                    diff = max(float((lp[i, 1:len(s)] - mine[i][1:]).abs().max()) for i, s in enumerate(seqs))
                    print(f"ia3 merged export vs policy: {diff:.2g}")
                    assert diff < 1e-4
            finally:
                policy.shutdown()
    finally:
        rollout.shutdown()
        print("\n".join(report))
