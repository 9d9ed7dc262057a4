"""Where a run executes: Ray started or joined (sized to the runs actors), the checkout importable in the
workers, the model path (a tiny random model when none is given) and the cache. See docs/cluster.md."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from actors.cluster import set_cluster_autoscaling
from raylhf.assets import cached_tiny_model
from raylhf.config.run import RayConfig
from raylhf.config.sections import ModelConfig


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
    env = {"env_vars": {"PYTHONPATH": _pythonpath(), "TOKENIZERS_PARALLELISM": "false"}}
    # the tests' fault injection (actors/faults.py) and logging.library_warnings (actors/quiet.py)
    for fault in ("RAYLHF_FAULT_INJECT", "RAYLHF_FAULT_SYNC_SKIP", "RAYLHF_FAULT_LOSE_WEIGHTS_IN_SLEEP",
                  "RAYLHF_FAULT_HOLD", "RAYLHF_LIBRARY_WARNINGS"):
        if os.environ.get(fault):
            env["env_vars"][fault] = os.environ[fault]
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
