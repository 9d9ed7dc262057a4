"""The demos' shared start: an SFT warm-up of the tiny model on the arithmetic demonstrations, trained once per
config and cached (``~/.cache/raylhf/demo`` or ``$RAYLHF_CACHE``; ``demo.cache_dir`` overrides).

The GRPO, PPO, online DPO, DPO and KTO demos start from it; the RM demo builds on it and the GKD demo uses it as
the teacher. See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from raylhf.config import DemoConfig, SFTAlgoConfig, SFTConfig
from raylhf.config.run import LoggingConfig, RayConfig
from raylhf.config.sections import ModelConfig, PolicyConfig
from raylhf.demo.tasks.demo_data import demo_sft_examples
from raylhf.driver.cluster import cache_root, resolve_model_path
from raylhf.trainers.sft import run_sft


class WarmupSections(Protocol):
    """The sections of a trainer config the warm-up reads (every trainer config with a ``demo`` section)."""

    model: ModelConfig
    policy: PolicyConfig
    demo: DemoConfig
    logging: LoggingConfig
    ray: RayConfig
    seed: int


def warmup_policy(cfg: WarmupSections | Any) -> str:
    """The SFT warm-up checkpoint for this demo config (trained once, then cached)."""
    sft_cfg = SFTConfig(
        model=cfg.model, policy=cfg.policy.model_copy(update={"lr": cfg.demo.sft_lr, "micro_batch_size": 32,
                                                             "num_cpus_per_worker": 2, "lr_scheduler": "cosine",
                                                             "warmup_steps": 10}),
        sft=SFTAlgoConfig(num_steps=max(1, cfg.demo.sft_steps), batch_size=32, max_length=64),
        logging=cfg.logging.model_copy(update={"run_name": None}), ray=cfg.ray, seed=cfg.seed,
    )
    examples = demo_sft_examples(cfg.demo)
    # only what shapes the weights: not logging, placement, checkpointing or the run's guards
    key_src = json.dumps({"sft": sft_cfg.model_dump(mode="json", exclude={"logging": True, "ray": True,
                                                                          "checkpoint": True, "runtime": True,
                                                                          "policy": {"num_cpus_per_worker"}}),
                          "data": [[e.messages, e.response] for e in examples]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    root = Path(cfg.demo.cache_dir) if cfg.demo.cache_dir else cache_root() / "demo"
    target = root / f"sft-warmup-{key}"
    if (target / "config.json").exists():
        print(f"[demo] using cached SFT warm-up policy {target}", flush=True)
        return str(target)
    if cfg.demo.sft_steps == 0:
        return resolve_model_path(cfg.model)
    print(f"[demo] SFT warm-up: {sft_cfg.sft.num_steps} steps on {cfg.demo.sft_examples} demonstrations", flush=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run_sft(sft_cfg, examples=examples, save_to=tmp)
    tmp.rename(target)
    return str(target)
