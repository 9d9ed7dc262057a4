"""``RemoteReward``: a Scorer posting completions to an HTTP(S) reward endpoint (``reward.remote`` entries).

The batch is split into chunks of ``batch_size`` sent concurrently (at most ``max_concurrency`` in flight) and
reassembled in order. Timeouts, connection errors, 429 and 5xx are retried with exponential backoff and full
jitter; other 4xx, TLS errors (e.g. an untrusted certificate), invalid JSON and a wrong number of scores are
not. What is left failing goes through ``on_failure``: raise a ``RemoteRewardError``, or score that chunk's
items 0.0 (zero) or None (skip). HTTPS certificates are checked against the system's CAs, or against
``ca_file`` (e.g. a self-signed server certificate); ``verify_tls: false`` turns the check off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import ssl
import time
from collections.abc import Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from raylhf.config.sections import RemoteRewardConfig
from rewards.base import RewardBatch, Score
from rewards.protocol import RemoteRewardError, build_request, encode, parse_response, snippet
from rewards.steps import aggregate_steps

log = logging.getLogger(__name__)

__all__ = ["RemoteReward", "RemoteRewardError"]


class _Transient(Exception):
    """A failure worth retrying (timeout, connection error, 429, 5xx)."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


def _display_url(url: str) -> str:
    """The URL without user:password@ (for messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class RemoteReward:
    """Scorer for one ``reward.remote`` entry (protocol raylhf or openrlhf, kind orm or prm).

    ``score()`` returns one float/None per completion (per-step lists aggregated with ``aggregate`` for
    kind=prm); ``last_steps`` holds the raw scores of the last call (the per-step lists for kind=prm);
    ``score_with_steps()`` returns both at once. Use it from one event loop at a time; the HTTP session is
    created inside the running loop and replaced when the loop changes (e.g. successive ``asyncio.run``).
    """

    def __init__(self, config: RemoteRewardConfig | Mapping[str, Any], *, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 8.0) -> None:
        self.config = config if isinstance(config, RemoteRewardConfig) else RemoteRewardConfig.model_validate(
            dict(config))
        cfg = self.config
        self.name: str = cfg.name
        self.kind: str = cfg.kind
        self.weight: float = cfg.weight
        self.url: str = cfg.url
        self.endpoint = f"remote reward {cfg.name!r} ({_display_url(cfg.url)})"
        self._token = self._read_token(cfg)
        self._ssl_setting()  # a bad ca_file fails here, not at the first request
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.last_steps: list[Score] = []
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._reset_counters()

    @staticmethod
    def _read_token(cfg: RemoteRewardConfig) -> str | None:
        if cfg.token_env is None:
            return None
        token = os.environ.get(cfg.token_env)
        token = token.strip() if token is not None else None  # e.g. read from a file with a newline
        if not token:
            raise RemoteRewardError(
                f"remote reward {cfg.name!r}: token_env is {cfg.token_env!r} but the environment variable "
                f"{cfg.token_env} is {'empty' if token == '' else 'not set'}; export {cfg.token_env}=<token> "
                "(in the environment of the reward workers) or remove token_env"
            )
        return token

    def _ssl_setting(self) -> ssl.SSLContext | bool | None:
        """aiohttp's ``ssl=``: None (verify against the system's CAs), False (verify_tls: false) or a context
        trusting ``ca_file``. Built per session: an SSLContext does not pickle."""
        cfg = self.config
        if not cfg.verify_tls:
            return False
        if cfg.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=cfg.ca_file)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            problem = ("no such file" if isinstance(e, FileNotFoundError)
                       else f"{type(e).__name__}: {e}; it must hold PEM certificates")
            raise RemoteRewardError(f"remote reward {cfg.name!r}: cannot load ca_file {cfg.ca_file!r} "
                                    f"({problem}); give a PEM file with the server's certificate or its CA"
                                    ) from None

    def __repr__(self) -> str:
        auth = f"bearer token from ${self.config.token_env}" if self._token else "none"
        return (f"RemoteReward(name={self.name!r}, url={_display_url(self.url)!r}, "
                f"protocol={self.config.protocol!r}, kind={self.kind!r}, auth={auth})")

    def __getstate__(self) -> dict[str, Any]:  # the session, loop and semaphore are not picklable
        state = dict(self.__dict__)
        state.update(_session=None, _loop=None, _sem=None)
        return state

    # ------------------------------------------------------------------------------------------ metrics

    def _reset_counters(self) -> None:
        self._requests = 0
        self._retries = 0
        self._failed_items = 0
        self._latencies_ms: list[float] = []
        self._server_metrics: dict[str, list[float]] = {}

    def metrics(self) -> dict[str, float]:
        """Counters since the last call: requests, retries, failed_items, latency_p50_ms / latency_p95_ms
        (successful requests; absent when there were none) and ``server/<key>`` means of what the server
        reported in ``metrics`` / ``extra_logs``. Resets them."""
        out = {"requests": float(self._requests), "retries": float(self._retries),
               "failed_items": float(self._failed_items)}
        if self._latencies_ms:
            lat = sorted(self._latencies_ms)
            out["latency_p50_ms"] = _percentile(lat, 50)
            out["latency_p95_ms"] = _percentile(lat, 95)
        for k, values in self._server_metrics.items():
            out[f"server/{k}"] = sum(values) / len(values)
        self._reset_counters()
        return out

    # ------------------------------------------------------------------------------------------ session

    async def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            await self._discard_session()
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ssl=self._ssl_setting())
            self._session = aiohttp.ClientSession(connector=connector)
            self._loop = loop
            self._sem = asyncio.Semaphore(self.config.max_concurrency)
        assert self._sem is not None
        return self._session, self._sem

    async def _discard_session(self) -> None:
        session, loop = self._session, self._loop
        self._session = self._loop = self._sem = None
        if session is None or session.closed:
            return
        if loop is None or loop is asyncio.get_running_loop() or loop.is_closed():
            await session.close()  # with a closed loop this only marks it closed (its sockets go with the GC)
        else:
            asyncio.run_coroutine_threadsafe(session.close(), loop)

    async def aclose(self) -> None:
        await self._discard_session()

    # ------------------------------------------------------------------------------------------ scoring

    async def score(self, batch: RewardBatch) -> list[Score]:
        return (await self.score_with_steps(batch))[0]

    async def score_with_steps(self, batch: RewardBatch) -> tuple[list[Score], list[Score]]:
        """(scores, raw): raw has the per-step lists of a PRM, scores the aggregated values."""
        n = len(batch)
        raw: list[Score] = []
        if n:
            session, sem = await self._ensure_session()
            size = self.config.batch_size
            chunks = [batch.slice(a, min(a + size, n)) for a in range(0, n, size)]
            results = await _gather_or_cancel([self._score_chunk(session, sem, c) for c in chunks])
            raw = [s for chunk in results for s in chunk]
        assert len(raw) == n
        self.last_steps = raw
        if self.kind != "prm":
            return list(raw), raw

        return [aggregate_steps(s, self.config.aggregate) for s in raw], raw

    async def _score_chunk(self, session: aiohttp.ClientSession, sem: asyncio.Semaphore,
                           chunk: RewardBatch) -> list[Score]:
        n = len(chunk)
        cfg = self.config
        body = encode(build_request(cfg.protocol, chunk, cfg.kind, cfg.label_column))
        try:
            return await self._post_with_retries(session, sem, body, n)
        except RemoteRewardError as e:
            self._failed_items += n
            if cfg.on_failure == "raise":
                raise
            fill = 0.0 if cfg.on_failure == "zero" else None
            log.warning("%s; on_failure=%s: %d items scored %s", e, cfg.on_failure, n, fill)
            return [fill] * n

    async def _post_with_retries(self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, body: bytes,
                                 n: int) -> list[Score]:
        retries = self.config.retries
        for attempt in range(retries + 1):
            try:
                return await self._post_once(session, sem, body, n)
            except _Transient as e:
                if attempt == retries:
                    raise RemoteRewardError(self._redact(
                        f"{self.endpoint}: {e.problem}; gave up after {attempt + 1} attempt(s). Check the "
                        "server, raise retries / timeout_s, or set on_failure: zero|skip to keep training"
                    )) from None
                self._retries += 1
                delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.backoff_cap_s))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _certificate_problem(self, e: aiohttp.ClientConnectorCertificateError) -> str:
        cert_error = e.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        ca_file = self.config.ca_file
        if ca_file is None:
            trust = ("the system's CAs do not trust it. Set ca_file to a PEM file with the server's "
                     "certificate (e.g. its self-signed one) or its CA")
        else:
            trust = (f"ca_file {ca_file!r} does not trust it (or it is not valid for this host). Set ca_file "
                     "to a PEM file with the server's certificate or its CA")
        return (f"{self.endpoint}: TLS error, not retried: the server's certificate failed verification "
                f"({reason}); {trust}, or set verify_tls: false on a trusted network")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "raylhf-remote-reward"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    async def _post_once(self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, body: bytes,
                         n: int) -> list[Score]:
        cfg = self.config
        async with sem:
            self._requests += 1
            t0 = time.perf_counter()
            try:
                async with session.post(cfg.url, data=body, headers=self._headers(),
                                        timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    raw = await resp.read()
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                raise _Transient(f"no complete answer within timeout_s={cfg.timeout_s:g}") from None
            except aiohttp.ClientConnectorCertificateError as e:  # not transient: never retried
                raise RemoteRewardError(self._redact(self._certificate_problem(e))) from None
            except aiohttp.ClientSSLError as e:
                raise RemoteRewardError(self._redact(
                    f"{self.endpoint}: TLS error, not retried ({type(e).__name__}: {e}); if the server "
                    "speaks plain HTTP use an http:// url, otherwise check its certificate, set ca_file to a "
                    "PEM file that trusts it, or set verify_tls: false on a trusted network")) from None
            except aiohttp.ServerDisconnectedError as e:
                hint = ("; if the server speaks HTTPS, the url must start with https://"
                        if urlsplit(cfg.url).scheme == "http" else "")
                raise _Transient(f"request failed ({type(e).__name__}: {e}){hint}") from None
            except aiohttp.ClientError as e:
                raise _Transient(f"request failed ({type(e).__name__}: {e})") from None
            latency_ms = (time.perf_counter() - t0) * 1000
        text = self._redact(snippet(raw))
        if 200 <= status < 300:
            try:
                parsed = parse_response(cfg.protocol, raw, n, cfg.kind, self.endpoint)
            except RemoteRewardError as e:
                raise RemoteRewardError(self._redact(str(e))) from None
            self._latencies_ms.append(latency_ms)
            for k, v in parsed.metrics.items():
                self._server_metrics.setdefault(k, []).append(v)
            return parsed.rewards
        if status in (401, 403):
            what = (f"the bearer token from ${cfg.token_env} was rejected (wrong token?)" if self._token else
                    "no bearer token was sent; set token_env to the environment variable holding the token")
            raise RemoteRewardError(f"{self.endpoint}: HTTP {status}: {what}; body: {text!r}")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}: {text!r}", retry_after)
        raise RemoteRewardError(f"{self.endpoint}: HTTP {status} (not retried): {text!r}; check the url and "
                                f"protocol ('{cfg.protocol}')")


async def _gather_or_cancel(aws: list[Awaitable[list[Score]]]) -> list[list[Score]]:
    """gather, but on the first error cancel the others (no requests left running behind a raise)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
