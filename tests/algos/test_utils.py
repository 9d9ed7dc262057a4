"""Masked reductions: hand-derived values and the empty / non-finite edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from raylhf.algos import masked_mean, masked_sum, masked_var, masked_whiten


def test_masked_mean_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([1, 1, 0, 1])
    # (1 + 2 + 4) / 3 = 7/3
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_sum(x, mask).item() == pytest.approx(7.0)


def test_masked_mean_dim_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [True, True]])
    # row 0: 1 / 1 = 1 ; row 1: (3 + 4) / 2 = 3.5
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.0, 3.5]))
    # column 0: (1 + 3) / 2 = 2 ; column 1: 4 / 1 = 4
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([2.0, 4.0]))


def test_masked_mean_ignores_nonfinite_and_empty_is_zero() -> None:
    x = torch.tensor([1.0, float("-inf"), float("nan")], requires_grad=True)
    mask = torch.tensor([True, False, False])
    out = masked_mean(x, mask)
    assert out.item() == 1.0
    out.backward()
    # d/dx0 = 1/1; masked entries get exactly zero gradient (no nan leaks)
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 0.0]))

    y = torch.tensor([2.0, 3.0], requires_grad=True)
    empty = masked_mean(y, torch.zeros(2, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(y.grad).all()


def test_masked_var_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([1, 1, 0, 1])
    # selected 1, 2, 4; mean 7/3; deviations -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9 = 14/3
    # unbiased: 14/3 / (3 - 1) = 7/3 ; biased: 14/3 / 3 = 14/9
    assert masked_var(x, mask).item() == pytest.approx(7 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(14 / 9)
    # a single selected element has no unbiased variance: 0, not nan
    assert masked_var(x, torch.tensor([0, 1, 0, 0])).item() == 0.0
    # per-row variance
    rows = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    rmask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: 1, 3 -> mean 2, (1 + 1) / 1 = 2 ; row 1: constant -> 0
    torch.testing.assert_close(masked_var(rows, rmask, dim=1), torch.tensor([2.0, 0.0]))


def test_masked_whiten_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0])
    mask = torch.tensor([1, 1, 1, 1, 0])
    # mean 2.5 ; unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3 ; std = 1.290994
    std = math.sqrt(5 / 3)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5, 0.0]) / std
    expected[-1] = 0.0  # masked -> 0
    torch.testing.assert_close(masked_whiten(x, mask, eps=0.0), expected)
    # shift_mean=False adds the mean back (scale only)
    expected_noshift = torch.tensor([-1.5, -0.5, 0.5, 1.5, 0.0]) / std + 2.5
    expected_noshift[-1] = 0.0
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False, eps=0.0), expected_noshift)
    # a constant input whitens to zeros, not nan
    assert torch.equal(masked_whiten(torch.full((3,), 7.0)), torch.zeros(3))
