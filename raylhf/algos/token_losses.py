"""Token-level losses: weighted cross-entropy (SFT), generalized JSD (on-policy distillation / GKD) and the
clipped value loss of PPO critics.

Logits ``[B, T, V]`` and labels / masks ``[B, T]`` are expected *aligned* (``logits[:, t]`` predicts
``labels[:, t]``; shift before calling). Scalar losses divide a sum over tokens by a count that may be
global (all micro-batches / ranks) so that summing the pieces reproduces the whole-batch loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from raylhf.algos.utils import masked_mean, masked_sum, to_float, upcast

__all__ = [
    "clipped_value_loss",
    "cross_entropy_per_token",
    "generalized_jsd",
    "generalized_jsd_per_token",
    "token_logprobs",
    "weighted_cross_entropy",
]

IGNORE_INDEX = -100


def _safe_count(count: Tensor | float | int) -> Tensor | float | int:
    if isinstance(count, Tensor):
        return torch.where(count > 0, count, torch.ones_like(count))
    return count if count > 0 else 1


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``log softmax(logits)[label]`` per token, ``[B, T]``; ``0`` where ``labels == ignore_index``."""
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    logp = torch.log_softmax(upcast(logits), dim=-1).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, logp, torch.zeros_like(logp))


def cross_entropy_per_token(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-token negative log-likelihood ``-log p(label)``, ``[B, T]``; ``0`` at ignored positions."""
    flat = F.cross_entropy(
        upcast(logits).reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return flat.view(labels.shape)


def weighted_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    loss_scale: Tensor | None = None,
    global_count: Tensor | float | int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, dict[str, float]]:
    """Token-weighted cross-entropy for SFT: ``L = sum_t w_t * CE_t / N``.

    ``CE_t = -log softmax(z_t)[y_t]`` (maximum likelihood, e.g. Ouyang et al., 2022 for SFT), ``w_t`` the
    per-token ``loss_scale`` (default ``1``; e.g. ``0`` for prompt tokens, ``> 1`` to up-weight tool calls),
    and ``N = global_count`` -- the number of non-ignored tokens across every micro-batch and rank (the
    ``num_items_in_batch`` of HF Trainer); default: the local count of non-ignored tokens. Summing the
    pieces' losses computed with the global count equals the whole-batch loss.

    Metrics: ``nll`` (unweighted token-mean NLL, local), ``num_tokens`` (local), ``token_accuracy`` (argmax).
    """
    valid = labels != ignore_index
    ce = cross_entropy_per_token(logits, labels, ignore_index)
    weights = valid.to(ce.dtype) if loss_scale is None else loss_scale.to(ce.dtype) * valid
    n = valid.sum() if global_count is None else global_count
    loss = masked_sum(ce, weights) / _safe_count(n)
    with torch.no_grad():
        pred = logits.argmax(dim=-1)
        metrics = {
            "nll": to_float(masked_mean(ce.detach(), valid)),
            "num_tokens": to_float(valid.sum()),
            "token_accuracy": to_float(masked_mean((pred == labels).float(), valid)),
        }
    return loss, metrics


def generalized_jsd_per_token(
    student_logits: Tensor, teacher_logits: Tensor, *, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """Generalized Jensen-Shannon divergence per token (GKD, Agarwal et al., 2024, Eq. 1), ``[B, T]``.

    With ``S = softmax(z_s / temperature)``, ``T = softmax(z_t / temperature)``, and the mixture
    ``M = beta * T + (1 - beta) * S``::

        JSD_beta(T, S) = beta * KL(T || M) + (1 - beta) * KL(S || M)

    The endpoints follow TRL's ``GKDTrainer.generalized_jsd_loss`` convention: ``beta = 0`` is the forward
    KL ``KL(T || S)`` and ``beta = 1`` the reverse KL ``KL(S || T)`` (the mixture form would vanish
    there). Sums over the vocabulary; the teacher is treated as a constant.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    s = torch.log_softmax(upcast(student_logits) / temperature, dim=-1)
    t = torch.log_softmax(upcast(teacher_logits.detach()) / temperature, dim=-1)

    def kl(log_p: Tensor, log_q: Tensor) -> Tensor:  # KL(p || q), summed over the vocabulary
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)

    if beta == 0.0:
        return kl(t, s)
    if beta == 1.0:
        return kl(s, t)
    m = torch.logsumexp(torch.stack([s + math.log(1.0 - beta), t + math.log(beta)]), dim=0)
    return beta * kl(t, m) + (1.0 - beta) * kl(s, m)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    global_count: Tensor | float | int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """On-policy distillation loss (GKD, Agarwal et al., 2024): ``sum_t m_t JSD_beta,t / N``.

    ``JSD_beta,t`` from :func:`generalized_jsd_per_token`; ``mask [B, T]`` selects the completion tokens
    (default: all), ``N = global_count`` (default: the local number of selected tokens). Matches TRL's
    ``GKDTrainer.generalized_jsd_loss(..., labels, reduction="batchmean")`` when ``mask = labels != -100``.
    Metrics: ``jsd`` (local token mean), ``num_tokens``.
    """
    per_token = generalized_jsd_per_token(student_logits, teacher_logits, beta=beta, temperature=temperature)
    m = torch.ones_like(per_token, dtype=torch.bool) if mask is None else mask.bool()
    n = m.sum() if global_count is None else global_count
    loss = masked_sum(per_token, m) / _safe_count(n)
    metrics = {"jsd": to_float(masked_mean(per_token.detach(), m)), "num_tokens": to_float(m.sum())}
    return loss, metrics


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range: float | None = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss of PPO critics (Schulman et al., 2017, OpenAI baselines), per token ``[B, T]``.

    ``v_clip = old_v + clip(v - old_v, -eps, eps)``;
    ``L_t = 0.5 * max((v - R)^2, (v_clip - R)^2)`` (``0.5 * (v - R)^2`` when ``clip_range`` is ``None``),
    ``0`` outside the mask; aggregate with :func:`raylhf.algos.aggregate.aggregate`. Metrics:
    ``vf_clip_frac`` (tokens where the clipped term is larger), ``values_mean``, ``returns_mean``,
    ``explained_variance`` (``1 - Var(R - v) / Var(R)``).
    """
    m = mask.bool()
    ret = returns.detach()
    unclipped = (values - ret) ** 2
    if clip_range is None:
        sq = unclipped
        clip_frac = torch.zeros((), device=values.device)
    else:
        old = old_values.detach()
        v_clip = old + (values - old).clamp(-clip_range, clip_range)
        clipped = (v_clip - ret) ** 2
        sq = torch.maximum(unclipped, clipped)
        clip_frac = masked_mean((clipped > unclipped).float(), m)
    loss = torch.where(m, 0.5 * sq, torch.zeros_like(sq))
    with torch.no_grad():
        v = values.detach()
        var_r = masked_mean((ret - masked_mean(ret, m)) ** 2, m)
        resid = ret - v
        var_resid = masked_mean((resid - masked_mean(resid, m)) ** 2, m)
        ev = 1.0 - var_resid / var_r if bool(var_r > 0) else torch.zeros(())
        metrics = {
            "vf_clip_frac": to_float(clip_frac),
            "values_mean": to_float(masked_mean(v, m)),
            "returns_mean": to_float(masked_mean(ret, m)),
            "explained_variance": to_float(ev),
        }
    return loss, metrics
