"""Helpers shared by the model-holding actors: device choice, model loading, padded log-probs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def set_threads(num_cpus: float) -> None:
    """Match torch's intra-op threads to the CPUs Ray reserved for this actor."""
    n = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)  # Ray sets 1 for fractional actors; the reservation decides
    torch.set_num_threads(n)


def load_causal_lm(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise FileNotFoundError(f"cannot load model from model.path={path!r}: {e}") from e


def pad(seqs: Sequence[torch.Tensor], value: float | int = 0) -> torch.Tensor:
    """Right-pad 1-D tensors to [B, max_len]."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)


def micro_batches(lengths: Sequence[int], micro_batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into micro-batches of similar length (sorted), to cut padding waste."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for s in range(0, len(order), micro_batch_size):
        yield order[s : s + micro_batch_size]


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: Sequence[torch.Tensor],
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Token log-probs of a right-padded batch.

    Returns ``(logprobs [B, L], attention_mask [B, L], entropy [B, L] | None)`` where position ``t``
    holds log p(token_t | tokens_<t) and position 0 is 0.
    """
    dev = next(model.parameters()).device
    ids = pad(input_ids, 0).to(dev)
    attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    tok_lp = torch.gather(logp_all, -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(ids.shape, dtype=tok_lp.dtype, device=dev)
    out[:, 1:] = tok_lp
    ent = None
    if with_entropy:
        ent = torch.zeros(ids.shape, dtype=tok_lp.dtype, device=dev)
        ent[:, 1:] = -(logp_all.exp() * logp_all).sum(-1)
    return out, attn, ent


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module, input_ids: Sequence[torch.Tensor], micro_batch_size: int, temperature: float = 1.0
) -> list[torch.Tensor]:
    """Per-sequence log-prob tensors (aligned with input_ids) computed in length-sorted micro-batches."""
    result: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
    for idx in micro_batches([len(x) for x in input_ids], micro_batch_size):
        lp, _, _ = forward_logprobs(model, [input_ids[i] for i in idx], temperature)
        for row, i in enumerate(idx):
            result[i] = lp[row, : len(input_ids[i])].cpu()
    return result
