"""Helpers shared by the model-holding actors: device choice, model loading, micro-batches, per-token log-probs
(right-padded per sequence; packed rows inside when asked, see ``actors.packing``)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from actors.lockstep import filler, lockstep_count
from actors.logprob_head import LOGPROB_CHUNK_DEFAULT, ChunkSpec, head_split, split_forward
from actors.moe_router import RouterRecorder
from actors.netif import configure_socket_ifname
from actors.packing import (
    PackedRows,
    additive_mask,
    budget_micro_batches,
    cu_seq_lens,
    layer_masks,
    pack_ids,
    plan_rows,
    position_ids,
    prediction_index,
    sequence_ids,
    unpack_index,
    unpacked_rows,
)

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
MASK_IMPLEMENTATIONS = ("sdpa", "eager")


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
    it and gloo does every collective. Between nodes the sockets use the interface of the node's Ray address
    (``actors/netif.py``) unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME are set."""
    import deepspeed

    configure_socket_ifname("DeepSpeed process group")
    if not on_gpu:  # by module name: the attribute deepspeed.comm.torch is torch itself (a star import)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)


def set_threads(num_cpus: float) -> None:
    """Match torch's intra-op threads to the CPUs Ray reserved for this actor."""
    n = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)  # Ray sets 1 for fractional actors; the reservation decides
    torch.set_num_threads(n)


def check_attn_implementation(impl: str | None, field: str = "policy.attn_implementation") -> None:
    """A flash-attention implementation needs its package (and CUDA) in this worker's process: else a
    ValueError naming ``field`` (checked here, not in the config: the config is built on the driver, which may
    have no GPU)."""
    if impl not in FLASH_IMPLEMENTATIONS:
        return
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    available = is_flash_attn_2_available() if impl == "flash_attention_2" else is_flash_attn_3_available()
    if not available:
        package = "flash-attn" if impl == "flash_attention_2" else "flash-attn-3 (flash_attn_interface)"
        raise ValueError(f"{field}={impl!r} needs CUDA and the {package} package in the worker's environment "
                         f"(CUDA here: {torch.cuda.is_available()}); install it, or set {field} to sdpa or null")


def load_causal_lm(path: str, dtype: torch.dtype, trust_remote_code: bool = False,
                   attn_implementation: str | None = None) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype``; ``attn_implementation`` (``policy.attn_implementation``:
    sdpa, eager, flash_attention_2/3; None: transformers' default). Under a live ``HfDeepSpeedConfig`` with ZeRO-3
    (``actors.policy``) transformers builds it inside ``deepspeed.zero.Init``: each rank keeps its partition."""
    from transformers import AutoModelForCausalLM

    check_attn_implementation(attn_implementation)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
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


def logprob_chunk_size(cfg: Mapping[str, Any]) -> int:
    """``policy.logprob_chunk_size`` from a worker's config dict: predicting positions per head chunk, 0 for the
    unchunked path (``forward_logprobs``)."""
    return int(cfg.get("logprob_chunk_size", LOGPROB_CHUNK_DEFAULT) or 0)


def _config(model: torch.nn.Module) -> Any:
    """The HF config of ``model`` (a DeepSpeed engine or DDP wrapper is unwrapped)."""
    inner = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    return getattr(inner, "config", None)


def attn_implementation(model: torch.nn.Module) -> str:
    """The HF attention implementation of ``model`` (a DeepSpeed engine or DDP wrapper is unwrapped)."""
    return str(getattr(_config(model), "_attn_implementation", None) or "eager")


def is_flash(impl: str) -> bool:
    """The flash-attention implementations that take one packed row as a varlen batch (``cu_seq_lens``)."""
    return impl in FLASH_IMPLEMENTATIONS


def _packed_inputs(model: torch.nn.Module, input_ids: Sequence[torch.Tensor], row_capacity: int | None,
                   ) -> tuple[dict[str, Any], PackedRows]:
    """The forward's keyword arguments for the micro-batch packed in rows, with the plan that says where each
    sequence sits.

    flash-attention (GPU): one row, the sequence boundaries passed as ``cu_seq_lens_q/k`` (varlen kernel, no
    mask, attention cost per sequence). sdpa / eager (CPU and GPU): rows of at most ``row_capacity`` tokens
    (default: the longest sequence) with a block-diagonal causal ``[R, 1, T, T]`` mask, boolean for sdpa,
    additive in the model's dtype for eager; a sliding-window model gets it windowed for its sliding layers (a dict
    by layer type where full and sliding layers mix: ``actors.packing.layer_masks``). Positions restart at 0 for
    every sequence in both.
    """
    impl = attn_implementation(model)
    dev = next(model.parameters()).device
    if is_flash(impl):
        plan = plan_rows([len(x) for x in input_ids], row_capacity=sum(len(x) for x in input_ids))
        cu = cu_seq_lens(plan).to(dev)
        longest = plan.max_len
        return dict(input_ids=pack_ids(input_ids, plan).to(dev), position_ids=position_ids(plan).to(dev),
                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
                    use_cache=False), plan
    if impl not in MASK_IMPLEMENTATIONS:
        known = ", ".join(MASK_IMPLEMENTATIONS + FLASH_IMPLEMENTATIONS)
        raise ValueError(f"sequence packing supports the attention implementations {known}; the model uses "
                         f"{impl!r}: set policy.packing=false")
    plan = plan_rows([len(x) for x in input_ids], row_capacity)
    config = _config(model)
    window = getattr(config, "sliding_window", None)
    masks = layer_masks(sequence_ids(plan).to(dev), getattr(config, "layer_types", None),
                        window if isinstance(window, int) and window > 0 else None)
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        masks = ({k: additive_mask(m, dtype) for k, m in masks.items()} if isinstance(masks, dict)
                 else additive_mask(masks, dtype))
    return dict(input_ids=pack_ids(input_ids, plan).to(dev), position_ids=position_ids(plan).to(dev),
                attention_mask=masks, use_cache=False), plan


def _model_inputs(model: torch.nn.Module, input_ids: Sequence[torch.Tensor], packing: bool,
                  row_capacity: int | None) -> tuple[dict[str, Any], PackedRows]:
    """The forward's keyword arguments and the row plan: packed (``_packed_inputs``), or one right-padded row
    per sequence with a 2-D padding mask."""
    if packing:
        return _packed_inputs(model, input_ids, row_capacity)
    dev = next(model.parameters()).device
    attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
    return dict(input_ids=pad(input_ids, 0).to(dev), attention_mask=attn, use_cache=False), unpacked_rows(
        [len(x) for x in input_ids])


def _full_logits_logprobs(model: torch.nn.Module, inputs: Mapping[str, Any], spec: ChunkSpec,
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unchunked path: the model's own logits ``[R, T, V]``, the predicting rows upcast to fp32 at once."""
    logits = model(**inputs).logits
    sel = logits.reshape(-1, logits.shape[-1]).index_select(0, spec.src.to(logits.device)).float()
    if spec.temperature != 1.0:
        sel = sel / spec.temperature
    logp_all = F.log_softmax(sel, dim=-1)
    tok_lp = torch.gather(logp_all, -1, spec.targets.to(logits.device).unsqueeze(-1)).squeeze(-1)
    if not spec.with_entropy:
        return tok_lp, None
    with torch.set_grad_enabled(torch.is_grad_enabled() and spec.entropy_grad):
        return tok_lp, -(logp_all.exp() * logp_all).sum(-1)


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: Sequence[torch.Tensor],
    temperature: float = 1.0,
    with_entropy: bool = False,
    packing: bool = False,
    row_capacity: int | None = None,
    chunk_size: int | None = None,
    entropy_grad: bool = True,
    router: RouterRecorder | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Token log-probs of a micro-batch, right-padded per sequence whatever the layout inside.

    Returns ``(logprobs [B, L], attention_mask [B, L], entropy [B, L] | None)`` where position ``t``
    holds log p(token_t | tokens_<t) and position 0 (and the padding) is 0.

    ``packing``: the sequences share rows (``_packed_inputs``; ``row_capacity`` caps a row's tokens for the
    masked implementations); else one right-padded row per sequence with a 2-D padding mask. Either way the
    log-softmax runs only at the positions that predict a real token, so the result (and its gradient) is
    the same up to float rounding.

    ``chunk_size`` (``policy.logprob_chunk_size``): when the micro-batch has more positions than that, the head and
    the fp32 log-softmax run on that many predicting positions at a time, checkpointed (``actors.logprob_head``),
    for the model types that allow it; None or 0: the model's full logits at once. ``entropy_grad=False``: the
    entropy is computed without a graph (a metric). ``router`` (a MoE policy, ``actors/moe_router.py``): records
    the routers of this forward at the micro-batch's real tokens.
    """
    dev = next(model.parameters()).device
    attn = pad([torch.ones_like(x) for x in input_ids], 0).to(dev)
    inputs, plan = _model_inputs(model, input_ids, packing, row_capacity)
    src, dst = prediction_index(plan)
    spec = ChunkSpec(src=src, targets=torch.cat([x[1:] for x in input_ids]), temperature=temperature,
                     chunk_size=int(chunk_size or 0), with_entropy=with_entropy, entropy_grad=entropy_grad)
    # a micro-batch within one chunk takes the model's own logits: chunking would save nothing and cost the
    # recomputation (and the old path gives the old numbers, bit for bit)
    positions = int(inputs["input_ids"].numel())
    split = head_split(model) if 0 < spec.chunk_size < positions else None
    with router.recording(unpack_index(plan)[0]) if router is not None else nullcontext():
        if split is None:
            tok_lp, ent_flat = _full_logits_logprobs(model, inputs, spec)
        else:
            tok_lp, ent_flat = split_forward(model, split, spec, inputs)
    dst = dst.to(dev)
    out = tok_lp.new_zeros(dst.shape).masked_scatter(dst, tok_lp)
    ent = None if ent_flat is None else tok_lp.new_zeros(dst.shape).masked_scatter(dst, ent_flat)
    return out, attn, ent


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module, input_ids: Sequence[torch.Tensor], micro_batch_size: int, temperature: float = 1.0,
    packing: bool = False, max_tokens: int | None = None, chunk_size: int | None = None, lockstep: bool = False,
) -> list[torch.Tensor]:
    """Per-sequence log-prob tensors (aligned with input_ids) computed micro-batch by micro-batch
    (``micro_batches``: length-sorted groups of ``micro_batch_size``, or a token budget), packed or not, the
    head chunked by ``chunk_size`` (``forward_logprobs``). ``lockstep`` (ZeRO-3 ranks): every rank runs as many
    forwards as the rank with the most micro-batches (``actors/lockstep.py``)."""
    result: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
    groups = list(micro_batches([len(x) for x in input_ids], micro_batch_size, max_tokens, packing))
    fillers = lockstep_count(len(groups)) - len(groups) if lockstep else 0  # agreed before any forward's gathers
    for idx in groups:
        lp, _, _ = forward_logprobs(model, [input_ids[i] for i in idx], temperature, packing=packing,
                                    chunk_size=chunk_size)
        for row, i in enumerate(idx):
            result[i] = lp[row, : len(input_ids[i])].cpu()
    for _ in range(fillers):
        forward_logprobs(model, [filler()], temperature, packing=packing, chunk_size=chunk_size)
    return result
