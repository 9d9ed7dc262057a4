"""Optimizers of the policy (``policy.optimizer``): a registry of factories with ms-swift's shape.

A factory is ``factory(args, model, dataset) -> (optimizer, scheduler)``:

* ``args`` (:class:`OptimizerArgs`): ``lr``, ``weight_decay``, ``betas``, ``lr_scheduler``, ``warmup_steps``,
  ``total_steps`` and ``optimizer_kwargs`` (``policy.optimizer_kwargs``); the HF ``TrainingArguments`` names an
  ms-swift factory reads (``learning_rate``, ``adam_beta1``, ``adam_beta2``, ``adam_epsilon``, ``max_steps``,
  ``lr_scheduler_type``) are aliases, and any other attribute is looked up in ``optimizer_kwargs``;
* ``model``: the module that trains (a peft model under a LoRA / IA3 tuner); give the optimizer its trainable
  parameters only (``p.requires_grad``);
* ``dataset``: always None here (steps come from ``args.total_steps``);
* ``scheduler``: a torch LR scheduler on the returned optimizer, stepped once per optimizer step, or None for
  the default schedule (:func:`default_scheduler`: ``policy.lr_scheduler`` after ``policy.warmup_steps``).

Built-ins: ``adamw`` (the default), ``multi_lr`` (per-module learning rates by name pattern), ``loraplus``
(LoRA+: ``lora_B`` at ``loraplus_lr_ratio`` x the learning rate). A plugin file adds factories with
``optimizers_map = {"name": factory}`` or ``@register_optimizer("name")``.

Importing this module does not import torch (config validation looks names up here).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raylhf.plugins.registry import OPTIMIZERS, PluginCheckError

OptimizerFactory = Callable[..., tuple[Any, Any]]
SIGNATURE = "factory(args, model, dataset) -> (optimizer, scheduler | None)"



def register_optimizer(name: str | None = None) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """``@register_optimizer("name")`` on a factory ``(args, model, dataset) -> (optimizer, scheduler)``."""
    return OPTIMIZERS.decorator(name)


def collect_optimizers(table: Any, source: str) -> None:
    """A plugin module's ``optimizers_map`` (name -> factory) into :data:`OPTIMIZERS`."""
    if not isinstance(table, Mapping):
        raise TypeError(f"{source} must be a dict of name -> {SIGNATURE}")
    for name, factory in table.items():
        if not callable(factory):
            raise TypeError(f"{source}[{name!r}] is not callable; expected {SIGNATURE}")
        OPTIMIZERS.register(str(name), factory, source)


# ------------------------------------------------------------------ what a factory is given

@dataclass
class OptimizerArgs:
    """The settings an optimizer factory reads (``args``); built from the ``policy`` section."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any], total_steps: int) -> OptimizerArgs:
        """From a ``policy`` section dict (``PolicyConfig.model_dump()``)."""
        return cls(lr=float(policy.get("lr", 1e-5)), weight_decay=float(policy.get("weight_decay", 0.0)),
                   betas=tuple(policy.get("betas", (0.9, 0.999))),  # type: ignore[arg-type]
                   lr_scheduler=str(policy.get("lr_scheduler", "constant")),
                   warmup_steps=int(policy.get("warmup_steps", 0)), total_steps=int(total_steps),
                   optimizer_kwargs=dict(policy.get("optimizer_kwargs") or {}))

    # HF TrainingArguments names (what ms-swift factories read)
    @property
    def learning_rate(self) -> float:
        return self.lr

    @property
    def adam_beta1(self) -> float:
        return self.betas[0]

    @property
    def adam_beta2(self) -> float:
        return self.betas[1]

    @property
    def adam_epsilon(self) -> float:
        return float(self.optimizer_kwargs.get("eps", 1e-8))

    @property
    def max_steps(self) -> int:
        return self.total_steps

    @property
    def lr_scheduler_type(self) -> str:
        return self.lr_scheduler

    def __getattr__(self, name: str) -> Any:  # args.loraplus_lr_ratio etc.: from policy.optimizer_kwargs
        kwargs = self.__dict__.get("optimizer_kwargs", {})
        if name.startswith("__") or name not in kwargs:
            raise AttributeError(f"the optimizer factory read args.{name}, which is not set: add it to "
                                 f"policy.optimizer_kwargs (given: {sorted(kwargs) or 'none'})")
        return kwargs[name]


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The default schedule's factor at an optimizer step: linear warm-up, then constant / linear / cosine decay."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def default_scheduler(optimizer: Any, args: OptimizerArgs) -> Any:
    """``policy.lr_scheduler`` after ``policy.warmup_steps`` over ``total_steps`` (a LambdaLR: every param group's
    own learning rate times the same factor)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_scheduler, args.warmup_steps,
                                                                  args.total_steps))


def trainable(model: Any) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of the parameters that train."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adamw(params: Any, args: OptimizerArgs, **kwargs: Any) -> Any:
    """``torch.optim.AdamW`` over ``params`` (tensors or param groups) with ``args``' lr / betas / weight decay;
    ``kwargs`` (the rest of ``policy.optimizer_kwargs``, e.g. ``eps``) go to AdamW."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay,
                                 **kwargs)
    except TypeError as e:
        raise ValueError(f"policy.optimizer_kwargs: {e} (AdamW takes eps, amsgrad, ...)") from None


# ------------------------------------------------------------------ built-ins

@register_optimizer("adamw")
def create_adamw(args: OptimizerArgs, model: Any, dataset: Any = None) -> tuple[Any, None]:
    """AdamW over the trainable parameters, one group (policy.lr, betas, weight_decay); the default schedule."""
    return adamw([p for _, p in trainable(model)], args, **args.optimizer_kwargs), None


def _pattern_groups(model: Any, patterns: Mapping[str, float], field_name: str
                    ) -> tuple[list[Any], list[tuple[str, float, list[Any]]]]:
    """Split the trainable parameters by the first pattern (``re.search`` on the name) each matches: the
    unmatched ones and ``(pattern, lr, params)`` per pattern. A pattern that matches nothing is an error."""
    compiled = []
    for pat, lr in patterns.items():
        try:
            compiled.append((pat, re.compile(pat), float(lr)))
        except (re.error, TypeError, ValueError) as e:
            raise ValueError(f"{field_name}: {pat!r}: {lr!r} is not 'regex: learning rate' ({e})") from None
    rest: list[Any] = []
    groups: dict[str, list[Any]] = {pat: [] for pat, _, _ in compiled}
    for name, p in trainable(model):
        hit = next((pat for pat, rx, _ in compiled if rx.search(name)), None)
        (groups[hit] if hit is not None else rest).append(p)
    empty = [pat for pat, params in groups.items() if not params]
    if empty:
        sample = ", ".join(n for n, _ in trainable(model)[:4])
        raise ValueError(f"{field_name}: {empty} match no trainable parameter (names look like: {sample}, ...)")
    return rest, [(pat, lr, groups[pat]) for pat, _, lr in compiled]


@register_optimizer("multi_lr")
def create_multi_lr(args: OptimizerArgs, model: Any, dataset: Any = None) -> tuple[Any, None]:
    """AdamW with per-module learning rates: ``optimizer_kwargs.lr_groups = {pattern: lr}``; a parameter takes
    the lr of the first pattern (regex searched in its name, so a plain substring works) that matches it, the
    others ``policy.lr``. The default schedule scales every group alike."""
    kwargs = dict(args.optimizer_kwargs)
    lr_groups = kwargs.pop("lr_groups", None)
    if not isinstance(lr_groups, Mapping) or not lr_groups:
        raise ValueError("policy.optimizer=multi_lr needs policy.optimizer_kwargs.lr_groups: {name pattern: lr}, "
                         "e.g. {embed_tokens: 1.0e-5, lm_head: 5.0e-5}")
    rest, matched = _pattern_groups(model, lr_groups, "policy.optimizer_kwargs.lr_groups")
    groups = ([{"params": rest, "lr": args.lr, "name": "default"}] if rest else [])
    groups += [{"params": params, "lr": lr, "name": pat} for pat, lr, params in matched]
    return adamw(groups, args, **kwargs), None


@register_optimizer("loraplus")
def create_loraplus(args: OptimizerArgs, model: Any, dataset: Any = None) -> tuple[Any, None]:
    """LoRA+ (Hayou et al. 2024): AdamW where the LoRA ``B`` matrices learn ``loraplus_lr_ratio`` (default 16)
    times faster than the ``A`` matrices and the other trainable parameters (``policy.lr``)."""
    kwargs = dict(args.optimizer_kwargs)
    ratio = float(kwargs.pop("loraplus_lr_ratio", 16.0))
    b, rest = [], []
    for name, p in trainable(model):
        (b if ".lora_B." in name or ".lora_embedding_B." in name else rest).append(p)
    if not b:
        raise ValueError("policy.optimizer=loraplus trains LoRA adapters but the model has no lora_B parameters: "
                         "set policy.tuner.type=lora (or pick another policy.optimizer)")
    groups = [{"params": rest, "lr": args.lr, "name": "lora_A"}, {"params": b, "lr": args.lr * ratio, "name": "lora_B"}]
    return adamw([g for g in groups if g["params"]], args, **kwargs), None


# ------------------------------------------------------------------ used by the policy worker

def build_optimizer(name: str, args: OptimizerArgs, model: Any) -> tuple[Any, Any]:
    """The optimizer and scheduler of ``policy.optimizer=name`` for ``model``: the factory's, with the default
    schedule when it gives none. Errors name the factory and say what it must return."""
    import torch

    factory = OPTIMIZERS.get_entry(name)
    where = f"policy.optimizer={name!r} ({OPTIMIZERS.source(name)})"
    out = factory(args, model, None)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where} returned {type(out).__name__}; expected {SIGNATURE}")
    opt, sched = out
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"{where} returned {type(opt).__name__} as the optimizer; expected a torch.optim.Optimizer")
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    if any(id(p) in frozen for g in opt.param_groups for p in g["params"]):
        raise ValueError(f"{where} gave the optimizer frozen parameters (requires_grad=False); give it the "
                         "trainable ones only: [p for p in model.parameters() if p.requires_grad]")
    if not any(g["params"] for g in opt.param_groups):
        raise ValueError(f"{where} gave the optimizer no parameters")
    if sched is None:
        sched = default_scheduler(opt, args)
    elif not callable(getattr(sched, "step", None)):
        raise TypeError(f"{where} returned {type(sched).__name__} as the scheduler; expected a torch LR scheduler "
                        "(with .step()) or None")
    return opt, sched


def describe(opt: Any, sched: Any) -> dict[str, Any]:
    """What steps: the optimizer's class, its groups' learning rates and sizes, the scheduler's class."""
    return {
        "optimizer": type(opt).__name__,
        "scheduler": type(sched).__name__ if sched is not None else None,
        "groups": [{"name": g.get("name", str(i)), "lr": float(g["lr"]),
                    "params": sum(int(getattr(p, "ds_numel", p.numel())) for p in g["params"])}
                   for i, g in enumerate(opt.param_groups)],
    }


# ------------------------------------------------------------------ raylhf check-plugin

def _tiny_model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))


def check_plugin_entry(name: str, factory: Any) -> str:
    """Call ``factory`` on a tiny torch model (Embedding + Linear), take one step; say what it built."""
    import torch

    expected = f"optimizer {name!r}: expected {SIGNATURE}"
    if not callable(factory):
        raise PluginCheckError(f"{expected}; got a {type(factory).__name__}")
    try:
        inspect.signature(factory).bind(OptimizerArgs(), None, None)
    except TypeError as e:
        raise PluginCheckError(f"{expected}; its signature {inspect.signature(factory)} does not take it ({e})"
                               ) from None
    except ValueError:  # no signature (a builtin): calling it below tells
        pass
    model = _tiny_model()
    out = factory(OptimizerArgs(lr=1e-2, total_steps=10), model, None)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise PluginCheckError(f"{expected}; it returned {type(out).__name__}")
    opt, sched = out
    if not isinstance(opt, torch.optim.Optimizer):
        raise PluginCheckError(f"{expected}; the optimizer is a {type(opt).__name__}, not a torch.optim.Optimizer")
    if sched is not None and not callable(getattr(sched, "step", None)):
        raise PluginCheckError(f"{expected}; the scheduler is a {type(sched).__name__} without .step()")
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.arange(4)).square().mean().backward()
    opt.step()
    if sched is not None:
        sched.step()
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    if not moved:
        raise PluginCheckError(f"optimizer {name!r}: one step on a tiny model changed no parameter (are the model's "
                               "parameters given to the optimizer?)")
    info = describe(opt, sched)
    return (f"{info['optimizer']} with {len(info['groups'])} param group(s), scheduler "
            f"{info['scheduler'] or 'None (the default schedule)'}; one step moved {moved} of {len(before)} tensors")


OPTIMIZERS.attach(collector=collect_optimizers, interface_check=check_plugin_entry)
