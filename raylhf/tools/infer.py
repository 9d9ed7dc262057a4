"""`raylhf infer --model DIR --input IN.jsonl --output OUT.jsonl`: batch inference on a checkpoint, JSONL in,
JSONL out (one line per input row, every input column kept, the results added).

* A causal LM (no ``raylhf_task.json`` in DIR): vLLM generates a reply per prompt (``raylhf/tools/infer_lm.py``);
  adds ``completion`` and ``finish_reason`` (with ``--n`` > 1 also ``completions`` and ``finish_reasons``).
* An encoder export of ``raylhf seq_cls|embedding|reranker|generative_reranker`` (its task card): the trainer's
  own encoding and forward (``raylhf/tools/infer_scores.py``); adds ``scores`` + ``predicted_label`` (seq_cls;
  regression: ``score``), ``scores`` per document (rerankers) or ``embedding``.

Resumable: when OUT exists, its rows are checked against the input's first rows (each one's input columns must
be the input row's) and skipped; the rest are appended a chunk (``--batch-size`` rows) at a time, flushed and
fsynced, so a killed run loses at most one chunk (a half-written last line is cut off on the next start).
Exit 0 when done, 2 on wrong arguments, unreadable input or an output that belongs to another input.
See docs/verbs.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raylhf.core.errors import RunError
from raylhf.data import DataError
from raylhf.data.readers import read_source
from raylhf.data.retrieval import TaskCard
from raylhf.data.types import Row

PROG = "raylhf infer"


class Backend(Protocol):
    """What runs the rows: ``added`` (the columns it writes), ``encode`` (one row -> its model input; raises
    :class:`DataError` naming the row), ``ready`` (all pending inputs, before the first chunk) and ``run`` (a
    chunk of ``(input row index, model input)`` -> the added columns per row)."""

    added: tuple[str, ...]

    def encode(self, row: Row) -> Any: ...

    def ready(self, items: Sequence[Any]) -> None: ...

    def run(self, items: Sequence[tuple[int, Any]]) -> list[dict[str, Any]]: ...


@dataclass
class InferResult:
    output: Path
    rows: int  # input rows (after --max-rows)
    skipped: int  # already in the output before this run
    written: int
    seconds: float


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Output columns and examples: docs/verbs.md.")
    p.add_argument("--model", required=True, metavar="DIR", help="an HF checkpoint: a causal LM, or an encoder "
                   "export (seq_cls, embedding, reranker, generative_reranker) with its raylhf_task.json")
    p.add_argument("--input", required=True, metavar="IN", help="rows: .jsonl (also .json / .parquet)")
    p.add_argument("--output", required=True, metavar="OUT", help="JSONL written (appended to when resuming)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="rows per chunk written at once (and sequences per forward for encoders; default 64)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="causal LM: reply limit (256)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="causal LM: 0 is greedy (default), > 0 samples")
    p.add_argument("--n", type=int, default=1, metavar="N", help="causal LM: replies per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="causal LM: sampling seed; each reply's seed comes from it, the row and the reply's index, "
                   "so a resumed run writes what an uninterrupted one would")
    p.add_argument("--column", default=None, metavar="NAME", help="the prompt / text column (default: causal LM "
                   "'prompt', else 'messages'; seq_cls / embedding: the first of messages, text, query, prompt)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip the rows OUT already holds (default); --no-resume starts OUT over")
    p.add_argument("--max-rows", type=int, default=None, metavar="N", help="only the input's first N rows")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_new_tokens", "n"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_rows is not None and args.max_rows < 1:
        raise ValueError(f"--max-rows must be >= 1, got {args.max_rows}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.n > 1 and args.temperature == 0:
        raise ValueError(f"--n {args.n} with --temperature 0 gives {args.n} identical greedy replies; set a "
                         "temperature > 0")
    if not (Path(args.model) / "config.json").is_file():
        raise ValueError(f"--model {args.model}: no config.json there; give a local HF checkpoint directory")
    if not Path(args.input).exists():
        raise ValueError(f"--input {args.input}: file not found")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ValueError("--output must not be the --input file")


def make_backend(args: argparse.Namespace) -> Backend:
    """The causal-LM generator, or the encoder scorer of a checkpoint with a task card."""
    card = TaskCard.load(args.model)
    if card is None:
        # in-function: vLLM and torch load only once the arguments parsed (--help stays light)
        from raylhf.tools import infer_lm

        return infer_lm.Generator(args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  n=args.n, seed=args.seed, column=args.column)
    # in-function: torch and transformers load only once the arguments parsed (--help stays light)
    from raylhf.tools import infer_scores

    return infer_scores.Scorer(args.model, card, batch_size=args.batch_size, column=args.column)


# ---------------------------------------------------------------------------------------------- rows and resume

def row_key(data: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def plain(data: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON gives it back (parquet's numpy values become lists / numbers / strings)."""
    return json.loads(json.dumps(data, ensure_ascii=False, default=str))


def done_rows(path: Path, rows: Sequence[Row], added: Sequence[str]) -> int:
    """How many of ``rows`` ``path`` already holds (0 when it does not exist); each of its lines, less the added
    columns, must be the input row at its position. Cuts off a half-written last line."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        print(f"[infer] {path}: removing a partial last line ({len(data) - end} bytes) left by an interrupted run",
              file=sys.stderr, flush=True)
        with open(path, "r+b") as f:
            f.truncate(end)
    lines = data[:end].decode().splitlines()
    if len(lines) > len(rows):
        raise DataError(f"the output already holds {len(lines)} rows, more than the {len(rows)} input rows: it "
                        "belongs to another input (or a larger --max-rows); use --no-resume or another --output",
                        source=str(path))
    for i, line in enumerate(lines):
        try:
            out = json.loads(line)
        except ValueError as e:
            raise DataError(f"unreadable JSON ({e}); use --no-resume or another --output", source=str(path),
                            row=i + 1, unit="line") from None
        if not isinstance(out, dict) or row_key({k: v for k, v in out.items() if k not in added}) != row_key(
                plain(rows[i].data)):
            raise DataError(f"this output line is not input row {i + 1} ({rows[i].source}): the output belongs to "
                            "another input or an input that changed; use --no-resume to start over or another "
                            "--output", source=str(path), row=i + 1, unit="line")
    return len(lines)


def check_clash(rows: Sequence[Row], added: Sequence[str]) -> None:
    for row in rows:
        clash = sorted(set(row.data) & set(added))
        if clash:
            raise row.error(f"input column(s) {clash} would be overwritten by infer's output; rename them")


class Progress:
    """``rows done / total, rows/s, eta`` on stderr after each chunk (one line rewritten on a terminal)."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.skipped, self.t0 = total, skipped, time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, final: bool = False) -> None:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = (done - self.skipped) / dt
        eta = f", eta {(self.total - done) / rate:.0f}s" if rate > 0 and done < self.total else ""
        line = (f"[infer] {done}/{self.total} rows ({100 * done / max(self.total, 1):.0f}%), {rate:.2f} rows/s"
                f"{eta}")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, backend: Backend | None = None) -> InferResult:
    """Infer every input row not yet in the output; ``backend`` (a test's, or one started before) defaults to the
    checkpoint's."""
    check_args(args)
    t0 = time.monotonic()
    rows = read_source(args.input, args.max_rows)
    backend = backend or make_backend(args)
    out = Path(args.output)
    check_clash(rows, backend.added)
    if out.exists() and not args.resume:
        print(f"[infer] --no-resume: starting {out} over", file=sys.stderr, flush=True)
        out.unlink()
    skipped = done_rows(out, rows, backend.added)
    if skipped:
        print(f"[infer] resuming: {skipped} of {len(rows)} rows already in {out}", file=sys.stderr, flush=True)
    items = [(i, backend.encode(rows[i])) for i in range(skipped, len(rows))]  # every row checked before any runs
    progress = Progress(len(rows), skipped)
    if items:
        backend.ready([x for _, x in items])
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            for s in range(0, len(items), args.batch_size):
                chunk = items[s:s + args.batch_size]
                results = backend.run(chunk)
                f.write("".join(json.dumps({**rows[i].data, **res}, ensure_ascii=False, default=str) + "\n"
                                for (i, _), res in zip(chunk, results, strict=True)))
                f.flush()
                os.fsync(f.fileno())
                progress.update(chunk[-1][0] + 1, final=s + len(chunk) >= len(items))
    return InferResult(out, len(rows), skipped, len(items), time.monotonic() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        res = run(args)
    except (RunError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"[infer] wrote {res.written} rows ({res.skipped} there before) to {res.output} in {res.seconds:.1f}s",
          file=sys.stderr, flush=True)
    return 0
