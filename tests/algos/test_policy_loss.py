"""Clipped policy loss, GSPO sequence ratios, TIS correction and entropy."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylhf.algos import entropy_from_logits, policy_loss

PROPS = settings(max_examples=50, deadline=None)


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


def test_asymmetric_clip_by_hand() -> None:
    # old_logp = 0, so ratio = exp(logp) = (1.5, 0.5, 1.1, 0.7)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]])).requires_grad_()
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # clip range [0.8, 1.28]; L = max(-A * rho, -A * clip(rho)):
    #   t0: A=+1, rho 1.5 -> max(-1.5, -1.28) = -1.28   (high clip active: gradient 0)
    #   t1: A=-1, rho 0.5 -> max( 0.5,  0.8 ) =  0.8    (low clip active: gradient 0)
    #   t2: A=-1, rho 1.1 -> max( 1.1,  1.1 ) =  1.1    (dL/dlogp = -A * rho = 1.1)
    #   t3: A=+1, rho 0.7 -> max(-0.7, -0.8 ) = -0.7    (pessimistic bound, unclipped: -A * rho = -0.7)
    close(loss, [[-1.28, 0.8, 1.1, -0.7]])
    loss.sum().backward()
    close(logp.grad, [[0.0, 0.0, 1.1, -0.7]])
    assert m["clip_frac_high"] == pytest.approx(0.25)
    assert m["clip_frac_low"] == pytest.approx(0.25)
    assert m["clip_frac"] == pytest.approx(0.5)
    # ratio mean (1.5 + 0.5 + 1.1 + 0.7) / 4 = 0.95
    assert m["ratio_mean"] == pytest.approx(0.95)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert m["ratio_min"] == pytest.approx(0.5)
    # k3 = rho - 1 - log rho: 0.094535 + 0.193147 + 0.004690 + 0.056675 = 0.349047 ; / 4 = 0.087262
    assert m["approx_kl"] == pytest.approx(0.087262, abs=1e-5)


def test_dual_clip_by_hand() -> None:
    logp = torch.log(torch.tensor([[5.0, 2.0, 5.0]])).requires_grad_()
    old = torch.zeros(1, 3)
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    # t0: A=-1, rho 5: PPO max(5, 1.2) = 5 ; dual clip min(5, -A * c = 3) = 3  (gradient 0)
    # t1: A=-1, rho 2: PPO max(2, 1.2) = 2 ; min(2, 3) = 2                     (gradient -A * rho = 2)
    # t2: A=+1, rho 5: not affected by the dual clip: max(-5, -1.2) = -1.2
    close(loss, [[3.0, 2.0, -1.2]])
    loss.sum().backward()
    close(logp.grad, [[0.0, 2.0, 0.0]])
    assert m["dual_clip_frac"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, old, adv, mask, dual_clip=0.9)


def test_mask_and_per_sequence_advantages() -> None:
    logp = torch.tensor([[0.1, float("-inf")], [0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.1, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    loss, m = policy_loss(logp, old, torch.tensor([2.0, -3.0]), mask)
    # ratios are 1 on the selected tokens; per-sequence advantages broadcast: L = -A
    close(loss, [[-2.0, 0.0], [3.0, 3.0]])
    loss.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert m["ratio_mean"] == pytest.approx(1.0)
    assert m["approx_kl"] == pytest.approx(0.0)


def test_sequence_level_ratio_by_hand() -> None:
    # seq 0: token log-ratios (ln 2, 0, masked) -> geometric mean exp((ln 2 + 0) / 2) = sqrt(2) = 1.414214
    # seq 1: token log-ratios (ln .5, ln .5, ln .5) -> 0.5
    logp = torch.tensor([[math.log(2.0), 0.0, 30.0], [math.log(0.5)] * 3], requires_grad=True)
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, 1.0])
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.9, clip_high=10.0, level="sequence")
    # no clipping active: L = -A * rho_seq broadcast to the selected tokens
    s = math.sqrt(2.0)
    close(loss, [[-s, -s, 0.0], [-0.5, -0.5, -0.5]])
    # d(sum of seq-0 losses)/d logp_u = 2 * (-s) * (1/2) = -s for each selected token of seq 0;
    # seq 1: 3 * (-0.5) * (1/3) = -0.5
    loss.sum().backward()
    close(logp.grad, [[-s, -s, 0.0], [-0.5, -0.5, -0.5]])
    assert m["ratio_mean"] == pytest.approx((2 * s + 3 * 0.5) / 5)


def test_truncated_importance_sampling_by_hand() -> None:
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.zeros(1, 3)
    rollout = -torch.log(torch.tensor([[3.0, 0.5, 1.0]]))  # exp(old - rollout) = (3, 0.5, 1)
    adv = torch.ones(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, m = policy_loss(logp, old, adv, mask, rollout_logp=rollout, tis_cap=2.0)
    # weights min((3, 0.5, 1), 2) = (2, 0.5, 1); L = -A * rho * w = (-2, -0.5, -1)
    close(loss, [[-2.0, -0.5, -1.0]])
    loss.sum().backward()
    close(logp.grad, [[-2.0, -0.5, -1.0]])  # the weight is a detached constant
    assert m["tis_weight_mean"] == pytest.approx(3.5 / 3)
    assert m["tis_frac_capped"] == pytest.approx(1 / 3)
    # without a cap no correction is applied
    plain, m2 = policy_loss(logp, old, adv, mask, rollout_logp=rollout)
    close(plain, [[-1.0, -1.0, -1.0]])
    assert "tis_weight_mean" not in m2


@PROPS
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
    st.sampled_from([None, 1.5, 3.0]),
    st.integers(0, 2**31 - 1),
)
def test_ratio_one_is_plain_policy_gradient(
    b: int, t: int, clip_low: float, clip_high: float, dual: float | None, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(b, t, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    adv = torch.randn(b, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) < 0.8
    loss, m = policy_loss(
        logp, logp.detach().clone(), adv, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual
    )
    # rho = 1 -> L = -A * rho, dL/dlogp = -A * rho * 1 = -A (on selected tokens)
    expected = torch.where(mask, -adv, 0.0)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, expected)
    assert m["clip_frac"] == 0.0
    assert m["approx_kl"] == pytest.approx(0.0, abs=1e-12)


def test_entropy_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0], [0.0, float("-inf")], [0.0, math.log(3.0)], [1.0, 2.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    h = entropy_from_logits(logits, mask)
    # uniform over 2: ln 2 = 0.693147 ; one-hot: 0 ;
    # p = (1/4, 3/4): -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335 ; masked: 0
    close(h, [[0.693147, 0.0, 0.562335, 0.0]])


def test_entropy_matches_categorical_and_has_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    h = entropy_from_logits(logits)
    torch.testing.assert_close(h, torch.distributions.Categorical(logits=logits).entropy())
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
