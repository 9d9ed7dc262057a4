"""Synthetic preferences on the arithmetic task: the right equation in the asked form vs a wrong or badly
formatted answer (DPO family), and the same answers unpaired with desirable / undesirable labels (KTO).

The prompts are the embedded task's (``raylhf.demo.tasks.demo_data``: "What is 30+17? Reply with the equation, like
2+3=5."), the held-out prompts are the demo's held-out prompts, so greedy accuracies are comparable with the
GRPO demo. Pure data: imports no trainer. ``python -m raylhf.demo.tasks.dpo_pairs`` rewrites the small files
under examples/data/.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from raylhf.config import DemoConfig
from raylhf.data import PreferenceExample, PromptExample
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl
from raylhf.demo.tasks.demo_data import INSTRUCTION, demo_splits

# What a rejected answer looks like (share of the pairs): a wrong equation (the asked form, wrong number),
# the right number in another style, a wrong number in another style.
REJECTED_KINDS: tuple[tuple[str, float], ...] = (
    ("wrong_equation", 0.5), ("right_number_other_style", 0.25), ("wrong_number_other_style", 0.25))
OTHER_STYLES = ("{x}", "The answer is {x}.")


def _wrong(value: int, rng: random.Random) -> int:
    """A nearby wrong answer (off by 1-9, never negative, never the right one)."""
    while True:
        x = value + rng.choice([-1, 1]) * rng.randint(1, 9)
        if x >= 0 and x != value:
            return x


def answers(question: str, value: int, rng: random.Random) -> tuple[str, str, str]:
    """``(chosen, rejected, rejected_kind)`` for ``question`` (``"12+7"``) whose result is ``value``."""
    chosen = f"{question}={value}"
    kind = rng.choices([k for k, _ in REJECTED_KINDS], weights=[w for _, w in REJECTED_KINDS])[0]
    if kind == "wrong_equation":
        rejected = f"{question}={_wrong(value, rng)}"
    else:
        x = value if kind == "right_number_other_style" else _wrong(value, rng)
        rejected = rng.choice(OTHER_STYLES).format(x=x)
    return chosen, rejected, kind


def _question(ex: PromptExample) -> tuple[str, int]:
    eq = str(ex.extras["equation"])
    question, value = eq.split("=")
    return question, int(value)


def preference_rows(prompts: list[PromptExample], seed: int) -> list[dict[str, Any]]:
    """One pair per prompt: ``{prompt, chosen, rejected, rejected_kind, solution, equation}`` (JSON-ready)."""
    rng = random.Random(seed)
    rows = []
    for ex in prompts:
        question, value = _question(ex)
        chosen, rejected, kind = answers(question, value, rng)
        rows.append({"prompt": ex.messages[-1]["content"], "chosen": chosen, "rejected": rejected,
                     "rejected_kind": kind, **ex.extras})
    return rows


def unpaired_rows(prompts: list[PromptExample], seed: int, desirable_share: float = 0.5) -> list[dict[str, Any]]:
    """One labelled answer per prompt (KTO): ``{prompt, completion, label, solution, equation}``; ``label`` is
    true (the right equation) for a share ``desirable_share`` of the prompts, else a rejected-style answer."""
    rng = random.Random(seed)
    rows = []
    for ex in prompts:
        question, value = _question(ex)
        chosen, rejected, _ = answers(question, value, rng)
        good = rng.random() < desirable_share
        rows.append({"prompt": ex.messages[-1]["content"], "completion": chosen if good else rejected,
                     "label": good, **ex.extras})
    return rows


def to_pairs(rows: list[dict[str, Any]]) -> list[PreferenceExample]:
    return [PreferenceExample([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in rows]


def preference_splits(demo: DemoConfig) -> tuple[list[PreferenceExample], list[PreferenceExample], list[PromptExample]]:
    """(train pairs, held-out pairs, held-out prompts): one pair per prompt of the demo's train / held-out split."""
    train, heldout = demo_splits(demo)
    return to_pairs(preference_rows(train, seed=21)), to_pairs(preference_rows(heldout, seed=22)), heldout


def unpaired_splits(demo: DemoConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[PromptExample]]:
    """(train rows, held-out rows, held-out prompts) of unpaired labelled answers (see :func:`unpaired_rows`)."""
    train, heldout = demo_splits(demo)
    return unpaired_rows(train, seed=23), unpaired_rows(heldout, seed=24), heldout


def _file_prompts(n: int, seed: int, exclude: set[str] | None = None, max_operand: int = 50) -> list[PromptExample]:
    skip = exclude or set()
    rows = [r for r in make_problems(2 * n, seed=seed, max_operand=max_operand) if r["prompt"] not in skip][:n]
    return [PromptExample([{"role": "user", "content": r["prompt"] + INSTRUCTION}],
                          {"solution": r["solution"], "equation": r["equation"]}) for r in rows]


def write_example_files(out: Path) -> list[Path]:
    """The small shipped files: preference pairs (train / eval) and unpaired KTO rows (train / eval); the eval
    prompts are not among the train prompts."""
    def split(n_train: int, n_eval: int, seed: int) -> tuple[list[PromptExample], list[PromptExample]]:
        train = _file_prompts(n_train, seed)
        seen = {ex.messages[-1]["content"].removesuffix(INSTRUCTION) for ex in train}
        return train, _file_prompts(n_eval, seed + 1, exclude=seen)

    pairs_train, pairs_eval = split(256, 64, seed=31)
    kto_train, kto_eval = split(256, 64, seed=33)
    return [
        write_jsonl(preference_rows(pairs_train, seed=41), out / "arithmetic_prefs_train.jsonl"),
        write_jsonl(preference_rows(pairs_eval, seed=42), out / "arithmetic_prefs_eval.jsonl"),
        write_jsonl(unpaired_rows(kto_train, seed=43), out / "arithmetic_kto_train.jsonl"),
        write_jsonl(unpaired_rows(kto_eval, seed=44), out / "arithmetic_kto_eval.jsonl"),
    ]


if __name__ == "__main__":
    for p in write_example_files(Path(__file__).resolve().parents[3] / "examples" / "data"):
        print(f"wrote {p}")
