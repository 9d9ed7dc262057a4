"""policy.logprob_chunk_size: the output head, the fp32 log-softmax and the entropy chunk by chunk
(``actors.logprob_head``) give the unchunked path's log-probs, entropies and gradients, packed or not, for every
model type the chunked path accepts; the others take the unchunked path."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from actors.common import check_attn_implementation, forward_logprobs, logprob_chunk_size
from actors.logprob_head import HEAD_TRANSFORMS, LOGPROB_CHUNK_DEFAULT, causal_lm, head_split
from raylhf.config.sections import PolicyConfig, ReferenceConfig

TOL = 1e-5
LENGTHS = [7, 3, 12, 5, 1, 9, 4, 2]  # 35 predicted tokens: chunks of 4 end mid-sequence
SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
EXTRA: dict[str, dict[str, Any]] = {  # what makes each type's head transform matter (or its config build)
    "gemma2": dict(final_logit_softcapping=2.0, query_pre_attn_scalar=8, sliding_window=16),
    "gemma3_text": dict(final_logit_softcapping=2.0, query_pre_attn_scalar=8, sliding_window=16),
    "cohere": dict(logit_scale=0.5), "cohere2": dict(logit_scale=0.5, sliding_window=16),
    "granite": dict(logits_scaling=4.0),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
}


def tiny(model_type: str, seed: int = 0, **kw: Any) -> torch.nn.Module:
    """A random fp32 causal LM of ``model_type`` built from a config (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**SMALL, **EXTRA.get(model_type, {}), **kw})
    cfg._attn_implementation = "sdpa" if model_type not in ("gemma2",) else "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model


def seqs(vocab: int, lengths: list[int] = LENGTHS, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


def loss_and_grads(model: torch.nn.Module, ids: list[torch.Tensor], **kw: Any,
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A GRPO-like loss (advantage-weighted log-probs, a square, an entropy bonus) and its gradients."""
    model.zero_grad()
    lp, attn, ent = forward_logprobs(model, ids, 0.7, with_entropy=True, **kw)
    assert ent is not None
    adv = torch.randn(lp.shape[0], 1, generator=torch.Generator().manual_seed(1))
    mask = attn.float()
    loss = -(lp * adv * mask).sum() / mask.sum() + 0.1 * ((lp + 1.0) ** 2 * mask).sum() - 0.01 * (ent * mask).sum()
    loss.backward()
    return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("chunk", [4, 40])  # several chunks (one ends mid-sequence) / one chunk (35 predicted)
def test_chunked_equals_unchunked_with_gradients(model_type: str, packing: bool, chunk: int) -> None:
    model = tiny(model_type).train()
    ids = seqs(model.config.vocab_size)
    lp, ent, grads = loss_and_grads(model, ids, packing=packing)
    clp, cent, cgrads = loss_and_grads(model, ids, packing=packing, chunk_size=chunk)
    assert float((clp - lp).abs().max()) < TOL and float((cent - ent).abs().max()) < TOL
    assert grads.keys() == cgrads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        assert torch.allclose(cgrads[name], g, atol=TOL, rtol=1e-4), name
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # the loss does move the weights
    assert "forward" not in vars(model)  # the replaced forward is gone after the call


@pytest.mark.parametrize("model_type", sorted(HEAD_TRANSFORMS))
def test_every_listed_model_type_reproduces_its_own_logits(model_type: str) -> None:
    """The table's transform is what the model's own forward applies after its head (soft-capping, scales)."""
    model = tiny(model_type).eval()
    assert head_split(model) is not None
    ids = seqs(model.config.vocab_size, seed=2)
    with torch.no_grad():
        lp, _, ent = forward_logprobs(model, ids, 0.7, with_entropy=True, packing=True)
        clp, _, cent = forward_logprobs(model, ids, 0.7, with_entropy=True, packing=True, chunk_size=5)
    assert ent is not None and cent is not None
    assert float((clp - lp).abs().max()) < TOL and float((cent - ent).abs().max()) < TOL


def test_a_wrong_transform_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is sensitive: without Gemma 2's soft-capping the log-probs differ far beyond it."""
    model = tiny("gemma2").eval()
    ids = seqs(model.config.vocab_size, seed=2)
    monkeypatch.setitem(HEAD_TRANSFORMS, "gemma2", HEAD_TRANSFORMS["llama"])
    with torch.no_grad():
        lp = forward_logprobs(model, ids, packing=True)[0]
        clp = forward_logprobs(model, ids, packing=True, chunk_size=5)[0]
    assert float((clp - lp).abs().max()) > 100 * TOL


def test_other_models_take_the_unchunked_path() -> None:
    """A type not in the table (gpt2 here), a remote-code class, a forward replaced by someone else: no split;
    forward_logprobs still gives the model's own log-probs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=4, n_positions=64)).eval()
    assert head_split(gpt2) is None
    ids = seqs(97)
    with torch.no_grad():
        assert torch.equal(forward_logprobs(gpt2, ids, chunk_size=4)[0], forward_logprobs(gpt2, ids)[0])

    llama = tiny("llama")
    type(llama).__module__  # noqa: B018  (a transformers class: splits)
    assert head_split(llama) is not None
    llama.forward = llama.forward  # type: ignore[method-assign]  (an instance forward, as accelerate's hooks set)
    assert head_split(llama) is None


def test_entropy_without_a_graph_when_it_is_only_a_metric() -> None:
    model = tiny("qwen2").train()
    ids = seqs(model.config.vocab_size)
    for chunk in (None, 4):
        lp, _, ent = forward_logprobs(model, ids, 0.7, with_entropy=True, packing=True, chunk_size=chunk)
        glp, _, gent = forward_logprobs(model, ids, 0.7, with_entropy=True, packing=True, chunk_size=chunk,
                                        entropy_grad=False)
        assert ent is not None and gent is not None
        assert ent.requires_grad and not gent.requires_grad and glp.requires_grad
        assert torch.equal(gent, ent.detach()) and torch.equal(glp, lp)


def test_lora_model_chunks_through_the_peft_wrapper() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     lora_dropout=0.0, init_lora_weights=False))
    assert causal_lm(model) is model.get_base_model() and head_split(model) is not None
    ids = seqs(97)
    lp, ent, grads = loss_and_grads(model, ids, packing=True)
    clp, cent, cgrads = loss_and_grads(model, ids, packing=True, chunk_size=4)
    assert float((clp - lp).abs().max()) < TOL and float((cent - ent).abs().max()) < TOL
    assert grads.keys() == cgrads.keys() and all("lora_" in n for n in grads)
    for name, g in grads.items():
        assert torch.allclose(cgrads[name], g, atol=TOL, rtol=1e-4), name


@pytest.mark.parametrize("packing", [False, True])
def test_a_micro_batch_within_one_chunk_takes_the_unchunked_path(packing: bool, monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    """No memory to save there: the model's own logits, so the numbers (gradients included) are the old ones bit
    for bit; one position more than the chunk and the head is split."""
    import actors.common as common

    splits: list[int] = []
    real = common.split_forward
    monkeypatch.setattr(common, "split_forward", lambda *a, **k: splits.append(1) or real(*a, **k))
    model = tiny("llama").train()
    ids = seqs(model.config.vocab_size)
    positions = int(common._model_inputs(model, ids, packing, None)[0]["input_ids"].numel())  # rows x width
    lp, ent, grads = loss_and_grads(model, ids, packing=packing)
    same = loss_and_grads(model, ids, packing=packing, chunk_size=positions)
    assert splits == []
    assert torch.equal(same[0], lp) and torch.equal(same[1], ent)
    assert all(torch.equal(same[2][k], g) for k, g in grads.items())
    split = loss_and_grads(model, ids, packing=packing, chunk_size=positions - 1)
    assert splits == [1]
    assert float((split[0] - lp).abs().max()) < TOL and float((split[1] - ent).abs().max()) < TOL


def test_sequences_of_one_token_predict_nothing() -> None:
    model = tiny("llama").eval()
    ids = [torch.tensor([5]), torch.tensor([7])]
    with torch.no_grad():
        lp, attn, ent = forward_logprobs(model, ids, with_entropy=True, packing=True, chunk_size=1)
    assert lp.shape == attn.shape == (2, 1) and ent is not None and float(lp.abs().max()) == 0.0


def test_config_fields_reach_the_workers() -> None:
    policy = PolicyConfig()
    assert policy.logprob_chunk_size == LOGPROB_CHUNK_DEFAULT and policy.attn_implementation is None
    assert logprob_chunk_size({}) == LOGPROB_CHUNK_DEFAULT == logprob_chunk_size(policy.model_dump())
    assert logprob_chunk_size({"logprob_chunk_size": None}) == 0 == logprob_chunk_size({"logprob_chunk_size": 0})
    ref = PolicyConfig(packing=False, logprob_chunk_size=256, attn_implementation="eager").reference_config(
        ReferenceConfig(micro_batch_size=3))
    assert ref == {**ReferenceConfig(micro_batch_size=3).model_dump(), "packing": False, "logprob_chunk_size": 256,
                   "attn_implementation": "eager"}
    with pytest.raises(ValueError, match="attn_implementation"):
        PolicyConfig(attn_implementation="flex")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer: no flash-attention")
def test_flash_attention_without_the_package_names_the_field() -> None:
    check_attn_implementation("sdpa")
    check_attn_implementation(None)
    for impl in ("flash_attention_2", "flash_attention_3"):
        with pytest.raises(ValueError, match=rf"policy\.attn_implementation='{impl}' needs CUDA"):
            check_attn_implementation(impl)
    with pytest.raises(ValueError, match=r"critic\.attn_implementation"):
        check_attn_implementation("flash_attention_2", "critic.attn_implementation")
