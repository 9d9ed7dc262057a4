"""Malformed request bodies against the reward server (rewards/server.py) in a real process on 127.0.0.1: each
one gets 400, 413 or 422 with a one-line ``detail``, on ``/score`` and ``/get_reward`` alike (never a 500),
and the server goes on serving valid requests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from rewards.server import MAX_DEPTH

try:  # tests/reward_suite as a package (with __init__.py) or, without one, on sys.path as pytest's rootdir
    from .test_remote import launch_all, stop_all
except ImportError:
    from test_remote import launch_all, stop_all  # type: ignore

MAX_ITEMS = 20
MAX_BODY = 1 << 20
ROUTES = {"/score": "items", "/get_reward": "query"}

# a trivial scorer: the reward is the completion's length
APP = r'''
import asyncio, sys
from rewards.server import create_app, serve

class Length:
    name, kind = "length", "orm"
    async def score(self, batch): return [float(len(c)) for c in batch.completions]
    def metrics(self): return {}
    async def aclose(self): pass

app = create_app(Length(), token=None, max_items=int(sys.argv[1]), max_body_bytes=int(sys.argv[2]))
asyncio.run(serve(app, "127.0.0.1", 0, auth=False))
'''
READY = r"\[serve-reward\] listening on http://127\.0\.0\.1:(\d+) "


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    (proc,) = launch_all([[sys.executable, "-c", APP, str(MAX_ITEMS), str(MAX_BODY)]], READY)
    try:
        yield proc.popen, proc.base
    finally:
        stop_all([proc])


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def valid(route: str, completions: list[str]) -> dict[str, Any]:
    if route == "/score":
        return {"items": [{"prompt": "p", "completion": c} for c in completions]}
    return {"query": completions}  # no prompts: the whole query is the completion


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def inside(route: str, value: Any) -> bytes:
    """A valid request with ``value`` where the schema takes anything (a column, a label)."""
    if route == "/score":
        return json.dumps({"items": [{"prompt": "p", "completion": "c", "columns": {"x": value}}]}).encode()
    return json.dumps({"query": ["c"], "labels": [value]}).encode()


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


# levels the request itself adds around the value inside(): {items: [{columns: {x: ...}}]}, {labels: [...]}
OUTER = {"/score": 4, "/get_reward": 2}
# (name, body for a route, expected status, words the detail has: {field} is the route's list field)
CASES: list[tuple[str, Callable[[str], bytes], int, str]] = [
    ("deep list", lambda r: b"[" * 100_000 + b"]" * 100_000, 400, "100000 levels deep"),
    ("deep object", lambda r: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "100000 levels deep"),
    ("deep unclosed", lambda r: b"[" * 100_000, 400, "levels deep"),
    ("deep in a field", lambda r: inside(r, nested(MAX_DEPTH)), 400, f"limit of {MAX_DEPTH}"),
    ("not JSON", lambda r: b"{nope", 400, "not valid JSON"),
    ("truncated", lambda r: b'{"items": [{"prompt": "p"', 400, "not valid JSON"),
    ("unterminated string", lambda r: b'{"items": "' + b'\\"[{' * 200, 400, "not valid JSON"),
    ("non-UTF-8", lambda r: b'{"items": "\xff\xfe"}', 400, "not UTF-8"),
    ("UTF-16", lambda r: dumps(valid(r, ["a"])).decode().encode("utf-16"), 400, "not UTF-8"),
    ("empty", lambda r: b"", 400, "empty"),
    ("whitespace", lambda r: b" \r\n\t", 400, "empty"),
    ("array top level", lambda r: b"[1, 2]", 422, "not a JSON array"),
    ("string top level", lambda r: b'"items"', 422, "not a JSON string"),
    ("number top level", lambda r: b"3", 422, "not a JSON number"),
    ("null top level", lambda r: b"null", 422, "not a JSON null"),
    ("NaN", lambda r: dumps(valid(r, ["a"]))[:-1] + b', "x": NaN}', 400, "NaN"),
    ("Infinity", lambda r: inside(r, float("inf")), 400, "Infinity"),
    ("-Infinity", lambda r: inside(r, float("-inf")), 400, "-Infinity"),
    ("10k-digit integer", lambda r: inside(r, "N").replace(b'"N"', b"1" + b"0" * 10_000), 400,
     "10001 digits"),
    ("list field is a string", lambda r: dumps({ROUTES[r]: "abc"}), 422, "'{field}'"),
    ("completion is a number", lambda r: dumps({"items": [{"prompt": "p", "completion": 3}]} if r == "/score"
                                               else {"query": [3]}), 422, "should be a valid string"),
    ("missing list field", lambda r: b"{}", 422, "'{field}': Field required"),
    ("missing completion", lambda r: dumps({"items": [{"prompt": "p"}]} if r == "/score"
                                           else {"prompts": ["a"]}), 422, "Field required"),
    ("bad prompts", lambda r: dumps({"items": [{"prompt": ["p"], "completion": "c"}]} if r == "/score"
                                    else {"query": ["a"], "prompts": ["a", "b"]}), 422, "prompt"),
    ("body over max_body_bytes", lambda r: dumps(valid(r, ["x" * MAX_BODY])), 413, f"{MAX_BODY} bytes"),
    ("too many items", lambda r: dumps(valid(r, ["a"] * (MAX_ITEMS + 1))), 413, f"limit of {MAX_ITEMS}"),
]


def assert_still_serving(server: tuple[subprocess.Popen[str], str], http: httpx.Client, route: str) -> None:
    proc, base = server
    r = http.post(base + route, json=valid(route, ["ab", "[[[{{{", "\\\"]]"]))
    assert proc.poll() is None and r.status_code == 200, r.text
    assert r.json()["rewards"] == [2.0, 6.0, 4.0]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("body", "status", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_body(server: tuple[subprocess.Popen[str], str], http: httpx.Client, route: str,
                  body: Callable[[str], bytes], status: int, needle: str) -> None:
    r = http.post(server[1] + route, content=body(route), headers={"Content-Type": "application/json"})
    assert r.status_code in {400, 413, 422} and r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle.format(field=ROUTES[route]) in detail, detail
    assert "\n" not in detail and "\r" not in detail and len(detail.splitlines()) == 1
    for e in r.json().get("errors", []):
        assert len(e["field"].splitlines()) <= 1 and len(e["msg"].splitlines()) == 1
    assert_still_serving(server, http, route)


@pytest.mark.parametrize("route", list(ROUTES))
def test_streamed_body_over_the_limit(server: tuple[subprocess.Popen[str], str], http: httpx.Client,
                                      route: str) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: refused by the size read
        yield b"["
        for _ in range(MAX_BODY // 4096 + 1):
            yield b"[" * 4096

    r = http.post(server[1] + route, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.json()["detail"].splitlines()) == 1
    assert_still_serving(server, http, route)


@pytest.mark.parametrize("route", list(ROUTES))
def test_nesting_up_to_the_limit_and_brackets_in_strings_pass(server: tuple[subprocess.Popen[str], str],
                                                              http: httpx.Client, route: str) -> None:
    r = http.post(server[1] + route, content=inside(route, nested(MAX_DEPTH - OUTER[route])))
    assert r.status_code == 200, r.text
    r = http.post(server[1] + route, content=inside(route, nested(MAX_DEPTH - OUTER[route] + 1)))
    assert r.status_code == 400 and f"{MAX_DEPTH + 1} levels deep" in r.json()["detail"]
    text = "[" * 5000 + '\\"{' * 500  # brackets inside strings never count
    r = http.post(server[1] + route, json=valid(route, [text, "{" * 200]))
    assert r.status_code == 200 and r.json()["rewards"] == [float(len(text)), 200.0]


def test_every_bad_body_in_a_row_then_valid_requests(server: tuple[subprocess.Popen[str], str],
                                                     http: httpx.Client) -> None:
    for route in ROUTES:
        for name, body, status, _ in CASES:
            assert http.post(server[1] + route, content=body(route)).status_code == status, (route, name)
    for route in ROUTES:
        assert_still_serving(server, http, route)


def test_unexpected_errors_reading_a_body_are_the_bodys_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever else breaks while a body is decoded or turned into a batch is a 400 / 422 with a one-line
    detail, never a 500 (in process: these failures cannot be provoked from outside)."""
    from fastapi.testclient import TestClient

    import rewards.server as srv

    class Length:
        name, kind = "length", "orm"

        async def score(self, batch: Any) -> list[float]:
            return [float(len(c)) for c in batch.completions]

        def metrics(self) -> dict[str, float]:
            return {}

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("line one\nline two")

    client = TestClient(srv.create_app(Length(), token=None))  # type: ignore[arg-type]
    monkeypatch.setattr(srv, "batch_from_openrlhf_request", broken)
    r = client.post("/get_reward", json={"query": ["a"]})
    assert r.status_code == 422 and r.json()["detail"] == "invalid request: KeyError: 'line one\\nline two'"
    deeper = f"request body nests deeper than the server's limit of {MAX_DEPTH}"
    for error, detail in [(MemoryError("big\nbody"), "request body cannot be read: MemoryError: big body"),
                          (RecursionError(), deeper)]:
        def loads(*args: Any, error: BaseException = error, **kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(srv, "json", SimpleNamespace(loads=loads, JSONDecodeError=json.JSONDecodeError))
        r = client.post("/score", json=valid("/score", ["a"]))
        assert r.status_code == 400 and r.json()["detail"].startswith(detail), r.text
    monkeypatch.undo()
    assert client.post("/score", json=valid("/score", ["ab"])).json()["rewards"] == [2.0]
