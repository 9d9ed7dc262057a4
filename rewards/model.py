"""Reward models loaded inside the reward actor: a sequence-classification ORM and a step-tag PRM.

* ``SequenceRewardModel`` (``kind: orm``): an ``AutoModelForSequenceClassification`` with one output, read at
  the last token of the conversation (prompt messages + the completion as the assistant turn), rendered with
  the reward model's own chat template (else ``rendered_prompt + completion``).
* ``StepTagPRM`` (``kind: prm``, Math-Shepherd style): a causal LM fed ``prompt + step_1 + tag + step_2 + tag
  ...``; each step's score is read from the next-token distribution at its tag:
  ``p(positive) / (p(positive) + p(negative))``, or ``p(positive)`` over the vocab without a negative token.

Inputs longer than ``max_length`` tokens are cut on the left (the completion's end is kept). Forwards run
under ``torch.no_grad`` in length-sorted batches of ``batch_size``; results come back in input order.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from actors.common import device, load_causal_lm, micro_batches, resolve_dtype
from raylhf.config.sections import RewardModelConfig
from rewards.base import RewardBatch, Score
from rewards.steps import aggregate_steps, split_steps

Tagged = tuple[list[int], list[int]]  # token ids, positions of the step tags in them


def _as_config(cfg: RewardModelConfig | dict[str, Any]) -> RewardModelConfig:
    return cfg if isinstance(cfg, RewardModelConfig) else RewardModelConfig.model_validate(cfg)


def _load_tokenizer(path: str) -> Any:
    """The checkpoint's tokenizer with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"cannot load the reward model tokenizer from path={path!r}: {e}") from e
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(f"the tokenizer at {path!r} has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def _load_classifier(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        hf_cfg = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"cannot load the reward model from path={path!r}: {e}") from e
    if hf_cfg.num_labels != 1:
        raise ValueError(
            f"reward model at {path!r} has num_labels={hf_cfg.num_labels} (architectures={hf_cfg.architectures}); "
            "a kind=orm reward model must be a sequence-classification checkpoint with exactly one output "
            "(num_labels=1). For a step-tag PRM use kind=prm."
        )
    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)


def _prepare(model: torch.nn.Module, pad_token_id: int) -> torch.nn.Module:
    """On the actor's device, in eval mode, without gradients, with a pad token id in its config."""
    text_cfg = model.config.get_text_config()
    if text_cfg.pad_token_id is None:
        text_cfg.pad_token_id = pad_token_id
    return model.to(device()).eval().requires_grad_(False)


def _single_token(tok: Any, field: str, text: str, path: str) -> int:
    """The id of ``text``, which must be exactly one token (as encoded, or as a vocabulary entry)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    if text in tok.get_vocab():
        return int(tok.convert_tokens_to_ids(text))
    raise ValueError(
        f"{field}={text!r} must be exactly one token of the tokenizer at {path!r}, but it tokenizes to "
        f"{len(ids)} tokens {tok.convert_ids_to_tokens(ids)} (ids {ids}); choose a string that is a single token"
    )


def _left_padded(seqs: Sequence[list[int]], pad_id: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, position_ids)``, left-padded so every row ends at its last real token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[row, width - len(s):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids.to(dev), attn.to(dev), pos.to(dev)


def _right_padded(seqs: Sequence[list[int]], pad_id: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[row, : len(s)] = 1
    return ids.to(dev), attn.to(dev)


@contextlib.contextmanager
def _pool_at_last_position(model: torch.nn.Module) -> Iterator[None]:
    """HF classification heads pool at the rightmost token that differs from ``pad_token_id``: wrong when a text
    ends with the pad token (pad == eos is common). Inputs here are left-padded, so the last position is always
    a real token; a pad id that never occurs makes the model pool exactly there."""
    text_cfg = model.config.get_text_config()
    saved = text_cfg.pad_token_id
    text_cfg.pad_token_id = -1
    try:
        yield
    finally:
        text_cfg.pad_token_id = saved


def _fill(n: int, lengths: dict[int, int], batch_size: int, run: Callable[[list[int]], Sequence[Any]]) -> list[Any]:
    """``run(indices) -> values`` over length-sorted batches of the indices in ``lengths``; input order kept."""
    out: list[Any] = [None] * n
    keys = list(lengths)
    for chunk in micro_batches([lengths[k] for k in keys], batch_size):
        idx = [keys[c] for c in chunk]
        for i, v in zip(idx, run(idx), strict=True):
            out[i] = v
    return out


class _ModelScorer:
    """What both reward models share: config, tokenizer, counters, the Scorer plumbing."""

    kind: str = "orm"

    def __init__(self, cfg: RewardModelConfig | dict[str, Any]) -> None:
        self.cfg = _as_config(cfg)
        if self.cfg.kind != self.kind:
            raise ValueError(f"reward model {self.cfg.name!r} has kind={self.cfg.kind!r}; "
                             f"{type(self).__name__} scores kind={self.kind!r}")
        self.name = self.cfg.name
        self.dtype = resolve_dtype(self.cfg.dtype)
        self.tokenizer = _load_tokenizer(self.cfg.path)
        self._counts: dict[str, float] = {}

    def _count(self, key: str, n: int = 1) -> None:
        if n:
            self._counts[key] = self._counts.get(key, 0.0) + n

    def _truncate(self, ids: list[int]) -> tuple[list[int], int]:
        """The last ``max_length`` ids and how many were cut from the left."""
        cut = max(0, len(ids) - self.cfg.max_length)
        if cut:
            self._count("truncated")
        return ids[cut:], cut

    def metrics(self) -> dict[str, float]:
        """Counters since the last call: ``truncated`` inputs, ``unscored`` completions (PRM: ``dropped_steps``)."""
        out, self._counts = self._counts, {}
        return out

    async def aclose(self) -> None:
        return None


class SequenceRewardModel(_ModelScorer):
    """``kind: orm``: one float per completion from a single-output sequence-classification model."""

    kind = "orm"

    def __init__(self, cfg: RewardModelConfig | dict[str, Any]) -> None:
        super().__init__(cfg)
        self.model = _prepare(_load_classifier(self.cfg.path, self.dtype), self.tokenizer.pad_token_id)

    def text(self, batch: RewardBatch, i: int) -> tuple[str, bool]:
        """The text scored for completion ``i`` and whether the tokenizer should add its special tokens."""
        tok = self.tokenizer
        if tok.chat_template:
            return tok.apply_chat_template(batch.messages(i), tokenize=False), False
        text = batch.rendered_prompts[i] + batch.completions[i]
        return text, not (tok.bos_token and text.startswith(tok.bos_token))

    def encode(self, batch: RewardBatch, i: int) -> list[int]:
        text, special = self.text(batch, i)
        return self._truncate(self.tokenizer(text, add_special_tokens=special)["input_ids"])[0]

    def _forward(self, seqs: Sequence[list[int]]) -> list[float]:
        ids, attn, pos = _left_padded(seqs, self.tokenizer.pad_token_id, device())
        with _pool_at_last_position(self.model):
            logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        return logits[:, 0].float().cpu().tolist()

    @torch.no_grad()
    def score_texts(self, batch: RewardBatch) -> list[float | None]:
        """The synchronous work of ``score``; an empty input (no tokens at all) is not scored."""
        seqs = [self.encode(batch, i) for i in range(len(batch))]
        lengths = {i: len(s) for i, s in enumerate(seqs) if s}
        self._count("unscored", len(seqs) - len(lengths))
        return _fill(len(seqs), lengths, self.cfg.batch_size, lambda idx: self._forward([seqs[i] for i in idx]))

    async def score(self, batch: RewardBatch) -> list[Score]:
        return list(self.score_texts(batch))


class StepTagPRM(_ModelScorer):
    """``kind: prm``: per-step scores from a causal LM's next-token distribution at each step tag.

    ``score`` returns one aggregated float per completion (``aggregate``) and keeps the per-step lists in
    ``last_steps``; ``score_steps`` returns the per-step lists only. A completion without steps is ``None``.
    When an input is cut on the left, the steps whose tag fell off are dropped: the list then holds the
    scores of the last steps (counted in ``dropped_steps``).
    """

    kind = "prm"

    def __init__(self, cfg: RewardModelConfig | dict[str, Any]) -> None:
        super().__init__(cfg)
        c, tok = self.cfg, self.tokenizer
        self.tag_id = _single_token(tok, "step_tag", c.step_tag, c.path)
        self.positive_id = _single_token(tok, "positive_token", c.positive_token, c.path)
        self.negative_id = None if c.negative_token is None else _single_token(
            tok, "negative_token", c.negative_token, c.path)
        if self.positive_id == self.negative_id:
            raise ValueError(f"positive_token={c.positive_token!r} and negative_token={c.negative_token!r} "
                             "are the same token")
        self.model = _prepare(load_causal_lm(c.path, self.dtype), tok.pad_token_id)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.last_steps: list[list[float] | None] = []

    def encode(self, prompt: str, completion: str) -> Tagged | None:
        """``prompt + step_1 + tag + step_2 + tag ...`` as ids (pieces tokenized apart, so the tag positions
        are exact) and the tag positions; ``None`` for a completion without steps."""
        steps = split_steps(completion, separator=self.cfg.step_separator)
        if not steps:
            return None
        ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        tags: list[int] = []
        for step in steps:
            ids += self.tokenizer(step, add_special_tokens=False)["input_ids"]
            ids.append(self.tag_id)
            tags.append(len(ids) - 1)
        ids, cut = self._truncate(ids)
        self._count("dropped_steps", sum(t < cut for t in tags))
        return ids, [t - cut for t in tags if t >= cut]

    def _step_probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.negative_id is None:
            return logits.softmax(-1)[..., self.positive_id]
        return logits[..., [self.positive_id, self.negative_id]].softmax(-1)[..., 0]

    def _forward(self, items: Sequence[Tagged]) -> list[list[float]]:
        ids, attn = _right_padded([s for s, _ in items], self.tokenizer.pad_token_id, device())
        keep = sorted({t for _, tags in items for t in tags})
        column = {t: k for k, t in enumerate(keep)}
        kwargs: dict[str, Any] = {}
        if self._keeps_logits:  # only the tag positions' logits, not [B, L, vocab]
            kwargs["logits_to_keep"] = torch.tensor(keep, device=ids.device)
        logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False, **kwargs).logits
        if not self._keeps_logits:
            logits = logits[:, keep]
        probs = self._step_probs(logits).cpu()
        return [[float(probs[row, column[t]]) for t in tags] for row, (_, tags) in enumerate(items)]

    @torch.no_grad()
    def score_steps(self, batch: RewardBatch) -> list[list[float] | None]:
        """Per completion the list of step scores in (0, 1), ``None`` when it has no steps."""
        encoded = [self.encode(batch.prompts[i], batch.completions[i]) for i in range(len(batch))]
        items = {i: it for i, it in enumerate(encoded) if it is not None}
        self._count("unscored", len(encoded) - len(items))
        lengths = {i: len(ids) for i, (ids, _) in items.items()}
        return _fill(len(encoded), lengths, self.cfg.batch_size, lambda idx: self._forward([items[i] for i in idx]))

    async def score(self, batch: RewardBatch) -> list[Score]:
        self.last_steps = self.score_steps(batch)
        return [aggregate_steps(s, self.cfg.aggregate) for s in self.last_steps]


def load_reward_model(cfg: RewardModelConfig | dict[str, Any]) -> SequenceRewardModel | StepTagPRM:
    """The scorer for ``cfg.kind``."""
    cfg = _as_config(cfg)
    return StepTagPRM(cfg) if cfg.kind == "prm" else SequenceRewardModel(cfg)
