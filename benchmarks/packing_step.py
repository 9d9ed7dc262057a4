"""Policy train_step time, packed vs unpacked, on a GRPO-like batch with long-tailed lengths.

One process, no Ray: a ``PolicyWorker`` per setting on real DeepSpeed (ZeRO-0, gloo, world size 1), all on the
same random Llama and the same batch (default 64 sequences, lengths 8..128, log-normal so most are short; a
6-token prompt, advantages, old and reference log-probs, KL term). Every setting runs one warm-up step, then
``--rounds`` rounds in which each setting takes one step in turn (interleaved, so a busy neighbour slows them
alike); the table gives the median and the best step time, the tokens the forward passes compute (rows x row
length, padding included) and the speed-up against the first setting.

    .venv/bin/python benchmarks/packing_step.py                      # demo-sized model (256 x 4), 2 threads
    .venv/bin/python benchmarks/packing_step.py --hidden 128 --layers 2 --threads 1
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from actors.common import micro_batches  # noqa: E402
from actors.packing import plan_rows  # noqa: E402
from raylhf.core.batch import Objective, TrainBatch  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "unpacked mb=8": dict(packing=False, micro_batch_size=8),
    "packed mb=8": dict(packing=True, micro_batch_size=8),
    "unpacked mb=32": dict(packing=False, micro_batch_size=32),
    "packed mb=32": dict(packing=True, micro_batch_size=32),
    "unpacked budget=1024": dict(packing=False, max_tokens_per_micro_batch=1024),
    "packed budget=512": dict(packing=True, max_tokens_per_micro_batch=512),
    "packed budget=1024": dict(packing=True, max_tokens_per_micro_batch=1024),
    "packed budget=2048": dict(packing=True, max_tokens_per_micro_batch=2048),
}


def lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """Long-tailed lengths: log-normal around ~30 tokens, clipped to [lo, hi] (a few hit ``hi``)."""
    g = torch.Generator().manual_seed(seed)
    return [int(min(hi, max(lo, float(torch.exp(torch.randn(1, generator=g) * 0.7 + 3.4))))) for _ in range(n)]


def grpo_batch(lens: list[int], vocab: int, seed: int) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, vocab, (n,), generator=g) for n in lens]
    mask = [torch.cat([torch.zeros(min(6, n - 1)), torch.ones(n - min(6, n - 1))]) for n in lens]
    adv = [m * float(torch.randn(1, generator=g)) for m in mask]
    old = [m * (-6.0 + 0.1 * torch.randn(len(m), generator=g)) for m in mask]
    ref = [m * (-6.0 + 0.1 * torch.randn(len(m), generator=g)) for m in mask]
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=adv, old_logprobs=old, ref_logprobs=ref)


def computed_tokens(lens: list[int], cfg: dict[str, Any]) -> int:
    """Tokens the forward passes of one step run over (padding included)."""
    total = 0
    packing = bool(cfg.get("packing"))
    for idx in micro_batches(lens, int(cfg.get("micro_batch_size", 8)), cfg.get("max_tokens_per_micro_batch"),
                             packing):
        sub = [lens[i] for i in idx]
        if packing:
            plan = plan_rows(sub)
            total += plan.num_rows * plan.row_len
        else:
            total += len(sub) * max(sub)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--threads", type=float, default=2, help="torch threads of the policy rank (num_cpus_per_worker)")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="*", default=None, help="setting names to run (default: all)")
    args = p.parse_args(argv)

    from actors.policy import PolicyWorker
    from raylhf.assets import write_tiny_model
    from raylhf.config.sections import PolicyConfig, TinyModelConfig

    tiny = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                           num_kv_heads=max(1, args.heads // 2), intermediate_size=args.intermediate)
    model = write_tiny_model(Path(tempfile.mkdtemp(prefix="packing-bench-")) / "model", tiny)
    lens = lengths(args.sequences, args.min_len, args.max_len, seed=0)
    from transformers import AutoConfig

    batch = grpo_batch(lens, AutoConfig.from_pretrained(model).vocab_size, seed=1)
    obj = Objective(pg_coef=1.0, kl_coef=0.05).with_counts(batch)
    names = args.only or list(SETTINGS)
    port = free_port()
    workers = {}
    for name in names:
        cfg = PolicyConfig(lr=1e-6, num_cpus_per_worker=args.threads, **SETTINGS[name]).model_dump()
        w = PolicyWorker(0, 1, "127.0.0.1", port, model_path=str(model), policy=cfg, dtype="float32")
        w.setup()
        w.train_step(batch, obj)  # warm-up
        workers[name] = w
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name, w in workers.items():
            t0 = time.perf_counter()
            w.train_step(batch, obj)
            times[name].append(time.perf_counter() - t0)
    print(f"model {args.hidden}x{args.layers} (intermediate {args.intermediate}), {args.threads:g} threads; "
          f"{len(lens)} sequences, {sum(lens)} tokens, lengths {min(lens)}..{max(lens)} "
          f"(median {int(statistics.median(lens))})")
    print(f"{'setting':24s} {'median s':>9s} {'best s':>8s} {'tokens':>7s} {'speed-up':>9s}")
    base = statistics.median(times[names[0]])
    for name in names:
        med = statistics.median(times[name])
        print(f"{name:24s} {med:9.3f} {min(times[name]):8.3f} {computed_tokens(lens, SETTINGS[name]):7d} "
              f"{base / med:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
