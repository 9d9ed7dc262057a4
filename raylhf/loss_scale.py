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
reply), ``all`` (every token, prompts included). Add one with ``@register_loss_scale("name")`` on a
:class:`LossScale` subclass; a per-message ``"loss": true/false`` in the data overrides the strategy for that
assistant turn (see :mod:`raylhf.data`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import StrEnum

from raylhf.registry import Registry

__all__ = [
    "LOSS_SCALES",
    "AllLossScale",
    "ContextType",
    "LastRoundLossScale",
    "LossScale",
    "checked_loss_scale",
    "collect_loss_scales",
    "get_loss_scale",
    "register_loss_scale",
]


class ContextType(StrEnum):
    """The kind of one context of a conversation (compares equal to ms-swift's string constants)."""

    RESPONSE = "response"
    SUFFIX = "suffix"
    OTHER = "other"


class LossScale:
    """The ``default`` strategy: weight 1 on every assistant reply and its end-of-turn token, 0 elsewhere."""

    def get_loss_scale(self, context: str, context_type: ContextType, is_last_round: bool, *,
                       query: str | None = None) -> tuple[list[str], list[float]]:
        """``(pieces of context, one weight per piece)``; the pieces join back to ``context``."""
        trained = context_type in (ContextType.RESPONSE, ContextType.SUFFIX)
        return [context], [1.0 if trained else 0.0]


def _check_loss_scale(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, LossScale)):
        raise TypeError(f"loss scale {name!r}: register a LossScale subclass, got {cls!r}")


LOSS_SCALES: Registry[type[LossScale]] = Registry("loss scale", "sft.loss_scale", _check_loss_scale)


def register_loss_scale(name: str) -> Callable[[type[LossScale]], type[LossScale]]:
    """Class decorator: makes a :class:`LossScale` subclass available as ``sft.loss_scale: <name>``.

    A name registered twice (by a different class) is an error, so plugins cannot silently replace a strategy.
    """
    return LOSS_SCALES.decorator(name)


def collect_loss_scales(table: object, source: str) -> None:
    """A plugin module's ``loss_scale_map`` (name -> LossScale subclass or instance) into the registry."""
    if not isinstance(table, Mapping):
        raise TypeError(f"{source} must be a dict of name -> LossScale subclass")
    for name, obj in table.items():
        LOSS_SCALES.register(str(name), obj if isinstance(obj, type) else type(obj), source)


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
