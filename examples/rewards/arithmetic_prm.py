"""A rule-based process reward for the arithmetic demo task, in ms-swift's PRM shape.

Serve it over HTTP and train against it (examples/configs/grpo_remote_prm.yaml):

    RAYLHF_REWARD_TOKEN=secret raylhf serve-reward --config examples/configs/serve_arithmetic_prm.yaml
    RAYLHF_REWARD_TOKEN=secret python -m raylhf.grpo --config examples/configs/grpo_remote_prm.yaml

Steps are the completion's lines. A step scores 1.0 when it is the bare correct number (what the prompt
asks for), 0.5 when it contains the correct number among other text, else 0.0; with aggregate "last" the
reward is the score of the final step.
"""

from __future__ import annotations

import re
from typing import Any

from rewards import PRM

_NUMBER = re.compile(r"-?\d+")


class ArithmeticPRM(PRM):
    def __init__(self, partial_credit: float = 0.5) -> None:
        self.partial_credit = partial_credit

    def __call__(self, infer_requests: list[Any], solution: list[Any] | None = None,
                 **kwargs: Any) -> list[list[float] | None]:
        if solution is None:
            raise ValueError("ArithmeticPRM needs the 'solution' column")
        out: list[list[float] | None] = []
        for req, sol in zip(infer_requests, solution, strict=True):
            steps = [s.strip() for s in req.messages[-1]["content"].split("\n") if s.strip()]
            if not steps or sol is None:
                out.append([0.0] if not steps else None)
                continue
            out.append([self._step(step, str(sol).strip()) for step in steps])
        return out

    def _step(self, step: str, sol: str) -> float:
        if step == sol:
            return 1.0
        return self.partial_credit if sol in _NUMBER.findall(step) else 0.0


prms = {"arithmetic_prm": ArithmeticPRM}
