"""Logging: file vs terminal output, logging.report_to, the W&B tracker (offline), curve styles, and the
filter for vLLM's harmless reload warnings. Fast: no Ray, no engines."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from raylhf.config import GRPOConfig, build_config, load_config
from raylhf.config.run import LoggingConfig
from raylhf.driver.metrics_log import WANDB_MISSING, MetricsLogger, TrackerError
from raylhf.driver.plots import curve_figure, curve_style, plot_curves


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log_steps(logger: MetricsLogger, steps: range) -> None:
    for s in steps:
        logger.log(s, {"reward/mean": 0.5 + s / 100, "loss/total": 1.0 / s, "time/step": 0.25})


# ---- output in files vs terminals ----------------------------------------------------------------

def test_not_a_terminal_one_line_per_step_and_no_bar(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[]), 5, "grpo", stream=out, bar_stream=err)
    assert logger.bar is None and not logger.interactive
    _log_steps(logger, range(1, 6))
    logger.close()
    text = out.getvalue()
    assert "\r" not in text + err.getvalue()
    assert err.getvalue() == ""
    lines = text.splitlines()
    assert [ln.split("]")[0] for ln in lines] == [f"[step {s}" for s in range(1, 6)]
    assert lines[1] == "[step 2] loss/total=0.5 reward/mean=0.52 time/step=0.25"
    assert text.endswith("\n")
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


def test_stdout_a_file_but_stderr_a_terminal_still_no_bar(tmp_path: Path) -> None:
    """`python -m raylhf.grpo > run.log`: the bar would land on the terminal while lines go to the file."""
    out = io.StringIO()
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[]), 3, "grpo", stream=out,
                           bar_stream=FakeTerminal())
    assert logger.bar is None
    _log_steps(logger, range(1, 4))
    logger.close()
    assert len(out.getvalue().splitlines()) == 3 and "\r" not in out.getvalue()


def test_terminal_shows_the_bar_with_the_lines_above_it(tmp_path: Path) -> None:
    term = FakeTerminal()
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[]), 3, "grpo", stream=term, bar_stream=term)
    assert logger.interactive and logger.bar is not None
    _log_steps(logger, range(1, 4))
    assert logger.bar.n == 3
    logger.close()
    text = term.getvalue()
    assert "\r" in text and "grpo" in text  # the bar redraws in place
    assert all(f"[step {s}] loss/total=" in text for s in (1, 2, 3))


def test_terminal_with_progress_off_prints_plain_lines(tmp_path: Path) -> None:
    term = FakeTerminal()
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[], progress=False), 2, "sft", stream=term,
                           bar_stream=term)
    _log_steps(logger, range(1, 3))
    logger.close()
    assert logger.bar is None and term.getvalue().count("\n") == 2 and "\r" not in term.getvalue()


def test_log_every_and_eval_rows(tmp_path: Path) -> None:
    out = io.StringIO()
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[], log_every=2), 4, "grpo", stream=out)
    logger.log(0, {"eval/accuracy": 0.25}, advance=False)
    _log_steps(logger, range(1, 5))
    logger.close()
    assert [ln.split("]")[0] for ln in out.getvalue().splitlines()] == ["[step 0", "[step 2", "[step 4"]
    assert [r["step"] for r in logger.history] == [0, 1, 2, 3, 4]


def test_close_twice_is_harmless(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, LoggingConfig(), 1, "grpo", stream=io.StringIO())
    logger.log(1, {"loss/total": 1.0})
    logger.close()
    logger.close()
    assert any((tmp_path / "tensorboard").iterdir())


# ---- logging.report_to ---------------------------------------------------------------------------

def test_report_to_defaults_and_cli() -> None:
    assert LoggingConfig().report_to == ["tensorboard"]
    cfg = load_config(GRPOConfig, ["--logging.report_to", "[tensorboard, wandb]", "--logging.wandb_tags",
                                   "[a, b]", "logging.wandb_entity=me"], "raylhf.grpo")
    assert cfg is not None
    assert cfg.logging.report_to == ["tensorboard", "wandb"]
    lg = cfg.logging
    assert (lg.wandb_project, lg.wandb_entity, lg.wandb_tags) == ("raylhf", "me", ["a", "b"])
    assert build_config(GRPOConfig, overrides=[("logging.report_to", [])]).logging.report_to == []


@pytest.mark.parametrize(("report_to", "flag", "expected"), [
    (["tensorboard"], False, []),
    (["tensorboard", "wandb"], False, ["wandb"]),
    (["wandb"], True, ["tensorboard", "wandb"]),
    ([], True, ["tensorboard"]),
    ("wandb", True, ["tensorboard", "wandb"]),  # a single value is a one-item list
])
def test_tensorboard_flag_is_an_alias_folded_into_report_to(report_to: list[str] | str, flag: bool,
                                                              expected: list[str]) -> None:
    cfg = build_config(GRPOConfig, overrides=[("logging.report_to", report_to),
                                              ("logging.tensorboard", flag)])
    assert cfg.logging.report_to == expected
    assert cfg.logging.tensorboard is None  # the resolved config (--dry-run, config.yaml): report_to only


def test_report_to_rejects_unknown_and_repeated_trackers() -> None:
    from raylhf.config import ConfigError

    with pytest.raises(ConfigError, match=r"tensorboard.*wandb"):
        build_config(GRPOConfig, overrides=[("logging.report_to", ["mlflow"])])
    with pytest.raises(ConfigError, match="lists a tracker twice"):
        build_config(GRPOConfig, overrides=[("logging.report_to", ["wandb", "wandb"])])


def test_missing_wandb_is_one_clear_error_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TrackerError) as info:
        MetricsLogger(tmp_path, LoggingConfig(report_to=["tensorboard", "wandb"]), 2, "grpo",
                      stream=io.StringIO())
    msg = str(info.value)
    assert msg == WANDB_MISSING and "\n" not in msg
    assert "pip install 'raylhf[wandb]'" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []


# ---- W&B, offline --------------------------------------------------------------------------------

def use_offline_wandb(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    """Nothing leaves the machine, no API key needed, W&B's own config/cache under ``scratch``."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true",
                 "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off", "WANDB__DISABLE_STATS": "true",
                 "WANDB_CONFIG_DIR": str(scratch / "wandb-config"),
                 "WANDB_CACHE_DIR": str(scratch / "wandb-cache"),
                 "WANDB_DATA_DIR": str(scratch / "wandb-data")}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_offline_wandb(monkeypatch, tmp_path)


def read_wandb_run(run_dir: Path) -> dict[str, Any]:
    """What the one offline W&B run under ``run_dir`` recorded: run name, tags, config, and history by step.

    wandb 0.31 ships no Python reader for its transaction log ``run-<id>.wandb`` (its Go core writes
    it), so this decodes the LevelDB-log framing wandb has always used (7-byte header ``:W&B`` 0xBEE1 v0,
    32 KiB blocks of chunks with a crc32/length/type header) into wandb's own protobuf ``Record``s.
    """
    from wandb.proto import wandb_internal_pb2

    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {run_dir / 'wandb'}, found {runs}"
    (log,) = runs[0].glob("run-*.wandb")
    data = log.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0), f"{log}: not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if room < 7 or (crc, length, kind) == (0, 0, 0):  # block padding
            pos += room
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        # FULL (1) / FIRST (2) start a record, MIDDLE (3) / LAST (4) extend it
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    out: dict[str, Any] = {"history": {}, "config": {}}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["tags"] = rec.run.display_name, list(rec.run.tags)
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            row = {("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in rec.history.item}
            out["history"].setdefault(rec.history.step.num, {}).update(row)
        elif kind == "exit":
            out["complete"] = True
    return out


def read_complete_wandb_run(run_dir: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """``read_wandb_run`` once the log holds its exit record: wandb's core process writes the offline log
    asynchronously and may still be writing after ``run.finish()`` returned (seen once in a full suite run:
    the history of step 1 was not in the file yet)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        run = read_wandb_run(run_dir)
        if run.get("complete") or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_wandb_offline_run_gets_config_metrics_and_curves(tmp_path: Path, wandb_offline: None) -> None:
    run_dir = tmp_path / "grpo-demo"
    run_dir.mkdir()
    cfg = LoggingConfig(report_to=["wandb"], wandb_tags=["unit"])
    logger = MetricsLogger(run_dir, cfg, 2, "grpo", run_config={"grpo": {"num_steps": 2}},
                           stream=io.StringIO())
    logger.log(0, {"eval/accuracy": 0.25}, advance=False)
    logger.log(1, {"reward/mean": 0.5, "loss/total": 1.5})
    logger.log(2, {"reward/mean": 0.75, "loss/total": 1.25})
    logger.log(2, {"eval/accuracy": 0.5}, advance=False)
    assert plot_curves(logger.history, ["reward/mean", "eval/accuracy"], run_dir / "curves.png", "GRPO")
    logger.close()

    run = read_wandb_run(run_dir)
    assert run["name"] == "grpo-demo" and run["tags"] == ["unit"]
    assert run["config"]["grpo"] == {"num_steps": 2}
    hist = run["history"]
    assert sorted(hist) == [0, 1, 2]
    for row in logger.history:  # the same names and steps as metrics.jsonl
        for k, v in row.items():
            if k != "step":
                assert hist[row["step"]][k] == pytest.approx(v), (row["step"], k)
    assert hist[2]["curves/_type"] == "image-file"
    assert (run_dir / "wandb").is_dir() and not (tmp_path / "wandb").exists()  # dir= the run dir


# ---- curves --------------------------------------------------------------------------------------

def _lines(history: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    fig = curve_figure(history, keys, "t")
    assert fig is not None
    return {ln.get_label(): ln for ln in fig.axes[0].get_lines()}


def test_eval_at_start_and_end_is_drawn_as_points_training_curve_as_a_line() -> None:
    hist: list[dict[str, Any]] = [{"step": 0, "eval/accuracy": 0.1}]
    hist += [{"step": s, "reward/mean": s / 40} for s in range(1, 41)]
    hist += [{"step": 40, "eval/accuracy": 0.6}]
    lines = _lines(hist, ["reward/mean", "eval/accuracy", "never/logged"])
    assert set(lines) == {"reward/mean", "eval/accuracy"}
    ev, tr = lines["eval/accuracy"], lines["reward/mean"]
    assert ev.get_linestyle() == "None" and ev.get_marker() == "o"
    assert list(ev.get_xdata()) == [0, 40]
    assert tr.get_linestyle() == "-" and tr.get_marker() in (None, "None", "")
    assert list(tr.get_xdata()) == list(range(1, 41))


def test_every_n_steps_is_points_and_gaps_break_a_line() -> None:
    hist = [{"step": s, "eval/accuracy": s / 100} for s in range(0, 50, 10)]
    hist += [{"step": s, "reward/mean": 0.5} for s in [0, *range(5, 21)]]  # step 0, then 5..20
    lines = _lines(hist, ["eval/accuracy", "reward/mean"])
    assert lines["eval/accuracy"].get_linestyle() == "None" and lines["eval/accuracy"].get_marker() == "o"
    tr = lines["reward/mean"]
    assert tr.get_linestyle() == "-" and tr.get_marker() == "o"  # the lone step-0 point stays visible
    xs = list(tr.get_xdata())
    assert xs[0] == 0 and math.isnan(xs[1]) and xs[2:] == list(range(5, 21))  # not joined across 0..5


def test_short_contiguous_series_has_markers_and_nan_values_are_not_measurements(tmp_path: Path) -> None:
    hist = [{"step": 1, "loss/ce": 2.0}, {"step": 2, "loss/ce": float("nan")}, {"step": 3, "loss/ce": 1.0},
            {"step": 4, "loss/ce": 0.5}]
    ln = _lines(hist, ["loss/ce"])["loss/ce"]
    assert ln.get_marker() == "o" and ln.get_linestyle() == "-"
    assert [x for x in ln.get_xdata() if not math.isnan(x)] == [1, 3, 4]
    assert curve_style([1, 2, 3]) == {"linestyle": "-", "marker": "o", "markersize": 4}
    assert curve_style([5])["linestyle"] == "none"
    assert plot_curves(hist, ["loss/ce"], tmp_path / "c.png", "SFT") == tmp_path / "c.png"
    assert (tmp_path / "c.png").stat().st_size > 0
    assert plot_curves(hist, ["missing"], tmp_path / "d.png", "SFT") is None
    assert not (tmp_path / "d.png").exists()


# ---- a quiet start: library notices filtered at vLLM's loggers (actors/quiet.py) ---------------------------

def test_notice_filter_drops_only_listed_notices(caplog: pytest.LogCaptureFixture) -> None:
    from actors.quiet import LibraryNotices

    log = logging.getLogger("vllm.test_quiet")
    log.addFilter(LibraryNotices())
    try:
        with caplog.at_level(logging.WARNING, logger="vllm.test_quiet"):
            log.warning("%s: Failed to load weights", "RotaryEmbedding")
            log.warning("%s: Failed to load weights", "Llama3RotaryEmbedding")
            log.warning("%s: Failed to load weights", "FourierRotaryEmbedding")  # learned coefficients
            log.warning("%s: Failed to load weights", "QKVParallelLinear")
            log.warning("%s is not found in LD_PRELOAD. For best performance ...", "libtcmalloc")
            log.warning("Enforce eager set, disabling torch.compile")
            log.warning("Allocating %.1f MB of device memory", 1.0)
        assert [r.getMessage() for r in caplog.records] == [
            "FourierRotaryEmbedding: Failed to load weights", "QKVParallelLinear: Failed to load weights",
            "Allocating 1.0 MB of device memory"]
    finally:
        log.filters.clear()


def test_vllm_logging_config_carries_the_filter_and_all_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging.config

    from actors import quiet

    cfg = quiet.vllm_logging_config("WARNING")
    assert cfg["handlers"]["vllm"]["filters"] == ["raylhf_notices"]
    assert cfg["filters"]["raylhf_notices"]["()"] == "actors.quiet.LibraryNotices"
    cfg["formatters"]["vllm"] = {"format": "%(message)s"}  # vLLM's formatter class is not needed to check this
    logging.config.dictConfig({**cfg, "loggers": {"vllm.test_cfg": cfg["loggers"]["vllm"]}})
    log = logging.getLogger("vllm.test_cfg")
    assert any(isinstance(f, quiet.LibraryNotices) for h in log.handlers for f in h.filters)
    log.handlers.clear()
    monkeypatch.setenv(quiet.ENV, "all")
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    quiet.quiet_engine_start()
    assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ
