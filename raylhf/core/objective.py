"""The generic per-token objective every policy rank runs (principle 2: the worker knows no algorithm).

    loss = pg_coef * agg(PPO-clip surrogate)  +  kl_coef * agg(KL(policy || ref))
           - entropy_coef * agg(entropy)        +  ce_coef * sum(w * -logp) / N_trained_tokens

Aggregation uses the step's global token / sequence counts (all ranks, all micro-batches), so the
sum of micro-batch losses over ranks equals the loss of the whole batch on one rank.
"""

from __future__ import annotations

import torch

from raylhf.algos.aggregate import aggregate
from raylhf.algos.kl import kl_penalty
from raylhf.algos.policy_loss import policy_loss
from raylhf.core.batch import Objective


def objective_loss(
    logp: torch.Tensor,  # [B, L] with grad
    entropy: torch.Tensor | None,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    obj: Objective,
    *,
    advantages: torch.Tensor | None = None,
    old_logp: torch.Tensor | None = None,
    rollout_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    ce_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss of one micro-batch (already normalized by the global counts) and its metrics."""
    agg = dict(global_tokens=obj.global_tokens, global_seqs=obj.global_seqs, norm_const=obj.norm_const)
    loss = logp.new_zeros(())
    metrics: dict[str, float] = {}
    if obj.pg_coef and advantages is not None:
        old = logp.detach() if old_logp is None else old_logp
        per_tok, m = policy_loss(
            logp, old, advantages, mask, clip_low=obj.clip_low, clip_high=obj.clip_high,
            dual_clip=obj.dual_clip, level=obj.is_level,  # type: ignore[arg-type]
            rollout_logp=rollout_logp, tis_cap=obj.tis_cap,
            is_mode=obj.is_correction, is_low=obj.is_low, is_high=obj.is_high,
        )
        pg = aggregate(per_tok, mask, obj.loss_agg, **agg)
        loss = loss + obj.pg_coef * pg
        metrics.update({f"pg/{k}": v for k, v in m.items()})
        metrics["loss/pg"] = float(pg.detach())
    if obj.kl_coef and ref_logp is not None:
        kl_tok = kl_penalty(logp, ref_logp, obj.kl_estimator, mask=mask)
        kl = aggregate(kl_tok, mask, obj.loss_agg, **agg)
        loss = loss + obj.kl_coef * kl
        metrics["loss/kl"] = float(kl.detach())
    if entropy is not None:
        ent = aggregate(entropy, mask, obj.loss_agg, **agg)
        if obj.entropy_coef:
            loss = loss - obj.entropy_coef * ent
        metrics["entropy"] = float(ent.detach())
    if obj.ce_coef:
        w = mask if ce_weights is None else ce_weights * mask
        # trained tokens (mask), not the weight sum: the normaliser with_counts sets (ms-swift's loss_scale)
        denom = obj.global_tokens if obj.global_tokens is not None else float(mask.sum().clamp_min(1.0))
        ce = -(logp * w).sum() / denom
        loss = loss + obj.ce_coef * ce
        metrics["loss/ce"] = float(ce.detach())
    metrics["loss/total"] = float(loss.detach())
    return loss, metrics
