"""Synthetic preference pairs for the reward-model default run (no data files): arithmetic prompts where the
chosen reply is the right equation and the rejected one a wrong equation, or the right / a wrong number in
another style (the kinds of ``raylhf.demo.tasks.dpo_pairs``, the DPO family's data), a third of the pairs each.

Unlike the DPO data, half of the prompts are the bare question ("What is 4+18?", as in
examples/data/arithmetic_train.jsonl) and half carry the demo's instruction, so the reward model also scores
GRPO rollouts on the bare prompts. Pure data (it imports no trainer). Each pair carries its ``kind`` so
held-out accuracy can be reported per kind: ``wrong_equation`` pairs need arithmetic (the answer is off by
1-9, so its last digit differs), the others only the asked form.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raylhf.data import PreferenceExample
from raylhf.demo.tasks.arithmetic import make_problems
from raylhf.demo.tasks.demo_data import INSTRUCTION
from raylhf.demo.tasks.dpo_pairs import OTHER_STYLES, REJECTED_KINDS

KINDS: tuple[str, ...] = tuple(k for k, _ in REJECTED_KINDS)  # drawn with equal shares here


@dataclass
class LabelledPair:
    """A preference pair and what makes the rejected reply worse (one of ``KINDS``)."""

    example: PreferenceExample
    kind: str


def _wrong(value: int, rng: random.Random) -> int:
    """A nearby wrong answer: off by 1-9, never negative."""
    x = value + rng.choice([-1, 1]) * rng.randint(1, 9)
    return x if x >= 0 else value + rng.randint(1, 9)


def _pair(row: dict[str, str], rng: random.Random) -> LabelledPair:
    question = row["prompt"].removeprefix("What is ").removesuffix("?")
    value = int(row["solution"])
    kind = rng.choice(KINDS)
    if kind == "wrong_equation":
        rejected = f"{question}={_wrong(value, rng)}"
    else:
        number = value if kind == "right_number_other_style" else _wrong(value, rng)
        rejected = rng.choice(OTHER_STYLES).format(x=number)
    chosen = f"{question}={value}"
    prompt = row["prompt"] + (INSTRUCTION if rng.random() < 0.5 else "")
    return LabelledPair(PreferenceExample([{"role": "user", "content": prompt}], chosen, rejected), kind)


def arithmetic_pair_splits(num_train: int, num_heldout: int, *, max_operand: int = 50, seed: int = 20
                           ) -> tuple[list[LabelledPair], list[LabelledPair]]:
    """(train pairs, held-out pairs): the held-out problems never occur in training (problems may repeat
    within the training pairs, with other replies)."""
    heldout_rows = make_problems(num_heldout, seed=seed + 1, max_operand=max_operand)
    seen = {r["prompt"] for r in heldout_rows}
    train_rows = [r for r in make_problems(num_train * 3, seed=seed, max_operand=max_operand)
                  if r["prompt"] not in seen][:num_train]
    if len(train_rows) < num_train:
        raise ValueError(f"only {len(train_rows)} training problems with operands up to {max_operand} are not "
                         f"held out; lower the number of training pairs or raise max_operand")
    rng = random.Random(seed + 2)
    return [_pair(r, rng) for r in train_rows], [_pair(r, rng) for r in heldout_rows]
