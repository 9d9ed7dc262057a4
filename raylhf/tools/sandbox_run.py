"""`raylhf sandbox-run FILE`: run one program in the sandbox the code_tests reward and the python tool use, and
print one JSON line ``{"status", "exit_code", "stdout", "stderr", "wall_s"}``. Exit 0 whatever the program did;
2 when the sandbox itself cannot run here (bubblewrap missing, namespaces refused) or the arguments are wrong.
See docs/sandbox.md."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from raylhf.config.sandbox import SandboxConfig
from rewards.sandbox import SandboxSpec, SandboxUnavailable, run_program, warn_unisolated

PROG = "raylhf sandbox-run"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the program (its name in the sandbox's /work is main.py / main.sh)")
    p.add_argument("--stdin", metavar="FILE", help="file fed to the program's standard input")
    p.add_argument("--language", default="python", choices=["python", "bash", "sh"])
    p.add_argument("--config", metavar="YAML", help="a config file whose sandbox: section sets the limits")
    p.add_argument("--timeout-s", type=float, help="wall-clock limit (seconds)")
    p.add_argument("--memory-mb", type=int, help="address-space limit (MiB)")
    p.add_argument("--max-processes", type=int, help="process limit")
    p.add_argument("--max-output-kb", type=int, help="stdout + stderr kept; more kills the program")
    p.add_argument("--isolation", choices=["bwrap", "none"], help="none: NOT isolated (a warning is printed)")
    return p


def _section(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return SandboxConfig.model_validate(raw.get("sandbox") or {}).model_dump()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        program = Path(args.file).read_bytes()
        stdin = Path(args.stdin).read_bytes() if args.stdin else b""
        spec = SandboxSpec.from_config(_section(args.config), timeout_s=args.timeout_s, memory_mb=args.memory_mb,
                                       max_processes=args.max_processes, max_output_kb=args.max_output_kb,
                                       isolation=args.isolation)
        warn_unisolated(spec, PROG)
        main_name = "main.py" if args.language == "python" else "main.sh"
        result = run_program({main_name: program}, language=args.language, main=main_name, stdin=stdin, spec=spec)
    except (OSError, ValueError, SandboxUnavailable) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()), flush=True)
    return 0
