"""raylhf.algos.moe: the router's load balance, on 2-3 tokens with the numbers derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from raylhf.algos.moe import router_balance


def _logits(*probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()  # softmax(log p) = p when p sums to 1


def test_one_layer_top1_by_hand() -> None:
    # 3 experts, top-1. token 0: p = [.5, .25, .25] -> expert 0; token 1: p = [.25, .5, .25] -> expert 1
    # f = [1/2, 1/2, 0] (share of assignments), P = mean p = [.375, .375, .25]
    # aux = E * sum f*P = 3 * (.5*.375 + .5*.375 + 0) = 1.125
    # loads: counts [1, 1, 0] / 2 * 3 = [1.5, 1.5, 0] -> max 1.5, min 0
    logits = _logits([0.5, 0.25, 0.25], [0.25, 0.5, 0.25]).requires_grad_()
    b = router_balance([logits], [torch.tensor([[0], [1]])], 3)
    assert float(b.aux_loss.detach()) == pytest.approx(1.125)
    assert (b.expert_load_max, b.expert_load_min) == (pytest.approx(1.5), 0.0)
    b.aux_loss.backward()  # the gradient flows through the router probabilities
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert b.metrics() == {"moe/aux_loss": pytest.approx(1.125), "moe/expert_load_max": pytest.approx(1.5),
                           "moe/expert_load_min": 0.0}


def test_mask_drops_padding() -> None:
    # token 1 is padding: f = [1, 0, 0], P = [.5, .25, .25]; aux = 3 * (1 * .5) = 1.5; loads [3, 0, 0]
    logits = _logits([0.5, 0.25, 0.25], [0.25, 0.5, 0.25])
    b = router_balance([logits], [torch.tensor([[0], [1]])], 3, mask=torch.tensor([1.0, 0.0]))
    assert float(b.aux_loss) == pytest.approx(1.5)
    assert (b.expert_load_max, b.expert_load_min) == (pytest.approx(3.0), 0.0)


def test_uniform_top2_two_layers_gives_k() -> None:
    # 4 experts, top-2, uniform probabilities, tokens spread evenly: f = [.5]*4 (sums to k=2), P = [.25]*4
    # aux = 4 * 4 * (.5 * .25) = 2 = k; every expert gets 1/4 of a layer's assignments -> load 1.0
    # layer 1 puts both tokens on experts 0 and 1: its loads are [2, 2, 0, 0], so max 2 and min 0 over layers,
    # while f over both layers is [.75, .75, .25, .25] and aux stays 4 * .25 * (.75+.75+.25+.25) = 2
    uniform = torch.zeros(2, 4)
    even = router_balance([uniform], [torch.tensor([[0, 1], [2, 3]])], 4)
    assert float(even.aux_loss) == pytest.approx(2.0)
    assert (even.expert_load_max, even.expert_load_min) == (pytest.approx(1.0), pytest.approx(1.0))
    skew = router_balance([uniform, uniform], [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0, 1], [0, 1]])], 4)
    assert float(skew.aux_loss) == pytest.approx(2.0)
    assert (skew.expert_load_max, skew.expert_load_min) == (pytest.approx(2.0), 0.0)


def test_matches_transformers_load_balancing_loss() -> None:
    """Same number as HF's own ``load_balancing_loss_func`` (top-k of the softmax, padding masked)."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    batch, seq, experts, k = 2, 3, 4, 2
    layers = [torch.randn(batch * seq, experts, generator=g) for _ in range(2)]
    attn = torch.tensor([[1, 1, 1], [1, 1, 0]])
    theirs = load_balancing_loss_func(tuple(layers), experts, k, attn)
    sel = [torch.topk(torch.softmax(x, -1), k, dim=-1).indices for x in layers]
    ours = router_balance(layers, sel, experts, mask=attn.reshape(-1))
    assert float(ours.aux_loss) == pytest.approx(float(theirs), rel=1e-6)
    assert math.isfinite(ours.expert_load_max)


def test_needs_one_selection_per_layer() -> None:
    with pytest.raises(ValueError, match="one selection per layer"):
        router_balance([torch.zeros(2, 3)], [], 3)
