"""Per-token KL estimators between the policy and a reference policy (Schulman, 2020, "Approximating KL
Divergence", http://joschu.net/blog/kl-approx.html).

All take the log-probs of the *sampled* tokens, ``logp`` (policy) and ``ref_logp`` (reference), and
estimate ``KL(policy || ref)`` per token; averaged over tokens sampled from the policy they are unbiased
(k1, k3) or low-bias (k2). Use them as a loss term (``kl_coef * aggregate(kl_penalty(...))``, keeps the
gradient) or as a per-token reward penalty (:func:`kl_reward_penalty`, detached).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from raylhf.algos.utils import masked_mean, to_float

__all__ = ["KL_ESTIMATORS", "kl_penalty", "kl_reward_penalty"]

KLEstimator = Literal["k1", "k2", "k3", "kl", "mse", "low_var_kl"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def kl_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    estimator: KLEstimator | str = "k3",
    *,
    clamp: float | None = 10.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token KL estimate ``[B, T]`` (``0`` outside ``mask``), differentiable w.r.t. ``logp``.

    With ``d = ref_logp - logp`` (log of the ratio ``ref / policy``):

    * ``"k1"`` (alias ``"kl"``): ``logp - ref_logp = -d`` -- unbiased, high variance, can be negative;
    * ``"k2"`` (alias ``"mse"``): ``0.5 * d^2`` -- low variance, biased;
    * ``"k3"`` (alias ``"low_var_kl"``): ``exp(d) - d - 1 >= 0`` -- unbiased and low variance (the GRPO
      KL term, Shao et al., 2024). ``d`` is clamped to ``[-20, 20]`` before ``exp`` and the result to
      ``[-clamp, clamp]`` (``clamp=None`` disables the latter).
    """
    est = _ALIASES.get(estimator, estimator)
    d = ref_logp - logp
    if est == "k1":
        kl = -d
    elif est == "k2":
        kl = 0.5 * d.square()
    elif est == "k3":
        dc = d.clamp(-20.0, 20.0)
        kl = torch.exp(dc) - dc - 1.0
        if clamp is not None:
            kl = kl.clamp(-clamp, clamp)
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS} (or aliases)")
    if mask is not None:
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
    return kl


def kl_reward_penalty(
    token_rewards: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    coef: float,
    estimator: KLEstimator | str = "k1",
    *,
    clamp: float | None = 10.0,
) -> tuple[Tensor, dict[str, float]]:
    """KL-shaped per-token rewards ``r_t - coef * KL_t`` (detached), as in RLHF PPO (Ziegler et al., 2019;
    Ouyang et al., 2022) and REINFORCE++ (Hu, 2025).

    ``token_rewards``: ``[B, T]`` (e.g. the outcome reward on the last token, see
    :func:`raylhf.algos.advantages.outcome_to_token_rewards`). Returns the shaped rewards (``0``
    outside ``mask``) and ``{"kl_mean": masked mean KL, "kl_seq_sum_mean": mean over sequences of the
    summed KL}``.
    """
    with torch.no_grad():
        m = mask.bool()
        kl = kl_penalty(logp.detach(), ref_logp.detach(), estimator, clamp=clamp, mask=m)
        shaped = torch.where(m, token_rewards.detach() - coef * kl, torch.zeros_like(kl))
        metrics = {
            "kl_mean": to_float(masked_mean(kl, m)),
            "kl_seq_sum_mean": to_float(kl.sum(dim=-1).mean()) if kl.dim() > 1 else to_float(kl.sum()),
        }
    return shaped, metrics
