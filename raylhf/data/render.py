"""Tokenisation: prompts through the chat template, the end-of-turn token, SFT rows with their per-token loss
weights (the loss scale), and dropping prompts longer than the limit."""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Any

from raylhf.data.loss_scale import ContextType, LossScale, checked_loss_scale, get_loss_scale

if TYPE_CHECKING:
    pass
from raylhf.data.types import DataError, Messages, PromptExample, SFTExample, type_name


def chat_text(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template; use a tokenizer (model.tokenizer) that ships one"
        )
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type_name(text)}, expected str")
    return text


def encode_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template, ending with the assistant header."""
    return encode_text(tokenizer, chat_text(tokenizer, messages, add_generation_prompt=True))


_EOT_CACHE: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


_SENTINEL = "RAYLHF_SENTINEL_REPLY"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template puts after an assistant reply (``<|im_end|>`` for ChatML).

    Found by rendering a probe conversation and taking the first special token after the reply; falls back
    to ``eos_token_id``.
    """
    try:
        return _EOT_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    eot: int | None = None
    try:
        text = chat_text(
            tokenizer,
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
        )
        after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
        special = set(tokenizer.all_special_ids)
        eot = next((t for t in encode_text(tokenizer, after) if t in special), None) if after else None
    except (ValueError, TypeError, KeyError):  # templates that reject the probe, or no template
        eot = None
    if eot is None:
        eot = tokenizer.eos_token_id
    if eot is None:
        raise DataError(
            "the tokenizer has neither an end-of-turn token in its chat template nor an eos token"
        )
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced are not cached
        _EOT_CACHE[tokenizer] = eot
    return int(eot)


def tokenize_sft(
    tokenizer: Any,
    ex: SFTExample,
    max_length: int,
    train_on_prompt: bool = False,
    *,
    loss_scale: str | LossScale = "default",
) -> tuple[list[int], list[float]]:
    """``(input_ids, weights)`` for one SFT conversation: one loss weight per token.

    ``input_ids`` is the conversation rendered with the chat template, cut into contexts (see
    :mod:`raylhf.data.loss_scale`): for each assistant turn, the template text since the previous reply (role headers,
    system / user / tool turns; ``OTHER``), the reply's tokens (``RESPONSE``) and the template's end-of-turn
    token (``SUFFIX``); whatever the template puts after the last reply is dropped. Each context is tokenized on
    its own and its tokens get the weight the ``loss_scale`` strategy (a registered name or an instance) gives
    it; ``train_on_prompt`` means the ``all`` strategy. A turn's ``SFTExample.loss`` override sets its reply and
    end-of-turn weights to 1.0 / 0.0. Both lists are truncated to ``max_length`` from the right (the tail is
    cut). A template that rewrites earlier turns once later ones follow (so that the conversation is not the
    concatenation of its prefixes) raises :class:`DataError`.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if train_on_prompt:
        loss_scale = "all"
    strategy = get_loss_scale(loss_scale) if isinstance(loss_scale, str) else loss_scale
    turns = ex.turns()
    overrides = ex.loss or [None] * len(turns)
    if len(overrides) != len(turns):
        raise ValueError(f"SFTExample.loss has {len(overrides)} entries for {len(turns)} turns")
    replies = [k for k, t in enumerate(turns) if t["role"] == "assistant"]
    eot = end_of_turn_id(tokenizer)
    eot_text = tokenizer.decode([eot])
    ids: list[int] = []
    weights: list[float] = []

    def add(context: str, kind: ContextType, last: bool, query: str | None, override: bool | None) -> None:
        for piece, w in checked_loss_scale(strategy, context, kind, last, query):
            toks = [eot] if kind is ContextType.SUFFIX and piece == eot_text else encode_text(tokenizer, piece)
            ids.extend(toks)
            weights.extend([w if override is None else float(override)] * len(toks))

    consumed = ""  # the template text covered so far
    query: str | None = None
    for k in replies:
        if k == 0:
            raise DataError("the conversation starts with an assistant turn; put the turn it answers before it")
        prompt_text = chat_text(tokenizer, turns[:k], add_generation_prompt=True)
        if not prompt_text.startswith(consumed):
            raise DataError(
                "the chat template renders an earlier part of this conversation differently once later turns "
                "follow (e.g. it drops reasoning from past replies, or does not end a reply with its end-of-turn "
                f"token {eot_text!r}), so its replies cannot be trained in one sequence; split the conversation "
                "into one row per reply"
            )
        query = next((t["content"] for t in reversed(turns[:k]) if t["role"] == "user"), query)
        last = k == replies[-1]
        add(prompt_text[len(consumed):], ContextType.OTHER, last, query, None)
        add(turns[k]["content"], ContextType.RESPONSE, last, query, overrides[k])
        add(eot_text, ContextType.SUFFIX, last, query, overrides[k])
        consumed = prompt_text + turns[k]["content"] + eot_text
    return ids[:max_length], weights[:max_length]


def drop_long_prompts(
    tokenizer: Any, examples: list[PromptExample], max_prompt_length: int
) -> tuple[list[PromptExample], int]:
    """Keep the examples whose rendered prompt has at most ``max_prompt_length`` tokens.

    Returns ``(kept, n_dropped)``; the order of the kept examples is preserved.
    """
    if not examples:
        return [], 0
    texts = [chat_text(tokenizer, ex.messages, add_generation_prompt=True) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    kept = [ex for ex, toks in zip(examples, ids, strict=True) if len(toks) <= max_prompt_length]
    return kept, len(examples) - len(kept)
