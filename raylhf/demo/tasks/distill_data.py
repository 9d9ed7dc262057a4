"""Data of the GKD default run (no data files): the demo's arithmetic prompts with demonstrations.

Training rows are the GRPO demo's SFT warm-up demonstrations (``demo_sft_examples``: mixed styles, some wrong),
which is what the default teacher imitated; held-out rows are the demo's held-out prompts answered with the
right equation. Pure data: imports no trainer.
"""

from __future__ import annotations

from raylhf.config import DemoConfig
from raylhf.data import SFTExample
from raylhf.demo.tasks.demo_data import demo_sft_examples, demo_splits


def distill_splits(num_train: int, num_heldout: int) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train rows, held-out rows); the held-out prompts are never among the training prompts."""
    demo = DemoConfig(sft_examples=num_train, num_heldout=num_heldout)
    _, heldout = demo_splits(demo)
    held = [SFTExample(ex.messages, str(ex.extras["equation"])) for ex in heldout]
    return demo_sft_examples(demo), held
