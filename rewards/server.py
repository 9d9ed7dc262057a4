"""The reward server behind ``raylhf serve-reward``: any ``Scorer`` over HTTP (FastAPI + uvicorn).

* ``POST /score``      raylhf v1 protocol (``rewards/protocol.py``)
* ``POST /get_reward`` OpenRLHF's protocol, so OpenRLHF's ``--remote_rm_url`` can use it unchanged
* ``GET  /health``     no auth: ``{"status": "ok", "name", "kind"}``

With a token, both POST routes need ``Authorization: Bearer <token>`` (401 otherwise). Bodies over
``max_body_bytes`` and requests over ``max_items`` get 413; a body that cannot be read (empty, not UTF-8,
not JSON, NaN/Infinity, nested deeper than ``MAX_DEPTH``) 400; one that is not a JSON object, or breaks the
schema, 422 naming the field. Every ``detail`` is one line, and a bad body never stops the server. Scorer
errors get 500 with the message. With a certificate and key (``serve(ssl_certfile=, ssl_keyfile=)``) it
serves HTTPS.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import math
import operator
import os
import socket
import ssl
from itertools import accumulate, repeat
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from rewards.base import RewardBatch, Score, Scorer
from rewards.protocol import (
    OpenRLHFRequest,
    ScoreRequest,
    batch_from_openrlhf_request,
    batch_from_score_request,
)
from rewards.steps import aggregate_steps

log = logging.getLogger(__name__)

MAX_DEPTH = 100  # deepest [ / { nesting a request body may have; checked on the bytes before decoding
MAX_DETAIL_CHARS = 1000
_NOT_SKELETON = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_OPEN_CLOSE = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # minus 1: +1 opens, -1 closes
_JSON_TYPES = ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"),
               ((int, float), "number"))


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class _Invalid(Exception):
    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.detail, self.errors = detail, errors


def _one_line(text: str) -> str:
    text = " ".join(text.splitlines())
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def _error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": _one_line(detail), **extra}, status_code=status, headers=headers)


def _check_auth(request: Request, token: str | None) -> None:
    if token is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _HTTPError(401, "missing bearer token: send the header 'Authorization: Bearer <token>' "
                              "(clients: set token_env to the variable holding it)", challenge)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise _HTTPError(401, "invalid bearer token: it does not match the server's token", challenge)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over ``limit`` bytes: by Content-Length before reading, then by size."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _HTTPError(400, f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise _HTTPError(413, f"request body of {size} bytes is over the server's limit of {limit} "
                                  "bytes; send fewer items per request (client: lower batch_size)")
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > limit:
            raise _HTTPError(413, f"request body is over the server's limit of {limit} bytes; send fewer "
                                  "items per request (client: lower batch_size)")
    return bytes(buf)


def _validation_detail(err: ValidationError) -> tuple[str, list[dict[str, str]]]:
    errors = []
    for e in err.errors():
        loc = _one_line(".".join(str(p) for p in e["loc"]))
        errors.append({"field": loc, "msg": _one_line(e["msg"].removeprefix("Value error, "))})
    text = "; ".join(f"'{e['field']}': {e['msg']}" if e["field"] else e["msg"] for e in errors[:5])
    if len(errors) > 5:
        text += f"; ... {len(errors) - 5} more"
    return f"invalid request: {text}", errors


def _depth(body: bytes) -> int:
    """How deep ``[`` / ``{`` nest outside strings: C-speed bytes operations, no recursion, memory about the
    body's size (0 when it cannot pass ``MAX_DEPTH``). UTF-8 keeps ASCII bytes for themselves, so it reads the
    bytes: escaped backslashes and quotes go, then all but brackets and quotes, then empty strings; what is
    left splits at the quotes into outside, inside, outside, ..."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return 0
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = unescaped.translate(None, _NOT_SKELETON).replace(b'""', b"")
    outside = b"".join(skeleton.split(b'"')[::2])
    return max(accumulate(map(operator.sub, outside.translate(_OPEN_CLOSE), repeat(1))), default=0)


def _too_deep(depth: int = 0) -> _HTTPError:
    how = f"{depth} levels deep, over" if depth else "deeper than"
    return _HTTPError(400, f"request body nests {how} the server's limit of {MAX_DEPTH} levels of [ and {{")


def _no_constant(name: str) -> Any:
    raise _HTTPError(400, f"request body is not valid JSON: {name} is not a JSON value (send null for a "
                          "missing or non-finite number)")


def _decode(body: bytes) -> Any:
    """The JSON value of ``body``, or a 400 saying why it cannot be read."""
    if not body or body.isspace():
        raise _HTTPError(400, "request body is empty; send a JSON object")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _HTTPError(400, f"request body is not UTF-8: {e}") from None
    depth = _depth(body)
    if depth > MAX_DEPTH:
        raise _too_deep(depth)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except _HTTPError:
        raise
    except json.JSONDecodeError as e:
        raise _HTTPError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:  # an integer over Python's digit limit
        raise _HTTPError(400, f"request body has a number the server cannot read: {str(e).split(';')[0]}"
                         ) from None
    except Exception as e:
        log.warning("reading a request body failed: %s: %s", type(e).__name__, e)
        raise _HTTPError(400, f"request body cannot be read: {type(e).__name__}: {e}") from None


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), "null")


def _parse(body: bytes, model: type[BaseModel], list_field: str, max_items: int) -> Any:
    data = _decode(body)
    if not isinstance(data, dict):
        raise _HTTPError(422, f"invalid request: the body must be a JSON object with the '{list_field}' "
                              f"list, not a JSON {_json_type(data)}")
    entries = data.get(list_field)
    if isinstance(entries, list) and len(entries) > max_items:
        raise _HTTPError(413, f"'{list_field}' has {len(entries)} entries, over the server's limit of "
                              f"{max_items}; send fewer per request (client: lower batch_size)")
    return model.model_validate(data)


def _request(body: bytes, model: type[BaseModel], list_field: str, max_items: int,
             label_column: str) -> tuple[Any, RewardBatch]:
    """The validated request and its batch; whatever goes wrong here is the body's fault: 400, 413 or 422."""
    try:
        req = _parse(body, model, list_field, max_items)
        batch = (batch_from_score_request(req, label_column) if isinstance(req, ScoreRequest)
                 else batch_from_openrlhf_request(req, label_column))
    except _HTTPError:
        raise
    except ValidationError as e:
        detail, errors = _validation_detail(e)
        raise _Invalid(detail, errors) from None
    except RecursionError:
        raise _too_deep() from None
    except Exception as e:
        log.warning("validating a request failed: %s: %s", type(e).__name__, e)
        raise _HTTPError(422, f"invalid request: {type(e).__name__}: {e}") from None
    return req, batch


def _wire_score(s: Score, steps: bool, aggregate: str) -> Score:
    """A score as JSON can carry it: non-finite -> null; per-step lists kept (steps) or aggregated."""
    if isinstance(s, (list, tuple)):
        values = [float(x) for x in s]
        if steps:
            return values if all(math.isfinite(x) for x in values) else None

        s = aggregate_steps(values, aggregate)
    if s is None:
        return None
    s = float(s)
    return s if math.isfinite(s) else None


def _finite_metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def create_app(scorer: Scorer, *, token: str | None, max_items: int = 4096, max_body_bytes: int = 32 << 20,
               label_column: str = "solution", aggregate: str = "min") -> FastAPI:
    """The reward server app for ``scorer``. ``token``: required bearer token (None: no auth);
    ``label_column``: column the request labels fill; ``aggregate``: how per-step scores become one number
    where the protocol wants one (OpenRLHF, raylhf with kind=orm)."""
    token = token or None
    app = FastAPI(title=f"raylhf reward server ({scorer.name})", docs_url=None, redoc_url=None,
                  openapi_url=None)

    async def run(request: Request, model: type[BaseModel], list_field: str) -> tuple[Any, list[Score]]:
        _check_auth(request, token)
        body = await _read_body(request, max_body_bytes)
        req, batch = _request(body, model, list_field, max_items, label_column)
        try:
            scores = list(await scorer.score(batch))
        except Exception as e:
            log.exception("scorer %r failed", scorer.name)
            raise _HTTPError(500, f"scorer {scorer.name!r} failed: {type(e).__name__}: {e}") from None
        if len(scores) != len(batch):
            raise _HTTPError(500, f"scorer {scorer.name!r} returned {len(scores)} scores for "
                                  f"{len(batch)} items")
        return req, scores

    async def handle(request: Request, model: type[BaseModel], list_field: str) -> JSONResponse:
        try:
            req, scores = await run(request, model, list_field)
        except _Invalid as e:
            return _error(422, e.detail, errors=e.errors)
        except _HTTPError as e:
            return _error(e.status, e.detail, e.headers)
        try:
            metrics = _finite_metrics(scorer.metrics())
        except Exception:  # metrics are a bonus, never a failed request
            log.exception("scorer %r metrics() failed", scorer.name)
            metrics = {}
        if isinstance(req, ScoreRequest):
            rewards = [_wire_score(s, req.kind == "prm", aggregate) for s in scores]
            return JSONResponse({"rewards": rewards, "metrics": metrics})
        rewards = [_wire_score(s, False, aggregate) for s in scores]
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {}})

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        return await handle(request, ScoreRequest, "items")

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        return await handle(request, OpenRLHFRequest, "query")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "name": scorer.name, "kind": scorer.kind}

    return app


def format_url(host: str, port: int, *, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_tls_files(certfile: str, keyfile: str) -> None:
    """Load the certificate chain and key once, so a bad pair fails before anything starts (clear OSError)."""
    for field, path in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if not os.path.isfile(path):
            raise OSError(errno.ENOENT, f"{field} {path!r}: no such file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as e:
        raise OSError(errno.EINVAL, f"cannot load the TLS certificate (ssl_certfile {certfile!r}) and key "
                                    f"(ssl_keyfile {keyfile!r}): {e}; they must be PEM files, the key "
                                    "unencrypted and matching the certificate") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: a free one); a clear OSError when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on the accepted connections; without
    # it every response after a connection's first waits ~40 ms (Nagle against the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {format_url(host, port)}: {e.strerror or e}; choose "
                               "another port (--port) or host (--host)") from None
    return sock


async def serve(app: FastAPI, host: str, port: int, *, auth: bool, log_level: str = "warning",
                ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM; prints the ready line once listening (port 0: any free
    port). With ``ssl_certfile`` and ``ssl_keyfile`` (PEM; both or neither) it serves HTTPS. A host/port that
    cannot be bound, or a certificate/key that cannot be loaded, raises OSError before anything starts."""
    import uvicorn

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("ssl_certfile and ssl_keyfile go together: give both (HTTPS) or neither (HTTP)")
    tls = False
    if ssl_certfile is not None and ssl_keyfile is not None:
        check_tls_files(ssl_certfile, ssl_keyfile)
        tls = True
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound, log_level=log_level, access_log=False,
                                           lifespan="off", ssl_certfile=ssl_certfile,
                                           ssl_keyfile=ssl_keyfile))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError(f"the reward server on {format_url(host, bound, tls=tls)} stopped while "
                                   "starting")
            await asyncio.sleep(0.02)
        auth_state = "on" if auth else "off"
        print(f"[serve-reward] listening on {format_url(host, bound, tls=tls)} (auth: {auth_state})",
              flush=True)
        await task
    finally:
        sock.close()
