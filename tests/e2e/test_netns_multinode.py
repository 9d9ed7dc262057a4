"""GRPO across a real network boundary: the Ray head and a worker node in two network namespaces joined by a veth
pair, each node with its own address, the rollout engine on the worker node (``rollout.resources``), the weights
crossing in the collective (gloo) sync.

The multi-node tests in test_cluster_runs.py run every raylet on one loopback address, where any interface works.
Here the only way between the nodes is the veth pair: a collective whose sockets pick another interface (gloo's
default resolves the hostname, which in a namespace is no address of the node, and falls back to 127.0.0.1) never
connects. The actors must derive the interface from their node's Ray address (actors/netif.py) and say so; a link
cut in the middle of a sync must end the run with the weight sync's named error within its timeout, not a hang.

Needs root and ``ip netns`` (Debian's iproute2); skipped otherwise. Every process the test starts lives in one of
the two namespaces (and the run in a process group of its own): the finalizer kills what is left in them, then
deletes them (and the veth pair with them), also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.tier2]  # ~100 s: the slower tier, run by .ci/run after make test
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IP = shutil.which("ip") or "/usr/sbin/ip"
GCS_PORT = 6380  # inside the head's namespace: no other Ray instance there


def _run(*args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def _why_no_netns() -> str:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if not os.path.exists(IP):
        return "`ip` (iproute2) is not installed"
    probe = f"rlhf-probe-{os.getpid()}"
    res = _run(IP, "netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"`ip netns add` fails here: {res.stderr.strip()}"
    _run(IP, "netns", "del", probe, check=False)
    return ""


@dataclass
class Nodes:
    head_ns: str
    worker_ns: str
    head_if: str
    worker_if: str
    head_ip: str
    worker_ip: str
    temp_dirs: tuple[str, str]  # one per node: a log monitor tails every log under its node's temp dir

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{GCS_PORT}"

    def in_ns(self, ns: str, *args: str) -> list[str]:
        return [IP, "netns", "exec", ns, *args]


def _kill_namespace(ns: str) -> None:
    """Every process inside ``ns``: SIGTERM, SIGKILL after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = [int(p) for p in _run(IP, "netns", "pids", ns, check=False).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    why = _why_no_netns()
    if why:
        pytest.skip(why)
    pid = os.getpid()
    x = pid % 250 + 1
    n = Nodes(f"rlhf-h-{pid}", f"rlhf-w-{pid}", f"rlh{pid}"[:15], f"rlw{pid}"[:15], f"10.213.{x}.1",
              f"10.213.{x}.2", (tempfile.mkdtemp(prefix="rlnh-", dir="/tmp"),  # short: Ray's socket paths
                                tempfile.mkdtemp(prefix="rlnw-", dir="/tmp")))
    made: list[str] = []
    try:
        for ns in (n.head_ns, n.worker_ns):
            _run(IP, "netns", "add", ns)
            made.append(ns)
        _run(IP, "link", "add", n.head_if, "type", "veth", "peer", "name", n.worker_if)
        for ns, dev, addr in ((n.head_ns, n.head_if, n.head_ip), (n.worker_ns, n.worker_if, n.worker_ip)):
            _run(IP, "link", "set", dev, "netns", ns)
            _run(IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run(IP, "-n", ns, "link", "set", "lo", "up")
            _run(IP, "-n", ns, "link", "set", dev, "up")
        env_args = ["env", f"PATH={BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE=disabled"]
        ray = str(BIN / "ray")
        _run(*n.in_ns(n.head_ns, *env_args, ray, "start", "--head", f"--node-ip-address={n.head_ip}",
                      f"--port={GCS_PORT}", "--num-cpus=3", "--resources", '{"head": 1}', f"--temp-dir={n.temp_dirs[0]}",
                      "--include-dashboard=false", "--disable-usage-stats"), timeout=120)
        _run(*n.in_ns(n.worker_ns, *env_args, ray, "start", f"--address={n.address}",
                      f"--node-ip-address={n.worker_ip}", "--num-cpus=1", "--resources", '{"engine_node": 1}',
                      f"--temp-dir={n.temp_dirs[1]}", "--disable-usage-stats"), timeout=120)
        deadline, count = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            status = _run(*n.in_ns(n.head_ns, *env_args, ray, "status", f"--address={n.address}"), check=False,
                          timeout=60)
            count = len(re.findall(r"^\s*1 node_", status.stdout, re.M))
            if count == 2:
                break
            time.sleep(1)
        assert count == 2, f"the worker node did not join the head within 60 s: {status.stdout}{status.stderr}"
        yield n
    finally:
        for ns in made:
            _kill_namespace(ns)
            _run(IP, "netns", "del", ns, check=False)  # the veth pair goes with it
        for d in n.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _config(tmp_path: Path, model: Path, n: Nodes, **over: object) -> Path:
    train = write_jsonl(make_problems(16, seed=1, max_operand=9), tmp_path / "train.jsonl")
    tree: dict[str, object] = {
        "model": {"path": str(model)}, "data": {"train_files": [str(train)]},
        "grpo": {"num_steps": 2, "prompt_batch_size": 2, "samples_per_prompt": 4, "kl_coef": 0.0},
        "policy": {"num_cpus_per_worker": 1, "micro_batch_size": 8},
        "rollout": {"max_new_tokens": 6, "num_cpus_per_engine": 1, "weight_sync": "collective",
                    "sync_bucket_mb": 1, "resources": {"engine_node": 1}},
        "runtime": {"phase_timeout_s": 120},
        "ray": {"address": n.address},
        "logging": {"run_dir": str(tmp_path / "runs"), "run_name": "netns", "progress": False, "report_to": [],
                    "log_completions": 0},
        "checkpoint": {"save_final": False},
    }
    for key, value in over.items():
        section, leaf = key.split("__")
        tree[section][leaf] = value  # type: ignore[index]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _start_run(n: Nodes, cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m raylhf.grpo`` inside the head's namespace, in a process group of its own."""
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GLOO_SOCKET_IFNAME",
                                                             "NCCL_SOCKET_IFNAME")}
    full.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0", **(env or {}))
    with log.open("wb") as out:
        return subprocess.Popen(n.in_ns(n.head_ns, sys.executable, "-m", "raylhf.grpo", "--config", str(cfg)),
                                cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The run's exit status; a run past ``timeout_s`` is killed (its whole process group) and fails the test."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise


def test_grpo_with_the_engine_across_the_link(nodes: Nodes, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two steps, the engine on the worker node, the weights through the collective sync, verified each step; the
    actors' collectives on the veth interfaces, derived from their nodes' Ray addresses."""
    log = tmp_path / "run.log"
    proc = _start_run(nodes, _config(tmp_path, tiny_model_dir, nodes), log)
    try:
        rc = _finish(proc, 420)
    finally:
        out = log.read_text(errors="replace")
    assert rc == 0, out[-6000:]
    placement = re.search(r"nodes: (.*)", out)
    assert placement, out[-4000:]
    groups = dict(re.findall(r"(\w+)=\[([^\]]*)\]", placement.group(1)))
    assert groups["rollout"] != groups["policy"], placement.group(0)  # the engine is not on the head's node
    # the engine ran on the worker node (its Ray address), and each side's collectives use its end of the veth pair
    # (not lo, not the host's interface)
    engine = re.search(r"\(RolloutWorker pid=\d+.*\[raylhf\] rollout engine: collectives use interface (\S+) \(it "
                       r"carries the node address ([\d.]+)\)", out)
    assert engine and engine.groups() == (nodes.worker_if, nodes.worker_ip), out[-6000:]
    policy = re.search(r"\(PolicyWorker pid=\d+.*\[raylhf\] DeepSpeed process group: collectives use interface (\S+) "
                       r"\(it carries the node address ([\d.]+)\)", out)
    assert policy and policy.groups() == (nodes.head_if, nodes.head_ip), out[-6000:]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "netns" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "sync/verified" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["sync/verified"] == 1.0 for r in steps), rows


def test_a_link_cut_during_the_sync_ends_the_run_with_the_named_error(nodes: Nodes, tmp_path: Path,
                                                                      tiny_model_dir: Path) -> None:
    """The policy's rank 0 holds at the start of its first send (actors/faults.py: RAYLHF_FAULT_HOLD) while the
    test takes the worker's end of the link down; the sync's collectives time out (rollout.sync_timeout_s=15)
    and the run exits with the weight sync's error naming the peers and the field, within that limit plus the
    teardown."""
    timeout_s = 15
    marker = tmp_path / "holding"
    cfg = _config(tmp_path, tiny_model_dir, nodes, grpo__num_steps=1, rollout__sync_timeout_s=timeout_s,
                  runtime__max_actor_restarts=0)
    log = tmp_path / "run.log"
    proc = _start_run(nodes, cfg, log, env={"RAYLHF_FAULT_HOLD": f"policy.send_weights@1:{marker}"})
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the run never reached its first sync: {log.read_text(errors='replace')[-4000:]}"
        _run(*nodes.in_ns(nodes.worker_ns, IP, "link", "set", nodes.worker_if, "down"))
        cut = time.monotonic()
        marker.unlink()
        rc = _finish(proc, timeout_s + 150)
        took = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out = log.read_text(errors="replace")
    assert rc != 0, out[-6000:]
    assert "weight sync failed (collective path)" in out, out[-6000:]
    assert "rollout.sync_timeout_s" in out and "15s here" in out and nodes.worker_ip in out, out[-6000:]
    print(f"the run ended {took:.1f}s after the cut (rollout.sync_timeout_s={timeout_s})")
    assert took < timeout_s + 90, f"{took:.0f}s from the cut to the run's end"
