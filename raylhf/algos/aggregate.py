"""Reduce a per-token loss ``[B, T]`` to the scalar that is back-propagated.

Every mode is a *sum over sequences divided by a constant*, and the constants (token count, sequence
count, Dr.GRPO normalizer) can be passed in as global values. Then a batch split into micro-batches or
data-parallel ranks gives exactly the whole-batch loss (and gradient) when the pieces' losses are summed::

    tokens, seqs = count_tokens_and_seqs(full_mask)           # or all-reduce the local counts
    loss = sum(aggregate(l_k, m_k, mode, global_tokens=tokens, global_seqs=seqs) for l_k, m_k in pieces)

(With data parallelism that averages gradients over ``W`` ranks, multiply each rank's loss by ``W``.)
Without global counts the local counts of the given piece are used.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from raylhf.algos.utils import masked_mean, masked_sum, masked_whiten

__all__ = [
    "LOSS_AGG_MODES",
    "aggregate",
    "count_tokens_and_seqs",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
]

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)

Count = Tensor | float | int


def count_tokens_and_seqs(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Selected tokens ``sum(mask)`` and sequences with at least one selected token, as 0-d tensors.

    These are the local counts :func:`aggregate` falls back to; all-reduce (sum) them across ranks and
    micro-batches to get the global ones.
    """
    m = mask.bool()
    return m.sum(), (m.sum(dim=-1) > 0).sum()


def _safe(count: Count) -> Count:
    if isinstance(count, Tensor):
        return torch.where(count > 0, count, torch.ones_like(count))
    return count if count > 0 else 1


def aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: LossAggMode | str = "token-mean",
    *,
    global_tokens: Count | None = None,
    global_seqs: Count | None = None,
    norm_const: float | None = None,
) -> Tensor:
    """Aggregate ``per_token_loss [B, T]`` over ``mask [B, T]`` into a scalar.

    With ``l_it`` the loss of token ``t`` of sequence ``i``, ``m_it`` the mask, ``n_i = sum_t m_it``,
    ``N_tok`` = ``global_tokens`` (default ``sum m``) and ``N_seq`` = ``global_seqs`` (default: rows
    with ``n_i > 0``):

    * ``"token-mean"``: ``sum_it m_it l_it / N_tok`` -- every token weighs the same
      (DAPO, Yu et al., 2025);
    * ``"seq-mean-token-mean"``: ``sum_i (sum_t m_it l_it / n_i) / N_seq`` -- the original GRPO
      (Shao et al., 2024) per-sequence average;
    * ``"seq-mean-token-sum"``: ``sum_i (sum_t m_it l_it) / N_seq``;
    * ``"seq-mean-token-sum-norm"``: ``sum_i (sum_t m_it l_it / norm_const) / N_seq`` -- Dr.GRPO (Liu et
      al., 2025) constant normalizer, e.g. the maximum response length (default: ``T``, the padded
      length of this tensor -- pass the constant explicitly when micro-batches are padded differently).

    Empty selections give ``0`` (never ``nan``).
    """
    m = mask.bool()
    tok_sum = masked_sum(per_token_loss, m, dim=-1)  # [B]
    if mode == "token-mean":
        n_tok = m.sum() if global_tokens is None else global_tokens
        return tok_sum.sum() / _safe(n_tok)
    n_seq = (m.sum(dim=-1) > 0).sum() if global_seqs is None else global_seqs
    if mode == "seq-mean-token-sum":
        seq_loss = tok_sum
    elif mode == "seq-mean-token-mean":
        seq_loss = tok_sum / _safe(m.sum(dim=-1))
    elif mode == "seq-mean-token-sum-norm":
        const = float(per_token_loss.shape[-1]) if norm_const is None else float(norm_const)
        if const <= 0:
            raise ValueError(f"norm_const must be > 0, got {norm_const}")
        seq_loss = tok_sum / const
    else:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    return seq_loss.sum() / _safe(n_seq)
