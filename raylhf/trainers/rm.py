"""`python -m raylhf.rm`: reward-model training. With no data files it runs the embedded default.

A sequence-classification head on the policy worker path (``actors/reward_trainer.py``), trained with the
Bradley-Terry loss (optional margin) on chosen/rejected pairs; held-out pair accuracy at the start, every
``rm.eval_every`` steps and at the end. The export loads in a reward actor (``reward.models``) and scores
GRPO rollouts. The conversations are tokenized as the reward actor renders them (chat template of the prompt
turns plus the reply as the assistant turn, cut on the left to ``rm.max_length``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from actors.reward_trainer import RewardModelWorker, pair_batch
from raylhf.assets import load_tokenizer
from raylhf.config import RMConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data import DataError, load_from_config, load_records
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import OfflineSpec, RowBatches, evaluate_offline, run_offline

if TYPE_CHECKING:
    from actors.group import ActorGroup
    from raylhf.data import PreferenceExample
    from raylhf.demo.tasks.rm_pairs import LabelledPair

Pair: TypeAlias = "PreferenceExample | LabelledPair"  # a pair, or a synthetic pair with its kind


@dataclass
class ScoredPair:
    """A reward-model training pair: the token ids of both conversations as the reward actor scores them, the
    margin the chosen side must win by, and (synthetic pairs) what makes the rejected reply worse."""

    chosen: list[int]
    rejected: list[int]
    margin: float
    kind: str | None = None  # what makes the rejected reply worse, when the data says (synthetic pairs)


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]], reply: str, max_length: int
                     ) -> tuple[list[int], bool]:
    """The token ids a reward actor scores for ``reply`` to ``messages`` (rewards/model.py::SequenceRewardModel):
    the chat template of the conversation with the reply as the last assistant turn, no special tokens added,
    the last ``max_length`` ids; and whether it was cut."""

    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; use a tokenizer (model.tokenizer) that ships one: "
                        "the reward actor renders conversations with it")
    text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-max_length:], len(ids) > max_length


def encode_scored_pairs(tokenizer: Any, pairs: Sequence[Pair], margins: Sequence[float], max_length: int
                 ) -> tuple[list[ScoredPair], int]:
    """Token ids of both sides of every pair; returns them and how many conversations were cut."""
    out: list[ScoredPair] = []
    cut = 0
    for pair, margin in zip(pairs, margins, strict=True):
        ex, kind = (pair.example, pair.kind) if hasattr(pair, "example") else (pair, None)
        chosen, c_cut = conversation_ids(tokenizer, ex.messages, ex.chosen, max_length)
        rejected, r_cut = conversation_ids(tokenizer, ex.messages, ex.rejected, max_length)
        cut += c_cut + r_cut
        out.append(ScoredPair(chosen, rejected, margin, kind))
    return out, cut


def column_margins(cfg: RMConfig, split: str) -> list[float]:
    """``rm.margin`` plus, with ``rm.margin_column``, that column of every row of the split's files."""

    d = cfg.data
    files = d.train_files if split == "train" else d.eval_files
    column = cfg.rm.margin_column
    values: list[float] = []
    for source in files:
        remaining = None if d.max_samples is None else d.max_samples - len(values)
        if remaining is not None and remaining <= 0:
            break
        for number, row in enumerate(load_records(source, max_samples=remaining,
                                                  split="train" if split == "train" else "test"), start=1):
            if column is None:
                values.append(cfg.rm.margin)
                continue
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"rm.margin_column={column!r} needs a number in every row, found "
                                f"{'no such column' if column not in row else repr(value)}; columns present: "
                                f"{sorted(row)}", source=source, row=number)
            values.append(cfg.rm.margin + float(value))
    return values


def _split_heldout(pairs: list[ScoredPair], fraction: float, seed: int) -> tuple[list[ScoredPair], list[ScoredPair]]:
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(pairs) * fraction))
    held = set(order[:n])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def heldout_metrics(policy: ActorGroup, pairs: list[ScoredPair], world: int) -> dict[str, float]:
    """Pair accuracy (chosen scored strictly higher), mean margin and mean Bradley-Terry loss on held-out
    pairs, plus the accuracy per pair kind when the pairs have kinds. Every rank scores an equal share."""
    import torch
    import torch.nn.functional as F

    if not pairs:
        return {}
    seqs = [torch.tensor(ids, dtype=torch.long) for p in pairs for ids in (p.chosen, p.rejected)]
    n = len(seqs)
    seqs += [seqs[-1]] * (-n % world)  # equal shares: ZeRO-3 ranks gather weights in lockstep
    scores = torch.tensor([r for part in policy.call_split("rewards", seqs) for r in part][:n])
    chosen, rejected = scores[0::2], scores[1::2]
    diff = chosen - rejected
    margin = torch.tensor([p.margin for p in pairs])
    out = {"eval/accuracy": float((diff > 0).float().mean()), "eval/margin": float(diff.mean()),
           "eval/loss": float(-F.logsigmoid(diff - margin).mean()), "eval/reward_chosen": float(chosen.mean()),
           "eval/reward_rejected": float(rejected.mean())}
    for kind in sorted({p.kind for p in pairs if p.kind}):
        idx = torch.tensor([i for i, p in enumerate(pairs) if p.kind == kind])
        out[f"eval/accuracy_{kind}"] = float((diff[idx] > 0).float().mean())
    return out


def run_rm(cfg: RMConfig, model_path: str | None = None, train: Sequence[Pair] | None = None,
           heldout: Sequence[Pair] | None = None, save_to: str | Path | None = None) -> RunResult:
    """Train a reward model; ``model_path`` / ``train`` / ``heldout`` override the config's (the default run
    passes them). Returns the run dir, the export (a ``reward.models`` path), the metrics and the held-out
    metrics before / after."""
    model_path = model_path or resolve_model_path(cfg.model)
    return run_offline(cfg, build(cfg, model_path, train, heldout), model_path, save_to)


def evaluate(cfg: RMConfig, train: Sequence[Pair] | None = None, heldout: Sequence[Pair] | None = None
             ) -> dict[str, float]:
    """`raylhf eval rm`: the held-out pair accuracy of ``model.path`` (a reward-model export) as the trainer
    computes it (the same pairs, split and seed)."""
    path = resolve_model_path(cfg.model)
    return evaluate_offline(cfg, build(cfg, path, train, heldout), path)


def build(cfg: RMConfig, model_path: str, train: Sequence[Pair] | None, heldout: Sequence[Pair] | None
          ) -> OfflineSpec:
    """The offline run of a reward model on ``train`` / ``heldout`` (else the config's files)."""
    r = cfg.rm
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    if train is None:
        train = load_from_config(cfg.data, "preference", split="train")
        train_margins = column_margins(cfg, "train")
    else:
        train_margins = [r.margin] * len(train)
    if heldout is None and cfg.data.eval_files:
        heldout = load_from_config(cfg.data, "preference", split="eval")
        heldout_margins = column_margins(cfg, "eval")
    else:
        heldout_margins = [r.margin] * len(heldout or [])
    encoded, cut = encode_scored_pairs(tokenizer, train, train_margins, r.max_length)
    held, held_cut = encode_scored_pairs(tokenizer, heldout or [], heldout_margins, r.max_length)
    if heldout is None:
        encoded, held = _split_heldout(encoded, r.eval_fraction, cfg.data.seed)
    if len(encoded) < r.batch_size:
        raise DataError(f"{len(encoded)} training pairs < rm.batch_size={r.batch_size}: give more pairs or lower "
                        "rm.batch_size")
    num_steps = r.num_steps or max(1, len(encoded) // r.batch_size * r.epochs)
    world = cfg.policy.num_workers

    def collate(rows: list[ScoredPair]) -> TrainBatch:
        return pair_batch([(p.chosen, p.rejected, p.margin) for p in rows])

    def objective_for(obj: Objective, batch: TrainBatch) -> Objective:
        return replace(obj, global_seqs=float(len(batch) // 2), global_tokens=None)  # the step's pair count

    summary = (f"{len(encoded)} train / {len(held)} held-out pairs"
               + (f", {cut + held_cut} conversations cut to rm.max_length={r.max_length}" if cut + held_cut else ""))
    return OfflineSpec(
        name="rm", num_steps=num_steps, objective=Objective(pg_coef=0.0, extra={"center_coef": r.center_coef}),
        batches=RowBatches(encoded, r.batch_size, cfg.data.shuffle, cfg.data.seed, collate),
        worker_cls=RewardModelWorker, worker_extra={"tokenizer_path": cfg.model.tokenizer or model_path},
        objective_for=objective_for,
        evaluate=(lambda policy, step: heldout_metrics(policy, held, world)) if held else None,
        eval_every=r.eval_every, curves=["loss/total", "rewards/accuracies", "eval/accuracy"], summary=summary,
    )


def report(res: RunResult) -> None:
    b, a = res.eval_before, res.eval_after
    if a:
        print(f"rm: heldout pair accuracy before={b.get('eval/accuracy', float('nan')):.3f} "
              f"after={a['eval/accuracy']:.3f}", flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    if res.checkpoint:
        print(f"reward model: {res.checkpoint} (use it in GRPO: --reward.models '{{name: rm, path: {res.checkpoint}}}')",
              flush=True)


def cli(cfg: RMConfig) -> int:
    """`python -m raylhf.rm` on the config's data files (without any: ``raylhf.demo.offline``)."""
    report(run_rm(cfg))
    return 0
