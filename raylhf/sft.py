"""`python -m raylhf.sft`: supervised fine-tuning, the degenerate case of the same driver.

One policy group, no rollout / reward / reference; the objective is only the cross-entropy term.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raylhf.config import SFTConfig, cli_entry, to_yaml


def run_sft(cfg: SFTConfig, model_path: str | None = None, examples: list | None = None,
            save_to: str | Path | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """Train; returns (checkpoint dir, metric history). ``model_path`` / ``examples`` override the config."""
    from actors.group import WorkerError
    from raylhf import checkpoint as ckpts
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
    resume_from = ckpts.resolve_resume(cfg.checkpoint.resume, Path(cfg.logging.run_dir), cfg.logging.run_name, "sft")
    state = ckpts.read_state(resume_from) if resume_from else {}
    start_step = int(state.get("step", 0))
    run_dir = ckpts.run_dir_of(resume_from) if resume_from else make_run_dir(cfg.logging, "sft")
    (run_dir / ("config.resumed.yaml" if resume_from else "config.yaml")).write_text(to_yaml(cfg))
    print(f"[sft] run dir {run_dir}; model {model_path}; {len(encoded)} rows, {num_steps} steps"
          + (f"; resuming after step {start_step} from {resume_from}" if resume_from else ""), flush=True)

    # created first: a missing tracker package (wandb) fails here, before any actor starts
    logger = MetricsLogger(run_dir, cfg.logging, num_steps, "sft", run_config=cfg.model_dump(mode="json"),
                           resume_step=start_step if resume_from else None)
    init_ray(cfg.ray, cfg.policy.num_workers * cfg.policy.num_cpus_per_worker)
    policy = rl.start_policy(cfg.policy, model_path, cfg.model.dtype, num_steps, cfg.seed, cfg.ray.placement_strategy,
                             cfg.model.trust_remote_code, call_timeout_s=cfg.runtime.phase_timeout_s or None)
    objective = Objective(pg_coef=0.0, ce_coef=1.0)
    rows = RowOrder(len(encoded), cfg.data.shuffle, cfg.data.seed)
    ckpt = None
    last_ckpt: Path | None = resume_from
    bad_steps = BadStepGuard(cfg.runtime.max_bad_steps, run_dir, "sft")
    try:
        if resume_from:
            ckpts.restore(policy, resume_from)
            rows.load_state_dict(state["data"])
            bad_steps.in_a_row = int(state.get("bad_steps_in_a_row", 0))
            ckpts.load_driver_rng(resume_from)
        for step in range(start_step + 1, num_steps + 1):
            t = time.perf_counter()
            idx = rows.take(s.batch_size)
            batch = TrainBatch(
                input_ids=[torch.tensor(encoded[i][0], dtype=torch.long) for i in idx],
                loss_mask=[torch.tensor(encoded[i][1], dtype=torch.float32) for i in idx],
            )
            try:
                m = rl.reduce_ranks(policy.call_split("train_step", batch, objective.with_counts(batch)))
            except WorkerError as e:
                if e.died:
                    raise rl.PolicyRankDied.from_error(e, last_ckpt) from e
                raise
            m["time/step"] = time.perf_counter() - t
            logger.log(step, m)
            bad_steps.check(step, m, batch)  # a skipped update: batch saved; too many in a row: raises
            if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < num_steps:
                last_ckpt = ckpts.save(policy, run_dir, step, {"data": rows.state_dict(),
                                                               "bad_steps_in_a_row": bad_steps.in_a_row},
                                       cfg.checkpoint.keep_last, name="sft")
        target = Path(save_to) if save_to else run_dir / "checkpoint"
        if cfg.checkpoint.save_final or save_to:
            ckpt = policy.call("save", str(target))[0]
        plot_curves(logger.history, ["loss/ce"], run_dir / "curves.png", "SFT")
    finally:
        logger.close()
        policy.shutdown()
    return ckpt, logger.history


class RowOrder:
    """Row indices in batches; each pass over the rows in a fresh shuffle, a batch may span two passes.
    ``state_dict`` makes the position and the shuffle state part of a checkpoint."""

    def __init__(self, num_rows: int, shuffle: bool, seed: int) -> None:
        self.num_rows, self.shuffle = num_rows, shuffle
        self.rng = random.Random(seed)
        self.pending: list[int] = []

    def take(self, n: int) -> list[int]:
        while len(self.pending) < n:
            fresh = list(range(self.num_rows))
            if self.shuffle:
                self.rng.shuffle(fresh)
            self.pending += fresh
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"pending": list(self.pending), "num_rows": self.num_rows, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(f"the checkpoint's data order covers {state['num_rows']} rows, this run has "
                             f"{self.num_rows}: resume with the same data files and sft.max_length")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.pending = list(state["pending"])


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(SFTConfig, argv, "raylhf.sft")
    if cfg is None:
        return 0
    from actors.group import PhaseTimeoutError
    from raylhf.checkpoint import ResumeError
    from raylhf.data import DataError
    from raylhf.guard import NonFiniteTrainingError
    from raylhf.rl import PolicyRankDied
    from raylhf.runtime import TrackerError, cli_error

    try:
        return _run(cfg)
    except (DataError, TrackerError, NonFiniteTrainingError, PhaseTimeoutError, ResumeError,
            PolicyRankDied) as e:  # one line (the watchdog printed its report)
        return cli_error("raylhf.sft", e)


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
