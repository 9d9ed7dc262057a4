"""Encoder-task losses (seq_cls, embedding, rerankers): hand-derived values on 2-4 element inputs."""

from __future__ import annotations

import math

import pytest
import torch

from raylhf.algos.retrieval import (
    GroupLoss,
    classification_loss,
    classification_metrics,
    contrastive_loss,
    cosine_similarity_loss,
    generative_relevance,
    infonce_loss,
    listwise_rerank_loss,
    online_contrastive_loss,
    pointwise_rerank_loss,
    pool,
    recall_at_k,
    rerank_eval,
)

R2 = 1 / math.sqrt(2)


def test_pooling_last_real_token_and_mean_with_either_padding_side() -> None:
    hidden = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right-padded, left-padded
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 6.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [1.5, 5.5]


def test_classification_losses_by_hand() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]: -ln(3/4)
    ce = classification_loss(torch.tensor([[0.0, math.log(3)]]), torch.tensor([1]), "single_label_classification")
    assert ce.item() == pytest.approx(-math.log(0.75))
    bce = classification_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), "multi_label_classification")
    assert bce.item() == pytest.approx(math.log(2))  # sigmoid(0) = 1/2 for both labels
    mse = classification_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0]), "regression")
    assert mse.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="problem_type"):
        classification_loss(torch.zeros(1, 2), torch.tensor([0]), "ranking")  # type: ignore[arg-type]


def test_classification_metrics_accuracy_and_macro_f1() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]])  # predictions 0, 1, 0; all gold 0
    m = classification_metrics(logits, torch.tensor([0, 0, 0]), "single_label_classification")
    # class 0: tp 2, fn 1 -> F1 = 4/5; class 1: tp 0 -> 0; macro 0.4
    assert m == pytest.approx({"accuracy": 2 / 3, "f1": 0.4})


A = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # cos: 1, 0, 1/sqrt2, 0
Y = torch.tensor([1, 0, 0, 1])  # distances d = 1 - cos: 0, 1, 0.2929, 1


def test_cosine_similarity_loss() -> None:
    loss = cosine_similarity_loss(A[:2], B[:2], torch.tensor([0.5, 0.0]))
    assert loss.item() == pytest.approx(((1 - 0.5) ** 2 + 0.0) / 2)


def test_contrastive_and_online_contrastive_by_hand() -> None:
    d3 = 1 - R2
    # pairs: pos d=0 -> 0; neg d=1 -> relu(0.5-1)=0; neg d=0.2929 -> 0.5*0.2071^2; pos d=1 -> 0.5*1
    expected = (0.5 * (0.5 - d3) ** 2 + 0.5) / 4
    assert contrastive_loss(A, B, Y).item() == pytest.approx(expected)
    # hard positives: d > min(neg d)=0.2929 -> [1]; hard negatives: d < max(pos d)=1 -> [0.2929]
    assert online_contrastive_loss(A, B, Y).item() == pytest.approx(1.0 + (0.5 - d3) ** 2)


def test_infonce_in_batch_and_hard_negatives_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # row 0: [cos(q0,p0)=1, cos(q0,p1)=R2]; row 1: [cos(q1,p1)=R2, cos(q1,p0)=0]
    loss, m = infonce_loss(q, p, temperature=1.0)
    expected = (math.log(1 + math.exp(R2 - 1)) + math.log(1 + math.exp(0 - R2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and m["acc"] == 1.0
    negs = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]])  # row 1's hard negative is closer than its positive
    loss, m = infonce_loss(q, p, negs, temperature=1.0, in_batch=False)
    expected = (math.log(1 + math.exp(0 - 1)) + math.log(1 + math.exp(1 - R2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and m["acc"] == 0.5
    loss_t, _ = infonce_loss(q, p, temperature=0.5)  # logits doubled
    assert loss_t.item() == pytest.approx(
        (math.log(1 + math.exp(2 * (R2 - 1))) + math.log(1 + math.exp(2 * (0 - R2)))) / 2, rel=1e-6)


def test_recall_at_k() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([0, 2])  # query 1's positive (cos R2) ranks second, after doc 1 (cos 1)
    assert recall_at_k(q, docs, positives, k=1) == 0.5
    assert recall_at_k(q, docs, positives, k=2) == 1.0


def test_reranker_losses_by_hand() -> None:
    assert pointwise_rerank_loss(torch.zeros(2), torch.tensor([1, 0])).item() == pytest.approx(math.log(2))
    loss, m = listwise_rerank_loss(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e)) / 2
    assert loss.item() == pytest.approx(expected) and m["top1_acc"] == 0.5
    with pytest.raises(ValueError, match="at least one negative"):
        listwise_rerank_loss(torch.zeros(2, 1))
    logits = torch.tensor([[0.5, 2.0, -1.0]])
    assert generative_relevance(logits, yes_id=1, no_id=2).tolist() == [3.0]


def test_group_losses_are_summed_over_groups_by_hand() -> None:
    # seq_cls, one text: softmax([0, ln 3]) = [1/4, 3/4], label 1: -ln(3/4) for the one group
    loss, m, n = GroupLoss("seq_cls")(torch.tensor([[0.0, math.log(3)]]), [1], 1)
    assert (loss.item(), n, m["accuracy"]) == (pytest.approx(-math.log(0.75)), 1, 1.0)
    # infonce, groups [query, positive], temperature 1: q1 = p1 = e1, q2 = p2 = e2; each query sees its positive
    # (cos 1) and the other group's positive (cos 0): -log(e / (e + 1)) = log(1 + 1/e) per group, summed
    out = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss, m, n = GroupLoss("infonce", temperature=1.0)(out, None, 2)
    assert (loss.item(), n, m["acc"]) == (pytest.approx(2 * math.log(1 + 1 / math.e)), 2, 1.0)
    # without in-batch negatives there is nothing to contrast: the positive alone, loss 0
    assert GroupLoss("infonce", temperature=1.0, in_batch=False)(out, None, 2)[0].item() == pytest.approx(0.0)
    # cosine_similarity, pairs [a, b]: cos 1 against label 0.5 -> 0.25; cos 0 against 0 -> 0; mean 0.125 x 2 pairs
    pairs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss, m, n = GroupLoss("cosine_similarity")(pairs, [0.5, 0.5, 0.0, 0.0], 2)
    assert (loss.item(), n, m["cos_neg"]) == (pytest.approx(0.25), 2, pytest.approx(0.5))
    # pointwise, one group [positive, negative] scored [0, 0]: BCE ln 2 each; the negative's sign is right
    loss, m, n = GroupLoss("pointwise")(torch.zeros(2, 1), None, 2)
    assert (loss.item(), m["accuracy"], m["top1_acc"]) == (pytest.approx(math.log(2)), 0.5, 1.0)
    # listwise, one group scored [ln 3, 0]: softmax 3/4 on the positive
    loss, m, _ = GroupLoss("listwise", temperature=1.0)(torch.tensor([[math.log(3)], [0.0]]), None, 2)
    assert (loss.item(), m["top1_acc"]) == (pytest.approx(-math.log(0.75)), 1.0)
    with pytest.raises(ValueError, match="loss 'triplet' must be one of"):
        GroupLoss("triplet")


def test_rerank_eval_ranks_and_signs() -> None:
    # group 1: the positive (2) is beaten by one negative (3): rank 2; group 2: first, rank 1
    m = rerank_eval(torch.tensor([2.0, 1.0, 3.0, 0.0, -1.0, -2.0]), 3)
    # signs: group 1 [T ok, T wrong, T wrong], group 2 [F wrong (0 is not > 0), F ok, F ok] -> 3 / 6
    assert m == pytest.approx({"top1_acc": 0.5, "mrr": 0.75, "accuracy": 0.5})
