"""Built-in ORMs and the reward registry / file loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewards.orm import accuracy, extract_answer
from rewards.registry import REWARDS, register_reward
from rewards.resolve import resolve_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [("42", "42"), ("the answer is 7.", "7"), ("a 1 then 2", "2"), ("\\boxed{3/4} or 5", "3/4"), ("none", None)],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_accuracy_numeric_and_strict() -> None:
    comps = ["12", " 12.0", "it is 12", "13", "\\boxed{12}"]
    assert accuracy(completions=comps, solution=["12"] * 5) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert accuracy(completions=comps, solution=["12"] * 5, strict=True) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_accuracy_without_solution_says_which_column() -> None:
    with pytest.raises(ValueError, match="solution"):
        accuracy(completions=["1"])


def test_registry_rejects_duplicates() -> None:
    resolve_reward({"name": "accuracy"})  # loads the built-ins
    with pytest.raises(ValueError, match="registered twice"):
        register_reward("accuracy")(lambda **_: [])
    assert "accuracy" in REWARDS


def test_reward_from_file_with_kwargs(tmp_path: Path) -> None:
    f = tmp_path / "my_reward.py"
    f.write_text("def bonus(completions, scale=1.0, **kw):\n    return [scale * len(c) for c in completions]\n")
    fn = resolve_reward({"name": f"{f}:bonus", "kwargs": {"scale": 2.0}})
    assert fn(prompts=["p"], completions=["abc"], completion_ids=[[1]]) == [6.0]


def test_reward_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown reward 'acuracy'.*accuracy"):
        resolve_reward({"name": "acuracy"})
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        resolve_reward({"name": f"{tmp_path}/nope.py:f"})
    f = tmp_path / "r.py"
    f.write_text("def other(**kw):\n    return []\n")
    with pytest.raises(AttributeError, match=r"has no 'missing'.*other"):
        resolve_reward({"name": f"{f}:missing"})


def test_shipped_example_reward_file_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    fn = resolve_reward({"name": f"{root}/examples/rewards/brevity.py:brevity", "kwargs": {"max_tokens": 4}})
    assert fn(prompts=["p"] * 3, completions=["", "", ""], completion_ids=[[1], [1] * 6, [1] * 9]) == [1.0, 0.5, 0.0]
