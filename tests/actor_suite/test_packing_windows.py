"""Sequence packing on sliding-window models (actors.packing.layer_masks): a packed forward gives the log-probs of
the unpacked one on sequences longer than the window, for models that mix full and sliding layers (Gemma 3,
gpt-oss: a mask per layer type) and for one that windows every layer (Mistral with a sliding_window). Before the
per-layer masks, the block-causal mask dropped the window: packed log-probs were up to 0.37 off (Gemma 3)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.common import forward_logprobs
from actors.packing import block_causal_mask, layer_masks
from raylhf.assets import tiny_model_config
from raylhf.assets.families import SLIDING_WINDOW
from raylhf.config.sections import TinyModelConfig


def test_window_mask_by_hand() -> None:
    # one row: sequence 0 of 4 tokens, then sequence 1 of 2; window 2: a query sees itself and the token before
    ids = torch.tensor([[0, 0, 0, 0, 1, 1]])
    mask = block_causal_mask(ids, window=2)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [0, 1, 1, 0, 0, 0],
                    [0, 0, 1, 1, 0, 0],
                    [0, 0, 0, 0, 1, 0],
                    [0, 0, 0, 0, 1, 1]]


def test_layer_masks_by_model_kind() -> None:
    ids = torch.tensor([[0, 0, 0, 1]])
    full = block_causal_mask(ids)
    assert torch.equal(layer_masks(ids, None, None), full)  # no window: as before
    assert torch.equal(layer_masks(ids, ["full_attention"] * 2, 2), full)  # a window no layer uses (Qwen2/3)
    assert torch.equal(layer_masks(ids, None, 2), block_causal_mask(ids, 2))  # every layer windowed (Mistral)
    mixed = layer_masks(ids, ["sliding_attention", "full_attention"], 2)
    assert isinstance(mixed, dict) and torch.equal(mixed["full_attention"], full)
    assert torch.equal(mixed["sliding_attention"], block_causal_mask(ids, 2))
    with pytest.raises(ValueError, match=r"policy\.packing=false"):
        layer_masks(ids, ["sliding_attention", "chunked_attention"], 2)


@pytest.mark.parametrize("family", ["gemma3", "gpt_oss", "mistral"])
def test_packed_equals_unpacked_beyond_the_window(family: str) -> None:
    cfg = tiny_model_config(TinyModelConfig(family=family))
    if family == "mistral":
        cfg.sliding_window = SLIDING_WINDOW  # no layer_types: every layer windowed
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 400, (n,), generator=g) for n in (30, 12, 25, 5)]
    assert max(len(s) for s in seqs) > 3 * SLIDING_WINDOW
    with torch.no_grad():
        plain = forward_logprobs(model, seqs, packing=False)[0]
        packed = forward_logprobs(model, seqs, packing=True)[0]
        one_row = forward_logprobs(model, seqs, packing=True, row_capacity=sum(len(s) for s in seqs))[0]
    assert float((plain - packed).abs().max()) < 1e-5
    assert float((plain - one_row).abs().max()) < 1e-5
