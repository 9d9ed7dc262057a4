"""Rewards shared by both sides of benchmarks/grpo_vs_trl.py (a plain module, so raylhf's reward actors can load
it as ``benchmarks/bench_rewards.py:digit_fraction`` and TRL calls it in-process)."""

from __future__ import annotations

from typing import Any


def _text(c: Any) -> str:
    return c[-1]["content"] if isinstance(c, list) else str(c)  # TRL passes chat completions as message lists


def digit_fraction(completions: list[Any], **_: Any) -> list[float]:
    """Dense reward: the share of digit characters in the completion (0 for an empty one). A random model's
    completions differ in it, so groups have non-zero advantages and the update does real work."""
    out = []
    for c in completions:
        t = _text(c)
        out.append(sum(ch.isdigit() for ch in t) / len(t) if t else 0.0)
    return out
