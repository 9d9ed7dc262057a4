"""RewardModelWorker: a PolicyWorker rank that trains a sequence-classification reward model (Bradley-Terry).

The model is ``AutoModelForSequenceClassification`` with one output, built from a causal LM checkpoint (its
new score head seeded like every rank) or from a reward-model checkpoint to continue. The reward of a
conversation is read at its last token, exactly as ``rewards/model.py::SequenceRewardModel`` reads it in a
reward actor: inputs left-padded with position ids counted from the first real token, and pooled at the last
position. ``save`` writes that model and the tokenizer, so ``reward.models: [{name: rm, path: <export>}]``
loads it. A batch is a :class:`PairBatch`: chosen and rejected sequences interleaved (chosen at even
indices), which ``micro_batches`` keeps together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from actors.common import micro_batches as length_sorted
from actors.policy import PolicyWorker
from raylhf.algos.dpo import bradley_terry_loss
from raylhf.assets import load_tokenizer
from raylhf.core.batch import Objective, TrainBatch
from raylhf.data.pairs import group_micro_batches


@dataclass
class PairBatch(TrainBatch):
    """Preference pairs as a TrainBatch: ``input_ids[2k]`` is pair k's chosen conversation, ``input_ids[2k+1]``
    its rejected one; ``margins`` holds each sequence's pair margin (the same for both). ``loss_mask`` marks
    the scored (last) token. Shard sizes must be even (whole pairs per rank)."""

    margins: list[float] | None = None

    def select(self, idx: list[int]) -> PairBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = None if v is None else [v[i] for i in idx]
        return PairBatch(**kw)

    def num_pairs(self) -> int:
        return len(self) // 2


def pair_batch(pairs: Sequence[tuple[list[int], list[int], float]]) -> PairBatch:
    """A PairBatch from ``(chosen ids, rejected ids, margin)`` triples."""
    ids: list[torch.Tensor] = []
    margins: list[float] = []
    for chosen, rejected, margin in pairs:
        ids += [torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)]
        margins += [float(margin), float(margin)]
    mask = [torch.nn.functional.one_hot(torch.tensor(len(x) - 1), len(x)).float() for x in ids]
    return PairBatch(input_ids=ids, loss_mask=mask, margins=margins)


def left_padded(seqs: Sequence[torch.Tensor], pad_id: int, dev: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` left-padded, so every row ends at its last real token
    (the reward actor's layout, rewards/model.py)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = s
        attn[row, width - len(s):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids.to(dev), attn.to(dev), pos.to(dev)


def with_pad_token(model: torch.nn.Module, pad_token_id: int | None) -> torch.nn.Module:
    """``model`` with a pad token id in its (text) config: its own, else ``pad_token_id`` (the tokenizer's); HF
    classification heads need one to find the last token."""
    text_cfg = model.config.get_text_config()
    if text_cfg.pad_token_id is None:
        text_cfg.pad_token_id = pad_token_id
    model.config.pad_token_id = text_cfg.pad_token_id
    return model


@contextlib.contextmanager
def pool_at_last_position(model: torch.nn.Module) -> Iterator[None]:
    """HF classification heads pool at the rightmost token that is not ``pad_token_id``; with left padding the
    last position is always real, and a pad id that never occurs makes the model pool exactly there (also when
    a conversation ends with the pad token, e.g. pad == eos)."""
    text_cfg = model.config.get_text_config()
    saved = text_cfg.pad_token_id
    text_cfg.pad_token_id = -1
    try:
        yield
    finally:
        text_cfg.pad_token_id = saved


class RewardModelWorker(PolicyWorker):
    def __init__(self, *args: Any, tokenizer_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer_path = tokenizer_path or self.model_path

    def _tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer_path)  # pad token set (eos when the tokenizer has none)

    def build_model(self) -> torch.nn.Module:
        """A one-output sequence-classification model from ``model_path`` (a causal LM: new score head)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        try:
            hf_cfg = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        except OSError as e:
            raise FileNotFoundError(f"cannot load model from model.path={self.model_path!r}: {e}") from e
        classifier = any(a.endswith("ForSequenceClassification") for a in hf_cfg.architectures or [])
        if classifier and hf_cfg.num_labels != 1:  # a causal LM's config says 2 labels (the default): unused
            raise ValueError(f"model.path={self.model_path!r} is a classifier with num_labels={hf_cfg.num_labels}; "
                             "a reward model has one output: start from a causal LM or a one-output reward model")
        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, num_labels=1, dtype=torch.float32, trust_remote_code=self.trust_remote_code)
        return with_pad_token(model, self._tokenizer().pad_token_id)

    # ---- the reward of whole conversations ----------------------------------------------------------------
    def sequence_rewards(self, input_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar rewards ``[B]`` (float32) of a micro-batch, read at each sequence's last token."""
        module = self.engine.module
        ids, attn, pos = left_padded(input_ids, int(module.config.get_text_config().pad_token_id or 0),
                                     self.engine.device)
        with pool_at_last_position(module):
            logits = self.engine(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        return logits[:, 0].float()

    @torch.no_grad()
    def rewards(self, input_ids: list[torch.Tensor]) -> list[float]:
        """Rewards of whole conversations (no gradient), in input order, in length-sorted micro-batches.
        Under ZeRO-3 every rank must call it with as many sequences (the forwards gather collectively)."""
        self.engine.eval()
        out = [0.0] * len(input_ids)
        for idx in length_sorted([len(x) for x in input_ids], self.micro):
            for i, r in zip(idx, self.sequence_rewards([input_ids[i] for i in idx]).tolist(), strict=True):
                out[i] = r
        return out

    # ---- PolicyWorker hooks --------------------------------------------------------------------------------
    def micro_batches(self, batch: TrainBatch) -> list[list[int]]:
        """Whole pairs per micro-batch (``micro_batch_size // 2`` pairs), pairs sorted by their longer side."""
        if len(batch) % 2:
            raise ValueError(f"a reward-model batch holds whole pairs; this rank got {len(batch)} sequences")
        return group_micro_batches([i // 2 for i in range(len(batch))], [len(x) for x in batch.input_ids], self.micro)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """Bradley-Terry over the micro-batch's pairs, summed and divided by the step's global pair count
        (``obj.global_seqs``); weight: its number of pairs."""
        r = self.sequence_rewards(sub.input_ids)
        chosen, rejected = r[0::2], r[1::2]
        margins = getattr(sub, "margins", None)
        margin = None if margins is None else torch.tensor(margins[0::2], dtype=r.dtype, device=r.device)
        losses, m = bradley_terry_loss(chosen, rejected, margin=margin,
                                       center_coef=float(obj.extra.get("center_coef", 0.0)) or None)
        pairs = obj.global_seqs if obj.global_seqs else float(len(chosen))
        loss = losses.sum() / pairs
        m = {"loss/total": float(loss.detach()), "loss/bt": float(loss.detach()), **m}
        return loss, m, float(len(chosen))

    # ---- weights out ---------------------------------------------------------------------------------------
    def export_weights(self, bucket_mb: int = 64) -> list[Any]:
        raise RuntimeError("a reward model is not synced into rollout engines (vLLM serves causal LMs); "
                           "score with it in a reward actor: reward.models: [{name: rm, path: <its export>}]")

    @torch.no_grad()
    def logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
        raise RuntimeError("a reward model has no token log-probs; use RewardModelWorker.rewards")

    def save(self, path: str) -> str | None:
        """The sequence-classification model (one label, pad token id set) and the tokenizer, as
        ``reward.models`` loads them (rank 0 writes; every rank must call it)."""
        state = dict(self._full_params())
        if self.rank != 0:
            return None
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(out, state_dict=state, safe_serialization=True)
        self._tokenizer().save_pretrained(out)
        return str(out)
