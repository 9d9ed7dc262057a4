"""KL estimators k1 / k2 / k3 and the KL reward penalty."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylhf.algos import kl_penalty, kl_reward_penalty

LOGP = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-1.5, -1.0, -0.5])
# d = ref - logp = (-0.5, 1.0, 0.0)


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


def test_estimators_by_hand() -> None:
    # k1 = logp - ref = -d = (0.5, -1, 0)
    close(kl_penalty(LOGP, REF, "k1"), [0.5, -1.0, 0.0])
    # k2 = 0.5 d^2 = (0.125, 0.5, 0)
    close(kl_penalty(LOGP, REF, "k2"), [0.125, 0.5, 0.0])
    # k3 = exp(d) - d - 1 = (e^-0.5 + 0.5 - 1, e - 2, 0) = (0.106531, 0.718282, 0)
    close(kl_penalty(LOGP, REF, "k3"), [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    # aliases
    torch.testing.assert_close(kl_penalty(LOGP, REF, "mse"), kl_penalty(LOGP, REF, "k2"))
    torch.testing.assert_close(kl_penalty(LOGP, REF, "low_var_kl"), kl_penalty(LOGP, REF, "k3"))
    torch.testing.assert_close(kl_penalty(LOGP, REF, "kl"), kl_penalty(LOGP, REF, "k1"))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(LOGP, REF, "k4")


def test_k3_clamp_and_mask() -> None:
    logp = torch.tensor([0.0, 0.0, 0.0])
    ref = torch.tensor([-30.0, 30.0, 1.0])
    # d = -30 is clamped to -20: e^-20 + 20 - 1 = 19.0 -> clamped to 10 ; d = 30 -> huge -> 10
    close(kl_penalty(logp, ref, "k3"), [10.0, 10.0, math.e - 2.0])
    close(kl_penalty(logp, ref, "k3", clamp=None)[:1], [19.0])
    close(kl_penalty(logp, ref, "k3", mask=torch.tensor([1, 0, 1])), [10.0, 0.0, math.e - 2.0])


def test_kl_has_gradient_for_loss_use() -> None:
    logp = LOGP.clone().requires_grad_()
    kl_penalty(logp, REF, "k3").sum().backward()
    # d k3 / d logp = d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(d) = (1 - e^-0.5, 1 - e, 0)
    close(logp.grad, [1 - math.exp(-0.5), 1 - math.e, 0.0])


def test_kl_reward_penalty_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    logp = LOGP.view(1, 3).clone().requires_grad_()
    shaped, m = kl_reward_penalty(rewards, logp, REF.view(1, 3), torch.ones(1, 3), coef=0.1, estimator="k1")
    # r - 0.1 * k1 = (0 - 0.05, 0 + 0.1, 1 - 0) ; detached
    close(shaped, [[-0.05, 0.1, 1.0]])
    assert not shaped.requires_grad
    # masked mean k1 = (0.5 - 1 + 0) / 3 ; per-sequence sum -0.5
    assert m["kl_mean"] == pytest.approx(-0.5 / 3)
    assert m["kl_seq_sum_mean"] == pytest.approx(-0.5)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_k3_nonnegative_and_estimators_unbiased(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    p_logits, q_logits = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    logp_all, logq_all = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    true_kl = (logp_all.exp() * (logp_all - logq_all)).sum()
    # exact expectations over x ~ p: E[k1] = E[k3] = KL(p || q)
    k1 = kl_penalty(logp_all, logq_all, "k1")
    k3 = kl_penalty(logp_all, logq_all, "k3", clamp=None)
    probs = logp_all.exp()
    torch.testing.assert_close((probs * k1).sum(), true_kl)
    torch.testing.assert_close((probs * k3).sum(), true_kl)
    assert (k3 >= 0).all()
    assert (kl_penalty(logp_all, logq_all, "k2") >= 0).all()
