"""Arithmetic word-free prompts ("What is 12+7?") with exact answers: the embedded demo task."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def make_problems(n: int, *, seed: int, max_operand: int = 20, ops: str = "+") -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "What is a+b?", "solution": "c", "equation": "a+b=c"}`` drawn with ``seed``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
        if op == "-" and b > a:
            a, b = b, a
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": f"What is {a}{op}{b}?", "solution": str(value), "equation": f"{a}{op}{b}={value}"})
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: str | Path, rename: dict[str, str] | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rename = rename or {}
    with p.open("w") as f:
        for r in rows:
            f.write(json.dumps({rename.get(k, k): v for k, v in r.items()}) + "\n")
    return p


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[3] / "examples" / "data"
    write_jsonl(make_problems(256, seed=1), out / "arithmetic_train.jsonl")
    write_jsonl(make_problems(64, seed=2), out / "arithmetic_eval.jsonl")
    sft = [{"prompt": r["prompt"], "response": r["solution"]} for r in make_problems(256, seed=3)]
    write_jsonl(sft, out / "arithmetic_sft.jsonl")
    print(f"wrote {out}")
