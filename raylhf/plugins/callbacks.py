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

import inspect
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylhf.plugins.registry import CALLBACKS, PluginCheckError, source_of

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


def _entry_name(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


def collect_callbacks(value: Any, source: str) -> None:
    """A plugin module's ``extra_callbacks`` (a list of callback instances or classes): each joins the
    always-on list and the registry under its class name (so ``raylhf check-plugin`` checks it)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise TypeError(f"{source} must be a list of callback instances or classes, got {type(value).__name__}")
    for obj in list(value):
        CALLBACKS.register(_entry_name(obj), obj, f"{source}")
        if not any(obj is x for x in extra_callbacks):
            extra_callbacks.append(obj)


# ------------------------------------------------------------------ the handler the loops call

class CallbackError(RuntimeError):
    """A callback raised; the message names it and the event."""


def callback_name(cb: Any) -> str:
    return getattr(cb, "name", None) if isinstance(getattr(cb, "name", None), str) else _entry_name(cb)


class CallbackHandler:
    """Calls every event on every callback in order, with one ``args`` / ``state`` / ``control``; records which
    callback asked to stop. The loops call ``train_begin``, ``step_begin``, ``evaluate(metrics)``,
    ``log(logs)``, ``step_end``, ``save(checkpoint)``, ``train_end`` and read :attr:`should_stop`."""

    def __init__(self, callbacks: Sequence[Any], args: TrainingArguments, state: TrainerState) -> None:
        self.callbacks, self.args, self.state = list(callbacks), args, state
        self.control = TrainerControl()

    @property
    def should_stop(self) -> bool:
        return self.control.should_training_stop

    def call(self, event: str, **kwargs: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is None:
                continue
            was_stopping = self.control.should_training_stop
            try:
                out = fn(self.args, self.state, self.control, **kwargs)
            except Exception as e:
                raise CallbackError(f"callback {callback_name(cb)} ({source_of(cb)}) failed in {event} at step "
                                    f"{self.state.global_step}: {type(e).__name__}: {e}") from e
            if isinstance(out, TrainerControl):  # transformers lets an event return a new control
                self.control = out
            if self.control.should_training_stop and not was_stopping and self.state.stopped_by is None:
                self.state.stopped_by = callback_name(cb)

    def train_begin(self) -> None:
        self.call("on_train_begin")

    def train_end(self) -> None:
        self.call("on_train_end")

    def step_begin(self) -> None:
        self.call("on_step_begin")

    def step_end(self, step: int) -> None:
        self.state.global_step = step
        self.call("on_step_end")

    def evaluate(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.call("on_evaluate", metrics=dict(metrics))

    def log(self, logs: dict[str, Any]) -> None:
        self.call("on_log", logs=dict(logs))

    def save(self, checkpoint: str | Path | None) -> None:
        if checkpoint is not None:
            self.state.last_checkpoint = str(checkpoint)
        self.call("on_save", checkpoint=None if checkpoint is None else str(checkpoint))

    def stop_message(self, trainer: str) -> str:
        return f"[{trainer}] stopped early at step {self.state.global_step} by {self.state.stopped_by}"


def build_callbacks(configured: Sequence[Any] = (), extras: Sequence[Any] | None = None) -> list[Any]:
    """The run's callbacks: ``extra_callbacks`` (classes instantiated without arguments), then the config's
    ``callbacks`` entries (``{name, kwargs}``; a registered class is built with the kwargs, a registered instance
    takes none)."""
    out: list[Any] = []
    extras = list(extra_callbacks if extras is None else extras)
    for obj in extras:
        out.append(_instantiate(obj, {}, f"extra_callbacks entry {_entry_name(obj)}"))
    for i, c in enumerate(configured):
        name = c["name"] if isinstance(c, Mapping) else c.name
        kwargs = dict((c.get("kwargs") if isinstance(c, Mapping) else c.kwargs) or {})
        where = f"callbacks[{i}] ({name})"
        try:
            obj = CALLBACKS.get_entry(name)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if any(obj is x for x in extras):
            raise ValueError(f"{where}: this callback is in a plugin file's extra_callbacks, which every run adds "
                             "already; drop it from callbacks")
        out.append(_instantiate(obj, kwargs, where))
    return out


def _instantiate(obj: Any, kwargs: dict[str, Any], where: str) -> Any:
    """An instance of ``obj`` whose events take the callback arguments (checked before the run starts)."""
    for event in EVENTS:
        if callable(getattr(obj, event, None)):
            _check_signature(callback_name(obj), obj, event)
    if not isinstance(obj, type):
        if kwargs:
            raise ValueError(f"{where} is an instance ({source_of(obj)}); it takes no kwargs")
        return obj
    try:
        return obj(**kwargs)
    except TypeError as e:
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(...)"
        raise ValueError(f"{where}: cannot build {obj.__name__}{sig} with kwargs {kwargs}: {e}") from e


def start_callbacks(cfg: Any, trainer: str, run_dir: Path, max_steps: int, start_step: int, eval_every: int,
                    history: list[dict[str, Any]]) -> CallbackHandler:
    """The handler of a run: its callbacks from ``extra_callbacks`` and ``cfg.callbacks``."""
    args = TrainingArguments(cfg, run_dir, trainer, max_steps, eval_every,
                             int(getattr(getattr(cfg, "checkpoint", None), "save_every", 0) or 0))
    state = TrainerState(global_step=start_step, max_steps=max_steps, log_history=history, trainer=trainer)
    return CallbackHandler(build_callbacks(getattr(cfg, "callbacks", None) or []), args, state)


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


# ------------------------------------------------------------------ raylhf check-plugin

def _check_signature(name: str, obj: Any, event: str) -> None:
    fn = getattr(obj, event)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    if isinstance(obj, type):  # unbound: bind a stand-in self
        params = list(sig.parameters.values())
        if params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            sig = sig.replace(parameters=params[1:])
        else:
            return
    try:
        sig.bind(TrainingArguments(), TrainerState(), TrainerControl(), metrics={}, logs={}, checkpoint=None)
    except TypeError as e:
        raise PluginCheckError(f"callback {name!r} ({source_of(obj)}): {event}{sig} does not take the "
                               f"callback arguments ({e}); expected {SIGNATURE.format(event=event)}") from None


def check_plugin_entry(name: str, obj: Any) -> str:
    """Check every event ``obj`` defines against ``event(self, args, state, control, **kwargs)``, then run a
    script of 3 steps (evaluations with a rising eval/loss) and say what it did."""
    events = [e for e in EVENTS if callable(getattr(obj, e, None))]
    if not events:
        raise PluginCheckError(f"callback {name!r} ({source_of(obj)}) defines none of {', '.join(EVENTS)}; "
                               f"expected e.g. {SIGNATURE.format(event='on_step_end')}")
    for event in events:
        _check_signature(name, obj, event)
    own = [e for e in events if getattr(type(obj) if not isinstance(obj, type) else obj, e, None)
           is not getattr(TrainerCallback, e, None)]
    if isinstance(obj, type):
        try:
            cb = obj()
        except TypeError:
            return f"callback {name}: events {', '.join(own) or '(none overridden)'} fit; needs constructor " \
                   "arguments, so not run"
    else:
        cb = obj
    with tempfile.TemporaryDirectory(prefix="raylhf-check-callback-") as tmp:  # what it writes goes nowhere
        handler = CallbackHandler([cb], TrainingArguments(output_dir=tmp, trainer="check", max_steps=3,
                                                          eval_steps=1), TrainerState(max_steps=3, trainer="check"))
        stop_step = scripted_run(handler, [1.0, 1.1, 1.2, 1.3])
    what = f"stopped at step {stop_step}" if stop_step is not None else "ran all 3 steps"
    return f"callback {name}: events {', '.join(own) or '(none overridden)'} fit; on a scripted 3-step run it {what}"


def scripted_run(handler: CallbackHandler, eval_values: Sequence[float], metric: str = "eval/loss",
                 on_step: Callable[[int], None] | None = None) -> int | None:
    """Drive ``handler`` like a loop that evaluates ``metric`` at step 0 and after every step, with the values
    ``eval_values`` (one per evaluation, the first at step 0); returns the step where a callback stopped it, or
    None. For tests and check-plugin."""
    handler.train_begin()
    handler.evaluate({metric: eval_values[0]})
    stopped: int | None = None
    for step, value in enumerate(eval_values[1:], start=1):
        handler.step_begin()
        if on_step is not None:
            on_step(step)
        handler.state.global_step = step
        handler.evaluate({metric: value})
        handler.log({"step": step, metric: value})
        handler.step_end(step)
        if handler.should_stop:
            stopped = step
            break
    handler.train_end()
    return stopped


CALLBACKS.attach(collector=collect_callbacks, interface_check=check_plugin_entry)
