"""`python -m raylhf.seq_cls` (= `raylhf seq_cls`): an entry shim; the work is in raylhf/trainers/seq_cls.py.

The arguments are parsed before anything heavy is imported (``raylhf/cli.py``, its command table).
"""

from __future__ import annotations

from collections.abc import Sequence

from raylhf.cli import run_command


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("seq_cls", argv)


if __name__ == "__main__":
    raise SystemExit(main())
