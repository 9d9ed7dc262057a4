"""What the encoder-style trainers (seq_cls, embedding, reranker, generative_reranker) share on the offline loop:
their rows as fixed-size groups of token ids, the held-out split, the :class:`OfflineSpec` on ``EncoderWorker``,
and the held-out forward (every rank an equal share). The trainers (raylhf/trainers/) say what a group is, which
loss and head, and which metrics; docs/encoders.md."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from actors.encoder import EncoderWorker, group_batch
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data import DataError
from raylhf.driver.offline import OfflineSpec, RowBatches

T = TypeVar("T")


@dataclass
class Group:
    """One training row as the worker sees it: ``seqs`` (token ids; a query with its documents, a pair, one
    text) and their per-sequence labels."""

    seqs: list[list[int]]
    labels: list[Any] | None = None


def split_heldout(rows: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held out): a seeded draw of ``fraction`` of the rows (none when 0 or fewer than 2 rows)."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:max(1, round(len(rows) * fraction))])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def encode_outputs(policy: Any, seqs: Sequence[list[int]], world: int) -> torch.Tensor:
    """The workers' ``outputs`` ``[N, D]`` for whole sequences (no gradient): every rank an equal share (ZeRO-3
    ranks gather weights in lockstep), padded with copies of the last one."""
    tensors = [torch.tensor(s, dtype=torch.long) for s in seqs]
    n = len(tensors)
    tensors += [tensors[-1]] * (-n % world)
    rows = [r for part in policy.call_split("encode", tensors) for r in part][:n]
    return torch.tensor(rows, dtype=torch.float32)


def check_rows(name: str, train: Sequence[Any], batch_size: int) -> None:
    if len(train) < batch_size:
        raise DataError(f"{len(train)} training rows < {name}.batch_size={batch_size}: give more rows or lower "
                        f"{name}.batch_size")


def encoder_spec(cfg: Any, name: str, algo: Any, train: list[Group], worker: dict[str, Any],
                 evaluate: Callable[[Any, int], dict[str, float]] | None, curves: list[str], summary: str
                 ) -> OfflineSpec:
    """The offline run of an encoder trainer: ``algo`` is its section (num_steps, epochs, batch_size,
    eval_every), ``worker`` the EncoderWorker's keyword arguments (head, loss, card, ...)."""
    check_rows(name, train, algo.batch_size)
    num_steps = algo.num_steps or max(1, len(train) // algo.batch_size * algo.epochs)

    def collate(rows: list[Group]) -> TrainBatch:
        labels = None if rows[0].labels is None else [g.labels or [] for g in rows]
        return group_batch([g.seqs for g in rows], labels)

    def objective_for(obj: Objective, batch: TrainBatch) -> Objective:
        return replace(obj, global_seqs=float(len(batch) // int(getattr(batch, "group_size", 1))),
                       global_tokens=None)  # the step's group count

    return OfflineSpec(
        name=name, num_steps=num_steps, objective=Objective(pg_coef=0.0),
        batches=RowBatches(train, algo.batch_size, cfg.data.shuffle, cfg.data.seed, collate),
        worker_cls=EncoderWorker, worker_extra={"tokenizer_path": cfg.model.tokenizer, **worker},
        objective_for=objective_for, evaluate=evaluate, eval_every=algo.eval_every, curves=curves, summary=summary,
    )


def before_after(res: Any, key: str) -> str:
    """``"0.250 -> 0.910"`` of a held-out metric (``nan`` where missing)."""
    nan = float("nan")
    return f"{res.eval_before.get(key, nan):.3f} -> {res.eval_after.get(key, nan):.3f}"
