"""Training callbacks (transformers' ``TrainerCallback`` shape, as ms-swift uses it) and the built-in early stop.

A callback is an object with any of the events ``on_train_begin / on_train_end / on_step_begin / on_step_end /
on_evaluate / on_save / on_log``, each called as ``event(args, state, control, **kwargs)``:

* ``args`` (:class:`TrainingArguments`): the run's config (``args.config``, or its sections as attributes:
  ``args.sft``, ``args.policy``), ``output_dir`` (the run dir), ``trainer``, ``max_steps``, ``eval_steps``,
  ``save_steps``, ``logging_steps``, ``learning_rate``, ``seed``;
* ``state`` (:class:`TrainerState`): ``global_step`` (optimizer steps done), ``max_steps``, ``log_history`` (every
  metric row logged so far), ``best_metric``, ``last_checkpoint``, ``stopped_by``;
* ``control`` (:class:`TrainerControl`): set ``control.should_training_stop = True`` to end the run after the
  current step; the final evaluation and the final checkpoint / HF export still happen;
* keyword arguments: ``metrics=`` (on_evaluate: the held-out metrics, e.g. ``{"eval/loss": 1.2}``), ``logs=``
  (on_log: the metric row), ``checkpoint=`` (on_save: the directory written).

Callbacks run in the driver. A plugin file adds them with ``extra_callbacks = [MyCallback()]`` (instances or
classes; always added to every run) or ``@register_callback("name")`` on a class, selected with the config field
``callbacks: [{name: name, kwargs: {...}}]``. A ``transformers.TrainerCallback`` subclass works unchanged (events
are looked up by name). Metric keys are raylhf's (``eval/loss``), not transformers' (``eval_loss``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylhf.plugins.registry import CALLBACKS, source_of

EVENTS = ("on_train_begin", "on_train_end", "on_step_begin", "on_step_end", "on_evaluate", "on_save", "on_log")
SIGNATURE = "def {event}(self, args, state, control, **kwargs)"


class TrainingArguments:
    """What a callback's ``args`` holds: the run's resolved config and a few transformers-named shortcuts.

    ``config`` is the whole config tree (pydantic); unknown attributes are looked up on it, so ``args.sft`` or
    ``args.policy.lr`` work. ``output_dir`` is the run dir; ``eval_steps`` / ``save_steps`` are 0 when the run
    evaluates / checkpoints only at the start and the end."""

    def __init__(self, config: Any = None, output_dir: str | Path = ".", trainer: str = "", max_steps: int = 0,
                 eval_steps: int = 0, save_steps: int = 0) -> None:
        self.config = config
        self.output_dir = str(output_dir)
        self.trainer = trainer
        self.max_steps = max_steps
        self.eval_steps = eval_steps
        self.save_steps = save_steps
        logging = getattr(config, "logging", None)
        policy = getattr(config, "policy", None)
        self.logging_steps = int(getattr(logging, "log_every", 1) or 1)
        self.run_name = getattr(logging, "run_name", None) or Path(self.output_dir).name
        self.learning_rate = getattr(policy, "lr", None)
        self.seed = getattr(config, "seed", None)

    def __getattr__(self, name: str) -> Any:  # only called for names not set above
        config = self.__dict__.get("config")
        if config is not None and hasattr(config, name):
            return getattr(config, name)
        raise AttributeError(f"TrainingArguments has no {name!r}: it has config, output_dir, trainer, max_steps, "
                             "eval_steps, save_steps, logging_steps, run_name, learning_rate, seed and the config's "
                             "sections")


@dataclass
class TrainerState:
    """The run's progress as callbacks see it; ``log_history`` is the metric rows logged so far (shared with the
    metrics logger, so a resumed run starts with its earlier rows)."""

    global_step: int = 0
    max_steps: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    last_checkpoint: str | None = None
    stopped_by: str | None = None  # the callback that set should_training_stop
    trainer: str = ""
    is_world_process_zero: bool = True  # callbacks run once, in the driver
    is_local_process_zero: bool = True


@dataclass
class TrainerControl:
    """Flags a callback sets. ``should_training_stop`` ends the run after the current step (final eval and
    export still happen); the other transformers flags exist so ported callbacks run, but the loops' own
    schedules (``eval_every``, ``checkpoint.save_every``, ``logging.log_every``) decide those."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class TrainerCallback:
    """Base class: every event does nothing; override the ones you need (see the module doc for the arguments)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        pass

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        pass

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        pass

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        pass

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        pass

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        pass

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        pass


# ------------------------------------------------------------------ registry, extra_callbacks, collector

def _check_registered(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) or any(callable(getattr(obj, e, None)) for e in EVENTS)):
        raise TypeError(f"callback {name!r} ({source_of(obj)}) is neither a class nor an object with any of "
                        f"{', '.join(EVENTS)}")


CALLBACKS.attach(check=_check_registered)

# instances or classes added to every run (ms-swift's ``extra_callbacks``); a plugin file's own
# ``extra_callbacks`` list is merged into this one when the file is loaded
extra_callbacks: list[Any] = []


def register_callback(name: str | type | None = None) -> Any:
    """``@register_callback("name")`` (or bare ``@register_callback``) on a callback class: selectable with
    ``callbacks: [{name: name, kwargs: {...}}]`` (the kwargs go to its constructor)."""
    if isinstance(name, type):
        return CALLBACKS.register(name.__name__, name)
    return CALLBACKS.decorator(name)


def entry_name(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


def collect_callbacks(value: Any, source: str) -> None:
    """A plugin module's ``extra_callbacks`` (a list of callback instances or classes): each joins the
    always-on list and the registry under its class name (so ``raylhf check-plugin`` checks it)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise TypeError(f"{source} must be a list of callback instances or classes, got {type(value).__name__}")
    for obj in list(value):
        CALLBACKS.register(entry_name(obj), obj, f"{source}")
        if not any(obj is x for x in extra_callbacks):
            extra_callbacks.append(obj)




# ------------------------------------------------------------------ built-in: early stopping

@register_callback("early_stopping")
class EarlyStoppingCallback(TrainerCallback):
    """Stop when the eval metric ``metric`` has not improved for ``patience`` evaluations in a row.

    The first evaluation (step 0, before training, or the first one after a resume) sets the best value; a later
    one improves when it beats the best by more than ``min_delta`` (lower for ``mode="min"``, higher for
    ``"max"``). ``state.best_metric`` / ``state.best_step`` follow the best value."""

    def __init__(self, metric: str = "eval/loss", patience: int = 3, mode: str = "min", min_delta: float = 0.0
                 ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"early_stopping mode must be 'min' or 'max', got {mode!r}")
        if int(patience) < 1:
            raise ValueError(f"early_stopping patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"early_stopping min_delta must be >= 0, got {min_delta}")
        self.metric, self.patience, self.mode, self.min_delta = metric, int(patience), mode, float(min_delta)
        self.best: float | None = None
        self.bad_evals = 0
        self.name = "early_stopping"

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if not args.eval_steps:
            print(f"[{args.trainer}] early_stopping: the run evaluates only at the start and the end, so it cannot "
                  "stop early; set the trainer's eval_every", flush=True)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        metrics = kwargs.get("metrics") or {}
        if self.metric not in metrics:
            raise KeyError(f"early_stopping metric {self.metric!r} is not among the eval metrics "
                           f"{sorted(metrics)}: set callbacks[].kwargs.metric to one of them")
        value = float(metrics[self.metric])
        if self.best is None or self._improved(value):
            self.best, self.bad_evals = value, 0
            state.best_metric, state.best_step = value, state.global_step
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            control.should_training_stop = True

    def _improved(self, value: float) -> bool:
        assert self.best is not None
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


CALLBACKS.attach(collector=collect_callbacks)
