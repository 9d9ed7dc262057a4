"""EncoderWorker: a PolicyWorker rank that trains a model whose output per sequence is a vector, not tokens: the
``seq_cls``, ``embedding``, ``reranker`` and ``generative_reranker`` trainers (raylhf/trainers/).

The worker knows only its head; the loss is a :class:`raylhf.algos.retrieval.GroupLoss` the trainer passes in.

* ``classifier``: ``AutoModelForSequenceClassification`` with ``num_labels`` outputs, read at the last token
  (left padding, as the reward-model worker does): class logits (seq_cls) or one relevance logit (reranker);
* ``embedding``: the base model (``AutoModel``; a causal LM checkpoint loads without its LM head), its last
  hidden states pooled at the last token or averaged over the real tokens;
* ``yes_no``: the causal LM itself (tuners such as LoRA apply), relevance ``logit(yes) - logit(no)`` of the
  next token after the prompt.

A batch is a :class:`GroupBatch`: sequences in groups of ``group_size`` consecutive ones (a query with its
documents, a pair), which sharding and micro-batching keep together. ``save`` writes the HF model, the tokenizer
and the task card (``raylhf_task.json``), which ``raylhf infer`` / ``raylhf eval`` read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from actors.common import micro_batches as length_sorted
from actors.policy import PolicyWorker
from actors.reward_trainer import left_padded, pool_at_last_position, with_pad_token
from raylhf.algos.retrieval import generative_relevance, pool
from raylhf.assets import load_tokenizer
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data.pairs import group_micro_batches
from raylhf.data.retrieval import TaskCard

HEADS = ("classifier", "embedding", "yes_no")


@dataclass
class GroupBatch(TrainBatch):
    """Sequences in groups of ``group_size`` consecutive ones; ``labels`` holds one label per sequence (or
    None). ``loss_mask`` marks each sequence's last token (the one read)."""

    labels: list[Any] | None = None
    group_size: int = 1

    def select(self, idx: list[int]) -> GroupBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v if f.name == "group_size" or v is None else [v[i] for i in idx]
        return GroupBatch(**kw)

    def shard(self, rank: int, world: int) -> GroupBatch:
        groups = len(self) // self.group_size
        if groups % world:
            raise ValueError(f"{groups} groups do not split evenly over {world} ranks")
        per = groups // world * self.group_size
        return self.select(list(range(rank * per, (rank + 1) * per)))

    def num_groups(self) -> int:
        return len(self) // self.group_size


def group_batch(groups: Sequence[Sequence[list[int]]], labels: Sequence[Sequence[Any]] | None = None) -> GroupBatch:
    """A GroupBatch from equal-sized groups of token-id lists (and their per-sequence labels)."""
    size = len(groups[0])
    if any(len(g) != size for g in groups):
        raise ValueError(f"groups must be of one size, got {sorted({len(g) for g in groups})}")
    ids = [torch.tensor(s, dtype=torch.long) for g in groups for s in g]
    mask = [torch.nn.functional.one_hot(torch.tensor(len(x) - 1), len(x)).float() for x in ids]
    flat = None if labels is None else [v for g in labels for v in g]
    return GroupBatch(input_ids=ids, loss_mask=mask, labels=flat, group_size=size)


def head_outputs(forward: Callable[..., Any], module: torch.nn.Module, head: str, input_ids: Sequence[torch.Tensor],
                 device: torch.device, pooling: str = "last", yes_id: int | None = None, no_id: int | None = None
                 ) -> torch.Tensor:
    """``[B, D]`` float32 per sequence of a micro-batch: class / relevance logits (``classifier``), the pooled
    embedding (``embedding``) or ``logit(yes) - logit(no)`` of the next token (``yes_no``). ``forward`` runs the
    model (a DeepSpeed engine, or the HF model itself: ``raylhf infer``), ``module`` is the HF model. Inputs are
    left-padded with position ids counted from the first real token, so the last position is every row's last
    token."""
    pad = module.config.get_text_config().pad_token_id
    ids, attn, pos = left_padded(input_ids, int(pad or 0), device)
    if head == "classifier":
        with pool_at_last_position(module):
            return forward(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits.float()
    if head == "embedding":
        hidden = forward(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        return pool(hidden, attn, pooling).float()  # type: ignore[arg-type]
    logits = forward(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                     logits_to_keep=1).logits[:, -1]
    return generative_relevance(logits, int(yes_id), int(no_id)).unsqueeze(-1)  # type: ignore[arg-type]


@torch.no_grad()
def encode_sorted(outputs: Callable[[list[torch.Tensor]], torch.Tensor], input_ids: Sequence[torch.Tensor],
                  micro: int) -> list[list[float]]:
    """``outputs`` of whole sequences (no gradient), in input order, computed in length-sorted micro-batches."""
    out: list[list[float]] = [[] for _ in input_ids]
    for idx in length_sorted([len(x) for x in input_ids], micro):
        for i, row in zip(idx, outputs([input_ids[i] for i in idx]).tolist(), strict=True):
            out[i] = row
    return out


class EncoderWorker(PolicyWorker):
    def __init__(self, *args: Any, head: str = "classifier", loss: Callable[..., Any] | None = None,
                 num_labels: int = 1, problem_type: str | None = None, pooling: str = "last",
                 yes_id: int | None = None, no_id: int | None = None, card: dict[str, Any] | None = None,
                 tokenizer_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if head not in HEADS:
            raise ValueError(f"head {head!r} must be one of {', '.join(HEADS)}")
        if head == "yes_no" and (yes_id is None or no_id is None):
            raise ValueError("the yes_no head needs yes_id and no_id")
        self.head, self.loss, self.num_labels, self.problem_type = head, loss, num_labels, problem_type
        self.pooling, self.yes_id, self.no_id = pooling, yes_id, no_id
        self.card, self.tokenizer_path = dict(card or {}), tokenizer_path or self.model_path

    def _tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer_path)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        if self.head == "yes_no":
            return super().build_model()  # the causal LM, with policy.tuner (LoRA, IA3, ...)
        try:
            hf_cfg = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        except OSError as e:
            raise FileNotFoundError(f"cannot load model from model.path={self.model_path!r}: {e}") from e
        kw = {"dtype": self.load_dtype, "trust_remote_code": self.trust_remote_code}
        if self.head == "embedding":
            return AutoModel.from_pretrained(self.model_path, **kw)
        classifier = any(a.endswith("ForSequenceClassification") for a in hf_cfg.architectures or [])
        if classifier and hf_cfg.num_labels != self.num_labels:
            raise ValueError(f"model.path={self.model_path!r} is a classifier with num_labels={hf_cfg.num_labels}, "
                             f"this run needs {self.num_labels}: start from a causal LM or a classifier with as "
                             "many labels")
        extra = {"problem_type": self.problem_type} if self.problem_type else {}
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, num_labels=self.num_labels,
                                                                   **extra, **kw)
        return with_pad_token(model, self._tokenizer().pad_token_id)

    # ---- what the model says about whole sequences ---------------------------------------------------------
    def outputs(self, input_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, D]`` float32 per sequence of a micro-batch (:func:`head_outputs` through the engine)."""
        return head_outputs(self.engine, self.engine.module, self.head, input_ids, self.engine.device, self.pooling,
                            self.yes_id, self.no_id)

    def encode(self, input_ids: list[torch.Tensor]) -> list[list[float]]:
        """``outputs`` of whole sequences (no gradient), in input order, in length-sorted micro-batches. Under
        ZeRO-3 every rank must call it with as many sequences (the forwards gather collectively)."""
        self.engine.eval()
        return encode_sorted(self.outputs, input_ids, self.micro)

    # ---- PolicyWorker hooks --------------------------------------------------------------------------------
    def micro_batches(self, batch: TrainBatch) -> list[list[int]]:
        """Whole groups per micro-batch (``micro_batch_size // group_size`` of them, at least one), sorted by
        their longest sequence."""
        size = int(getattr(batch, "group_size", 1))
        if len(batch) % size:
            raise ValueError(f"an encoder batch holds whole groups of {size}; this rank got {len(batch)} sequences")
        return group_micro_batches([i // size for i in range(len(batch))], [len(x) for x in batch.input_ids],
                                   self.micro)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """The trainer's GroupLoss over the micro-batch's groups, divided by the step's group count
        (``obj.global_seqs``); weight: its number of groups."""
        if self.loss is None:
            raise RuntimeError("EncoderWorker was started without a loss")
        total, metrics, groups = self.loss(self.outputs(sub.input_ids), getattr(sub, "labels", None),
                                           int(getattr(sub, "group_size", 1)))
        loss = total / (obj.global_seqs or float(groups))
        value = float(loss.detach())
        return loss, {"loss/total": value, f"loss/{self.loss.kind}": value, **metrics}, float(groups)  # type: ignore[attr-defined]

    # ---- weights out ---------------------------------------------------------------------------------------
    def export_weights(self, bucket_mb: int = 64) -> list[Any]:
        if self.head == "yes_no":
            return super().export_weights(bucket_mb)
        raise RuntimeError(f"a {self.card.get('task', 'encoder')} model is not synced into rollout engines (vLLM "
                           "serves causal LMs); use its export with raylhf infer")

    def save(self, path: str) -> str | None:
        """The HF model (the causal LM with adapters merged for ``yes_no``; the classifier; the base model of an
        embedding), the tokenizer and the task card (rank 0 writes; every rank must call it)."""
        if self.head == "yes_no":
            out = super().save(path)
        else:
            state = dict(self._full_params())
            out = None
            if self.rank == 0:
                Path(path).mkdir(parents=True, exist_ok=True)
                self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
                self._tokenizer().save_pretrained(path)
                out = path
        if out is not None and self.card:
            TaskCard(**self.card).save(out)
        return out
