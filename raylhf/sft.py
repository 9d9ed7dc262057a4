"""`python -m raylhf.sft`: supervised fine-tuning, the degenerate case of the same driver.

One policy group, no rollout / reward / reference; the objective is only the cross-entropy term.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raylhf.config import SFTConfig, cli_entry


def run_sft(cfg: SFTConfig, model_path: str | None = None, examples: list | None = None,
            save_to: str | Path | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """Train; returns (checkpoint dir, metric history). ``model_path`` / ``examples`` override the config."""
    from raylhf.assets import load_tokenizer
    from raylhf.batch import Objective, TrainBatch
    from raylhf.data import load_from_config, tokenize_sft
    from raylhf.offline import OfflineSpec, RowBatches, run_offline
    from raylhf.runtime import resolve_model_path

    s = cfg.sft
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    examples = examples if examples is not None else load_from_config(cfg.data, "sft", split="train")
    encoded = [tokenize_sft(tokenizer, ex, s.max_length, s.train_on_prompt) for ex in examples]
    encoded = [(ids, mask) for ids, mask in encoded if sum(mask) > 0]
    if len(encoded) < s.batch_size:
        raise ValueError(f"{len(encoded)} usable SFT rows (with response tokens) < sft.batch_size={s.batch_size}")
    num_steps = s.num_steps or len(encoded) // s.batch_size * s.epochs

    def collate(rows: list[tuple[list[int], list[int]]]) -> TrainBatch:
        return TrainBatch(input_ids=[torch.tensor(ids, dtype=torch.long) for ids, _ in rows],
                          loss_mask=[torch.tensor(mask, dtype=torch.float32) for _, mask in rows])

    spec = OfflineSpec(
        name="sft", num_steps=num_steps, objective=Objective(pg_coef=0.0, ce_coef=1.0),
        batches=RowBatches(encoded, s.batch_size, cfg.data.shuffle, cfg.data.seed, collate),
        curves=["loss/ce"], summary=f"{len(encoded)} rows",
    )
    res = run_offline(cfg, spec, model_path, save_to)
    return res.checkpoint, res.history


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
        from raylhf.tasks.demo_data import demo_sft_examples

        cfg_examples = demo_sft_examples(cfg.demo)
        ckpt, _ = run_sft(cfg, examples=cfg_examples)
    else:
        ckpt, _ = run_sft(cfg)
    print(f"checkpoint: {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
