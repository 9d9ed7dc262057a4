"""The ``demo`` section: the embedded task that runs when ``data.train_files`` is empty, and the demo's model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylhf.config.sections import (
    ModelConfig,
    RewardConfig,
    RewardFunctionConfig,
    RolloutConfig,
    Section,
    TinyModelConfig,
)


def demo_model() -> ModelConfig:
    """The GRPO demo's model; the trainers' default runs share its cached SFT warm-up (raylhf/demo/warmup.py)."""
    return ModelConfig(tiny=TinyModelConfig(hidden_size=256, num_layers=4, intermediate_size=768))


def demo_rollout() -> RolloutConfig:
    """The online trainers' engines: short replies; generation and training alternate, so both cores each."""
    return RolloutConfig(max_new_tokens=16, num_cpus_per_engine=2)


def demo_reward() -> RewardConfig:
    """The online trainers' verifier: the right equation, the asked form (column 'equation' of the demo task and
    the example data); the right number in any form is only logged (weight 0)."""
    return RewardConfig(functions=[
        RewardFunctionConfig(name="exact_match", label="accuracy", kwargs={"column": "equation"}),
        RewardFunctionConfig(name="accuracy", label="any_form_accuracy", weight=0.0),
    ])


class DemoConfig(Section):
    """The embedded task used when ``data.train_files`` is empty."""

    task: Literal["arithmetic"] = Field("arithmetic", description="built-in task")
    num_train: int = Field(2000, gt=0, description="training prompts generated")
    num_heldout: int = Field(200, gt=0, description="held-out prompts for the before/after accuracy")
    sft_steps: int = Field(500, ge=0, description="SFT warm-up steps that produce the starting policy (cached)")
    sft_examples: int = Field(2000, ge=0, description="demonstrations used by the SFT warm-up")
    sft_lr: float = Field(1e-3, gt=0, description="learning rate of the SFT warm-up")
    sft_noise: float = Field(
        0.2, ge=0, le=1, description="share of warm-up demonstrations with a wrong answer (RL must fix them)"
    )
    max_operand: int = Field(50, gt=0, description="operands are drawn from [0, max_operand]")
    cache_dir: str | None = Field(None, description="where the warm-up policy is cached; null: ~/.cache/raylhf")
