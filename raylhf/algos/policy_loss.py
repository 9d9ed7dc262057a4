"""Clipped policy-gradient surrogate (PPO / GRPO / DAPO / GSPO) and token entropy.

:func:`policy_loss` returns the *per-token* loss ``[B, T]`` (``0`` outside the mask); reducing it to a
scalar is :func:`raylhf.algos.aggregate.aggregate`'s job, so the normalization stays consistent across
micro-batches and ranks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raylhf.algos.is_correction import is_weights
from raylhf.algos.utils import masked_mean, to_float, upcast

__all__ = ["entropy_from_logits", "policy_loss"]

RatioLevel = Literal["token", "sequence"]

_MAX_LOG_RATIO = 20.0


def _masked_extreme(x: Tensor, m: Tensor, largest: bool) -> float:
    if not bool(m.any()):
        return 0.0
    fill = float("-inf") if largest else float("inf")
    y = torch.where(m, x, torch.full_like(x, fill))
    return to_float(y.max() if largest else y.min())


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    level: RatioLevel = "token",
    rollout_logp: Tensor | None = None,
    tis_cap: float | None = None,
    is_mode: str | None = None,
    is_low: float | None = None,
    is_high: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token clipped surrogate loss of PPO (Schulman et al., 2017) and its LLM variants.

    Inputs are ``[B, T]`` log-probs of the sampled tokens under the current policy (``logp``, with
    gradient), the policy that produced the batch's old log-probs (``old_logp``), and advantages
    ``[B, T]`` or ``[B]`` (broadcast over tokens). With ratio ``rho`` and advantage ``A``::

        L_t = max(-A * rho_t, -A * clip(rho_t, 1 - clip_low, 1 + clip_high))

    * asymmetric clipping / clip-higher: ``clip_high > clip_low`` (DAPO, Yu et al., 2025);
    * dual clip (Ye et al., 2020, "Mastering Complex Control in MOBA Games"): for ``A < 0`` the loss is
      additionally bounded, ``L_t = min(L_t, -c * A)`` with the constant ``c = dual_clip > 1``;
    * ``level="token"``: ``rho_t = exp(logp_t - old_logp_t)`` (PPO / GRPO);
      ``level="sequence"``: one ratio per sequence, the geometric mean of its token ratios over the
      mask, ``rho_i = exp(mean_t(logp_t - old_logp_t))``, broadcast to its tokens (GSPO, Zheng et al.,
      2025; GSPO uses much smaller clip ranges, e.g. 3e-4 / 4e-4);
    * importance-sampling correction for the rollout-engine/trainer mismatch: when ``rollout_logp``
      (log-probs reported by the inference engine) and an upper threshold (``is_high``, else
      ``tis_cap``) are given, each token loss is multiplied by the detached weight of
      :func:`raylhf.algos.is_correction.is_weights` with mode ``is_mode`` (default ``token_tis``, the
      truncated IS of Yao et al., 2025, "Your efficient RL framework secretly brings you off-policy RL
      training": ``w_t = min(exp(old_logp_t - rollout_logp_t), tis_cap)``) and thresholds ``is_low`` /
      ``is_high``. Without a threshold, or with ``is_mode="none"``, no correction is applied.

    With ``rho = 1`` and no clipping active this is the plain policy gradient: ``L_t = -A * rho_t`` with
    gradient ``-A * grad(logp_t)``.

    Metrics (masked means over tokens): ``clip_frac_low`` (``A < 0`` and ``rho < 1 - clip_low``),
    ``clip_frac_high`` (``A > 0`` and ``rho > 1 + clip_high``), ``clip_frac`` (their sum),
    ``dual_clip_frac``, ``approx_kl`` (k3 estimate of ``KL(old || new)``, ``rho - 1 - log rho`` on the
    token ratios), ``ratio_mean`` / ``ratio_max`` / ``ratio_min``; with an IS correction also its metrics
    (``is_weight_mean``, ``is_masked_frac``, ``is_capped_frac``, ``rollout_mismatch_kl``: k3 of
    ``KL(rollout || old)``; with ``token_tis`` also ``tis_weight_mean`` and ``tis_frac_capped``).
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    m = mask.bool()
    adv = advantages.detach()
    if adv.dim() == logp.dim() - 1:
        adv = adv.unsqueeze(-1)
    adv = adv.to(logp.dtype).expand_as(logp)
    old = old_logp.detach()

    token_log_ratio = torch.where(m, logp - old, torch.zeros_like(logp))
    if level == "token":
        log_ratio = token_log_ratio
    else:
        log_ratio = masked_mean(token_log_ratio, m, dim=-1).unsqueeze(-1).expand_as(logp)
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)

    metrics: dict[str, float] = {}
    mode = "token_tis" if is_mode is None else is_mode
    high = tis_cap if is_high is None else is_high
    if rollout_logp is not None and high is not None and mode != "none":
        weight, is_metrics = is_weights(old, rollout_logp, m, mode, low=is_low, high=high)
        metrics.update(is_metrics)
        loss = loss * weight

    loss = torch.where(m, loss, torch.zeros_like(loss))

    with torch.no_grad():
        r = ratio.detach()
        low = ((adv < 0) & (r < 1.0 - clip_low)).float()
        high = ((adv > 0) & (r > 1.0 + clip_high)).float()
        metrics["clip_frac_low"] = to_float(masked_mean(low, m))
        metrics["clip_frac_high"] = to_float(masked_mean(high, m))
        metrics["clip_frac"] = metrics["clip_frac_low"] + metrics["clip_frac_high"]
        if dual_clip is not None:
            metrics["dual_clip_frac"] = to_float(masked_mean(((adv < 0) & (r > dual_clip)).float(), m))
        lr = token_log_ratio.detach().clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        metrics["approx_kl"] = to_float(masked_mean(torch.exp(lr) - 1.0 - lr, m))
        metrics["ratio_mean"] = to_float(masked_mean(r, m))
        metrics["ratio_max"] = _masked_extreme(r, m, largest=True)
        metrics["ratio_min"] = _masked_extreme(r, m, largest=False)
    return loss, metrics


def entropy_from_logits(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-token entropy of the categorical distribution ``softmax(logits)``, ``[..., V] -> [...]``.

    ``H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v`` (Shannon, 1948; used as an exploration
    bonus since Williams & Peng, 1991, and Mnih et al., 2016). Computed in at least float32; entries
    outside ``mask`` are ``0``. Differentiable (for an entropy bonus).
    """
    z = upcast(logits)
    p = F.softmax(z, dim=-1)
    z_finite = torch.where(torch.isfinite(z), z, torch.zeros_like(z))  # -inf logits (masked vocab) have p = 0
    h = torch.logsumexp(z, dim=-1) - (p * z_finite).sum(dim=-1)
    if mask is not None:
        h = torch.where(mask.bool(), h, torch.zeros_like(h))
    return h
