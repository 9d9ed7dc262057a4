"""Config of `python -m raylhf.rm`: reward-model training (Bradley-Terry on preference pairs)."""

from __future__ import annotations

from pydantic import Field, model_validator

from raylhf.config.demo import demo_model
from raylhf.config.run import TrainerSections
from raylhf.config.sections import DataConfig, ModelConfig, PolicyConfig, Section


class RMAlgoConfig(Section):
    num_steps: int | None = Field(None, gt=0, description="optimizer steps; null: epochs over the pairs")
    epochs: int = Field(1, gt=0, description="passes over the pairs when num_steps is null")
    batch_size: int = Field(32, gt=0, description="preference pairs per optimizer step (all ranks)")
    max_length: int = Field(
        512, gt=0, description="tokens of one conversation (prompt + reply); longer ones are cut on the left, as "
        "the reward actor does (the score is read at the last token)")
    margin: float = Field(
        0.0, description="Bradley-Terry margin m: loss -log sigmoid(r_chosen - r_rejected - m) (Llama 2); "
        "added to margin_column's value when both are set")
    margin_column: str | None = Field(
        None, description="data column with a per-pair margin (e.g. a rating gap); null: only rm.margin")
    center_coef: float = Field(
        0.0, ge=0, description="adds center_coef * (r_chosen + r_rejected)^2, keeping rewards centred near 0")
    eval_every: int = Field(0, ge=0, description="held-out pair accuracy every N steps; 0: at the start and end")
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="with train files but no data.eval_files: share of the pairs held out for "
        "the accuracy (0: no evaluation)")


class RMDemoConfig(Section):
    """The embedded run used when ``data.train_files`` is empty: synthetic arithmetic pairs
    (raylhf/demo/tasks/rm_pairs.py), started from the GRPO demo's SFT warm-up policy."""

    num_train: int = Field(4000, gt=0, description="training pairs generated")
    num_heldout: int = Field(400, gt=0, description="held-out pairs (problems never trained on)")
    max_operand: int = Field(50, gt=0, description="operands are drawn from [0, max_operand]")
    warmup: bool = Field(
        True, description="start from the GRPO demo's SFT warm-up policy (cached, trained on first use) when "
        "model.path is null; false: the tiny random model")
    cache_dir: str | None = Field(None, description="where the warm-up policy is cached; null: ~/.cache/raylhf")


class RMConfig(TrainerSections):
    # the GRPO demo's model, so the default run reuses its cached SFT warm-up policy
    model: ModelConfig = Field(
        default_factory=demo_model
    )
    data: DataConfig = Field(default_factory=lambda: DataConfig(format="preference"))
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-4, micro_batch_size=64,
                                                                      num_cpus_per_worker=2))
    rm: RMAlgoConfig = Field(default_factory=RMAlgoConfig)
    demo: RMDemoConfig = Field(default_factory=RMDemoConfig)

    @model_validator(mode="after")
    def _batches(self) -> RMConfig:
        if self.rm.batch_size % self.policy.num_workers:
            raise ValueError(
                f"rm.batch_size ({self.rm.batch_size}) must be divisible by policy.num_workers "
                f"({self.policy.num_workers}): each rank takes whole pairs"
            )
        if self.policy.micro_batch_size < 2:
            raise ValueError(
                f"policy.micro_batch_size ({self.policy.micro_batch_size}) counts sequences and a pair is two: "
                "set it to 2 or more"
            )
        return self
