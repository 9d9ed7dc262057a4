"""Typed, layered configuration (pydantic)."""

from raylhf.config.loader import ConfigError, build_config, cli_entry, load_config, to_yaml
from raylhf.config.schema import CONFIGS, GRPOConfig, SampleConfig, SFTConfig

__all__ = ["CONFIGS", "ConfigError", "GRPOConfig", "SFTConfig", "SampleConfig", "build_config", "cli_entry", "load_config", "to_yaml"]
