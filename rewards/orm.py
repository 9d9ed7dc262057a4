"""Built-in rule-based outcome rewards (ORMs).

Every function follows TRL's convention: keyword arguments ``prompts``, ``completions``, ``completion_ids``,
the dataset columns (e.g. ``solution``) and run context such as ``max_new_tokens`` and ``step``; it takes
what it needs and ignores the rest (``**kwargs``). It returns one value per completion; ``None`` means "not
scored" and is only returned where a row cannot be scored (its ``solution`` is ``None``). Options come from
the config entry's ``kwargs`` (``reward.functions: [{name: cosine, kwargs: {max_len: 512}}]``).

* ``accuracy``: 1.0 / 0.0, the final answer equals ``solution`` (``rewards.mathcheck.verify_answer``);
* ``exact_match``: 1.0 / 0.0, the stripped completion equals a column's value;
* ``format``: 1.0 / 0.0, the stripped completion matches a regex (default: ``<think>..</think><answer>..``);
* ``soft_overlong``: 0 down to ``-penalty`` over the last ``buffer`` tokens before the length limit (DAPO);
* ``repetition``: ``(1 - unique/total n-grams) * max_penalty`` (Demystifying Long CoT, open-r1);
* ``cosine``: correctness scaled by a cosine of the length (Demystifying Long CoT);
* ``length``: ``-|len - target| / target``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from rewards.base import register_reward
from rewards.mathcheck import answers_match, extract_answer, verify_answer

__all__ = [
    "DEFAULT_FORMAT_PATTERN", "accuracy", "answers_match", "cosine_scaled", "exact_match", "extract_answer",
    "format_reward", "length_reward", "repetition_penalty", "soft_overlong", "verify_answer",
]

# one <think> block, then one <answer> block, nothing else around them
DEFAULT_FORMAT_PATTERN = r"<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>"


# keywords the caller passes besides the dataset columns
_NOT_COLUMNS = {"prompts", "completion_ids", "response_token_ids", "prompt_messages", "messages",
                "ground_truths", "max_new_tokens", "step"}


def _text(completion: Any) -> str:
    """A completion's text; TRL passes chat completions as message lists (the last message is the answer)."""
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def _need_column(values: list[Any] | None, reward: str, column: str) -> list[Any]:
    if values is None:
        raise ValueError(f"the {reward} reward needs a {column!r} column in the data (map yours with "
                         "data.columns)")
    return values


def _need_ids(completion_ids: list[list[int]] | None, reward: str) -> list[list[int]]:
    if completion_ids is None:
        raise ValueError(f"the {reward} reward needs completion_ids (token ids of each completion)")
    return completion_ids


def _max_len(value: int | None, max_new_tokens: int | None, reward: str, kwarg: str) -> int:
    limit = value if value is not None else max_new_tokens
    if limit is None:
        raise ValueError(f"the {reward} reward needs the maximum completion length: set kwargs.{kwarg}, or "
                         "run it where the caller passes max_new_tokens (the rollout's max response length)")
    if limit <= 0:
        raise ValueError(f"the {reward} reward needs a positive maximum length, got {kwarg}={limit}")
    return int(limit)


@register_reward("accuracy")
def accuracy(completions: list[str], solution: list[Any] | None = None, strict: bool = False,
             **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's final answer equals ``solution``, else 0.0; ``None`` where the row's
    solution is ``None`` (not scored).

    The answer is the last ``\\boxed{}``, else the last number or ``$...$`` span, or the whole completion
    when short; numbers, fractions and LaTeX are compared by value (``rewards.mathcheck.verify_answer``).
    ``strict=True`` demands that the whole completion is the answer (no extra text, no ``\\boxed``).
    """
    sols = _need_column(solution, "accuracy", "solution")
    return [None if sol is None else float(verify_answer(_text(c), sol, strict=strict))
            for c, sol in zip(completions, sols, strict=True)]


@register_reward("exact_match")
def exact_match(completions: list[str], ignore_case: bool = False, column: str = "solution",
                **kwargs: Any) -> list[float | None]:
    """1.0 when ``completion.strip() == str(value).strip()`` for the ``column`` value of that row, else 0.0;
    ``None`` where the value is ``None``. ``ignore_case=True`` compares case-insensitively."""
    if column not in kwargs:
        given = ", ".join(sorted(set(kwargs) - _NOT_COLUMNS)) or "none"
        raise ValueError(f"the exact_match reward compares with column {column!r}, which the data does not "
                         f"have (columns given: {given}); set kwargs.column or map it with data.columns")
    values = kwargs[column]

    def norm(s: str) -> str:
        s = s.strip()
        return s.casefold() if ignore_case else s

    return [None if v is None else float(norm(_text(c)) == norm(str(v)))
            for c, v in zip(completions, values, strict=True)]


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ValueError(f"the format reward's kwargs.pattern={pattern!r} is not a valid regular expression "
                         f"({e}); fix the pattern") from e


@register_reward("format")
def format_reward(completions: list[str], pattern: str = DEFAULT_FORMAT_PATTERN,
                  **kwargs: Any) -> list[float]:
    """1.0 when ``pattern`` matches the whole stripped completion (``re.fullmatch``, DOTALL), else 0.0.

    The default demands one ``<think>...</think>`` block followed by one ``<answer>...</answer>`` block.
    An invalid regex raises ``ValueError`` naming ``pattern`` on the first call.
    """
    regex = _compiled(pattern)
    return [1.0 if regex.fullmatch(_text(c).strip()) else 0.0 for c in completions]


@register_reward("soft_overlong")
def soft_overlong(completion_ids: list[list[int]] | None = None, buffer: int = 16, penalty: float = 1.0,
                  max_completion_len: int | None = None, max_new_tokens: int | None = None,
                  **kwargs: Any) -> list[float]:
    """DAPO's soft overlong punishment, on token counts ``L = len(completion_ids[i])``::

        0                                    if L <= max - buffer
        -penalty * (L - (max - buffer)) / buffer  in between
        -penalty                             if L >= max

    ``max`` is ``max_completion_len``, defaulting to the caller's ``max_new_tokens``.
    """
    limit = _max_len(max_completion_len, max_new_tokens, "soft_overlong", "max_completion_len")
    if buffer < 1 or buffer >= limit:
        raise ValueError(f"the soft_overlong reward needs 1 <= buffer < the maximum completion length; got "
                         f"buffer={buffer} with max={limit}; lower kwargs.buffer")
    if penalty < 0:
        raise ValueError(f"the soft_overlong reward's penalty is a magnitude (>= 0); got penalty={penalty}")
    excess = [max(0, len(ids) - (limit - buffer)) for ids in _need_ids(completion_ids, "soft_overlong")]
    return [-penalty * min(1.0, e / buffer) if e else 0.0 for e in excess]


@register_reward("repetition")
def repetition_penalty(completions: list[str], ngram_size: int = 3, max_penalty: float = -1.0,
                       **kwargs: Any) -> list[float]:
    """N-gram repetition penalty (Demystifying Long CoT; open-r1's ``repetition_penalty_reward``).

    Tokens are the completion's whitespace-separated words (case kept); with ``total`` n-grams of which
    ``unique`` are distinct, the reward is ``(1 - unique / total) * max_penalty`` (0 for no repeats,
    approaching ``max_penalty`` for a loop). Completions with fewer than ``ngram_size`` words get 0.0.
    """
    if ngram_size < 1:
        raise ValueError(f"the repetition reward needs ngram_size >= 1, got ngram_size={ngram_size}")
    if max_penalty > 0:
        raise ValueError(f"the repetition reward's max_penalty must be <= 0 (it is a penalty), got "
                         f"max_penalty={max_penalty}; use a negative value such as -1.0")
    out = []
    for c in completions:
        words = _text(c).split()
        if len(words) < ngram_size:
            out.append(0.0)
            continue
        ngrams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append((1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty + 0.0)  # + 0.0: no -0.0
    return out


@register_reward("cosine")
def cosine_scaled(completions: list[str], completion_ids: list[list[int]] | None = None,
                  solution: list[Any] | None = None, max_len: int | None = None,
                  max_new_tokens: int | None = None, correct_short: float = 1.0, correct_long: float = 0.5,
                  wrong_short: float = -1.0, wrong_long: float = -0.5, **kwargs: Any) -> list[float | None]:
    """Correctness scaled by length with a cosine (Demystifying Long CoT, arXiv:2502.03373)::

        r(L) = long + 0.5 * (short - long) * (1 + cos(pi * min(L, max_len) / max_len))

    with ``(short, long) = (correct_short, correct_long)`` when the answer is correct (``verify_answer``
    against ``solution``), else ``(wrong_short, wrong_long)``. ``r(0) = short``, ``r(max_len) = long``,
    ``r(max_len / 2)`` is their mean. The defaults make short correct answers best (1.0, down to 0.5) and
    short wrong answers worst (-1.0, up to -0.5: a wrong answer should at least think longer). In open-r1's
    names: correct_short = max_value_correct, correct_long = min_value_correct, wrong_short =
    min_value_wrong, wrong_long = max_value_wrong. ``L = len(completion_ids[i])`` tokens; ``max_len``
    defaults to the caller's ``max_new_tokens``. ``None`` where the row's solution is ``None``.
    """
    sols = _need_column(solution, "cosine", "solution")
    limit = _max_len(max_len, max_new_tokens, "cosine", "max_len")
    out: list[float | None] = []
    for c, ids, sol in zip(completions, _need_ids(completion_ids, "cosine"), sols, strict=True):
        if sol is None:
            out.append(None)
            continue
        correct = verify_answer(_text(c), sol)
        short, long = (correct_short, correct_long) if correct else (wrong_short, wrong_long)
        progress = min(len(ids), limit) / limit
        out.append(long + 0.5 * (short - long) * (1.0 + math.cos(math.pi * progress)))
    return out


@register_reward("length")
def length_reward(completion_ids: list[list[int]], target: int = 32, **_: Any) -> list[float]:
    """-|len - target| / target: a shaping term that prefers responses near ``target`` tokens."""
    return [-abs(len(ids) - target) / max(1, target) for ids in completion_ids]
