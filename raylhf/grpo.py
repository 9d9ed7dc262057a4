"""`python -m raylhf.grpo`: GRPO-family RL. With no arguments it runs the embedded demo."""

from __future__ import annotations

from collections.abc import Sequence

from raylhf.config import GRPOConfig, cli_entry


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(GRPOConfig, argv, "raylhf.grpo")
    if cfg is None:
        return 0
    print("config validated; the GRPO driver is not implemented yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
