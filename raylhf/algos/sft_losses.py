"""Custom token losses for SFT (``sft.loss``): ms-swift's ``register_loss_func`` plugin kind.

A loss function has ms-swift's (and transformers') shape::

    @register_loss_func("name")
    def f(outputs, labels, loss_scale=None, num_items_in_batch=None) -> torch.Tensor

* ``outputs``: the model's output of one micro-batch, with ``.logits`` ``[B, T, V]`` (a transformers
  ``ModelOutput``),
* ``labels``: ``[B, T]`` token ids aligned with ``input_ids`` (HF convention: the function shifts, position
  ``t`` of the logits predicts ``labels[:, t + 1]``), ``-100`` where no loss is taken (prompt, padding,
  weight 0),
* ``loss_scale``: ``[B, T]`` float weights aligned with ``labels`` from the ``sft.loss_scale`` strategy, or
  ``None`` when every trained token has weight 1,
* ``num_items_in_batch``: the trained tokens of the whole optimizer step (all micro-batches, all ranks), so a
  function that returns ``sum(per-token loss) / num_items_in_batch`` per micro-batch gives the step's token
  mean once the micro-batches and ranks add up (this is how the built-in cross-entropy normalizes).

The return value is a scalar tensor with grad. ``default`` is the weighted cross-entropy the SFT objective
computes (``sum(w * -log p) / trained tokens``); with ``sft.loss: default`` SFT keeps its own fused path
(packing included) and this function is not called. Only SFT's token loss is pluggable: preference and RL
losses are chosen by their trainers' options (``dpo.loss_type``, ``grpo.loss_agg``, ...).

A plugin file may also define ms-swift 3.8's table ``loss_mapping = {"name": f}`` (or ``LOSS_MAPPING``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from raylhf.plugins.registry import LOSS_FUNCS, PluginCheckError

__all__ = [
    "EXPECTED_SIGNATURE",
    "IGNORE_INDEX",
    "LOSS_FUNCS",
    "LossFunc",
    "check_loss_signature",
    "check_plugin_entry",
    "collect_losses",
    "get_loss_func",
    "register_loss_func",
    "shifted_token_nll",
]

IGNORE_INDEX = -100
LossFunc = Callable[..., torch.Tensor]
EXPECTED_SIGNATURE = "f(outputs, labels, loss_scale=None, num_items_in_batch=None) -> scalar Tensor"


def _check_callable(name: str, obj: object) -> None:
    if not callable(obj):
        raise TypeError(f"loss {name!r}: register a function {EXPECTED_SIGNATURE}, got {obj!r}")


LOSS_FUNCS.attach(check=_check_callable)


def register_loss_func(name: str, loss_func: LossFunc | None = None) -> Any:
    """``@register_loss_func("name")`` makes ``f`` available as ``sft.loss: name``; ``register_loss_func("name",
    f)`` registers directly (both ms-swift forms). A name registered twice by different functions is an error."""
    if loss_func is not None:
        return LOSS_FUNCS.register(name, loss_func)
    return LOSS_FUNCS.decorator(name)


def collect_losses(table: object, source: str) -> None:
    """A plugin module's ``loss_mapping`` / ``LOSS_MAPPING`` (name -> function) into the registry."""
    LOSS_FUNCS.register_table(table, source, f"loss function {EXPECTED_SIGNATURE}")


def check_loss_signature(name: str, fn: Any) -> None:
    """Raise :class:`PluginCheckError` unless ``fn`` can be called as ``fn(outputs, labels, loss_scale=...,
    num_items_in_batch=...)``."""
    if not callable(fn):
        raise PluginCheckError(f"loss {name!r} is not callable; expected {EXPECTED_SIGNATURE}")
    try:
        inspect.signature(fn).bind(None, None, loss_scale=None, num_items_in_batch=None)
    except TypeError as e:
        shown = f"{getattr(fn, '__name__', name)}{inspect.signature(fn)}"
        raise PluginCheckError(f"loss {name!r} has the signature {shown}, which cannot be "
                               f"called as f(outputs, labels, loss_scale=..., num_items_in_batch=...) ({e}); "
                               f"expected {EXPECTED_SIGNATURE}") from None
    except ValueError:  # builtins without a signature: let the call decide
        pass


def get_loss_func(name: str) -> LossFunc:
    """The loss registered as ``name`` (plugins loaded first), its signature checked."""
    try:
        fn = LOSS_FUNCS.get_entry(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    check_loss_signature(name, fn)
    return fn


def shifted_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll [B, T-1], mask [B, T-1])``: ``-log p(labels[:, t+1] | logits[:, t])`` in float32, 0 where the
    label is ``-100``. A helper for loss functions (the shift of the HF convention done once)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                          shift_labels.clamp_min(0).reshape(-1), reduction="none").view_as(shift_labels)
    return nll * mask, mask


@register_loss_func("default")
def weighted_cross_entropy(outputs: Any, labels: torch.Tensor, loss_scale: torch.Tensor | None = None,
                           num_items_in_batch: float | int | torch.Tensor | None = None) -> torch.Tensor:
    """The SFT objective's cross-entropy: ``sum(w * -log p) / num_items_in_batch`` (``w`` the loss_scale
    weights, 1 when ``None``); the mean over trained tokens when ``num_items_in_batch`` is ``None``."""
    nll, mask = shifted_token_nll(outputs.logits, labels)
    if loss_scale is not None:
        nll = nll * loss_scale[:, 1:].to(nll)
    denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp_min(1)
    return nll.sum() / denom


# ---------------------------------------------------------------------------------- raylhf check-plugin

def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: call loss ``name`` on tiny synthetic logits ``[2, 5, 11]`` (requires grad) and
    labels with ``-100`` on the first positions, with and without a loss_scale; it must return a finite
    scalar tensor that carries grad back to the logits."""
    check_loss_signature(name, obj)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[:, :2] = IGNORE_INDEX
    labels[1, 4] = IGNORE_INDEX
    n_items = int((labels[:, 1:] != IGNORE_INDEX).sum())
    scale = torch.ones(2, 5)
    scale[0, 3] = 2.0
    seen = []
    for ls in (None, scale):
        out = obj(SimpleNamespace(logits=logits), labels, loss_scale=ls, num_items_in_batch=n_items)
        if not isinstance(out, torch.Tensor) or out.dim() != 0:
            shape = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise PluginCheckError(f"loss {name!r} returned {shape}; expected {EXPECTED_SIGNATURE}")
        if not out.requires_grad:
            raise PluginCheckError(f"loss {name!r} returned a tensor without grad (detached from the logits); "
                                   f"expected {EXPECTED_SIGNATURE}")
        if not torch.isfinite(out):
            raise PluginCheckError(f"loss {name!r} returned {float(out)} on synthetic logits; expected a finite "
                                   "scalar")
        seen.append(float(out.detach()))
    logits.grad = None
    out.backward()
    if logits.grad is None or not bool(logits.grad.abs().sum() > 0):
        raise PluginCheckError(f"loss {name!r} gives no gradient to the logits; expected {EXPECTED_SIGNATURE}")
    return (f"on logits [2, 5, 11] with {n_items} trained tokens: {seen[0]:.4f} (loss_scale None), "
            f"{seen[1]:.4f} (one token weighted 2.0); scalar with grad")


LOSS_FUNCS.attach(collector=collect_losses, interface_check=check_plugin_entry)
