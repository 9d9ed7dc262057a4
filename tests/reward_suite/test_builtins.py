"""Built-in rule rewards (rewards/orm.py) and the answer checker they share (rewards/mathcheck.py)."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from rewards import mathcheck
from rewards.mathcheck import extract_answer, verify_answer
from rewards.orm import (
    accuracy,
    cosine_scaled,
    exact_match,
    format_reward,
    length_reward,
    repetition_penalty,
    soft_overlong,
)
from rewards.registry import REWARDS

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------- answers

MATH_CASES = [
    # (completion, solution, equal?)
    # fractions in every spelling; nested braces inside \boxed
    ("so \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{1}{2}}", "1/2", True),
    ("$\\tfrac{1}{2}$", "\\frac{1}{2}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "0.5", True),
    ("The answer: $\\frac{3}{4}$.", "0.75", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    ("\\boxed{{a}}", "a", True),  # redundant braces
    ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    # symbolic equivalence (math_verify)
    ("x+1", "1+x", True),
    ("the answer is $x+1$", "1+x", True),
    ("\\boxed{x+2}", "1+x", False),
    ("$2\\sqrt{2}$", "\\sqrt{8}", True),
    ("\\boxed{2\\sqrt{2}}", "3", False),
    ("\\boxed{x^2 - 1}", "(x-1)(x+1)", True),
    ("\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", True),  # escaped braces do not confuse the box matching
    # negative numbers; a binary minus is not a sign
    ("\\boxed{-3}", "-3", True),
    ("so x = -3", "-3", True),
    ("2-3", "-3", False),  # last number 3, whole completion 2-3 = -1
    ("\\boxed{-\\frac{1}{2}}", "-0.5", True),
    # $...$ wrapping and the solution's own format
    ("$12$", "12", True),
    ("\\(\\frac{1}{2}\\)", "0.5", True),
    ("12", "\\boxed{12}", True),
    ("it is 12", 12, True),  # non-string solutions are str()-ed
    ("0.5", 0.5, True),
    ("The answer is 1,000.", "1000", True),
    ("\\boxed{1{,}000}", "1000", True),
    # plain numbers: integers exact, other numbers within 1e-6
    ("12.0", "12", True),
    ("1/3", "0.333333", True),
    ("0.333", "1/3", False),
    ("100000001", "100000000", False),
    # several numbers: the last boxed answer wins, else the last number
    ("\\boxed{5} then 7", "5", True),
    ("\\boxed{5} then 7", "7", False),
    ("\\boxed{4} no wait \\boxed{6}", "6", True),
    ("a 1 then 2", "2", True),
    ("a 1 then 2", "1", False),
    ("Since $x=2$, we get 5", "5", True),  # the number ends after the math span
    ("\\boxed{\\boxed{7}}", "7", True),
    ("Final: \\boxed{3", "3", True),  # an unclosed box is no box: the last number counts
    ("\\boxed{}", "1", False),
    ("", "1", False),
    # text answers: case-insensitive, exact after strip; no symbolic parse (Paris would be P*a*r*i*s)
    ("paris", "Paris", True),
    ("  Paris\n", "paris", True),
    ("\\boxed{\\text{Paris}}", "Paris", True),
    ("The answer is Paris", "Paris", False),
    ("Sprai", "Paris", False),
    ("the answer is 0", "0", True),  # via the last number, not by parsing the prose (0 * t*h*e...)
    ("0 is wrong, it is 5", "0", False),
]


@pytest.mark.parametrize(("completion", "solution", "expected"), MATH_CASES)
def test_verify_answer(completion: str, solution: Any, expected: bool) -> None:
    assert verify_answer(completion, solution) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", "42"),
        ("the answer is 7.", "7"),
        ("a 1 then 2", "2"),
        ("\\boxed{3/4} or 5", "3/4"),
        ("\\boxed{\\frac{1}{2}} and 9", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\boxed{7}}", "\\boxed{7}"),  # the outer box; comparison unwraps the inner one
        ("The answer is $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("Since $x=2$, we get 5", "5"),
        ("costs 3,000 dollars", "3,000"),
        ("x = -4", "-4"),
        ("none", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_verify_answer_none_and_lists() -> None:
    assert verify_answer("12", None) is False
    assert verify_answer(None, "12") is False  # type: ignore[arg-type]
    assert verify_answer("\\boxed{b}", ["a", "B"]) is True  # any accepted answer
    assert verify_answer("\\boxed{c}", ("a", "b")) is False


@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^9}}", "10^{10^{10}}", "2**3**4", "2^{99999}", "(2^{999})^{99}", "(10^{100})!", "1000000!",
     "\\binom{10^{9}}{10^{5}}", "x" * 600],
)
def test_costly_inputs_are_refused(answer: str) -> None:
    assert mathcheck._is_costly(answer)


@pytest.mark.parametrize(
    "answer", ["2^{10}", "x^2+y^2", "(x^2)^3", "x^{9999}", "10!", "(n+1)!", "\\binom{10}{3}"])
def test_ordinary_powers_are_not_refused(answer: str) -> None:
    assert not mathcheck._is_costly(answer)


def test_costly_inputs_do_not_hang_a_worker_thread() -> None:
    """sympy cannot be interrupted off the main thread; a child process proves these return False at once."""
    code = (
        "import threading\n"
        "from rewards.mathcheck import verify_answer\n"
        "out = []\n"
        "bad = ['9^{9^{9^9}}', '(2^{99999})^{99999}', '2^{10000000000}', '(10^{100})!', '10**10**10']\n"
        "work = lambda: out.extend(verify_answer(f'\\\\boxed{{{b}}}', '5') for b in bad)\n"
        "t = threading.Thread(target=work)\n"
        "t.start(); t.join(); print(out)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str([False] * 5)


# ---------------------------------------------------------------------------------------------- threads

THREAD_CASES = [("x+1", "1+x", True), ("$2\\sqrt{2}$", "\\sqrt{8}", True), ("\\boxed{x^2}", "x^3", False),
                ("\\boxed{\\frac{1}{2}}", "0.5", True), ("\\boxed{y+z}", "z+y", True)]


def test_math_checks_work_in_a_worker_thread() -> None:
    results: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            assert mathcheck._signal_timeout() is None  # no SIGALRM off the main thread
            results.extend(verify_answer(c, s) for c, s, _ in THREAD_CASES)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not errors, errors
    assert results == [expected for _, _, expected in THREAD_CASES]


def test_math_verify_with_timeouts_does_fail_off_the_main_thread() -> None:
    """The premise of the thread test: math_verify's own defaults raise in a worker thread."""
    from math_verify import parse

    errors: list[BaseException] = []

    def work() -> None:
        try:
            parse("$x+1$", parsing_timeout=5)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert errors and "thread" in str(errors[0])


def test_accuracy_in_asyncio_to_thread() -> None:
    """How the reward worker calls sync rewards."""
    values = asyncio.run(asyncio.to_thread(
        accuracy, completions=["$2\\sqrt{2}$", "\\boxed{3}"], solution=["\\sqrt{8}", "\\sqrt{8}"]))
    assert values == [1.0, 0.0]


def test_signal_timeout_only_in_the_main_thread_without_other_alarms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mathcheck.signal, "getsignal", lambda sig: signal.SIG_DFL)
    monkeypatch.setattr(mathcheck.signal, "getitimer", lambda which: (0.0, 0.0))
    assert mathcheck._signal_timeout() == mathcheck.MATH_TIMEOUT_S
    monkeypatch.setattr(mathcheck.signal, "getitimer", lambda which: (3.0, 0.0))  # e.g. pytest-timeout's
    assert mathcheck._signal_timeout() is None
    monkeypatch.setattr(mathcheck.signal, "getitimer", lambda which: (0.0, 0.0))
    monkeypatch.setattr(mathcheck.signal, "getsignal", lambda sig: print)  # someone else's handler
    assert mathcheck._signal_timeout() is None


def test_parser_errors_never_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(mathcheck, "_math_verify", lambda: (boom, boom, []))
    mathcheck._parse_math.cache_clear()
    assert verify_answer("\\boxed{u+v}", "v+u") is False  # symbolic: would be True with a working parser
    assert verify_answer("\\boxed{0.5}", "1/2") is True  # the number fast path needs no parser
    mathcheck._parse_math.cache_clear()


@pytest.mark.parametrize(
    "junk", ["\\boxed{\\frac{}", "\\boxed{)(}", "$\\left($", "\\boxed{\\sqrt{}}", "\\boxed{^^}"])
def test_malformed_latex_is_not_equal(junk: str) -> None:
    assert verify_answer(junk, "1") is False


# ---------------------------------------------------------------------------------------------- accuracy

def test_accuracy_scores_and_not_scored_rows() -> None:
    comps = ["\\boxed{\\frac{1}{2}}", "x+1", "\\boxed{7}", "anything"]
    sols = ["0.5", "1+x", "8", None]  # the last row has no reference: not scored
    assert accuracy(completions=comps, solution=sols) == [1.0, 1.0, 0.0, None]


def test_accuracy_strict_means_only_the_answer() -> None:
    comps = ["12", "$12$", " 12.0 ", "it is 12", "\\boxed{12}", "x+1"]
    sols = ["12"] * 5 + ["1+x"]
    assert accuracy(completions=comps, solution=sols, strict=True) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert accuracy(completions=comps, solution=sols) == [1.0] * 6


def test_accuracy_takes_the_full_trl_keyword_set() -> None:
    chat = [[{"role": "assistant", "content": "\\boxed{3}"}]]  # TRL's conversational completions
    out = accuracy(prompts=["p"], completions=chat, completion_ids=[[1, 2]], solution=["3"], step=4,
                   max_new_tokens=64, prompt_messages=[[{"role": "user", "content": "p"}]], other=["x"])
    assert out == [1.0]


def test_accuracy_without_a_solution_column() -> None:
    with pytest.raises(ValueError, match="'solution' column"):
        accuracy(completions=["1"])


# ---------------------------------------------------------------------------------------------- exact_match

@pytest.mark.parametrize(
    ("completion", "value", "ignore_case", "expected"),
    [
        ("  Paris \n", "Paris", False, 1.0),
        ("paris", "Paris", False, 0.0),
        ("paris", "Paris", True, 1.0),
        ("12", 12, False, 1.0),  # str(12)
        ("12.0", 12, False, 0.0),  # exact text, not numeric
        ("\\boxed{12}", "12", False, 0.0),
        ("12", None, False, None),  # not scored
    ],
)
def test_exact_match(completion: str, value: Any, ignore_case: bool, expected: float | None) -> None:
    assert exact_match(completions=[completion], solution=[value], ignore_case=ignore_case) == [expected]


def test_exact_match_other_column_and_missing_column() -> None:
    out = exact_match(completions=["b", "a"], solution=["a", "a"], label=["b", "b"], column="label")
    assert out == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"column 'label'.*solution"):
        exact_match(completions=["a"], solution=["a"], column="label", max_new_tokens=8)


# ---------------------------------------------------------------------------------------------- format

@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>reason</think><answer>4</answer>", 1.0),
        ("\n  <think>\nline 1\nline 2\n</think>\n\n<answer>\n4\n</answer>  \n", 1.0),  # DOTALL, stripped
        ("<answer>4</answer>", 0.0),  # no think block
        ("<think>r</think>", 0.0),  # no answer block
        ("<think>r</think><answer>4</answer> extra", 0.0),  # text after the answer
        ("intro <think>r</think><answer>4</answer>", 0.0),  # text before the think block
        ("<answer>4</answer><think>r</think>", 0.0),  # wrong order
        ("<think>r</think><answer>4</answer><answer>5</answer>", 0.0),  # two answers
        ("<think><think>r</think></think><answer>4</answer>", 0.0),  # nested think
    ],
)
def test_format_default_pattern(completion: str, expected: float) -> None:
    assert format_reward(completions=[completion]) == [expected]


def test_format_custom_and_invalid_pattern() -> None:
    assert format_reward(completions=["42", "a42", " 7 "], pattern=r"\d+") == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"kwargs\.pattern='\(unclosed' is not a valid regular expression"):
        format_reward(completions=["x"], pattern="(unclosed")


# ---------------------------------------------------------------------------------------------- soft_overlong

# max 10, buffer 4: the ramp starts after 10 - 4 = 6 tokens; L=8 -> -(8-6)/4 = -0.5; L>=10 -> -1
RAMP = [(3, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (10, -1.0), (12, -1.0)]


def test_soft_overlong_ramp_from_max_new_tokens() -> None:
    ids = [[0] * n for n, _ in RAMP]
    out = soft_overlong(completion_ids=ids, buffer=4, max_new_tokens=10)
    assert out == [v for _, v in RAMP]
    assert math.copysign(1.0, out[0]) == 1.0  # 0.0, not -0.0, below the ramp


def test_soft_overlong_explicit_max_and_penalty() -> None:
    ids = [[0] * n for n, _ in RAMP]
    # max_completion_len wins over max_new_tokens; penalty 2 doubles every value
    out = soft_overlong(completion_ids=ids, buffer=4, penalty=2.0, max_completion_len=10, max_new_tokens=99)
    assert out == [2 * v for _, v in RAMP]
    # default buffer 16 with max 32: L=24 -> -(24-16)/16 = -0.5
    assert soft_overlong(completion_ids=[[0] * 24], max_new_tokens=32) == [-0.5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "max_completion_len"),
        ({"buffer": 10, "max_completion_len": 10}, r"buffer=10 with max=10"),
        ({"buffer": 16, "max_new_tokens": 8}, r"buffer=16 with max=8"),
        ({"buffer": 0, "max_new_tokens": 8}, r"buffer=0"),
        ({"penalty": -1.0, "max_new_tokens": 64}, r"penalty=-1.0"),
    ],
)
def test_soft_overlong_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        soft_overlong(completion_ids=[[1]], **kwargs)


# ---------------------------------------------------------------------------------------------- repetition

@pytest.mark.parametrize(
    ("completion", "kwargs", "expected"),
    [
        # 9 words -> 7 trigrams: abc bca cab abc bca cab abc; 3 unique -> (1 - 3/7) * -1 = -4/7
        ("a b c a b c a b c", {}, -4 / 7),
        ("the cat sat on the mat", {}, 0.0),  # 4 trigrams, all distinct
        ("hi there", {}, 0.0),  # fewer words than ngram_size
        ("", {}, 0.0),
        # unigrams: a a a b -> 4 total, 2 unique -> (1 - 2/4) * -2 = -1.0
        ("a a a b", {"ngram_size": 1, "max_penalty": -2.0}, -1.0),
        ("A a", {"ngram_size": 1}, 0.0),  # case is kept
        # bigrams of "x y x y x": xy yx xy yx -> 2 unique of 4 -> -0.5
        ("x y\nx  y x", {"ngram_size": 2}, -0.5),
    ],
)
def test_repetition(completion: str, kwargs: dict, expected: float) -> None:
    assert repetition_penalty(completions=[completion], **kwargs) == [pytest.approx(expected)]


@pytest.mark.parametrize(("kwargs", "match"), [({"max_penalty": 0.5}, "max_penalty=0.5"),
                                               ({"ngram_size": 0}, "ngram_size=0")])
def test_repetition_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        repetition_penalty(completions=["a b c"], **kwargs)


# ---------------------------------------------------------------------------------------------- cosine

# r(L) = long + 0.5 * (short - long) * (1 + cos(pi * L / max_len)), max_len = 100
#   L=0:   cos 0 = 1     -> short             correct 1.0,  wrong -1.0
#   L=50:  cos pi/2 = 0  -> (short + long)/2  correct 0.75, wrong -0.75
#   L=100: cos pi = -1   -> long              correct 0.5,  wrong -0.5
#   L=25:  cos pi/4      -> correct 0.5 + 0.25 * (1 + sqrt(2)/2) = 0.9268
COSINE = [(0, 1.0, -1.0), (25, 0.5 + 0.25 * (1 + math.sqrt(2) / 2), -0.5 - 0.25 * (1 + math.sqrt(2) / 2)),
          (50, 0.75, -0.75), (100, 0.5, -0.5), (150, 0.5, -0.5)]  # beyond max_len: clamped


@pytest.mark.parametrize(("length", "correct", "wrong"), COSINE)
def test_cosine_values(length: int, correct: float, wrong: float) -> None:
    out = cosine_scaled(completions=["\\boxed{4}", "\\boxed{5}"], completion_ids=[[0] * length] * 2,
                        solution=["4", "4"], max_new_tokens=100)
    assert out == [pytest.approx(correct), pytest.approx(wrong)]


def test_cosine_custom_values_max_len_and_not_scored() -> None:
    # correct 2.0 -> 0.0 over max_len 10; at L=5 the mean 1.0; the None row is not scored
    out = cosine_scaled(completions=["4", "4"], completion_ids=[[0] * 5] * 2, solution=["4", None],
                        max_len=10, max_new_tokens=1000, correct_short=2.0, correct_long=0.0)
    assert out == [pytest.approx(1.0), None]


@pytest.mark.parametrize(("kwargs", "match"), [({"solution": ["4"]}, "max_len"),
                                               ({"max_new_tokens": 8}, "'solution' column"),
                                               ({"solution": ["4"], "max_len": 0}, "max_len=0")])
def test_cosine_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cosine_scaled(completions=["4"], completion_ids=[[1]], **kwargs)


# ---------------------------------------------------------------------------------------------- registry

BUILTINS = {"accuracy": accuracy, "exact_match": exact_match, "format": format_reward,
            "soft_overlong": soft_overlong, "repetition": repetition_penalty, "cosine": cosine_scaled,
            "length": length_reward}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_are_registered_and_take_the_caller_keywords(name: str) -> None:
    assert REWARDS[name] is BUILTINS[name]
    keywords = {"prompts": ["p"], "completions": ["<think>t</think><answer>4</answer> \\boxed{4}"],
                "completion_ids": [[1, 2, 3]], "solution": ["4"], "max_new_tokens": 64, "step": 3,
                "prompt_messages": [[{"role": "user", "content": "p"}]], "ground_truths": ["4"],
                "difficulty": ["easy"]}
    out = BUILTINS[name](**keywords)
    assert len(out) == 1 and isinstance(out[0], float)


@pytest.mark.parametrize(("completion", "solution", "strict", "expected"), [
    ("12+7=19", "19", True, False),  # strict: an equation is not the bare answer (math-verify compared its rhs)
    ("12+7=19", "19", False, True),  # any form: the last number is the answer
    ("12+7=18", "12+7=19", True, False),  # math-verify matched these (it compared one side)
    ("12+7=19", "12+7=19", True, True),
    ("7+12=19", "12+7=19", True, False),  # equations are compared as written
    ("x \\le 3", "x\\le 3", False, True),
])
def test_equations_and_relations_are_compared_as_written(completion: str, solution: str, strict: bool,
                                                         expected: bool) -> None:
    from rewards.mathcheck import verify_answer

    assert verify_answer(completion, solution, strict=strict) is expected
