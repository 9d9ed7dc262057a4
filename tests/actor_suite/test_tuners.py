"""LoRA through peft (actors/tuners.py), no Ray: only adapter weights train; the merged export has the base
model's parameter names and reproduces the adapter model's log-probs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.adapters import adapter_state, merged_params, save_adapter, save_merged
from actors.common import forward_logprobs
from actors.tuners import apply_tuner, is_lora, trainable_counts

LORA = {"type": "lora", "lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "target_modules": ["all-linear"]}


def _base(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _batch(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=g) for n in (12, 7, 9)]


def _masked_logprobs(model: torch.nn.Module, ids: list[torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        lp, attn, _ = forward_logprobs(model, ids)
    return lp * attn


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[torch.Tensor]]:
    """A LoRA model after two AdamW steps, with the parameters it had before them."""
    model = apply_tuner(_base(tiny_model_dir), LORA)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = _batch(model.config.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        lp, attn, _ = forward_logprobs(model, ids)
        (-(lp * attn).sum() / attn.sum()).backward()
        opt.step()
        opt.zero_grad()
    return model, before, ids


def test_full_leaves_the_model_as_it_is(tiny_model_dir: Path) -> None:
    model = _base(tiny_model_dir)
    assert apply_tuner(model, {"type": "full"}) is model and not is_lora(model)
    with pytest.raises(ValueError, match=r"policy\.tuner\.target_modules"):
        apply_tuner(_base(tiny_model_dir), {**LORA, "target_modules": ["no_such_proj"]})


def test_only_adapter_weights_change(trained: tuple[torch.nn.Module, dict[str, torch.Tensor], list[torch.Tensor]]
                                     ) -> None:
    model, before, _ = trained
    assert is_lora(model)
    trainable, total = trainable_counts(model)
    assert 0 < trainable < total / 5
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in before if ".lora_A." in n or ".lora_B." in n}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_A." in n or ".lora_B." in n for n in changed)
    # lora_B starts at zero, so every B moved and the model differs from the base now
    assert {n for n in before if ".lora_B." in n} <= changed


def test_merged_export_reproduces_the_adapter_model(
        trained: tuple[torch.nn.Module, dict[str, torch.Tensor], list[torch.Tensor]], tiny_model_dir: Path,
        tmp_path: Path) -> None:
    model, _, ids = trained
    merged = dict(merged_params(model))
    assert set(merged) == {n for n, _ in _base(tiny_model_dir).named_parameters()}  # the base model's names
    adapter_lp = _masked_logprobs(model, ids)
    save_merged(model, merged, tmp_path / "merged")
    plain = _base(tmp_path / "merged")  # a plain HF model: transformers loads it without peft
    diff = float((_masked_logprobs(plain, ids) - adapter_lp).abs().max())
    print(f"merged vs adapter max |log-prob diff| = {diff:.2e}")
    assert diff < 1e-5
    assert float((_masked_logprobs(_base(tiny_model_dir), ids) - adapter_lp).abs().max()) > 1e-3  # it did train
    assert is_lora(model)  # merging for the export left the adapter model as it was


def test_saved_adapter_reloads_with_peft(
        trained: tuple[torch.nn.Module, dict[str, torch.Tensor], list[torch.Tensor]], tiny_model_dir: Path,
        tmp_path: Path) -> None:
    from peft import PeftModel

    model, _, ids = trained
    out = save_adapter(model, adapter_state(model), tmp_path / "adapter", base_model=str(tiny_model_dir))
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(_base(tiny_model_dir), out)
    assert float((_masked_logprobs(reloaded, ids) - _masked_logprobs(model, ids)).abs().max()) < 1e-6
