"""Helpers shared by the end-to-end modules (tiny train batches, policy/engine log-prob parity)."""

from __future__ import annotations

import torch

from actors.group import ActorGroup
from raylhf.core.batch import TrainBatch


def tiny_batch(n: int, seed: int = 0) -> TrainBatch:
    """``n`` random sequences of 6-13 tokens; the first 3 are prompt, the rest trained with one advantage."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, 500, (int(torch.randint(6, 14, (1,), generator=g)),), generator=g) for _ in range(n)]
    mask = [torch.cat([torch.zeros(3), torch.ones(len(x) - 3)]) for x in ids]
    adv = [m * float(torch.randn(1, generator=g)) for m in mask]
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=adv)


def engine_policy_logprob_diff(policy: ActorGroup, rollout: ActorGroup, seqs: list[list[int]]) -> float:
    """Largest |engine - policy| token log-prob over ``seqs`` (every policy rank computes: ZeRO-3 safe)."""
    engine = rollout.call_rank0("score_logprobs", seqs, [1] * len(seqs))
    mine = policy.call("logprobs", [torch.tensor(s) for s in seqs])[0]
    return max(float((torch.tensor(e[1:]) - m[1:]).abs().max()) for e, m in zip(engine, mine, strict=True))
