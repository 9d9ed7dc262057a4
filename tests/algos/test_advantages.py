"""Advantage estimators: hand-derived values, edge cases, and property tests."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylhf.algos import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    discounted_returns,
    gae,
    grpo_advantages,
    outcome_to_token_rewards,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reinforce_pp_token_advantages,
    rloo_advantages,
)

PROPS = settings(max_examples=50, deadline=None)


def close(actual: torch.Tensor, expected: list[float], atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- GRPO


def test_grpo_group_scale_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    res = grpo_advantages(rewards, group_size=3, scale="group", eps=0.0)
    # group 0 = (1, 0, 0): mean 1/3; centred (2/3, -1/3, -1/3);
    #   unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3 -> std = 0.577350
    #   A = (2/3, -1/3, -1/3) / 0.577350 = (1.154701, -0.577350, -0.577350)
    # group 1 = (2, 2, 2): zero std -> A = 0 exactly (no 0/0)
    close(res.advantages, [1.154701, -0.577350, -0.577350, 0.0, 0.0, 0.0])
    assert torch.equal(res.advantages[3:], torch.zeros(3))
    m = res.metrics
    assert m["frac_zero_std_groups"] == pytest.approx(0.5)
    # reward mean = 7/6 ; deviations -1/6, -7/6, -7/6, 5/6, 5/6, 5/6
    # squares sum = (1 + 49 + 49 + 25 * 3) / 36 = 174/36 ; unbiased var = 174/36/5 = 0.966667 ; std = 0.983192
    assert m["reward_mean"] == pytest.approx(7 / 6)
    assert m["reward_std"] == pytest.approx(math.sqrt(174 / 36 / 5))


def test_grpo_batch_and_none_scale_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    batch_std = math.sqrt(174 / 36 / 5)  # 0.983192, see above
    res = grpo_advantages(rewards, group_size=3, scale="batch", eps=0.0)
    # group mean, batch std: (2/3, -1/3, -1/3) / 0.983192 = (0.678064, -0.339032, -0.339032)
    close(res.advantages, [2 / 3 / batch_std, -1 / 3 / batch_std, -1 / 3 / batch_std, 0.0, 0.0, 0.0])
    # Dr.GRPO: no std division at all
    res = grpo_advantages(rewards, group_size=3, scale="none")
    close(res.advantages, [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])


# TRL 1.16 ``GRPOTrainer._generate_and_score_completions`` (multi_objective_aggregation="sum_then_normalize"),
# inline code that cannot be called without a model and generation: hand-derived values, not a parity call:
#     mean = nanmean(r.view(-1, G), dim=1)     # always the group mean
#     std  = nanstd(r.view(-1, G), dim=1)      # scale_rewards "group" (and "none", where it is only logged)
#          = nanstd(r)                         # scale_rewards "batch": one std over all N rewards
#     A = r - mean;  if scale_rewards != "none": A = A / (std + 1e-4)
# ``nanstd`` is Bessel-corrected (checked against TRL in test_trl_parity.py); eps is added to the std, not
# under the square root. Rewards: two groups of 3, in shuffled order, with different means and stds:
#   group 0 = (4, 0, 2): mean 2; centred (2, -2, 0); squares 4 + 4 + 0 = 8; var 8 / (3 - 1) = 4 -> std 2
#   group 1 = (5, 11, 8): mean 8; centred (-3, 3, 0); squares 9 + 9 + 0 = 18; var 18 / 2 = 9  -> std 3
#   batch: mean 30 / 6 = 5; deviations (-1, -5, -3, 0, 6, 3); squares 1 + 25 + 9 + 0 + 36 + 9 = 80;
#          var 80 / (6 - 1) = 16 -> std 4
# (biased stds would be 1.633 / 2.449 / 3.651; sqrt(var + eps) would give 2.000025 instead of 2.0001)
TRL_GRPO_REWARDS = [4.0, 0.0, 2.0, 5.0, 11.0, 8.0]
TRL_GRPO_EXPECTED = {
    # centred by the group mean, divided by the group's own std + eps
    "group": [2 / 2.0001, -2 / 2.0001, 0.0, -3 / 3.0001, 3 / 3.0001, 0.0],
    # centred by the group mean (not the batch mean 5), divided by the batch std + eps
    "batch": [2 / 4.0001, -2 / 4.0001, 0.0, -3 / 4.0001, 3 / 4.0001, 0.0],
    # Dr.GRPO: centred only
    "none": [2.0, -2.0, 0.0, -3.0, 3.0, 0.0],
}


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_trl_convention_by_hand(scale: str) -> None:
    rewards = torch.tensor(TRL_GRPO_REWARDS, dtype=torch.float64)
    adv = grpo_advantages(rewards, 3, scale=scale, eps=1e-4).advantages  # type: ignore[arg-type]
    torch.testing.assert_close(adv, torch.tensor(TRL_GRPO_EXPECTED[scale], dtype=torch.float64))
    # a zero-std group: TRL gives (r - mean) / (0 + 1e-4) = 0, and so do we (exactly, for every scale)
    const = torch.full((3,), 0.25, dtype=torch.float64)
    adv = grpo_advantages(const, 3, scale=scale, eps=1e-4).advantages  # type: ignore[arg-type]
    assert torch.equal(adv, torch.zeros(3, dtype=torch.float64))


def test_grpo_group_size_one_and_constant_large_rewards() -> None:
    # groups of size 1: no variance, advantage 0, reported as zero-std groups; never nan
    for name in ("grpo", "rloo", "reinforce++-baseline"):
        res = compute_advantages(name, torch.tensor([0.3, 0.7, -1.0]), group_size=1)
        assert torch.equal(res.advantages, torch.zeros(3)), name
        assert res.metrics["frac_zero_std_groups"] == 1.0
        assert all(math.isfinite(v) for v in res.metrics.values())
    # constant group of large values: float32 mean is inexact, but the advantage must be exactly 0
    rewards = torch.tensor([1000.1, 1000.1, 1000.1, 0.0, 1.0, 2.0])
    for scale in ("group", "batch", "none"):
        adv = grpo_advantages(rewards, 3, scale=scale).advantages
        assert torch.equal(adv[:3], torch.zeros(3)), scale


def test_grpo_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), group_size=2)
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(torch.zeros(4), group_size=2, scale="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages("ppo", torch.zeros(4), group_size=2)


# ---------------------------------------------------------------------------------------------- RLOO / REINFORCE++


def test_rloo_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    res = rloo_advantages(rewards, group_size=4)
    # group sum 2; leave-one-out baselines (2 - r_i) / 3 = (1/3, 2/3, 2/3, 1/3)
    # A = r - baseline = (2/3, -2/3, -2/3, 2/3)  [= 4/3 * (r - 0.5)]
    close(res.advantages, [2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_rloo_trl_convention_by_hand() -> None:
    """TRL 1.16 ``RLOOTrainer._generate_and_score_completions`` (inline code; default
    ``normalize_advantages=False``; the KL penalty is folded into the reward before this point):
    ``baseline = (group_sum - r) / (G - 1)``, ``A = r - baseline``; no std scaling, no eps."""
    rewards = torch.tensor([2.0, 0.0, 1.0, 5.0, 3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    res = rloo_advantages(rewards, group_size=4)
    # group 0 = (2, 0, 1, 5): sum 8; baselines (8 - r) / 3 = (6/3, 8/3, 7/3, 3/3) = (2, 8/3, 7/3, 1)
    #   A = r - baseline = (0, -8/3, -4/3, 4)   [check: 4/3 * (r - mean 2) = 4/3 * (0, -2, -1, 3)]
    # group 1 = (3, 3, 3, 3): baselines (12 - 3) / 3 = 3 -> A = 0 exactly
    expected = [0.0, -8 / 3, -4 / 3, 4.0, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(res.advantages, torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(res.advantages[4:], torch.zeros(4, dtype=torch.float64))


def test_reinforce_pp_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    res = reinforce_pp_advantages(rewards, group_size=2, eps=0.0)
    # batch mean 0.5 ; unbiased std sqrt(4 * 0.25 / 3) = 0.577350 ; A = +-0.5 / 0.577350 = +-0.866025
    close(res.advantages, [0.866025, -0.866025, -0.866025, 0.866025])
    assert res.metrics["frac_zero_std_groups"] == 0.0
    # a constant batch gives 0, not nan
    assert torch.equal(reinforce_pp_advantages(torch.ones(3)).advantages, torch.zeros(3))


def test_reinforce_pp_baseline_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    res = reinforce_pp_baseline_advantages(rewards, group_size=2, eps=0.0)
    # centred by group mean: (0.5, -0.5, 0, 0); batch mean 0 ;
    # unbiased std sqrt((0.25 + 0.25) / 3) = 0.408248 ; A = (1.224745, -1.224745, 0, 0)
    close(res.advantages, [1.224745, -1.224745, 0.0, 0.0])
    assert res.metrics["frac_zero_std_groups"] == 0.5


def test_dispatcher_matches_functions() -> None:
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.4, 0.0, 1.0])
    torch.testing.assert_close(
        compute_advantages("grpo", rewards, 3, scale="batch").advantages,
        grpo_advantages(rewards, 3, scale="batch").advantages,
    )
    torch.testing.assert_close(
        compute_advantages("rloo", rewards, 3).advantages, rloo_advantages(rewards, 3).advantages
    )
    torch.testing.assert_close(
        compute_advantages("reinforce++", rewards, 3).advantages,
        reinforce_pp_advantages(rewards, 3).advantages,
    )
    torch.testing.assert_close(
        compute_advantages("reinforce++-baseline", rewards, 3).advantages,
        reinforce_pp_baseline_advantages(rewards, 3).advantages,
    )
    for name in ADVANTAGE_ESTIMATORS:
        res = compute_advantages(name, rewards, 3)
        assert {"reward_mean", "reward_std", "frac_zero_std_groups"} <= res.metrics.keys()


rewards_st = st.integers(1, 4).flatmap(
    lambda n_groups: st.integers(1, 5).flatmap(
        lambda g: st.tuples(
            st.just(g),
            st.lists(
                st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-10, 10, allow_nan=False, width=32)),
                min_size=n_groups * g,
                max_size=n_groups * g,
            ),
        )
    )
)


@PROPS
@given(rewards_st, st.sampled_from(["group", "batch", "none"]))
def test_grpo_zero_mean_per_group(data: tuple[int, list[float]], scale: str) -> None:
    g, values = data
    rewards = torch.tensor(values, dtype=torch.float64)
    res = grpo_advantages(rewards, g, scale=scale)  # type: ignore[arg-type]
    adv = res.advantages.view(-1, g)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(adv.shape[0], dtype=adv.dtype), atol=1e-6, rtol=0)
    # constant groups are exactly zero and counted
    constant = rewards.view(-1, g).amax(1) == rewards.view(-1, g).amin(1)
    assert torch.equal(adv[constant], torch.zeros_like(adv[constant]))
    assert res.metrics["frac_zero_std_groups"] == pytest.approx(constant.double().mean().item())


@PROPS
@given(rewards_st)
def test_rloo_is_rescaled_dr_grpo(data: tuple[int, list[float]]) -> None:
    g, values = data
    rewards = torch.tensor(values, dtype=torch.float64)
    rloo = rloo_advantages(rewards, g).advantages
    dr = grpo_advantages(rewards, g, scale="none").advantages
    factor = g / (g - 1) if g > 1 else 0.0
    torch.testing.assert_close(rloo, factor * dr, atol=1e-9, rtol=1e-9)
    for name in ADVANTAGE_ESTIMATORS:
        assert torch.isfinite(compute_advantages(name, rewards, g).advantages).all()


# ---------------------------------------------------------------------------------------------- token level


def test_gae_by_hand_with_hole_in_mask() -> None:
    # row 0 selects tokens 0, 1, 3 (token 2 is, e.g., tool output; token 4 padding)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]]).bool()
    rewards = torch.tensor([[0.0, 0.0, 5.0, 1.0, 9.0], [0.0, 0.0, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 7.0, 0.1, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72. Row 0, selected (r, V) = (0, .5), (0, .2), (1, .1):
    #   delta_3 = 1 + 0.9 * 0 - 0.1 = 0.9                 A_3 = 0.9
    #   delta_1 = 0 + 0.9 * 0.1 - 0.2 = -0.11              A_1 = -0.11 + 0.72 * 0.9 = 0.538
    #   delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32              A_0 = -0.32 + 0.72 * 0.538 = 0.06736
    # Row 1, (0, 1), (0, 1), (2, 1):
    #   delta_2 = 2 - 1 = 1                                A_2 = 1
    #   delta_1 = 0.9 * 1 - 1 = -0.1                       A_1 = -0.1 + 0.72 = 0.62
    #   delta_0 = -0.1                                     A_0 = -0.1 + 0.72 * 0.62 = 0.3464
    close(adv, [[0.06736, 0.538, 0.0, 0.9, 0.0], [0.3464, 0.62, 1.0, 0.0, 0.0]])
    # returns = A + V on selected tokens
    close(ret, [[0.56736, 0.738, 0.0, 1.0, 0.0], [1.3464, 1.62, 2.0, 0.0, 0.0]])


def _gae_loop(r: list[float], v: list[float], m: list[bool], gamma: float, lam: float) -> list[float]:
    """Reference: the textbook backward recursion, skipping unselected tokens."""
    adv = [0.0] * len(r)
    last, next_v = 0.0, 0.0
    for t in reversed(range(len(r))):
        if not m[t]:
            continue
        delta = r[t] + gamma * next_v - v[t]
        last = delta + gamma * lam * last
        adv[t], next_v = last, v[t]
    return adv


@PROPS
@given(
    st.integers(1, 3).flatmap(
        lambda b: st.integers(1, 6).flatmap(
            lambda t: st.tuples(
                st.lists(st.floats(-3, 3, width=32), min_size=b * t, max_size=b * t),
                st.lists(st.floats(-3, 3, width=32), min_size=b * t, max_size=b * t),
                st.lists(st.booleans(), min_size=b * t, max_size=b * t),
                st.just((b, t)),
            )
        )
    ),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_gae_matches_recursion(data: tuple, gamma: float, lam: float) -> None:
    r, v, m, (b, t) = data
    rt = torch.tensor(r, dtype=torch.float64).view(b, t)
    vt = torch.tensor(v, dtype=torch.float64).view(b, t)
    mt = torch.tensor(m).view(b, t)
    adv, ret = gae(rt, vt, mt, gamma=gamma, lam=lam)
    expected = torch.tensor(
        [_gae_loop(rt[i].tolist(), vt[i].tolist(), mt[i].tolist(), gamma, lam) for i in range(b)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(adv, expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ret, torch.where(mt, expected + vt, 0.0), atol=1e-9, rtol=1e-9)


def test_discounted_returns_and_reinforce_pp_tokens_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    # gamma 0.5: row 0: G_2 = 2, G_1 = 0 + 0.5 * 2 = 1, G_0 = 1 + 0.5 * 1 = 1.5 ; row 1: G_1 = 3, G_0 = 1.5
    close(discounted_returns(rewards, mask, gamma=0.5), [[1.5, 1.0, 2.0], [1.5, 3.0, 0.0]])
    # whitened over the 5 selected returns (1.5, 1, 2, 1.5, 3): mean 1.8 ;
    # deviations -.3, -.8, .2, -.3, 1.2 ; squares .09 + .64 + .04 + .09 + 1.44 = 2.3 ; unbiased var .575
    s = math.sqrt(0.575)
    adv = reinforce_pp_token_advantages(rewards, mask, gamma=0.5, eps=0.0)
    close(adv, [[-0.3 / s, -0.8 / s, 0.2 / s], [-0.3 / s, 1.2 / s, 0.0]])


def test_outcome_to_token_rewards() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1]])
    out = outcome_to_token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask)
    # the reward sits on the last selected token; an empty row gets nothing
    close(out, [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
