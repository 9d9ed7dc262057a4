"""The critic's math on hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from raylhf.algos.value import AdaptiveKLController, FixedKLController, explained_variance, value_loss


def test_value_loss_clipped_and_unclipped_by_hand() -> None:
    v = torch.tensor([[1.0, 0.0, 9.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    ret = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    per_tok, m = value_loss(v, old, ret, mask, clip=0.2)
    # token 0: v-R = -1 -> 1; v_clip = 0.5 + clamp(0.5) = 0.7 -> (0.7-2)^2 = 1.69 -> 0.5*1.69
    # token 1: v-R = -1 -> 1; v_clip = 0.5 - 0.2 = 0.3 -> 0.49 -> 0.5*1 ; token 2 masked
    assert per_tok[0].tolist() == pytest.approx([0.845, 0.5, 0.0])
    assert m["vf/clip_frac"] == pytest.approx(0.5) and m["vf/values_mean"] == pytest.approx(0.5)
    per_tok, m = value_loss(v, old, ret, mask, clip=None)
    assert per_tok[0].tolist() == pytest.approx([0.5, 0.5, 0.0]) and m["vf/clip_frac"] == 0.0


def test_value_loss_gradient_flows_through_the_larger_branch() -> None:
    v = torch.tensor([[1.0]], requires_grad=True)
    per_tok, _ = value_loss(v, torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip=0.2)
    per_tok.sum().backward()
    assert v.grad is not None and v.grad.item() == pytest.approx(0.0)  # clipped branch is constant in v


def test_explained_variance() -> None:
    ret = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.0), ret, mask) == pytest.approx(0.0)
    # residuals (0, 0, 1): var 2/9, var(R) = 2/3 -> 1 - 1/3
    assert explained_variance(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), ret, mask) == pytest.approx(2 / 3)


def test_kl_controllers() -> None:
    c = AdaptiveKLController(0.1, target=6.0, horizon=100.0)
    c.update(12.0, 10)  # error clipped to 0.2 -> x(1 + 0.02)
    assert c.value == pytest.approx(0.102)
    c.update(3.0, 10)  # error -0.5 -> -0.2 -> x0.98
    assert c.value == pytest.approx(0.102 * 0.98)
    f = FixedKLController(0.05)
    f.update(100.0, 10)
    assert f.value == 0.05
