"""A mixture-of-experts router's load balance: the auxiliary loss and how unevenly its experts are used.

For the tokens of one forward pass, each MoE layer ``l`` gives router logits ``[N, E]`` and the experts each token
was sent to ``[N, k]``. With ``f_e`` the share of all routed assignments (every layer, every counted token, each of
its ``k`` choices) that went to expert ``e``, times ``k``, and ``P_e`` the mean router probability of ``e``:

    aux_loss = E * sum_e f_e * P_e        (Switch Transformer eq. 4; HF's ``load_balancing_loss_func``)

It equals ``k`` when routing is uniform and grows as it concentrates; its gradient flows through ``P`` only.
``expert_load_max`` / ``expert_load_min``: per layer, the share of that layer's assignments an expert got, over
the uniform share ``1/E``, the largest and the smallest over layers and experts (1.0 each when balanced; ``E/k``
at most, 0 for an expert no token chose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RouterBalance", "router_balance"]


@dataclass
class RouterBalance:
    aux_loss: torch.Tensor  # scalar, differentiable through the router probabilities
    expert_load_max: float
    expert_load_min: float

    def metrics(self) -> dict[str, float]:
        return {"moe/aux_loss": float(self.aux_loss.detach()), "moe/expert_load_max": self.expert_load_max,
                "moe/expert_load_min": self.expert_load_min}


def router_balance(logits: Sequence[torch.Tensor], selected: Sequence[torch.Tensor], num_experts: int,
                   mask: torch.Tensor | None = None) -> RouterBalance:
    """The balance of one forward pass. ``logits[l]``: layer ``l``'s router logits ``[N, E]``; ``selected[l]``: the
    experts each token was routed to ``[N, k]``; ``mask`` ``[N]``: the tokens that count (padding: 0); None: all."""
    if not logits or len(logits) != len(selected):
        raise ValueError(f"router_balance needs one selection per layer of logits: {len(logits)} logits, "
                         f"{len(selected)} selections")
    n = logits[0].shape[0]
    w = torch.ones(n) if mask is None else mask.reshape(-1).float()
    w = w.to(logits[0].device)
    total = w.sum().clamp_min(1.0)
    routed = torch.zeros(num_experts, device=w.device)
    prob = logits[0].new_zeros(num_experts, dtype=torch.float32)
    loads = []
    for lg, sel in zip(logits, selected, strict=True):
        counts = torch.zeros(num_experts, device=w.device).index_add_(
            0, sel.reshape(-1).to(w.device), w.repeat_interleave(sel.shape[-1]))
        routed = routed + counts
        prob = prob + (torch.softmax(lg.float(), dim=-1) * w[:, None]).sum(0)
        loads.append(counts / counts.sum().clamp_min(1.0) * num_experts)
    layers = len(logits)
    f = routed / (total * layers)  # sums to k
    p = prob / (total * layers)
    load = torch.stack(loads)
    return RouterBalance(num_experts * (f * p).sum(), float(load.max()), float(load.min()))
