"""Callbacks without Ray: the early stop fires at the step a scripted metric sequence predicts, the example plugin
file's callbacks load through the real loader, errors name the callback, check-plugin rejects wrong signatures,
and the online loop's hooks stop ``steps()`` after the step a callback asked."""

from __future__ import annotations

import io
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raylhf.plugins import registry
from raylhf.plugins.callback_handler import (
    CallbackError,
    CallbackHandler,
    build_callbacks,
    check_plugin_entry,
    scripted_run,
    start_callbacks,
)
from raylhf.plugins.callbacks import (
    CALLBACKS,
    EarlyStoppingCallback,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    extra_callbacks,
)
from raylhf.plugins.registry import PluginCheckError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/plugins/callbacks_early_stop.py"


def handler(*callbacks: Any, tmp: Path | None = None) -> CallbackHandler:
    return CallbackHandler(list(callbacks), TrainingArguments(output_dir=tmp or ".", trainer="t", max_steps=20,
                                                              eval_steps=1), TrainerState(max_steps=20))


@pytest.fixture
def example_plugin() -> Iterator[types.ModuleType]:
    """The example file loaded through the real loader; its entries are removed afterwards."""
    before = list(extra_callbacks)
    module = registry.load_plugin(str(EXAMPLE))
    yield module
    extra_callbacks[:] = before
    for name in ("stop_at_step", "EventRecorder"):
        CALLBACKS.unregister(name)
    registry.forget(str(EXAMPLE))


def test_early_stop_fires_after_patience_evaluations_without_improvement() -> None:
    # eval/loss at steps 0..6: best 1.0 (step 0) -> 0.9 (step 1, improved); 0.95, 0.92, 0.91 do not beat 0.9:
    # 3 bad evaluations in a row at steps 2, 3, 4 -> with patience 3 the run stops at step 4
    es = EarlyStoppingCallback(metric="eval/loss", patience=3, mode="min")
    h = handler(es)
    assert scripted_run(h, [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.4]) == 4
    assert h.state.stopped_by == "early_stopping" and h.state.global_step == 4
    assert h.state.best_metric == 0.9 and h.state.best_step == 1


def test_early_stop_counts_only_consecutive_bad_evaluations_and_min_delta() -> None:
    # patience 2: 1.0 | 1.1 bad(1) | 0.8 better (reset) | 0.85 bad(1) | 0.79 improves by 0.01 > min_delta 0.005
    # (reset) | 0.789 improves by 0.001 < 0.005: bad(1) | 0.9 bad(2) -> stop at step 6
    es = EarlyStoppingCallback(patience=2, min_delta=0.005)
    assert scripted_run(handler(es), [1.0, 1.1, 0.8, 0.85, 0.79, 0.789, 0.9, 0.1]) == 6
    # mode max: accuracy 0.5 best; 0.55 and 0.58 do not beat it by more than 0.1 -> stop at step 2
    es = EarlyStoppingCallback(metric="eval/acc", patience=2, mode="max", min_delta=0.1)
    assert scripted_run(handler(es), [0.5, 0.55, 0.58, 0.9], metric="eval/acc") == 2
    # improving all the time: never stops
    assert scripted_run(handler(EarlyStoppingCallback(patience=1)), [5.0, 4.0, 3.0, 2.0]) is None


def test_early_stop_errors_name_what_to_change() -> None:
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStoppingCallback(mode="lower")
    h = handler(EarlyStoppingCallback(metric="eval/bleu"))
    with pytest.raises(CallbackError, match=r"early_stopping .*on_evaluate.*'eval/bleu' is not among the eval "
                                            r"metrics \['eval/loss'\]"):
        scripted_run(h, [1.0, 2.0])


def test_config_selects_early_stopping_with_kwargs(tmp_path: Path) -> None:
    from raylhf.config import SFTConfig, build_config

    cfg = build_config(SFTConfig, overrides=[
        ("callbacks", [{"name": "early_stopping", "kwargs": {"metric": "eval/acc", "patience": 2, "mode": "max"}}]),
        ("sft.eval_every", 5)])
    h = start_callbacks(cfg, "sft", tmp_path, 30, 0, cfg.sft.eval_every, [])
    es = [c for c in h.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert len(es) == 1 and (es[0].metric, es[0].patience, es[0].mode) == ("eval/acc", 2, "max")
    assert h.args.output_dir == str(tmp_path) and h.args.eval_steps == 5 and h.args.sft.eval_every == 5
    assert h.args.learning_rate == cfg.policy.lr and h.state.max_steps == 30
    with pytest.raises(Exception, match=r"unknown callback 'early_stop' in callbacks; registered: .*early_stopping"):
        build_config(SFTConfig, overrides=[("callbacks", [{"name": "early_stop"}])])


def test_example_file_callbacks_record_and_stop(example_plugin: types.ModuleType, tmp_path: Path) -> None:
    recorder = next(c for c in extra_callbacks if type(c).__name__ == "EventRecorder")
    assert "stop_at_step" in CALLBACKS and "EventRecorder" in CALLBACKS
    callbacks = build_callbacks([{"name": "stop_at_step", "kwargs": {"step": 2}}])
    assert callbacks[0] is recorder and type(callbacks[1]).__name__ == "StopAtStep"
    h = handler(*callbacks, tmp=tmp_path)
    assert scripted_run(h, [1.0, 0.9, 0.8, 0.7, 0.6]) == 2  # improving loss; stopped by step count
    assert h.state.stopped_by == "StopAtStep"
    events = json.loads((tmp_path / "callback_events.json").read_text())
    assert [(e["event"], e["step"]) for e in events] == [
        ("train_begin", 0), ("evaluate", 0), ("evaluate", 1), ("step_end", 1), ("evaluate", 2), ("step_end", 2),
        ("train_end", 2)]
    assert events[-1]["stopped_by"] == "StopAtStep" and events[2]["loss"] == 0.9
    with pytest.raises(ValueError, match="in a plugin file's extra_callbacks"):
        build_callbacks([{"name": "EventRecorder"}])


def test_a_failing_callback_is_named() -> None:
    class Exploding(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise ZeroDivisionError("boom")

    with pytest.raises(CallbackError, match=r"callback Exploding \(.*Exploding\) failed in on_step_end at step 1: "
                                            r"ZeroDivisionError: boom"):
        scripted_run(handler(Exploding()), [1.0, 1.0])


class MissingArgs:
    def on_step_end(self):  # wrong: no (args, state, control, **kwargs)
        pass


class NoKwargs(TrainerCallback):
    def on_evaluate(self, args, state, control):  # wrong: metrics= is passed as a keyword
        pass


def test_check_plugin_rejects_wrong_signatures_naming_entry_and_expected_shape() -> None:
    with pytest.raises(PluginCheckError) as e:
        check_plugin_entry("missing_args", MissingArgs)
    assert "callback 'missing_args'" in str(e.value) and "on_step_end()" in str(e.value)
    assert "expected def on_step_end(self, args, state, control, **kwargs)" in str(e.value)
    with pytest.raises(PluginCheckError, match=r"callback 'no_kwargs'.*on_evaluate\(args, state, control\).*"
                                               r"expected def on_evaluate\(self, args, state, control, \*\*kwargs\)"):
        check_plugin_entry("no_kwargs", NoKwargs())
    with pytest.raises(PluginCheckError, match="defines none of on_train_begin"):
        check_plugin_entry("nothing", object)
    ok = check_plugin_entry("early_stopping", EarlyStoppingCallback)  # default patience 3: 1.0 then 3 worse
    assert ok == "callback early_stopping: events on_train_begin, on_evaluate fit; on a scripted 3-step run it " \
                 "stopped at step 3"
    with pytest.raises(PluginCheckError, match="on_step_end"):  # also before a run starts
        build_callbacks([], extras=[MissingArgs()])


def test_check_plugin_cli_reports_a_wrong_callback(tmp_path: Path) -> None:
    from raylhf.plugins import check as check_plugin

    f = tmp_path / "bad_callbacks.py"
    f.write_text("from raylhf.plugins import TrainerCallback, register_callback\n"
                 "@register_callback('cp_bad_cb')\n"
                 "class Bad(TrainerCallback):\n"
                 "    def on_step_end(self):\n"
                 "        pass\n")
    out = io.StringIO()
    try:
        assert check_plugin.report(str(f), out) == 1
    finally:
        CALLBACKS.unregister("cp_bad_cb")
    text = out.getvalue()
    assert "FAIL callback 'cp_bad_cb'" in text
    assert "expected def on_step_end(self, args, state, control, **kwargs)" in text


# ---------------------------------------------------------------- the online loop's hooks (no actors)

class _Logger:
    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, metrics: dict[str, Any], advance: bool = True) -> None:
        self.history.append({"step": step, **metrics})


def test_the_run_lifecycle_stops_after_the_step_a_callback_asked(tmp_path: Path) -> None:
    from raylhf.driver.lifecycle import Lifecycle

    eval_loss = {0: 1.0, 1: 1.2, 2: 1.3, 3: 1.4, 4: 0.1}  # never better than step 0: patience 2 stops at step 2
    evaluated: list[int] = []

    def evaluate(step: int) -> dict[str, float]:
        evaluated.append(step)
        return {"eval/loss": eval_loss[step]}

    cfg = types.SimpleNamespace(checkpoint=types.SimpleNamespace(save_every=0, save_final=False), logging=None,
                                policy=None, seed=1, runtime=types.SimpleNamespace(max_bad_steps=3))
    logger = _Logger()
    run = Lifecycle(cfg, "grpo", 4, 1, tmp_path, logger)
    run.callbacks.callbacks.append(EarlyStoppingCallback(patience=2))
    run.evaluate = evaluate
    run.begin()
    steps = []
    for step in run.steps():
        steps.append(step)
        run.end_step(step, {"loss/total": 0.0}, None)
    run.finish(["eval/loss"])
    assert steps == [1, 2] and run.final_step == 2 and run.stopped_by == "early_stopping"
    # the run stopped right after the evaluation at step 2: that one is the final evaluation (same weights), as
    # in every trainer (one run lifecycle; tests/e2e/test_callbacks_e2e.py checks it on SFT)
    assert evaluated == [0, 1, 2] and run.eval_after == {"eval/loss": 1.3}
    assert {"step": 2, "loss/total": 0.0, "eval/loss": 1.3} in logger.history
    assert logger.history[-1] == {"step": 2, "stopped_early_by": "early_stopping"}


def test_a_plugin_file_may_append_to_the_shared_extra_callbacks_list(tmp_path: Path) -> None:
    f = tmp_path / "append_callbacks.py"
    f.write_text("from raylhf.plugins import TrainerCallback, extra_callbacks\n"
                 "class Appended(TrainerCallback):\n"
                 "    def on_step_end(self, args, state, control, **kwargs):\n"
                 "        control.should_training_stop = state.global_step == 3\n"
                 "extra_callbacks.append(Appended())\n")
    before = list(extra_callbacks)
    try:
        registry.load_plugin(str(f))
        assert "Appended" in CALLBACKS  # collected too, so check-plugin sees it
        h = handler(*build_callbacks([]))
        assert scripted_run(h, [1.0] * 6) == 3 and h.state.stopped_by == "Appended"
    finally:
        extra_callbacks[:] = before
        CALLBACKS.unregister("Appended")
        registry.forget(str(f))
