"""The embedded arithmetic task of the default runs (no data files given): prompts that ask for the
equation, held-out prompts, and the SFT warm-up demonstrations (mixed answer styles, some wrong).

Pure data: the trainers' default runs and the demo read it; it imports no trainer.
"""

from __future__ import annotations

import random

from raylhf.config import DemoConfig
from raylhf.data import PromptExample, SFTExample
from raylhf.demo.tasks.arithmetic import make_problems

INSTRUCTION = " Reply with the equation, like 2+3=5."
# How the warm-up demonstrations answer: a mix of styles, as a pool of sloppy annotators would write, and a
# share of them wrong. Only the first style follows the instruction, and the verifier rewards only a right
# equation. The equation is also where a small model computes best (it restates the operands first), so
# RL that moves the policy to the asked form and away from the wrong answers raises correctness too.
STYLES = ("{q}={x}", "{x}", "The answer is {x}.")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text + INSTRUCTION}]


def _heldout_rows(demo: DemoConfig) -> list[dict[str, str]]:
    return make_problems(demo.num_heldout, seed=11, max_operand=demo.max_operand)


def demo_splits(demo: DemoConfig) -> tuple[list[PromptExample], list[PromptExample]]:
    """(train prompts, held-out prompts): disjoint problems."""
    heldout_rows = _heldout_rows(demo)
    seen = {r["prompt"] for r in heldout_rows}
    train_rows = [r for r in make_problems(demo.num_train * 2, seed=10, max_operand=demo.max_operand) if r["prompt"] not in seen][: demo.num_train]
    to_ex = lambda rows: [PromptExample(_user(r["prompt"]), {"solution": r["solution"], "equation": r["equation"]})  # noqa: E731
                          for r in rows]
    return to_ex(train_rows), to_ex(heldout_rows)


def demo_sft_examples(demo: DemoConfig) -> list[SFTExample]:
    """Warm-up demonstrations: mixed answer styles, and a share ``demo.sft_noise`` of wrong answers (off by
    1-9), as a pool of sloppy annotators would write. Imitation learns the styles and the mistakes."""
    heldout = {r["prompt"] for r in _heldout_rows(demo)}
    rows = [r for r in make_problems(demo.sft_examples * 2, seed=12, max_operand=demo.max_operand) if r["prompt"] not in heldout]
    rng = random.Random(13)
    out = []
    for r in rows[: demo.sft_examples]:
        question = r["prompt"].removeprefix("What is ").removesuffix("?")
        answer = int(r["solution"])
        if rng.random() < demo.sft_noise:
            answer = max(0, answer + rng.choice([-1, 1]) * rng.randint(1, 9))
        out.append(SFTExample(_user(r["prompt"]), rng.choice(STYLES).format(x=answer, q=question)))
    return out
