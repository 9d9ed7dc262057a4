"""Custom SFT losses (``sft.loss``): a focal loss and a label-smoothed cross-entropy.

    python -m raylhf.sft --plugins examples/plugins/loss_focal.py --sft.loss focal

A loss function has ms-swift's signature ``f(outputs, labels, loss_scale=None, num_items_in_batch=None)``:
``outputs.logits`` is ``[B, T, V]``, ``labels`` ``[B, T]`` is aligned with the input ids (shift it: the logits
at ``t`` predict ``labels[:, t + 1]``) with -100 where no loss is taken, ``loss_scale`` ``[B, T]`` holds the
``sft.loss_scale`` weights (None when all are 1), and ``num_items_in_batch`` counts the trained tokens of the
whole optimizer step: divide the sum of the per-token losses by it.
"""

import torch
import torch.nn.functional as F

from raylhf.plugins import register_loss_func

GAMMA = 2.0  # focal loss focusing parameter
EPSILON = 0.1  # label smoothing


def _shifted(outputs, labels):
    """(log-probs [N, V], targets [N]) of the trained positions, after the HF shift."""
    logits = outputs.logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    keep = targets != -100
    return F.log_softmax(logits[keep], dim=-1), targets[keep], keep


def _reduce(per_token, loss_scale, keep, num_items_in_batch):
    if loss_scale is not None:
        per_token = per_token * loss_scale[:, 1:].to(per_token)[keep]
    denom = num_items_in_batch if num_items_in_batch is not None else max(1, per_token.numel())
    return per_token.sum() / denom


@register_loss_func("focal")
def focal_loss(outputs, labels, loss_scale=None, num_items_in_batch=None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): ``-(1 - p)^gamma * log p`` per trained token; easy tokens count less."""
    logp_all, targets, keep = _shifted(outputs, labels)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    per_token = -((1.0 - logp.exp()) ** GAMMA) * logp
    return _reduce(per_token, loss_scale, keep, num_items_in_batch)


def label_smoothed_ce(outputs, labels, loss_scale=None, num_items_in_batch=None) -> torch.Tensor:
    """``(1 - eps) * -log p(target) + eps * mean over the vocabulary of -log p(v)`` per trained token."""
    logp_all, targets, keep = _shifted(outputs, labels)
    nll = -logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    per_token = (1.0 - EPSILON) * nll + EPSILON * -logp_all.mean(dim=-1)
    return _reduce(per_token, loss_scale, keep, num_items_in_batch)


# ms-swift 3.8's table form works too: name -> function
loss_mapping = {"label_smoothing": label_smoothed_ce}
