"""`raylhf seq_cls`: sequence classification. A classification head on the last real token of each text
(``actors/encoder.py``, head ``classifier``): cross-entropy over classes, per-label binary cross-entropy (multi
label) or MSE (regression); held-out accuracy and macro F1 (or MSE / MAE) at the start, every
``seq_cls.eval_every`` steps and at the end. The export is an HF ``*ForSequenceClassification`` with its task
card; ``raylhf infer`` scores texts with it. docs/encoders.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raylhf.algos.retrieval import GroupLoss, classification_loss, classification_metrics, label_tensor
from raylhf.assets import load_tokenizer
from raylhf.config.encoders import SeqClsConfig
from raylhf.data import DataError
from raylhf.data.retrieval import LabelledText, TaskCard, encode_side, load_labelled_texts
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.encoders import Group, before_after, encode_outputs, encoder_spec, split_heldout
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import evaluate_offline, run_offline


def model_problem(model_path: str) -> tuple[str | None, int | None]:
    """(problem_type, num_labels) a classifier checkpoint declares, (None, None) for a causal LM."""
    from transformers import AutoConfig  # in-function: transformers is heavy and only needed here

    hf = AutoConfig.from_pretrained(model_path)
    if not any(a.endswith("ForSequenceClassification") for a in hf.architectures or []):
        return None, None
    return getattr(hf, "problem_type", None), int(hf.num_labels)


def resolve_labels(cfg: SeqClsConfig, rows: Sequence[LabelledText], model_path: str
                   ) -> tuple[str, int, list[str] | None]:
    """(problem_type, num_labels, class names or None): the config's, else the model's, else the labels'."""
    declared_type, declared_n = model_problem(model_path)
    problem = cfg.seq_cls.problem_type
    if problem == "auto":
        first = rows[0].label
        problem = declared_type or ("multi_label_classification" if isinstance(first, list) else
                                    "regression" if isinstance(first, float) else "single_label_classification")
    card = TaskCard.load(model_path)
    names = (card.labels if card else None) or sorted({r.label for r in rows if isinstance(r.label, str)}) or None
    if problem == "regression":
        n = 1
    elif names:
        n = len(names)
    else:
        ids = [v for r in rows for v in (r.label if isinstance(r.label, list) else [r.label])]
        n = int(max(ids)) + 1
    return problem, cfg.seq_cls.num_labels or declared_n or n, names


def label_of(row: LabelledText, problem: str, num_labels: int, names: list[str] | None, where: str) -> Any:
    """A row's label as the loss takes it: a class id, a multi-hot list, or a float; bad labels name the row."""
    v = row.label
    if problem == "regression":
        if isinstance(v, (list, str)):
            raise DataError(f"{where}: regression needs a number label, got {v!r}")
        return float(v)
    if problem == "multi_label_classification":
        ids = v if isinstance(v, list) else [v]
        if any(not float(i).is_integer() or not 0 <= i < num_labels for i in ids):
            raise DataError(f"{where}: multi-label labels are class ids in [0, {num_labels}), got {v!r}")
        return [1.0 if k in ids else 0.0 for k in range(num_labels)]
    if isinstance(v, str):
        if not names or v not in names:
            raise DataError(f"{where}: label {v!r} is not one of the training labels {names}")
        return names.index(v)
    if isinstance(v, list) or not float(v).is_integer() or not 0 <= v < num_labels:
        raise DataError(f"{where}: a single-label label is a class id in [0, {num_labels}) or a class name, "
                        f"got {v!r}; set seq_cls.problem_type for multi-label or regression data")
    return int(v)


def heldout_metrics(policy: Any, texts: list[Group], problem: str, world: int) -> dict[str, float]:
    """Accuracy and macro F1 (or MSE / MAE) and the loss on the held-out texts."""
    if not texts:
        return {}
    logits = encode_outputs(policy, [g.seqs[0] for g in texts], world)
    y = label_tensor([g.labels[0] for g in texts if g.labels], problem)  # type: ignore[arg-type]
    out = {f"eval/{k}": v for k, v in classification_metrics(logits, y, problem).items()}  # type: ignore[arg-type]
    out["eval/loss"] = float(classification_loss(logits, y, problem))  # type: ignore[arg-type]
    return out


def build(cfg: SeqClsConfig, model_path: str, train: Sequence[LabelledText] | None,
          heldout: Sequence[LabelledText] | None) -> Any:
    s = cfg.seq_cls
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    if train is None:
        train = load_labelled_texts(cfg.data.train_files, columns=cfg.data.columns, max_samples=cfg.data.max_samples,
                                    split="train")
    if heldout is None and cfg.data.eval_files:
        heldout = load_labelled_texts(cfg.data.eval_files, columns=cfg.data.columns, split="test")
    if heldout is None:
        train, heldout = split_heldout(train, s.eval_fraction, cfg.data.seed)
    problem, n, names = resolve_labels(cfg, train, model_path)

    def groups(rows: Sequence[LabelledText], split: str) -> list[Group]:
        return [Group([encode_side(tokenizer, r.messages, s.max_length)],
                      [label_of(r, problem, n, names, f"{split} row {i}")]) for i, r in enumerate(rows, start=1)]

    train_g, held_g = groups(train, "training"), groups(heldout, "held-out")
    world = cfg.policy.num_workers
    card = {"task": "seq_cls", "max_length": s.max_length, "problem_type": problem, "labels": names}
    worker = {"head": "classifier", "num_labels": n, "problem_type": problem, "card": card,
              "loss": GroupLoss("seq_cls", problem_type=problem)}  # type: ignore[arg-type]
    summary = f"{len(train_g)} train / {len(held_g)} held-out texts, {problem}, {n} labels"
    curves = ["loss/total", "accuracy" if problem != "regression" else "mse",
              "eval/accuracy" if problem != "regression" else "eval/mse"]
    return encoder_spec(cfg, "seq_cls", s, train_g, worker,
                        (lambda policy, step: heldout_metrics(policy, held_g, problem, world)) if held_g else None,
                        curves, summary)


def run_seq_cls(cfg: SeqClsConfig, model_path: str | None = None, train: Sequence[LabelledText] | None = None,
                heldout: Sequence[LabelledText] | None = None, save_to: str | Path | None = None) -> RunResult:
    """Train a classifier; ``train`` / ``heldout`` override the config's files (the default run passes them)."""
    path = model_path or resolve_model_path(cfg.model)
    return run_offline(cfg, build(cfg, path, train, heldout), path, save_to)


def evaluate(cfg: SeqClsConfig, train: Sequence[LabelledText] | None = None,
             heldout: Sequence[LabelledText] | None = None) -> dict[str, float]:
    """`raylhf eval seq_cls`: the held-out metrics of ``model.path`` as the trainer computes them (the same rows,
    split and seed; the labels as the checkpoint's task card names them)."""
    path = resolve_model_path(cfg.model)
    return evaluate_offline(cfg, build(cfg, path, train, heldout), path)


def report(res: RunResult) -> None:
    key = "eval/mse" if "eval/mse" in res.eval_after else "eval/accuracy"
    print(f"seq_cls: held-out {key.removeprefix('eval/')} {before_after(res, key)}"
          + (f", macro F1 {before_after(res, 'eval/f1')}" if "eval/f1" in res.eval_after else ""), flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    if res.checkpoint:
        print(f"classifier: {res.checkpoint} (score texts: raylhf infer --model {res.checkpoint} --input FILE)",
              flush=True)


def cli(cfg: SeqClsConfig) -> int:
    report(run_seq_cls(cfg))
    return 0
