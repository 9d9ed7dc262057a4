"""Agents: tool-call formats (:mod:`.templates`), tools (:mod:`.tools`) and multi-turn GRPO episodes
(:mod:`.multiturn`): the model calls a tool, the environment answers, generation continues in the same
sequence; the environment's tokens carry zero loss weight and the final reward scores the whole episode.

Selected by the ``agent`` section of a GRPO config (``agent.template``, ``agent.tools``, ``agent.max_turns``).

Layers and where new code goes: docs/architecture.md.
"""
