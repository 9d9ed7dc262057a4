"""PRM step utilities: split_steps / step_spans / aggregate_steps."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.steps import aggregate_steps, split_steps, step_spans


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("a\n\nb\n\nc", {}, ["a", "b", "c"]),
        ("a\n\n\n\nb", {}, ["a", "b"]),  # the empty step between two separators is dropped
        ("  a  \n\n  \t \n\n b \n", {}, ["a", "b"]),  # whitespace-only step dropped, steps stripped
        ("a\nb", {}, ["a\nb"]),  # a single newline is not the default separator
        ("one step", {}, ["one step"]),  # no separator -> one step
        ("", {}, []),
        ("  \n\n \n", {}, []),
        ("x<step>y<step>", {"separator": "<step>"}, ["x", "y"]),
        ("1.5.2", {"separator": "."}, ["1", "5", "2"]),  # the separator is literal, not a regex
        ("a\nb\n\n\nc", {"regex": r"\n+"}, ["a", "b", "c"]),
        ("a\nb\n\nc", {"separator": "\n\n", "regex": r"\n"}, ["a", "b", "c"]),  # regex wins over separator
        # a zero-width lookahead splits before each marker and keeps it
        ("Step 1: x=2. Step 2: y=3.", {"regex": r"(?=Step \d+:)"}, ["Step 1: x=2.", "Step 2: y=3."]),
        ("  a\n\nb  ", {"separator": None}, ["a\n\nb"]),  # neither separator nor regex: one step
    ],
)
def test_split_steps(text: str, kwargs: dict, expected: list[str]) -> None:
    assert split_steps(text, **kwargs) == expected


def test_step_spans_are_offsets_of_the_stripped_steps() -> None:
    text = "ab\n\n cd \n\nef"
    # a=0 b=1 \n=2,3 ' '=4 c=5 d=6 ' '=7 \n=8,9 e=10 f=11
    assert step_spans(text) == [(0, 2), (5, 7), (10, 12)]
    assert step_spans("") == []
    assert step_spans("Step 1: a Step 2: b", regex=r"(?=Step)") == [(0, 9), (10, 19)]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \n<>", max_size=40), st.sampled_from(["\n\n", "<>", "a", " "]))
def test_spans_and_steps_agree(text: str, separator: str) -> None:
    spans = step_spans(text, separator)
    steps = split_steps(text, separator)
    assert [text[s:e] for s, e in spans] == steps
    assert all(step and step == step.strip() and separator not in step for step in steps)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))  # ordered, non-overlapping
    # nothing but whitespace and separators is lost
    assert re.sub(r"\s", "", "".join(text.split(separator))) == re.sub(r"\s", "", "".join(steps))


@pytest.mark.parametrize(("kwargs", "match"),
                         [({"regex": "("}, "regex='\\('"), ({"separator": ""}, "separator")])
def test_split_steps_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_steps("a b", **kwargs)


SCORES = [0.2, 0.9, 0.5]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("min", 0.2), ("last", 0.5), ("mean", (0.2 + 0.9 + 0.5) / 3), ("prod", 0.2 * 0.9 * 0.5)],  # 0.5333, 0.09
)
def test_aggregate_steps_modes(mode: str, expected: float) -> None:
    assert aggregate_steps(SCORES, mode) == pytest.approx(expected)
    assert aggregate_steps([0.7], mode) == pytest.approx(0.7)  # one step: every mode gives it back
    assert aggregate_steps((0.2, 0.9, 0.5), mode) == pytest.approx(expected)  # any sequence


@pytest.mark.parametrize("mode", ["min", "last", "mean", "prod"])
def test_aggregate_steps_passthrough_and_not_scored(mode: str) -> None:
    assert aggregate_steps(0.25, mode) == 0.25
    one = aggregate_steps(1, mode)
    assert one == 1.0 and isinstance(one, float)
    assert aggregate_steps(None, mode) is None
    assert aggregate_steps([], mode) is None


def test_aggregate_steps_unknown_mode_lists_the_modes() -> None:
    with pytest.raises(ValueError, match=r"'max'.*min, last, mean, prod"):
        aggregate_steps(SCORES, "max")
    with pytest.raises(ValueError, match="unknown step aggregation"):
        aggregate_steps(None, "Mean")  # checked even when there is nothing to aggregate


def test_aggregate_prod_of_probabilities_is_exact_enough() -> None:
    assert aggregate_steps([0.5] * 10, "prod") == pytest.approx(2.0**-10)
    assert math.isclose(aggregate_steps([1e-3, 1e3], "prod") or 0.0, 1.0)
