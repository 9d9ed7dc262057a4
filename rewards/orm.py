"""Built-in rule-based outcome rewards (ORMs)."""

from __future__ import annotations

import re
from typing import Any

from rewards.registry import register_reward

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """The answer in a completion: the content of the last \\boxed{...}, else the last number."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def _to_number(s: str) -> float | None:
    try:
        if "/" in s:
            a, b = s.split("/", 1)
            return float(a) / float(b)
        return float(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str | None, solution: Any) -> bool:
    if predicted is None or solution is None:
        return False
    sol = str(solution).strip()
    boxed = _BOXED.findall(sol)
    sol = boxed[-1].strip() if boxed else sol
    a, b = _to_number(predicted), _to_number(sol)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return predicted.strip().lower() == sol.lower()


@register_reward("accuracy")
def accuracy(completions: list[str], solution: list[Any] | None = None, strict: bool = False,
             **_: Any) -> list[float]:
    """1.0 when the completion's answer equals ``solution`` (numbers compared numerically), else 0.0.

    ``strict=True`` demands that the whole completion is the answer (no extra text).
    """
    if solution is None:
        raise ValueError("the accuracy reward needs a 'solution' column in the data (map yours with data.columns)")
    out = []
    for text, sol in zip(completions, solution, strict=True):
        pred = text.strip() if strict else extract_answer(text)
        out.append(1.0 if answers_match(pred, sol) else 0.0)
    return out


@register_reward("length")
def length_reward(completion_ids: list[list[int]], target: int = 32, **_: Any) -> list[float]:
    """-|len - target| / target: a shaping term that prefers responses near ``target`` tokens."""
    return [-abs(len(ids) - target) / max(1, target) for ids in completion_ids]
