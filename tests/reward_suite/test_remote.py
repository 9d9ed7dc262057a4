"""RemoteReward (the HTTP reward client) and the wire formats, against real OpenRLHF-style server processes
(tests/reward_suite/openrlhf_server.py) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import math
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rewards.base import RewardBatch
from rewards.protocol import RemoteRewardError, openrlhf_request, parse_response, raylhf_request
from rewards.remote import RemoteReward

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOKEN = "s3cret-Token-value-0123456789"
TOKEN_ENV = "RAYLHF_TEST_REMOTE_TOKEN"

# ------------------------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    reader: threading.Thread
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stop(proc: Proc) -> None:
    p = proc.popen
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    proc.reader.join(timeout=5)  # EOF once the process is gone
    if p.stdout is not None and not proc.reader.is_alive():
        p.stdout.close()


def launch_all(cmds: list[list[str]], ready: str, env: dict[str, str] | None = None,
               timeout: float = 30.0) -> list[Proc]:
    """Start every command at once, then wait (bounded) for each to print a line matching ``ready`` whose
    first group is the port. Output keeps being drained by a thread so the pipe never fills."""
    procs: list[Proc] = []
    queues: list[queue.Queue[str]] = []
    for cmd in cmds:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
        q: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda p=p, q=q: [q.put(line) for line in p.stdout], daemon=True)
        reader.start()
        procs.append(Proc(p, reader))
        queues.append(q)
    deadline = time.monotonic() + timeout
    try:
        for proc, q in zip(procs, queues, strict=True):
            while not proc.port:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.popen.args} not ready within {timeout}s: "
                                       f"{''.join(proc.lines)}")
                try:
                    line = q.get(timeout=0.2)
                except queue.Empty:
                    if proc.popen.poll() is not None:
                        raise RuntimeError(f"{proc.popen.args} exited {proc.popen.returncode}: "
                                           f"{''.join(proc.lines)}") from None
                    continue
                proc.lines.append(line)
                m = re.search(ready, line)
                if m:
                    proc.port = int(m.group(1))
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        _stop(proc)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


SERVERS: dict[str, list[str]] = {
    "plain": [],
    "token": ["--token", TOKEN],
    "fail2_ok": ["--fail-first", "2"],
    "fail2_bad": ["--fail-first", "2"],
    "always503": ["--fail-first", "1000000"],
    "bad400": ["--fail-first", "1000000", "--fail-status", "400"],
    "slow": ["--delay", "3"],
    "garbage": ["--garbage"],
    "wrong": ["--wrong-count"],
}


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    specs = dict(SERVERS)
    certfile, keyfile = _self_signed(tmp_path_factory.mktemp("tls"))
    specs["tls"] = ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    script = str(HERE / "openrlhf_server.py")
    procs = launch_all([[sys.executable, script, *flags] for flags in specs.values()],
                       r"openrlhf-server ready on port (\d+)")
    yield dict(zip(specs, procs, strict=True))
    stop_all(procs)


# --------------------------------------------------------------------------------------------------- helpers


def make_batch(n: int, *, labels: bool = True) -> RewardBatch:
    """Completions "0".."n-1" (the echo server scores them as that number), every third label matching."""
    completions = [str(i) for i in range(n)]
    columns = {"solution": [str(i) if i % 3 == 0 else "x" for i in range(n)]} if labels else {}
    return RewardBatch(prompts=[f"q{i}" for i in range(n)], completions=completions, columns=columns,
                       rendered_prompts=[f"<user>q{i}</user>" for i in range(n)])


def expected(n: int) -> list[float]:
    return [i + (0.5 if i % 3 == 0 else 0.0) for i in range(n)]


def remote(url: str, **kw: Any) -> RemoteReward:
    cfg = {"name": "rm", "url": url, "protocol": "openrlhf", "timeout_s": 10.0, "retries": 0, **kw}
    return RemoteReward(cfg, backoff_base_s=0.01, backoff_cap_s=0.05)


def run(scorer: RemoteReward, batch: RewardBatch) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return await scorer.score(batch)
        finally:
            await scorer.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------- wire formats


def test_request_builders() -> None:
    b = RewardBatch(prompts=["2+2?"], completions=["4"], completion_ids=[[7, 8]], columns={"solution": ["4"]},
                    rendered_prompts=["<u>2+2?</u>"])
    assert openrlhf_request(b, "solution") == {"query": ["<u>2+2?</u>4"], "prompts": ["<u>2+2?</u>"],
                                               "labels": ["4"]}
    assert openrlhf_request(b, "answer")["labels"] == [None]
    req = raylhf_request(b, "prm", "solution")
    assert req["kind"] == "prm"
    assert req["items"] == [{
        "prompt": "2+2?", "completion": "4", "completion_ids": [7, 8], "label": "4",
        "columns": {"solution": "4"},
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rendered_prompt": "<u>2+2?</u>",
    }]


@pytest.mark.parametrize(("body", "kind", "needle"), [
    (b"<html>oops", "orm", "not valid JSON"),
    (b"[1, 2]", "orm", "JSON list"),
    (b'{"scores": [1, 2]}', "orm", "no 'rewards'"),
    (b'{"rewards": 3}', "orm", "'rewards' is a int"),
    (b'{"rewards": [1.0]}', "orm", "1 entries for 2 items"),
    (b'{"rewards": [1.0, NaN]}', "orm", "rewards[1]"),
    (b'{"rewards": [1.0, "2"]}', "orm", "rewards[1]"),
    (b'{"rewards": [true, 1]}', "orm", "rewards[0]"),
    (b'{"rewards": [[1, 2], 1]}', "orm", "kind: prm"),
    (b'{"rewards": [[1, "a"], 1]}', "prm", "rewards[0]"),
])
def test_parse_response_rejects(body: bytes, kind: str, needle: str) -> None:
    with pytest.raises(RemoteRewardError) as e:
        parse_response("raylhf", body, 2, kind, "remote reward 'rm' (http://h/score)")
    assert needle in str(e.value)
    assert "remote reward 'rm' (http://h/score)" in str(e.value)


def test_parse_response_accepts() -> None:
    body = b'{"rewards": [1, null, [0.5, 1]], "metrics": {"a": 2, "b": "x"}}'
    ok = parse_response("raylhf", body, 3, "prm", "e")
    assert ok.rewards == [1.0, None, [0.5, 1.0]] and ok.metrics == {"a": 2.0}
    ok = parse_response("openrlhf", b'{"rewards": [0.5], "scores": [0.5], "extra_logs": {"d": [1, 3]}}', 1,
                        "orm", "e")
    assert ok.rewards == [0.5] and ok.metrics == {"d": 2.0}


# ---------------------------------------------------------------------------------------------- construction


def test_token_env_unset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(RemoteRewardError, match=f"environment variable {TOKEN_ENV} is not set"):
        RemoteReward({"name": "rm", "url": "http://127.0.0.1:1/x", "token_env": TOKEN_ENV})


def test_token_never_in_repr_metrics_or_errors(servers: dict[str, Proc],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rm = remote(servers["bad400"].base + "/get_reward", token_env=TOKEN_ENV)
    assert TOKEN not in repr(rm) and TOKEN_ENV in repr(rm)
    with pytest.raises(RemoteRewardError) as e:
        run(rm, make_batch(2))
    assert "HTTP 400" in str(e.value) and TOKEN not in str(e.value) and TOKEN not in repr(e.value)
    assert TOKEN not in json.dumps(rm.metrics())


# ------------------------------------------------------------------------------------------------- behaviour


def test_openrlhf_happy_path(servers: dict[str, Proc]) -> None:
    rm = remote(servers["plain"].base + "/get_reward", batch_size=4)
    assert run(rm, make_batch(10)) == expected(10)
    m = rm.metrics()
    assert m["requests"] == 3 and m["retries"] == 0 and m["failed_items"] == 0
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
    assert m["server/query_chars"] > 0  # OpenRLHF extra_logs, averaged
    assert rm.metrics() == {"requests": 0.0, "retries": 0.0, "failed_items": 0.0}  # reset by the first call
    assert run(rm, make_batch(0)) == [] and rm.metrics()["requests"] == 0


def test_token_right_missing_wrong(servers: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    url = servers["token"].base + "/get_reward"
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert run(remote(url, token_env=TOKEN_ENV, retries=3), make_batch(3)) == expected(3)
    with pytest.raises(RemoteRewardError, match="HTTP 401: no bearer token was sent; set token_env") as e:
        run(remote(url, retries=3), make_batch(3))
    assert "'rm'" in str(e.value) and url in str(e.value)
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    rm = remote(url, token_env=TOKEN_ENV, retries=3)
    rejected = rf"HTTP 401: the bearer token from \${TOKEN_ENV} was rejected"
    with pytest.raises(RemoteRewardError, match=rejected):
        run(rm, make_batch(3))
    assert rm.metrics()["requests"] == 1  # 401 is not retried


def test_fail_twice_then_answer(servers: dict[str, Proc]) -> None:
    rm = remote(servers["fail2_ok"].base + "/get_reward", retries=3)
    assert run(rm, make_batch(5)) == expected(5)
    m = rm.metrics()
    assert (m["requests"], m["retries"], m["failed_items"]) == (3, 2, 0)

    rm = remote(servers["fail2_bad"].base + "/get_reward", retries=1)
    with pytest.raises(RemoteRewardError, match=r"HTTP 503.*gave up after 2 attempt\(s\)"):
        run(rm, make_batch(5))
    m = rm.metrics()
    assert (m["requests"], m["retries"], m["failed_items"]) == (2, 1, 5)


@pytest.mark.parametrize(("policy", "fill"), [("zero", 0.0), ("skip", None)])
def test_on_failure_after_retries(servers: dict[str, Proc], policy: str, fill: float | None) -> None:
    rm = remote(servers["always503"].base + "/get_reward", retries=2, batch_size=3, on_failure=policy)
    assert run(rm, make_batch(7)) == [fill] * 7
    m = rm.metrics()
    assert (m["requests"], m["retries"], m["failed_items"]) == (9, 6, 7)  # 3 chunks x 3 attempts
    assert "latency_p50_ms" not in m  # no successful request


@pytest.mark.parametrize(("policy", "fill"), [("raise", None), ("zero", 0.0), ("skip", None)])
def test_timeout(servers: dict[str, Proc], policy: str, fill: float | None) -> None:
    rm = remote(servers["slow"].base + "/get_reward", timeout_s=0.3, retries=1, on_failure=policy)
    t = time.perf_counter()
    if policy == "raise":
        with pytest.raises(RemoteRewardError, match=r"no complete answer within timeout_s=0.3.*2 attempt"):
            run(rm, make_batch(4))
    else:
        assert run(rm, make_batch(4)) == [fill] * 4
    assert time.perf_counter() - t < 2.5
    m = rm.metrics()
    assert (m["requests"], m["retries"], m["failed_items"]) == (2, 1, 4)


@pytest.mark.parametrize(("server", "needle"), [
    ("garbage", "response is not valid JSON"),
    ("wrong", "'rewards' has 2 entries for 3 items sent"),
    ("bad400", "HTTP 400 (not retried)"),
])
def test_hard_errors_are_not_retried(servers: dict[str, Proc], server: str, needle: str) -> None:
    url = servers[server].base + "/get_reward"
    rm = remote(url, retries=3)
    with pytest.raises(RemoteRewardError) as e:
        run(rm, make_batch(3))
    assert needle in str(e.value) and "remote reward 'rm'" in str(e.value) and url in str(e.value)
    assert rm.metrics()["requests"] == 1
    rm = remote(url, retries=3, on_failure="skip")
    assert run(rm, make_batch(3)) == [None] * 3
    assert rm.metrics()["failed_items"] == 3


def test_connection_refused_is_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rm = remote(f"http://127.0.0.1:{port}/get_reward", retries=2, on_failure="zero")
    assert run(rm, make_batch(2)) == [0.0, 0.0]
    m = rm.metrics()
    assert (m["requests"], m["retries"], m["failed_items"]) == (3, 2, 2)


@pytest.mark.parametrize("batch_size", [1, 64])
def test_many_items_order_kept(servers: dict[str, Proc], batch_size: int) -> None:
    proc = servers["plain"]
    before = get_json(proc.base + "/stats")["posts"]
    rm = remote(proc.base + "/get_reward", batch_size=batch_size, max_concurrency=16)
    assert run(rm, make_batch(1000)) == expected(1000)  # none lost, none duplicated, in order
    stats = get_json(proc.base + "/stats")
    assert stats["posts"] - before == math.ceil(1000 / batch_size) == rm.metrics()["requests"]
    assert stats["max_in_flight"] <= 16


def test_https(servers: dict[str, Proc]) -> None:
    url = f"https://127.0.0.1:{servers['tls'].port}/get_reward"
    assert run(remote(url, verify_tls=False), make_batch(3)) == expected(3)
    rm = remote(url, retries=3)  # self-signed: verification fails, and that is not retried
    with pytest.raises(RemoteRewardError, match=r"TLS error.*verify_tls: false"):
        run(rm, make_batch(3))
    assert rm.metrics()["requests"] == 1


def test_event_loops(servers: dict[str, Proc]) -> None:
    """Fresh asyncio.run calls and one persistent loop thread (how the reward workers run scorers)."""
    rm = remote(servers["plain"].base + "/get_reward")
    assert asyncio.run(rm.score(make_batch(3))) == expected(3)
    assert asyncio.run(rm.score(make_batch(4))) == expected(4)  # the first loop is closed: a new session

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        def in_loop(n: int) -> list[Any]:
            return asyncio.run_coroutine_threadsafe(rm.score(make_batch(n)), loop).result(timeout=20)

        for n in (5, 6):
            assert in_loop(n) == expected(n)
        session = rm._session
        assert in_loop(2) == expected(2)
        assert rm._session is session  # reused within the loop
        asyncio.run_coroutine_threadsafe(rm.aclose(), loop).result(timeout=20)
        assert session is not None and session.closed
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
