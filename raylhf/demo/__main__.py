"""`python -m raylhf.demo`: the embedded demo, the same as `python -m raylhf.grpo` with no data files
(SFT warm-up on the arithmetic task, then GRPO; held-out accuracy before and after)."""

from __future__ import annotations

from raylhf.cli import run_command

if __name__ == "__main__":
    raise SystemExit(run_command("grpo"))
