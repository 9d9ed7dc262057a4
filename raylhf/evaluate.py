"""`raylhf eval <trainer> [config args]` (= `python -m raylhf.evaluate`): the held-out metrics of a checkpoint
(``--model.path``) as the trainer computes them during training: the same rows, split, seed and code (each
trainer's ``evaluate``, named in ``raylhf/cli.py``'s command table). Without data files, the trainer's embedded
demo rows. Prints one ``name=value`` line per metric and a JSON line; ``--output FILE`` also writes the JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from raylhf.cli import COMMANDS, _target
from raylhf.config import cli_entry
from raylhf.core.errors import RunError

# the demos' rows (train, held out): string imports, loaded only for a run without data files (keeps --help light)
DEMO_ROWS = {"rm": "raylhf.demo.offline:rm_rows",  # demo rows: loaded only without data files
             "sft": "raylhf.demo.offline:sft_rows"}  # demo rows: loaded only without data files
ENCODER_DEMO_ROWS = "raylhf.demo.encoders:demo_rows"  # demo rows: loaded only without data files


def usage() -> str:
    names = ", ".join(n for n, c in COMMANDS.items() if c.evaluate)
    return ("usage: raylhf eval <trainer> --model.path CHECKPOINT [--config FILE ...] [--section.field VALUE ...] "
            f"[--output FILE]\n\ntrainers: {names}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    name = args[0].replace("-", "_")
    cmd = COMMANDS.get(name)
    if cmd is None or cmd.evaluate is None or cmd.config is None:
        print(f"raylhf eval: no held-out evaluation for {args[0]!r}\n\n{usage()}", file=sys.stderr, end="")
        return 2
    rest, output = args[1:], None
    if "--output" in rest:
        i = rest.index("--output")
        if i + 1 >= len(rest):
            print("raylhf eval: --output needs a file", file=sys.stderr)
            return 2
        output, rest = rest[i + 1], rest[:i] + rest[i + 2:]
    cfg = cli_entry(cmd.config, rest, f"raylhf eval {name}")
    if cfg is None:
        return 0
    if not cfg.model.path:
        print(f"raylhf eval {name}: error: give the checkpoint to evaluate: --model.path DIR", file=sys.stderr)
        return 2
    try:
        rows = _target(DEMO_ROWS.get(name, ENCODER_DEMO_ROWS))
        train, heldout = rows(name, cfg) if not cfg.data.train_files else (None, None)
        metrics = _target(cmd.evaluate)(cfg, train, heldout)
    except RunError as e:
        print(f"raylhf eval {name}: error: {e.cli_message()}", file=sys.stderr)
        return 2
    for k, v in metrics.items():
        print(f"{k}={v:.6g}", flush=True)
    line = json.dumps({"trainer": name, "model": cfg.model.path, **metrics})
    print(line, flush=True)
    if output:
        Path(output).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
