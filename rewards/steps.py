"""Process-reward (PRM) utilities: split a completion into steps and reduce per-step scores to one value.

``split_steps`` and ``step_spans`` agree: ``[text[s:e] for s, e in step_spans(t)] == split_steps(t)``. Steps
are stripped of surrounding whitespace, and whitespace-only steps are dropped, so a span ends at the last
character of its step (where a step's reward can be placed on the step-end token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda xs: xs[-1],
    "mean": lambda xs: math.fsum(xs) / len(xs),
    "prod": math.prod,
}


def _separators(text: str, separator: str | None, regex: str | None) -> list[tuple[int, int]]:
    """``(start, end)`` of every separator in ``text``: ``regex`` matches when given, else ``separator``."""
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ValueError(f"split_steps: regex={regex!r} is not a valid regular expression ({e})") from e
        return [m.span() for m in pattern.finditer(text)]
    if separator is None:
        return []  # neither given: the whole text is one step
    if separator == "":
        raise ValueError("split_steps: separator='' splits nothing; give a non-empty separator, a regex, "
                         "or None")
    return [m.span() for m in re.finditer(re.escape(separator), text)]


def step_spans(text: str, separator: str | None = "\n\n", regex: str | None = None) -> list[tuple[int, int]]:
    """Character ``(start, end)`` offsets of each step of ``text`` (see ``split_steps``)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for sep_start, sep_end in [*_separators(text, separator, regex), (len(text), len(text))]:
        start, end = pos, sep_start
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
        pos = max(pos, sep_end)
    return spans


def split_steps(text: str, separator: str | None = "\n\n", regex: str | None = None) -> list[str]:
    """The steps of ``text``, split on ``separator`` (literal) or, when given, on ``regex`` matches.

    Steps are stripped; empty or whitespace-only ones are dropped; a text without a separator is one step;
    empty text -> ``[]``; with neither ``separator`` nor ``regex`` the whole text is one step. A regex that
    matches the empty string splits there, so a lookahead such as ``(?=Step \\d+:)`` keeps the markers.
    """
    return [text[s:e] for s, e in step_spans(text, separator, regex)]


def aggregate_steps(scores: Sequence[float] | float | None, mode: str) -> float | None:
    """One value from per-step scores: ``min``, ``last``, ``mean`` or ``prod``.

    A plain number passes through (as a float); ``None`` or an empty list -> ``None`` (not scored).
    An unknown ``mode`` raises ``ValueError`` (checked first, whatever ``scores`` is).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown step aggregation mode {mode!r}; use one of: {', '.join(AGGREGATIONS)}")
    if scores is None:
        return None
    if isinstance(scores, (int, float)):
        return float(scores)
    values = [float(s) for s in scores]
    return float(AGGREGATIONS[mode](values)) if values else None
