"""The one run lifecycle every trainer runs on, online and offline alike.

:func:`run_lifecycle` opens a run and hands the trainer's loop a :class:`Lifecycle`, which does, the same way for
every trainer: the run dir (or the resumed one) and its metrics logger and trackers, the callbacks, the NaN guard,
the evaluation before training, resuming from a checkpoint (weights, the trainer's own state, the driver's RNG),
each step's eval cadence, metric row, guard check and checkpoint, the early stop a callback asks for, the final
evaluation, the HF export, curves.png, and the one result type :class:`RunResult`. A policy (or critic) rank that
dies becomes ``PolicyRankDied`` naming the last checkpoint.

The loops on it: ``online.py`` (rollouts, rewards, updates, weight sync) and ``offline.py`` (batches from a
dataset). See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import quiet
from actors.calls import WorkerError
from raylhf.config import to_yaml
from raylhf.config.run import LoggingConfig
from raylhf.core import checkpoint as ckpts
from raylhf.core.guard import BadStepGuard
from raylhf.driver.metrics_log import MetricsLogger
from raylhf.driver.plots import plot_curves
from raylhf.driver.recovery import PolicyRankDied
from raylhf.plugins import registry
from raylhf.plugins.callback_handler import CallbackHandler, start_callbacks


@dataclass
class RunResult:
    """What every trainer returns: the run dir, the final HF export, the metric rows, the held-out evaluations
    before / after, the last step run and, if a callback ended the run early, which one."""

    run_dir: Path
    checkpoint: str | None
    history: list[dict[str, Any]]
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    final_step: int = 0
    stopped_by: str | None = None
    placement: dict[str, list[str]] = field(default_factory=dict)  # each actor group's node ids, rank by rank


def make_run_dir(cfg: LoggingConfig, algo: str) -> Path:
    name = cfg.run_name or f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def open_run(cfg: Any, name: str, total_steps: int, describe: str) -> tuple[Path, Path | None, dict[str, Any],
                                                                          MetricsLogger]:
    """The run dir of a trainer ``name`` with its metrics logger: a new one, or the one of the checkpoint
    ``checkpoint.resume`` names (then the logger keeps the metric rows up to its step). Writes the config
    (``config.resumed.yaml`` on resume) and prints the start line ``[name] run dir ...; <describe>``.
    Returns (run dir, checkpoint resumed from or None, its trainer state, logger)."""
    registry.activate(registry.config_plugins(cfg), replace=True)  # here and in every actor started after this
    os.environ[quiet.ENV] = cfg.logging.library_warnings  # the actors started after this inherit it (init_ray)
    resume_from = ckpts.resolve_resume(cfg.checkpoint.resume, Path(cfg.logging.run_dir), cfg.logging.run_name, name)
    state = ckpts.read_state(resume_from) if resume_from else {}
    start_step = int(state.get("step", 0))
    run_dir = ckpts.run_dir_of(resume_from) if resume_from else make_run_dir(cfg.logging, name)
    (run_dir / ("config.resumed.yaml" if resume_from else "config.yaml")).write_text(to_yaml(cfg))
    print(f"[{name}] run dir {run_dir}; {describe}"
          + (f"; resuming after step {start_step} from {resume_from}" if resume_from else ""), flush=True)
    # created first: a missing tracker package (wandb) fails here, before any actor starts
    logger = MetricsLogger(run_dir, cfg.logging, total_steps, name, run_config=cfg.model_dump(mode="json"),
                           resume_step=start_step if resume_from else None)
    return run_dir, resume_from, state, logger


class Lifecycle:
    """One run around a trainer's loop. The loop sets :attr:`policy` (and :attr:`trained`, other groups saved
    with it, e.g. a critic), :attr:`evaluate` (held-out metrics at a step, or None) and :attr:`trainer_state`
    (its resumable state for checkpoints), calls :meth:`begin`, then for each of :meth:`steps` runs the step and
    calls :meth:`end_step`, and at the end :meth:`finish`."""

    def __init__(self, cfg: Any, name: str, num_steps: int, eval_every: int, run_dir: Path, logger: Any,
                 resume_from: Path | None = None, state: dict[str, Any] | None = None) -> None:
        """An opened run (:func:`open_run`): its dir, its metrics logger and, when resuming, the checkpoint and
        its trainer state."""
        self.cfg, self.name, self.num_steps, self.eval_every = cfg, name, num_steps, eval_every
        self.run_dir, self.logger, self.resume_from, self.state = run_dir, logger, resume_from, state or {}
        self.start_step = self.final_step = int(self.state.get("step", 0))
        self.last_checkpoint: Path | None = self.resume_from
        self.callbacks: CallbackHandler = start_callbacks(cfg, name, self.run_dir, num_steps, self.start_step,
                                                          eval_every, self.logger.history)
        self.bad_steps = BadStepGuard(cfg.runtime.max_bad_steps, self.run_dir, name)
        self.policy: Any = None
        self.trained: dict[str, Any] = {}
        self.evaluate: Callable[[int], dict[str, float]] | None = None
        self.trainer_state: Callable[[], dict[str, Any]] = dict
        self.eval_before: dict[str, float] = {}
        self.eval_after: dict[str, float] = {}
        self.checkpoint: str | None = None
        self.stopped_by: str | None = None
        self.placement: dict[str, list[str]] = {}
        self._last_eval: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest evaluation

    # ---- start --------------------------------------------------------------------------------------------------
    def begin(self, restore: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Callbacks' train begin; then either resume (weights of the policy and the trained groups, the guard,
        the trainer's state through ``restore(state)``, the evaluation before training from the metric rows, and
        the driver's RNG last) or evaluate before training."""
        self.callbacks.train_begin()
        if self.resume_from:
            ckpts.restore(self.policy, self.resume_from, self.trained)
            if restore is not None:
                restore(self.state)
            self.bad_steps.in_a_row = int(self.state.get("bad_steps_in_a_row", 0))
            first = self.logger.history[0] if self.logger.history else {}
            self.eval_before = {k: v for k, v in first.items() if k.startswith("eval/")} \
                if first.get("step") == 0 else {}
            ckpts.load_driver_rng(self.resume_from)  # just before the first resumed step
        else:
            self.eval_before = self._evaluate(0)

    # ---- steps --------------------------------------------------------------------------------------------------
    def steps(self) -> Iterator[int]:
        """The steps left; ends early when a callback asked to stop."""
        for step in range(self.start_step + 1, self.num_steps + 1):
            if self.callbacks.should_stop:
                return
            self.callbacks.step_begin()
            yield step
            self.final_step = step

    def end_step(self, step: int, m: dict[str, Any], batch: Any, more: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        """Held-out eval every ``eval_every`` steps, ``more(m)`` (the loop's timings), the metric row, the NaN
        guard (a skipped update saves its batch; too many in a row raise), the checkpoint every
        ``checkpoint.save_every`` steps."""
        self.callbacks.state.global_step = step
        if self.evaluate is not None and self.eval_every and step % self.eval_every == 0 and step < self.num_steps:
            m.update(self._evaluate(step, log=False))
        if more is not None:
            more(m)
        self.log(step, m)
        self.bad_steps.check(step, m, batch)
        self.callbacks.step_end(step)
        c = self.cfg.checkpoint
        if c.save_every and step % c.save_every == 0 and step < self.num_steps:
            self.last_checkpoint = ckpts.save(self.policy, self.run_dir, step, {
                **self.trainer_state(), "bad_steps_in_a_row": self.bad_steps.in_a_row}, c.keep_last,
                name=self.name, others=self.trained)
            self.callbacks.save(self.last_checkpoint)

    def log(self, step: int, m: dict[str, Any], advance: bool = True) -> None:
        """One metric row to the logger, then to the callbacks' ``on_log``."""
        self.logger.log(step, m, advance=advance)
        self.callbacks.log(self.logger.history[-1])

    def _evaluate(self, step: int, log: bool = True) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        out = self.evaluate(step)
        self._last_eval = (step, out)
        if out:
            self.callbacks.evaluate(out)
            if log:
                self.log(step, out, advance=False)
        return out

    # ---- end ----------------------------------------------------------------------------------------------------
    def finish(self, curves: list[str], save_to: str | Path | None = None) -> None:
        """The early-stop line, the final evaluation at the last step run (the one just made when a callback stopped
        the run right after an evaluation), the HF export (to ``save_to`` or the run dir's ``checkpoint``), the
        curves."""
        if self.callbacks.should_stop:
            self.stopped_by = self.callbacks.state.stopped_by or "?"
            print(self.callbacks.stop_message(self.name), flush=True)
            self.log(self.final_step, {"stopped_early_by": self.stopped_by}, advance=False)
        last = self._last_eval
        if last is not None and last[0] == self.final_step and self.final_step < self.num_steps:
            self.eval_after = last[1]  # stopped right after an evaluation: same weights, same numbers
        else:
            self.eval_after = self._evaluate(self.final_step)
        if self.cfg.checkpoint.save_final or save_to:
            target = Path(save_to) if save_to else self.run_dir / "checkpoint"
            self.checkpoint = self.policy.call("save", str(target))[0]
            self.callbacks.save(self.checkpoint)
        plot = plot_curves(self.logger.history, curves, self.run_dir / "curves.png", self.name.upper())
        if plot:
            print(f"[{self.name}] curves {plot}", flush=True)
        self.callbacks.train_end()

    def result(self) -> RunResult:
        return RunResult(run_dir=self.run_dir, checkpoint=self.checkpoint, history=self.logger.history,
                         eval_before=self.eval_before, eval_after=self.eval_after, final_step=self.final_step,
                         stopped_by=self.stopped_by, placement=self.placement)


@contextlib.contextmanager
def run_lifecycle(cfg: Any, name: str, num_steps: int, eval_every: int, describe: str) -> Iterator[Lifecycle]:
    """Open a run (see the module doc); the metrics logger closes at the end, and a policy or critic rank that
    died becomes ``PolicyRankDied`` naming the last checkpoint."""
    run_dir, resume_from, state, logger = open_run(cfg, name, num_steps, describe)
    life = Lifecycle(cfg, name, num_steps, eval_every, run_dir, logger, resume_from, state)
    try:
        yield life
    except WorkerError as e:
        if e.group in ("policy", "critic") and e.died:
            raise PolicyRankDied.from_error(e, life.last_checkpoint) from e
        raise
    finally:
        life.logger.close()
