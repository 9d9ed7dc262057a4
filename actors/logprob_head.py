"""Next-token log-probs with the output head applied chunk by chunk (``policy.logprob_chunk_size``).

The full-vocabulary logits are the largest tensors of a log-prob pass: ``[tokens, V]`` in the model's dtype,
their fp32 copy, the fp32 log-softmax, and in training autograd keeps some of them for the backward (at
V = 152k, 16k tokens make ~10 GB per fp32 copy). Here the decoder body runs once to the last hidden states;
the head, the fp32 log-softmax, the target gather and the entropy then run on ``chunk_size`` predicting positions
at a time, each chunk under ``torch.utils.checkpoint`` (non-reentrant) so its backward recomputes the chunk's
logits instead of keeping them. The full logits never exist at once; the results equal the unchunked ones up
to float rounding (``tests/actor_suite/test_chunked_logprobs.py``).

The split runs *inside* the model's own call: the causal LM's ``forward`` is replaced for that one call by
"body, then chunked head", so a DeepSpeed engine still sees one forward whose outputs carry its backward hooks
(``engine.backward`` relies on them) and ZeRO-3's per-module hooks still gather the head's weight each time it
runs (forward and recomputation).

Only model types whose causal-LM ``forward`` was read (transformers 5.19) take this path: ``HEAD_TRANSFORMS``
says what each applies after its head. Any other model (a type not in the table, a ``trust_remote_code`` class,
a model whose ``forward`` is already replaced, e.g. by accelerate's hooks) takes the unchunked path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Transform = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
LOGPROB_CHUNK_DEFAULT = 2048  # policy.logprob_chunk_size's default (raylhf.config.sections.PolicyConfig)


def _plain(_: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits


def _softcap(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Gemma 2/3's final soft-capping, in its forward's order: ``tanh(logits / cap) * cap``."""
    cap = model.config.final_logit_softcapping
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _times_logit_scale(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits * model.logit_scale  # Cohere: the model's attribute, set from config.logit_scale


def _over_logits_scaling(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits / model.config.logits_scaling  # Granite (HyperCLOVAX multiplies instead: not listed)


# model_type -> what its ForCausalLM.forward does to ``lm_head(hidden_states)`` before returning the logits.
# Not listed (unchunked path): types that reshape or upcast inside (Mamba, Falcon-H1's multiplier, Mllama's
# .float(), xLSTM's inference soft-cap, ModernBert's decoder, ...) and every remote-code model.
HEAD_TRANSFORMS: dict[str, Transform] = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "phi3",
                     "olmo2", "starcoder2", "smollm3"), _plain),
    **dict.fromkeys(("gemma2", "gemma3_text"), _softcap),
    **dict.fromkeys(("cohere", "cohere2"), _times_logit_scale),
    "granite": _over_logits_scaling,
}


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside a DeepSpeed engine (or DDP) and a peft wrapper."""
    inner = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    get_base = getattr(inner, "get_base_model", None)  # peft's PeftModel
    return get_base() if callable(get_base) else inner


@dataclass(frozen=True)
class HeadSplit:
    """Where one causal LM splits: the body (to the last hidden states), the output head and what follows it."""

    model: torch.nn.Module  # the causal LM whose forward is replaced for one call
    body: torch.nn.Module
    head: torch.nn.Module
    transform: Transform


def head_split(model: torch.nn.Module) -> HeadSplit | None:
    """The split of ``model`` (engine / peft / HF), or None where only the model's own forward is right."""
    inner = causal_lm(model)
    transform = HEAD_TRANSFORMS.get(str(getattr(getattr(inner, "config", None), "model_type", "")))
    if transform is None or not type(inner).__module__.startswith("transformers.models."):
        return None  # an unread forward (other types, remote code) may do anything after its head
    if "forward" in vars(inner):
        return None  # its forward is already an instance attribute (accelerate's hooks): not ours to replace
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(body, torch.nn.Module) or body is inner or not isinstance(head, torch.nn.Module):
        return None
    return HeadSplit(inner, body, head, transform)


@dataclass(frozen=True)
class ChunkSpec:
    """What the head computes at the selected positions: the ``[N]`` flat positions ``src`` of the hidden
    states ``[R, T, H]`` (those that predict a real token), their targets, the temperature, the chunk size, and
    the entropy: none, without a graph (``entropy_grad=False``: a metric only), or with one."""

    src: torch.Tensor
    targets: torch.Tensor
    temperature: float
    chunk_size: int
    with_entropy: bool
    entropy_grad: bool


def _chunk(split: HeadSplit, spec: ChunkSpec, hidden: torch.Tensor, targets: torch.Tensor,
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: logits (head, the model's transform, then fp32 and the temperature, as the unchunked path
    does), log-softmax, the targets' log-probs and the entropy. Computing the entropy last lets a checkpoint's
    recomputation stop before it when it has no graph."""
    logits = split.transform(split.model, split.head(hidden)).float()
    if spec.temperature != 1.0:
        logits = logits / spec.temperature
    logp = F.log_softmax(logits, dim=-1)
    tok = torch.gather(logp, -1, targets.unsqueeze(-1)).squeeze(-1)
    if not spec.with_entropy:
        return tok, None
    with torch.set_grad_enabled(torch.is_grad_enabled() and spec.entropy_grad):
        ent = -(logp.exp() * logp).sum(-1)
    return tok, ent


def chunked_logprobs(split: HeadSplit, spec: ChunkSpec, hidden: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log-probs [N], entropy [N] | None)`` of the selected positions of ``hidden`` ``[R, T, H]``, chunk by
    chunk; under autograd each chunk is checkpointed (its logits are recomputed in the backward)."""
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, spec.src.to(hidden.device))
    targets = spec.targets.to(hidden.device)
    grad = torch.is_grad_enabled() and (flat.requires_grad or any(p.requires_grad for p in split.head.parameters()))
    toks: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for a in range(0, flat.shape[0], spec.chunk_size):
        h, t = flat[a : a + spec.chunk_size], targets[a : a + spec.chunk_size]
        if grad:
            tok, ent = checkpoint(_chunk, split, spec, h, t, use_reentrant=False)
        else:
            tok, ent = _chunk(split, spec, h, t)
        toks.append(tok)
        if ent is not None:
            ents.append(ent)
    if not toks:  # no position predicts a token (every sequence has one token)
        empty = flat.new_zeros(0, dtype=torch.float32)
        return empty, (empty if spec.with_entropy else None)
    return torch.cat(toks), (torch.cat(ents) if spec.with_entropy else None)


@contextmanager
def _forward_replaced(split: HeadSplit, spec: ChunkSpec) -> Iterator[None]:
    """``split.model``'s forward, for the calls inside the block: the body with the caller's keyword arguments,
    then :func:`chunked_logprobs`; it returns ``(log-probs, entropy)`` instead of a ``CausalLMOutput``."""
    def forward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        # a wrapper (peft) passes labels, return_dict, ... as None: defaults, and the body takes no labels
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("labels", "logits_to_keep")}
        out = split.body(*args, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return chunked_logprobs(split, spec, hidden)

    split.model.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del split.model.forward


def split_forward(model: torch.nn.Module, split: HeadSplit, spec: ChunkSpec, inputs: Mapping[str, Any],
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model(**inputs)`` (the engine / peft wrapper / HF model the caller holds) with the chunked head:
    ``(log-probs [N], entropy [N] | None)`` at ``spec.src``."""
    with _forward_replaced(split, spec):
        tok, ent = model(**inputs)
    return tok, ent
