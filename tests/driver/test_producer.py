"""RolloutProducer (raylhf/driver/producer.py) without actors: a fake engine queue that runs submitted generations in
order with the weights it holds, so versions and staleness can be checked exactly."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from raylhf.core.batch import Rollout
from raylhf.driver.producer import RolloutProducer
from raylhf.driver.stream import PromptStream


class FakeEngine:
    """Records the order of submissions; ``weights`` is what a sync queued behind them would have set."""

    def __init__(self) -> None:
        self.synced = 0
        self.log: list[tuple[str, int, int]] = []  # (what, step, version)

    def submit(self, prompt_ids: list[list[int]], n: int, step: int) -> Any:
        version = self.synced
        self.log.append(("submit", step, version))
        rollouts = [Rollout(i, ids, [step], [-0.5], "stop", text=f"s{step}v{version}") for i, ids in
                    enumerate(prompt_ids) for _ in range(n)]
        return type("P", (), {"result": lambda self: [rollouts]})()

    def generate(self, prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        self.log.append(("generate", step, self.synced))
        return [Rollout(i, ids, [step], [-0.5], "stop") for i, ids in enumerate(prompt_ids) for _ in range(n)]


def _producer(async_steps: int, engine: FakeEngine, num_steps: int = 6) -> tuple[RolloutProducer, PromptStream]:
    stream = PromptStream([f"p{i}" for i in range(40)], 2, shuffle=True, seed=3)  # type: ignore[list-item]
    prod = RolloutProducer(stream, async_steps, num_steps, render=lambda ps: [[ord(p[-1])] for p in ps],
                           submit=engine.submit, generate=engine.generate, version=lambda: engine.synced)
    return prod, stream


def _run(prod: RolloutProducer, engine: FakeEngine, steps: range, n: int = 2) -> list[list[Rollout]]:
    out = []
    for step in steps:
        prod.prompts(step)
        rollouts = prod.rollouts(step, n)
        out.append(rollouts)
        engine.synced += 1  # the step trains, then syncs
    return out


@pytest.mark.parametrize("k", [0, 1, 2])
def test_staleness_never_exceeds_the_bound_and_prompts_keep_their_order(k: int) -> None:
    engine = FakeEngine()
    prod, _ = _producer(k, engine)
    got = _run(prod, engine, range(1, 7))
    for step, rollouts in enumerate(got, start=1):
        lags = {step - 1 - r.version for r in rollouts}
        assert lags == {min(k, step - 1)}  # exactly k behind once the pipeline is full
        assert prod.metrics(step, rollouts)["async/staleness_max"] <= k
    reference, _ = _producer(0, FakeEngine())  # the same prompts in the same order whatever k is
    ref_engine = FakeEngine()
    reference._generate = ref_engine.generate
    same = _run(reference, ref_engine, range(1, 7))
    assert [[r.prompt_ids for r in rs] for rs in got] == [[r.prompt_ids for r in rs] for rs in same]
    submitted = [s for what, s, _ in engine.log if what == "submit"]
    assert submitted == ([] if k == 0 else list(range(1, 7)))  # never past the last step


def test_a_checkpoint_keeps_the_prefetched_rollouts_and_the_data_position() -> None:
    engine = FakeEngine()
    prod, _ = _producer(2, engine, num_steps=8)
    _run(prod, engine, range(1, 4))  # steps 1-3 trained; 4 and 5 prefetched
    data, saved = prod.data_state(), prod.state_dict()
    assert [p["step"] for p in saved["prefetched"]] == [4, 5]
    rest = _run(prod, engine, range(4, 9))

    engine2 = FakeEngine()
    engine2.synced = engine.synced = 3
    prod2, stream2 = _producer(2, engine2, num_steps=8)
    stream2.load_state_dict(data)
    prod2.load_state_dict(saved)
    resumed = _run(prod2, engine2, range(4, 9))
    assert [[(r.prompt_ids, r.version, r.text) for r in rs] for rs in resumed] == \
        [[(r.prompt_ids, r.version, r.text) for r in rs] for rs in rest]


# ---- partial rollouts: per-token versions and the staleness bound ----------------------------------------------

def test_a_continued_request_asks_for_the_tokens_left_with_a_seed_of_its_own() -> None:
    from vllm import SamplingParams

    from actors.engine import continued

    p = SamplingParams(max_tokens=100, seed=7, temperature=1.0)
    c1, c2 = continued(p, 60, 1), continued(p, 20, 2)
    assert (c1.max_tokens, c2.max_tokens, p.max_tokens) == (60, 20, 100)
    assert len({p.seed, c1.seed, c2.seed}) == 3 and c1.seed == continued(p, 5, 1).seed
    assert continued(SamplingParams(max_tokens=9), 3, 1).seed is None


def test_per_token_staleness_and_samples_beyond_the_bound_generated_again() -> None:
    from raylhf.driver.producer import token_lags

    mixed = Rollout(0, [1], [7, 8, 9, 10], [-0.1] * 4, "stop", version=1, versions=[1, 1, 2, 2])
    assert token_lags(4, mixed) == [2, 2, 1, 1]  # step 4 is trained by version 3
    assert RolloutProducer.metrics(4, [mixed]) == {
        "async/staleness_max": 2.0, "async/staleness_mean": 2.0, "async/token_staleness_max": 2.0,
        "async/token_staleness_mean": 1.5, "async/partial_frac": 1.0}

    engine = FakeEngine()
    stream = PromptStream([f"p{i}" for i in range(40)], 2, shuffle=False, seed=3)  # type: ignore[list-item]
    calls: list[tuple[list[list[int]], int]] = []

    def generate(prompt_ids: list[list[int]], n: int, step: int) -> list[Rollout]:
        calls.append((prompt_ids, step))
        return [Rollout(i, ids, [100 + step], [-0.5], "stop") for i, ids in enumerate(prompt_ids) for _ in range(n)]

    def submit(prompt_ids: list[list[int]], n: int, step: int) -> Any:
        # prompt 1's samples: the first token from version 0, the rest after a sync landed (partial)
        rollouts = [Rollout(i, ids, [step, step], [-0.5, -0.5], "stop", versions=[0, 1] if i == 1 else None)
                    for i, ids in enumerate(prompt_ids) for _ in range(n)]
        return type("P", (), {"result": lambda self: [rollouts]})()

    prod = RolloutProducer(stream, 1, 6, render=lambda ps: [[ord(p[-1])] for p in ps], submit=submit,
                           generate=generate, version=lambda: engine.synced, max_staleness=0)
    prod.prompts(1)
    prod.rollouts(1, 2)  # steps 1 and 2 submitted at version 0
    engine.synced = 1
    got = prod.rollouts(2, 2)  # trained by version 1: prompt 0 lags 1 everywhere, prompt 1's first token too
    assert [c[1] for c in calls] == [2] and len(calls[0][0]) == 2  # both prompts of step 2 generated again
    assert [r.prompt_index for r in got] == [0, 0, 1, 1] and all(r.response_ids == [102] for r in got)
    assert prod.last_metrics["async/requeued"] == 4.0 and prod.last_metrics["async/staleness_max"] == 0.0


def test_steps_sampled_outside_the_producer_leave_the_data_position_to_the_stream() -> None:
    """Dynamic sampling (driver/dynamic.py) draws extra prompts from the stream itself and tells the producer the
    step is done: a checkpoint then saves the stream's position after the extra draws, and a resumed run draws the
    batches the original would have drawn next."""
    engine = FakeEngine()
    prod, stream = _producer(0, engine)
    for step in (1, 2):
        prod.prompts(step)
        next(stream)  # an extra round of prompts drawn by dynamic sampling
        prod.consumed(step)
    assert prod.queue == deque() and prod.data_state() == stream.state_dict()
    saved = prod.data_state()
    expected = [prod.prompts(3)[0], next(stream)]
    resumed, stream2 = _producer(0, FakeEngine())
    stream2.load_state_dict(saved)
    assert [resumed.prompts(3)[0], next(stream2)] == expected
    with pytest.raises(RuntimeError, match="on-policy"):
        _producer(1, FakeEngine())[0].consumed(1)
