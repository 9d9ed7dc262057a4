"""Adapter weights of a tuned model: the merged full weights for weight sync and export (LoRA / IA3 folded in,
ZeRO-3 partitions gathered), the adapter's own state, and saving either. See docs/sft.md (LoRA)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
from actors.tuners import LoraTuner, is_peft

Gather = Callable[[list[Any]], contextlib.AbstractContextManager[Any]]


def no_gather(params: list[Any]) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def gatherer(zero3: bool) -> Gather:
    """The gather function for :func:`export_params` / :func:`adapter_state`: DeepSpeed's ``GatheredParameters``
    under ZeRO-3 (read-only, every rank gets the full tensors), a no-op otherwise."""
    if not zero3:
        return no_gather
    import deepspeed

    return lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _cpu_copy(p: Any) -> torch.Tensor:
    return p.data.detach().to("cpu", copy=True)


def _tuner_layers(model: torch.nn.Module) -> dict[str, Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _adapter_markers(layers: Iterable[Any]) -> set[str]:
    out = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "ia3_l"}
    for layer in layers:
        out.update(getattr(layer, "adapter_layer_names", ()))
    return out


def _layer_params(layer: Any, adapter: str) -> list[Any]:
    out: list[Any] = []
    for attr in getattr(layer, "adapter_layer_names", ()):
        table = getattr(layer, attr, None)
        if table is not None and adapter in table:
            entry = table[adapter]
            out.extend(entry.parameters() if hasattr(entry, "parameters") else [entry])
    return out


def _merged(layer: Any, leaf: str, adapter: str, p: Any) -> torch.Tensor:
    """The base weight / bias ``leaf`` of a peft layer with ``adapter`` merged in (the layer is not modified)."""
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.lora import LoraLayer

    if isinstance(layer, LoraLayer):
        if leaf != "weight":
            return p.data
        return p.data + layer.get_delta_weight(adapter).to(p.dtype)
    if isinstance(layer, IA3Layer):
        import torch

        if not isinstance(layer.get_base_layer(), torch.nn.Linear):
            raise ValueError(f"IA3 on {type(layer.get_base_layer()).__name__} cannot be merged for weight sync; "
                             "target linear layers only")
        scale = layer.ia3_l[adapter].data
        if leaf == "weight":
            return p.data * (scale.T if layer.fan_in_fan_out else scale).to(p.dtype)
        if leaf == "bias" and not layer.is_feedforward:
            return p.data * scale.reshape(p.shape).to(p.dtype)
        return p.data
    raise ValueError(f"{type(layer).__name__} adapters cannot be merged for weight sync / export by raylhf; give the "
                     "tuner an export_params(model, gather) static method yielding (base name, tensor)")


def merged_params(model: torch.nn.Module, gather: Gather = no_gather) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full CPU tensor)`` for every parameter of a peft model's base model, with the active adapter
    (LoRA or IA3) merged into the weights it wraps; names as in the base model's own checkpoint
    (``model.layers.0.self_attn.q_proj.weight``, no ``base_layer`` / ``lora_*`` / ``ia3_l``). The model itself
    is not modified."""
    import torch

    base = model.get_base_model()  # type: ignore[operator]
    adapter = model.active_adapter  # type: ignore[attr-defined]
    wrapped = _tuner_layers(base)
    markers = _adapter_markers(wrapped.values())
    with torch.no_grad():
        for name, p in base.named_parameters():
            if any(part in markers for part in name.split(".")):
                continue
            if ".base_layer." not in name:
                with gather([p]):
                    yield name, _cpu_copy(p)
                continue
            owner, leaf = name.rsplit(".base_layer.", 1)
            layer = wrapped[owner]
            if getattr(layer, "merged", False) or not _layer_params(layer, adapter):
                with gather([p]):
                    yield f"{owner}.{leaf}", _cpu_copy(p)
                continue
            with gather([p, *_layer_params(layer, adapter)]):
                yield f"{owner}.{leaf}", _merged(layer, leaf, adapter, p).detach().to("cpu", copy=True)


def export_params(model: torch.nn.Module, gather: Gather = no_gather, tuner: Any = None
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """What weight sync and HF exports send: ``tuner.export_params`` when the tuner has one, else a peft
    model's merged weights (:func:`merged_params`), else the model's own parameters."""
    import torch

    custom = getattr(tuner, "export_params", None)
    if custom is not None:
        yield from custom(model, gather)
        return
    if is_peft(model):
        yield from merged_params(model, gather)
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            with gather([p]):
                yield name, _cpu_copy(p)


def adapter_state(model: torch.nn.Module, gather: Gather = no_gather) -> dict[str, torch.Tensor]:
    """A peft model's adapter parameters as full CPU tensors, under the peft model's own parameter names."""
    import torch

    markers = _adapter_markers(_tuner_layers(model).values())
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in markers for part in name.split(".")):
                with gather([p]):
                    out[name] = _cpu_copy(p)
    return out


def save_adapter(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                 base_model: str | None = None, tuner: Any = LoraTuner) -> Path:
    """Write a peft model's adapter through ``tuner.save_pretrained`` from ``state`` (:func:`adapter_state`);
    ``base_model`` goes into the config's ``base_model_name_or_path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.peft_config[model.active_adapter]  # type: ignore[index,attr-defined]
    previous = cfg.base_model_name_or_path
    if base_model is not None:
        cfg.base_model_name_or_path = base_model
    try:
        tuner.save_pretrained(model, str(out), state_dict=state, safe_serialization=True)
    finally:
        cfg.base_model_name_or_path = previous
    return out


def save_merged(model: torch.nn.Module, state: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                path: str | Path) -> Path:
    """Write the merged weights (:func:`merged_params`) as a plain HF checkpoint of the base model's class."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.get_base_model().save_pretrained(out, state_dict=dict(state), safe_serialization=True)  # type: ignore[operator]
    return out
