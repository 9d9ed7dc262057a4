"""Final-answer checking for rule-based math rewards, built on the maintained ``math_verify`` package.

``verify_answer(completion, solution)`` decides whether a completion's final answer equals the reference:

1. **Reference**: ``solution`` as text (numbers are ``str()``-ed); when it contains ``\\boxed{...}`` the
   content of the last box is the reference. A list/tuple of solutions means "any of these".
2. **Candidates from the completion**: the content of the last complete ``\\boxed{...}`` (nested braces are
   fine) and nothing else when there is one; otherwise the later of the last math span (``$...$``,
   ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) and the last number (``-3``, ``0.5``, ``3/4``, ``1,000``,
   ``\\frac{1}{2}``), plus the whole completion when it is short (<= 200 characters).
3. **Comparison** of a candidate with the reference, after unwrapping ``$``, ``\\boxed{}``, ``\\text{}`` and
   redundant outer braces: equal ignoring case -> equal; both plain numbers -> compared exactly as
   fractions (integers exactly, otherwise within 1e-6), without calling math_verify; either one "text"
   (a run of two or more letters outside LaTeX commands, e.g. ``Paris``, ``the answer is 4``) -> not equal;
   otherwise both are parsed as LaTeX by ``math_verify.parse`` and compared symbolically with
   ``math_verify.verify`` (``x+1`` == ``1+x``, ``2\\sqrt{2}`` == ``\\sqrt{8}``, ``0.5`` == ``\\frac{1}{2}``).

Threads: math_verify bounds its work with ``signal.alarm``, which only works in the main thread (and would
clobber another SIGALRM user such as pytest-timeout). Rewards run in worker threads (``asyncio.to_thread``),
so the timeout is passed only in the main thread when no other alarm is set, and ``None`` otherwise. Without
a timeout, ``_is_costly`` keeps inputs that could hang sympy (power towers such as ``9^{9^{9^9}}``, huge
exponents or factorials, very long strings) away from math_verify: they count as not equal unless the
strings are equal. No parser exception escapes: a failure counts as not equal.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
from fractions import Fraction
from typing import Any

MATH_TIMEOUT_S = 5  # math_verify's per-call alarm, only where SIGALRM is usable (see the module docstring)
MAX_MATH_CHARS = 512  # longer answers are never handed to the symbolic parser
WHOLE_COMPLETION_MAX_CHARS = 200  # a completion up to this long is also tried as the answer itself
NUMBER_TOLERANCE = Fraction(1, 10**6)  # for non-integer numbers: 1/3 == 0.333333
MAX_EXPONENT_DIGITS = 4  # exponent digits (nested summed): x^{9999} ok; 2^{99999}, (2^{999})^{99} refused

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$([^$]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_NUMBER_TOKEN = re.compile(
    r"(?:(?<![\w)\]}])-)?"  # a minus sign, unless it is a binary minus as in 2-3
    r"(?:\\[dt]?frac\{\s*[0-9]+\s*\}\{\s*[0-9]+\s*\}"  # \frac{1}{2}
    r"|[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?(?![0-9])"  # 1,000 and 1,000.5
    r"|[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?)"  # 12, 0.5, 3/4
)
_WRAPPERS = ("\\boxed", "\\fbox", "\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mbox")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox|operatorname)\s*\{[^{}]*\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


# ------------------------------------------------------------------------------------------- extraction

def _closing(text: str, open_idx: int, opener: str = "{", closer: str = "}") -> int | None:
    """Index of the bracket closing ``text[open_idx]``; escaped ``\\{``/``\\}`` do not count."""
    depth, i = 0, open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete, non-empty, outermost ``\\boxed{...}`` (or ``\\fbox{...}``)."""
    found, found_end = None, -1
    for m in _BOX_OPEN.finditer(text):
        if m.start() < found_end:
            continue  # a box inside the box already found: the outer one is the answer
        end = _closing(text, m.end() - 1)
        if end is not None and text[m.end():end].strip():
            found, found_end = text[m.end():end].strip(), end
    return found


def _last_math_span(text: str) -> tuple[int, str] | None:
    last = None
    for m in _MATH_SPAN.finditer(text):
        content = next(g for g in m.groups() if g is not None).strip()
        if content:
            last = (m.end(), content)
    return last


def _last_number(text: str) -> tuple[int, str] | None:
    last = None
    for m in _NUMBER_TOKEN.finditer(text):
        last = (m.end(), m.group(0))
    return last


def extract_answer(text: str) -> str | None:
    """A completion's final answer: the last ``\\boxed{...}`` (nested braces fine), else whichever of the
    last math span (``$...$``, ``\\(...\\)``, ...) and the last number ends later, else ``None``."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    span, number = _last_math_span(text), _last_number(text)
    if span is None or number is None:
        found = span or number
        return found[1] if found else None
    return span[1] if span[0] >= number[0] else number[1]


def solution_answer(solution: Any) -> str | None:
    """The reference answer in a ``solution`` value: the last box's content when boxed, else the text."""
    if solution is None:
        return None
    text = str(solution).strip()
    boxed = last_boxed(text)
    return boxed if boxed is not None else (text or None)


def answer_candidates(completion: str) -> list[str]:
    """What ``verify_answer`` compares with the reference (see the module docstring, point 2)."""
    text = completion.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return [boxed]
    out = []
    answer = extract_answer(text)
    if answer:
        out.append(answer)
    if text and len(text) <= WHOLE_COMPLETION_MAX_CHARS and text not in out:
        out.append(text)
    return out


# ------------------------------------------------------------------------------------------- normalizing

def _unwrap_once(s: str) -> str:
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        inner = s[len(left):-len(right)]
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right) and left not in inner:
            return inner.strip()
    for cmd in _WRAPPERS:
        m = re.match(re.escape(cmd) + r"\s*\{", s)
        if m and _closing(s, m.end() - 1) == len(s) - 1:
            return s[m.end():-1].strip()
    if s.startswith("{") and _closing(s, 0) == len(s) - 1:
        return s[1:-1].strip()
    if s.endswith(".") and not s.endswith(".."):
        return s[:-1].strip()
    return s


def clean_answer(answer: str) -> str:
    """Strip delimiters and wrappers that do not change the value: ``$..$``, ``\\boxed{}``, ``\\text{}``,
    ``{{a}}``, a trailing period, ``\\$`` currency signs, thin spaces; ``\\dfrac``/``\\tfrac`` become
    ``\\frac``."""
    s = answer.strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\$", "").replace("{,}", ",").replace("\\,", "").replace("\\!", "").strip()
    while True:
        unwrapped = _unwrap_once(s)
        if unwrapped == s:
            return s
        s = unwrapped


_FRAC = re.compile(r"\\frac\{\s*([0-9]+)\s*\}\{\s*([0-9]+)\s*\}|\\frac([0-9])([0-9])")
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_COMMA_NUMBER = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_SLASH = re.compile(r"([0-9]+)\s*/\s*([0-9]+)")


def parse_number(s: str) -> Fraction | None:
    """A plain number as an exact fraction (``-3``, ``0.5``, ``1e-3``, ``1,000``, ``3/4``, ``\\frac{3}{4}``),
    else ``None``; the cheap path that needs no symbolic parser."""
    s = s.strip()
    sign = -1 if s.startswith("-") else 1
    body = s[1:].strip() if s.startswith(("-", "+")) else s
    try:
        if _DECIMAL.fullmatch(body):
            return sign * Fraction(body)
        if _COMMA_NUMBER.fullmatch(body):
            return sign * Fraction(body.replace(",", ""))
        m = _SLASH.fullmatch(body) or _FRAC.fullmatch(body)
        if m:
            num, den = (g for g in m.groups() if g is not None)
            return sign * Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def numbers_close(a: Fraction, b: Fraction) -> bool:
    """Integers must be equal; other numbers may differ by ``NUMBER_TOLERANCE`` (rounded decimals)."""
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= NUMBER_TOLERANCE


def has_words(s: str) -> bool:
    """Text rather than math: two or more letters in a row outside LaTeX commands and ``\\text{}``."""
    return _WORD.search(_LATEX_COMMAND.sub(" ", _TEXT_GROUP.sub(" ", s))) is not None


# ------------------------------------------------------------------------------------------- math_verify

def _exponent_at(s: str, i: int) -> tuple[str, int]:
    """The exponent starting at ``s[i]`` (after ``^`` / ``**``) and the index after it."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] in "{(":
        end = _closing(s, i, s[i], "}" if s[i] == "{" else ")")
        end = len(s) - 1 if end is None else end
        return s[i + 1:end], end + 1
    m = re.compile(r"-?[0-9.]+|\\?[A-Za-z]+|.").match(s, i)
    return (m.group(0), m.end()) if m else ("", i)


def _base_group(s: str, caret: int) -> str:
    """The bracketed group right before ``s[caret]`` (``(2^{9})`` in ``(2^{9})^{9}``), else ``""``."""
    j = caret - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j < 0 or s[j] not in ")}":
        return ""
    opener, depth = ("(" if s[j] == ")" else "{"), 0
    for k in range(j, -1, -1):
        if s[k] == s[j]:
            depth += 1
        elif s[k] == opener:
            depth -= 1
            if depth == 0:
                return s[k + 1:j]
    return s[:j]


def _digits(s: str) -> int:
    return sum(len(d) for d in re.findall(r"[0-9]+", s))


def _is_costly(s: str) -> bool:
    """Inputs that could keep sympy busy for minutes (it cannot be interrupted off the main thread)."""
    if len(s) > MAX_MATH_CHARS:
        return True
    powers = list(re.finditer(r"\^|\*\*", s))
    for m in powers:
        exponent, end = _exponent_at(s, m.end())
        if re.search(r"\^|\*\*|!", exponent) or re.match(r"\s*(?:\^|\*\*)", s[end:]):
            return True  # a power tower: 9^{9^{9}}, 2**3**4
        base = _base_group(s, m.start())
        inner = sum(_digits(_exponent_at(base, b.end())[0]) for b in re.finditer(r"\^|\*\*", base))
        if _digits(exponent) + inner > MAX_EXPONENT_DIGITS:
            return True  # 2^{1000000}, (2^{999})^{999}
    if re.search(r"!|\\binom|\\choose", s):
        return bool(powers) or re.search(r"[0-9]{6,}", s) is not None  # (10^{100})!, 1000000!
    return False


class _DropTimeoutWarning(logging.Filter):
    """math_verify warns that timeouts are disabled; here that is deliberate (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _math_verify() -> tuple[Any, Any, list[Any]]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutWarning())
    return parse, verify, [LatexExtractionConfig(), ExprExtractionConfig()]


def _signal_timeout() -> int | None:
    """``MATH_TIMEOUT_S`` where math_verify's SIGALRM timeout works and nothing else uses SIGALRM, else
    None."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        return None
    try:
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return None
        if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
            return None
    except (ValueError, OSError):
        return None
    return MATH_TIMEOUT_S


@functools.lru_cache(maxsize=4096)
def _parse_math(s: str) -> tuple[Any, ...]:
    """math_verify's parse of ``s`` as one LaTeX expression; ``()`` when it cannot be parsed."""
    parse, _, config = _math_verify()
    try:
        return tuple(parse(f"${s}$", extraction_config=config, fallback_mode="no_fallback",
                           parsing_timeout=_signal_timeout()))  # type: ignore[arg-type]
    except Exception:
        return ()


def math_equal(pred: str, gold: str) -> bool:
    """Symbolic equality by math_verify; False for anything unparseable, too costly, or failing."""
    if _is_costly(pred) or _is_costly(gold):
        return False
    gold_parsed, pred_parsed = _parse_math(gold), _parse_math(pred)
    if not gold_parsed or not pred_parsed:
        return False
    _, verify, _ = _math_verify()
    try:
        return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_signal_timeout()))
    except Exception:
        return False


# ------------------------------------------------------------------------------------------- public checks

def answers_equivalent(pred: str, gold: str) -> bool:
    """Whether one candidate answer equals the reference answer (module docstring, point 3)."""
    p, g = clean_answer(pred), clean_answer(gold)
    if not p or not g:
        return False
    if p.casefold() == g.casefold():
        return True
    p_num, g_num = parse_number(p), parse_number(g)
    if p_num is not None and g_num is not None:
        return numbers_close(p_num, g_num)
    if has_words(p) or has_words(g):
        return False
    if _RELATION.search(p) or _RELATION.search(g):
        # an equation / relation is not an answer value: math-verify compares one side of it, so that
        # '12+7=18' matched '12+7=19' and '12+7=19' matched '19'; compare such answers as written
        return re.sub(r"\s+", "", p) == re.sub(r"\s+", "", g)
    return math_equal(p, g)


_RELATION = re.compile(r"=|<|>|\\(?:le|ge|leq|geq|neq|ne|approx)\b")


def answers_match(predicted: str | None, solution: Any) -> bool:
    """An already extracted answer against a ``solution`` value (boxed or plain)."""
    gold = solution_answer(solution)
    return predicted is not None and gold is not None and answers_equivalent(predicted, gold)


def verify_answer(completion: str, solution: Any, strict: bool = False) -> bool:
    """Whether ``completion``'s final answer equals ``solution`` (see the module docstring).

    ``strict=True``: the whole completion must be the answer (``$..$`` allowed, ``\\boxed`` or prose not).
    ``solution`` may be a list/tuple of accepted answers. ``None`` or a non-string completion -> False.
    """
    if isinstance(solution, (list, tuple)):
        return any(verify_answer(completion, s, strict=strict) for s in solution)
    gold = solution_answer(solution)
    if gold is None or not isinstance(completion, str):
        return False
    if strict:
        text = completion.strip()
        return _BOX_OPEN.search(text) is None and answers_equivalent(text, gold)
    return any(answers_equivalent(c, gold) for c in answer_candidates(completion))
