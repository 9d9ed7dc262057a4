"""Sequence packing: pure helpers (no model, no distributed calls).

Several short sequences share one row of a forward pass. Each keeps its own position ids (0, 1, ... from
its first token) and attends only to its own earlier tokens: a block-diagonal causal mask (sdpa / eager
attention) or flash-attention's varlen kernel fed with the sequence boundaries (``cu_seq_lens``). The
per-token outputs of the packed rows are then scattered back to right-padded per-sequence ``[B, L]``
tensors, so the losses never see the packed layout.

Two decisions live here:

* which sequences form one micro-batch under a token budget (:func:`budget_micro_batches`): first-fit
  decreasing bins of at most ``max_tokens`` real tokens when packing, length-sorted groups of at most
  ``max_tokens`` padded tokens (``count * longest``) when not;
* how the sequences of one micro-batch are laid out in rows (:func:`plan_rows`): bins whose capacity is
  the micro-batch's longest sequence, so no row is longer than the unpacked padded batch would be (the
  masked attention costs ``row_len**2`` per row), or one row holding everything (varlen attention, whose
  cost does not depend on the row length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into bins whose lengths sum to at most ``capacity``.

    A sequence longer than ``capacity`` gets a bin of its own (it is never split). Deterministic: ties in
    length keep the input order; each bin lists its indices longest first.
    """
    if capacity <= 0:
        raise ValueError(f"bin capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(max(0, capacity - n))
    return bins


def budget_micro_batches(lengths: Sequence[int], max_tokens: int, packed: bool) -> list[list[int]]:
    """Micro-batches (index lists) that each cost at most ``max_tokens`` tokens in the forward pass.

    ``packed``: the cost is the sum of the lengths (first-fit decreasing bins). Not packed: the cost is the
    padded size ``count * longest``, and the groups are runs of the length-sorted order (similar lengths
    together, least padding). Either way a sequence longer than the budget is a micro-batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError(f"policy.max_tokens_per_micro_batch must be positive, got {max_tokens}")
    if packed:
        return pack_bins(lengths, max_tokens)
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_tokens:  # sorted: lengths[i] is the longest
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass(frozen=True)
class PackedRows:
    """Where every sequence of a micro-batch sits in the packed ``[R, T]`` layout.

    ``rows[r]`` lists the sequence indices of row ``r`` in order; ``row_of[b]`` / ``start_of[b]`` give the
    row and the first column of sequence ``b``; ``lengths[b]`` its length; ``row_len`` is ``T``.
    """

    rows: list[list[int]]
    lengths: list[int]
    row_of: list[int]
    start_of: list[int]
    row_len: int

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)


def plan_rows(lengths: Sequence[int], row_capacity: int | None = None) -> PackedRows:
    """Lay the sequences out in rows of at most ``row_capacity`` tokens (first-fit decreasing).

    ``row_capacity=None``: the longest length, i.e. no row is longer than the unpacked padded batch.
    Rows are right-padded to the longest row.
    """
    lengths = [int(n) for n in lengths]
    if not lengths:
        return PackedRows([], [], [], [], 0)
    if min(lengths) <= 0:
        raise ValueError("a micro-batch holds an empty sequence (0 tokens)")
    cap = max(lengths) if row_capacity is None else max(int(row_capacity), max(lengths))
    rows = pack_bins(lengths, cap)
    row_of, start_of = [0] * len(lengths), [0] * len(lengths)
    width = 0
    for r, row in enumerate(rows):
        col = 0
        for b in row:
            row_of[b], start_of[b] = r, col
            col += lengths[b]
        width = max(width, col)
    return PackedRows(rows, lengths, row_of, start_of, width)


def unpacked_rows(lengths: Sequence[int]) -> PackedRows:
    """The plain layout as a plan: one right-padded row per sequence."""
    lengths = [int(n) for n in lengths]
    if lengths and min(lengths) <= 0:
        raise ValueError("a micro-batch holds an empty sequence (0 tokens)")
    n = len(lengths)
    return PackedRows([[b] for b in range(n)], lengths, list(range(n)), [0] * n, max(lengths, default=0))


def pack_ids(input_ids: Sequence[torch.Tensor], plan: PackedRows, pad_id: int = 0) -> torch.Tensor:
    """The ``[R, T]`` token ids of ``plan`` (each row right-padded with ``pad_id``)."""
    out = torch.full((plan.num_rows, plan.row_len), pad_id, dtype=torch.long)
    for b, x in enumerate(input_ids):
        s = plan.start_of[b]
        out[plan.row_of[b], s : s + plan.lengths[b]] = x
    return out


def sequence_ids(plan: PackedRows) -> torch.Tensor:
    """``[R, T]`` block labels: the sequence index ``b`` at its tokens, ``-1 - r`` at row ``r``'s padding
    tail (the padding is a block of its own, so no real token attends to it and no mask row is empty)."""
    out = torch.empty((plan.num_rows, plan.row_len), dtype=torch.long)
    for r in range(plan.num_rows):
        out[r] = -1 - r
    for b, n in enumerate(plan.lengths):
        s = plan.start_of[b]
        out[plan.row_of[b], s : s + n] = b
    return out


def position_ids(plan: PackedRows) -> torch.Tensor:
    """``[R, T]`` positions restarting at 0 at every sequence (and at the padding tail of each row), so a
    packed sequence gets the same rotary / learned positions as it would alone."""
    out = torch.empty((plan.num_rows, plan.row_len), dtype=torch.long)
    for r, row in enumerate(plan.rows):
        col = 0
        for b in row:
            out[r, col : col + plan.lengths[b]] = torch.arange(plan.lengths[b])
            col += plan.lengths[b]
        out[r, col:] = torch.arange(plan.row_len - col)
    return out


def block_causal_mask(seq_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """``[R, 1, T, T]`` boolean mask, True where query ``q`` may attend key ``k``: same block and ``k <= q``;
    with ``window`` (a sliding-window layer) also ``k > q - window``, as transformers' ``sliding_window_overlay``."""
    t = seq_ids.shape[-1]
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()
    if window is not None:
        causal = causal & ~torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril(-int(window))
    return (same & causal).unsqueeze(1)


def layer_masks(seq_ids: torch.Tensor, layer_types: Sequence[str] | None, window: int | None,
                ) -> torch.Tensor | dict[str, torch.Tensor]:
    """The packed rows' mask(s) for a model's layers. A model whose ``layer_types`` mix full and sliding-window
    attention (Gemma 2/3, gpt-oss, Qwen2/3 with sliding layers) takes a dict by layer type, which transformers
    uses as given; one that has no ``layer_types`` but a ``sliding_window`` (Mistral, Mixtral, Phi-3) windows
    every layer; anything else gets the plain block-causal mask. Without this, the block-causal mask given in
    place of transformers' own would drop the window (a 4-D mask is used as it is)."""
    full = block_causal_mask(seq_ids)
    if window is None:
        return full
    if layer_types is None:
        return block_causal_mask(seq_ids, window)
    kinds = set(layer_types)
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"sequence packing builds masks for full and sliding-window attention layers; this model "
                         f"also has {sorted(unknown)}: set policy.packing=false")
    if "sliding_attention" not in kinds:
        return full
    return {"full_attention": full, "sliding_attention": block_causal_mask(seq_ids, window)}


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive float mask eager attention expects: 0 where allowed, the dtype's
    minimum where not."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def cu_seq_lens(plan: PackedRows) -> torch.Tensor:
    """int32 cumulative sequence boundaries of a one-row plan in row order (flash-attention varlen)."""
    if plan.num_rows != 1:
        raise ValueError(f"varlen boundaries need a single packed row, got {plan.num_rows}")
    lens = [plan.lengths[b] for b in plan.rows[0]]
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def unpack_index(plan: PackedRows) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat, valid)``: ``flat[j]`` is the index into a flattened ``[R * T]`` packed tensor of the ``j``-th
    real token in ``[B, L]`` row-major order, ``valid`` the ``[B, L]`` boolean mask of real tokens."""
    b_count, l_max = len(plan.lengths), plan.max_len
    valid = torch.zeros((b_count, l_max), dtype=torch.bool)
    parts = []
    for b, n in enumerate(plan.lengths):
        valid[b, :n] = True
        parts.append(plan.row_of[b] * plan.row_len + plan.start_of[b] + torch.arange(n))
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return flat, valid


def prediction_index(plan: PackedRows) -> tuple[torch.Tensor, torch.Tensor]:
    """``(src, dst)`` for next-token outputs: ``src[j]`` is the flat ``[R * T]`` position whose logits predict
    the ``j``-th token with ``t >= 1`` (its own sequence's previous token, never a neighbour's), ``dst`` the
    ``[B, L]`` boolean mask of those tokens (``t >= 1``), in the same row-major order."""
    flat, valid = unpack_index(plan)
    dst = valid.clone()
    if dst.shape[1]:
        dst[:, 0] = False
    first = torch.zeros(len(flat), dtype=torch.bool)
    starts = torch.tensor([0, *plan.lengths], dtype=torch.long).cumsum(0)[:-1]
    first[starts] = True  # every length is >= 1 (plan_rows checks), so these are the first tokens
    return flat[~first] - 1, dst


def unpack(packed: torch.Tensor, flat: torch.Tensor, valid: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Per-token values of the packed ``[R, T]`` layout as right-padded ``[B, L]`` (padding = ``fill``);
    differentiable (gather + masked scatter)."""
    out = packed.new_full(valid.shape, fill)
    return out.masked_scatter(valid.to(packed.device), packed.reshape(-1)[flat.to(packed.device)])
