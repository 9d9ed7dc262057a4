"""Loss-scale strategies: which tokens of a chat conversation SFT trains on, and with what weight.

The interface is ms-swift's ``loss_scale`` plugin. A conversation is cut into contexts of three types:

* ``RESPONSE``: the text of one assistant reply,
* ``SUFFIX``: the end-of-turn token after an assistant reply (``<|im_end|>`` for ChatML),
* ``OTHER``: everything else: system / user / tool turns and the template's role headers.

A strategy maps one context to pieces of it and one weight per piece::

    get_loss_scale(context, context_type, is_last_round, *, query=None) -> (contexts, weights)

``is_last_round`` is true for the contexts of the last round (the last assistant reply and what leads up to
it); ``query`` is the user turn that the reply answers. The pieces must join back to the context (a
strategy may split a reply to weight parts of it, e.g. only the ``Action:`` line of an agent reply).
Each piece is tokenized on its own and every token of it gets the piece's weight; tokens with weight 0 are
masked out of the loss, and the cross-entropy is ``sum(w * -log p) / (number of tokens with w > 0)``.

Unlike ms-swift, where only the last reply's end-of-turn token is a ``SUFFIX`` (earlier ones belong to the
template's separator and are never trained), every assistant reply's end-of-turn token is a ``SUFFIX`` here,
so the default strategy also teaches the model to stop after the earlier replies.

Built-in strategies (``sft.loss_scale``): ``default`` (every assistant reply), ``last_round`` (only the last
reply), ``all`` (every token, prompts included), ``ignore_empty_think`` (an empty ``<think>...</think>`` block
of a reply gets weight 0), ``last_round_with_ignore_empty_think``, and the tool-call formats ``react``
(``Action:`` / ``Action Input:`` weighted 2, ``Observation:`` text 0) and ``hermes`` (``<tool_call>`` spans 2,
``<tool_response>`` spans 0). Add one with ``@register_loss_scale("name")`` on a :class:`LossScale` subclass,
or ``loss_scale_map = {"name": Cls}`` in a plugin file; a per-message ``"loss": true/false`` in the data
overrides the strategy for that assistant turn (see :mod:`raylhf.data`).

Keyword tables (ms-swift's JSON configs): a subclass that sets the class attribute ``loss_scale_map`` (or
``loss_scale_config``, a JSON file path, relative to the file that defines the class) and keeps the base
``get_loss_scale`` splits each reply with it: a key with two weights ``[w_key, w_content]`` is a literal
keyword (``"Action:": [2.0, 2.0]``; the keyword gets ``w_key``, the text up to the next keyword
``w_content``), a key with one weight ``[w]`` is a regular expression (``re.DOTALL``) whose matches get
``w`` in the text before the first keyword; the rest of the reply gets 1.0.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from raylhf.plugins.registry import LOSS_SCALES, PluginCheckError, class_of

__all__ = [
    "LOSS_SCALES",
    "AllLossScale",
    "ContextType",
    "HermesLossScale",
    "IgnoreEmptyThinkLossScale",
    "LastRoundLossScale",
    "LastRoundWithIgnoreEmptyThinkLossScale",
    "LossScale",
    "ReactLossScale",
    "check_plugin_entry",
    "checked_loss_scale",
    "collect_loss_scales",
    "get_loss_scale",
    "register_loss_scale",
    "split_by_table",
]


class ContextType(StrEnum):
    """The kind of one context of a conversation (compares equal to ms-swift's string constants)."""

    RESPONSE = "response"
    SUFFIX = "suffix"
    OTHER = "other"


LossScaleTable = Mapping[str, "list[float] | tuple[float, ...]"]


class LossScale:
    """The ``default`` strategy: weight 1 on every assistant reply and its end-of-turn token, 0 elsewhere.

    With a keyword table (``loss_scale_map``, or a ``loss_scale_config`` JSON file) the replies are split by it
    (:func:`split_by_table`)."""

    loss_scale_map: ClassVar[LossScaleTable | None] = None
    loss_scale_config: ClassVar[str | None] = None

    def __init__(self) -> None:
        table = type(self).loss_scale_map
        if type(self).loss_scale_config is not None:
            table = _read_table(type(self))
        # an instance attribute, as in ms-swift (a subclass's get_loss_scale may read self.loss_scale_map)
        self.loss_scale_map = None if table is None else _checked_table(type(self).__name__, table)  # type: ignore[misc]

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        """``(pieces of context, one weight per piece)``; the pieces join back to ``context``."""
        if context_type is ContextType.RESPONSE and self.loss_scale_map:
            return split_by_table(context, self.loss_scale_map)
        trained = context_type in (ContextType.RESPONSE, ContextType.SUFFIX)
        return [context], [1.0 if trained else 0.0]


def _read_table(cls: type) -> LossScaleTable:
    path = Path(str(cls.loss_scale_config)).expanduser()
    if not path.is_absolute():
        # a class without a file (defined interactively): relative to the working directory
        with contextlib.suppress(TypeError):
            path = Path(inspect.getfile(cls)).parent / path
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"loss scale {cls.__name__}: cannot read loss_scale_config {path} ({e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"loss scale {cls.__name__}: {path} must hold a JSON object of key -> [weights]")
    return table


def _checked_table(owner: str, table: LossScaleTable) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, value in table.items():
        weights = [value] if isinstance(value, int | float) else list(value)
        if len(weights) not in (1, 2) or not all(isinstance(w, int | float) and math.isfinite(w) and w >= 0
                                                  for w in weights):
            raise ValueError(f"loss scale {owner}: loss_scale_map[{key!r}] = {value!r}; expected [w] (a regular "
                             "expression) or [w_key, w_content] (a keyword), finite weights >= 0")
        if len(weights) == 1:
            try:
                re.compile(key)
            except re.error as e:
                raise ValueError(f"loss scale {owner}: loss_scale_map key {key!r} is not a regular expression "
                                 f"({e})") from None
        out[str(key)] = [float(w) for w in weights]
    return out


def split_by_table(text: str, table: LossScaleTable) -> tuple[list[str], list[float]]:
    """Split one reply by a keyword table (ms-swift's loss-scale JSON configs, e.g. ``react.json``).

    Keys with ``[w_key, w_content]`` are literal keywords: each occurrence gets ``w_key`` and the text after it,
    up to the next keyword, ``w_content`` (the longest keyword wins where several match). Keys with ``[w]`` are
    regular expressions (``re.DOTALL``): in the text before the first keyword, their matches get ``w`` (the
    earliest, then longest match wins where they overlap). Everything else gets 1.0. Adjacent pieces with the
    same weight are merged; the pieces join back to ``text``."""
    keywords = {k: (float(v[0]), float(v[1])) for k, v in table.items() if len(v) == 2}
    regexes = [(re.compile(k, re.DOTALL), float(v[0])) for k, v in table.items() if len(v) == 1]
    parts: list[tuple[str, float | None]] = []  # weight None: free text, where the regexes apply
    if keywords:
        pattern = re.compile("|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True)))
        pos, content_weight = 0, None
        for m in pattern.finditer(text):
            parts += [(text[pos:m.start()], content_weight), (m.group(0), keywords[m.group(0)][0])]
            content_weight, pos = keywords[m.group(0)][1], m.end()
        parts.append((text[pos:], content_weight))
    else:
        parts = [(text, None)]
    pieces: list[tuple[str, float]] = []
    for piece, weight in parts:
        pieces += _split_by_regexes(piece, regexes) if weight is None else [(piece, weight)]
    merged: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if not piece:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    if not merged:
        return [text], [1.0]
    return [p for p, _ in merged], [w for _, w in merged]


def _split_by_regexes(text: str, regexes: list[tuple[re.Pattern[str], float]]) -> list[tuple[str, float]]:
    spans = sorted(((m.start(), -(m.end() - m.start()), m.end(), w) for rx, w in regexes for m in rx.finditer(text)
                    if m.end() > m.start()))
    out: list[tuple[str, float]] = []
    pos = 0
    for start, _, end, weight in spans:
        if start < pos:  # overlaps a span taken already
            continue
        out += [(text[pos:start], 1.0), (text[start:end], weight)]
        pos = end
    out.append((text[pos:], 1.0))
    return out


def _check_loss_scale(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, LossScale)):
        raise TypeError(f"loss scale {name!r}: register a LossScale subclass, got {cls!r}")


LOSS_SCALES.attach(check=_check_loss_scale)


def register_loss_scale(name: str) -> Callable[[type[LossScale]], type[LossScale]]:
    """Class decorator: makes a :class:`LossScale` subclass available as ``sft.loss_scale: <name>``.

    A name registered twice (by a different class) is an error, so plugins cannot silently replace a strategy.
    """
    return LOSS_SCALES.decorator(name)


def collect_loss_scales(table: object, source: str) -> None:
    """A plugin module's ``loss_scale_map`` (name -> LossScale subclass or instance) into the registry."""
    LOSS_SCALES.register_table(table, source, "LossScale subclass", class_of)


register_loss_scale("default")(LossScale)


@register_loss_scale("last_round")
class LastRoundLossScale(LossScale):
    """Only the last assistant reply (and its end-of-turn token) is trained; earlier replies get weight 0."""

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        if context_type in (ContextType.RESPONSE, ContextType.SUFFIX):
            return [context], [1.0 if is_last_round else 0.0]
        return super().get_loss_scale(context, context_type, is_last_round, query=query)


@register_loss_scale("all")
class AllLossScale(LossScale):
    """Every token is trained with weight 1, the prompt turns and template headers included."""

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        return [context], [1.0]


EMPTY_THINK = r"<think>\s*</think>\s*"


@register_loss_scale("ignore_empty_think")
class IgnoreEmptyThinkLossScale(LossScale):
    """Like ``default``, but a reply's empty think block (``<think>\n\n</think>\n\n``, any whitespace inside and
    after it) gets weight 0: the model is not taught to skip thinking (hybrid-thinking data)."""

    loss_scale_map: ClassVar[LossScaleTable] = {EMPTY_THINK: [0.0]}


@register_loss_scale("last_round_with_ignore_empty_think")
class LastRoundWithIgnoreEmptyThinkLossScale(IgnoreEmptyThinkLossScale):
    """``last_round`` and ``ignore_empty_think`` together: only the last reply trains, without its empty think
    block."""

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        if context_type in (ContextType.RESPONSE, ContextType.SUFFIX) and not is_last_round:
            return [context], [0.0]
        return super().get_loss_scale(context, context_type, is_last_round, query=query)


@register_loss_scale("react")
class ReactLossScale(LossScale):
    """ReAct agent replies (``Thought: / Action: / Action Input: / Observation: / Final Answer:``): the tool
    call (``Action:``, ``Action Input:`` and their text) weighs 2.0, the free text (``Thought:``, ``Final
    Answer:``) 1.0, and an ``Observation:`` written into the reply keeps its keyword (2.0: where to stop) but
    its text gets 0 (the tool's answer is not the model's to learn). ms-swift's ``react.json``."""

    loss_scale_map: ClassVar[LossScaleTable] = {
        "Action:": [2.0, 2.0],
        "Action Input:": [2.0, 2.0],
        "Thought:": [1.0, 1.0],
        "Final Answer:": [1.0, 1.0],
        "Observation:": [2.0, 0.0],
    }


@register_loss_scale("hermes")
class HermesLossScale(LossScale):
    """Hermes tool calls (``<tool_call>{...}</tool_call>`` in the reply): each tool-call span weighs 2.0, a
    ``<tool_response>...</tool_response>`` span inside a reply 0, the rest 1.0 (ms-swift's ``hermes.json``
    plus the zero-weight responses; spans may cross lines)."""

    loss_scale_map: ClassVar[LossScaleTable] = {
        r"<tool_call>.+?</tool_call>": [2.0],
        r"<tool_response>.+?</tool_response>": [0.0],
    }


def get_loss_scale(name: str) -> LossScale:
    """A fresh instance of the strategy registered as ``name``; an unknown name lists the registered ones."""
    try:
        cls = LOSS_SCALES.get_entry(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return cls()


def checked_loss_scale(strategy: LossScale, context: str, context_type: ContextType, is_last_round: bool,
                       query: str | None) -> list[tuple[str, float]]:
    """Call ``strategy`` on one context and check what it returned: as many weights as pieces, the pieces
    joining back to the context, finite non-negative weights. Returns ``[(piece, weight), ...]``."""
    name = type(strategy).__name__
    pieces, weights = strategy.get_loss_scale(context, context_type, is_last_round, query=query)
    pieces, weights = list(pieces), [float(w) for w in weights]
    if len(pieces) != len(weights):
        raise ValueError(f"loss scale {name} returned {len(pieces)} contexts but {len(weights)} weights")
    if "".join(pieces) != context:
        raise ValueError(f"loss scale {name} returned contexts that do not join back to the {context_type} "
                         f"context {context[:60]!r}")
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"loss scale {name} returned weight {bad[0]} for a {context_type} context; weights must "
                         "be finite and >= 0")
    return list(zip(pieces, weights, strict=True))


# ---------------------------------------------------------------------------------- raylhf check-plugin

EXPECTED_SIGNATURE = ("a LossScale subclass with get_loss_scale(self, context, context_type, is_last_round, *, "
                      "query=None) -> (list of str pieces joining back to context, one float weight >= 0 per piece)")

SAMPLE_CONTEXTS: list[tuple[str, ContextType, bool, str]] = [
    ("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n", ContextType.OTHER, False,
     "What is 12 + 30?"),
    ("<think>\n\n</think>\n\nThought: add them.\nAction: calculator\nAction Input: 12 + 30\nObservation: 42",
     ContextType.RESPONSE, False, "What is 12 + 30?"),
    ("<|im_end|>", ContextType.SUFFIX, False, "What is 12 + 30?"),
    ("<|im_end|>\n<|im_start|>user\nAnd times 2?<|im_end|>\n<|im_start|>assistant\n", ContextType.OTHER, True,
     "And times 2?"),
    ('<tool_call>\n{"name": "calculator", "arguments": {"expr": "42 * 2"}}\n</tool_call>\nFinal Answer: 84',
     ContextType.RESPONSE, True, "And times 2?"),
    ("<|im_end|>", ContextType.SUFFIX, True, "And times 2?"),
]


def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: instantiate loss scale ``name`` and run it on a two-round sample conversation
    (a ReAct reply with an empty think block, then a hermes tool call); every call must return pieces that
    join back to the context and one finite weight >= 0 per piece."""
    if not (isinstance(obj, type) and issubclass(obj, LossScale)):
        raise PluginCheckError(f"loss scale {name!r} is {obj!r}; expected {EXPECTED_SIGNATURE}")
    try:
        inspect.signature(obj.get_loss_scale).bind(None, "text", ContextType.RESPONSE, True, query=None)
    except TypeError as e:
        raise PluginCheckError(f"loss scale {name!r}: get_loss_scale{inspect.signature(obj.get_loss_scale)} cannot "
                               f"be called as get_loss_scale(context, context_type, is_last_round, query=...) ({e}); "
                               f"expected {EXPECTED_SIGNATURE}") from None
    try:
        strategy = obj()
    except Exception as e:
        raise PluginCheckError(f"loss scale {name!r}: {obj.__name__}() failed ({type(e).__name__}: {e}); the "
                               f"class must build without arguments; expected {EXPECTED_SIGNATURE}") from None
    rounds: list[str] = []
    for context, kind, last, query in SAMPLE_CONTEXTS:
        try:
            pieces = checked_loss_scale(strategy, context, kind, last, query)
        except (ValueError, TypeError) as e:
            raise PluginCheckError(f"loss scale {name!r}: {e}; expected {EXPECTED_SIGNATURE}") from None
        rounds.append("[" + ", ".join(f"{w:g}" for _, w in pieces) + "]")
    return (f"on a 2-round sample conversation, weights per context (other, response, suffix): "
            f"{' '.join(rounds[:3])} | {' '.join(rounds[3:])}")


LOSS_SCALES.attach(collector=collect_loss_scales, interface_check=check_plugin_entry)
