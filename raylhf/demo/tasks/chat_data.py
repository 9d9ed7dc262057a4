"""Two-turn arithmetic chats: the embedded data of ``python -m raylhf.sft`` and ``examples/data/chat_sft.jsonl``.

Each conversation asks a sum, then asks to add a number to the previous result, so the second reply depends
on the first turn's answer (multi-turn context matters)::

    user: What is 12+7?           assistant: 12+7=19
    user: Now add 5 to that.      assistant: 19+5=24

Pure data: it imports no trainer (``python -m raylhf.demo.tasks.chat_data`` rewrites the example file).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from raylhf.config import DemoConfig
from raylhf.data import SFTExample
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl


def two_turn_chats(n: int, *, seed: int, max_operand: int = 20, exclude: set[str] | None = None
                   ) -> list[dict[str, Any]]:
    """``n`` rows ``{"messages": [user, assistant, user, assistant]}`` drawn with ``seed``; first questions in
    ``exclude`` are skipped (to keep a held-out set disjoint)."""
    rng = random.Random(seed)
    exclude = exclude or set()
    rows: list[dict[str, Any]] = []
    for p in make_problems(4 * n + 16, seed=seed, max_operand=max_operand):
        if len(rows) == n:
            break
        if p["prompt"] in exclude:
            continue
        first, add = int(p["solution"]), rng.randint(1, max_operand)
        rows.append({"messages": [
            {"role": "user", "content": p["prompt"]},
            {"role": "assistant", "content": p["equation"]},
            {"role": "user", "content": f"Now add {add} to that."},
            {"role": "assistant", "content": f"{first}+{add}={first + add}"},
        ]})
    return rows


def chat_examples(rows: list[dict[str, Any]]) -> list[SFTExample]:
    """The rows as SFT examples (the last assistant turn is the response, the turns before it the prompt)."""
    return [SFTExample(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows]


def demo_chat_splits(demo: DemoConfig) -> tuple[list[SFTExample], list[SFTExample]]:
    """(``demo.sft_examples`` training chats, ``demo.num_heldout`` held-out chats with other first questions)."""
    heldout = two_turn_chats(demo.num_heldout, seed=21, max_operand=demo.max_operand)
    seen = {r["messages"][0]["content"] for r in heldout}
    train = two_turn_chats(demo.sft_examples, seed=22, max_operand=demo.max_operand, exclude=seen)
    return chat_examples(train), chat_examples(heldout)


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[3] / "examples" / "data" / "chat_sft.jsonl"
    write_jsonl(two_turn_chats(64, seed=5, max_operand=20), out)
    print(f"wrote {out}")
