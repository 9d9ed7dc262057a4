"""Losses and metrics of the encoder-style tasks: sequence classification (``seq_cls``), embeddings
(``embedding``: ms-swift's infonce, cosine_similarity, contrastive and online_contrastive), rerankers (pointwise
and listwise, on a classification head or on a generative model's yes/no log-odds).

Pure tensor functions: embeddings ``[B, H]`` (normalised inside where a loss works on cosine similarity), logits,
labels in; a scalar loss and a metrics dict out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raylhf.algos.utils import to_float

__all__ = [
    "GroupLoss", "classification_loss", "classification_metrics", "contrastive_loss", "cosine_similarity_loss",
    "generative_relevance", "infonce_loss", "label_tensor", "listwise_rerank_loss", "online_contrastive_loss",
    "pointwise_rerank_loss", "pool", "recall_at_k", "rerank_eval",
]

ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


# ------------------------------------------------------------------------------------------------ pooling

def pool(hidden: Tensor, attention_mask: Tensor, how: Literal["last", "mean"] = "last") -> Tensor:
    """``[B, L, H]`` hidden states -> ``[B, H]``: the last real token of each row (left or right padding), or
    the mean over its real tokens."""
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if how != "last":
        raise ValueError(f"pooling {how!r} must be 'last' or 'mean'")
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(1).values.clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


# ------------------------------------------------------------------------------------------------ seq_cls

def classification_loss(logits: Tensor, labels: Tensor, problem_type: ProblemType) -> Tensor:
    """Cross-entropy (single label: ``labels`` are class ids ``[B]``), binary cross-entropy per label (multi
    label: ``labels`` ``[B, C]`` of 0/1) or MSE (regression: ``logits`` ``[B, 1]`` or ``[B]``)."""
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.float(), labels.long())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if problem_type == "regression":
        return F.mse_loss(logits.float().reshape(labels.shape), labels.float())
    raise ValueError(f"problem_type {problem_type!r} must be single_label_classification, "
                     "multi_label_classification or regression")


def classification_metrics(logits: Tensor, labels: Tensor, problem_type: ProblemType) -> dict[str, float]:
    """accuracy and macro F1 (single label; multi label: per label at logit 0), or MSE / MAE (regression)."""
    with torch.no_grad():
        if problem_type == "regression":
            diff = logits.float().reshape(labels.shape) - labels.float()
            return {"mse": to_float((diff ** 2).mean()), "mae": to_float(diff.abs().mean())}
        if problem_type == "multi_label_classification":
            pred, gold = (logits > 0), labels.bool()
            acc = (pred == gold).float().mean()
            f1s = [_f1(pred[:, c], gold[:, c]) for c in range(gold.shape[1])]
        else:
            pred = logits.argmax(-1)
            acc = (pred == labels).float().mean()
            f1s = [_f1(pred == c, labels == c) for c in range(logits.shape[-1])]
        return {"accuracy": to_float(acc), "f1": sum(f1s) / len(f1s)}


def _f1(pred: Tensor, gold: Tensor) -> float:
    tp = float((pred & gold).sum())
    fp, fn = float((pred & ~gold).sum()), float((~pred & gold).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


# ------------------------------------------------------------------------------------------------ embedding

def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def cosine_similarity_loss(a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
    """MSE between ``cos(a_i, b_i)`` and the label (a similarity score, e.g. 0.8)."""
    return F.mse_loss(_cos(a, b), labels.float())


def contrastive_loss(a: Tensor, b: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """Distance ``d = 1 - cos``; ``0.5 * (y d^2 + (1 - y) relu(margin - d)^2)``, mean over pairs (labels 0/1)."""
    d = 1.0 - _cos(a, b)
    y = labels.float()
    return (0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2))).mean()


def online_contrastive_loss(a: Tensor, b: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """The contrastive loss on the hard pairs only: positives farther than the closest negative, negatives
    closer than the farthest positive (all of one kind when the other is absent); summed."""
    d = 1.0 - _cos(a, b)
    pos, neg = d[labels.bool()], d[~labels.bool()]
    hard_pos = pos[pos > neg.min()] if len(neg) else pos
    hard_neg = neg[neg < pos.max()] if len(pos) else neg
    return hard_pos.pow(2).sum() + F.relu(margin - hard_neg).pow(2).sum()


def infonce_loss(query: Tensor, positive: Tensor, negatives: Tensor | None = None, temperature: float = 0.01,
                 in_batch: bool = True) -> tuple[Tensor, dict[str, float]]:
    """InfoNCE on cosine similarities / ``temperature``: query i against its positive (the target), its own hard
    ``negatives`` ``[B, K, H]`` and, with ``in_batch``, every other row's positive and hard negatives. Returns the
    mean cross-entropy and ``acc`` (the positive scored highest)."""
    if temperature <= 0:
        raise ValueError(f"infonce temperature must be positive, got {temperature}")
    q = F.normalize(query.float(), dim=-1)
    p = F.normalize(positive.float(), dim=-1)
    b = q.shape[0]
    own_pos = (q * p).sum(-1, keepdim=True)  # [B, 1]
    columns = [own_pos]
    if negatives is not None and negatives.numel():
        n = F.normalize(negatives.float(), dim=-1)  # [B, K, H]
        columns.append(torch.einsum("bh,bkh->bk", q, n))
    if in_batch and b > 1:
        others = ~torch.eye(b, dtype=torch.bool, device=q.device)
        columns.append((q @ p.T)[others].view(b, b - 1))
        if negatives is not None and negatives.numel():
            k = negatives.shape[1]
            all_neg = F.normalize(negatives.float(), dim=-1).reshape(b * k, -1)
            cross = (q @ all_neg.T).view(b, b, k)[others].view(b, (b - 1) * k)
            columns.append(cross)
    logits = torch.cat(columns, dim=1) / temperature
    target = torch.zeros(b, dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, target)
    return loss, {"acc": to_float((logits.argmax(-1) == 0).float().mean())}


def recall_at_k(query: Tensor, docs: Tensor, positive_index: Tensor, k: int = 1) -> float:
    """Share of queries whose positive document (an index into ``docs`` ``[D, H]``) is among the ``k`` most
    cosine-similar documents."""
    sims = F.normalize(query.float(), dim=-1) @ F.normalize(docs.float(), dim=-1).T
    top = sims.topk(min(k, docs.shape[0]), dim=-1).indices
    return to_float((top == positive_index.view(-1, 1)).any(-1).float().mean())


# ------------------------------------------------------------------------------------------------ rerankers

def pointwise_rerank_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of each query-document relevance logit against its 0/1 label."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def listwise_rerank_loss(scores: Tensor, temperature: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """``scores`` ``[G, 1 + k]``: per group the positive first, then k negatives; softmax cross-entropy with the
    positive as the target. Returns the loss and ``top1_acc`` (the positive ranked first)."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"listwise scores must be [groups, 1 + negatives] with at least one negative, got "
                         f"{tuple(scores.shape)}")
    logits = scores.float() / temperature
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(logits, target), {"top1_acc": to_float((logits.argmax(-1) == 0).float().mean())}


def generative_relevance(last_logits: Tensor, yes_id: int, no_id: int) -> Tensor:
    """A generative reranker's relevance logit: ``logit(yes) - logit(no)`` at the answer position
    (``last_logits`` ``[N, V]``), i.e. the log-odds of "yes" within {yes, no}."""
    return last_logits[:, yes_id].float() - last_logits[:, no_id].float()


# ------------------------------------------------------------------------------------------------ per-batch hooks

LOSS_KINDS = ("seq_cls", "infonce", "cosine_similarity", "contrastive", "online_contrastive", "pointwise",
              "listwise")


@dataclass(frozen=True)
class GroupLoss:
    """A trainer's loss over the encoder's outputs ``[N, D]`` of one micro-batch, whose sequences come in groups
    of ``group_size`` consecutive ones:

    * ``seq_cls``: groups of 1, ``labels`` per sequence (class id, multi-hot list or number);
    * ``infonce``: ``[query, positive, negative_1..k]``; in-batch negatives are the micro-batch's other groups;
    * ``cosine_similarity`` / ``contrastive`` / ``online_contrastive``: ``[a, b]`` pairs, the pair's label on
      both sequences;
    * ``pointwise`` / ``listwise``: ``[positive, negative_1..k]`` relevance scores (``D`` = 1).

    Returns the loss summed over the groups (``online_contrastive``: over its hard pairs), the metrics and the
    number of groups; the worker divides by the step's group count."""

    kind: str
    problem_type: ProblemType = "single_label_classification"
    temperature: float = 0.01
    margin: float = 0.5
    in_batch: bool = True

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss {self.kind!r} must be one of {', '.join(LOSS_KINDS)}")

    def __call__(self, out: Tensor, labels: Sequence[Any] | None, group_size: int
                 ) -> tuple[Tensor, dict[str, float], int]:
        groups = out.shape[0] // group_size
        if self.kind == "seq_cls":
            y = label_tensor(labels or [], self.problem_type, out.device)
            loss = classification_loss(out, y, self.problem_type)
            return loss * groups, classification_metrics(out, y, self.problem_type), groups
        if self.kind == "infonce":
            g = out.view(groups, group_size, -1)
            negatives = g[:, 2:] if group_size > 2 else None
            loss, m = infonce_loss(g[:, 0], g[:, 1], negatives, self.temperature, self.in_batch)
            return loss * groups, m, groups
        if self.kind in ("cosine_similarity", "contrastive", "online_contrastive"):
            a, b = out[0::2], out[1::2]
            y = torch.tensor([float(v) for v in (labels or [])[0::2]], device=out.device)
            if self.kind == "cosine_similarity":
                loss = cosine_similarity_loss(a, b, y) * groups
            elif self.kind == "contrastive":
                loss = contrastive_loss(a, b, y, self.margin) * groups
            else:
                loss = online_contrastive_loss(a, b, y, self.margin)
            return loss, {"cos_pos": _mean_where(_cos(a, b), y > 0.5), "cos_neg": _mean_where(_cos(a, b), y <= 0.5)}, \
                groups
        scores = out.reshape(groups, group_size).float()
        top1 = to_float((scores.argmax(-1) == 0).float().mean())
        if self.kind == "listwise":
            loss, m = listwise_rerank_loss(scores, self.temperature)
            return loss * groups, m, groups
        target = torch.zeros_like(scores)
        target[:, 0] = 1.0
        loss = pointwise_rerank_loss(scores, target)
        return loss * groups, {"top1_acc": top1, "accuracy": to_float(((scores > 0) == target.bool()).float().mean())}, \
            groups


def _mean_where(values: Tensor, mask: Tensor) -> float:
    return to_float(values[mask].mean()) if bool(mask.any()) else float("nan")


def label_tensor(labels: Sequence[Any], problem_type: ProblemType, device: torch.device | str = "cpu") -> Tensor:
    """Labels as the loss takes them: class ids ``[B]`` (long), multi-hot ``[B, C]`` or values ``[B]``."""
    if problem_type == "single_label_classification":
        return torch.tensor([int(v) for v in labels], dtype=torch.long, device=device)
    return torch.tensor(labels, dtype=torch.float32, device=device)


def rerank_eval(scores: Tensor, group_size: int) -> dict[str, float]:
    """Held-out reranker metrics from relevance scores of ``[positive, negatives...]`` groups: ``top1_acc`` (the
    positive ranked first), ``mrr`` (mean reciprocal rank of the positive) and ``accuracy`` (sign of each
    score against its 0/1 relevance)."""
    s = scores.float().reshape(-1, group_size)
    rank = 1 + (s[:, 1:] >= s[:, :1]).sum(-1)  # ties count against the positive
    target = torch.zeros_like(s, dtype=torch.bool)
    target[:, 0] = True
    return {"top1_acc": to_float((rank == 1).float().mean()), "mrr": to_float((1.0 / rank.float()).mean()),
            "accuracy": to_float(((s > 0) == target).float().mean())}
