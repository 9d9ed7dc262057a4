"""The ``code_tests`` reward: the completion's code block run against the row's tests in the sandbox.

``reward.functions: [{name: code_tests, kwargs: {mode: fraction}}]``; the sandbox's limits come from the run's
``sandbox:`` section. Reward: the fraction of tests passed (``mode: fraction``) or 1.0 only when all pass
(``mode: all``); a completion without a code block scores 0. A row whose tests cannot be checked outside the
solution's process is not scored (None), and counted. Metrics: the share of tests in each status
(``reward/code_tests/timeout_frac``, ...), plus ``no_code_frac`` and ``unsupported_frac`` of completions.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from rewards.base import ORM, register_reward
from rewards.codetests.compare import extract_code
from rewards.codetests.execute import TEST_STATUSES, run_solution
from rewards.codetests.plan import Plan, UnsupportedTests, plan_for_row
from rewards.sandbox.pool import SandboxPool
from rewards.sandbox.spec import SandboxSpec


@register_reward("code_tests")
class CodeTests(ORM):
    """``mode``: fraction | all; ``tests_column`` / ``setup_column`` / ``entry_point_column``: the row's columns;
    ``timeout_s``: each test's limit; ``float_tol``: relative tolerance for numbers in outputs (None: exact);
    ``extract``: last_block | all_blocks | raw; ``sandbox``: overrides of the run's ``sandbox:`` section."""

    def __init__(self, mode: str = "fraction", tests_column: str = "tests", setup_column: str = "test_setup",
                 entry_point_column: str = "entry_point", timeout_s: float = 4.0, float_tol: float | None = None,
                 extract: str = "last_block", sandbox: dict[str, Any] | None = None) -> None:
        if mode not in ("fraction", "all"):
            raise ValueError(f"code_tests: mode {mode!r} must be 'fraction' or 'all'")
        if extract not in ("last_block", "all_blocks", "raw"):
            raise ValueError(f"code_tests: extract {extract!r} must be last_block, all_blocks or raw")
        if timeout_s <= 0:
            raise ValueError(f"code_tests: timeout_s must be positive, got {timeout_s}")
        self.mode, self.extract, self.timeout_s, self.float_tol = mode, extract, float(timeout_s), float_tol
        self.columns = (tests_column, setup_column, entry_point_column)
        self.overrides = dict(sandbox or {})
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._pool: SandboxPool | None = None

    def bind_context(self, context: dict[str, Any]) -> None:
        """At the reward actor's start (and the reward server's): build the pool from the run's ``sandbox:``
        section, so a machine that cannot sandbox stops the run now, with the reason, not at the first score."""
        self.pool(context.get("sandbox"))

    def pool(self, sandbox: dict[str, Any] | None) -> SandboxPool:
        if self._pool is None:
            spec = SandboxSpec.from_config({**(sandbox or {}), **self.overrides})
            self._pool = SandboxPool.shared(spec, "reward code_tests")
        return self._pool

    def __call__(self, completions: list[Any], sandbox: dict[str, Any] | None = None,
                 **columns: Any) -> list[float | None]:
        tests_col, setup_col, entry_col = self.columns
        tests = columns.get(tests_col)
        if tests is None:
            raise ValueError(f"the code_tests reward needs a {tests_col!r} column in the data (assert lines, a "
                             "HumanEval check(candidate) string, or stdin/stdout pairs; map yours with "
                             "data.columns, or set kwargs.tests_column)")
        n = len(completions)
        setups = columns.get(setup_col) or [None] * n
        entries = columns.get(entry_col) or [None] * n
        pool = self.pool(sandbox)
        jobs = [pool.submit(self._score_one, c, t, s, e, pool)
                for c, t, s, e in zip(completions, tests, setups, entries, strict=True)]
        return [job.result() for job in jobs]

    def _score_one(self, completion: Any, tests: Any, setup: Any, entry_point: Any,
                   pool: SandboxPool) -> float | None:
        text = completion[-1].get("content", "") if isinstance(completion, list) else str(completion)
        try:
            plan: Plan = plan_for_row(tests, setup, entry_point)
        except (UnsupportedTests, ValueError):
            self._count({"unsupported": 1}, completions=1)
            return None
        code = extract_code(text, self.extract)
        if code is None:
            self._count({"missing": plan.num_tests}, completions=1, no_code=True)
            return 0.0
        outcome = run_solution(code, plan, pool, per_test_s=self.timeout_s, float_tol=self.float_tol)
        self._count(Counter(outcome.statuses), completions=1)
        total = len(outcome.statuses)
        if not total:
            return None
        frac = outcome.passed / total
        return frac if self.mode == "fraction" else float(frac == 1.0)

    def _count(self, statuses: dict[str, int], completions: int, no_code: bool = False) -> None:
        with self._lock:
            self._counts["completions"] += completions
            if "unsupported" in statuses:
                self._counts["unsupported"] += 1
                return
            self._counts["no_code"] += int(no_code)
            for status, k in statuses.items():
                self._counts[f"test:{status}"] += k

    def metrics(self) -> dict[str, float]:
        """Shares since the last call: of tests by status, of completions without code / with unsupported tests."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts["completions"]:
            return {}
        tests = sum(v for k, v in counts.items() if k.startswith("test:"))
        out = {f"{s}_frac": counts[f"test:{s}"] / tests for s in TEST_STATUSES} if tests else {}
        out["no_code_frac"] = counts["no_code"] / counts["completions"]
        out["unsupported_frac"] = counts["unsupported"] / counts["completions"]
        return out
