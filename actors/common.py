"""Helpers shared by the model-holding actors: device choice, model loading, micro-batches, per-token log-probs
(right-padded per sequence; packed rows inside when asked, see ``actors.packing``)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from actors.packing import (
    PackedRows,
    additive_mask,
    block_causal_mask,
    budget_micro_batches,
    cu_seq_lens,
    pack_ids,
    plan_rows,
    position_ids,
    prediction_index,
    sequence_ids,
    unpacked_rows,
)


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def init_distributed(on_gpu: bool) -> None:
    """DeepSpeed's process group: NCCL on GPUs, gloo on the CPU.

    On the CPU, DeepSpeed's ``TorchBackend`` JIT-compiles a shared-memory all-reduce op with g++ when it starts
    (``deepspeed.comm.torch.build_shm_op``). Only its inference all-reduce uses that op; training never calls
    it. The build takes ~35 s of both cores on a fresh virtualenv (first run, every CI machine), fails where
    there is no compiler, and makes concurrently starting ranks wait on its file lock. So the CPU path skips
    it and gloo does every collective."""
    import deepspeed

    if not on_gpu:  # by module name: the attribute deepspeed.comm.torch is torch itself (a star import)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)


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


def micro_batches(lengths: Sequence[int], micro_batch_size: int, max_tokens: int | None = None,
                  packing: bool = False) -> Iterator[list[int]]:
    """Indices grouped into the micro-batches of one pass.

    ``max_tokens=None``: ``micro_batch_size`` sequences of similar length (sorted), to cut padding waste.
    Else a token budget (``actors.packing.budget_micro_batches``): at most ``max_tokens`` real tokens per
    micro-batch when ``packing``, at most ``max_tokens`` padded tokens (count x longest) when not; a sequence
    longer than the budget is a micro-batch of its own.
    """
    if max_tokens is not None:
        yield from budget_micro_batches(lengths, max_tokens, packing)
        return
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for s in range(0, len(order), micro_batch_size):
        yield order[s : s + micro_batch_size]


PACKING_DEFAULT = True  # policy.packing's default (raylhf.config.sections.PolicyConfig), docs/performance.md


def packing_options(cfg: Mapping[str, Any]) -> tuple[bool, int | None]:
    """``(packing, max_tokens_per_micro_batch)`` from a worker's config dict (``PolicyConfig`` fields)."""
    max_tokens = cfg.get("max_tokens_per_micro_batch")
    return bool(cfg.get("packing", PACKING_DEFAULT)), None if max_tokens is None else int(max_tokens)


FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
MASK_IMPLEMENTATIONS = ("sdpa", "eager")


def attn_implementation(model: torch.nn.Module) -> str:
    """The HF attention implementation of ``model`` (a DeepSpeed engine or DDP wrapper is unwrapped)."""
    inner = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    config = getattr(inner, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def is_flash(impl: str) -> bool:
    """The flash-attention implementations that take one packed row as a varlen batch (``cu_seq_lens``)."""
    return impl in FLASH_IMPLEMENTATIONS


def _packed_forward(model: torch.nn.Module, input_ids: Sequence[torch.Tensor], row_capacity: int | None,
                    ) -> tuple[torch.Tensor, PackedRows]:
    """Logits ``[R, T, V]`` of the micro-batch packed in rows, with the plan that says where each sequence sits.

    flash-attention (GPU): one row, the sequence boundaries passed as ``cu_seq_lens_q/k`` (varlen kernel, no
    mask, attention cost per sequence). sdpa / eager (CPU and GPU): rows of at most ``row_capacity`` tokens
    (default: the longest sequence) with a block-diagonal causal ``[R, 1, T, T]`` mask, boolean for sdpa,
    additive in the model's dtype for eager. Positions restart at 0 for every sequence in both.
    """
    impl = attn_implementation(model)
    dev = next(model.parameters()).device
    if is_flash(impl):
        plan = plan_rows([len(x) for x in input_ids], row_capacity=sum(len(x) for x in input_ids))
        cu = cu_seq_lens(plan).to(dev)
        longest = plan.max_len
        logits = model(input_ids=pack_ids(input_ids, plan).to(dev), position_ids=position_ids(plan).to(dev),
                       cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
                       use_cache=False).logits
        return logits, plan
    if impl not in MASK_IMPLEMENTATIONS:
        known = ", ".join(MASK_IMPLEMENTATIONS + FLASH_IMPLEMENTATIONS)
        raise ValueError(f"sequence packing supports the attention implementations {known}; the model uses "
                         f"{impl!r}: set policy.packing=false")
    plan = plan_rows([len(x) for x in input_ids], row_capacity)
    mask = block_causal_mask(sequence_ids(plan)).to(dev)
    if impl == "eager":
        mask = additive_mask(mask, next(model.parameters()).dtype)
    logits = model(input_ids=pack_ids(input_ids, plan).to(dev), position_ids=position_ids(plan).to(dev),
                   attention_mask=mask, use_cache=False).logits
    return logits, plan


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: Sequence[torch.Tensor],
    temperature: float = 1.0,
    with_entropy: bool = False,
    packing: bool = False,
    row_capacity: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Token log-probs of a micro-batch, right-padded per sequence whatever the layout inside.

    Returns ``(logprobs [B, L], attention_mask [B, L], entropy [B, L] | None)`` where position ``t``
    holds log p(token_t | tokens_<t) and position 0 (and the padding) is 0.

    ``packing``: the sequences share rows (``_packed_forward``; ``row_capacity`` caps a row's tokens for the
    masked implementations); else one right-padded row per sequence with a 2-D padding mask. Either way the
    log-softmax runs only at the positions that predict a real token, so the result (and its gradient) is
    the same up to float rounding.
    """
    dev = next(model.parameters()).device
    attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
    if packing:
        logits, plan = _packed_forward(model, input_ids, row_capacity)
    else:
        plan = unpacked_rows([len(x) for x in input_ids])
        logits = model(input_ids=pad(input_ids, 0).to(dev), attention_mask=attn, use_cache=False).logits
    src, dst = prediction_index(plan)
    targets = torch.cat([x[1:] for x in input_ids]).to(dev)
    sel = logits.reshape(-1, logits.shape[-1]).index_select(0, src.to(dev)).float()
    if temperature != 1.0:
        sel = sel / temperature
    logp_all = F.log_softmax(sel, dim=-1)
    tok_lp = torch.gather(logp_all, -1, targets.unsqueeze(-1)).squeeze(-1)
    dst = dst.to(dev)
    out = tok_lp.new_zeros(dst.shape).masked_scatter(dst, tok_lp)
    ent = None
    if with_entropy:
        ent = tok_lp.new_zeros(dst.shape).masked_scatter(dst, -(logp_all.exp() * logp_all).sum(-1))
    return out, attn, ent


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module, input_ids: Sequence[torch.Tensor], micro_batch_size: int, temperature: float = 1.0,
    packing: bool = False, max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Per-sequence log-prob tensors (aligned with input_ids) computed micro-batch by micro-batch
    (``micro_batches``: length-sorted groups of ``micro_batch_size``, or a token budget), packed or not."""
    result: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
    for idx in micro_batches([len(x) for x in input_ids], micro_batch_size, max_tokens, packing):
        lp, _, _ = forward_logprobs(model, [input_ids[i] for i in idx], temperature, packing=packing)
        for row, i in enumerate(idx):
            result[i] = lp[row, : len(input_ids[i])].cpu()
    return result
