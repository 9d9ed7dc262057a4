"""Weighted cross-entropy, generalized JSD and the clipped value loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylhf.algos import (
    aggregate,
    clipped_value_loss,
    generalized_jsd,
    generalized_jsd_per_token,
    token_logprobs,
    weighted_cross_entropy,
)

LN3 = math.log(3.0)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


def test_weighted_cross_entropy_by_hand() -> None:
    # V = 2. Token logits / label / weight:
    #   t0: (0, 0)     label 0, w 1   -> CE = ln 2          = 0.693147
    #   t1: (ln 3, 0)  label 0, w 2   -> p = 3/4, CE = 0.287682
    #   t2: (ln 3, 0)  label 1, w 0.5 -> p = 1/4, CE = 1.386294
    #   t3: (5, 5)     ignored (-100), w 7
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [LN3, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[0, 0, 1, -100]])
    scale = torch.tensor([[1.0, 2.0, 0.5, 7.0]])
    # weighted sum = 0.693147 + 2 * 0.287682 + 0.5 * 1.386294 = 1.961658
    loss, m = weighted_cross_entropy(logits, labels, loss_scale=scale)
    close(loss, 1.961658 / 3)  # local count: 3 non-ignored tokens
    loss, _ = weighted_cross_entropy(logits, labels, loss_scale=scale, global_count=6)
    close(loss, 1.961658 / 6)
    # unweighted: (0.693147 + 0.287682 + 1.386294) / 3 = 0.789041
    loss, m = weighted_cross_entropy(logits, labels)
    close(loss, 0.789041)
    assert m["nll"] == pytest.approx(0.789041, abs=1e-5)
    assert m["num_tokens"] == 3.0
    # argmax: t0 tie -> index 0 (correct), t1 -> 0 (correct), t2 -> 0 (wrong)
    assert m["token_accuracy"] == pytest.approx(2 / 3)
    close(token_logprobs(logits, labels), [[-math.log(2.0), math.log(0.75), math.log(0.25), 0.0]])


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 2**31 - 1), st.data())
def test_cross_entropy_micro_batch_invariance(b: int, t: int, seed: int, data: st.DataObject) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (b, t), generator=gen)
    labels[torch.rand(b, t, generator=gen) < 0.3] = -100
    scale = torch.rand(b, t, generator=gen, dtype=torch.float64)
    cut = data.draw(st.integers(1, b - 1))
    whole, _ = weighted_cross_entropy(logits, labels, loss_scale=scale)
    n = (labels != -100).sum()
    parts = [
        weighted_cross_entropy(logits[s], labels[s], loss_scale=scale[s], global_count=n)[0]
        for s in (slice(0, cut), slice(cut, b))
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)


def test_generalized_jsd_by_hand() -> None:
    # student S = softmax(0, 0) = (1/2, 1/2) ; teacher T = softmax(ln 3, 0) = (3/4, 1/4)
    s = torch.zeros(1, 1, 2)
    t = torch.tensor([[[LN3, 0.0]]])
    # beta = 0: forward KL(T || S) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.304099 - 0.173287 = 0.130812
    close(generalized_jsd_per_token(s, t, beta=0.0), [[0.130812]])
    # beta = 1: reverse KL(S || T) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = -0.202733 + 0.346574 = 0.143841
    close(generalized_jsd_per_token(s, t, beta=1.0), [[0.143841]])
    # beta = 0.5: M = (0.625, 0.375)
    #   KL(T || M) = 0.75 ln(0.75/0.625) + 0.25 ln(0.25/0.375) = 0.136741 - 0.101366 = 0.035375
    #   KL(S || M) = 0.5 ln(0.5/0.625) + 0.5 ln(0.5/0.375)  = -0.111572 + 0.143841 = 0.032269
    #   JSD = 0.5 * 0.035375 + 0.5 * 0.032269 = 0.033822
    close(generalized_jsd_per_token(s, t, beta=0.5), [[0.033822]])
    # temperature divides the logits
    z_s, z_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(
        generalized_jsd_per_token(z_s, z_t, beta=0.3, temperature=2.0),
        generalized_jsd_per_token(z_s / 2, z_t / 2, beta=0.3),
    )


def test_generalized_jsd_mask_and_global_count() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[LN3, 0.0], [0.0, 0.0], [9.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # selected tokens: 0.130812 (see above) and 0 (identical distributions); third masked
    loss, m = generalized_jsd(s, t, mask, beta=0.0)
    close(loss, 0.130812 / 2)
    close(generalized_jsd(s, t, mask, beta=0.0, global_count=4)[0], 0.130812 / 4)
    assert m["num_tokens"] == 2.0


def test_clipped_value_loss_by_hand() -> None:
    values = torch.tensor([[1.0, 2.0, 0.5, 2.4, 99.0]], requires_grad=True)
    old = torch.tensor([[0.8, 1.0, 0.5, 2.0, 0.0]])
    returns = torch.tensor([[1.5, 1.0, 0.0, 2.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, m = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    # t0: (1 - 1.5)^2 = 0.25 ; v_clip = 0.8 + 0.2 = 1.0 -> 0.25          ; 0.5 * 0.25 = 0.125
    # t1: (2 - 1)^2   = 1    ; v_clip = 1 + 0.2 = 1.2   -> 0.04          ; 0.5 * 1    = 0.5
    # t2: (0.5 - 0)^2 = 0.25 ; v_clip = 0.5            -> 0.25          ; 0.125
    # t3: (2.4 - 2.5)^2 = 0.01 ; v_clip = 2.0 + 0.2 = 2.2 -> 0.09 (larger) ; 0.5 * 0.09 = 0.045
    # t4: masked -> 0
    close(loss, [[0.125, 0.5, 0.125, 0.045, 0.0]])
    assert m["vf_clip_frac"] == pytest.approx(0.25)  # only t3 uses the clipped term
    loss.sum().backward()
    # d/dv of 0.5 * (v - R)^2 is v - R: t1: 2 - 1 = 1 ; t2: 0.5 - 0 = 0.5 ;
    # t3 takes the clipped branch (v_clip is constant in v: |v - old| > 0.2) -> 0 ; t4 masked -> 0
    # (t0 is a tie between the branches and is not checked)
    assert values.grad[0, 1].item() == pytest.approx(1.0)
    assert values.grad[0, 2].item() == pytest.approx(0.5)
    assert values.grad[0, 3].item() == 0.0
    assert values.grad[0, 4].item() == 0.0
    # unclipped variant, aggregated with token-mean: (0.125 + 0.5 + 0.125 + 0.005) / 4 = 0.18875
    plain, _ = clipped_value_loss(values, old, returns, mask, clip_range=None)
    close(aggregate(plain, mask, "token-mean"), 0.18875)
