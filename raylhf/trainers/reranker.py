"""`raylhf reranker` and `raylhf generative_reranker`: query-document relevance. A group is a query's positive
document and ``reranker.num_negatives`` negatives; the losses (``raylhf/algos/retrieval.py``) are ``pointwise``
(binary cross-entropy of each relevance logit) and ``listwise`` (softmax cross-entropy of the positive within its
group). The reranker reads its logit from a one-output classification head on the conversation query + document
(``actors/encoder.py``, head ``classifier``); the generative reranker from the causal LM itself, as
``logit(yes) - logit(no)`` of the reply to a prompt template (head ``yes_no``; LoRA and the other tuners apply).
Held-out top-1 accuracy, MRR and pointwise accuracy. docs/encoders.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raylhf.algos.retrieval import GroupLoss, rerank_eval
from raylhf.assets import load_tokenizer
from raylhf.config.encoders import GenerativeRerankerConfig, RerankerConfig
from raylhf.data import DataError, Messages
from raylhf.data.retrieval import (
    RetrievalRow,
    encode_generative,
    encode_pair,
    load_retrieval_rows,
    single_token_id,
)
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.encoders import Group, before_after, encode_outputs, encoder_spec, split_heldout
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import OfflineSpec, evaluate_offline, run_offline

Encode = Callable[[Messages, Messages], list[int]]  # (query, document) -> token ids


def rerank_groups(rows: Sequence[RetrievalRow], k: int, encode: Encode, seed: int) -> list[Group]:
    """``[positive, k negatives]`` per positive of every row: a seeded draw of k of the row's negatives; a row
    with fewer borrows positives of other rows (other queries)."""
    if len(rows) < 2 and any(len(r.negatives) < k for r in rows):
        raise DataError(f"a row has fewer than reranker.num_negatives={k} negatives and there is no other row to "
                        "borrow documents from")
    rng = random.Random(seed)
    out: list[Group] = []
    for i, row in enumerate(rows):
        for pos in row.positives:
            negs = rng.sample(row.negatives, min(k, len(row.negatives)))
            while len(negs) < k:
                j = rng.randrange(len(rows))
                if j != i and rows[j].query != row.query:
                    negs.append(rng.choice(rows[j].positives))
            docs = [pos, *negs]
            out.append(Group([encode(row.query, d) for d in docs], [1.0] + [0.0] * k))
    return out


def rerank_metrics(policy: Any, groups: list[Group], world: int) -> dict[str, float]:
    if not groups:
        return {}
    scores = encode_outputs(policy, [s for g in groups for s in g.seqs], world)[:, 0]
    return {f"eval/{k}": v for k, v in rerank_eval(scores, len(groups[0].seqs)).items()}


def _rows(cfg: Any, train: Sequence[RetrievalRow] | None, heldout: Sequence[RetrievalRow] | None, kind: str
          ) -> tuple[list[RetrievalRow], list[RetrievalRow]]:
    d, r = cfg.data, cfg.reranker
    if train is None:
        train = load_retrieval_rows(d.train_files, columns=d.columns, max_samples=d.max_samples, split="train",
                                    kind=kind)
    if heldout is None and d.eval_files:
        heldout = load_retrieval_rows(d.eval_files, columns=d.columns, split="test", kind=kind)
    if heldout is None:
        return split_heldout(train, r.eval_fraction, d.seed)
    return list(train), list(heldout)


def build(cfg: RerankerConfig | GenerativeRerankerConfig, model_path: str, train: Sequence[RetrievalRow] | None,
          heldout: Sequence[RetrievalRow] | None) -> OfflineSpec:
    r = cfg.reranker
    generative = isinstance(cfg, GenerativeRerankerConfig)
    name = "generative_reranker" if generative else "reranker"
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train_rows, held_rows = _rows(cfg, train, heldout, name)
    card: dict[str, Any] = {"task": name, "max_length": r.max_length}
    worker: dict[str, Any] = {"loss": GroupLoss(r.loss, temperature=r.temperature), "card": card}
    if isinstance(cfg, GenerativeRerankerConfig):
        g = cfg.reranker
        yes = single_token_id(tokenizer, g.yes_token, "reranker.yes_token")
        no = single_token_id(tokenizer, g.no_token, "reranker.no_token")
        card.update(template=g.template, yes_token=g.yes_token, no_token=g.no_token)
        worker.update(head="yes_no", yes_id=yes, no_id=no)

        def encode(q: Messages, doc: Messages) -> list[int]:
            return encode_generative(tokenizer, g.template, q, doc, r.max_length)
    else:
        worker.update(head="classifier", num_labels=1)

        def encode(q: Messages, doc: Messages) -> list[int]:
            return encode_pair(tokenizer, q, doc, r.max_length)

    groups = rerank_groups(train_rows, r.num_negatives, encode, cfg.data.seed)
    held = rerank_groups(held_rows, r.num_negatives, encode, cfg.data.seed + 1) if held_rows else []
    world = cfg.policy.num_workers
    summary = (f"{len(train_rows)} train / {len(held_rows)} held-out queries, groups of 1 + {r.num_negatives}, "
               f"{r.loss}")
    return encoder_spec(cfg, name, r, groups, worker,
                        (lambda policy, step: rerank_metrics(policy, held, world)) if held else None,
                        ["loss/total", "top1_acc", "eval/top1_acc"], summary)


def run_reranker(cfg: RerankerConfig | GenerativeRerankerConfig, model_path: str | None = None,
                 train: Sequence[RetrievalRow] | None = None, heldout: Sequence[RetrievalRow] | None = None,
                 save_to: str | Path | None = None) -> RunResult:
    """Train a reranker (a generative one for a GenerativeRerankerConfig); ``train`` / ``heldout`` override the
    config's files (the default runs pass them)."""
    path = model_path or resolve_model_path(cfg.model)
    return run_offline(cfg, build(cfg, path, train, heldout), path, save_to)


def evaluate(cfg: RerankerConfig | GenerativeRerankerConfig, train: Sequence[RetrievalRow] | None = None,
             heldout: Sequence[RetrievalRow] | None = None) -> dict[str, float]:
    """`raylhf eval reranker|generative_reranker`: the held-out metrics of ``model.path`` as the trainer's."""
    path = resolve_model_path(cfg.model)
    return evaluate_offline(cfg, build(cfg, path, train, heldout), path)


def report(res: RunResult, name: str = "reranker") -> None:
    print(f"{name}: held-out top-1 accuracy {before_after(res, 'eval/top1_acc')}, MRR "
          f"{before_after(res, 'eval/mrr')}", flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    if res.checkpoint:
        print(f"{name}: {res.checkpoint} (scores: raylhf infer --model {res.checkpoint} --input FILE)", flush=True)


def cli(cfg: RerankerConfig) -> int:
    report(run_reranker(cfg))
    return 0


def cli_generative(cfg: GenerativeRerankerConfig) -> int:
    report(run_reranker(cfg), "generative_reranker")
    return 0
