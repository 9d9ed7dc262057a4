"""The config tree of ``python -m raylhf.grpo``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from raylhf.config.agent import AgentConfig
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


class GRPOAlgoConfig(Section):
    num_steps: int = Field(40, gt=0, description="training steps (one rollout batch each)")
    prompt_batch_size: int = Field(16, gt=0, description="prompts per step")
    samples_per_prompt: int = Field(8, gt=0, description="completions per prompt (the group size G)")
    train_batch_size: int | None = Field(
        None, gt=0, description="samples per optimizer step; null: the whole rollout batch (one step per update)"
    )
    updates_per_batch: int = Field(1, gt=0, description="passes over each rollout batch (PPO epochs)")
    advantage: Literal["grpo", "rloo", "reinforce++", "reinforce++-baseline"] = Field(
        "grpo", description="advantage estimator"
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the group std, the batch std, or not (Dr.GRPO)"
    )
    loss_agg: LossAgg = Field("token-mean", description="how per-token losses are aggregated")
    clip_low: float = Field(0.2, ge=0, description="PPO clip range below 1 (ratio >= 1 - clip_low)")
    clip_high: float = Field(0.28, ge=0, description="PPO clip range above 1 (clip-higher, DAPO)")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip constant c for negative advantages")
    importance_sampling: Literal["token", "sequence"] = Field(
        "token", description="token ratios (GRPO) or one sequence-level ratio (GSPO)"
    )
    tis_cap: float | None = Field(
        2.0, gt=0, description="truncated IS weight cap for the rollout/trainer logprob mismatch (the upper threshold "
        "of every is_correction mode unless is_high is set); null disables the correction, whatever is_correction"
    )
    is_correction: Literal["none", "token_tis", "seq_tis", "token_mis", "seq_mis", "icepop", "geo_seq"] = Field(
        "token_tis", description="off-policy IS correction on the ratio r = exp(old_logp - rollout_logp): token_tis "
        "min(r_t, high); seq_tis min(prod r_t, high) per sequence; token_mis r_t, or 0 above high; seq_mis the "
        "sequence ratio, or 0 for the sequence above high; icepop r_t, or 0 outside [is_low, high]; geo_seq 1, or 0 "
        "for the sequence when the geometric mean of r_t is outside [is_low, high]; none: no correction"
    )
    is_low: float = Field(
        0.5, gt=0, description="lower ratio threshold of the two-sided modes (icepop, geo_seq); must be < is_high"
    )
    is_high: float | None = Field(
        None, gt=0, description="upper ratio threshold (cap of the *_tis modes, rejection bound of the others); "
        "null: tis_cap's value"
    )
    kl_coef: float = Field(0.0, ge=0, description="KL(policy || reference) loss coefficient; 0 skips the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator")
    entropy_coef: float = Field(0.0, description="entropy bonus coefficient")
    dynamic_sampling: bool = Field(
        False, description="train only on groups whose rewards vary (non-zero std); on-policy, the driver samples "
        "more prompts until it has prompt_batch_size such groups (aborting the surplus); with async_steps the "
        "prefetched batch is filtered")
    max_sampling_rounds: int = Field(
        3, gt=0, description="dynamic sampling: rounds of prompt_batch_size prompts at most per step; then the step "
        "trains on the varied groups it has (with a warning)")
    overlong: Literal["none", "mask", "penalty"] = Field(
        "none", description="truncated responses: keep, mask from the loss, or penalty (adds the soft_overlong reward with "
        "overlong_buffer / overlong_penalty)"
    )
    overlong_buffer: int = Field(16, ge=0, description="tokens before max_new_tokens where the penalty starts")
    overlong_penalty: float = Field(1.0, ge=0, description="penalty at max_new_tokens (linear ramp)")
    async_steps: int = Field(
        0, ge=0, le=4, description="generate the next N steps' rollouts while a step trains (engines at most N weight "
        "versions behind; off-policy gap corrected by tis_cap); 0: on-policy, one phase after the other"
    )
    eval_every: int = Field(0, ge=0, description="evaluate held-out accuracy every N steps; 0: start and end")
    eval_samples: int = Field(4, gt=0, description="samples per held-out prompt; accuracy is their mean (mean@k)")
    eval_temperature: float = Field(
        1.0, ge=0, description="sampling temperature of the held-out accuracy (greedy accuracy is logged too)"
    )

    @property
    def effective_is_high(self) -> float | None:
        """The upper IS threshold in force: ``is_high``, else ``tis_cap``."""
        return self.tis_cap if self.is_high is None else self.is_high

    def objective_is_fields(self) -> dict[str, Any]:
        """The IS-correction fields of :class:`raylhf.core.batch.Objective` (``tis_cap`` null: no correction)."""
        return dict(tis_cap=self.tis_cap, is_correction=self.is_correction if self.tis_cap is not None else "none",
                    is_low=self.is_low, is_high=self.is_high)

    @model_validator(mode="after")
    def _is_thresholds(self) -> GRPOAlgoConfig:
        high = self.effective_is_high
        # an explicit is_high must exceed is_low in every mode; the tis_cap fallback only where is_low is used
        two_sided = self.is_correction in ("icepop", "geo_seq") and self.tis_cap is not None
        if high is not None and (self.is_high is not None or two_sided) and self.is_low >= high:
            source = "grpo.is_high" if self.is_high is not None else "grpo.is_high (null: grpo.tis_cap's value)"
            hint = 1 / high if high > 1 else high / 2
            raise ValueError(
                f"grpo.is_low ({self.is_low}) must be smaller than {source} ({high}): the kept ratio band "
                f"[is_low, is_high] would be empty; lower grpo.is_low (e.g. {hint:g}) or raise grpo.is_high"
            )
        return self


class GRPOConfig(TrainerSections):
    model: ModelConfig = Field(
        default_factory=demo_model
    )
    data: DataConfig = Field(default_factory=DataConfig)
    # generation and training alternate, so each may use both cores of a small machine
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    rollout: RolloutConfig = Field(default_factory=demo_rollout)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    reward: RewardConfig = Field(default_factory=demo_reward)
    grpo: GRPOAlgoConfig = Field(default_factory=lambda: GRPOAlgoConfig(eval_every=10))
    agent: AgentConfig = Field(default_factory=AgentConfig, description="multi-turn rollouts with tools")
    demo: DemoConfig = Field(default_factory=DemoConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="how model-written code runs "
                                   "(the code_tests reward, the python tool)")

    @model_validator(mode="after")
    def _batches(self) -> GRPOConfig:
        g = self.grpo
        if g.async_steps and self.agent.enabled:
            raise ValueError(f"grpo.async_steps={g.async_steps} pipelines single-turn generation, but the agent "
                             "section (agent.template / agent.env / agent.scheduler) runs multi-turn episodes "
                             "on-policy: set grpo.async_steps=0 or turn the agent off")
        check_colocation(self.rollout, self.policy, g.async_steps, "grpo")
        rollout_batch = g.prompt_batch_size * g.samples_per_prompt
        train = g.train_batch_size or rollout_batch
        if rollout_batch % train:
            raise ValueError(
                f"grpo.train_batch_size ({train}) must divide the rollout batch grpo.prompt_batch_size x "
                f"grpo.samples_per_prompt = {g.prompt_batch_size} x {g.samples_per_prompt} = {rollout_batch}; "
                f"pick a divisor of {rollout_batch}, e.g. {nearest_divisor(rollout_batch, train)}"
            )
        if train % g.samples_per_prompt:
            raise ValueError(
                f"grpo.train_batch_size ({train}) must be a multiple of grpo.samples_per_prompt "
                f"({g.samples_per_prompt}) so that whole groups stay in one optimizer step"
            )
        if train % self.policy.num_workers:
            raise ValueError(
                f"grpo.train_batch_size ({train}) must be divisible by policy.num_workers "
                f"({self.policy.num_workers}): each data-parallel rank takes an equal share"
            )
        if g.samples_per_prompt < 2 and g.advantage in ("grpo", "rloo"):
            raise ValueError(
                f"grpo.advantage={g.advantage} compares samples within a group: set grpo.samples_per_prompt >= 2 "
                "(or use grpo.advantage=reinforce++)"
            )
        if g.overlong == "penalty" and g.overlong_buffer >= self.rollout.max_new_tokens:
            raise ValueError(
                f"grpo.overlong_buffer ({g.overlong_buffer}) must be smaller than rollout.max_new_tokens "
                f"({self.rollout.max_new_tokens})"
            )
        return self
