"""Driver-side plumbing: Ray start/connect, run dir, metrics (stdout, JSONL, TensorBoard, W&B), plots."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from actors.group import PhaseTimeoutError, set_cluster_autoscaling
from raylhf.assets import cached_tiny_model
from raylhf.config import cli_entry, to_yaml
from raylhf.config.run import LoggingConfig, RayConfig
from raylhf.config.sections import ModelConfig
from raylhf.core import checkpoint as ckpts
from raylhf.core.checkpoint import ResumeError
from raylhf.core.errors import RunError
from raylhf.core.guard import NonFiniteTrainingError
from raylhf.data import DataError
from raylhf.driver.phases import PolicyRankDied
from raylhf.plugins import registry


def cache_root() -> Path:
    return Path(os.environ.get("RAYLHF_CACHE", Path.home() / ".cache" / "raylhf"))


def resolve_model_path(model: ModelConfig) -> str:
    """model.path, or the cached tiny random model when it is null."""
    if model.path:
        return model.path

    return str(cached_tiny_model(cache_root() / "models", model.tiny))


def init_ray(cfg: RayConfig, required_cpus: float) -> None:
    """Connect to ray.address / RAY_ADDRESS (e.g. under `ray job submit`), else start a local cluster.

    A local cluster gets at least ``required_cpus`` logical CPUs so that fractional actors that share a
    small machine all fit. ``ray.autoscaling`` is recorded for the cluster (see ``actors.group``): a local
    cluster started here never grows, so a group that cannot fit it fails at once instead of waiting.
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": _pythonpath(), "TOKENIZERS_PARALLELISM": "false",
                        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
    if os.environ.get("RAYLHF_FAULT_INJECT"):  # the recovery tests' fault injection (actors/faults.py)
        env["env_vars"]["RAYLHF_FAULT_INJECT"] = os.environ["RAYLHF_FAULT_INJECT"]
    if not sys.stdout.isatty():  # a log file: no carriage-return bars from HF loaders, no colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env["env_vars"]["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        set_cluster_autoscaling(cfg.autoscaling, started_here=False)
        return
    cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus))
    ray.init(num_cpus=cpus, runtime_env=env, include_dashboard=False, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")
    set_cluster_autoscaling(cfg.autoscaling, started_here=True)


def _pythonpath() -> str:
    """Make the checkout's packages importable in workers (no install needed on the cluster)."""
    root = str(Path(__file__).resolve().parents[2])
    parts = [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))


def make_run_dir(cfg: LoggingConfig, algo: str) -> Path:
    name = cfg.run_name or f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


WANDB_MISSING = (
    "logging.report_to includes 'wandb' but the wandb package is not installed: "
    "pip install 'raylhf[wandb]' (or drop 'wandb' from logging.report_to)"
)


def open_run(cfg: Any, name: str, total_steps: int, describe: str) -> tuple[Path, Path | None, dict[str, Any],
                                                                          MetricsLogger]:
    """The run dir of a trainer ``name`` with its metrics logger: a new one, or the one of the checkpoint
    ``checkpoint.resume`` names (then the logger keeps the metric rows up to its step). Writes the config
    (``config.resumed.yaml`` on resume) and prints the start line ``[name] run dir ...; <describe>``.
    Returns (run dir, checkpoint resumed from or None, its trainer state, logger)."""

    registry.activate(registry.config_plugins(cfg), replace=True)  # here and in every actor started after this
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


def run_main(prog: str, config_cls: type, argv: Any, run: Any) -> int:
    """An entry module's ``main``: parse the config (``--help``, ``--dry-run``, one-line config errors), call
    ``run(cfg)``, and turn the run-ending errors a user can act on (bad data, a tracker, NaN steps, a resume
    path, a dead policy / critic rank, the watchdog) into one line on stderr and exit code 2."""

    cfg = cli_entry(config_cls, argv, prog)
    if cfg is None:
        return 0

    try:
        return int(run(cfg) or 0)
    except (DataError, TrackerError, NonFiniteTrainingError, PhaseTimeoutError, ResumeError, PolicyRankDied) as e:
        return cli_error(prog, e)


def cli_error(prog: str, e: BaseException) -> int:
    """Print a run-ending error for the command line (exit code 2). A watchdog report was printed in full when
    it fired; here only its first line, pointing at it."""

    text = str(e)
    if isinstance(e, PhaseTimeoutError):
        text = text.splitlines()[0] + " (the watchdog report with the stacks is printed above)"
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


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
        scalars = {k: v for k, v in row.items() if k != "step" and _is_number(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=step)
        if self.bar is not None:
            post = {k.split("/")[-1]: f"{row[k]:.3g}" for k in ("reward/mean", "eval/accuracy", "loss/total",
                                                                 "time/step") if _is_number(row.get(k))}
            self.bar.set_postfix(post, refresh=False)
            if advance:
                self.bar.update(1)
        if step % self.cfg.log_every == 0:
            self._print(format_metrics(row))

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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def curve_style(steps: list[int]) -> dict[str, Any]:
    """How to draw a series measured at ``steps`` (sorted, distinct).

    Only consecutive steps are joined by a line; a series whose points are all isolated (e.g. eval at
    step 0 and at the last step, or every N > 1 steps) is drawn as points only. Markers whenever there
    are few points or any isolated point (which a plain line would not show).
    """
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    joined = 1 in gaps
    # a point with no neighbour one step away on either side
    lonely = any((i == 0 or gaps[i - 1] > 1) and (i == len(gaps) or gaps[i] > 1) for i in range(len(steps)))
    few = len(steps) < 10
    return {"linestyle": "-" if joined else "none",
            "marker": "o" if few or lonely else None,
            "markersize": 4 if few or not joined else 2.5}


def curve_figure(history: list[dict[str, Any]], keys: list[str], title: str) -> Any:
    """A matplotlib Figure with one series per metric key (the steps where it was measured), or None."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    drawn = False
    for k in keys:
        by_step = {int(r["step"]): float(r[k]) for r in history
                   if _is_number(r.get(k)) and math.isfinite(r[k])}
        if not by_step:
            continue
        steps = sorted(by_step)
        style = curve_style(steps)
        xs: list[float] = []
        ys: list[float] = []
        for i, s in enumerate(steps):
            if i and s - steps[i - 1] > 1 and style["linestyle"] != "none":  # break the line at a gap (NaN)
                xs.append(math.nan)
                ys.append(math.nan)
            xs.append(s)
            ys.append(by_step[s])
        ax.plot(xs, ys, label=k, **style)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path | None:
    """A PNG with one series per metric key (see ``curve_figure``); None when no key was logged."""
    fig = curve_figure(history, keys, title)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    return path
