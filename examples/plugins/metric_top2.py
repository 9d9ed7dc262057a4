"""Eval metrics for SFT (``sft.metrics``): top-2 token accuracy (reduced in the worker) and exact-match replies.

    python -m raylhf.sft --plugins examples/plugins/metric_top2.py --sft.eval_fraction 0.1 \\
        --sft.metrics '[acc, top2_acc, reply_exact]'

A metric is ms-swift's ``(compute_fn, preprocess_logits_fn)`` pair. ``preprocess_logits_fn(logits, labels)`` runs
in the policy worker (logits ``[B, L, V]``, labels ``[B, L]`` = input ids with -100 where untrained) and returns
what leaves it; ``compute_fn(eval_prediction)`` gets every rank's rows padded with -100 as numpy arrays
(``predictions`` at position t come from the logits that predict the token at t + 1) and returns
``{key: value}``, logged as ``eval/<key>``. With ``predict_with_generate=True`` it gets the greedy replies and the
reference replies as text instead.
"""

import numpy as np

from raylhf.plugins import register_metric


def top2_preprocess(logits, labels):
    """The two most likely token ids at every position: [B, L, 2]."""
    return logits.topk(2, dim=-1).indices


def top2_compute(eval_prediction):
    """Share of trained label tokens that are among the two most likely predictions; and how many were scored."""
    preds = np.asarray(eval_prediction.predictions)[:, :-1]  # [N, L-1, 2]
    labels = np.asarray(eval_prediction.label_ids)[:, 1:]  # [N, L-1]
    mask = labels != -100
    hits = (preds == labels[..., None]).any(-1) & mask
    return {"top2_acc": float(hits.sum()) / max(1, int(mask.sum())), "scored_tokens": float(mask.sum())}


@register_metric("reply_exact", predict_with_generate=True)
def reply_exact(eval_prediction):
    """Share of greedy replies equal to the reference reply (whitespace-trimmed)."""
    pairs = list(zip(eval_prediction.predictions, eval_prediction.label_ids, strict=True))
    return {"reply_exact": sum(p.strip() == r.strip() for p, r in pairs) / max(1, len(pairs))}


METRIC_MAPPING = {"top2_acc": (top2_compute, top2_preprocess)}
