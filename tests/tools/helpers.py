"""Shared by the verb tests: a LoRA / IA3 run's adapter-only export, trained in this process."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from actors.adapters import adapter_state, save_adapter
from actors.tuners import IA3Tuner, LoraTuner, TunerArgs
from raylhf.assets import load_tokenizer
from raylhf.data.render import chat_text, encode_text

CHAT = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 7."}]


def train_adapter(base: Path, run_dir: Path, tuner: str = "lora", steps: int = 2) -> Path:
    """A run's adapter-only export (``policy.tuner.merge_on_save: false``): ``steps`` SFT steps of the project's
    tuner on one chat, saved as PolicyWorker.save does (actors/adapters.py ``save_adapter``, tokenizer beside)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cls = LoraTuner if tuner == "lora" else IA3Tuner
    model = cls.prepare_model(TunerArgs({"type": tuner, "lora_rank": 4, "lora_dropout": 0.0}), model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2 if tuner == "lora" else 2e-1)
    tok = load_tokenizer(base)
    ids = torch.tensor([encode_text(tok, chat_text(tok, CHAT, add_generation_prompt=False))])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = run_dir / "checkpoint"
    save_adapter(model, adapter_state(model), out, base_model=str(base), tuner=cls)
    tok.save_pretrained(out)
    return out
