"""`python -m raylhf.sft`: supervised fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence

from raylhf.config import SFTConfig, cli_entry


def main(argv: Sequence[str] | None = None) -> int:
    cfg = cli_entry(SFTConfig, argv, "raylhf.sft")
    if cfg is None:
        return 0
    print("config validated; the SFT driver is not implemented yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
