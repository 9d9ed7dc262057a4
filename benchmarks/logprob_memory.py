"""Memory of the log-prob pass at a real vocabulary, unchunked vs ``policy.logprob_chunk_size``, and of the policy's
model build under ZeRO-3 (plain ``from_pretrained`` per rank vs ``HfDeepSpeedConfig`` / ``zero.Init``).

What is measured: the resident-set high-water mark (``VmHWM`` of ``/proc/self/status``) of a fresh process per
configuration, reset (``/proc/self/clear_refs`` = 5) just before the measured part and reported minus the resident
set at that moment: the part's own peak (tensors, autograd's saved tensors, the allocator's pages), not the
interpreter's or the model's weights. Tensors of this size are mmapped by glibc and returned on free, so the
high-water mark follows the live tensors. CPU, fp32.

    .venv/bin/python benchmarks/logprob_memory.py                 # both parts, ~4 minutes on 2 cores
    .venv/bin/python benchmarks/logprob_memory.py --part logprobs # or --part zero3

Part 1 (``logprobs``): a tiny Llama (hidden 128, 2 layers, vocab 151,936 as Qwen2/2.5's) and one forward+backward
of ``actors.common.forward_logprobs`` (packed sequences of 1,024 tokens, temperature 0.7, entropy as a metric,
a policy-gradient-like loss). The unchunked path runs at 1k and 2k tokens (its growth per token is the slope
between the two), the chunked one at 2k and 16k.

Part 2 (``zero3``): a random Llama of ~1.1B parameters (hidden 2048, 22 layers, MLP 5632, vocab 32,000; written
once as bf16 safetensors), loaded by 2 ranks (gloo, one process each) the old way (every rank loads the whole
model in fp32) and the new (ZeRO-3 config alive before ``from_pretrained``: fp32 as on the CPU, bf16 as with
``precision: bf16`` on a GPU). Reported per rank: the anonymous resident memory after the load (what the rank
keeps) and the high-water mark during it (file pages of the mmapped checkpoint included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
VOCAB = 151_936


def status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM, RssAnon, RssFile), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the high-water mark to the current resident set; returns that resident set."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


# ---------------------------------------------------------------- part 1: the log-prob pass
def logprob_child(tokens: int, chunk: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actors.common import forward_logprobs

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).float().train()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, VOCAB, (1024,), generator=g) for _ in range(tokens // 1024)]
    base = reset_peak()
    t0 = time.perf_counter()
    lp, attn, ent = forward_logprobs(model, seqs, 0.7, with_entropy=True, packing=True, chunk_size=chunk,
                                     entropy_grad=False)
    adv = torch.linspace(-1, 1, lp.shape[0])[:, None]
    loss = -(lp * adv * attn).sum() / attn.sum()
    loss.backward()
    seconds = time.perf_counter() - t0
    assert ent is not None
    return {"tokens": tokens, "chunk": chunk, "peak": status_bytes("VmHWM") - base, "seconds": seconds,
            "loss": float(loss), "entropy": float((ent * attn).sum() / attn.sum())}


def run_logprobs() -> list[dict[str, Any]]:
    rows = []
    for tokens, chunk in ((1024, 0), (2048, 0), (2048, 1024), (16384, 1024), (16384, 256)):
        rows.append(child(["--logprob-child", str(tokens), str(chunk)]))
        print(f"  measured {tokens} tokens, chunk {chunk}", file=sys.stderr, flush=True)
    return rows


def print_logprobs(rows: list[dict[str, Any]]) -> None:
    print(f"\nlog-prob forward+backward, vocab {VOCAB:,}, fp32 CPU (peak resident growth over the pass)")
    print(f"{'path':<22}{'tokens':>8}{'peak GiB':>10}{'seconds':>9}{'loss':>11}{'entropy':>10}")
    for r in rows:
        path = "unchunked" if r["chunk"] == 0 else f"chunked ({r['chunk']})"
        print(f"{path:<22}{r['tokens']:>8}{r['peak'] / GIB:>10.2f}{r['seconds']:>9.1f}{r['loss']:>11.5f}"
              f"{r['entropy']:>10.4f}")
    old = {r["tokens"]: r["peak"] for r in rows if r["chunk"] == 0}
    per_token = (old[2048] - old[1024]) / 1024
    fixed = old[2048] - 2048 * per_token
    print(f"unchunked: {per_token / 1024**2:.2f} MiB per token (slope 1k -> 2k; {per_token / VOCAB:.1f} bytes per "
          f"token and vocabulary entry), {fixed / GIB:.2f} GiB fixed")
    print(f"unchunked at 16384 tokens, extrapolated: {(fixed + 16384 * per_token) / GIB:.1f} GiB "
          f"(16384 x {per_token / 1024**2:.2f} MiB + fixed)")


# ---------------------------------------------------------------- part 2: ZeRO-3 build
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                tie_word_embeddings=False)


def write_model(path: Path) -> int:
    """The random ~1.1B Llama as bf16 safetensors (weights drawn in bf16, small); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def zero3_child(path: str, mode: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from actors.common import init_distributed, load_causal_lm
    from actors.ds_config import deepspeed_config, load_dtype, zero3_model_config

    init_distributed(on_gpu=False)
    bf16 = mode == "zero3-bf16"
    ds = deepspeed_config({"zero_stage": 3 if mode.startswith("zero3") else 0, "micro_batch_size": 1},
                          int(os.environ["WORLD_SIZE"]), bf16)
    anon_before, base = status_bytes("RssAnon"), reset_peak()
    t0 = time.perf_counter()
    keep = zero3_model_config(ds)  # noqa: F841  (alive while from_pretrained runs, as in PolicyWorker.setup)
    model = load_causal_lm(path, load_dtype(bf16))
    dist.barrier()
    seconds = time.perf_counter() - t0
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(int(getattr(p, "ds_tensor", torch.empty(0)).numel()) * p.element_size()
                for p in model.parameters())
    return {"mode": mode, "rank": dist.get_rank(), "peak": status_bytes("VmHWM") - base,
            "anon_before": anon_before, "anon": status_bytes("RssAnon"), "params_bytes": held, "seconds": seconds}


def run_zero3(workdir: Path) -> tuple[int, list[dict[str, Any]]]:
    path = workdir / "llama-1b"
    n = int(child(["--write-model", str(path)])["params"])
    rows = []
    for mode in ("plain-fp32", "zero3-fp32", "zero3-bf16"):
        rows += ranks(["--zero3-child", str(path), mode], world=2)
        print(f"  measured {mode}", file=sys.stderr, flush=True)
    return n, rows


def print_zero3(n: int, rows: list[dict[str, Any]]) -> None:
    print(f"\nmodel build on 2 ranks (gloo), random Llama {n / 1e9:.2f}B parameters, bf16 safetensors on disk")
    print(f"{'mode':<12}{'rank':>5}{'params held GiB':>17}{'anon RSS before -> after GiB':>30}"
          f"{'peak growth GiB':>17}{'seconds':>9}")
    for r in rows:
        anon = f"{r['anon_before'] / GIB:.2f} -> {r['anon'] / GIB:.2f}"
        print(f"{r['mode']:<12}{r['rank']:>5}{r['params_bytes'] / GIB:>17.2f}{anon:>30}{r['peak'] / GIB:>17.2f}"
              f"{r['seconds']:>9.1f}")


# ---------------------------------------------------------------- processes
def child(args: list[str]) -> Any:
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ranks(args: list[str], world: int) -> list[dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{args} failed:\n" + "\n".join(o[1][-3000:] for o in outs))
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outs]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["both", "logprobs", "zero3"], default="both")
    ap.add_argument("--workdir", default=None, help="where the 1.1B model is written (default: a temp dir)")
    ap.add_argument("--logprob-child", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--zero3-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--write-model", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.logprob_child:
        print(json.dumps(logprob_child(*a.logprob_child)))
        return
    if a.zero3_child:
        print(json.dumps(zero3_child(*a.zero3_child)))
        return
    if a.write_model:
        print(json.dumps({"params": write_model(Path(a.write_model))}))
        return
    t0 = time.perf_counter()
    if a.part in ("both", "logprobs"):
        print_logprobs(run_logprobs())
    if a.part in ("both", "zero3"):
        with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
            print_zero3(*run_zero3(Path(tmp)))
    self_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"\n(largest child high-water mark {self_peak:.2f} GiB; {time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
