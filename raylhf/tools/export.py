"""`raylhf export --run RUN_OR_ADAPTER --output OUT`: a LoRA / IA3 run as a standalone HF checkpoint (the adapter
merged into its base model with peft's ``merge_and_unload``; safetensors, tokenizer, generation config) that
transformers and vLLM load with no adapter support; an already merged checkpoint is copied. Then (``--check``, the
default) vLLM loads OUT and its prompt log-probs on fixed token sequences are compared with the merged model's
(transformers, float32): the largest gap must be under ``--tolerance`` (2e-4). Exit 0 when written (and checked),
1 when the check fails, 2 on wrong arguments or an unusable source. See docs/verbs.md.

``--run`` takes a peft adapter directory (``adapter_config.json``: a run's ``checkpoint/adapter``, or its
``checkpoint`` with ``policy.tuner.merge_on_save: false``), a full checkpoint (``config.json``), a run directory
(its ``checkpoint/``, else its latest ``checkpoints/step-*/hf``) or a checkpoint step directory (its ``hf/``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from raylhf.core.errors import RunError
from raylhf.tools.export_source import check_output, resolve_source

PROG = "raylhf export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1] + " Examples: docs/verbs.md.")
    p.add_argument("--run", required=True, metavar="DIR", help="an adapter dir, a checkpoint, a run dir or a "
                   "checkpoint step dir")
    p.add_argument("--output", required=True, metavar="OUT", help="the new checkpoint directory (must not exist "
                   "or be empty)")
    p.add_argument("--base", metavar="MODEL", help="the base model of an adapter (default: its adapter_config.json's "
                   "base_model_name_or_path)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="load OUT in vLLM and compare its log-probs with the merged model's (default on)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the weights' dtype in OUT (auto: the base model's); the merge itself runs in float32")
    p.add_argument("--tolerance", type=float, default=2e-4, help="largest log-prob gap --check accepts (2e-4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        source = resolve_source(args.run, args.base)
        out = check_output(args.output, source)
        # in-function: torch, peft and vLLM load only once the arguments parsed (--help stays light)
        from raylhf.tools import merge

        written = merge.export(source, out, args.dtype)
        print(f"[export] {written.describe()}", flush=True)
        if not args.check:
            return 0
        result = merge.check(out, written, args.tolerance)
    except (RunError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"[export] check: {result.describe()}", flush=True)
    if not result.ok:
        print(f"{PROG}: error: the check failed: {result.problem}", file=sys.stderr)
        return 1
    return 0
