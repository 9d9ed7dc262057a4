"""`raylhf embedding`: contrastive training of a text-embedding model (ms-swift's ``embedding`` task). The vector
of a text is the base model's last hidden state at its last token, or the mean over its tokens
(``embedding.pooling``; ``actors/encoder.py``, head ``embedding``). Losses (``raylhf/algos/retrieval.py``):
``infonce`` over the query's positive, its hard negatives and the micro-batch's other documents, or the pair
losses ``cosine_similarity`` / ``contrastive`` / ``online_contrastive``. Held-out retrieval recall@k: every
held-out query against every held-out document. docs/encoders.md.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raylhf.algos.retrieval import GroupLoss, recall_at_k
from raylhf.assets import load_tokenizer
from raylhf.config.encoders import EmbeddingConfig
from raylhf.data import DataError
from raylhf.data.retrieval import RetrievalRow, encode_side, load_retrieval_rows
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.encoders import Group, before_after, encode_outputs, encoder_spec, split_heldout
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import OfflineSpec, evaluate_offline, run_offline


def training_groups(rows: Sequence[RetrievalRow], loss: str, num_negatives: int, tokenizer: Any, max_length: int,
                    seed: int) -> list[Group]:
    """infonce: ``[query, positive, k negatives]`` per positive (a seeded draw of k from the row's negatives);
    the pair losses: ``[query, document]`` per positive (label: the row's, else 1) and per negative (label 0)."""
    rng = random.Random(seed)
    out: list[Group] = []
    for row in rows:
        q = encode_side(tokenizer, row.query, max_length)
        for pos in row.positives:
            p = encode_side(tokenizer, pos, max_length)
            if loss == "infonce":
                negs = rng.sample(row.negatives, num_negatives) if num_negatives else []
                out.append(Group([q, p, *(encode_side(tokenizer, n, max_length) for n in negs)]))
            else:
                out.append(Group([q, p], [1.0 if row.label is None else row.label] * 2))
        if loss != "infonce":
            out += [Group([q, encode_side(tokenizer, n, max_length)], [0.0, 0.0]) for n in row.negatives]
    return out


def retrieval_metrics(policy: Any, rows: Sequence[RetrievalRow], tokenizer: Any, max_length: int, ks: list[int],
                      world: int) -> dict[str, float]:
    """recall@k of every held-out query against all held-out documents (positives and negatives, each distinct
    text once), its first positive the target; and the mean cosine of query-positive / query-negative pairs."""
    if not rows:
        return {}
    docs: dict[str, int] = {}
    seqs: list[list[int]] = []

    def doc(messages: Any) -> int:
        key = repr(messages)
        if key not in docs:
            docs[key] = len(seqs)
            seqs.append(encode_side(tokenizer, messages, max_length))
        return docs[key]

    targets = [doc(r.positives[0]) for r in rows]
    negatives = [[doc(n) for n in r.negatives] for r in rows]
    for r in rows:
        for p in r.positives[1:]:
            doc(p)
    n_docs = len(seqs)
    vecs = encode_outputs(policy, seqs + [encode_side(tokenizer, r.query, max_length) for r in rows], world)
    d, q = vecs[:n_docs], vecs[n_docs:]
    target = torch.tensor(targets)
    out = {f"eval/recall@{k}": recall_at_k(q, d, target, k) for k in ks}
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    out["eval/cos_pos"] = float(cos[torch.arange(len(rows)), target].mean())
    neg = [float(cos[i, j]) for i, js in enumerate(negatives) for j in js]
    if neg:
        out["eval/cos_neg"] = sum(neg) / len(neg)
    return out


def build(cfg: EmbeddingConfig, model_path: str, train: Sequence[RetrievalRow] | None,
          heldout: Sequence[RetrievalRow] | None) -> OfflineSpec:
    e = cfg.embedding
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    d = cfg.data
    if train is None:
        train = load_retrieval_rows(d.train_files, columns=d.columns, max_samples=d.max_samples, split="train")
    if heldout is None and d.eval_files:
        heldout = load_retrieval_rows(d.eval_files, columns=d.columns, split="test")
    if heldout is None:
        train, heldout = split_heldout(train, e.eval_fraction, d.seed)
    if not train:
        raise DataError("no training rows left after holding out embedding.eval_fraction; give more rows")
    k = e.num_negatives if e.num_negatives is not None else min(len(r.negatives) for r in train)
    short = [i for i, r in enumerate(train, start=1) if len(r.negatives) < k]
    if e.loss == "infonce" and short:
        raise DataError(f"embedding.num_negatives={k}, but training row {short[0]} (and {len(short) - 1} more) has "
                         f"fewer negatives: lower embedding.num_negatives or set it to null (the fewest any row has)")
    groups = training_groups(train, e.loss, k, tokenizer, e.max_length, d.seed)
    world = cfg.policy.num_workers
    card = {"task": "embedding", "max_length": e.max_length, "pooling": e.pooling}
    loss = GroupLoss(e.loss, temperature=e.temperature, margin=e.margin, in_batch=e.in_batch_negatives)
    worker = {"head": "embedding", "pooling": e.pooling, "card": card, "loss": loss}
    held = list(heldout)
    summary = (f"{len(train)} train rows ({len(groups)} {'groups' if e.loss == 'infonce' else 'pairs'}"
               + (f", {k} hard negatives each" if e.loss == "infonce" else "") + f") / {len(held)} held-out rows, "
               f"{e.loss}, {e.pooling} pooling")
    evaluate = (lambda policy, step: retrieval_metrics(policy, held, tokenizer, e.max_length, e.recall_k, world)
                ) if held else None
    return encoder_spec(cfg, "embedding", e, groups, worker, evaluate,
                        ["loss/total", "eval/recall@1" if 1 in e.recall_k else f"eval/recall@{e.recall_k[0]}"],
                        summary)


def run_embedding(cfg: EmbeddingConfig, model_path: str | None = None, train: Sequence[RetrievalRow] | None = None,
                  heldout: Sequence[RetrievalRow] | None = None, save_to: str | Path | None = None) -> RunResult:
    """Train an embedding model; ``train`` / ``heldout`` override the config's files (the default run passes them)."""
    path = model_path or resolve_model_path(cfg.model)
    return run_offline(cfg, build(cfg, path, train, heldout), path, save_to)


def evaluate(cfg: EmbeddingConfig, train: Sequence[RetrievalRow] | None = None,
             heldout: Sequence[RetrievalRow] | None = None) -> dict[str, float]:
    """`raylhf eval embedding`: the held-out recall of ``model.path`` as the trainer computes it."""
    path = resolve_model_path(cfg.model)
    return evaluate_offline(cfg, build(cfg, path, train, heldout), path)


def report(res: RunResult) -> None:
    keys = [k for k in res.eval_after if k.startswith("eval/recall@")]
    print("embedding: held-out " + ", ".join(f"{k.removeprefix('eval/')} {before_after(res, k)}" for k in keys),
          flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    if res.checkpoint:
        print(f"embedding model: {res.checkpoint} (vectors: raylhf infer --model {res.checkpoint} --input FILE)",
              flush=True)


def cli(cfg: EmbeddingConfig) -> int:
    report(run_embedding(cfg))
    return 0
