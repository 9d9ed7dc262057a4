"""Worker-side half of the eval metrics (``raylhf/algos/text_metrics.py``): what a policy rank computes on its shard of
held-out rows so that only small results leave it.

* logits metrics: a forward pass per micro-batch (eval mode, no grad); each metric's ``preprocess_logits_fn``
  reduces the logits (e.g. argmax) and each row's part (its own length) is returned;
* generation metrics: greedy ``generate`` of every row's prompt (the tokens before its last trained run), at most
  as many new tokens as that reply has; the new token ids are returned.

Every rank does the same number of forward / generate calls (the driver pads the shards to equal sizes), so
ZeRO-3's collective parameter gathers stay in step; under ZeRO-3 with several ranks ``generate`` runs with
``synced_gpus``.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.common import pad
from raylhf.algos.text_metrics import IGNORE, METRICS, label_ids, reply_span
from raylhf.core.batch import TrainBatch


@torch.no_grad()
def eval_predictions(worker: Any, batch: TrainBatch, request: dict[str, Any]) -> dict[str, Any]:
    """``{"preprocessed": {metric: [tensor per row]}, "generated": [token ids or None per row]}`` for this rank's
    shard; ``request`` comes from ``raylhf.algos.text_metrics.metric_request``."""
    worker.engine.eval()
    out: dict[str, Any] = {"preprocessed": {}, "generated": []}
    names = list(request.get("preprocess") or [])
    if names:
        out["preprocessed"] = preprocessed(worker, batch, names)
    if request.get("generate"):
        out["generated"] = generate_replies(worker, batch)
    return out


def preprocessed(worker: Any, batch: TrainBatch, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Each metric's ``preprocess_logits_fn(logits [B, L, V], labels [B, L])`` per micro-batch of
    ``worker.micro`` rows (raw logits when it is None), cut back to each row's length (CPU tensors)."""
    fns = {n: METRICS.get_entry(n)[1] for n in names}
    dev = worker.engine.device
    result: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, len(batch), worker.micro):
        ids = batch.input_ids[start:start + worker.micro]
        masks = batch.loss_mask[start:start + worker.micro]
        attn = pad([torch.ones_like(x) for x in ids], 0).to(dev)
        logits = worker.engine(input_ids=pad(ids, 0).to(dev), attention_mask=attn, use_cache=False).logits.float()
        labels = pad([torch.tensor(label_ids(x.tolist(), m.tolist())) for x, m in zip(ids, masks, strict=True)],
                     IGNORE).to(dev)
        for name, fn in fns.items():
            try:
                reduced = logits if fn is None else fn(logits, labels)
            except Exception as e:
                raise RuntimeError(f"metric {name!r}: its preprocess_logits_fn failed on logits "
                                   f"{tuple(logits.shape)}: {type(e).__name__}: {e}") from e
            if not isinstance(reduced, torch.Tensor) or tuple(reduced.shape[:2]) != tuple(logits.shape[:2]):
                raise TypeError(f"metric {name!r}: preprocess_logits_fn returned "
                                f"{tuple(getattr(reduced, 'shape', ()))} for logits {tuple(logits.shape)}; "
                                "expected a tensor [batch, length, ...]")
            result[name] += [reduced[i, :len(x)].detach().cpu() for i, x in enumerate(ids)]
    return result


def generate_replies(worker: Any, batch: TrainBatch) -> list[list[int] | None]:
    """Greedy replies of the rows' prompts (new token ids), None for a row with no prompt before its reply."""
    module = worker.engine.module
    dev = worker.engine.device
    synced = int(worker.cfg.get("zero_stage", 0)) == 3 and worker.world_size > 1
    gen_cfg = getattr(module, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    pad_id = getattr(gen_cfg, "pad_token_id", None)
    if pad_id is None:
        pad_id = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    out: list[list[int] | None] = []
    for ids, mask in zip(batch.input_ids, batch.loss_mask, strict=True):
        span = reply_span(mask.tolist())
        usable = span is not None and span[0] > 0
        if not usable and not synced:
            out.append(None)
            continue
        # under ZeRO-3 every rank generates once per row (a stand-in for rows without a prompt)
        prompt = ids[:span[0]] if usable else ids[:1]  # type: ignore[index]
        budget = span[1] - span[0] if usable else 1  # type: ignore[index]
        seq = module.generate(input_ids=prompt.unsqueeze(0).to(dev), attention_mask=torch.ones(1, len(prompt),
                              dtype=torch.long, device=dev), max_new_tokens=budget, do_sample=False,
                              pad_token_id=pad_id, eos_token_id=eos, synced_gpus=synced)
        out.append(seq[0, len(prompt):].tolist() if usable else None)
    return out
