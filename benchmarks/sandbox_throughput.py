"""The code sandbox's cost and throughput, measured in one run against the same programs run unsandboxed.

* overhead: a trivial program (``pass``) in the sandbox vs ``python3 -c pass`` as a plain subprocess, one at a
  time; the difference is what bubblewrap + prlimit + the runner's bookkeeping add per run (target < 50 ms);
* throughput: runs/s through a :class:`SandboxPool` for trivial programs, for a 1-second busy loop and for a
  1-second sleep, at the pool's concurrency (``--concurrency``, default the CPU count);
* code_tests: completions/s of the reward on generated tasks (3 tests each, the reference solutions).

Run on an idle machine: ``.venv/bin/python benchmarks/sandbox_throughput.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from raylhf.demo.tasks.code import fenced, make_code_tasks
from rewards.codetests import CodeTests
from rewards.sandbox import SandboxPool, SandboxSpec, run_program

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _rate(pool: SandboxPool, code: str, n: int) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    futures = [pool.submit(pool.run, {"main.py": code}) for _ in range(n)]
    statuses: dict[str, int] = {}
    for f in futures:
        s = f.result().status
        statuses[s] = statuses.get(s, 0) + 1
    return n / (time.perf_counter() - t0), statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="trivial runs per measurement")
    ap.add_argument("--long-runs", type=int, default=8, help="1-second runs per measurement")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    spec = SandboxSpec(concurrency=args.concurrency, timeout_s=10.0)
    print(f"cpus={os.cpu_count()} concurrency={spec.workers} python={spec.python}", flush=True)

    run_program({"main.py": "pass"}, spec=spec)  # probe + warm the page cache
    plain = _timed(lambda: subprocess.run([spec.python, "-B", "-c", "pass"], check=True), args.runs)
    boxed = _timed(lambda: run_program({"main.py": "pass"}, spec=spec), args.runs)
    p50_plain, p50_boxed = statistics.median(plain), statistics.median(boxed)
    print(f"one at a time, trivial program: plain {p50_plain * 1e3:.1f} ms, sandboxed {p50_boxed * 1e3:.1f} ms "
          f"(p50 of {args.runs}); overhead {1e3 * (p50_boxed - p50_plain):.1f} ms per run; sandboxed p95 "
          f"{1e3 * sorted(boxed)[int(0.95 * len(boxed))]:.1f} ms")

    pool = SandboxPool(spec, "benchmark")
    for label, code, n in (("trivial", "pass", args.runs), ("busy 1 s", BUSY, args.long_runs),
                           ("sleep 1 s", "import time\ntime.sleep(1)", args.long_runs)):
        rate, statuses = _rate(pool, code, n)
        print(f"pool x{spec.workers}, {label}: {rate:.2f} runs/s over {n} runs {statuses}", flush=True)

    rows = make_code_tasks(60, seed=7)
    reward = CodeTests()
    cols = {"tests": [r["tests"] for r in rows], "entry_point": [r["entry_point"] for r in rows]}
    t0 = time.perf_counter()
    scores = reward([fenced(r["reference"]) for r in rows], sandbox={"concurrency": spec.workers}, **cols)
    dt = time.perf_counter() - t0
    print(f"code_tests reward: {len(rows) / dt:.1f} completions/s ({len(rows)} completions, 3 tests each, "
          f"mean reward {sum(s or 0 for s in scores) / len(scores):.2f})")
    overhead_ms = 1e3 * (p50_boxed - p50_plain)
    print(f"overhead_ms={overhead_ms:.1f}")


if __name__ == "__main__":
    main()
