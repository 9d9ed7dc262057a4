"""Data of the preference trainers (DPO family, KTO): unpaired examples, tokenized rows, the batch type that
crosses to the policy ranks, collation and the micro-batches that keep a pair together.

Pure (no Ray, no model): ``tests/test_dpo_data.py`` covers it.

A pair becomes two sequences, chosen then rejected, each ``rendered prompt + reply + end-of-turn`` with a loss
mask on the reply and the end-of-turn token (:func:`encode_reply`). A KTO example is one
sequence plus its *KL sequence*: the same prompt with another row's reply (fixed once per dataset by a seeded
derangement), whose policy / reference log-ratio estimates KTO's reference point.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from raylhf.core.batch import TrainBatch
from raylhf.data.formats import prompt_messages, with_system
from raylhf.data.loaders import load_preference_dataset, load_rows
from raylhf.data.render import end_of_turn_id, render_prompt
from raylhf.data.types import DataError, Messages, PreferenceExample

if TYPE_CHECKING:
    from raylhf.config.sections import DataConfig

__all__ = [
    "EncodedPair",
    "EncodedSeq",
    "EncodedUnpaired",
    "PreferenceBatch",
    "UnpairedExample",
    "collate_pairs",
    "collate_unpaired",
    "encode_pairs",
    "encode_reply",
    "encode_unpaired",
    "group_micro_batches",
    "kl_partners",
    "load_unpaired_dataset",
    "load_unpaired_from_config",
    "sequence_sums",
    "unpair",
]


# ------------------------------------------------------------------------------------------ examples


@dataclass
class UnpairedExample:
    """One KTO example: prompt turns, an assistant reply and whether the reply is desirable."""

    messages: Messages
    completion: str
    desirable: bool


def unpair(pairs: Sequence[PreferenceExample]) -> list[UnpairedExample]:
    """Each pair as two KTO examples: the chosen reply desirable, the rejected one undesirable."""
    out: list[UnpairedExample] = []
    for p in pairs:
        out += [UnpairedExample(p.messages, p.chosen, True), UnpairedExample(p.messages, p.rejected, False)]
    return out


def _label(value: Any, row: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise row.error(f"'label' must be true (desirable) or false (undesirable), got {value!r}")


def load_unpaired_dataset(
    files: Sequence[str] | str,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    split: str | None = None,
) -> list[UnpairedExample]:
    """KTO examples from ``prompt`` + ``completion`` + ``label`` rows (unpaired; ``label`` true / false), or from
    ``chosen`` / ``rejected`` preference rows, each pair unpaired (:func:`unpair`).

    ``format``: ``auto`` (from the columns), ``preference`` (pairs) or ``prompt`` (unpaired rows). Every
    problem is one :class:`DataError` naming the file and row.
    """

    rows = load_rows(files, format=format, columns=columns, max_samples=max_samples,
                      accepted=("preference", "prompt"), kind="KTO", split=split)
    if rows and rows[0][1] == "preference":
        return unpair(load_preference_dataset(files, format="preference", columns=columns,
                                              system_prompt=system_prompt, max_samples=max_samples, split=split))
    out: list[UnpairedExample] = []
    for row, _fmt in rows:
        for col in ("completion", "label"):
            if col not in row.data:
                raise row.error(f"missing column {col!r}: KTO rows are prompt + completion + label (true: "
                                f"desirable) or chosen + rejected pairs; columns present: {sorted(row.data)}; "
                                "map your names with data.columns, e.g. {completion: answer, label: good}")
        completion = row.data["completion"]
        if not isinstance(completion, str):
            raise row.error(f"wrong type: 'completion' must be a string, got {type(completion).__name__}")
        prompt = with_system(prompt_messages(row.data["prompt"], row), system_prompt)
        out.append(UnpairedExample(prompt, completion, _label(row.data["label"], row)))
    return out


def load_unpaired_from_config(cfg: DataConfig, split: str = "train") -> list[UnpairedExample]:
    """``data.train_files`` / ``data.eval_files`` as KTO examples (no eval files: ``[]``)."""
    files = cfg.train_files if split == "train" else cfg.eval_files
    if not files:
        if split == "eval":
            return []
        raise DataError("data.train_files is empty: give at least one JSONL/JSON/Parquet file, dataset dir or hub id")
    return load_unpaired_dataset(files, format=cfg.format, columns=cfg.columns, system_prompt=cfg.system_prompt,
                                 max_samples=cfg.max_samples, split="train" if split == "train" else "test")


# ------------------------------------------------------------------------------------------ tokenized rows


@dataclass
class EncodedSeq:
    """One tokenized sequence; ``ref_logp``: the reference's summed response log-prob once computed."""

    input_ids: list[int]
    loss_mask: list[int]
    ref_logp: float | None = None


@dataclass
class EncodedPair:
    chosen: EncodedSeq
    rejected: EncodedSeq


@dataclass
class EncodedUnpaired:
    seq: EncodedSeq
    desirable: bool
    kl: EncodedSeq  # the same prompt with another row's reply (KTO's reference point)


def encode_reply(tokenizer: Any, messages: Messages, reply: str, max_length: int) -> EncodedSeq:
    """``rendered prompt + reply + end-of-turn``, the loss mask on the reply and the end-of-turn token only (earlier
    assistant turns of the prompt are context); cut to ``max_length`` at the tail."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    prompt = render_prompt(tokenizer, messages)
    target = [*tokenizer(reply, add_special_tokens=False)["input_ids"], end_of_turn_id(tokenizer)]
    return EncodedSeq((prompt + target)[:max_length], ([0] * len(prompt) + [1] * len(target))[:max_length])


def encode_pairs(tokenizer: Any, pairs: Sequence[PreferenceExample], max_length: int
                 ) -> tuple[list[EncodedPair], int]:
    """Tokenize pairs; returns (rows, dropped): a pair whose prompt leaves no reply token of either side within
    ``max_length`` is dropped (longer replies are cut at the tail, as in SFT)."""
    out: list[EncodedPair] = []
    for p in pairs:
        c = encode_reply(tokenizer, p.messages, p.chosen, max_length)
        r = encode_reply(tokenizer, p.messages, p.rejected, max_length)
        if sum(c.loss_mask) and sum(r.loss_mask):
            out.append(EncodedPair(c, r))
    return out, len(pairs) - len(out)


def kl_partners(n: int, seed: int) -> list[int]:
    """A seeded derangement of ``range(n)``: row ``i`` borrows the reply of row ``partners[i] != i`` (``n >= 2``)."""
    if n < 2:
        raise ValueError(f"KTO needs at least 2 examples to pair prompts with other replies, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for k, i in enumerate(order):
        partners[i] = order[(k + 1) % n]
    return partners


def encode_unpaired(tokenizer: Any, examples: Sequence[UnpairedExample], max_length: int, seed: int
                    ) -> tuple[list[EncodedUnpaired], int]:
    """Tokenize KTO examples with their KL sequences (:func:`kl_partners`); returns (rows, dropped) as
    :func:`encode_pairs` does."""
    keep: list[tuple[UnpairedExample, EncodedSeq]] = []
    for ex in examples:
        seq = encode_reply(tokenizer, ex.messages, ex.completion, max_length)
        if sum(seq.loss_mask):
            keep.append((ex, seq))
    partners = kl_partners(len(keep), seed) if len(keep) >= 2 else [0] * len(keep)
    out = [EncodedUnpaired(seq, ex.desirable,
                           encode_reply(tokenizer, ex.messages, keep[partners[i]][0].completion, max_length))
           for i, (ex, seq) in enumerate(keep)]
    out = [row for row in out if sum(row.kl.loss_mask)]
    return out, len(examples) - len(out)


# ------------------------------------------------------------------------------------------ the batch


@dataclass
class PreferenceBatch(TrainBatch):
    """A TrainBatch whose sequences form groups: a pair (chosen, rejected; adjacent) or one KTO example.

    Per-sequence lists (indexed by ``select`` / ``shard`` like the TrainBatch fields): ``group_ids``,
    ``chosen`` (the chosen / desirable side), ``ref_logps`` (summed reference response log-probs; None for
    reference-free losses) and, for KTO on the driver only, the KL sequences. ``kl_ref_point`` is KTO's
    reference point of the whole step (one number, copied to every shard).
    """

    group_ids: list[int] = field(default_factory=list)
    chosen: list[bool] = field(default_factory=list)
    ref_logps: list[float] | None = None
    kl_input_ids: list[torch.Tensor] | None = None
    kl_loss_mask: list[torch.Tensor] | None = None
    kl_ref_logps: list[float] | None = None
    kl_ref_point: float | None = None

    def select(self, idx: Sequence[int]) -> PreferenceBatch:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = [v[i] for i in idx] if isinstance(v, list) else v
        return type(self)(**kw)

    def shard(self, rank: int, world: int) -> PreferenceBatch:
        """Contiguous shards (a rank's groups are whole: pairs are adjacent and split only between pairs)."""
        n = len(self)
        if n % world:
            raise ValueError(f"batch of {n} sequences does not split evenly over {world} ranks")
        lo, hi = rank * n // world, (rank + 1) * n // world
        for cut in (lo, hi):
            if 0 < cut < n and self.group_ids[cut - 1] == self.group_ids[cut]:
                raise ValueError(f"a chosen/rejected pair would be split over ranks ({len(set(self.group_ids))} "
                                 f"pairs, {world} ranks): the pairs per step must be divisible by policy.num_workers")
        return self.select(list(range(lo, hi)))

    def num_groups(self) -> int:
        """Pairs (DPO family) or examples (KTO): the normalizer of the step's loss."""
        return len(set(self.group_ids))

    def chosen_tokens(self) -> int:
        """Trained tokens of the chosen replies (the normalizer of the NLL term)."""
        return int(sum(float(m.sum()) for m, c in zip(self.loss_mask, self.chosen, strict=True) if c))


def _t(seq: EncodedSeq) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(seq.input_ids, dtype=torch.long), torch.tensor(seq.loss_mask, dtype=torch.float32)


def _refs(seqs: Sequence[EncodedSeq]) -> list[float] | None:
    refs = [s.ref_logp for s in seqs]
    if all(r is None for r in refs):
        return None
    if any(r is None for r in refs):
        raise ValueError("some rows carry reference log-probs and some do not")
    return [float(r) for r in refs]  # type: ignore[arg-type]


def collate_pairs(rows: Sequence[EncodedPair]) -> PreferenceBatch:
    """Pairs as sequences ``[c0, r0, c1, r1, ...]``; ``group_ids`` ``[0, 0, 1, 1, ...]``."""
    seqs = [s for p in rows for s in (p.chosen, p.rejected)]
    ids, masks = zip(*(_t(s) for s in seqs), strict=True) if seqs else ((), ())
    return PreferenceBatch(input_ids=list(ids), loss_mask=list(masks),
                           group_ids=[i for i in range(len(rows)) for _ in range(2)],
                           chosen=[True, False] * len(rows), ref_logps=_refs(seqs))


def collate_unpaired(rows: Sequence[EncodedUnpaired]) -> PreferenceBatch:
    """KTO examples, one group each, with their KL sequences (used on the driver, dropped before training)."""
    ids, masks = zip(*(_t(r.seq) for r in rows), strict=True) if rows else ((), ())
    kl_ids, kl_masks = zip(*(_t(r.kl) for r in rows), strict=True) if rows else ((), ())
    return PreferenceBatch(input_ids=list(ids), loss_mask=list(masks), group_ids=list(range(len(rows))),
                           chosen=[r.desirable for r in rows], ref_logps=_refs([r.seq for r in rows]),
                           kl_input_ids=list(kl_ids), kl_loss_mask=list(kl_masks),
                           kl_ref_logps=_refs([r.kl for r in rows]))


# ------------------------------------------------------------------------------------------ helpers


def group_micro_batches(group_ids: Sequence[int], lengths: Sequence[int], micro_batch_size: int,
                        max_tokens: int | None = None, packed: bool = False) -> list[list[int]]:
    """Index lists of one optimizer step's micro-batches: whole groups (a pair stays together), groups sorted by
    their longest sequence (less padding), each micro-batch at most ``micro_batch_size`` sequences, or with
    ``max_tokens`` (``policy.max_tokens_per_micro_batch``) at most that many tokens: the sum of the lengths when
    ``packed``, the padded size ``count x longest`` when not. A group over the limit is a micro-batch of its own."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    order = sorted(groups.values(), key=lambda idx: (max(lengths[i] for i in idx), idx[0]))

    def fits(idx: list[int]) -> bool:
        if max_tokens is None:
            return len(idx) <= micro_batch_size
        sizes = [lengths[i] for i in idx]
        return (sum(sizes) if packed else len(sizes) * max(sizes)) <= max_tokens

    out: list[list[int]] = []
    for idx in order:
        if out and fits(out[-1] + idx):
            out[-1].extend(idx)
        else:
            out.append(list(idx))
    return out


def sequence_sums(logprobs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> list[float]:
    """Per-sequence summed log-probs over the loss mask (the response), from per-token log-probs."""
    return [float((lp.float() * m.float()).sum()) for lp, m in zip(logprobs, masks, strict=True)]


def model_fingerprint(path: str) -> list[tuple[str, int, int]]:
    """(file, size, mtime_ns) of a model directory's files: part of the reference-cache key."""
    if not os.path.isdir(path):
        return [(path, 0, 0)]
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in os.scandir(path) if f.is_file())
