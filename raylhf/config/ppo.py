"""The config tree of ``python -m raylhf.ppo``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.base import nearest_divisor
from raylhf.config.demo import DemoConfig, demo_model, demo_reward, demo_rollout
from raylhf.config.run import TrainerSections
from raylhf.config.sandbox import SandboxConfig
from raylhf.config.sections import (
    DataConfig,
    LossAgg,
    ModelConfig,
    PolicyConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    Section,
    check_colocation,
)


class PPOAlgoConfig(Section):
    """PPO (actor-critic) and the estimator switch: ``advantage: gae`` trains a critic; the others need none."""

    num_steps: int = Field(40, gt=0, description="training steps (one rollout batch each)")
    prompt_batch_size: int = Field(16, gt=0, description="prompts per step")
    samples_per_prompt: int = Field(
        4, gt=0, description="completions per prompt (1 is enough for gae; grpo / rloo need >= 2)")
    train_batch_size: int | None = Field(
        None, gt=0, description="samples per optimizer step (mini-batch); null: the whole rollout batch")
    ppo_epochs: int = Field(2, gt=0, description="passes over each rollout batch, for the policy and the critic")
    advantage: Literal["gae", "grpo", "rloo", "reinforce++", "reinforce++-baseline"] = Field(
        "gae", description="advantage estimator; only gae starts a critic")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="grpo estimator: divide by the group std, the batch std, or not")
    gamma: float = Field(1.0, ge=0, le=1, description="discount (gae)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="gae: whiten advantages over the batch's response tokens")
    kl_coef: float = Field(0.05, ge=0, description="KL(policy || reference) coefficient (initial value if adaptive)")
    kl_in_reward: bool = Field(
        True, description="true: -kl_coef * KL per token in the reward (classic PPO); false: a loss term")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="KL estimator (k1 in the reward, k3 as a loss term are the usual choices)")
    kl_target: float | None = Field(
        None, gt=0, description="adaptive KL controller target (Ziegler et al.); null: fixed kl_coef")
    kl_horizon: float = Field(10000.0, gt=0, description="adaptive KL controller horizon (samples)")
    clip_low: float = Field(0.2, ge=0, description="PPO clip range below 1")
    clip_high: float = Field(0.2, ge=0, description="PPO clip range above 1")
    value_clip: float | None = Field(0.2, gt=0, description="value clip range around the rollout-time values")
    critic_warmup_steps: int = Field(0, ge=0, description="first steps train only the critic")
    loss_agg: LossAgg = Field("token-mean", description="how per-token policy losses are aggregated")
    entropy_coef: float = Field(0.0, description="entropy bonus coefficient")
    step_separator: str = Field(
        "\n\n", description="PRM step rewards go on the last token of each step, steps split by this separator")
    eval_every: int = Field(0, ge=0, description="evaluate held-out accuracy every N steps; 0: start and end")
    eval_samples: int = Field(4, gt=0, description="samples per held-out prompt (mean@k)")
    eval_temperature: float = Field(1.0, ge=0, description="sampling temperature of the held-out accuracy")


class CriticConfig(PolicyConfig):
    model_path: str | None = Field(
        None, description="value model start: a causal LM or a reward model checkpoint; null: the policy's start")


class PPOConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=5e-5, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    critic: CriticConfig = Field(default_factory=lambda: CriticConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=1))
    rollout: RolloutConfig = Field(default_factory=demo_rollout)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    reward: RewardConfig = Field(default_factory=demo_reward)
    ppo: PPOAlgoConfig = Field(default_factory=lambda: PPOAlgoConfig(eval_every=10))
    demo: DemoConfig = Field(default_factory=DemoConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="how model-written code runs "
                                   "(the code_tests reward, the python tool)")

    @model_validator(mode="after")
    def _batches(self) -> PPOConfig:
        p = self.ppo
        check_colocation(self.rollout, self.policy, 0, "ppo")
        rollout_batch = p.prompt_batch_size * p.samples_per_prompt
        train = p.train_batch_size or rollout_batch
        if rollout_batch % train:
            raise ValueError(f"ppo.train_batch_size ({train}) must divide the rollout batch ppo.prompt_batch_size x "
                             f"ppo.samples_per_prompt = {rollout_batch}; e.g. {nearest_divisor(rollout_batch, train)}")
        for name, workers in (("policy", self.policy.num_workers), ("critic", self.critic.num_workers)):
            if train % workers:
                raise ValueError(f"ppo.train_batch_size ({train}) must be divisible by {name}.num_workers ({workers})")
        if p.samples_per_prompt < 2 and p.advantage in ("grpo", "rloo"):
            raise ValueError(f"ppo.advantage={p.advantage} compares samples within a group: set "
                             "ppo.samples_per_prompt >= 2 (or use ppo.advantage=gae)")
        return self
