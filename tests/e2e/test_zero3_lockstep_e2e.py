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

# ~60 s with the module's Ray cluster: the slower tier, run by .ci/run after make test
pytestmark = [pytest.mark.slow, pytest.mark.tier2, pytest.mark.usefixtures("local_ray")]


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


def test_reference_on_the_policy_ranks_matches_its_own_actor(tiny_model_dir: Path) -> None:
    """``reference.placement: policy`` under ZeRO-3: each of two ranks holds half of the frozen reference, and its
    log-probs equal a ReferenceWorker's (the start checkpoint) before and after the policy trained."""
    from actors.group import ActorGroup
    from actors.reference import ReferenceWorker
    from raylhf.config.sections import ReferenceConfig
    from raylhf.driver import phases
    from raylhf.driver.startup import HostedReference

    pc = PolicyConfig(num_workers=2, zero_stage=3, micro_batch_size=2, num_cpus_per_worker=1, lr=1e-2)
    policy = start_policy(pc, str(tiny_model_dir), "float32", 10, 0, "PACK")
    own = ActorGroup(ReferenceWorker, 1, name="reference", num_cpus=1,
                     init_kwargs=dict(model_path=str(tiny_model_dir), dtype="float32",
                                      reference=pc.reference_config(ReferenceConfig())))
    try:
        policy.call("setup_reference", pc.reference_config(ReferenceConfig()), timeout_s=120)
        hosted = HostedReference(policy)
        sizes = policy.call("reference_numel", timeout_s=60)
        assert all(0 < held < 0.6 * full for held, full in sizes), sizes  # about half each, not a copy per rank
        ids = [_seq(n, 10 + n) for n in (5, 7, 9, 11)]
        batch = TrainBatch(input_ids=ids, loss_mask=[torch.ones(len(x)) for x in ids],
                           advantages=[torch.ones(len(x)) for x in ids])

        def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-5)

        start = phases.logprobs(own, batch, 1.0)
        close(phases.logprobs(hosted, batch, 1.0), start)
        policy.call_split("train_step", batch, Objective(pg_coef=1.0).with_counts(batch), timeout_s=120)
        moved = phases.logprobs(policy, batch, 1.0)
        assert max(float((m - s).abs().max()) for m, s in zip(moved, start, strict=True)) > 1e-3
        close(phases.logprobs(hosted, batch, 1.0), start)  # the reference stays the start checkpoint
    finally:
        policy.shutdown()
        own.shutdown()
