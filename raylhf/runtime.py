"""Driver-side plumbing: Ray start/connect, run directory, metrics (stdout, JSONL, TensorBoard), plots."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from raylhf.config.sections import LoggingConfig, ModelConfig, RayConfig


def cache_root() -> Path:
    return Path(os.environ.get("RAYLHF_CACHE", Path.home() / ".cache" / "raylhf"))


def resolve_model_path(model: ModelConfig) -> str:
    """model.path, or the cached tiny random model when it is null."""
    if model.path:
        return model.path
    from raylhf.assets import cached_tiny_model

    return str(cached_tiny_model(cache_root() / "models", model.tiny))


def init_ray(cfg: RayConfig, required_cpus: float) -> None:
    """Connect to ray.address / RAY_ADDRESS (e.g. under `ray job submit`), else start a local cluster.

    A local cluster gets at least ``required_cpus`` logical CPUs so that fractional actors that share a
    small machine all fit.
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": _pythonpath(), "TOKENIZERS_PARALLELISM": "false",
                        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus))
    ray.init(num_cpus=cpus, runtime_env=env, include_dashboard=False, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")


def _pythonpath() -> str:
    """Make the checkout's packages importable in workers (no install needed on the cluster)."""
    root = str(Path(__file__).resolve().parents[1])
    parts = [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))


def make_run_dir(cfg: LoggingConfig, algo: str) -> Path:
    name = cfg.run_name or f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


class MetricsLogger:
    """Per-step metrics to metrics.jsonl, TensorBoard and stdout, with a progress bar."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, total_steps: int, desc: str) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = None
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=desc, dynamic_ncols=True, file=sys.stderr)
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            post = {k.split("/")[-1]: f"{row[k]:.3g}" for k in ("reward/mean", "eval/accuracy", "loss/total",
                                                                 "time/step") if k in row}
            self.bar.set_postfix(post, refresh=False)
            if advance:
                self.bar.update(1)
        if step % self.cfg.log_every == 0:
            keys = sorted(k for k in row if k != "step")
            text = " ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys)
            _print(f"[step {step}] {text}", self.bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()


def _print(msg: str, bar: Any = None) -> None:
    if bar is not None:
        bar.write(msg, file=sys.stdout)
    else:
        print(msg, flush=True)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def plot_curves(history: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path | None:
    """A PNG with one line per metric key (steps where the key was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for k in keys:
        pts = [(r["step"], r[k]) for r in history if isinstance(r.get(k), (int, float))]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(pts) < 10 else None, label=k)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
