"""Tuners through ms-swift's interface (actors/tuners.py), no Ray: IA3 trains only its scaling vectors, saves and
loads through save_pretrained / from_pretrained, and its merged export is a plain HF model with the same
log-probs; freeze freezes by name pattern; the example plugin tuner trains only the last layer's MLP; check-plugin
rejects a wrong signature naming the entry and the expected one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.adapters import export_params, save_merged
from actors.common import forward_logprobs
from actors.tuners import TUNERS, IA3Tuner, Tuner, apply_tuner, check_plugin_entry
from raylhf.plugins.registry import PluginCheckError, load_plugin

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "tuner_last_mlp.py"


def _base(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _ids(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=g) for n in (12, 7, 9)]


def _nll(model: torch.nn.Module, ids: list[torch.Tensor]) -> torch.Tensor:
    lp, attn, _ = forward_logprobs(model, ids)
    return -(lp * attn).sum() / attn.sum()


def _logprobs(model: torch.nn.Module, ids: list[torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        lp, attn, _ = forward_logprobs(model, ids)
    return lp * attn


def _train(model: torch.nn.Module, ids: list[torch.Tensor], steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = _nll(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_ia3_trains_only_its_vectors_and_round_trips(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = apply_tuner(_base(tiny_model_dir), {"type": "ia3"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".ia3_l." in n for n in trainable)
    # peft's Llama default: k_proj, v_proj and down_proj (feed-forward: scales its input)
    assert {n.split(".ia3_l.")[0].rsplit(".", 1)[1] for n in trainable} == {"k_proj", "v_proj", "down_proj"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = _ids(model.config.vocab_size)
    losses = _train(model, ids, 4, 5e-2)
    print(f"IA3 loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < losses[0] - 0.05
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # every IA3 vector moved, nothing else did

    want = _logprobs(model, ids)
    IA3Tuner.save_pretrained(model, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    loaded = IA3Tuner.from_pretrained(_base(tiny_model_dir), str(tmp_path / "adapter"))
    assert float((_logprobs(loaded, ids) - want).abs().max()) < 1e-6

    merged = dict(export_params(model))
    assert set(merged) == {n for n, _ in _base(tiny_model_dir).named_parameters()}  # base names, no ia3_l
    save_merged(model, merged, tmp_path / "merged")
    diff = float((_logprobs(_base(tmp_path / "merged"), ids) - want).abs().max())
    print(f"IA3 merged export vs adapter model: max |log-prob diff| {diff:.2e}")
    assert diff < 1e-5
    assert float((_logprobs(_base(tiny_model_dir), ids) - want).abs().max()) > 1e-3  # it did train


def test_ia3_modules_are_configurable(tiny_model_dir: Path) -> None:
    model = apply_tuner(_base(tiny_model_dir), {"type": "ia3", "kwargs": {
        "target_modules": ["q_proj", "up_proj"], "feedforward_modules": ["up_proj"]}})
    layers = {n.split(".ia3_l.")[0].rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad}
    assert layers == {"q_proj", "up_proj"}
    with pytest.raises(ValueError, match=r"policy\.tuner\.kwargs: \['rank'\] are not options of tuner 'ia3'"):
        apply_tuner(_base(tiny_model_dir), {"type": "ia3", "kwargs": {"rank": 4}})


def test_freeze_by_name_pattern(tiny_model_dir: Path) -> None:
    model = apply_tuner(_base(tiny_model_dir), {"type": "freeze", "kwargs": {
        "freeze_parameters": ["embed_tokens", r"layers\.0\."]}})
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "model.embed_tokens.weight" in frozen and all("embed_tokens" in n or ".layers.0." in n for n in frozen)
    assert any(".layers.1." in n for n, p in model.named_parameters() if p.requires_grad)

    only_head = apply_tuner(_base(tiny_model_dir), {"type": "freeze", "kwargs": {
        "freeze_parameters": [".*"], "trainable_parameters": ["lm_head"]}})
    assert {n for n, p in only_head.named_parameters() if p.requires_grad} == {"lm_head.weight"}
    before = {n: p.detach().clone() for n, p in only_head.named_parameters()}
    _train(only_head, _ids(only_head.config.vocab_size), 1, 1e-2)
    assert {n for n, p in only_head.named_parameters() if not torch.equal(p, before[n])} == {"lm_head.weight"}

    with pytest.raises(ValueError, match=r"freeze_parameters: 'vision_tower' matches no parameter"):
        apply_tuner(_base(tiny_model_dir), {"type": "freeze", "kwargs": {"freeze_parameters": ["vision_tower"]}})
    with pytest.raises(ValueError, match=r"needs policy\.tuner\.kwargs\.freeze_parameters"):
        apply_tuner(_base(tiny_model_dir), {"type": "freeze"})
    with pytest.raises(ValueError, match=r"left no parameter trainable"):
        apply_tuner(_base(tiny_model_dir), {"type": "freeze", "kwargs": {"freeze_parameters": [".*"]}})


def test_example_tuner_trains_only_the_last_mlp(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    load_plugin(str(EXAMPLE))
    model = apply_tuner(_base(tiny_model_dir), {"type": "last_mlp", "kwargs": {"num_layers": 1}})
    last = model.config.num_hidden_layers - 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{last}.mlp.{m}_proj.weight" for m in ("gate", "up", "down")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, _ids(model.config.vocab_size), 1, 1e-2)
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == trainable
    assert "train; save_pretrained -> from_pretrained reproduces" in check_plugin_entry("last_mlp", TUNERS["last_mlp"])


def test_check_plugin_rejects_wrong_tuner_shapes() -> None:
    class NotStatic(Tuner):
        def prepare_model(self, args, model):
            return model

    class OneArg(Tuner):
        @staticmethod
        def prepare_model(model):
            return model

    class NoLoad:
        @staticmethod
        def prepare_model(args, model):
            return model

        @staticmethod
        def save_pretrained(model, save_directory, state_dict=None, safe_serialization=True, **kwargs):
            pass

    with pytest.raises(PluginCheckError, match=r"tuner 'not_static': expected a static method "
                                               r"prepare_model\(args, model\) -> model; .*add @staticmethod"):
        check_plugin_entry("not_static", NotStatic)
    with pytest.raises(PluginCheckError, match=r"tuner 'one_arg': expected a static method "
                                               r"prepare_model\(args, model\) -> model; got prepare_model\(model\)"):
        check_plugin_entry("one_arg", OneArg)
    with pytest.raises(PluginCheckError, match=r"tuner 'no_load': expected a static method "
                                               r"from_pretrained\(model, model_id, \*\*kwargs\) -> model; .*has no"):
        check_plugin_entry("no_load", NoLoad)


def test_config_checks_the_tuner_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.config import ConfigError, SFTConfig, build_config

    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    with pytest.raises(ConfigError, match=r"unknown tuner 'lora2' in policy\.tuner\.type; registered: freeze, full, "
                                          r"ia3, (last_mlp, )?lora"):
        build_config(SFTConfig, overrides=[("policy.tuner.type", "lora2")])
    cfg = build_config(SFTConfig, overrides=[("plugins", [str(EXAMPLE)]), ("policy.tuner.type", "last_mlp")])
    assert cfg.policy.tuner.type == "last_mlp"
    with pytest.raises(ValueError, match=r"policy\.tuner\.kwargs: \['x'\] are not options of tuner 'full'"):
        apply_tuner(torch.nn.Linear(2, 2), {"type": "full", "kwargs": {"x": 1}})
