"""Off-policy importance-sampling corrections for the sampler/trainer mismatch.

The rollout engine (vLLM, ...) samples with log-probs ``rollout_logp`` that differ from the trainer's
log-probs ``old_logp`` of the same tokens under the same weights (kernels, precision, or ``async_steps``
staleness). The policy loss is then off-policy; :func:`is_weights` returns a detached ``[B, T]`` weight
that multiplies each token loss, built from the per-token log ratio (trainer vs sampler)::

    d_t = old_logp_t - rollout_logp_t                     (0 outside the mask)

Modes (``low`` / ``high`` are ratio thresholds, ``S = sum_t d_t`` and ``M = mean_t d_t`` over a
sequence's trained tokens, broadcast to its tokens):

* ``none``: ``w_t = 1``, no metrics;
* ``token_tis``: truncated IS per token, ``w_t = min(exp(d_t), high)`` (Yao et al., 2025, "Your
  efficient RL framework secretly brings you off-policy RL training");
* ``seq_tis``: truncated IS per sequence, ``w = min(exp(S), high)``;
* ``token_mis``: masked IS per token, ``w_t = exp(d_t)`` if ``exp(d_t) <= high`` else ``0``
  (one-sided; the masked IS of Yao et al. / Liu et al., 2025, "When speed kills stability");
* ``seq_mis``: masked IS per sequence, ``R = exp(S)``, ``w = R`` if ``R <= high`` else ``0`` for the
  whole sequence;
* ``icepop``: two-sided token masking (IcePop, Ling Team, 2025, "Every step evolves: scaling
  reinforcement learning for trillion-scale thinking model", Ring-1T), ``w_t = exp(d_t)`` if
  ``low <= exp(d_t) <= high`` else ``0``;
* ``geo_seq``: geometric-mean sequence rejection, ``G = exp(M)``, ``w = 1`` for the whole sequence if
  ``low <= G <= high`` else ``0`` (the geometric rejection of Liu et al., 2025; length-normalized, so
  long sequences are not rejected just for being long).

Log ratios (``d_t``, ``S`` and ``M``) are clamped to ``[-20, 20]`` before ``exp``, so no weight is
``inf``. Pure tensor function: no config, no distributed calls.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from raylhf.algos.utils import masked_mean, masked_sum, to_float

__all__ = ["IS_MODES", "ISMode", "is_weights"]

ISMode = Literal["none", "token_tis", "seq_tis", "token_mis", "seq_mis", "icepop", "geo_seq"]
IS_MODES: tuple[str, ...] = get_args(ISMode)
TWO_SIDED_MODES: tuple[str, ...] = ("icepop", "geo_seq")
"""Modes that also reject ratios below ``low``."""

MAX_LOG_RATIO = 20.0


def _clamped_exp(log_ratio: Tensor) -> Tensor:
    return torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def is_weights(
    old_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    mode: str = "token_tis",
    low: float | None = None,
    high: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Detached IS weights ``[B, T]`` for the rollout/trainer mismatch, and their metrics.

    ``old_logp`` / ``rollout_logp`` are ``[B, T]`` log-probs of the sampled tokens under the trainer and
    the sampler; ``mask`` ``[B, T]`` selects the trained tokens (entries outside it may be ``inf`` /
    ``nan``: they are ignored and get weight ``1``). ``mode`` is one of :data:`IS_MODES` (formulas in the
    module docstring). Every mode but ``none`` needs ``high > 0``; ``icepop`` and ``geo_seq`` also use
    ``low`` (``0 < low < high``; ``None`` means ``1 / high``, a band symmetric in log space).

    Metrics (masked means over the trained tokens; none for ``none``):

    * ``is_weight_mean``: mean weight;
    * ``is_masked_frac``: tokens whose weight masking set to ``0`` (``*_mis``, ``icepop``, ``geo_seq``);
    * ``is_capped_frac``: tokens whose weight was capped at ``high`` (``*_tis``);
    * ``rollout_mismatch_kl``: k3 estimate of ``KL(rollout || old)``, ``exp(d_t) - 1 - d_t`` per token;
    * ``token_tis`` also keeps the earlier names ``tis_weight_mean`` (= ``is_weight_mean``) and
      ``tis_frac_capped`` (= ``is_capped_frac``).
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown IS correction mode {mode!r}; expected one of {', '.join(IS_MODES)}")
    if mode == "none":
        return torch.ones_like(old_logp).detach(), {}
    if high is None or high <= 0:
        raise ValueError(f"IS correction {mode!r} needs an upper threshold high > 0, got {high}")
    lo = 1.0 / high if low is None else low  # only the two-sided modes use it
    if mode in TWO_SIDED_MODES and not 0 < lo < high:
        raise ValueError(f"IS correction {mode!r} needs 0 < low < high, got low={lo}, high={high}")
    m = mask.bool()
    with torch.no_grad():
        old = old_logp.detach()
        d = torch.where(m, old - rollout_logp.detach(), torch.zeros_like(old))
        raw = _clamped_exp(d)  # per-token ratio exp(d_t)
        if mode.startswith("token_") or mode == "icepop":
            ratio = raw
        else:  # sequence-level modes: one ratio per row, broadcast to its tokens
            log_seq = masked_mean(d, m, dim=-1) if mode == "geo_seq" else masked_sum(d, m, dim=-1)
            ratio = _clamped_exp(log_seq).unsqueeze(-1).expand_as(raw)
        capped: Tensor | None = None
        rejected: Tensor | None = None
        if mode.endswith("_tis"):  # truncated: capped at high
            weight = ratio.clamp(max=high)
            capped = ratio > high
        else:  # masked: 0 outside the band ([lo, high] for the two-sided modes, <= high otherwise)
            rejected = (ratio < lo) | (ratio > high) if mode in TWO_SIDED_MODES else ratio > high
            kept = torch.ones_like(ratio) if mode == "geo_seq" else ratio
            weight = torch.where(rejected, torch.zeros_like(ratio), kept)
        weight = weight.contiguous()
        metrics: dict[str, float] = {}
        mean_w = to_float(masked_mean(weight, m))
        frac_capped = to_float(masked_mean(capped.float(), m)) if capped is not None else 0.0
        if mode == "token_tis":  # the names (and values) of the earlier TIS-only implementation
            metrics["tis_weight_mean"] = mean_w
            metrics["tis_frac_capped"] = frac_capped
        metrics["rollout_mismatch_kl"] = to_float(masked_mean(raw - 1.0 - d, m))
        metrics["is_weight_mean"] = mean_w
        metrics["is_masked_frac"] = to_float(masked_mean(rejected.float(), m)) if rejected is not None else 0.0
        metrics["is_capped_frac"] = frac_capped
    return weight, metrics
