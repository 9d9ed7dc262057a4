"""The loop every offline trainer shares (SFT, the DPO family, KTO, reward models, GKD).

A trainer describes its run as an :class:`OfflineSpec` (how batches are drawn, the objective, the
policy worker class with its own loss, an optional evaluation and hooks) and calls :func:`run_offline`,
which does the rest the same way for all of them: run dir, resume (``checkpoint.resume``), metrics
(stdout / metrics.jsonl / trackers / curves.png), the NaN guard, resumable checkpoints, the final HF
export, the watchdog limit, and a clear error when a policy rank dies.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from actors.group import WorkerError
from raylhf.core import checkpoint as ckpts
from raylhf.core.batch import Objective, TrainBatch
from raylhf.core.guard import BadStepGuard
from raylhf.driver import phases as rl
from raylhf.driver.runtime import init_ray, open_run, plot_curves
from raylhf.plugins.callbacks import start_callbacks

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


@dataclass
class OfflineResult:
    run_dir: Path
    checkpoint: str | None
    history: list[dict[str, Any]]
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    final_step: int = 0  # the last optimizer step (before num_steps when a callback stopped the run)
    stopped_by: str | None = None  # the callback that stopped the run early, if one did


def run_offline(cfg: Any, spec: OfflineSpec, model_path: str, save_to: str | Path | None = None) -> OfflineResult:
    """Train ``spec`` with the policy group; ``cfg`` has the shared sections (model, policy, logging,
    checkpoint, runtime, ray, seed, callbacks). Returns the run dir, the final HF export, the metric history and
    the evaluations before / after. A callback that sets ``control.should_training_stop`` ends the loop after
    that step; the final evaluation and export then run at that step."""

    name = spec.name
    run_dir, resume_from, state, logger = open_run(
        cfg, name, spec.num_steps,
        f"model {model_path}; {spec.summary + ', ' if spec.summary else ''}{spec.num_steps} steps")
    start_step = int(state.get("step", 0))
    ckpt: str | None = None
    eval_before: dict[str, float] = {}
    eval_after: dict[str, float] = {}
    callbacks = start_callbacks(cfg, name, run_dir, spec.num_steps, start_step, spec.eval_every, logger.history)
    final_step = start_step
    try:
        init_ray(cfg.ray, cfg.policy.num_workers * cfg.policy.num_cpus_per_worker)
        policy = rl.start_policy(cfg.policy, model_path, cfg.model.dtype, spec.num_steps, cfg.seed,
                                 cfg.ray.placement_strategy, cfg.model.trust_remote_code,
                                 call_timeout_s=cfg.runtime.phase_timeout_s or None, worker_cls=spec.worker_cls,
                                 extra=spec.worker_extra)
        last_ckpt: Path | None = resume_from
        bad_steps = BadStepGuard(cfg.runtime.max_bad_steps, run_dir, name)
        objective_for = spec.objective_for or (lambda obj, batch: obj.with_counts(batch))

        def log(step: int, metrics: dict[str, float], advance: bool = True) -> None:
            logger.log(step, metrics, advance=advance)
            callbacks.log(logger.history[-1])

        try:
            callbacks.train_begin()
            last_eval: tuple[int, dict[str, float]] | None = None
            if resume_from:
                ckpts.restore(policy, resume_from)
                spec.batches.load_state_dict(state["data"])
                bad_steps.in_a_row = int(state.get("bad_steps_in_a_row", 0))
                ckpts.load_driver_rng(resume_from)
            elif spec.evaluate is not None:
                eval_before = spec.evaluate(policy, 0)
                if eval_before:
                    last_eval = (0, eval_before)
                    callbacks.evaluate(eval_before)
                    log(0, eval_before, advance=False)
            for step in range(start_step + 1, spec.num_steps + 1):
                if callbacks.should_stop:  # set before any step (on_train_begin / the first evaluation)
                    break
                t = time.perf_counter()
                callbacks.step_begin()
                batch = spec.batches.next_batch()
                if spec.prepare is not None:
                    batch = spec.prepare(policy, batch)
                try:
                    m = rl.reduce_ranks(policy.call_split("train_step", batch, objective_for(spec.objective, batch)))
                except WorkerError as e:
                    if e.group == "policy" and e.died:
                        raise rl.PolicyRankDied.from_error(e, last_ckpt) from e
                    raise
                final_step = callbacks.state.global_step = step
                if spec.after_step is not None:
                    spec.after_step(policy, step)
                if spec.evaluate is not None and spec.eval_every and step % spec.eval_every == 0 \
                        and step < spec.num_steps:
                    evaluated = spec.evaluate(policy, step)
                    last_eval = (step, evaluated)
                    callbacks.evaluate(evaluated)
                    m.update(evaluated)
                m["time/step"] = time.perf_counter() - t
                log(step, m)
                bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
                callbacks.step_end(step)
                if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < spec.num_steps:
                    last_ckpt = ckpts.save(policy, run_dir, step, {
                        "data": spec.batches.state_dict(), "bad_steps_in_a_row": bad_steps.in_a_row},
                        cfg.checkpoint.keep_last, name=name)
                    callbacks.save(last_ckpt)
                if callbacks.should_stop:
                    break
            if callbacks.should_stop:
                print(callbacks.stop_message(name), flush=True)
                log(final_step, {"stopped_early_by": callbacks.state.stopped_by or "?"}, advance=False)
            if spec.evaluate is not None:
                if last_eval is not None and last_eval[0] == final_step and final_step < spec.num_steps:
                    eval_after = last_eval[1]  # stopped right after an evaluation: same weights, same numbers
                else:
                    eval_after = spec.evaluate(policy, final_step)
                    if eval_after:
                        callbacks.evaluate(eval_after)
                        log(final_step, eval_after, advance=False)
            target = Path(save_to) if save_to else run_dir / "checkpoint"
            if cfg.checkpoint.save_final or save_to:
                ckpt = policy.call("save", str(target))[0]
                callbacks.save(ckpt)
            plot_curves(logger.history, spec.curves, run_dir / "curves.png", name.upper())
            callbacks.train_end()
        finally:
            policy.shutdown()
    finally:
        logger.close()
    return OfflineResult(run_dir, ckpt, logger.history, eval_before, eval_after, final_step,
                         callbacks.state.stopped_by if callbacks.should_stop else None)
