"""The config tree of ``raylhf sample`` (best-of-N sampling)."""

from __future__ import annotations

from pydantic import Field

from raylhf.config.demo import DemoConfig
from raylhf.config.run import PluginSections, RayConfig
from raylhf.config.sandbox import SandboxConfig
from raylhf.config.sections import (
    DataConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    Section,
)


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
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="how model-written code runs "
                                   "(the code_tests reward, the python tool)")
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")
