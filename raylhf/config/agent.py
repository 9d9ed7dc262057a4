"""The ``agent`` section of GRPO: multi-turn rollouts with tools (raylhf/agent)."""

from __future__ import annotations

from pydantic import Field

from raylhf.config.sections import Section


class AgentConfig(Section):
    """Multi-turn episodes: the model calls tools in the ``template``'s format, the environment answers, and
    generation continues in the same episode, up to ``max_turns`` model turns. Off when ``template`` is null."""

    template: str | None = Field(None, description="agent template (tool-call format): hermes, react, or one from a "
                                 "plugin file; null: single-turn rollouts")
    tools: list[str] = Field(default_factory=list, description="tools offered to the model (e.g. calculator)")
    max_turns: int = Field(3, gt=0, description="model turns per episode (tool answers in between)")
    max_tool_response_tokens: int = Field(64, gt=0, description="tool answers are cut to this many tokens")
