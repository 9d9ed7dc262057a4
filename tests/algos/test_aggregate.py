"""Loss aggregation modes and their micro-batch invariance with global counts."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylhf.algos import LOSS_AGG_MODES, aggregate, count_tokens_and_seqs

PROPS = settings(max_examples=50, deadline=None)

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 99.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_modes_by_hand() -> None:
    # selected: row 0 = (1, 2, 3) -> sum 6, n 3 ; row 1 = (4, 6) -> sum 10, n 2 (99 is padding)
    # token-mean: (6 + 10) / 5 = 3.2
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(3.2)
    # seq-mean-token-sum: (6 + 10) / 2 = 8
    assert aggregate(LOSS, MASK, "seq-mean-token-sum").item() == pytest.approx(8.0)
    # seq-mean-token-mean: (6/3 + 10/2) / 2 = (2 + 5) / 2 = 3.5
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(3.5)
    # seq-mean-token-sum-norm, norm_const 4: (6/4 + 10/4) / 2 = 2.0
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm_const=4).item() == pytest.approx(2.0)
    # default norm_const = T = 3: (6/3 + 10/3) / 2 = 8/3
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(8 / 3)


def test_global_counts_by_hand() -> None:
    # the same piece, seen as part of a batch with 10 tokens / 4 sequences overall
    assert aggregate(LOSS, MASK, "token-mean", global_tokens=10).item() == pytest.approx(16 / 10)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum", global_seqs=4).item() == pytest.approx(16 / 4)
    out = aggregate(LOSS, MASK, "seq-mean-token-mean", global_seqs=torch.tensor(4))
    assert out.item() == pytest.approx(7 / 4)
    tokens, seqs = count_tokens_and_seqs(torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]]))
    # 3 selected tokens, 2 rows with at least one token (the empty row is not a sequence)
    assert (tokens.item(), seqs.item()) == (3, 2)


def test_empty_mask_is_zero_and_unknown_mode_raises() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    for mode in LOSS_AGG_MODES:
        out = aggregate(x, torch.zeros(2, 3), mode)
        assert out.item() == 0.0
        out.backward()
        assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="unknown loss aggregation mode"):
        aggregate(x, torch.ones(2, 3), "sum")


@PROPS
@given(
    st.integers(2, 6),
    st.integers(1, 5),
    st.sampled_from(LOSS_AGG_MODES),
    st.integers(0, 2**31 - 1),
    st.data(),
)
def test_micro_batch_split_invariance(b: int, t: int, mode: str, seed: int, data: st.DataObject) -> None:
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(b, t, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(b, t, generator=gen) < 0.7  # some rows may be entirely masked
    cuts = sorted(data.draw(st.sets(st.integers(1, b - 1), max_size=b - 1)))
    bounds = [0, *cuts, b]
    norm = float(t + 2)  # the Dr.GRPO constant (e.g. max response length), fixed for every piece

    whole = aggregate(loss, mask, mode, norm_const=norm)
    (g_whole,) = torch.autograd.grad(whole, loss)

    tokens, seqs = count_tokens_and_seqs(mask)  # what an all-reduce over the pieces would give
    pieces = [
        aggregate(loss[lo:hi], mask[lo:hi], mode, global_tokens=tokens, global_seqs=seqs, norm_const=norm)
        for lo, hi in itertools.pairwise(bounds)
    ]
    total = torch.stack(pieces).sum()
    (g_total,) = torch.autograd.grad(total, loss)

    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(g_total, g_whole)
    # the pieces' own counts sum to the global ones
    counts = [count_tokens_and_seqs(mask[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    assert sum(int(c[0]) for c in counts) == int(tokens)
    assert sum(int(c[1]) for c in counts) == int(seqs)
