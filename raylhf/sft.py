"""`python -m raylhf.sft`: supervised fine-tuning, the degenerate case of the same driver.

One policy group, no rollout / reward / reference; the objective is only the cross-entropy term.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raylhf.config import SFTConfig, cli_entry, to_yaml


def run_sft(cfg: SFTConfig, model_path: str | None = None, examples: list | None = None,
            save_to: str | Path | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """Train; returns (checkpoint dir, metric history). ``model_path`` / ``examples`` override the config."""
    from raylhf import rl
    from raylhf.assets import load_tokenizer
    from raylhf.batch import Objective, TrainBatch
    from raylhf.data import load_from_config, tokenize_sft
    from raylhf.guard import BadStepGuard
    from raylhf.runtime import MetricsLogger, init_ray, make_run_dir, plot_curves, resolve_model_path

    s = cfg.sft
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    examples = examples if examples is not None else load_from_config(cfg.data, "sft", split="train")
    encoded = [tokenize_sft(tokenizer, ex, s.max_length, s.train_on_prompt) for ex in examples]
    encoded = [(ids, mask) for ids, mask in encoded if sum(mask) > 0]
    if len(encoded) < s.batch_size:
        raise ValueError(f"{len(encoded)} usable SFT rows (with response tokens) < sft.batch_size={s.batch_size}")
    steps_per_epoch = len(encoded) // s.batch_size
    num_steps = s.num_steps or steps_per_epoch * s.epochs
    run_dir = make_run_dir(cfg.logging, "sft")
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    print(f"[sft] run dir {run_dir}; model {model_path}; {len(encoded)} rows, {num_steps} steps", flush=True)

    # created first: a missing tracker package (wandb) fails here, before any actor starts
    logger = MetricsLogger(run_dir, cfg.logging, num_steps, "sft", run_config=cfg.model_dump(mode="json"))
    init_ray(cfg.ray, cfg.policy.num_workers * cfg.policy.num_cpus_per_worker)
    policy = rl.start_policy(cfg.policy, model_path, cfg.model.dtype, num_steps, cfg.seed, cfg.ray.placement_strategy,
                             cfg.model.trust_remote_code)
    objective = Objective(pg_coef=0.0, ce_coef=1.0)
    rng = random.Random(cfg.data.seed)
    order: list[int] = []
    ckpt = None
    bad_steps = BadStepGuard(cfg.runtime.max_bad_steps, run_dir, "sft")
    try:
        for step in range(1, num_steps + 1):
            t = time.perf_counter()
            if len(order) < s.batch_size:
                fresh = list(range(len(encoded)))
                if cfg.data.shuffle:
                    rng.shuffle(fresh)
                order += fresh
            idx, order = order[: s.batch_size], order[s.batch_size :]
            batch = TrainBatch(
                input_ids=[torch.tensor(encoded[i][0], dtype=torch.long) for i in idx],
                loss_mask=[torch.tensor(encoded[i][1], dtype=torch.float32) for i in idx],
            )
            m = rl.reduce_ranks(policy.call_split("train_step", batch, objective.with_counts(batch)))
            m["time/step"] = time.perf_counter() - t
            logger.log(step, m)
            bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
            if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < num_steps:
                policy.call("save", str(run_dir / f"checkpoint-{step}"))
        target = Path(save_to) if save_to else run_dir / "checkpoint"
        if cfg.checkpoint.save_final or save_to:
            ckpt = policy.call("save", str(target))[0]
        plot_curves(logger.history, ["loss/ce"], run_dir / "curves.png", "SFT")
    finally:
        logger.close()
        policy.shutdown()
    return ckpt, logger.history


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(SFTConfig, argv, "raylhf.sft")
    if cfg is None:
        return 0
    from raylhf.data import DataError
    from raylhf.guard import NonFiniteTrainingError
    from raylhf.runtime import TrackerError

    try:
        return _run(cfg)
    except (DataError, TrackerError, NonFiniteTrainingError) as e:  # bad data / tracker / NaN: one line
        print(f"raylhf.sft: error: {e}", file=sys.stderr)
        return 2


def _run(cfg: SFTConfig) -> int:
    if not cfg.data.train_files:
        from raylhf.demo import demo_sft_examples

        cfg_examples = demo_sft_examples(cfg.demo)
        ckpt, _ = run_sft(cfg, examples=cfg_examples)
    else:
        ckpt, _ = run_sft(cfg)
    print(f"checkpoint: {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
