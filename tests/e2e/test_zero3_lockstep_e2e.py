"""ZeRO-3 ranks in lockstep: every forward gathers each layer from all ranks, so ranks with different micro-batch
counts (a token budget, an uneven split) would wait on each other forever. ``actors/lockstep.py`` pads the shorter
rank with filler micro-batches; here two ranks get 2 and 1 micro-batches, and the calls finish with the right
numbers (each limited to 120 s: a hang is a timeout error, not a stuck suite)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raylhf.config.sections import PolicyConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.driver.startup import start_policy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _seq(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed))


def test_uneven_micro_batch_counts_do_not_hang_zero3(tiny_model_dir: Path) -> None:
    policy = start_policy(PolicyConfig(num_workers=2, zero_stage=3, micro_batch_size=1, num_cpus_per_worker=1,
                                       max_tokens_per_micro_batch=14, lr=1e-3),
                          str(tiny_model_dir), "float32", 10, 0, "PACK")
    try:
        seqs = [_seq(9, 1), _seq(9, 2), _seq(4, 3)]  # split 2 / 1 over the ranks: 2 and 1 micro-batches
        uneven = [x for part in policy.call_split("logprobs", seqs, timeout_s=120) for x in part]
        even = [x for part in policy.call_split("logprobs", seqs + seqs[2:], timeout_s=120) for x in part]
        for a, b in zip(uneven, even[:3], strict=True):
            torch.testing.assert_close(a, b)
        # train: rank 0's two 9-token sequences exceed the 14-token budget together (2 micro-batches), rank 1's
        # two 4-token ones fit in one
        ids = [_seq(9, 4), _seq(9, 5), _seq(4, 6), _seq(4, 7)]
        mask = [torch.cat([torch.zeros(2), torch.ones(len(x) - 2)]) for x in ids]
        batch = TrainBatch(input_ids=ids, loss_mask=mask, advantages=[m * 0.5 for m in mask])
        out = policy.call_split("train_step", batch, Objective(pg_coef=1.0).with_counts(batch), timeout_s=120)
        assert all(torch.isfinite(torch.tensor(o["grad_norm"])) for o in out)
    finally:
        policy.shutdown()
