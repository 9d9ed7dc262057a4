"""The offline loop (SFT, the DPO family, KTO, reward models, GKD) on the run lifecycle.

A trainer describes its run as an :class:`OfflineSpec` (how batches are drawn, the objective, the policy worker
class with its own loss, an optional evaluation and hooks) and calls :func:`run_offline`; everything around the
steps (run dir, resume, metrics, callbacks, the NaN guard, checkpoints, the final export, the result) is the
lifecycle's (``lifecycle.py``), the same as for the online trainers. See docs/architecture.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from raylhf.core.batch import Objective, TrainBatch
from raylhf.driver import phases
from raylhf.driver.cluster import init_ray
from raylhf.driver.lifecycle import RunResult, run_lifecycle
from raylhf.driver.startup import required_cpus, start_policy

R = TypeVar("R")


class BatchSource(Protocol):
    """Where a trainer's optimizer-step batches come from; its state goes into checkpoints."""

    def next_batch(self) -> TrainBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RowOrder:
    """Row indices in batches; each pass over the rows in a fresh shuffle, a batch may span two passes.
    ``state_dict`` makes the position and the shuffle state part of a checkpoint."""

    def __init__(self, num_rows: int, shuffle: bool, seed: int) -> None:
        self.num_rows, self.shuffle = num_rows, shuffle
        self.rng = random.Random(seed)
        self.pending: list[int] = []

    def take(self, n: int) -> list[int]:
        while len(self.pending) < n:
            fresh = list(range(self.num_rows))
            if self.shuffle:
                self.rng.shuffle(fresh)
            self.pending += fresh
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"pending": list(self.pending), "num_rows": self.num_rows, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(f"the checkpoint's data order covers {state['num_rows']} rows, this run has "
                             f"{self.num_rows}: resume with the same data files and length limits")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.pending = list(state["pending"])


class RowBatches(Generic[R]):
    """Batches of ``batch_size`` rows (shuffled per pass), turned into a TrainBatch by ``collate``."""

    def __init__(self, rows: Sequence[R], batch_size: int, shuffle: bool, seed: int,
                 collate: Callable[[list[R]], TrainBatch]) -> None:
        self.rows, self.batch_size, self.collate = rows, batch_size, collate
        self.order = RowOrder(len(rows), shuffle, seed)

    def next_batch(self) -> TrainBatch:
        return self.collate([self.rows[i] for i in self.order.take(self.batch_size)])

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


@dataclass
class OfflineSpec:
    """One offline trainer's run. ``name`` is the trainer (sft, dpo, rm, ...): log prefix, run-dir prefix."""

    name: str
    num_steps: int
    batches: BatchSource
    objective: Objective
    worker_cls: type | None = None  # a PolicyWorker subclass with the trainer's loss; None: PolicyWorker
    worker_extra: dict[str, Any] = field(default_factory=dict)  # its extra keyword arguments
    # the objective of one optimizer step over a batch (default: the objective with the batch's global counts)
    objective_for: Callable[[Objective, TrainBatch], Objective] | None = None
    # per-step additions to the batch before training (e.g. reference log-probs), given the policy group
    prepare: Callable[[Any, TrainBatch], TrainBatch] | None = None
    # held-out metrics, given the policy group and the step; run at step 0, every eval_every, and at the end
    evaluate: Callable[[Any, int], dict[str, float]] | None = None
    eval_every: int = 0
    after_step: Callable[[Any, int], None] | None = None  # e.g. sync weights to rollout engines (GKD)
    curves: list[str] = field(default_factory=lambda: ["loss/total"])
    summary: str = ""  # what the start line says about the data ("1200 rows")


def run_offline(cfg: Any, spec: OfflineSpec, model_path: str, save_to: str | Path | None = None) -> RunResult:
    """Train ``spec`` with the policy group; ``cfg`` has the shared sections (model, policy, logging,
    checkpoint, runtime, ray, seed, callbacks). Returns the run's result; the export goes to ``save_to`` when
    given (else the run dir's ``checkpoint`` with ``checkpoint.save_final``)."""
    describe = f"model {model_path}; {spec.summary + ', ' if spec.summary else ''}{spec.num_steps} steps"
    with run_lifecycle(cfg, spec.name, spec.num_steps, spec.eval_every, describe) as life:
        init_ray(cfg.ray, required_cpus(cfg, ["policy"]))
        policy = start_policy(cfg.policy, model_path, cfg.model.dtype, spec.num_steps, cfg.seed,
                              cfg.ray.placement_strategy, cfg.model.trust_remote_code,
                              call_timeout_s=cfg.runtime.phase_timeout_s or None, worker_cls=spec.worker_cls,
                              extra=spec.worker_extra)
        try:
            life.policy = policy
            life.evaluate = None if spec.evaluate is None else (lambda step: spec.evaluate(policy, step))
            life.trainer_state = lambda: {"data": spec.batches.state_dict()}
            life.begin(restore=lambda state: spec.batches.load_state_dict(state["data"]))
            objective_for = spec.objective_for or (lambda obj, batch: obj.with_counts(batch))
            for step in life.steps():
                t = time.perf_counter()
                batch = spec.batches.next_batch()
                if spec.prepare is not None:
                    batch = spec.prepare(policy, batch)
                m = phases.reduce_ranks(policy.call_split("train_step", batch, objective_for(spec.objective, batch)))
                if spec.after_step is not None:
                    spec.after_step(policy, step)
                life.end_step(step, m, batch, lambda m, t=t: m.__setitem__("time/step", time.perf_counter() - t))
            life.finish(spec.curves, save_to)
        finally:
            policy.shutdown()
    return life.result()


def evaluate_offline(cfg: Any, spec: OfflineSpec, model_path: str) -> dict[str, float]:
    """``spec``'s held-out metrics of ``model_path`` without training (``raylhf eval``): the policy group built
    as the trainer builds it, one evaluation, shut down. The numbers are the ones the trainer logs for that
    checkpoint (same data, same seed)."""
    if spec.evaluate is None:
        raise ValueError(f"the {spec.name} run has no held-out set: give data.eval_files (or a held-out share)")
    init_ray(cfg.ray, required_cpus(cfg, ["policy"]))
    policy = start_policy(cfg.policy, model_path, cfg.model.dtype, 1, cfg.seed, cfg.ray.placement_strategy,
                          cfg.model.trust_remote_code, call_timeout_s=cfg.runtime.phase_timeout_s or None,
                          worker_cls=spec.worker_cls, extra=spec.worker_extra)
    try:
        return spec.evaluate(policy, 0)
    finally:
        policy.shutdown()
