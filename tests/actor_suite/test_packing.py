"""Sequence packing (actors/packing.py, actors/common.py): bins, layouts, masks, and packed == unpacked.

No Ray. Tolerances: per-token log-probs and entropies within 1e-5 (fp32, the tiny Llama); gradients param by
param within 1e-5 absolute + 1e-4 relative (the packed forward sums the same terms in another order).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.common import PACKING_DEFAULT, forward_logprobs, micro_batches, packing_options
from actors.packing import (
    block_causal_mask,
    budget_micro_batches,
    cu_seq_lens,
    pack_bins,
    pack_ids,
    plan_rows,
    position_ids,
    prediction_index,
    sequence_ids,
    unpack,
    unpack_index,
)
from raylhf.config.sections import PolicyConfig

LP_TOL = 1e-5


# ---- bins and micro-batches ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 60))
def test_bins_respect_the_budget_and_hold_every_index_once(lengths: list[int], cap: int) -> None:
    bins = pack_bins(lengths, cap)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= cap or len(b) == 1  # only a lone sequence may exceed the budget


def test_a_sequence_longer_than_the_budget_gets_its_own_bin() -> None:
    # first-fit decreasing, capacity 10: 12 alone (too long), then 7 | 3 joins 7 | 5 | 4 joins 5 | 1 joins 5+4
    assert pack_bins([3, 12, 5, 7, 4, 1], 10) == [[1], [3, 0], [2, 4, 5]]


def test_unpacked_budget_counts_padded_tokens() -> None:
    lengths = [3, 9, 4, 4, 2, 10]
    groups = budget_micro_batches(lengths, 12, packed=False)
    # sorted 2,3,4,4 | 9 | 10: four rows padded to 4 = 16 > 12, so 2,3,4 (3 x 4 = 12) | 4 | 9 | 10
    assert groups == [[4, 0, 2], [3], [1], [5]]
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 12 or len(g) == 1


def test_micro_batches_by_count_or_by_token_budget() -> None:
    lengths = [5, 1, 4, 2, 3]
    assert list(micro_batches(lengths, 2)) == [[1, 3], [4, 2], [0]]  # as before: length-sorted, 2 per batch
    packed = list(micro_batches(lengths, 2, max_tokens=6, packing=True))
    assert packed == [[0, 1], [2, 3], [4]]  # 5+1 | 4+2 | 3
    assert all(sum(lengths[i] for i in g) <= 6 for g in packed)


def test_packing_default_is_the_configs() -> None:
    assert PolicyConfig().packing is PACKING_DEFAULT
    assert packing_options(PolicyConfig().model_dump()) == (PACKING_DEFAULT, None)
    assert packing_options({"packing": False, "max_tokens_per_micro_batch": 64}) == (False, 64)
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        PolicyConfig(max_tokens_per_micro_batch=0)


# ---- layout: positions, blocks, mask, unpacking -----------------------------------------------------------


def test_positions_restart_per_sequence_and_blocks_isolate() -> None:
    plan = plan_rows([3, 2, 1])  # capacity 3: row 0 = seq 0, row 1 = seq 1 + seq 2
    assert plan.rows == [[0], [1, 2]] and plan.row_len == 3
    assert position_ids(plan).tolist() == [[0, 1, 2], [0, 1, 0]]
    assert sequence_ids(plan).tolist() == [[0, 0, 0], [1, 1, 2]]
    mask = block_causal_mask(sequence_ids(plan))
    assert mask.shape == (2, 1, 3, 3)
    assert mask[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]  # seq 2 sees only itself


def test_padding_tail_is_its_own_block() -> None:
    plan = plan_rows([4, 1, 2])  # rows: [4] and [2, 1] padded to 4
    ids = sequence_ids(plan)
    assert ids.tolist() == [[0, 0, 0, 0], [2, 2, 1, -2]]
    assert position_ids(plan)[1].tolist() == [0, 1, 0, 0]
    mask = block_causal_mask(ids)
    assert bool(mask.any(-1).all()), "every query (padding included) attends to something: no NaN rows in sdpa"
    assert not bool(mask[1, 0, :3, 3].any()), "no real token attends to the padding"


def test_unpack_round_trip_and_prediction_index() -> None:
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6])]
    plan = plan_rows([3, 1, 2], row_capacity=6)
    assert plan.num_rows == 1
    packed = pack_ids(seqs, plan)
    assert packed.tolist() == [[1, 2, 3, 5, 6, 4]]  # first-fit decreasing order: 3, 2, 1
    flat, valid = unpack_index(plan)
    assert unpack(packed, flat, valid, fill=0).tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    src, dst = prediction_index(plan)
    # tokens 2, 3 are predicted from columns 0, 1; token 6 from column 3 (its own 5, never the 3 before it)
    assert src.tolist() == [0, 1, 3]
    assert dst.int().tolist() == [[0, 1, 1], [0, 0, 0], [0, 1, 0]]
    assert cu_seq_lens(plan).tolist() == [0, 3, 5, 6]


def test_rows_never_exceed_the_longest_sequence_by_default() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(1, 40, (30,), generator=g)]
    plan = plan_rows(lengths)
    assert plan.row_len == max(lengths)
    assert plan.num_rows < len(lengths)
    assert plan.num_rows * plan.row_len < len(lengths) * max(lengths)


# ---- packed == unpacked on the tiny model ------------------------------------------------------------------


def _model(path: Path, impl: str = "sdpa") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=impl)


def _seqs(vocab: int, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


LENGTHS = [7, 3, 12, 5, 1, 9, 4, 2]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("row_capacity", [None, 64])  # rows as long as the longest sequence / one row
def test_packed_logprobs_equal_unpacked(tiny_model_dir: Path, impl: str, row_capacity: int | None) -> None:
    model = _model(tiny_model_dir, impl).eval()
    seqs = _seqs(model.config.vocab_size, LENGTHS)
    with torch.no_grad():
        lp, attn, ent = forward_logprobs(model, seqs, 0.7, with_entropy=True)
        plp, pattn, pent = forward_logprobs(model, seqs, 0.7, with_entropy=True, packing=True,
                                            row_capacity=row_capacity)
        for i, x in enumerate(seqs):  # the unpacked batch itself equals each sequence alone
            alone = forward_logprobs(model, [x], 0.7)[0][0]
            assert torch.allclose(alone, lp[i, : len(x)], atol=LP_TOL)
    assert plp.shape == lp.shape == (len(LENGTHS), max(LENGTHS))
    assert torch.equal(attn, pattn)
    assert float((plp - lp).abs().max()) < LP_TOL
    assert ent is not None and pent is not None and float((pent - ent).abs().max()) < LP_TOL
    assert float(plp[:, 0].abs().max()) == 0.0 and float(plp[attn == 0].abs().max()) == 0.0


def test_a_leaking_mask_would_be_caught(tiny_model_dir: Path) -> None:
    """The comparison above is sensitive: a plain causal mask over the packed row (sequences see their
    neighbours) changes the log-probs far beyond the tolerance."""
    model = _model(tiny_model_dir).eval()
    seqs = _seqs(model.config.vocab_size, [5, 4, 3])
    plan = plan_rows([5, 4, 3], row_capacity=12)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        leaky = model(input_ids=pack_ids(seqs, plan), position_ids=position_ids(plan), attention_mask=causal).logits
        right = forward_logprobs(model, seqs, packing=True, row_capacity=12)[0]
    src, dst = prediction_index(plan)
    targets = torch.cat([x[1:] for x in seqs])
    lp = torch.log_softmax(leaky.reshape(-1, leaky.shape[-1])[src], -1).gather(-1, targets[:, None])[:, 0]
    assert float((lp - right[dst]).abs().max()) > 100 * LP_TOL


def _grads(model: torch.nn.Module, seqs: list[torch.Tensor], packing: bool) -> tuple[float, dict[str, Any]]:
    """A GRPO-like loss (advantage-weighted log-probs, KL-like square, entropy bonus) and its gradients."""
    model.zero_grad()
    lp, attn, ent = forward_logprobs(model, seqs, 1.0, with_entropy=True, packing=packing)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(lp.shape[0], 1, generator=g)
    mask = attn.float()
    mask[:, :2] = 0  # a "prompt" of two tokens
    assert ent is not None
    loss = -(lp * adv * mask).sum() / mask.sum() + 0.1 * ((lp + 1.0) ** 2 * mask).sum() - 0.01 * (ent * mask).sum()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_gradients_equal_unpacked(tiny_model_dir: Path, impl: str) -> None:
    model = _model(tiny_model_dir, impl).train()
    seqs = _seqs(model.config.vocab_size, LENGTHS, seed=3)
    loss, grads = _grads(model, seqs, packing=False)
    ploss, pgrads = _grads(model, seqs, packing=True)
    assert ploss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == pgrads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        assert torch.allclose(pgrads[name], g, atol=1e-5, rtol=1e-4), name
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # the loss does move the weights


class _VarlenStandIn(torch.nn.Module):
    """What flash-attention's varlen path computes, on CPU: each ``cu_seq_lens`` segment of the single packed
    row run on its own through the real model. It records the call, so the test sees what the GPU path sends."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = SimpleNamespace(_attn_implementation="flash_attention_2")
        self.calls: list[dict[str, Any]] = []

    def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
        self.calls.append({"input_ids": input_ids, **kw})
        cu = kw["cu_seq_lens_q"].tolist()
        parts = [self.inner(input_ids=input_ids[:, a:b], use_cache=False).logits for a, b in pairwise(cu)]
        return SimpleNamespace(logits=torch.cat(parts, dim=1))


def test_flash_path_sends_one_row_with_sequence_boundaries(tiny_model_dir: Path) -> None:
    model = _model(tiny_model_dir).eval()
    seqs = _seqs(model.config.vocab_size, LENGTHS, seed=4)
    stand_in = _VarlenStandIn(model)
    with torch.no_grad():
        want = forward_logprobs(model, seqs)[0]
        got = forward_logprobs(stand_in, seqs, packing=True)[0]
    (call,) = stand_in.calls
    assert call["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in call
    assert call["cu_seq_lens_q"].dtype == torch.int32 and call["cu_seq_lens_q"][-1] == sum(LENGTHS)
    assert torch.equal(call["cu_seq_lens_q"], call["cu_seq_lens_k"]) and call["max_length_q"] == max(LENGTHS)
    starts = call["cu_seq_lens_q"][:-1].long()
    assert call["position_ids"][0, starts].tolist() == [0] * len(LENGTHS)
    assert float((got - want).abs().max()) < LP_TOL


def test_unsupported_attention_names_the_setting() -> None:
    class Flex(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(_attn_implementation="flex_attention")

    with pytest.raises(ValueError, match=r"policy\.packing=false"):
        forward_logprobs(Flex(), [torch.tensor([1, 2])], packing=True)
