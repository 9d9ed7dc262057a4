"""raylhf: Ray-orchestrated post-training for language models. See docs/architecture.md."""

__version__ = "0.1.0"
