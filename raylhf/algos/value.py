"""The critic's side of PPO: the clipped value loss, explained variance, and the KL coefficient controllers.

* ``value_loss`` (PPO2, OpenAI baselines): with ``v`` the new values, ``v_old`` the values at rollout time
  and ``R`` the returns, ``v_clip = v_old + clamp(v - v_old, -clip, clip)`` and the per-token loss is
  ``0.5 * max((v - R)^2, (v_clip - R)^2)`` (without ``clip``: ``0.5 * (v - R)^2``).
* ``explained_variance``: ``1 - Var[R - v] / Var[R]`` over the selected tokens (1: perfect, 0: no better
  than a constant, negative: worse).
* ``AdaptiveKLController`` (Ziegler et al., 2019): ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2)
  * n / horizon)`` after ``n`` samples whose mean KL was ``KL``; ``FixedKLController`` keeps ``beta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raylhf.algos.utils import masked_mean, to_float

__all__ = ["AdaptiveKLController", "FixedKLController", "explained_variance", "value_loss"]


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float | None = 0.2) -> tuple[Tensor, dict[str, float]]:
    """Per-token value loss ``[B, T]`` (``0`` outside ``mask``; aggregate it like a policy loss) and metrics
    ``vf/clip_frac`` (selected tokens where the clipped branch is larger) and ``vf/values_mean``."""
    m = mask.bool()
    err = (values - returns).square()
    if clip is not None:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns).square()
        per_tok = 0.5 * torch.maximum(err, err_clip)
        clipped = (err_clip > err).float()
    else:
        per_tok = 0.5 * err
        clipped = torch.zeros_like(err)
    per_tok = torch.where(m, per_tok, torch.zeros_like(per_tok))
    with torch.no_grad():
        metrics = {"vf/clip_frac": to_float(masked_mean(clipped, m)),
                   "vf/values_mean": to_float(masked_mean(values.detach(), m))}
    return per_tok, metrics


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    if r.numel() < 2:
        return float("nan")
    var_r = r.var(unbiased=False)
    if var_r == 0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var_r)


@dataclass
class FixedKLController:
    value: float

    def update(self, kl: float, n: int) -> None:
        pass


@dataclass
class AdaptiveKLController:
    value: float
    target: float
    horizon: float = 10000.0

    def update(self, kl: float, n: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * n / self.horizon
