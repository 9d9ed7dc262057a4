"""The callbacks of a run: the handler the run lifecycle calls at each event, built from the plugins'
``extra_callbacks`` and the config's ``callbacks``; and the check ``raylhf check-plugin`` runs on a callback (a
scripted run). This module is the callback kind's home (it loads the built-ins of ``callbacks.py``). See
docs/plugins.md."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from raylhf.plugins.callbacks import (
    EVENTS,
    SIGNATURE,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    entry_name,
    extra_callbacks,
)
from raylhf.plugins.registry import CALLBACKS, PluginCheckError, source_of


class CallbackError(RuntimeError):
    """A callback raised; the message names it and the event."""


def callback_name(cb: Any) -> str:
    return getattr(cb, "name", None) if isinstance(getattr(cb, "name", None), str) else entry_name(cb)


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
        out.append(_instantiate(obj, {}, f"extra_callbacks entry {entry_name(obj)}"))
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


CALLBACKS.attach(interface_check=check_plugin_entry)
