"""`python -m raylhf.sft`: supervised fine-tuning, the degenerate case of the same driver.

One policy group, no rollout / reward / reference; the objective is only the cross-entropy term, weighted per
token by the ``sft.loss_scale`` strategy (``raylhf/data/loss_scale.py``: every assistant reply by default, only the
last one, or every token; a message's ``"loss": true/false`` overrides its turn). ``policy.tuner`` picks full
fine-tuning or LoRA. A held-out split (``data.eval_files``, or ``sft.eval_fraction`` of the training rows) is
scored as ``eval/loss`` at step 0, every ``sft.eval_every`` steps and at the end, with the ``sft.metrics``
(``raylhf/algos/text_metrics.py``: ``acc``, ``nlg``, a plugin's) as ``eval/<key>``. With no data files the run
uses generated two-turn arithmetic chats (``raylhf/demo/tasks/chat_data.py``) and their held-out set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from actors.sft_worker import SFTWorker
from raylhf.algos import text_metrics as eval_metrics
from raylhf.assets import load_tokenizer
from raylhf.config import SFTConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data import DataError, SFTExample, load_from_config, tokenize_sft
from raylhf.data.loss_scale import get_loss_scale
from raylhf.driver import phases
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import OfflineSpec, RowBatches, evaluate_offline, run_offline

SFTRow = tuple[list[int], list[float]]  # (input_ids, per-token loss weights)


def run_sft(cfg: SFTConfig, model_path: str | None = None, examples: list[SFTExample] | None = None,
            save_to: str | Path | None = None, eval_examples: list[SFTExample] | None = None,
            ) -> RunResult:
    """Train; returns the run's result (``checkpoint``: the HF export). ``model_path`` / ``examples`` / ``eval_examples``
    override the config (``model.path``, ``data.train_files``, ``data.eval_files`` / ``sft.eval_fraction``)."""
    model_path = model_path or resolve_model_path(cfg.model)
    return run_offline(cfg, build(cfg, model_path, examples, eval_examples), model_path, save_to)


def evaluate(cfg: SFTConfig, train: list[SFTExample] | None = None, heldout: list[SFTExample] | None = None
             ) -> dict[str, float]:
    """`raylhf eval sft`: the held-out loss (and ``sft.metrics``) of ``model.path`` as the trainer computes them."""
    path = resolve_model_path(cfg.model)
    return evaluate_offline(cfg, build(cfg, path, train, heldout), path)


def build(cfg: SFTConfig, model_path: str, examples: list[SFTExample] | None,
          eval_examples: list[SFTExample] | None) -> OfflineSpec:
    """The offline run of SFT on ``examples`` / ``eval_examples`` (else the config's files)."""
    s = cfg.sft
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    strategy = get_loss_scale("all" if s.train_on_prompt else s.loss_scale)
    examples = examples if examples is not None else load_from_config(cfg.data, "sft", split="train")
    rows, dropped = encode_examples(tokenizer, examples, s.max_length, strategy, "training")
    if eval_examples is None and cfg.data.eval_files:
        eval_examples = load_from_config(cfg.data, "sft", split="eval")
    if eval_examples is not None:
        eval_rows, _ = encode_examples(tokenizer, eval_examples, s.max_length, strategy, "held-out")
        if not eval_rows:
            raise DataError("no held-out row has a trained token (data.eval_files): check the files, "
                            "sft.max_length and sft.loss_scale")
    else:
        rows, eval_rows = split_rows(rows, s.eval_fraction, cfg.data.seed)
    if len(rows) < s.batch_size:
        raise DataError(f"{len(rows)} usable SFT rows (with trained tokens) < sft.batch_size={s.batch_size}: "
                        "give more data or lower sft.batch_size")
    num_steps = s.num_steps or len(rows) // s.batch_size * s.epochs
    tuner = cfg.policy.tuner
    return OfflineSpec(
        name="sft", num_steps=num_steps, objective=Objective(pg_coef=0.0, ce_coef=1.0),
        **sft_loss_worker(s.loss),
        batches=RowBatches(rows, s.batch_size, cfg.data.shuffle, cfg.data.seed, collate),
        evaluate=eval_loss_fn(eval_rows, s.eval_batch_size, cfg.policy.num_workers, s.metrics, tokenizer)
        if eval_rows else None,
        eval_every=s.eval_every, curves=["loss/ce", "eval/loss"],
        summary=f"{len(rows)} rows" + (f" ({dropped} without trained tokens left out)" if dropped else "")
        + f", {len(eval_rows)} held out, loss_scale {'all' if s.train_on_prompt else s.loss_scale}, tuner {tuner.type}"
        + (f" (r={tuner.lora_rank}, alpha={tuner.lora_alpha:g})" if tuner.type == "lora" else "")
        + (f", loss {s.loss}" if s.loss != "default" else ""),
    )


def sft_loss_worker(loss: str) -> dict[str, Any]:
    """``OfflineSpec`` worker fields for ``sft.loss``: none for ``default`` (the PolicyWorker's own weighted
    cross-entropy), else the SFTWorker that calls the registered loss function (``raylhf/algos/sft_losses.py``)."""
    if loss == "default":
        return {}

    return {"worker_cls": SFTWorker, "worker_extra": {"sft_loss": loss}}


def encode_examples(tokenizer: Any, examples: Sequence[SFTExample], max_length: int, strategy: Any,
                    what: str = "training") -> tuple[list[SFTRow], int]:
    """Tokenize ``examples`` with per-token weights; returns the rows with at least one trained token and how
    many were left out (every trained token cut by ``sft.max_length``, or nothing to train on)."""

    rows: list[SFTRow] = []
    for i, ex in enumerate(examples, start=1):
        try:
            rows.append(tokenize_sft(tokenizer, ex, max_length, loss_scale=strategy))
        except DataError as e:
            raise DataError(e.problem, source=f"{what} data", row=i, unit="example") from None
    kept = [r for r in rows if any(w > 0 for w in r[1])]
    return kept, len(rows) - len(kept)


def split_rows(rows: list[SFTRow], fraction: float, seed: int) -> tuple[list[SFTRow], list[SFTRow]]:
    """(training rows, held-out rows): a seeded draw of ``ceil(fraction * n)`` rows (none for fraction 0);
    both keep the original order."""
    if not fraction:
        return rows, []
    n_eval = min(len(rows) - 1, max(1, math.ceil(fraction * len(rows) - 1e-9)))
    held = set(random.Random(seed).sample(range(len(rows)), n_eval))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def collate(rows: list[SFTRow]) -> TrainBatch:
    """A TrainBatch: ``loss_mask`` marks the tokens with weight > 0; ``ce_weights`` carries the weights when
    some are not 0/1 (the objective then computes ``sum(w * -log p) / trained tokens``)."""
    weights = [torch.tensor(w, dtype=torch.float32) for _, w in rows]
    binary = all(bool(((w == 0) | (w == 1)).all()) for w in weights)
    return TrainBatch(input_ids=[torch.tensor(ids, dtype=torch.long) for ids, _ in rows],
                      loss_mask=[(w > 0).float() for w in weights], ce_weights=None if binary else weights)


def eval_loss_fn(rows: list[SFTRow], batch_size: int, world: int, metrics: Sequence[str] = (),
                 tokenizer: Any = None) -> Callable[[Any, int], dict[str, float]]:
    """``OfflineSpec.evaluate`` for the held-out rows: ``eval/loss`` is the weighted NLL per trained token over
    all of them (the training objective, no update), computed in calls of ``batch_size`` rows; a call's rows
    are padded with fully masked rows to a multiple of the rank count (they add no tokens). ``metrics``
    (``sft.metrics``, ``raylhf/algos/text_metrics.py``) add ``eval/<key>``: every rank computes the predictions of its
    shard of each call, the driver joins them in row order (fillers dropped) and runs the compute functions."""

    objective = Objective(pg_coef=0.0, ce_coef=1.0).with_counts(collate(rows))
    filler: SFTRow = (rows[0][0][:2], [0.0] * len(rows[0][0][:2]))
    request = eval_metrics.metric_request(metrics) if metrics else None
    if request and request["generate"] and not eval_metrics.generation_rows(rows):
        raise DataError(f"sft.metrics {list(metrics)} generate replies, but no held-out row has a prompt before its "
                        "last trained reply (sft.loss_scale=all / train_on_prompt trains every token)")

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    def evaluate(policy: Any, step: int) -> dict[str, float]:
        loss = 0.0
        parts: list[dict[str, Any]] = []
        for start in range(0, len(rows), batch_size):
            real = rows[start:start + batch_size]
            chunk = collate(real + [filler] * (-len(real) % world))
            m = phases.reduce_ranks(policy.call_split("eval_loss", chunk, objective))
            loss += m["loss/ce"]
            if request is not None:
                out = eval_metrics.merge_outputs(policy.call_split("eval_predictions", chunk, request))
                parts.append(eval_metrics.trim_outputs(out, len(real)))
        result = {"eval/loss": loss}
        if request is not None:
            result.update(eval_metrics.compute_metrics(metrics, rows, eval_metrics.merge_outputs(parts),
                                                       decode if tokenizer is not None else None))
        return result

    return evaluate


def cli(cfg: SFTConfig) -> int:
    """`python -m raylhf.sft` on the config's data files (without any: ``raylhf.demo.offline``)."""
    res = run_sft(cfg)
    report(res.checkpoint, res.history)
    return 0


def report(ckpt: str | None, history: list[dict[str, Any]]) -> None:
    """The end-of-run lines: train loss first -> last step, eval loss before -> after, the checkpoint."""
    evals = [r["eval/loss"] for r in history if "eval/loss" in r]
    train_loss = [r["loss/ce"] for r in history if "loss/ce" in r]
    if train_loss:
        print(f"sft: train loss/ce first step {train_loss[0]:.4f} -> last step {train_loss[-1]:.4f}"
              + (f"; eval/loss before {evals[0]:.4f} -> after {evals[-1]:.4f}" if len(evals) >= 2 else ""))
    print(f"checkpoint: {ckpt}")
