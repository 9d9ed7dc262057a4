"""The ``agent`` section of GRPO: multi-turn rollouts with tools (raylhf/agent)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from raylhf.config.sections import Section, check_registered
from raylhf.plugins.registry import TEMPLATES, TOOLS


class AgentConfig(Section):
    """Multi-turn episodes: the model calls tools in the ``template``'s format, the environment answers, and
    generation continues in the same episode, up to ``max_turns`` model turns. Off when ``template`` is null.
    ``rollout.max_new_tokens`` bounds the tokens of the whole episode (model and tool tokens together)."""

    template: str | None = Field(None, description="agent template (tool-call format): hermes, react, or one from a "
                                 "plugin file; null: single-turn rollouts")
    tools: list[str] = Field(default_factory=list, description="tools offered to the model (e.g. calculator)")
    max_turns: int = Field(3, gt=0, description="model turns per episode (tool answers in between)")
    max_tool_response_tokens: int = Field(64, gt=0, description="tool answers are cut to this many tokens")
    tool_timeout_s: float = Field(10.0, gt=0, description="a tool call running longer answers 'error: timed out' "
                                  "(the run goes on)")

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str | None) -> str | None:
        if v is not None:
            check_registered(TEMPLATES, v)
        return v

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, v: list[str]) -> list[str]:
        check_registered(TOOLS, v)
        return v

    @model_validator(mode="after")
    def _tools_need_template(self) -> AgentConfig:
        if self.tools and self.template is None:
            raise ValueError(f"agent.tools={self.tools} needs agent.template (the tool-call format, e.g. hermes); "
                             "set it, or drop agent.tools for single-turn rollouts")
        if self.template is not None and not self.tools:
            raise ValueError(f"agent.template={self.template} offers the model no tools: set agent.tools "
                             "(e.g. [calculator]) or agent.template: null")
        return self
