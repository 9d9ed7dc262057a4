"""The config tree of ``python -m raylhf.sft``."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from raylhf.config.demo import DemoConfig
from raylhf.config.run import TrainerSections
from raylhf.config.sections import (
    DataConfig,
    ModelConfig,
    PolicyConfig,
    Section,
    check_registered,
)
from raylhf.plugins.registry import LOSS_SCALES, METRICS


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
        check_registered(LOSS_SCALES, v)
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        check_registered(METRICS, v)
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v == "default":  # the built-in: no torch import while validating
            return v
        # in-function: sft_losses imports torch, needed only to check a plugin's loss
        from raylhf.algos.sft_losses import get_loss_func

        get_loss_func(v)  # a miss lists the registered losses; a wrong signature names the expected one
        return v


class SFTConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-3, micro_batch_size=16))
    sft: SFTAlgoConfig = Field(default_factory=SFTAlgoConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

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
