"""The routers of a mixture-of-experts policy, recorded during its training forwards (docs/families.md).

transformers 5 declares, per model class, which module's output is the router's logits (``_can_record_outputs``
-> ``OutputRecorder(TopKRouter, index=0)``: Qwen3-MoE, gpt-oss, DeepSeek V2/V3, Mixtral, ...). A
:class:`RouterRecorder` puts a forward hook on each such module once; inside ``recording(real)`` the hooks keep
every layer's logits (with their graph) and the experts it chose (the router's own selection where it returns
one: ``(logits, weights, indices)``, else the top-k of the logits), at the flat positions ``real`` of the forward's
``[R * T]`` token layout (padding and packed rows' tails left out). ``take()`` turns them into
``raylhf.algos.moe.RouterBalance`` (the aux loss and the expert loads). Outside ``recording`` the hooks do nothing,
so reference / log-prob forwards and gradient checkpointing's recomputations cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from raylhf.algos.moe import RouterBalance, router_balance

EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk")


@dataclass(frozen=True)
class MoeSpec:
    num_experts: int
    top_k: int


def moe_spec(config: Any) -> MoeSpec | None:
    """The experts and top-k of an HF config, or None for a dense model (no expert count above 1)."""
    experts = next((int(v) for k in EXPERT_COUNT_KEYS if isinstance(v := getattr(config, k, None), int)), 0)
    if experts <= 1:
        return None
    top_k = next((int(v) for k in TOP_K_KEYS if isinstance(v := getattr(config, k, None), int)), 1)
    return MoeSpec(experts, top_k)


def router_classes(model: torch.nn.Module) -> tuple[type, int] | None:
    """``(router module class, output index of its logits)`` that transformers records ``router_logits`` from."""
    for m in model.modules():
        rec = (getattr(type(m), "_can_record_outputs", None) or {}).get("router_logits")
        if rec is not None and isinstance(getattr(rec, "target_class", None), type):
            return rec.target_class, int(getattr(rec, "index", 0) or 0)
    return None


class RouterRecorder:
    """Forward hooks on a MoE model's routers; see the module doc."""

    def __init__(self, model: torch.nn.Module, spec: MoeSpec, router: type, index: int) -> None:
        self.spec, self.index = spec, index
        self.real: torch.Tensor | None = None  # set while recording
        self.logits: list[torch.Tensor] = []
        self.selected: list[torch.Tensor] = []
        self.hooks = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, router)]

    @classmethod
    def of(cls, model: torch.nn.Module) -> RouterRecorder | None:
        """A recorder for ``model`` (a DeepSpeed engine, peft or HF model) when it is a MoE whose routers
        transformers declares; None otherwise."""
        inner = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
        spec = moe_spec(getattr(inner, "config", None))
        found = router_classes(inner) if spec is not None else None
        if spec is None or found is None:
            return None
        return cls(inner, spec, *found)

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if self.real is None:
            return
        parts = output if isinstance(output, tuple | list) else (output,)
        logits = parts[self.index]
        logits = logits.reshape(-1, logits.shape[-1])
        last = parts[-1] if len(parts) > 2 else None
        if isinstance(last, torch.Tensor) and not last.is_floating_point() and last.shape[0] == logits.shape[0]:
            chosen = last.reshape(logits.shape[0], -1)
        else:
            chosen = torch.topk(logits.detach(), self.spec.top_k, dim=-1).indices
        real = self.real.to(logits.device)
        self.logits.append(logits.index_select(0, real))
        self.selected.append(chosen.index_select(0, real))

    @contextmanager
    def recording(self, real: torch.Tensor) -> Iterator[None]:
        """Record the routers of the forwards inside the block at the flat token positions ``real``."""
        self.real, self.logits, self.selected = real, [], []
        try:
            yield
        finally:
            self.real = None

    def take(self) -> RouterBalance | None:
        """The balance of what the last ``recording`` saw (None when no router ran), then forget it."""
        logits, selected, self.logits, self.selected = self.logits, self.selected, [], []
        if not logits:
            return None
        return router_balance(logits, selected, self.spec.num_experts)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def with_router_loss(recorder: RouterRecorder | None, loss: torch.Tensor, metrics: dict[str, float], coef: float,
                     weight: float, global_tokens: float | None) -> torch.Tensor:
    """A micro-batch's ``loss`` plus ``coef`` x the router's aux loss of its forward, weighted by the micro-batch's
    share of the step's trained tokens (``weight / global_tokens``: the micro-batches and ranks add up to the
    batch's token-weighted mean, as the objective's terms do); adds ``moe/*`` (and ``loss/router_aux``) to
    ``metrics``. ``loss`` unchanged for a dense model or a forward that recorded nothing."""
    balance = recorder.take() if recorder is not None else None
    if balance is None:
        return loss
    metrics.update(balance.metrics())
    if coef:
        term = coef * balance.aux_loss * (weight / (global_tokens or weight or 1.0))
        loss = loss + term.to(loss.device)
        metrics["loss/router_aux"] = float(term.detach())
        metrics["loss/total"] = metrics.get("loss/total", 0.0) + metrics["loss/router_aux"]
    return loss
