"""Typed, layered configuration (pydantic): the shared sections (``sections.py``, ``run.py``) declared once, one
file per trainer's tree, the ``demo`` section, the YAML / CLI loader. See docs/architecture.md."""

from raylhf.config.demo import DemoConfig
from raylhf.config.dpo import DPOConfig, KTOConfig
from raylhf.config.encoders import EmbeddingConfig, GenerativeRerankerConfig, RerankerConfig, SeqClsConfig
from raylhf.config.gkd import GKDConfig
from raylhf.config.grpo import GRPOAlgoConfig, GRPOConfig
from raylhf.config.loader import ConfigError, build_config, cli_entry, load_config, to_yaml
from raylhf.config.online_dpo import OnlineDPOConfig
from raylhf.config.ppo import PPOConfig
from raylhf.config.rm import RMConfig
from raylhf.config.sample import SampleConfig
from raylhf.config.sections import Section
from raylhf.config.serve_reward import ServeRewardConfig
from raylhf.config.sft import SFTAlgoConfig, SFTConfig

# a trainer or verb -> its config tree (the prefix of the example configs' file names, examples/configs/<name>_*.yaml)
CONFIGS: dict[str, type[Section]] = {"grpo": GRPOConfig, "ppo": PPOConfig, "online_dpo": OnlineDPOConfig,
                                     "sft": SFTConfig, "sample": SampleConfig, "rm": RMConfig, "gkd": GKDConfig,
                                     "dpo": DPOConfig, "kto": KTOConfig, "seq_cls": SeqClsConfig,
                                     "embedding": EmbeddingConfig, "reranker": RerankerConfig,
                                     "generative_reranker": GenerativeRerankerConfig}


def config_class(prefix: str) -> type[Section] | None:
    """The config class for an example file named ``<prefix>_*.yaml`` (``serve``: the reward server); a file stem
    is matched by its longest trainer prefix (``seq_cls_topics`` -> seq_cls)."""
    if prefix == "serve" or prefix.startswith("serve_"):
        return ServeRewardConfig
    if prefix in CONFIGS:
        return CONFIGS[prefix]
    return next((CONFIGS[k] for k in sorted(CONFIGS, key=len, reverse=True) if prefix.startswith(k + "_")), None)


__all__ = ["CONFIGS", "ConfigError", "DPOConfig", "DemoConfig", "GKDConfig", "GRPOAlgoConfig", "GRPOConfig", "KTOConfig",
           "OnlineDPOConfig", "PPOConfig", "RMConfig", "SFTAlgoConfig", "SFTConfig", "SampleConfig",
           "ServeRewardConfig", "build_config", "cli_entry", "config_class", "load_config", "to_yaml"]
