"""Over-provisioned dynamic sampling (raylhf/driver/dynamic.py): acceptance in submission order, rounds drawn
only when what is in flight cannot fill the batch, surplus aborted, the round limit, and reproducibility under any
completion order. The engines and the reward workers are stand-ins: what is tested is the driver's decisions."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from raylhf.core.batch import Rollout
from raylhf.driver.dynamic import sample_varied
from raylhf.driver.phases import Scores

N = 2  # samples per group


class Engines:
    """``submit(ids, index)`` records the call; a group's rewards are given per prompt (the prompt's only token):
    equal rewards for an 'agreeing' prompt, varied ones for a 'varied' prompt."""

    def __init__(self, varied: set[int]) -> None:
        self.varied, self.submitted, self.aborted = varied, [], 0

    def submit(self, ids: list[int], index: int) -> Any:
        self.submitted.append((index, ids[0]))
        aborted = self  # a surplus group returns what it had: 3 tokens per sample

        class Pending:
            def result(self) -> list[list[Rollout]]:
                toks = [7, 7, 7] if aborted.aborted else [7]
                return [[Rollout(index, list(ids), list(toks), [0.0] * len(toks), "stop") for _ in range(N)]]

        return Pending()

    def score(self, rollouts: list[Rollout], prompts: list[Any]) -> Scores:
        p = rollouts[0].prompt_ids[0]
        vals = [1.0, 0.0] if p in self.varied else [1.0, 1.0]
        return Scores(torch.tensor(vals), {"accuracy": list(vals)}, {}, {"reward_calls": 1.0}, {"accuracy": 1.0})

    def abort(self) -> None:
        self.aborted += 1


def stream(start: int, size: int) -> Any:
    nxt = [start]

    def draw() -> list[tuple[Any, list[int]]]:
        batch = [(f"p{k}", [k]) for k in range(nxt[0], nxt[0] + size)]
        nxt[0] += size
        return batch

    return draw


def test_accepts_in_submission_order_and_aborts_the_surplus() -> None:
    # prompts 0..3 this step; 1 and 3 vary; need 2 -> both accepted in round 1, nothing drawn, nothing aborted
    eng = Engines({1, 3})
    v = sample_varied([(f"p{k}", [k]) for k in range(4)], stream(4, 4), eng.submit, eng.score, eng.abort, 2, N, 3)
    assert [p for p in v.prompts] == ["p1", "p3"] and [r.prompt_index for r in v.rollouts] == [0, 0, 1, 1]
    assert v.scores.total.tolist() == [1.0, 0.0, 1.0, 0.0] and v.scores.per_function["accuracy"] == [1, 0, 1, 0]
    assert v.metrics == {"rollout/aborted_tokens": 0.0, "rollout/sampling_rounds": 1.0,
                         "rollout/groups_rejected": 2.0, "rollout/groups_aborted": 0.0}
    assert eng.aborted == 0 and [i for i, _ in eng.submitted] == [0, 1, 2, 3]


def test_over_provisions_a_round_when_the_rest_cannot_fill_the_batch() -> None:
    # need 3 of 4; only prompt 1 varies in round 1: after prompts 0 and 2 agree, round 2 (prompts 4..7) is drawn
    # as soon as the undecided ones (3) cannot fill the batch; 5 and 6 vary; 7 is surplus and aborted
    eng = Engines({1, 5, 6})
    v = sample_varied([(f"p{k}", [k]) for k in range(4)], stream(4, 4), eng.submit, eng.score, eng.abort, 3, N, 3)
    assert v.prompts == ["p1", "p5", "p6"]
    assert [i for i, _ in eng.submitted] == list(range(8))  # group index = submission position (the seed's index)
    assert v.metrics["rollout/sampling_rounds"] == 2.0 and v.metrics["rollout/groups_rejected"] == 4.0
    assert v.metrics["rollout/groups_aborted"] == 1.0 and v.metrics["rollout/aborted_tokens"] == 3.0 * N
    assert eng.aborted == 1


def test_round_limit_trains_on_what_it_has_and_warns() -> None:
    eng = Engines({2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = sample_varied([(f"p{k}", [k]) for k in range(2)], stream(2, 2), eng.submit, eng.score, eng.abort, 2, N,
                          2)
    assert v.prompts == ["p2"] and v.metrics["rollout/sampling_rounds"] == 2.0
    assert any("grpo.max_sampling_rounds=2" in str(w.message) for w in caught)
    # nothing varies at all: the step's first groups come back (zero advantage: the trainer skips the update)
    eng = Engines(set())
    with pytest.warns(UserWarning, match="0 of the 2 groups"):
        v = sample_varied([(f"p{k}", [k]) for k in range(2)], stream(2, 2), eng.submit, eng.score, eng.abort, 2, N, 1)
    assert v.prompts == ["p0", "p1"] and v.scores.total.tolist() == [1.0] * 4
