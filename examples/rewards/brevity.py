"""A custom reward in a file: reference it as `examples/rewards/brevity.py:brevity` in reward.functions.

Signature (TRL-compatible): keyword arguments prompts, completions, completion_ids and every extra data
column (e.g. solution), one value per completion; return one float per completion.
"""

from __future__ import annotations

from typing import Any


def brevity(completion_ids: list[list[int]], max_tokens: int = 8, **_: Any) -> list[float]:
    """1.0 for answers within max_tokens tokens, falling linearly to 0 at twice that."""
    return [max(0.0, min(1.0, 2.0 - len(ids) / max_tokens)) for ids in completion_ids]
