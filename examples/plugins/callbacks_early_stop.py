"""Callbacks: a recorder that is always on, a "stop at step N" callback selected by name, and the built-in early stop.

    python -m raylhf.sft --plugins examples/plugins/callbacks_early_stop.py --config my_sft.yaml

with, in ``my_sft.yaml`` (early stop needs evaluations during training: ``sft.eval_every``)::

    sft: {eval_every: 1, eval_fraction: 0.1}
    callbacks:
      - {name: early_stopping, kwargs: {metric: eval/loss, patience: 3, mode: min, min_delta: 0.0}}
      - {name: stop_at_step, kwargs: {step: 50}}   # optional: a hard stop

Every event is ``on_<event>(self, args, state, control, **kwargs)`` (transformers' TrainerCallback). Setting
``control.should_training_stop = True`` ends the run after the current step; the final evaluation and the
final checkpoint still happen.
"""

import json
from pathlib import Path

from raylhf.plugins import TrainerCallback, register_callback


class EventRecorder(TrainerCallback):
    """Records every event with the step it came at, and writes them to ``<run dir>/callback_events.json`` at the
    end of training."""

    def __init__(self):
        self.events = []

    def _add(self, event, state, **extra):
        self.events.append({"event": event, "step": state.global_step, **extra})

    def on_train_begin(self, args, state, control, **kwargs):
        self.events = []
        self._add("train_begin", state, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self._add("step_end", state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._add("evaluate", state, loss=(metrics or {}).get("eval/loss"))

    def on_save(self, args, state, control, checkpoint=None, **kwargs):
        self._add("save", state, checkpoint=checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        self._add("train_end", state, stopped_by=state.stopped_by)
        Path(args.output_dir, "callback_events.json").write_text(json.dumps(self.events, indent=1))


@register_callback("stop_at_step")
class StopAtStep(TrainerCallback):
    """Stop after optimizer step ``step``."""

    def __init__(self, step=10):
        self.step = int(step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


# ms-swift's table: these are added to every run (instances, or classes built without arguments)
extra_callbacks = [EventRecorder()]
