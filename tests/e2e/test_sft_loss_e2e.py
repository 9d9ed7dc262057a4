"""A custom SFT loss end to end through Ray + DeepSpeed: the example plugin files are loaded by the config
(``plugins``), the two policy ranks find ``sft.loss: focal`` and ``sft.loss_scale: digits`` in their own
processes, and the first step's reported loss equals the focal formula computed by hand on the same batch,
where the default loss reports the weighted cross-entropy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raylhf.config import SFTConfig, build_config
from raylhf.plugins import registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = [str(ROOT / "examples" / "plugins" / "loss_focal.py"),
           str(ROOT / "examples" / "plugins" / "loss_scale_keywords.py")]


def test_focal_loss_changes_the_reported_loss_as_its_formula_says(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.common import forward_logprobs, load_causal_lm, pad
    from raylhf.assets import load_tokenizer
    from raylhf.data import load_from_config
    from raylhf.data.loss_scale import get_loss_scale
    from raylhf.demo.tasks.arithmetic import write_jsonl
    from raylhf.demo.tasks.chat_data import two_turn_chats
    from raylhf.trainers.sft import collate, encode_examples, run_sft

    monkeypatch.setenv(registry.ENV, "")  # the plugins this test activates stay out of later tests' actors
    train = write_jsonl(two_turn_chats(8, seed=5, max_operand=30), tmp_path / "chat.jsonl")

    def config(loss: str) -> SFTConfig:
        return build_config(SFTConfig, overrides=[
            ("plugins", PLUGINS), ("sft.loss", loss), ("sft.loss_scale", "digits"),
            ("model.path", str(tiny_model_dir)), ("data.train_files", [str(train)]), ("data.shuffle", False),
            ("sft.num_steps", 1), ("sft.batch_size", 4), ("policy.num_workers", 2), ("policy.micro_batch_size", 1),
            ("policy.num_cpus_per_worker", 1), ("checkpoint.save_final", False),
            ("logging.run_dir", str(tmp_path / f"runs-{loss}")), ("logging.progress", False),
        ])

    reported = {}
    for loss in ("default", "focal"):
        cfg = config(loss)
        history = run_sft(cfg).history
        reported[loss] = next(r["loss/ce"] for r in history if r.get("step") == 1 and "loss/ce" in r)

    # by hand, on the driver: the first 4 rows (no shuffle), the start weights, per-token weights from digits
    cfg = config("focal")
    rows, _ = encode_examples(load_tokenizer(str(tiny_model_dir)), load_from_config(cfg.data, "sft", split="train"),
                              cfg.sft.max_length, get_loss_scale("digits"))
    batch = collate(rows[:4])
    assert batch.ce_weights is not None and float(torch.cat(batch.ce_weights).max()) == 2.0  # numbers weigh 2
    model = load_causal_lm(str(tiny_model_dir), torch.float32).eval()
    with torch.no_grad():
        logp, _, _ = forward_logprobs(model, batch.input_ids)
    w = pad(batch.ce_weights, 0.0) * pad(batch.loss_mask, 0.0)
    n = batch.num_tokens()  # trained tokens of the step, over both ranks and all micro-batches
    ce = float((w * -logp).sum() / n)
    focal = float((w * (1 - logp.exp()) ** 2 * -logp).sum() / n)
    print(f"step 1 loss/ce: default {reported['default']:.6f} (hand {ce:.6f}), focal {reported['focal']:.6f} "
          f"(hand {focal:.6f})")
    assert reported["default"] == pytest.approx(ce, rel=1e-5)
    assert reported["focal"] == pytest.approx(focal, rel=1e-5)
    assert ce - focal > 100 * 1e-5 * ce  # the focal loss is measurably below the cross-entropy
