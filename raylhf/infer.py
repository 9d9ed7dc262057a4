"""`python -m raylhf.infer` (= `raylhf infer`): an entry shim; the work is in raylhf/tools/infer.py.

The arguments are parsed before anything heavy is imported (``raylhf/cli.py``, its command table).
"""

from __future__ import annotations

from collections.abc import Sequence

from raylhf.cli import run_command


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("infer", argv)


if __name__ == "__main__":
    raise SystemExit(main())
