"""Config of `python -m raylhf.gkd`: generalized knowledge distillation (on-policy distillation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.run import TrainerSections
from raylhf.config.sections import DataConfig, ModelConfig, PolicyConfig, RolloutConfig, Section


class TeacherConfig(Section):
    """The frozen teacher: forward passes only, like the reference model."""

    path: str | None = Field(
        None, description="HF causal LM directory or hub id of the teacher (same tokenizer as the student); null: "
        "the embedded default's teacher (the GRPO demo's SFT warm-up policy), which needs no data files")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype")
    num_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved for the teacher")
    num_gpus: float | None = Field(None, ge=0, description="Ray GPUs for the teacher; null: 1 if GPUs exist")
    micro_batch_size: int = Field(32, gt=0, description="sequences per forward")


class GKDAlgoConfig(Section):
    num_steps: int = Field(60, gt=0, description="optimizer steps (one batch of prompts each)")
    batch_size: int = Field(32, gt=0, description="prompts (sequences) per optimizer step (all ranks)")
    lmbda: float = Field(
        0.5, ge=0, le=1, description="GKD's lambda: each step's sequences are the student's own samples from the "
        "rollout engines with this probability, else the dataset responses")
    beta: float = Field(
        0.5, ge=0, le=1, description="generalized JSD interpolation: 0 = forward KL(teacher || student), 1 = reverse "
        "KL(student || teacher), in between JSD_beta (raylhf/algos/token_losses.py)")
    temperature: float = Field(
        1.0, gt=0, description="softmax temperature of both distributions in the loss, and of the student's samples")
    teacher_top_k: int = Field(
        32, ge=0, description="teacher distributions travel as the top-k log-probs per token plus the rest of the "
        "mass spread evenly over the other tokens (8k + 4 bytes per token); 0: the full distribution "
        "(4 x vocab bytes per token)")
    max_length: int = Field(256, gt=0, description="prompt + response tokens of a dataset sequence; longer ones are cut")
    eval_every: int = Field(10, ge=0, description="held-out KL to the teacher every N steps; 0: at the start and end")
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="with train files but no data.eval_files: share of the rows held out for the "
        "KL (0: no evaluation)")


class GKDDemoConfig(Section):
    """The embedded run used when ``data.train_files`` is empty: arithmetic prompts and demonstrations
    (raylhf/demo/tasks/demo_data.py), the GRPO demo's SFT warm-up policy as the teacher, a smaller random student."""

    num_train: int = Field(2000, gt=0, description="training prompts with demonstrations")
    num_heldout: int = Field(100, gt=0, description="held-out prompts with demonstrations (the KL is measured there)")
    cache_dir: str | None = Field(None, description="where the teacher (warm-up policy) is cached; null: ~/.cache/raylhf")


class GKDConfig(TrainerSections):
    model: ModelConfig = Field(default_factory=ModelConfig, description="the student (null path: a tiny random model)")
    data: DataConfig = Field(default_factory=lambda: DataConfig(format="auto"))
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-3, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_new_tokens=16, num_cpus_per_engine=1))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    gkd: GKDAlgoConfig = Field(default_factory=GKDAlgoConfig)
    demo: GKDDemoConfig = Field(default_factory=GKDDemoConfig)

    @model_validator(mode="after")
    def _checks(self) -> GKDConfig:
        if self.gkd.batch_size % self.policy.num_workers:
            raise ValueError(f"gkd.batch_size ({self.gkd.batch_size}) must be divisible by policy.num_workers "
                             f"({self.policy.num_workers})")
        return self
