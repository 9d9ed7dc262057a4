"""Optimizer factories (actors/optimizers.py), no Ray: the default is today's AdamW, multi_lr and loraplus give
each parameter group its learning rate (Adam's first step moves every weight by ~lr, so the step sizes show
it), the example plugin's SGD factory is the one that steps (its update equals the SGD-momentum formula), and
check-plugin rejects a wrong signature naming the entry and the expected one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.optimizers import OPTIMIZERS, OptimizerArgs, build_optimizer, check_plugin_entry, describe
from raylhf.plugins.registry import PluginCheckError, load_plugin

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "optimizer_sgd.py"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = torch.nn.Embedding(16, 8)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)])
        self.lm_head = torch.nn.Linear(8, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.lm_head(h)


def _loss(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(12) % 16
    return torch.nn.functional.cross_entropy(model(ids), (ids + 1) % 16)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One optimizer step; returns each parameter's change."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_adamw_default_is_the_old_optimizer_and_schedule() -> None:
    model = Tiny()
    model.lm_head.bias.requires_grad_(False)
    args = OptimizerArgs(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1, lr_scheduler="linear", warmup_steps=2,
                         total_steps=6)
    opt, sched = build_optimizer("adamw", args, model)
    old = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.8, 0.95),
                            weight_decay=0.1)  # what PolicyWorker.setup built before the registry
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    skip = ("params", "lr", "initial_lr")  # the schedule sets lr = initial_lr x its factor
    assert {k: v for k, v in opt.param_groups[0].items() if k not in skip} == {
        k: v for k, v in old.param_groups[0].items() if k not in skip}
    assert opt.param_groups[0]["initial_lr"] == 1e-3
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in old.param_groups[0]["params"]]
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])  # warm-up 2, then linear decay


def test_multi_lr_gives_each_module_its_learning_rate() -> None:
    model = Tiny()
    args = OptimizerArgs(lr=1e-3, optimizer_kwargs={"lr_groups": {"embed_tokens": 1e-5, r"layers\.1\.": 3e-4,
                                                                  "lm_head": 5e-5}})
    opt, _ = build_optimizer("multi_lr", args, model)
    assert [(g["name"], g["lr"]) for g in describe(opt, None)["groups"]] == [
        ("default", 1e-3), ("embed_tokens", 1e-5), (r"layers\.1\.", 3e-4), ("lm_head", 5e-5)]
    delta = _step(model, opt)
    # Adam's first step moves each weight by lr * g / (|g| + eps): ~lr wherever the gradient is not tiny
    want = {"embed_tokens.weight": 1e-5, "layers.0.weight": 1e-3, "layers.1.weight": 3e-4, "lm_head.weight": 5e-5}
    for name, lr in want.items():
        biggest = float(delta[name].abs().max())
        print(f"{name}: max |step| {biggest:.3g} (lr {lr:g})")
        assert biggest == pytest.approx(lr, rel=0.02)


def test_multi_lr_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"needs policy\.optimizer_kwargs\.lr_groups"):
        build_optimizer("multi_lr", OptimizerArgs(), Tiny())
    with pytest.raises(ValueError, match=r"lr_groups: \['vision_tower'\] match no trainable parameter"):
        build_optimizer("multi_lr", OptimizerArgs(optimizer_kwargs={"lr_groups": {"vision_tower": 1e-5}}), Tiny())
    with pytest.raises(ValueError, match=r"policy\.optimizer_kwargs: .*unexpected keyword argument 'nope'"):
        build_optimizer("adamw", OptimizerArgs(optimizer_kwargs={"nope": 1}), Tiny())


def test_loraplus_trains_lora_b_faster_and_needs_lora(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from actors.tuners import apply_tuner

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = apply_tuner(base, {"type": "lora", "lora_rank": 4, "lora_dropout": 0.0})
    opt, _ = build_optimizer("loraplus", OptimizerArgs(lr=1e-4, optimizer_kwargs={"loraplus_lr_ratio": 8}), model)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("lora_A", 1e-4), ("lora_B", 8e-4)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(3, 30)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    step_b = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters() if ".lora_B." in n)
    print(f"LoRA+: max |step| of lora_B {step_b:.3g} (lr 1e-4 x 8)")
    assert step_b == pytest.approx(8e-4, rel=0.02)  # B starts at 0, A gets no gradient on the first step
    with pytest.raises(ValueError, match=r"no lora_B parameters: set policy\.tuner\.type=lora"):
        build_optimizer("loraplus", OptimizerArgs(), Tiny())


def test_example_sgd_factory_is_the_one_that_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    load_plugin(str(EXAMPLE))
    assert "sgd_step_decay" in OPTIMIZERS
    model = Tiny()
    args = OptimizerArgs(lr=0.1, optimizer_kwargs={"momentum": 0.9, "decay_every": 1, "decay": 0.5})
    opt, sched = build_optimizer("sgd_step_decay", args, model)
    assert (type(opt).__name__, type(sched).__name__) == ("SGD", "StepLR")  # its own schedule, not the default

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        _loss(model).backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g1 = grads()
    opt.step()
    sched.step()
    p1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g2 = grads()
    opt.step()
    for n, p in model.named_parameters():  # SGD momentum: buf1 = g1, buf2 = 0.9 buf1 + g2; lr 0.1 then 0.05
        torch.testing.assert_close(p1[n], p0[n] - 0.1 * g1[n])
        torch.testing.assert_close(p.detach(), p1[n] - 0.05 * (0.9 * g1[n] + g2[n]))
    assert float((p1["lm_head.weight"] - p0["lm_head.weight"]).abs().std()) > 1e-4  # not Adam's uniform +-lr


def test_check_plugin_accepts_the_example_and_rejects_wrong_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    load_plugin(str(EXAMPLE))
    assert "SGD" in check_plugin_entry("sgd_step_decay", OPTIMIZERS["sgd_step_decay"])

    def two_args(args, model):
        return torch.optim.SGD(model.parameters(), lr=0.1), None

    with pytest.raises(PluginCheckError, match=r"optimizer 'two_args': expected factory\(args, model, dataset\) "
                                               r"-> \(optimizer, scheduler \| None\)"):
        check_plugin_entry("two_args", two_args)

    def no_tuple(args, model, dataset):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    with pytest.raises(PluginCheckError, match=r"optimizer 'no_tuple': expected .* it returned SGD"):
        check_plugin_entry("no_tuple", no_tuple)


def test_config_checks_the_optimizer_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.config import ConfigError, SFTConfig, build_config

    monkeypatch.setenv("RAYLHF_PLUGINS", "")
    with pytest.raises(ConfigError, match=r"unknown optimizer 'sgd_nope' in policy\.optimizer; registered: adamw, "
                                          r"loraplus, multi_lr"):
        build_config(SFTConfig, overrides=[("policy.optimizer", "sgd_nope")])
    cfg = build_config(SFTConfig, overrides=[("plugins", [str(EXAMPLE)]), ("policy.optimizer", "sgd_step_decay"),
                                             ("policy.optimizer_kwargs", {"momentum": 0.5})])
    assert cfg.policy.optimizer == "sgd_step_decay" and cfg.policy.optimizer_kwargs == {"momentum": 0.5}


def test_args_read_hf_names_and_optimizer_kwargs() -> None:
    args = OptimizerArgs(lr=2e-5, betas=(0.8, 0.9), total_steps=7, optimizer_kwargs={"loraplus_lr_ratio": 4})
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.max_steps) == (2e-5, 0.8, 0.9, 7)
    assert args.loraplus_lr_ratio == 4 and getattr(args, "galore_config", None) is None
    with pytest.raises(AttributeError, match=r"args\.galore_config, which is not set: add it to policy\.optimizer_kwargs"):
        _ = args.galore_config
