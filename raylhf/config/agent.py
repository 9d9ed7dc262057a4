"""The ``agent`` section of GRPO: multi-turn episodes with tools, an environment or a scheduler (raylhf/agent)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from raylhf.config.sections import Section, check_registered
from raylhf.plugins.registry import ENVS, SCHEDULERS, TEMPLATES, TOOLS

_REGISTRIES = {"template": TEMPLATES, "tools": TOOLS, "env": ENVS, "scheduler": SCHEDULERS}


class AgentConfig(Section):
    """Multi-turn episodes: the model's turn, then the environment's (tool answers, an env's observation or a
    scheduler's message), and generation continues in the same episode, up to ``max_turns`` model turns. Off when
    ``template``, ``env`` and ``scheduler`` are all null. ``rollout.max_new_tokens`` bounds the tokens of the whole
    episode (model and environment tokens together)."""

    template: str | None = Field(None, description="agent template (tool-call format): hermes, react, or one from a "
                                 "plugin file; with agent.tools")
    tools: list[str] = Field(default_factory=list, description="tools offered to the model (e.g. calculator): the "
                             "built-in 'tools' env")
    env: str | None = Field(None, description="environment (a plugin's env class, ms-swift's Env shape: reset / "
                            "step / close); its observations are the user turns between model turns")
    env_config: dict[str, Any] = Field(default_factory=dict, description="the env's constructor config "
                                       "(Env(env_config))")
    scheduler: str | None = Field(None, description="multi-turn scheduler (a plugin's class, ms-swift's "
                                  "MultiTurnScheduler shape: step / check_finished)")
    env_reward: Literal["sum", "last", "mean"] = Field("sum", description="how an env's per-step rewards make the "
                                                       "episode's env reward (reward/env, added to the total)")
    env_reward_weight: float = Field(1.0, description="weight of the env reward in the total reward")
    max_turns: int = Field(3, gt=0, description="model turns per episode (environment turns in between)")
    max_turn_tokens: int | None = Field(None, gt=0, description="tokens of one model turn at most (the turn is cut "
                                        "and the environment answers); null: the episode's budget left")
    max_tool_response_tokens: int = Field(64, gt=0, description="tool answers are cut to this many tokens")
    tool_timeout_s: float = Field(10.0, gt=0, description="a tool call or env step running longer answers 'error: "
                                  "timed out' (the run goes on)")
    max_concurrent_steps: int = Field(16, gt=0, description="env / tool steps running at once per rollout engine")
    barrier: bool = Field(False, description="turn barrier: the episodes of an engine wait for each other after "
                          "every generation and env step (synchronous multi-turn, for comparison); false: every "
                          "episode runs on its own")

    @property
    def enabled(self) -> bool:
        return bool(self.template or self.env or self.scheduler)

    @field_validator("template", "tools", "env", "scheduler")
    @classmethod
    def _registered(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if v is not None:
            check_registered(_REGISTRIES[info.field_name], v)  # type: ignore[index]
        return v

    @model_validator(mode="after")
    def _one_environment(self) -> AgentConfig:
        if self.tools and self.template is None:
            raise ValueError(f"agent.tools={self.tools} needs agent.template (the tool-call format, e.g. hermes); "
                             "set it, or drop agent.tools for single-turn rollouts")
        if self.template is not None and not self.tools:
            raise ValueError(f"agent.template={self.template} offers the model no tools: set agent.tools "
                             "(e.g. [calculator]) or agent.template: null")
        if self.env == "tools" and not self.tools:
            raise ValueError("agent.env=tools is the agent's tools: set agent.template and agent.tools")
        chosen = [f"agent.{k}" for k, on in (("tools", bool(self.tools)),
                                              ("env", self.env not in (None, "tools")),
                                              ("scheduler", self.scheduler is not None)) if on]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are both set: an episode has one environment; keep one of them "
                             "(an env can offer tools itself)")
        return self
