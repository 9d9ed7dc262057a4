"""The config tree of ``python -m raylhf.online_dpo``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.demo import DemoConfig, demo_model, demo_reward, demo_rollout
from raylhf.config.run import TrainerSections
from raylhf.config.sandbox import SandboxConfig
from raylhf.config.sections import (
    DataConfig,
    ModelConfig,
    PolicyConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    Section,
    check_colocation,
)


class OnlineDPOAlgoConfig(Section):
    """Online (iterative) DPO: each step samples, scores, pairs best vs worst per prompt, one DPO update."""

    num_steps: int = Field(40, gt=0, description="rounds (one rollout batch and one DPO update each)")
    prompt_batch_size: int = Field(16, gt=0, description="prompts per round")
    samples_per_prompt: int = Field(4, ge=2, description="completions per prompt; the pair is the best and the worst")
    loss_type: Literal["sigmoid", "ipo", "hinge", "simpo"] = Field(
        "sigmoid", description="the DPO-family loss; simpo uses no reference model")
    beta: float = Field(0.1, gt=0, description="the loss's temperature (simpo: 2.0 is usual)")
    simpo_gamma: float = Field(1.0, ge=0, description="simpo: target reward margin")
    min_margin: float = Field(0.0, ge=0, description="skip prompts whose best - worst reward is not above this")
    eval_every: int = Field(0, ge=0, description="evaluate held-out accuracy every N steps; 0: start and end")
    eval_samples: int = Field(4, gt=0, description="samples per held-out prompt (mean@k)")
    eval_temperature: float = Field(1.0, ge=0, description="sampling temperature of the held-out accuracy")

    @property
    def kl_coef(self) -> float:
        """Nonzero when the loss needs the reference model (the RL driver starts it on kl_coef > 0)."""
        return 0.0 if self.loss_type == "simpo" else 1.0


class OnlineDPOConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=5e-6, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    rollout: RolloutConfig = Field(default_factory=demo_rollout)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    reward: RewardConfig = Field(default_factory=demo_reward)
    online_dpo: OnlineDPOAlgoConfig = Field(default_factory=lambda: OnlineDPOAlgoConfig(eval_every=10))
    demo: DemoConfig = Field(default_factory=DemoConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="how model-written code runs "
                                   "(the code_tests reward, the python tool)")

    @model_validator(mode="after")
    def _colocation(self) -> OnlineDPOConfig:
        check_colocation(self.rollout, self.policy, 0, "online_dpo")
        return self
