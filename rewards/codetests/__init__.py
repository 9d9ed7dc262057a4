"""The ``code_tests`` reward: a completion's code run against its row's tests in the sandbox (``rewards/sandbox``),
compared outside the candidate's process. See docs/sandbox.md."""

from rewards.codetests.reward import CodeTests

__all__ = ["CodeTests"]
