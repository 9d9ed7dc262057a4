"""Preference losses: hand-derived values for every method."""

from __future__ import annotations

import math

import pytest
import torch

from raylhf.algos import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    log1mexp,
    orpo_loss,
    simpo_loss,
)


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# three pairs (summed log-probs):
PI_C = torch.tensor([-1.0, -2.0, -1.0])
PI_R = torch.tensor([-3.0, -1.0, -1.0])
REF_C = torch.tensor([-2.0, -2.0, -1.0])
REF_R = torch.tensor([-2.0, -2.0, -1.0])
# chosen log-ratios (1, 0, 0); rejected log-ratios (-1, 1, 0); margins h = (2, -1, 0)


def test_dpo_sigmoid_by_hand() -> None:
    losses, m = dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5)
    # beta * h = (1, -0.5, 0): -log sigmoid(z) = log(1 + e^-z) = (0.313262, 0.974077, 0.693147)
    close(losses, [softplus(-1.0), softplus(0.5), math.log(2.0)])
    # rewards beta * logratio: chosen (0.5, 0, 0) mean 1/6 ; rejected (-0.5, 0.5, 0) mean 0
    assert m["rewards/chosen"] == pytest.approx(1 / 6)
    assert m["rewards/rejected"] == pytest.approx(0.0)
    assert m["rewards/margins"] == pytest.approx(1 / 6)  # (1 - 0.5 + 0) / 3
    # only pair 0 has chosen > rejected (ties don't count)
    assert m["rewards/accuracies"] == pytest.approx(1 / 3)


def test_conservative_dpo_by_hand() -> None:
    losses, _ = dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5, label_smoothing=0.1)
    # 0.9 * (-log sigmoid(z)) + 0.1 * (-log sigmoid(-z)), z = (1, -0.5, 0):
    #   pair 0: 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262
    #   pair 1: 0.9 * 0.974077 + 0.1 * 0.474077 = 0.924077
    #   pair 2: ln 2 = 0.693147
    close(losses, [0.413262, 0.924077, math.log(2.0)])
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PI_C, PI_R, REF_C, REF_R, loss_type="ipo", label_smoothing=0.1)


def test_ipo_and_hinge_by_hand() -> None:
    # IPO beta 0.5: (h - 1/(2 * 0.5))^2 = (h - 1)^2 = (1, 4, 1)
    close(dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5, loss_type="ipo")[0], [1.0, 4.0, 1.0])
    # hinge beta 0.25: relu(1 - 0.25 * h) = (0.5, 1.25, 1)
    close(dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.25, loss_type="hinge")[0], [0.5, 1.25, 1.0])


def test_dpo_gradient_ignores_reference() -> None:
    ref_c = REF_C.clone().requires_grad_()
    pi_c = PI_C.clone().requires_grad_()
    losses, _ = dpo_loss(pi_c, PI_R, ref_c, REF_R, beta=0.5)
    losses.sum().backward()
    assert ref_c.grad is None
    # d/dpi_c [-log sigmoid(beta h)] = -beta * sigmoid(-beta h) = -0.5 * (s(-1), s(0.5), s(0))
    sig = torch.sigmoid(torch.tensor([-1.0, 0.5, 0.0]))
    torch.testing.assert_close(pi_c.grad, -0.5 * sig)


def test_simpo_by_hand() -> None:
    avg_c = torch.tensor([-0.5, -1.0, -0.25])
    avg_r = torch.tensor([-1.0, -0.8, -0.75])
    losses, m = simpo_loss(avg_c, avg_r, beta=2.0, gamma=1.0)
    # z = 2 * (avg_c - avg_r) - 1 = (0, -1.4, 0): -log sigmoid(z) = (ln 2, log(1 + e^1.4) = 1.620263, ln 2)
    close(losses, [math.log(2.0), softplus(1.4), math.log(2.0)])
    assert m["rewards/chosen"] == pytest.approx(2.0 * (-1.75) / 3)
    # summed log-probs + lengths give the same thing: -2 / 4 = -0.5 ...
    losses2, _ = simpo_loss(
        torch.tensor([-2.0, -3.0, -0.5]),
        torch.tensor([-3.0, -4.0, -1.5]),
        beta=2.0,
        gamma=1.0,
        chosen_lengths=torch.tensor([4, 3, 2]),
        rejected_lengths=torch.tensor([3, 5, 2]),
    )
    torch.testing.assert_close(losses2, losses)


def test_cpo_by_hand() -> None:
    nll = torch.tensor([0.4, 0.0, 1.0])
    losses, m = cpo_loss(PI_C, PI_R, beta=0.5, chosen_nll=nll, alpha=1.0)
    # no reference: beta * (pi_c - pi_r) = 0.5 * (2, -1, 0) = (1, -0.5, 0)
    # -log sigmoid + NLL = (0.313262 + 0.4, 0.974077 + 0, 0.693147 + 1)
    close(losses, [softplus(-1.0) + 0.4, softplus(0.5), math.log(2.0) + 1.0])
    assert m["rewards/chosen"] == pytest.approx(0.5 * (-4.0) / 3)  # beta * pi_c
    assert m["nll_loss"] == pytest.approx(1.4 / 3)
    # without the NLL term, CPO's preference part is DPO with a zero reference
    torch.testing.assert_close(
        cpo_loss(PI_C, PI_R, beta=0.5)[0], dpo_loss(PI_C, PI_R, torch.zeros(3), torch.zeros(3), beta=0.5)[0]
    )


def test_orpo_by_hand() -> None:
    avg_c = torch.log(torch.tensor([0.5, 0.2, 0.5]))
    avg_r = torch.log(torch.tensor([0.2, 0.5, 0.5]))
    losses, m = orpo_loss(avg_c, avg_r, beta=0.1)
    # odds(0.5) = 1, odds(0.2) = 0.25:
    #   pair 0: log OR = ln(1 / 0.25) = ln 4 ; log sigmoid(ln 4) = ln(4/5) = -0.223144
    #           L = NLL (-ln 0.5 = 0.693147) - 0.1 * (-0.223144) = 0.715461
    #   pair 1: log OR = -ln 4 ; log sigmoid(-ln 4) = ln(1/5) = -1.609438 ; L = -ln 0.2 + 0.160944 = 1.770382
    #   pair 2: log OR = 0 ; log sigmoid(0) = -ln 2 ; L = 0.693147 + 0.069315 = 0.762462
    close(losses, [0.715461, 1.770382, 0.762462])
    assert m["log_odds_chosen"] == pytest.approx(0.0, abs=1e-6)  # (ln 4 - ln 4 + 0) / 3
    assert m["log_odds_ratio"] == pytest.approx((math.log(0.8) + math.log(0.2) - math.log(2.0)) / 3, abs=1e-6)


def test_log1mexp_is_stable() -> None:
    x = torch.tensor([-1e-6, -0.1, -0.7, -5.0, -50.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-6, atol=1e-15)
    assert torch.isfinite(log1mexp(torch.tensor([0.0, -1e-30]))).all()


def test_kto_by_hand() -> None:
    policy = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-2.0, -2.0, -1.0])
    desirable = torch.tensor([True, False, False])
    losses, m = kto_loss(policy, ref, desirable, 0.5, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    # r = pi - ref = (1, 0, -2), z0 = 0.5
    #   desirable   0: 1 * (1 - sigmoid(1 - 0.5))   = 1 - 0.622459 = 0.377541
    #   undesirable 1: 2 * (1 - sigmoid(0.5 - 0))   = 2 * 0.377541 = 0.755082
    #   undesirable 2: 2 * (1 - sigmoid(0.5 + 2))   = 2 * (1 - 0.924142) = 0.151716
    close(losses, [0.377541, 0.755082, 0.151716])
    assert m["rewards/chosen"] == pytest.approx(1.0)
    assert m["rewards/rejected"] == pytest.approx(-1.0)  # mean(0, -2)
    assert m["rewards/margins"] == pytest.approx(2.0)
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)  # 1 > 0 yes, 0 < 0 no, -2 < 0 yes
    assert m["kl"] == pytest.approx(0.5)
    # all desirable: no nan in the metrics
    _, m2 = kto_loss(policy, ref, torch.ones(3, dtype=torch.bool), 0.0)
    assert m2["rewards/rejected"] == 0.0


def test_kto_reference_point() -> None:
    # mean(-1 + 1.5, -2 + 1.5) = mean(0.5, -0.5) = 0
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5])).item() == 0.0
    # mean(1, -0.2) = 0.4 ; mean(-1, -3) < 0 -> clamped to 0
    z0 = kto_reference_point(torch.tensor([0.0, -1.2]), torch.tensor([-1.0, -1.0]))
    assert z0.item() == pytest.approx(0.4)
    assert kto_reference_point(torch.tensor([-2.0, -4.0]), torch.tensor([-1.0, -1.0])).item() == 0.0


def test_bradley_terry_by_hand() -> None:
    rc = torch.tensor([2.0, 0.0, 1.0])
    rr = torch.tensor([1.0, 1.0, 1.0])
    losses, m = bradley_terry_loss(rc, rr)
    # diff (1, -1, 0): -log sigmoid = (0.313262, 1.313262, 0.693147)
    close(losses, [softplus(-1.0), softplus(1.0), math.log(2.0)])
    assert m["rewards/accuracies"] == pytest.approx(1 / 3)
    assert m["rewards/margins"] == pytest.approx(0.0)
    # margin 0.5: diff (0.5, -1.5, -0.5): (0.474077, 1.701413, 0.974077)
    close(bradley_terry_loss(rc, rr, margin=0.5)[0], [softplus(-0.5), softplus(1.5), softplus(0.5)])
    # centring term 0.01 * (rc + rr)^2 = 0.01 * (9, 1, 4)
    close(
        bradley_terry_loss(rc, rr, center_coef=0.01)[0],
        [softplus(-1.0) + 0.09, softplus(1.0) + 0.01, math.log(2.0) + 0.04],
    )
