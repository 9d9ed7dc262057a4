"""Tuners: which parameters of the policy train (``policy.tuner``): ``full`` or ``lora`` through peft.

* :func:`apply_tuner` wraps a causal LM in peft LoRA adapters (only they train) or leaves it as it is;
* :func:`trainable_counts` counts trainable / all parameters;
* :func:`merged_params` yields the base model's parameter names (what HF checkpoints and vLLM expect) with
  every adapter merged in (``W + scaling * B @ A``), so weight sync and HF exports work the same as for
  full fine-tuning;
* :func:`adapter_state` / :func:`save_adapter` write the adapter (peft format, ``PeftModel.from_pretrained``
  loads it), :func:`save_merged` the merged model as a plain HF checkpoint.

Under DeepSpeed ZeRO-3 parameters are partitioned: the functions that read weights take ``gather``, a
context-manager factory that gathers a list of parameters (:func:`gatherer`); it is a collective, so every
rank must run them over the same parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

Gather = Callable[[list[torch.nn.Parameter]], contextlib.AbstractContextManager[Any]]

_ADAPTER_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _no_gather(params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def gatherer(zero3: bool) -> Gather:
    """The gather function for :func:`merged_params` / :func:`adapter_state`: DeepSpeed's ``GatheredParameters``
    under ZeRO-3 (read-only, every rank gets the full tensors), a no-op otherwise."""
    if not zero3:
        return _no_gather
    import deepspeed

    return lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def apply_tuner(model: torch.nn.Module, tuner: dict[str, Any] | None, gradient_checkpointing: bool = False
                ) -> torch.nn.Module:
    """``model`` ready for training with ``tuner`` (a ``policy.tuner`` dict): ``full`` returns it unchanged;
    ``lora`` freezes it and adds LoRA adapters (rank, alpha, dropout, target modules) with peft, returning the
    ``PeftModel``. With gradient checkpointing the input embeddings' outputs require grad, so the frozen
    embedding does not cut the checkpointed graph."""
    tuner = dict(tuner or {})
    kind = tuner.get("type", "full")
    if kind == "full":
        return model
    if kind != "lora":
        raise ValueError(f"unknown policy.tuner.type {kind!r}; expected full or lora")
    from peft import LoraConfig, get_peft_model

    targets = list(tuner.get("target_modules") or ["all-linear"])
    config = LoraConfig(
        r=int(tuner.get("lora_rank", 8)), lora_alpha=float(tuner.get("lora_alpha", 32.0)),
        lora_dropout=float(tuner.get("lora_dropout", 0.05)),
        target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
    )
    if gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ValueError(f"policy.tuner.target_modules={targets}: {e}") from e


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (LoRA adapters on a frozen base)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable parameters, all parameters)``; under ZeRO-3 the full sizes (``ds_numel``), not the shards."""
    def numel(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def _is_adapter(name: str) -> bool:
    return any(part in _ADAPTER_MARKERS for part in name.split("."))


def _cpu_copy(p: torch.Tensor) -> torch.Tensor:
    return p.data.detach().to("cpu", copy=True)


@torch.no_grad()
def merged_params(model: torch.nn.Module, gather: Gather = _no_gather) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full CPU tensor)`` for every parameter of the base model, with the active adapter merged into
    the weights it wraps; names as in the base model's own checkpoint (``model.layers.0.self_attn.q_proj.weight``,
    no ``base_layer`` / ``lora_*``). The model itself is not modified."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()  # type: ignore[operator]
    adapter = model.active_adapter  # type: ignore[attr-defined]
    wrapped = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, p in base.named_parameters():
        if _is_adapter(name):
            continue
        if ".base_layer." not in name:
            with gather([p]):
                yield name, _cpu_copy(p)
            continue
        owner, leaf = name.rsplit(".base_layer.", 1)
        layer = wrapped[owner]
        if leaf != "weight" or adapter not in layer.scaling or layer.merged:
            with gather([p]):
                yield f"{owner}.{leaf}", _cpu_copy(p)
            continue
        with gather([p, *_adapter_params(layer, adapter)]):
            delta = layer.get_delta_weight(adapter)
            yield f"{owner}.{leaf}", (p.data + delta.to(p.dtype)).detach().to("cpu", copy=True)


def _adapter_params(layer: Any, adapter: str) -> list[torch.nn.Parameter]:
    out: list[torch.nn.Parameter] = []
    for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
        table = getattr(layer, attr, None)
        if table is not None and adapter in table:
            entry = table[adapter]
            out.extend(entry.parameters() if isinstance(entry, torch.nn.Module) else [entry])
    return out


@torch.no_grad()
def adapter_state(model: torch.nn.Module, gather: Gather = _no_gather) -> dict[str, torch.Tensor]:
    """The adapter parameters as full CPU tensors, under the peft model's own parameter names."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if _is_adapter(name):
            with gather([p]):
                out[name] = _cpu_copy(p)
    return out


def save_adapter(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                 base_model: str | None = None) -> Path:
    """Write the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) from ``state``
    (:func:`adapter_state`); ``base_model`` goes into the config's ``base_model_name_or_path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.peft_config[model.active_adapter]  # type: ignore[index,attr-defined]
    previous = cfg.base_model_name_or_path
    if base_model is not None:
        cfg.base_model_name_or_path = base_model
    try:
        model.save_pretrained(out, state_dict=state, safe_serialization=True,  # type: ignore[operator]
                              save_embedding_layers=False)
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
