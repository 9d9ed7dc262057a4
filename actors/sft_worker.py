"""SFTWorker: a policy rank whose token loss is a registered ``sft.loss`` function (``raylhf/algos/sft_losses.py``).

With ``sft.loss: default`` it is the plain :class:`PolicyWorker` (the objective's weighted cross-entropy,
packing included). With another name each micro-batch runs one unpacked, right-padded forward, and the loss
function gets ms-swift's arguments: the model output (``.logits``), HF-style ``labels`` (``-100`` where the
token has weight 0), the ``loss_scale`` weights (``None`` when all are 0/1) and ``num_items_in_batch`` (the
step's trained tokens over all micro-batches and ranks). The value is reported as ``loss/ce``.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.common import pad
from actors.policy import PolicyWorker
from raylhf.algos.sft_losses import IGNORE_INDEX, get_loss_func
from raylhf.core.batch import Objective, TrainBatch


class SFTWorker(PolicyWorker):
    def __init__(self, *args: Any, sft_loss: str = "default", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sft_loss = sft_loss
        self._loss_fn = None if sft_loss == "default" else get_loss_func(sft_loss)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """The registered loss on one micro-batch (``PolicyWorker.micro_loss`` for ``default``)."""
        if self._loss_fn is None:
            return super().micro_loss(sub, obj)
        dev = self.engine.device
        mask = pad(sub.loss_mask, 0.0).to(dev, torch.float32)
        ids = pad(sub.input_ids, 0).to(dev)
        attn = pad([torch.ones_like(x) for x in sub.input_ids], 0).to(dev)
        labels = ids.masked_fill(mask <= 0, IGNORE_INDEX)
        scale = None if sub.ce_weights is None else pad(sub.ce_weights, 0.0).to(dev, torch.float32) * mask
        outputs = self.engine(input_ids=ids, attention_mask=attn, use_cache=False)
        n_items = obj.global_tokens if obj.global_tokens is not None else float(mask.sum().clamp_min(1.0))
        loss = self._loss_fn(outputs, labels, loss_scale=scale, num_items_in_batch=n_items)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"sft.loss {self.sft_loss!r} returned {type(loss).__name__} "
                            f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}; expected a scalar "
                            "tensor (raylhf check-plugin FILE checks a loss plugin)")
        loss = obj.ce_coef * loss
        value = float(loss.detach())
        return loss, {"loss/ce": value, "loss/total": value}, float(mask.sum())
