"""Typed config trees, one per algorithm, built from the shared sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from raylhf.config.agent import AgentConfig
from raylhf.config.gkd import GKDConfig
from raylhf.config.rm import RMConfig
from raylhf.config.sections import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    PluginSections,
    PolicyConfig,
    RayConfig,
    ReferenceConfig,
    RewardConfig,
    RewardFunctionConfig,
    RolloutConfig,
    RuntimeConfig,
    Section,
    TinyModelConfig,
    TrainerSections,
    check_registered,
)
from raylhf.config.serve_reward import ServeRewardConfig

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


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
        2.0, gt=0, description="truncated IS weight cap for the rollout/trainer logprob mismatch; null disables"
    )
    kl_coef: float = Field(0.0, ge=0, description="KL(policy || reference) loss coefficient; 0 skips the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator")
    entropy_coef: float = Field(0.0, description="entropy bonus coefficient")
    dynamic_sampling: bool = Field(False, description="drop groups whose rewards all agree (zero std)")
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


class GRPOConfig(TrainerSections):
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(tiny=TinyModelConfig(hidden_size=256, num_layers=4, intermediate_size=768))
    )
    data: DataConfig = Field(default_factory=DataConfig)
    # generation and training alternate, so each may use both cores of a small machine
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_new_tokens=16, num_cpus_per_engine=2))
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    # the verifier: the right equation, the asked form (column 'equation' of the demo task and the example
    # data); the right number in any form is only logged (weight 0)
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(functions=[
            RewardFunctionConfig(name="exact_match", label="accuracy", kwargs={"column": "equation"}),
            RewardFunctionConfig(name="accuracy", label="any_form_accuracy", weight=0.0),
        ])
    )
    grpo: GRPOAlgoConfig = Field(default_factory=lambda: GRPOAlgoConfig(eval_every=10))
    agent: AgentConfig = Field(default_factory=AgentConfig, description="multi-turn rollouts with tools")
    demo: DemoConfig = Field(default_factory=DemoConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")

    @model_validator(mode="after")
    def _batches(self) -> GRPOConfig:
        g = self.grpo
        if g.async_steps and self.agent.template:
            raise ValueError(f"grpo.async_steps={g.async_steps} pipelines single-turn generation, but "
                             f"agent.template={self.agent.template!r} runs multi-turn episodes on-policy: set "
                             "grpo.async_steps=0 or drop agent.template")
        rollout_batch = g.prompt_batch_size * g.samples_per_prompt
        train = g.train_batch_size or rollout_batch
        if rollout_batch % train:
            raise ValueError(
                f"grpo.train_batch_size ({train}) must divide the rollout batch grpo.prompt_batch_size x "
                f"grpo.samples_per_prompt = {g.prompt_batch_size} x {g.samples_per_prompt} = {rollout_batch}; "
                f"pick a divisor of {rollout_batch}, e.g. {_nearest_divisor(rollout_batch, train)}"
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


class SFTAlgoConfig(Section):
    num_steps: int | None = Field(None, gt=0, description="optimizer steps; null: epochs over the data")
    epochs: int = Field(1, gt=0, description="passes over the data when num_steps is null")
    batch_size: int = Field(16, gt=0, description="sequences per optimizer step (all ranks)")
    max_length: int = Field(512, gt=0, description="prompt + response tokens; longer rows are truncated")
    loss_scale: str = Field(
        "default", description="which tokens train (raylhf/data/loss_scale.py): default = every assistant reply, "
        "last_round = only the last reply, all = every token; a message's \"loss\": true/false overrides its turn"
    )
    train_on_prompt: bool = Field(False, description="also train on prompt tokens: the same as loss_scale=all")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="hold out this share of the training rows for eval/loss when data.eval_files "
        "is empty (a seeded draw with data.seed)"
    )
    eval_every: int = Field(0, ge=0, description="log eval/loss every N steps; 0: only at the start and the end")
    eval_batch_size: int = Field(64, gt=0, description="held-out sequences per eval call (all ranks)")
    loss: str = Field("default", description="token loss: default = the weighted cross-entropy, or a loss "
                      "registered by a plugin file (@register_loss_func / loss_mapping)")
    metrics: list[str] = Field(default_factory=list, description="eval metrics on the held-out rows: acc (token "
                               "accuracy), nlg (BLEU/ROUGE of generated replies), or a plugin file's METRIC_MAPPING")

    @field_validator("loss_scale")
    @classmethod
    def _known_loss_scale(cls, v: str) -> str:
        check_registered("raylhf.data.loss_scale:LOSS_SCALES", v)
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        check_registered("raylhf.algos.text_metrics:METRICS", v)
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v == "default":  # the built-in: no torch import while validating
            return v
        from raylhf.algos.sft_losses import get_loss_func

        get_loss_func(v)  # a miss lists the registered losses; a wrong signature names the expected one
        return v


class SFTConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-3, micro_batch_size=16))
    sft: SFTAlgoConfig = Field(default_factory=SFTAlgoConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")

    @model_validator(mode="after")
    def _batches(self) -> SFTConfig:
        if self.sft.batch_size % self.policy.num_workers:
            raise ValueError(
                f"sft.batch_size ({self.sft.batch_size}) must be divisible by policy.num_workers "
                f"({self.policy.num_workers})"
            )
        if self.sft.eval_fraction and self.data.eval_files:
            raise ValueError("sft.eval_fraction holds out training rows, but data.eval_files already gives the "
                             "held-out set: set one of them (sft.eval_fraction=0 to use data.eval_files)")
        if self.sft.train_on_prompt and self.sft.loss_scale not in ("default", "all"):
            raise ValueError(f"sft.train_on_prompt=true means sft.loss_scale=all, but sft.loss_scale is "
                             f"{self.sft.loss_scale!r}: drop train_on_prompt")
        return self


def _nearest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


class SampleAlgoConfig(Section):
    num_samples: int = Field(8, gt=0, description="completions per prompt (N of best-of-N)")
    prompt_batch_size: int = Field(32, gt=0, description="prompts per generate/score round (one write each)")
    output_dir: str = Field(
        "samples", description="writes samples.jsonl (every completion and its scores) and pairs.jsonl "
        "(chosen/rejected per prompt); rerunning with the same dir skips prompts already written"
    )
    min_margin: float = Field(
        0.0, ge=0, description="a pair needs best - worst reward > min_margin; ties (and smaller gaps) are skipped"
    )
    max_prompts: int | None = Field(None, gt=0, description="sample only the first N prompts")


class SampleConfig(PluginSections):
    """`raylhf sample`: best-of-N sampling on the rollout actors, scored on the reward actors (swift sample)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_new_tokens=64))
    reward: RewardConfig = Field(default_factory=RewardConfig)
    sample: SampleAlgoConfig = Field(default_factory=SampleAlgoConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")


from raylhf.config.dpo import DPOConfig, KTOConfig  # noqa: E402  (here: it imports DemoConfig from this module)


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


def _demo_model() -> ModelConfig:
    # the GRPO demo's model: the default runs share its cached SFT warm-up
    return ModelConfig(tiny=TinyModelConfig(hidden_size=256, num_layers=4, intermediate_size=768))


class PPOConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=_demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=5e-5, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    critic: CriticConfig = Field(default_factory=lambda: CriticConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=1))
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_new_tokens=16, num_cpus_per_engine=2))
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(functions=[
            RewardFunctionConfig(name="exact_match", label="accuracy", kwargs={"column": "equation"}),
            RewardFunctionConfig(name="accuracy", label="any_form_accuracy", weight=0.0),
        ])
    )
    ppo: PPOAlgoConfig = Field(default_factory=lambda: PPOAlgoConfig(eval_every=10))
    demo: DemoConfig = Field(default_factory=DemoConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")

    @model_validator(mode="after")
    def _batches(self) -> PPOConfig:
        p = self.ppo
        rollout_batch = p.prompt_batch_size * p.samples_per_prompt
        train = p.train_batch_size or rollout_batch
        if rollout_batch % train:
            raise ValueError(f"ppo.train_batch_size ({train}) must divide the rollout batch ppo.prompt_batch_size x "
                             f"ppo.samples_per_prompt = {rollout_batch}; e.g. {_nearest_divisor(rollout_batch, train)}")
        for name, workers in (("policy", self.policy.num_workers), ("critic", self.critic.num_workers)):
            if train % workers:
                raise ValueError(f"ppo.train_batch_size ({train}) must be divisible by {name}.num_workers ({workers})")
        if p.samples_per_prompt < 2 and p.advantage in ("grpo", "rloo"):
            raise ValueError(f"ppo.advantage={p.advantage} compares samples within a group: set "
                             "ppo.samples_per_prompt >= 2 (or use ppo.advantage=gae)")
        return self


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
    model: ModelConfig = Field(default_factory=_demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=5e-6, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_new_tokens=16, num_cpus_per_engine=2))
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(functions=[
            RewardFunctionConfig(name="exact_match", label="accuracy", kwargs={"column": "equation"}),
            RewardFunctionConfig(name="accuracy", label="any_form_accuracy", weight=0.0),
        ])
    )
    online_dpo: OnlineDPOAlgoConfig = Field(default_factory=lambda: OnlineDPOAlgoConfig(eval_every=10))
    demo: DemoConfig = Field(default_factory=DemoConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")


CONFIGS: dict[str, type[Section]] = {"grpo": GRPOConfig, "ppo": PPOConfig, "online_dpo": OnlineDPOConfig, "sft": SFTConfig, "sample": SampleConfig, "rm": RMConfig, "gkd": GKDConfig,
                                     "dpo": DPOConfig, "kto": KTOConfig}


def config_class(prefix: str) -> type[Section] | None:
    """The config class for an example file named ``<prefix>_*.yaml`` (``serve``: the reward server)."""
    if prefix == "serve":
        return ServeRewardConfig
    return CONFIGS.get(prefix)
