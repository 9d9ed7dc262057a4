"""Ranks in lockstep: under ZeRO-3 every forward (and backward) gathers each layer's parameters from all ranks, so
every rank must run the same number of micro-batches, or the ranks with more wait forever on the others.

A rank's shard decides its micro-batch count (a token budget, ``policy.max_tokens_per_micro_batch``, or a shard one
sequence longer than another's), so the counts can differ. ``lockstep_count`` agrees on the largest; a rank with
fewer runs ``filler`` micro-batches (one short sequence, its result dropped and its loss multiplied by 0) until it
has as many.
"""

from __future__ import annotations

import torch

FILLER_LENGTH = 2  # tokens of a filler sequence: one predicted token


def lockstep_count(n: int) -> int:
    """The largest ``n`` over the ranks of torch.distributed's default group (``n`` without one)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def filler(token_id: int = 0) -> torch.Tensor:
    """The sequence of a filler micro-batch."""
    return torch.full((FILLER_LENGTH,), int(token_id), dtype=torch.long)
