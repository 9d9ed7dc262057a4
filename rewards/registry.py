"""The reward kind's home (``KINDS["reward"]`` in ``raylhf/plugins/registry.py``): loading it registers the
built-in rewards (``rewards/orm.py``) and attaches the ``orms`` / ``prms`` table collector and the interface
check of ``raylhf check-plugin``. Names resolve in ``rewards/resolve.py``; scorers are built in
``rewards/scoring.py``. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from raylhf.plugins.registry import REWARDS, PluginCheckError
from rewards import codetests as _code_tests  # noqa: F401  (registers code_tests)
from rewards import orm as _builtins  # noqa: F401  (the built-in rewards register on import)
from rewards.base import (
    ORM,
    PRM,
    AsyncORM,
    InferRequest,
    RewardBatch,
    register_orm,
    register_prm,
    register_reward,
)
from rewards.resolve import load_object
from rewards.scoring import function_scorer

__all__ = ["ORM", "PRM", "AsyncORM", "InferRequest", "check_plugin_entry", "collect_table", "load_object",
           "register_orm", "register_prm", "register_reward"]


def collect_table(table: Any, source: str) -> None:
    """A plugin module's ``orms`` / ``prms`` dict (name -> function or class) into the reward registry."""
    REWARDS.register_table(table, source, "reward function or ORM/PRM class")


# ---------------------------------------------------------------- raylhf check-plugin

def check_plugin_entry(name: str, obj: Any) -> str:
    """``raylhf check-plugin``: build the scorer for reward ``name`` and score two synthetic completions
    (prompt "What is 2+2?", completions "4" / "5", column ``solution`` ["4", "4"]); it must return one score per
    completion (a number, per-step numbers for a PRM, or None)."""
    expected = ("a function f(completions, **kwargs) / f(prompts, completions, completion_ids, **columns), or an "
                "ORM/PRM class with __call__(self, completions, **kwargs) or __call__(self, infer_requests, "
                "ground_truths=None, **kwargs)")
    if not callable(obj):
        raise PluginCheckError(f"reward {name!r} is not callable; expected {expected}")
    try:
        scorer = function_scorer({"name": name})
    except TypeError as e:
        if inspect.isclass(obj):
            return f"not run: the class needs constructor arguments ({e}); give them as reward.functions kwargs"
        raise PluginCheckError(f"reward {name!r}: {e}; expected {expected}") from e
    batch = RewardBatch(prompts=["What is 2+2?"] * 2, completions=["4", "5"], completion_ids=[[19], [20]],
                        prompt_messages=[[{"role": "user", "content": "What is 2+2?"}]] * 2,
                        columns={"solution": ["4", "4"]}, context={"step": 0, "max_new_tokens": 16})
    try:
        scores = asyncio.run(scorer.score(batch))
    except (KeyError, AttributeError) as e:
        return (f"not run: it needs something the synthetic batch lacks ({type(e).__name__}: {e}); "
                "it may read a dataset column other than 'solution'")
    except (TypeError, ValueError) as e:
        raise PluginCheckError(f"reward {name!r} failed on 2 synthetic completions: {e}; expected {expected}, "
                               "returning one score per completion") from e
    return f"{scorer.kind} on 2 synthetic completions returned {scores}"


REWARDS.attach(collector=collect_table, interface_check=check_plugin_entry)
