"""`python -m raylhf.demo`: the embedded demo, the same as `python -m raylhf.grpo` with no data files
(SFT warm-up on the arithmetic task, then GRPO; held-out accuracy before and after).

The demo depends on the trainers, never the reverse: the task data is raylhf/tasks/demo_data.py and the
default run is ``raylhf.grpo.run_default``.
"""

from __future__ import annotations

from raylhf.grpo import main, run_default, warmup_policy

__all__ = ["main", "run_default", "warmup_policy"]

if __name__ == "__main__":
    raise SystemExit(main())
