"""Comparisons made outside the candidate's process: stdout against the expected output, returned values
against expected values (plain data decoded from the sandbox, never the candidate's own objects)."""

from __future__ import annotations

import math
import re
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_CODE_LANGS = {"", "python", "py", "python3", "py3"}


def extract_code(completion: str, how: str = "last_block") -> str | None:
    """The program in a completion: the last fenced block tagged python (or untagged) for ``last_block``, all
    such blocks joined for ``all_blocks``, the whole text for ``raw``. None: no code found."""
    if how == "raw":
        return completion if completion.strip() else None
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _CODE_LANGS]
    if not blocks:
        return None
    return blocks[-1] if how == "last_block" else "\n\n".join(blocks)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _token_equal(a: str, b: str, tol: float) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= tol * max(1.0, abs(y))


def stdout_matches(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Equal line by line, ignoring trailing whitespace on each line and trailing blank lines; with
    ``float_tol``, tokens that both parse as numbers may differ by that relative (at least absolute) amount."""
    a, b = _lines(got), _lines(expected)
    if a == b:
        return True
    if float_tol is None or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        tx, ty = x.split(), y.split()
        if len(tx) != len(ty) or not all(_token_equal(p, q, float_tol) for p, q in zip(tx, ty, strict=True)):
            return False
    return True


def _listify(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_listify(v) for v in x]
    if isinstance(x, dict):
        return {k: _listify(v) for k, v in x.items()}
    return x


def values_equal(got: Any, expected: Any, float_tol: float | None = None) -> bool:
    """Python equality on plain data; with ``float_tol``, floats compare within the tolerance, element-wise."""
    if float_tol is not None and isinstance(expected, float) and isinstance(got, (int, float)) \
            and not isinstance(got, bool):
        return _token_equal(repr(float(got)), repr(expected), float_tol)
    if float_tol is not None and isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        return (type(got) is type(expected) and len(got) == len(expected)
                and all(values_equal(g, e, float_tol) for g, e in zip(got, expected, strict=True)))
    return bool(got == expected)


def json_value_matches(got: Any, expected: Any, float_tol: float | None = None) -> bool:
    """A call-based (fn_name) row's expected JSON value: tuples and lists are alike in JSON; APPS wraps some
    expected values in a one-element list."""
    g, e = _listify(got), _listify(expected)
    if values_equal(g, e, float_tol):
        return True
    return isinstance(e, list) and len(e) == 1 and values_equal(g, e[0], float_tol)
