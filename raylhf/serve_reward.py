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
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from raylhf.config import cli_entry
from raylhf.config.sections import PRMAggregate, RewardFunctionConfig, RewardModelConfig, Section

PROG = "raylhf.serve_reward"


class ServeRewardConfig(Section):
    host: str = Field(
        "127.0.0.1", description="interface to bind; 0.0.0.0 exposes it to the network (set a token then)"
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one (printed when ready)")
    token_env: str | None = Field(
        "RAYLHF_REWARD_TOKEN",
        description="environment variable holding the bearer token; when it is set, requests must carry it",
    )
    max_items: int = Field(4096, gt=0, description="most completions in one request (413 above)")
    max_body_mb: float = Field(32.0, gt=0, description="largest request body in MiB (413 above)")
    name: str = Field("reward", description="name reported by /health")
    functions: list[RewardFunctionConfig] = Field(
        default_factory=lambda: [RewardFunctionConfig(name="accuracy")],
        description="reward functions / plugin classes, like reward.functions; served as their weighted sum",
    )
    plugins: list[str] = Field(default_factory=list, description="plugin files (or modules) loaded first")
    model: RewardModelConfig | None = Field(None, description="a reward model (like reward.models entries)")
    label_column: str = Field(
        "solution", description="column filled from the request's labels (OpenRLHF) / label (raylhf)"
    )
    aggregate: PRMAggregate = Field(
        "min", description="how a PRM's per-step scores become one number where the protocol needs one"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "warning", description="uvicorn log level"
    )
    ssl_certfile: str | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; needs ssl_keyfile (both or neither)"
    )
    ssl_keyfile: str | None = Field(None, description="PEM private key (unencrypted) of ssl_certfile")

    @model_validator(mode="after")
    def _something(self) -> ServeRewardConfig:
        if not self.functions and self.model is None:
            raise ValueError("nothing to serve: give functions and/or model")
        return self

    @model_validator(mode="after")
    def _tls(self) -> ServeRewardConfig:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            given, missing = (("ssl_certfile", "ssl_keyfile") if self.ssl_keyfile is None
                              else ("ssl_keyfile", "ssl_certfile"))
            raise ValueError(f"{given} is set but {missing} is not: HTTPS needs both ssl_certfile (the PEM "
                             "certificate) and ssl_keyfile (its PEM private key); give both, or neither "
                             "for HTTP")
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} does not exist or is not a file")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_env: str | None) -> str | None:
    return (os.environ.get(token_env) or None) if token_env else None


def build_scorer(cfg: ServeRewardConfig) -> Any:
    from rewards.registry import CombinedScorer, build_scorers

    scorers = build_scorers(
        functions=[f.model_dump() for f in cfg.functions],
        models=[cfg.model.model_dump()] if cfg.model is not None else [],
        plugins=cfg.plugins,
    )
    return CombinedScorer(scorers, name=cfg.name)


async def _serve(cfg: ServeRewardConfig, scorer: Any, token: str | None) -> None:
    from rewards.server import create_app, serve

    app = create_app(scorer, token=token, max_items=cfg.max_items,
                     max_body_bytes=int(cfg.max_body_mb * (1 << 20)), label_column=cfg.label_column,
                     aggregate=cfg.aggregate)
    try:
        await serve(app, cfg.host, cfg.port, auth=token is not None, log_level=cfg.log_level,
                    ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    finally:
        await scorer.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(ServeRewardConfig, argv, PROG)
    if cfg is None:
        return 0
    token = read_token(cfg.token_env)
    if token is None and not is_loopback(cfg.host):
        bar = "!" * 100
        print(f"{bar}\n[serve-reward] WARNING: binding {cfg.host} (not loopback) WITHOUT a token: anyone who "
              f"can reach port {cfg.port} can use this server.\n[serve-reward] Set "
              f"{cfg.token_env or 'token_env'} to a secret token to require it.\n{bar}",
              file=sys.stderr, flush=True)
    if cfg.ssl_certfile is not None and cfg.ssl_keyfile is not None:
        from rewards.server import check_tls_files

        try:
            check_tls_files(cfg.ssl_certfile, cfg.ssl_keyfile)  # before building (maybe loading) the rewards
        except OSError as e:
            print(f"{PROG}: error: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        scorer = build_scorer(cfg)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, OSError) as e:
        print(f"{PROG}: error: could not build the rewards: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(cfg, scorer, token))
    except OSError as e:
        print(f"{PROG}: error: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
