"""Typed, layered configuration (pydantic)."""

from raylhf.config.gkd import GKDConfig
from raylhf.config.loader import ConfigError, build_config, cli_entry, load_config, to_yaml
from raylhf.config.rm import RMConfig
from raylhf.config.schema import (
    CONFIGS,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    SampleConfig,
    SFTConfig,
)

__all__ = ["CONFIGS", "ConfigError", "DPOConfig", "GKDConfig", "GRPOConfig", "KTOConfig", "OnlineDPOConfig", "PPOConfig", "RMConfig", "SFTConfig", "SampleConfig", "build_config", "cli_entry", "load_config", "to_yaml"]
