"""`raylhf serve-reward` / `python -m raylhf.serve_reward`: reward functions or a reward model over HTTP.

Serves ``POST /score`` (raylhf protocol), ``POST /get_reward`` (OpenRLHF's ``--remote_rm_url``) and
``GET /health``; see docs/rewards.md. The bearer token comes from the environment variable ``token_env``
(default RAYLHF_REWARD_TOKEN): set it and every POST needs ``Authorization: Bearer <token>``. With
``ssl_certfile`` and ``ssl_keyfile`` it serves HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
from typing import Any

from raylhf.config.serve_reward import ServeRewardConfig
from rewards.base import RewardBatch, Score
from rewards.sandbox import SandboxUnavailable
from rewards.scoring import CombinedScorer, bind_context, build_scorers
from rewards.server import check_tls_files, create_app, serve

PROG = "raylhf.serve_reward"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_env: str | None) -> str | None:
    return (os.environ.get(token_env) or None) if token_env else None


class _WithContext:
    """The served scorer with the server's run facts (the ``sandbox:`` section) in every batch's context, as the
    reward actors have them."""

    def __init__(self, inner: CombinedScorer, context: dict[str, Any]) -> None:
        self.inner, self.context = inner, context
        self.name, self.kind = inner.name, inner.kind

    async def score(self, batch: RewardBatch) -> list[Score]:
        batch.context = {**self.context, **batch.context}
        return await self.inner.score(batch)

    def metrics(self) -> dict[str, float]:
        return self.inner.metrics()

    async def aclose(self) -> None:
        await self.inner.aclose()


def build_scorer(cfg: ServeRewardConfig) -> Any:
    scorers = build_scorers(
        functions=[f.model_dump() for f in cfg.functions],
        models=[cfg.model.model_dump()] if cfg.model is not None else [],
        plugins=cfg.plugins,
    )
    context = {"sandbox": cfg.sandbox.model_dump()}
    bind_context(scorers, context)
    return _WithContext(CombinedScorer(scorers, name=cfg.name), context)


async def _serve(cfg: ServeRewardConfig, scorer: Any, token: str | None) -> None:
    app = create_app(scorer, token=token, max_items=cfg.max_items,
                     max_body_bytes=int(cfg.max_body_mb * (1 << 20)), label_column=cfg.label_column,
                     aggregate=cfg.aggregate)
    try:
        await serve(app, cfg.host, cfg.port, auth=token is not None, log_level=cfg.log_level,
                    ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    finally:
        await scorer.aclose()


def cli(cfg: ServeRewardConfig) -> int:
    """Serve until interrupted; a bad TLS file, a reward that cannot be built or a taken port: one line, exit
    2 (1 for the port)."""
    token = read_token(cfg.token_env)
    if token is None and not is_loopback(cfg.host):
        bar = "!" * 100
        print(f"{bar}\n[serve-reward] WARNING: binding {cfg.host} (not loopback) WITHOUT a token: anyone who "
              f"can reach port {cfg.port} can use this server.\n[serve-reward] Set "
              f"{cfg.token_env or 'token_env'} to a secret token to require it.\n{bar}",
              file=sys.stderr, flush=True)
    if cfg.ssl_certfile is not None and cfg.ssl_keyfile is not None:

        try:
            check_tls_files(cfg.ssl_certfile, cfg.ssl_keyfile)  # before building (maybe loading) the rewards
        except OSError as e:
            print(f"{PROG}: error: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        scorer = build_scorer(cfg)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, OSError, SandboxUnavailable) as e:
        print(f"{PROG}: error: could not build the rewards: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(cfg, scorer, token))
    except OSError as e:
        print(f"{PROG}: error: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
