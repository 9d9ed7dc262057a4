"""Small function-writing tasks with tests, for the ``code_tests`` reward (``examples/configs/grpo_code.yaml``).

Each row: ``prompt`` (what to write), ``tests`` (MBPP-style assert lines, or stdin/stdout pairs for the
program-writing kind), ``entry_point`` (the function's name) and ``reference`` (a solution that passes them).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raylhf.demo.tasks.arithmetic import write_jsonl

Row = dict[str, Any]


def _add_k(rng: random.Random, name: str) -> Row:
    k = rng.randint(2, 9)
    xs = rng.sample(range(-20, 40), 3)
    return {"prompt": f"Write a Python function `{name}(x)` that returns x plus {k}.",
            "tests": [f"assert {name}({x}) == {x + k}" for x in xs],
            "reference": f"def {name}(x):\n    return x + {k}\n"}


def _multiple_of(rng: random.Random, name: str) -> Row:
    k = rng.randint(2, 7)
    xs = [k * rng.randint(1, 9), k * rng.randint(1, 9) + 1, 0]
    return {"prompt": f"Write a Python function `{name}(n)` that returns True when n is a multiple of {k}, "
                      "else False.",
            "tests": [f"assert {name}({x}) is {x % k == 0}" for x in xs],
            "reference": f"def {name}(n):\n    return n % {k} == 0\n"}


def _reverse_words(rng: random.Random, name: str) -> Row:
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    cases = [" ".join(rng.sample(words, rng.randint(2, 4))) for _ in range(3)]
    return {"prompt": f"Write a Python function `{name}(s)` that returns the words of the string s in reverse "
                      "order, joined by single spaces.",
            "tests": [f"assert {name}({c!r}) == {' '.join(reversed(c.split()))!r}" for c in cases],
            "reference": f"def {name}(s):\n    return ' '.join(reversed(s.split()))\n"}


def _evens(rng: random.Random, name: str) -> Row:
    cases = [rng.sample(range(0, 30), rng.randint(3, 6)) for _ in range(3)]
    return {"prompt": f"Write a Python function `{name}(xs)` that returns the even numbers of the list xs, sorted "
                      "ascending.",
            "tests": [f"assert {name}({c}) == {sorted(x for x in c if x % 2 == 0)}" for c in cases],
            "reference": f"def {name}(xs):\n    return sorted(x for x in xs if x % 2 == 0)\n"}


def _sum_stdio(rng: random.Random, name: str) -> Row:
    cases = [[rng.randint(-50, 50) for _ in range(rng.randint(2, 5))] for _ in range(3)]
    return {"prompt": "Write a Python program that reads integers separated by spaces from one line of standard "
                      "input and prints their sum.",
            "tests": [{"input": " ".join(map(str, c)) + "\n", "output": f"{sum(c)}\n"} for c in cases],
            "reference": "print(sum(map(int, input().split())))\n"}


KINDS: list[Callable[[random.Random, str], Row]] = [_add_k, _multiple_of, _reverse_words, _evens, _sum_stdio]


def make_code_tasks(n: int, *, seed: int) -> list[Row]:
    """``n`` rows drawn with ``seed``, cycling through the kinds (function names vary: ``solve_<i>``)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = f"solve_{i}"
        row = KINDS[i % len(KINDS)](rng, name)
        row["entry_point"] = None if row["prompt"].startswith("Write a Python program") else name
        rows.append(row)
    return rows


def fenced(code: str) -> str:
    """A completion that answers with ``code`` in a python block (as a chat model would)."""
    return f"```python\n{code}```"


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[3] / "examples" / "data"
    write_jsonl(make_code_tasks(200, seed=11), out / "code_train.jsonl")
    write_jsonl(make_code_tasks(40, seed=12), out / "code_eval.jsonl")
    print(f"wrote {out}")
