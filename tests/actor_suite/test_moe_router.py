"""actors/moe_router.py on tiny random HF models (no Ray): a MoE policy's router balance, packed and unpacked,
equals transformers' own aux loss; dense models get no recorder; the aux loss term reaches the router weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.common import forward_logprobs
from actors.moe_router import MoeSpec, RouterRecorder, moe_spec, with_router_loss
from raylhf.assets import tiny_model_config
from raylhf.config.sections import TinyModelConfig


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_model_config(TinyModelConfig(family=family)), dtype=torch.float32)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "deepseek_v2"])
def test_moe_families_get_a_recorder_and_dense_ones_none(family: str) -> None:
    model = _model(family)
    assert moe_spec(model.config) == MoeSpec(4, 2)
    rec = RouterRecorder.of(model)
    assert rec is not None and len(rec.hooks) == (1 if family == "deepseek_v2" else 2)  # V2: layer 0 is dense
    assert RouterRecorder.of(_model("qwen3")) is None


def test_balance_packed_equals_unpacked_equals_transformers() -> None:
    model = _model("qwen3_moe").eval()
    rec = RouterRecorder.of(model)
    assert rec is not None
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 400, (n,), generator=g) for n in (7, 3, 5)]
    got = {}
    for packing in (False, True):
        with torch.no_grad():
            forward_logprobs(model, seqs, packing=packing, router=rec)
        got[packing] = rec.take()
    assert rec.take() is None  # taken once
    with torch.no_grad():  # outside recording: the hooks keep nothing
        forward_logprobs(model, seqs)
    assert rec.take() is None
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    attn = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
    with torch.no_grad():
        theirs = float(model(input_ids=ids, attention_mask=attn, output_router_logits=True).aux_loss)
    a, b = got[False], got[True]
    assert a is not None and b is not None
    assert float(a.aux_loss) == pytest.approx(theirs, rel=1e-5)
    assert float(b.aux_loss) == pytest.approx(theirs, rel=1e-5)
    assert a.expert_load_max == pytest.approx(b.expert_load_max) and a.expert_load_max >= 1.0


def test_router_loss_term_is_weighted_and_trains_the_router() -> None:
    model = _model("qwen3_moe")
    rec = RouterRecorder.of(model)
    seqs = [torch.arange(3, 11), torch.arange(20, 26)]
    lp, _, _ = forward_logprobs(model, seqs, router=rec)
    base = lp.sum() * 0.0
    metrics = {"loss/total": 0.0}
    # this micro-batch holds 12 of the step's 48 trained tokens: a quarter of coef x aux
    loss = with_router_loss(rec, base, metrics, 0.5, 12.0, 48.0)
    assert metrics["loss/router_aux"] == pytest.approx(0.5 * metrics["moe/aux_loss"] / 4, rel=1e-6)
    assert metrics["loss/total"] == pytest.approx(metrics["loss/router_aux"])
    loss.backward()
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    # coefficient 0: the metrics only, the loss untouched
    forward_logprobs(model, seqs, router=rec)
    m: dict[str, float] = {}
    assert with_router_loss(rec, base, m, 0.0, 12.0, 48.0) is base
    assert set(m) == {"moe/aux_loss", "moe/expert_load_max", "moe/expert_load_min"}
    assert with_router_loss(None, base, m, 0.5, 12.0, 48.0) is base
