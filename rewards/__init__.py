"""Reward functions (ORMs / PRMs), model rewards, remote HTTP rewards and the reward server.

What a user's plugin file imports::

    from rewards import ORM, PRM, AsyncORM, InferRequest, register_orm, register_prm, register_reward

Layers and where new code goes: docs/architecture.md.
"""

from rewards.base import (
    ORM,
    PRM,
    AsyncORM,
    InferRequest,
    RewardBatch,
    Score,
    Scorer,
    register_orm,
    register_prm,
    register_reward,
)

__all__ = ["ORM", "PRM", "AsyncORM", "InferRequest", "RewardBatch", "Score", "Scorer", "register_orm",
           "register_prm", "register_reward"]
