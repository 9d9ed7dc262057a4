"""Driver-side pieces of the RL loop that need no actors."""

from __future__ import annotations

import pytest
import torch

from raylhf.core.batch import Objective, Rollout, TrainBatch
from raylhf.core.objective import objective_loss
from raylhf.driver.phases import fill_unscored, reduce_reward_metrics, split_for_ranks, to_train_batch
from raylhf.driver.stream import prompt_stream


def test_to_train_batch_aligns_masks_and_advantages() -> None:
    rolls = [Rollout(0, [1, 2], [5, 6, 7], [-0.1, -0.2, -0.3], "stop"),
             Rollout(0, [1, 2], [8], [-0.5], "length")]
    b = to_train_batch(rolls, torch.tensor([1.5, -1.5]), mask_truncated=True)
    assert b.input_ids[0].tolist() == [1, 2, 5, 6, 7]
    assert b.loss_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert b.loss_mask[1].tolist() == [0, 0, 0]  # truncated and masked
    assert b.advantages is not None and b.advantages[0].tolist() == [0, 0, 1.5, 1.5, 1.5]
    assert b.rollout_logprobs is not None
    assert b.rollout_logprobs[0].tolist() == pytest.approx([0, 0, -0.1, -0.2, -0.3])
    assert b.num_tokens() == 3


def test_fill_unscored_uses_the_group_mean_of_scored_samples() -> None:
    nan = float("nan")
    # group 1: scored 1.0 and 3.0 -> the unscored one becomes their mean 2.0; group 2: none scored -> 0.0
    r = torch.tensor([1.0, nan, 3.0, nan, nan, nan])
    assert fill_unscored(r, 3).tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0]
    assert fill_unscored(torch.tensor([0.5, 1.5]), 2).tolist() == [0.5, 1.5]


def test_reduce_reward_metrics_adds_counters_and_takes_worst_latency() -> None:
    out = reduce_reward_metrics([{"prm/failed_items": 2.0, "prm/latency_p95_ms": 30.0},
                                 {"prm/failed_items": 1.0, "prm/latency_p95_ms": 50.0}])
    assert out == {"prm/failed_items": 3.0, "prm/latency_p95_ms": 50.0}


def test_prompt_stream_reshuffles_and_covers() -> None:
    items = list(range(10))
    stream = prompt_stream(items, 5, shuffle=True, seed=0)  # type: ignore[arg-type]
    first_epoch = next(stream) + next(stream)
    assert sorted(first_epoch) == items
    assert next(stream) + next(stream) != first_epoch


def test_split_for_ranks_and_shard() -> None:
    b = TrainBatch(input_ids=[torch.tensor([i]) for i in range(7)], loss_mask=[torch.ones(1)] * 7)
    even = split_for_ranks(b, 2)
    assert len(even) == 6
    assert [int(x) for x in even.shard(1, 2).input_ids] == [3, 4, 5]
    with pytest.raises(ValueError, match="does not split evenly"):
        b.shard(0, 2)


def test_objective_ce_only_is_mean_nll_over_global_tokens() -> None:
    logp = torch.log(torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.5, 1.0]]))
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    # tokens: -log .5, -log .25, -log .5 = ln2 + 2ln2 + ln2 = 4 ln2, over 3 global tokens... of 6 global tokens
    loss, m = objective_loss(logp, None, mask, Objective(pg_coef=0.0, ce_coef=1.0, global_tokens=6.0))
    assert float(loss) == pytest.approx(4 * torch.log(torch.tensor(2.0)).item() / 6)
    assert "loss/ce" in m and "loss/pg" not in m


def test_objective_pg_at_ratio_one_is_minus_advantage_mean() -> None:
    logp = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    adv = torch.tensor([[0.0, 2.0, 2.0]])
    loss, _ = objective_loss(logp, None, mask, Objective(global_tokens=2.0), advantages=adv)
    assert loss.item() == pytest.approx(-2.0)  # -(2 + 2) / 2
    loss.backward()
    assert logp.grad is not None and logp.grad.tolist() == [[0.0, -1.0, -1.0]]


def test_varied_groups_drops_zero_std_groups() -> None:
    from raylhf.driver.phases import varied_groups

    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # groups of 2: [1,1] [0,1] [0,0]
    assert varied_groups(rewards, 2) == [2, 3]


def test_unscored_sample_never_poisons_its_group() -> None:
    """Defect 2 of the plumbing issue: a reward returning None used to become NaN and turn the whole group's
    advantages (and the loss) into NaN. Now the group keeps finite advantages and the sample is flagged."""
    from raylhf.algos.advantages import compute_advantages

    nan = float("nan")
    total = torch.tensor([1.0, 0.0, nan, 1.0])  # one group of 4; the third was not scored
    filled = fill_unscored(total, 4)  # nan -> mean(1, 0, 1) = 2/3
    adv = compute_advantages("grpo", filled, 4, scale="group").advantages
    assert torch.isfinite(adv).all()
    assert adv[2].item() == pytest.approx(0.0, abs=1e-6)  # the filled sample sits at the group mean
    assert adv[0].item() > 0 > adv[1].item()
    rolls = [Rollout(0, [1], [2], [-0.1], "stop") for _ in range(4)]
    with pytest.raises(ValueError, match=r"non-finite advantages for samples \[2\]"):
        to_train_batch(rolls, torch.tensor([1.0, -1.0, nan, 0.0]))
