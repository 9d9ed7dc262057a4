"""Run one solution against one plan: the candidate's sandbox (calls or stdio, through the trusted harness), then
the checks outside the candidate's process (here on plain data, or in a judge sandbox that runs only the test's
own code). Every test ends with one status: pass, wrong, error, timeout, memory, output_limit, killed, missing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.codetests.compare import json_value_matches, stdout_matches, values_equal
from rewards.codetests.plan import Check, Plan
from rewards.sandbox.harness import decode, encode
from rewards.sandbox.pool import SandboxPool
from rewards.sandbox.spec import RunResult

TEST_STATUSES = ("pass", "wrong", "error", "timeout", "memory", "output_limit", "killed", "missing")
HARNESS_SOURCE = (Path(__file__).resolve().parents[1] / "sandbox" / "harness.py").read_text()
HARNESS, SPEC = "/sandbox/harness.py", "/sandbox/spec.json"


@dataclass
class Outcome:
    statuses: list[str]  # one per test
    runs: list[RunResult]

    @property
    def passed(self) -> int:
        return self.statuses.count("pass")


def _harness_run(pool: SandboxPool, mode: str, spec: dict[str, Any], files: dict[str, str], n: int,
                 per_test_s: float) -> tuple[list[dict[str, Any] | None], RunResult]:
    """Run the harness in ``mode``; the per-test reports (None where a test reported nothing) and the run."""
    sandbox = dataclasses.replace(pool.spec, timeout_s=n * (per_test_s + 0.5) + 2.0,
                                  cpu_s=per_test_s + 1.0)
    command = [sandbox.interpreter()[0], "-B", "-I", HARNESS, mode, "{side_fd}", SPEC]
    res = pool.run(files, command, spec=sandbox, side_channel=True,
                   readonly={HARNESS: HARNESS_SOURCE, SPEC: json.dumps(spec)})
    reports: list[dict[str, Any] | None] = [None] * n
    for line in res.side.splitlines():
        try:
            item = json.loads(line)
            reports[int(item["test"])] = item
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # a forged or broken line: the test stays unreported
    return reports, res


def _missing(res: RunResult) -> str:
    return res.status if res.status in ("timeout", "memory", "output_limit") else "missing"


def run_solution(code: str, plan: Plan, pool: SandboxPool, *, per_test_s: float,
                 float_tol: float | None = None) -> Outcome:
    cap = pool.spec.max_output_kb << 10
    if plan.kind == "stdio":
        spec = {"inputs": plan.inputs, "timeout_s": per_test_s, "cap": cap}
        reports, res = _harness_run(pool, "stdio", spec, {"main.py": code}, len(plan.inputs), per_test_s)
        statuses = []
        for rep, expected in zip(reports, plan.outputs, strict=True):
            if rep is None:
                statuses.append(_missing(res))
            elif rep.get("status") != "ok":
                statuses.append(str(rep.get("status")) if rep.get("status") in TEST_STATUSES else "error")
            else:
                statuses.append("pass" if stdout_matches(str(rep.get("stdout", "")), expected, float_tol)
                                else "wrong")
        return Outcome(statuses, [res])
    spec = {"setup": plan.setup, "code": code, "calls": plan.calls, "entry_point": plan.entry_point,
            "args": plan.args, "timeout_s": per_test_s, "cap": cap}
    reports, res = _harness_run(pool, "calls", spec, {}, len(plan.calls), per_test_s)
    values: list[tuple[str, Any]] = []
    for rep in reports:
        if rep is None:
            values.append((_missing(res), None))
        elif rep.get("status") == "ok":
            try:
                values.append(("ok", decode(rep["value"])))
            except Exception:
                values.append(("error", None))
        else:
            status = rep.get("status")
            values.append((status if status in TEST_STATUSES else "error", None))
    if plan.args is not None:  # fn_name rows: value against the expected JSON value
        statuses = [s if s != "ok" else ("pass" if json_value_matches(v, e, float_tol) else "wrong")
                    for (s, v), e in zip(values, plan.outputs, strict=True)]
        return Outcome(statuses, [res])
    return _judge(plan, values, pool, per_test_s, float_tol, res)


def _judge(plan: Plan, values: list[tuple[str, Any]], pool: SandboxPool, per_test_s: float,
           float_tol: float | None, res: RunResult) -> Outcome:
    statuses: list[str | None] = []
    slow: list[tuple[int, Check, list[Any]]] = []
    start = 0
    for i, check in enumerate(plan.checks):
        mine = values[start:start + len(check.calls)]
        start += len(check.calls)
        bad = next((s for s, _ in mine if s != "ok"), None)
        if bad is not None:
            statuses.append(bad)
        elif check.fast is not None:
            kind, literal = check.fast
            value = mine[0][1]
            ok = (values_equal(value, literal, float_tol) if kind == "eq"
                  else bool(value) if kind == "truthy" else not value)
            statuses.append("pass" if ok else "wrong")
        else:
            statuses.append(None)
            slow.append((i, check, [v for _, v in mine]))
    runs = [res]
    if slow:
        spec = {"setup": plan.setup, "checks": [{"expr": c.expr, "values": [encode(v) for v in vals]}
                                                for _, c, vals in slow]}
        reports, judge_res = _harness_run(pool, "judge", spec, {}, len(slow), per_test_s)
        runs.append(judge_res)
        for (i, _, _), rep in zip(slow, reports, strict=True):
            done = rep is not None and rep.get("status") == "ok"
            statuses[i] = ("pass" if done and rep.get("passed") is True else "wrong" if done else "error")
    return Outcome([s or "error" for s in statuses], runs)

