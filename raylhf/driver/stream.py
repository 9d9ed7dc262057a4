"""The prompts of an online run: an endless, resumable stream of shuffled batches, and the per-phase seeds."""

from __future__ import annotations

import random
from typing import Any

from raylhf.data import PromptExample


class PromptStream:
    """Endless batches of prompts, reshuffled every epoch; ``state_dict`` / ``load_state_dict`` make the
    position and the shuffle state part of a checkpoint, so a resumed run sees the batches the original
    would have seen."""

    def __init__(self, examples: list[PromptExample], batch_size: int, shuffle: bool, seed: int) -> None:
        self.examples, self.batch_size, self.shuffle = examples, batch_size, shuffle
        self.rng = random.Random(seed)
        self.epoch, self.pos = 0, 0
        self.order = self._new_order()

    def _new_order(self) -> list[int]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            self.rng.shuffle(order)
        return order

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> list[PromptExample]:
        if self.pos + self.batch_size > len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._new_order()
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return [self.examples[i] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "pos": self.pos, "order": list(self.order), "num_examples": len(self.examples),
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_examples"] != len(self.examples):
            raise ValueError(f"the checkpoint's data stream covers {state['num_examples']} prompts, this run has "
                             f"{len(self.examples)}: resume with the same data files and data.max_prompt_length")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epoch, self.pos, self.order = int(state["epoch"]), int(state["pos"]), list(state["order"])


def prompt_stream(examples: list[PromptExample], batch_size: int, shuffle: bool, seed: int) -> PromptStream:
    return PromptStream(examples, batch_size, shuffle, seed)


def phase_seed(seed: int, step: int, phase: str) -> int:
    """A sampling seed that depends only on the run seed, the step and the phase (not on history)."""
    return (seed * 1_000_003 + step * 7919 + sum(map(ord, phase))) % 2**31
