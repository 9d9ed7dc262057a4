"""GRPO across raylets of a multi-node cluster, and through `ray job submit` against a started head."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import ray
import yaml

from raylhf.config.run import RayConfig
from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl
from raylhf.driver.cluster import init_ray
from raylhf.driver.weight_sync import sync_weights

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _overrides(tmp_path: Path, model: Path) -> dict[str, object]:
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl")
    return {
        "model.path": str(model), "data.train_files": [str(train)],
        "grpo.num_steps": 1, "grpo.prompt_batch_size": 2, "grpo.samples_per_prompt": 4,
        "rollout.max_new_tokens": 6, "rollout.num_cpus_per_engine": 1, "policy.num_cpus_per_worker": 1,
        "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False,
    }


def test_policy_and_rollout_on_different_raylets(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ray.cluster_utils import Cluster

    from raylhf.config import GRPOConfig, build_config
    from raylhf.trainers.grpo import run_grpo

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        init_ray(RayConfig(address=cluster.address), 0)
        over = _overrides(tmp_path, tiny_model_dir)
        over.update({"policy.num_cpus_per_worker": 2, "ray.address": cluster.address})
        cfg = build_config(GRPOConfig, overrides=list(over.items()))
        res = run_grpo(cfg)
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        assert set(res.placement["policy"]).isdisjoint(res.placement["rollout"]), res.placement
        assert res.history[-1]["time/sync"] > 0  # weights crossed raylets through the object store
        assert res.checkpoint and Path(res.checkpoint, "model.safetensors").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_weight_sync_parity_across_raylets(tiny_model_dir: Path) -> None:
    """Policy on one raylet, engine on another: after a step and a sync their log-probs agree (fp32)."""
    from ray.cluster_utils import Cluster

    from raylhf.config.sections import PolicyConfig, RolloutConfig
    from raylhf.core.batch import Objective
    from raylhf.driver.startup import start_policy, start_rollout

    from .helpers import engine_policy_logprob_diff, tiny_batch

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        init_ray(RayConfig(address=cluster.address), 0)
        policy = start_policy(PolicyConfig(lr=5e-3, micro_batch_size=4, num_cpus_per_worker=2),
                                 str(tiny_model_dir), "float32", 10, 0, "PACK")
        rollout = start_rollout(RolloutConfig(max_new_tokens=8, num_cpus_per_engine=1), str(tiny_model_dir),
                                   "float32", 256, "PACK")
        try:
            assert policy.call("node_id") != rollout.call("node_id")
            batch = tiny_batch(8)
            policy.call_split("train_step", batch, Objective(pg_coef=1.0, ce_coef=1.0).with_counts(batch))
            seqs = [x.tolist() for x in tiny_batch(4, seed=1).input_ids]
            stale = engine_policy_logprob_diff(policy, rollout, seqs)
            sync_weights(policy, rollout, bucket_mb=1)
            fresh = engine_policy_logprob_diff(policy, rollout, seqs)
            assert stale > 1e-2 and fresh < 2e-4, (stale, fresh)
        finally:
            policy.shutdown()
            rollout.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _processes_of(temp_dir: str) -> list[psutil.Process]:
    """Processes of the Ray instance whose --temp-dir is ``temp_dir`` (every Ray process names its temp, session
    or log dir under it on its command line), and their descendants (e.g. a job's entrypoint)."""
    mine = re.compile(re.escape(temp_dir) + r"(/|$)")
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and any(mine.search(a) for a in p.info["cmdline"] or ()):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
    return list(found.values())


def _stop_ray(temp_dir: str, timeout_s: float = 20.0) -> list[str]:
    """Stop only the Ray instance started with ``--temp-dir=temp_dir`` (not `ray stop`, which ends every Ray on the
    machine): SIGTERM, SIGKILL after ``timeout_s``. Returns the command lines of processes still there."""
    procs = _processes_of(temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    left = []
    for p in _processes_of(temp_dir):
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(p.cmdline()))
    return left


def test_ray_job_submit_against_local_head(tmp_path: Path, tiny_model_dir: Path) -> None:
    ray.shutdown()
    cfg_file = tmp_path / "job.yaml"
    tree: dict = {}
    for key, value in _overrides(tmp_path, tiny_model_dir).items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    tree["logging"]["run_name"] = "submitted"
    cfg_file.write_text(yaml.safe_dump(tree))
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # `python` in the entrypoint is this environment's; one explicit auth mode for head and client
    # (Ray 2.60 turns token auth on for a new cluster when ~/.ray/auth_token exists)
    env.update(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="disabled")
    # its own temp dir (short: Ray's socket paths under it must stay within the 107-byte limit) and its own ports,
    # so that neither starting nor stopping this head touches another Ray instance on the machine
    temp_dir = tempfile.mkdtemp(prefix="rlt-", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, metrics, env_agent, node_mgr, obj_mgr = _free_ports(9)
    ray_bin = str(bindir / "ray")
    leftover: list[str] = []
    try:
        start = subprocess.run(
            [ray_bin, "start", "--head", f"--temp-dir={temp_dir}", f"--port={gcs}", "--num-cpus=4",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={node_mgr}",
             f"--object-manager-port={obj_mgr}", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert start.returncode == 0, start.stdout + start.stderr
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
             "--", "python", "-m", "raylhf.grpo", "--config", str(cfg_file)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-4000:]
        assert "succeeded" in out.lower(), out[-4000:]
        rows = [json.loads(x) for x in (tmp_path / "runs" / "submitted" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 1 and "reward/mean" in rows[-1]
    finally:
        leftover = _stop_ray(temp_dir)
        if not leftover:
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftover, leftover
