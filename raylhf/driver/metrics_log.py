"""The metrics of a run: stdout (a progress bar on a terminal), metrics.jsonl, TensorBoard and W&B. See docs/logging.md."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from raylhf.config.run import LoggingConfig
from raylhf.core.errors import RunError
from raylhf.driver.completions import table, to_markdown

WANDB_MISSING = (
    "logging.report_to includes 'wandb' but the wandb package is not installed: "
    "pip install 'raylhf[wandb]' (or drop 'wandb' from logging.report_to)"
)


class TrackerError(RuntimeError, RunError):
    """A tracker named in ``logging.report_to`` cannot start; the message says what to change."""


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise TrackerError(WANDB_MISSING) from None
    return wandb


def is_terminal(stream: Any) -> bool:
    """True for an interactive terminal; False for files, pipes, CI, ``ray job`` logs, closed streams."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class MetricsLogger:
    """Per-step metrics to metrics.jsonl, stdout and the trackers in ``logging.report_to``.

    Printing: when both ``stream`` (default stdout) and ``bar_stream`` (default stderr) are terminals, a
    tqdm bar with the metric lines written above it; otherwise (a file, a pipe, CI, ``ray job`` logs) one
    plain line per ``log()`` call and no bar, so a log file has no carriage-return fragments.
    Trackers: TensorBoard events under ``<run_dir>/tensorboard``; a W&B run named after the run dir,
    writing under it, with ``run_config`` (the resolved config as a dict) as its config.
    """

    def __init__(self, run_dir: Path, cfg: LoggingConfig, total_steps: int, desc: str,
                 run_config: dict[str, Any] | None = None, *, stream: TextIO | None = None,
                 bar_stream: TextIO | None = None, resume_step: int | None = None) -> None:
        """``resume_step``: continue a run resumed from that step's checkpoint: metrics.jsonl keeps its rows up
        to that step (the rows an interrupted run wrote after it are dropped) and they start ``history``."""
        wandb = import_wandb() if "wandb" in cfg.report_to else None  # fail before any file is opened
        self.cfg, self.run_dir = cfg, run_dir
        self.stream: TextIO = stream if stream is not None else sys.stdout
        bar_stream = bar_stream if bar_stream is not None else sys.stderr
        self.interactive = is_terminal(self.stream) and is_terminal(bar_stream)
        self.history: list[dict[str, Any]] = []
        self._started = time.time()
        self._closed = False
        self._wandb, self.wandb_run = wandb, None
        if wandb is not None:
            self.wandb_run = _start_wandb(wandb, run_dir, cfg, run_config)
        if resume_step is not None:
            self.history = _rows_up_to(run_dir / "metrics.jsonl", resume_step)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.tb: Any = None
        if "tensorboard" in cfg.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar: Any = None
        if cfg.progress and self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step or 0, desc=desc, dynamic_ncols=True,
                            file=bar_stream)

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and is_number(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=step)
        if self.bar is not None:
            post = {k.split("/")[-1]: f"{row[k]:.3g}" for k in ("reward/mean", "eval/accuracy", "loss/total",
                                                                 "time/step") if is_number(row.get(k))}
            self.bar.set_postfix(post, refresh=False)
            if advance:
                self.bar.update(1)
        if step % self.cfg.log_every == 0:
            self._print(format_metrics(row))

    def log_completions(self, step: int, records: list[dict[str, Any]]) -> None:
        """Sampled episodes (``raylhf.driver.completions`` records) to the trackers: a W&B table under
        ``completions``, TensorBoard text under ``completions``; nothing without a tracker (or records)."""
        if not records or self._closed:
            return
        if self.tb is not None:
            self.tb.add_text("completions", to_markdown(records), step)
        if self.wandb_run is not None:
            columns, rows = table(records)
            self.wandb_run.log({"completions": self._wandb.Table(columns=columns, data=rows)}, step=step)

    def _print(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)  # above the bar
        else:
            self.stream.write(msg + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Close the bar and the trackers; attach the run dir's curves.png (if this run wrote it) to W&B."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()
        if self.wandb_run is not None:
            curves = self.run_dir / "curves.png"
            if curves.exists() and curves.stat().st_mtime >= self._started - 1:
                last = max((r["step"] for r in self.history), default=0)
                self.wandb_run.log({"curves": self._wandb.Image(str(curves))}, step=last)
            self.wandb_run.finish()


def _rows_up_to(path: Path, step: int) -> list[dict[str, Any]]:
    """The metric rows of ``path`` with step <= ``step`` (a torn last line from a killed run is skipped)."""
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                rows.append(row)
    return rows


def _start_wandb(wandb: Any, run_dir: Path, cfg: LoggingConfig, run_config: dict[str, Any] | None) -> Any:
    """A W&B run named after the run dir, writing under it (offline runs too: WANDB_MODE=offline)."""
    try:
        return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=run_dir.name,
                          dir=str(run_dir), config=run_config or {}, tags=list(cfg.wandb_tags) or None)
    except Exception as e:
        raise TrackerError(
            f"wandb.init failed: {e}. Log in with `wandb login` (or set WANDB_API_KEY), check "
            "logging.wandb_project / logging.wandb_entity, or set WANDB_MODE=offline to log locally "
            "(then `wandb sync` the run later)"
        ) from e


def format_metrics(row: dict[str, Any]) -> str:
    """``[step N] a=1 b=0.5 ...`` (keys sorted): the one line printed per logged step."""
    keys = sorted(k for k in row if k != "step")
    text = " ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys)
    return f"[step {row['step']}] {text}"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v

