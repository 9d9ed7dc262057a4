"""The reward server (rewards/server.py, `raylhf serve-reward`) in real processes on 127.0.0.1: HTTP-level
checks, and RemoteReward against it over both protocols."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rewards.base import RewardBatch
from rewards.protocol import RemoteRewardError
from rewards.remote import RemoteReward

try:  # tests/reward_suite as a package (with __init__.py) or, without one, on sys.path as pytest's rootdir
    from .test_remote import TOKEN, TOKEN_ENV, Proc, expected, launch_all, make_batch, run, stop_all
except ImportError:
    from test_remote import TOKEN, TOKEN_ENV, Proc, expected, launch_all, make_batch, run, stop_all  # type: ignore

MAX_ITEMS = 50
MAX_BODY = 64 * 1024

# the served scorers: same echo rule as openrlhf_server.py (the completion as a number, +0.5 when it equals
# the label), "boom" raises, "nan" is not finite; the PRM returns the comma-separated numbers as steps
APP = r'''
import asyncio, os, sys
from rewards.server import create_app, serve

class EchoORM:
    name, kind = "echo", "orm"
    def __init__(self): self.calls = 0
    async def score(self, batch):
        self.calls += 1
        sols = batch.columns.get("solution") or [None] * len(batch)
        out = []
        for c, s in zip(batch.completions, sols):
            if c == "boom":
                raise RuntimeError("boom: the scorer broke")
            try:
                v = float(c)
            except ValueError:
                v = float(len(c))
            out.append(v if v != v else v + (0.5 if s is not None and str(s) == c else 0.0))
        return out
    def metrics(self): return {"calls": float(self.calls), "not_a_number": "x"}
    async def aclose(self): pass

class StepPRM:
    name, kind = "steps", "prm"
    async def score(self, batch):
        return [[float(x) for x in c.split(",")] if c else None for c in batch.completions]
    def metrics(self): return {}
    async def aclose(self): pass

scorer = {"orm": EchoORM, "prm": StepPRM}[sys.argv[1]]()
token = os.environ.get(sys.argv[4]) if sys.argv[4] != "-" else None
app = create_app(scorer, token=token, max_items=int(sys.argv[2]), max_body_bytes=int(sys.argv[3]))
asyncio.run(serve(app, "127.0.0.1", 0, auth=token is not None))
'''
READY = r"\[serve-reward\] listening on http://127\.0\.0\.1:(\d+) \(auth: (?:on|off)\)"


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, Proc]]:
    procs = launch_all([[sys.executable, "-c", APP, "orm", str(MAX_ITEMS), str(MAX_BODY), "APP_TOKEN"],
                        [sys.executable, "-c", APP, "prm", "100", str(MAX_BODY), "-"]],
                       READY, env={**os.environ, "APP_TOKEN": TOKEN})
    assert "(auth: on)" in procs[0].lines[-1] and "(auth: off)" in procs[1].lines[-1]
    yield {"orm": procs[0], "prm": procs[1]}
    stop_all(procs)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def items(n: int, completion: str = "1") -> dict[str, Any]:
    return {"items": [{"prompt": "p", "completion": completion} for _ in range(n)]}


# ------------------------------------------------------------------------------------------------ HTTP level


def test_health_needs_no_token(apps: dict[str, Proc], http: httpx.Client) -> None:
    r = http.get(apps["orm"].base + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "name": "echo", "kind": "orm"}


@pytest.mark.parametrize("path", ["/score", "/get_reward"])
@pytest.mark.parametrize(("headers", "needle"), [
    ({}, "missing bearer token"),
    ({"Authorization": "Basic abc"}, "missing bearer token"),
    ({"Authorization": "Bearer nope"}, "invalid bearer token"),
])
def test_auth(apps: dict[str, Proc], http: httpx.Client, path: str, headers: dict[str, str],
              needle: str) -> None:
    r = http.post(apps["orm"].base + path, json={"query": ["a"], **items(1)}, headers=headers)
    assert r.status_code == 401 and needle in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_score_and_metrics(apps: dict[str, Proc], http: httpx.Client) -> None:
    body = {"items": [{"prompt": "p", "completion": "2", "label": "2"},
                      {"prompt": "p", "completion": "3", "columns": {"solution": "3"}},
                      {"prompt": "p", "completion": "nan"}]}
    r = http.post(apps["orm"].base + "/score", json=body, headers=AUTH)
    assert r.status_code == 200
    data = r.json()
    assert data["rewards"] == [2.5, 3.5, None]  # label -> the solution column; NaN -> null
    assert data["metrics"]["calls"] >= 1 and "not_a_number" not in data["metrics"]


def test_get_reward(apps: dict[str, Proc], http: httpx.Client) -> None:
    body = {"query": ["<u>hi</u>7", "no prompt match 9"], "prompts": ["<u>hi</u>", "<u>x</u>"],
            "labels": ["7", None]}
    r = http.post(apps["orm"].base + "/get_reward", json=body, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"rewards": [7.5, 17.0], "scores": [7.5, 17.0], "extra_logs": {}}
    r = http.post(apps["orm"].base + "/get_reward", json={"query": ["12"]}, headers=AUTH)  # no prompts/labels
    assert r.json()["rewards"] == [12.0]


def test_too_many_items_and_too_large_bodies(apps: dict[str, Proc], http: httpx.Client) -> None:
    base = apps["orm"].base
    r = http.post(base + "/score", json=items(MAX_ITEMS + 1), headers=AUTH)
    assert r.status_code == 413 and f"over the server's limit of {MAX_ITEMS}" in r.json()["detail"]
    r = http.post(base + "/get_reward", json={"query": ["1"] * (MAX_ITEMS + 1)}, headers=AUTH)
    assert r.status_code == 413 and "'query'" in r.json()["detail"]
    assert http.post(base + "/score", json=items(MAX_ITEMS), headers=AUTH).status_code == 200
    big = items(1, "x" * (MAX_BODY + 10))
    r = http.post(base + "/score", json=big, headers=AUTH)  # refused by Content-Length
    assert r.status_code == 413 and f"{MAX_BODY} bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused by the size actually read
        yield b'{"items": [{"prompt": "p", "completion": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"y" * 1024
        yield b'"}]}'

    r = http.post(base + "/score", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/score", {"items": [{"prompt": "p", "completion": "1"}, {"prompt": "p"}]}, "items.1.completion"),
    ("/score", {"kind": "xrm", "items": []}, "kind"),
    ("/score", {"items": [{"prompt": "p", "completion": "1", "completion_ids": ["a"]}]},
     "items.0.completion_ids.0"),
    ("/get_reward", {"query": "not a list"}, "query"),
])
def test_schema_errors_name_the_field(apps: dict[str, Proc], http: httpx.Client, path: str, body: Any,
                                      field: str) -> None:
    r = http.post(apps["orm"].base + path, json=body, headers=AUTH)
    assert r.status_code == 422
    assert f"'{field}'" in r.json()["detail"] and r.json()["errors"][0]["field"] == field


def test_bad_requests(apps: dict[str, Proc], http: httpx.Client) -> None:
    base = apps["orm"].base
    r = http.post(base + "/get_reward", json={"query": ["a"], "prompts": ["a", "b"]}, headers=AUTH)
    assert r.status_code == 422 and "'prompts' has 2 entries for 1 queries" in r.json()["detail"]
    r = http.post(base + "/score", content=b"{nope", headers=AUTH)
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]


def test_scorer_error_is_500(apps: dict[str, Proc], http: httpx.Client) -> None:
    r = http.post(apps["orm"].base + "/score", json=items(2, "boom"), headers=AUTH)
    assert r.status_code == 500
    assert r.json()["detail"] == "scorer 'echo' failed: RuntimeError: boom: the scorer broke"


def test_prm_steps(apps: dict[str, Proc], http: httpx.Client) -> None:
    body = {"kind": "prm",
            "items": [{"prompt": "p", "completion": "0.5,1,0.25"}, {"prompt": "p", "completion": ""}]}
    r = http.post(apps["prm"].base + "/score", json=body)  # no token configured
    assert r.status_code == 200 and r.json()["rewards"] == [[0.5, 1.0, 0.25], None]


def test_prm_aggregated_where_one_number_is_needed(apps: dict[str, Proc], http: httpx.Client) -> None:
    r = http.post(apps["prm"].base + "/get_reward", json={"query": ["0.5,1,0.25"]})
    assert r.status_code == 200 and r.json()["rewards"] == [0.25]  # aggregate: min
    body = {"kind": "orm", "items": [{"prompt": "", "completion": "3,2"}]}
    r = http.post(apps["prm"].base + "/score", json=body)
    assert r.json()["rewards"] == [2.0]


# ----------------------------------------------------------------------------------------- client <-> server


def client(url: str, **kw: Any) -> RemoteReward:
    cfg = {"name": "srv", "url": url, "timeout_s": 10.0, "retries": 0, **kw}
    return RemoteReward(cfg, backoff_base_s=0.01, backoff_cap_s=0.05)


@pytest.mark.parametrize("batch_size", [1, 37])
def test_raylhf_protocol_many_items(apps: dict[str, Proc], monkeypatch: pytest.MonkeyPatch,
                                    batch_size: int) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rm = client(apps["orm"].base + "/score", token_env=TOKEN_ENV, batch_size=batch_size, max_concurrency=16)
    assert run(rm, make_batch(1000)) == expected(1000)
    m = rm.metrics()
    assert m["requests"] == -(-1000 // batch_size) and m["failed_items"] == 0 and m["server/calls"] >= 1


def test_openrlhf_client_against_get_reward(apps: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rm = client(apps["orm"].base + "/get_reward", protocol="openrlhf", token_env=TOKEN_ENV, batch_size=8)
    assert run(rm, make_batch(20)) == expected(20)


def test_client_auth_errors(apps: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    url = apps["orm"].base + "/score"
    with pytest.raises(RemoteRewardError, match="HTTP 401: no bearer token was sent; set token_env") as e:
        run(client(url, retries=2), make_batch(2))
    assert "missing bearer token" in str(e.value)  # the server's detail
    monkeypatch.setenv(TOKEN_ENV, TOKEN[::-1])
    rm = client(url, token_env=TOKEN_ENV, on_failure="skip", retries=2)
    assert run(rm, make_batch(2)) == [None, None]
    assert rm.metrics()["failed_items"] == 2
    with pytest.raises(RemoteRewardError, match=rf"\${TOKEN_ENV} was rejected") as e:
        run(client(url, token_env=TOKEN_ENV), make_batch(2))
    assert TOKEN[::-1] not in str(e.value) + repr(e.value) + repr(rm)


def test_client_too_large_request(apps: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rm = client(apps["orm"].base + "/score", token_env=TOKEN_ENV, batch_size=MAX_ITEMS + 10, retries=3)
    with pytest.raises(RemoteRewardError, match=r"HTTP 413 \(not retried\).*lower batch_size"):
        run(rm, make_batch(MAX_ITEMS + 10))
    assert rm.metrics()["requests"] == 1


def test_scorer_error_reaches_the_client(apps: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    batch = RewardBatch(prompts=["p"], completions=["boom"])
    with pytest.raises(RemoteRewardError, match=r"HTTP 500.*boom: the scorer broke.*gave up after 2"):
        run(client(apps["orm"].base + "/score", token_env=TOKEN_ENV, retries=1), batch)


def test_prm_client(apps: dict[str, Proc]) -> None:
    rm = client(apps["prm"].base + "/score", kind="prm", aggregate="min")
    batch = RewardBatch(prompts=["p", "p", "p"], completions=["0.5,1,0.25", "", "0.75"])

    async def go() -> tuple[list[Any], list[Any]]:
        try:
            scores = await rm.score(batch)
            return scores, list(rm.last_steps)
        finally:
            await rm.aclose()

    scores, steps = asyncio.run(go())
    assert scores == [0.25, None, 0.75]
    assert steps == [[0.5, 1.0, 0.25], None, [0.75]]


# ----------------------------------------------------------------------------------------------- the command


def test_cli_help_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    from raylhf.cli import COMMANDS
    from raylhf.serve_reward import main

    assert COMMANDS["serve-reward"].prog == "raylhf.serve_reward"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "max_body_mb" in out and "token_env" in out
    assert main(["--dry-run", "--port", "9001"]) == 0
    out = capsys.readouterr().out
    assert "port: 9001" in out and "token_env: RAYLHF_REWARD_TOKEN" in out
    with pytest.raises(SystemExit) as e:
        main(["--functions", "[]"])
    assert e.value.code == 2 and "nothing to serve" in capsys.readouterr().err


def test_cli_warns_on_open_host_without_token(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import raylhf.tools.serve_reward as sr
    from raylhf.serve_reward import main

    served: list[str] = []

    async def fake_serve(cfg: Any, scorer: Any, token: str | None) -> None:
        served.append(cfg.host)

    monkeypatch.setattr(sr, "_serve", fake_serve)
    monkeypatch.setattr(sr, "build_scorer", lambda cfg: object())
    monkeypatch.delenv("RAYLHF_REWARD_TOKEN", raising=False)
    assert main(["--host", "0.0.0.0"]) == 0
    assert "WARNING" in capsys.readouterr().err
    assert main(["--host", "::1"]) == 0
    monkeypatch.setenv("RAYLHF_REWARD_TOKEN", "tok")
    assert main(["--host", "0.0.0.0"]) == 0
    assert "WARNING" not in capsys.readouterr().err and served == ["0.0.0.0", "::1", "0.0.0.0"]


def test_serve_reward_command(http: httpx.Client) -> None:
    """`raylhf serve-reward` with the built-in accuracy reward, token from RAYLHF_REWARD_TOKEN."""
    env = {**os.environ, "RAYLHF_REWARD_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "raylhf.cli", "serve-reward", "--port", "0"]
    (proc,) = launch_all([cmd], READY, env=env)
    try:
        assert "(auth: on)" in proc.lines[-1] and all(TOKEN not in line for line in proc.lines)
        body = {"items": [{"prompt": "2+2?", "completion": "it is 4", "label": "4"},
                          {"prompt": "2+2?", "completion": "5", "columns": {"solution": "4"}}]}
        assert http.post(proc.base + "/score", json=body).status_code == 401
        r = http.post(proc.base + "/score", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["rewards"] == [1.0, 0.0]
        assert http.get(proc.base + "/health").json()["status"] == "ok"
    finally:
        stop_all([proc])
    assert all(TOKEN not in line for line in proc.lines)
