"""The config of `raylhf serve-reward` (raylhf/tools/serve_reward.py)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.sandbox import SandboxConfig
from raylhf.config.sections import PRMAggregate, RewardFunctionConfig, RewardModelConfig, Section


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
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="how the code_tests reward runs "
                                   "programs (docs/sandbox.md)")

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
