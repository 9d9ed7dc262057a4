"""`raylhf infer` on an encoder export (``raylhf_task.json`` beside config.json): the trainer's own encoding
(``raylhf/data/retrieval.py``, cut to the card's ``max_length``) and the EncoderWorker's forward
(``actors/encoder.py`` ``outputs``: left padding with position ids counted from the first real token, a
classifier read at the last position, last / mean pooling, the yes / no log-odds of the next token), in float32
without gradient, in length-sorted micro-batches of ``--batch-size`` sequences as ``EncoderWorker.encode`` runs.

Row shapes: ``seq_cls`` and ``embedding`` take one text per row (``--column``, else the first of ``messages``,
``text``, ``query``, ``prompt``; a string is one user turn). The rerankers take ``query`` + ``documents`` (a list),
``query`` + ``document``, ms-swift's ``messages`` + ``positive_messages`` + ``negative_messages`` or
``query`` + ``response`` + ``rejected_response``; scores follow the documents' order (positives, then negatives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from actors.encoder import encode_sorted, head_outputs
from actors.reward_trainer import with_pad_token
from raylhf.assets import load_tokenizer
from raylhf.data import DataError, Messages
from raylhf.data.formats import prompt_messages
from raylhf.data.retrieval import (
    TEXT_COLUMNS,
    TaskCard,
    encode_generative,
    encode_pair,
    encode_side,
    single_token_id,
)
from raylhf.data.types import Row, type_name

HEADS = {"seq_cls": "classifier", "reranker": "classifier", "embedding": "embedding", "generative_reranker": "yes_no"}
ADDED = {"seq_cls": ("scores", "predicted_label", "score"), "embedding": ("embedding",),
         "reranker": ("scores", "score"), "generative_reranker": ("scores", "score")}
# the reranker row shapes: (query column, document columns in output order)
DOC_SHAPES = (("query", ("documents",)), ("query", ("document",)),
              ("messages", ("positive_messages", "negative_messages")), ("query", ("response", "rejected_response")))


class EncoderForward:
    """``EncoderWorker.outputs`` / ``encode`` on a plain transformers model (no DeepSpeed, no Ray)."""

    def __init__(self, model: torch.nn.Module, head: str, pooling: str = "last", yes_id: int | None = None,
                 no_id: int | None = None, micro: int = 8) -> None:
        self.model, self.head, self.pooling, self.yes_id, self.no_id, self.micro = (
            model.eval(), head, pooling, yes_id, no_id, micro)
        self.device = next(model.parameters()).device

    def outputs(self, input_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, D]`` float32: class / relevance logits or the pooled embedding (the worker's own function)."""
        return head_outputs(self.model, self.model, self.head, input_ids, self.device, self.pooling, self.yes_id,
                            self.no_id)

    def encode(self, seqs: Sequence[Sequence[int]]) -> list[list[float]]:
        """``outputs`` of whole sequences, in input order, in length-sorted micro-batches of ``micro``."""
        return encode_sorted(self.outputs, [torch.tensor(list(s), dtype=torch.long) for s in seqs], self.micro)


def load_model(model_dir: str, head: str, tokenizer: Any) -> torch.nn.Module:
    """The checkpoint as its EncoderWorker built it (float32): a classifier (its pad id set as the worker sets
    it), the base model of an embedding, or the causal LM of a generative reranker."""
    kw: dict[str, Any] = {"dtype": torch.float32}
    if head == "embedding":
        return AutoModel.from_pretrained(model_dir, **kw)
    if head == "yes_no":
        return AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    return with_pad_token(AutoModelForSequenceClassification.from_pretrained(model_dir, **kw), tokenizer.pad_token_id)


def _docs(value: Any, column: str, row: Row) -> list[Messages]:
    """Documents: a string, one message list, or a list of strings / message lists (None: none)."""
    if value is None:
        return []
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], Mapping)):
        return [prompt_messages(value, row, column)]
    if not isinstance(value, list):
        raise row.error(f"wrong type: {column!r} must be a string or a list of documents, got {type_name(value)}")
    return [prompt_messages(v, row, column) for v in value]


def rerank_row(row: Row) -> tuple[Messages, list[Messages]]:
    """(query, documents in output order) of a reranker row in any of :data:`DOC_SHAPES`."""
    for query_col, doc_cols in DOC_SHAPES:
        if query_col in row.data and doc_cols[0] in row.data:
            docs = [d for c in doc_cols for d in _docs(row.data.get(c), c, row)]
            if not docs:
                raise row.error(f"no documents in {doc_cols[0]!r}")
            return prompt_messages(row.data[query_col], row, query_col), docs
    raise row.error("no query and documents: expected 'query' + 'documents' (a list), 'query' + 'document', "
                    "'messages' + 'positive_messages' [+ 'negative_messages'] or 'query' + 'response' [+ "
                    f"'rejected_response']; columns present: {sorted(row.data)}")


class Scorer:
    """The encoder backend of ``raylhf infer`` (see raylhf/tools/infer.py's ``Backend``)."""

    def __init__(self, model_dir: str, card: TaskCard, *, batch_size: int = 64, column: str | None = None) -> None:
        if card.task not in HEADS:
            raise DataError(f"task card task {card.task!r} is none of {sorted(HEADS)}", source=model_dir)
        self.card, self.column, self.added = card, column, ADDED[card.task]
        self.tokenizer = load_tokenizer(model_dir)
        head = HEADS[card.task]
        yes = no = None
        if head == "yes_no":
            yes = single_token_id(self.tokenizer, card.yes_token or "yes", "yes_token")
            no = single_token_id(self.tokenizer, card.no_token or "no", "no_token")
        model = load_model(model_dir, head, self.tokenizer)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.forward = EncoderForward(model, head, card.pooling, yes, no, micro=batch_size)
        self.problem = card.problem_type or getattr(model.config, "problem_type", None) or (
            "regression" if model.config.num_labels == 1 else "single_label_classification")

    def encode(self, row: Row) -> tuple[list[list[int]], bool]:
        """(token ids of each sequence of the row, whether it is a single-``document`` row)."""
        c, n = self.card, self.card.max_length
        if c.task in ("seq_cls", "embedding"):
            name = self.column or next((k for k in TEXT_COLUMNS if k in row.data), None)
            if name is None or name not in row.data:
                want = repr(self.column) if self.column else f"one of {list(TEXT_COLUMNS)}"
                raise row.error(f"no text column {want}; columns present: {sorted(row.data)} (pick one with --column)")
            return [encode_side(self.tokenizer, prompt_messages(row.data[name], row, name), n)], False
        query, docs = rerank_row(row)
        if c.task == "reranker":
            return [encode_pair(self.tokenizer, query, d, n) for d in docs], "document" in row.data
        template = c.template or ""
        return [encode_generative(self.tokenizer, template, query, d, n) for d in docs], "document" in row.data

    def ready(self, items: Sequence[Any]) -> None:
        pass

    def run(self, items: Sequence[tuple[int, tuple[list[list[int]], bool]]]) -> list[dict[str, Any]]:
        flat = [s for _, (seqs, _) in items for s in seqs]
        outs = self.forward.encode(flat)
        results, k = [], 0
        for _, (seqs, single) in items:
            mine, k = outs[k:k + len(seqs)], k + len(seqs)
            results.append(self.columns(mine, single))
        return results

    def columns(self, outs: list[list[float]], single: bool) -> dict[str, Any]:
        task = self.card.task
        if task == "embedding":
            return {"embedding": outs[0]}
        if task in ("reranker", "generative_reranker"):
            scores = [o[0] for o in outs]
            return {"scores": scores, **({"score": scores[0]} if single else {})}
        logits, names = outs[0], self.card.labels
        if self.problem == "regression":
            return {"score": logits[0]}
        if self.problem == "multi_label_classification":
            ids = [i for i, v in enumerate(logits) if v > 0]
            return {"scores": logits, "predicted_label": [names[i] for i in ids] if names else ids}
        best = max(range(len(logits)), key=logits.__getitem__)
        return {"scores": logits, "predicted_label": names[best] if names else best}
