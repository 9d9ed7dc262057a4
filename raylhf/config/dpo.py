"""Config trees of the preference trainers: ``python -m raylhf.dpo`` (DPO family) and ``python -m raylhf.kto``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.demo import DemoConfig, demo_model
from raylhf.config.run import TrainerSections
from raylhf.config.sections import (
    DataConfig,
    ModelConfig,
    PolicyConfig,
    ReferenceConfig,
    Section,
)

DPOLossType = Literal["sigmoid", "ipo", "hinge", "cdpo", "simpo", "orpo", "cpo"]
REFERENCE_FREE = ("simpo", "orpo", "cpo")
SMOOTHED = ("cdpo", "simpo", "cpo")  # loss types that take dpo.label_smoothing



def offline_reference(reference: ReferenceConfig, trainer: str) -> None:
    """The offline trainers run their reference in a pass of its own before training (raylhf/driver/reference_loop.py)."""
    if reference.placement != "own":
        raise ValueError(f"reference.placement={reference.placement} is for the online trainers (grpo, ppo, "
                         f"online_dpo); {trainer} computes its reference log-probs in a pass of its own before "
                         "training, while the policy waits: set reference.placement=own")

class _OfflineAlgo(Section):
    num_steps: int | None = Field(None, gt=0, description="optimizer steps; null: epochs over the data")
    epochs: int = Field(1, gt=0, description="passes over the data when num_steps is null")
    max_length: int = Field(512, gt=0, description="prompt + reply tokens; longer replies are cut at the tail")
    precompute_ref: bool = Field(
        False, description="compute the reference log-probs of the whole dataset once before training (cached "
        "on disk under ref_cache_dir), then stop the reference model; false: once per batch")
    ref_cache_dir: str | None = Field(
        None, description="where precompute_ref caches reference log-probs (keyed by model files and tokens); "
        "null: ~/.cache/raylhf/ref_logps ($RAYLHF_CACHE)")
    eval_every: int = Field(0, ge=0, description="held-out metrics every N steps; 0: only at the start and the end")


class DPOAlgoConfig(_OfflineAlgo):
    loss_type: DPOLossType = Field(
        "sigmoid", description="sigmoid (DPO), ipo, hinge (SLiC), cdpo (conservative DPO: label_smoothing), "
        "simpo, orpo, cpo; simpo/orpo/cpo use no reference model")
    beta: float | None = Field(
        None, gt=0, description="the loss's temperature / weight (IPO's tau, ORPO's lambda); null: 2.0 for simpo, "
        "0.1 otherwise")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed share of flipped labels (cdpo needs > 0; also simpo and cpo)")
    simpo_gamma: float = Field(1.0, ge=0, description="simpo: target reward margin gamma")
    cpo_alpha: float = Field(1.0, ge=0, description="cpo: weight of the NLL term on the chosen reply")
    rpo_alpha: float | None = Field(
        None, gt=0, description="add rpo_alpha x the chosen replies' token-mean NLL (RPO, an SFT term); null: none")
    batch_size: int = Field(16, gt=0, description="pairs per optimizer step (all ranks)")

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else (2.0 if self.loss_type == "simpo" else 0.1)

    @model_validator(mode="after")
    def _loss_rules(self) -> DPOAlgoConfig:
        if self.loss_type == "cdpo" and not self.label_smoothing:
            raise ValueError("dpo.loss_type=cdpo (conservative DPO) needs dpo.label_smoothing > 0, e.g. 0.1")
        if self.label_smoothing and self.loss_type not in SMOOTHED:
            raise ValueError(f"dpo.label_smoothing applies to loss types {', '.join(SMOOTHED)}, not "
                             f"{self.loss_type!r}; for smoothed DPO use dpo.loss_type=cdpo")
        if self.precompute_ref and self.loss_type in REFERENCE_FREE:
            raise ValueError(f"dpo.precompute_ref: dpo.loss_type={self.loss_type} uses no reference model; drop "
                             "precompute_ref")
        return self


class DPOConfig(TrainerSections):
    """`python -m raylhf.dpo`: offline preference optimization on chosen / rejected pairs."""

    model: ModelConfig = Field(default_factory=demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    # the policy and the reference take turns, so each may use both cores of a small machine
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    reference: ReferenceConfig = Field(default_factory=lambda: ReferenceConfig(num_cpus=2, micro_batch_size=32))
    dpo: DPOAlgoConfig = Field(default_factory=DPOAlgoConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    @model_validator(mode="after")
    def _batches(self) -> DPOConfig:
        offline_reference(self.reference, "dpo")
        if self.dpo.batch_size % self.policy.num_workers:
            raise ValueError(f"dpo.batch_size ({self.dpo.batch_size} pairs) must be divisible by policy.num_workers "
                             f"({self.policy.num_workers}): each rank takes whole pairs")
        return self


class KTOAlgoConfig(_OfflineAlgo):
    beta: float = Field(0.1, gt=0, description="KTO's beta (scale of the log-ratio rewards)")
    desirable_weight: float = Field(1.0, gt=0, description="weight of desirable examples (lambda_D)")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of undesirable examples (lambda_U)")
    batch_size: int = Field(16, gt=0, description="examples per optimizer step (all ranks); the reference point "
                            "is estimated over the step's examples, so keep it >= 8")


class KTOConfig(TrainerSections):
    """`python -m raylhf.kto`: KTO on unpaired replies labelled desirable / undesirable."""

    model: ModelConfig = Field(default_factory=demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    # the policy and the reference take turns, so each may use both cores of a small machine
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(lr=1e-4, micro_batch_size=32,
                                                                      num_cpus_per_worker=2))
    reference: ReferenceConfig = Field(default_factory=lambda: ReferenceConfig(num_cpus=2, micro_batch_size=32))
    kto: KTOAlgoConfig = Field(default_factory=KTOAlgoConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    @model_validator(mode="after")
    def _batches(self) -> KTOConfig:
        offline_reference(self.reference, "kto")
        if self.kto.batch_size % self.policy.num_workers:
            raise ValueError(f"kto.batch_size ({self.kto.batch_size}) must be divisible by policy.num_workers "
                             f"({self.policy.num_workers})")
        if self.data.format not in ("auto", "preference", "prompt"):
            raise ValueError(f"data.format={self.data.format!r} cannot hold KTO data: use auto, prompt (prompt + "
                             "completion + label rows) or preference (chosen / rejected pairs, unpaired)")
        return self
