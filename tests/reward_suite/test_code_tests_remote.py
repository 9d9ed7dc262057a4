"""A sandbox fleet on another machine: ``raylhf serve-reward`` serving the code_tests reward (its own sandbox:
section), scored through the remote-reward client with a token, as a training run's reward.remote would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rewards.base import RewardBatch
from rewards.remote import RemoteReward

try:  # tests/reward_suite as a package (with __init__.py) or, without one, on sys.path as pytest's rootdir
    from .test_remote import TOKEN, Proc, launch_all, run, stop_all
except ImportError:
    from test_remote import TOKEN, Proc, launch_all, run, stop_all  # type: ignore

ROOT = Path(__file__).resolve().parents[2]
READY = r"\[serve-reward\] listening on http://127\.0\.0\.1:(\d+) \(auth: on\)"
F = "```"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Proc:
    cfg = tmp_path_factory.mktemp("serve") / "serve_code.yaml"
    cfg.write_text("port: 0\ntoken_env: CODE_FLEET_TOKEN\nfunctions:\n  - {name: code_tests, kwargs: {timeout_s: 1.0}}\n"
                   "sandbox: {memory_mb: 256, max_processes: 16}\n")
    procs = launch_all([[sys.executable, "-m", "raylhf.serve_reward", "--config", str(cfg)]], READY,
                       env={**os.environ, "CODE_FLEET_TOKEN": TOKEN}, timeout=60.0)
    yield procs[0]
    stop_all(procs)


def test_code_tests_served_remotely(fleet: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_TOKEN", TOKEN)
    tests = ["assert twice(2) == 4", "assert twice(-3) == -6"]
    completions = [f"{F}python\ndef twice(x):\n    return 2 * x\n{F}", f"{F}python\ndef twice(x):\n    return x\n{F}",
                   f"{F}python\ndef twice(x):\n    while True:\n        pass\n{F}", "no code"]
    batch = RewardBatch(prompts=["write twice"] * 4, completions=completions, columns={"tests": [tests] * 4})
    client = RemoteReward({"name": "code", "url": fleet.base + "/score", "token_env": "CLIENT_TOKEN",
                           "timeout_s": 30.0, "retries": 1, "batch_size": 2})
    assert run(client, batch) == [1.0, 0.0, 0.0, 0.0]
    m = client.metrics()
    assert m["failed_items"] == 0 and m["server/code_tests/timeout_frac"] > 0
