"""GPU check of raylhf's real policy training step: ``PolicyWorker.train_step`` outside Ray.

One process, rank 0 of world size 1 (DeepSpeed over NCCL on a GPU, gloo on CPU). A random-weight Llama is
written with ``raylhf.assets.write_tiny_model`` (the shipped tokenizer, no downloads); the batch is a GRPO batch
built the way ``raylhf/trainers/grpo.py`` builds it (``phases.to_train_batch`` of rollouts, GRPO advantages, the GRPO
objective of ``GRPOAlgoConfig``'s defaults, one update per batch: ``old_logprobs=None``).

Measured (printed, and written to ``<out>/gpu_policy_step_<model>.json``):

* env: versions, the GPU and ``torch.cuda.get_device_properties``;
* the bf16 matmul rate (8192^3, median of 10 after 3 warm-ups, CUDA events);
* per setting (precision x ZeRO stage x packing): one warm-up ``train_step`` then timed ones: s/step,
  tokens/s, trained tokens/s, model TFLOP/s (6 x params x real tokens / time), peak memory, loss, grad norm,
  whether the NaN guard skipped the step;
* parity: the first step's loss (fresh identical weights, same batch) packed vs unpacked, and bf16 vs fp32.

Every check prints one line (PASS / FAIL / INFO); the table comes last; the exit status is 1 when a check failed.

    python benchmarks/gpu_policy_step.py --model large              # the GPU matrix
    .venv/bin/python benchmarks/gpu_policy_step.py --model tiny --quick --force-ray-stub   # CPU smoke test
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("DEEPSPEED_TIMEOUT", "3")  # minutes: DeepSpeed's process-group timeout (every wait bounded)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=192),
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=2816),
    "xl": dict(hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=5632),
}
PROMPT_LEN = 16
GROUP = 8  # samples per prompt (GRPOAlgoConfig.samples_per_prompt's default)
TOL = {"fp32": 1e-5, "bf16": 2e-2}  # packed vs unpacked first-step loss, relative
TOL_BF16_VS_FP32 = 2e-2


# ---- ray stub -----------------------------------------------------------------------------------------------


def install_ray_stub() -> None:
    """A minimal stand-in for ``ray`` in ``sys.modules``.

    Why: the GPU check machine has no ray, yet ``actors/policy.py`` imports ``actors/group.py``, which imports ray
    at module level (``ray.method`` decorates ``BaseWorker.stacks``; ``ray.exceptions`` and ``ray.util``'s
    placement-group names are imported). This script calls the worker directly, so nothing of Ray runs: the stub
    only has to satisfy those imports. Anything that would really need Ray raises.
    """

    def decorator(*args: Any, **kwargs: Any) -> Any:  # ray.remote / ray.method: identity, bare or with options
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return lambda f: f

    def unavailable(*_: Any, **__: Any) -> Any:
        raise RuntimeError("ray is not installed (benchmarks/gpu_policy_step.py stub)")

    ray = types.ModuleType("ray")
    ray.__path__ = []  # a package, so the submodule imports resolve through sys.modules
    ray.__dict__.update(method=decorator, remote=decorator, ObjectRef=object, is_initialized=lambda: False,
                        get=unavailable, put=unavailable, wait=unavailable, cancel=unavailable, kill=unavailable,
                        get_runtime_context=unavailable, __raylhf_stub__=True)
    exc = types.ModuleType("ray.exceptions")

    class RayError(Exception):
        pass

    exc.__dict__.update(RayError=RayError, RayActorError=type("RayActorError", (RayError,), {}),
                        RayTaskError=type("RayTaskError", (RayError,), {}),
                        GetTimeoutError=type("GetTimeoutError", (RayError,), {}))
    util = types.ModuleType("ray.util")
    util.__path__ = []
    util.get_node_ip_address = lambda: "127.0.0.1"
    pg = types.ModuleType("ray.util.placement_group")
    pg.__dict__.update(placement_group=unavailable, remove_placement_group=unavailable)
    ss = types.ModuleType("ray.util.scheduling_strategies")
    ss.PlacementGroupSchedulingStrategy = type("PlacementGroupSchedulingStrategy", (), {"__init__": unavailable})
    ray.exceptions, ray.util = exc, util
    util.placement_group, util.scheduling_strategies = pg, ss
    sys.modules.update({"ray": ray, "ray.exceptions": exc, "ray.util": util, "ray.util.placement_group": pg,
                        "ray.util.scheduling_strategies": ss})


def ensure_ray(force_stub: bool) -> str:
    if not force_stub:
        try:
            import ray  # noqa: F401

            return "real"
        except ImportError:
            pass
    install_ray_stub()
    return "stub"


# ---- results ------------------------------------------------------------------------------------------------


@dataclass
class Setting:
    precision: str  # "bf16" | "fp32"
    zero: int
    packing: bool
    timed_steps: int

    @property
    def name(self) -> str:
        return f"{self.precision} z{self.zero} {'packed' if self.packing else 'unpacked'}"


@dataclass
class Result:
    name: str
    precision: str
    zero: int
    packing: bool
    status: str = "not run"  # ok | error: ... | skipped: ...
    setup_s: float = math.nan
    micro_batches: int = 0
    attn: str = ""
    first_loss: float = math.nan
    first_grad_norm: float = math.nan
    first_entropy: float = math.nan
    step_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    peak_mem_gib: float | None = None  # torch.cuda.max_memory_allocated over the warm-up and timed steps
    mem_before_gib: float | None = None  # allocated before setup (what earlier settings left behind)
    mem_after_setup_gib: float | None = None
    s_per_step: float = math.nan
    tokens_per_s: float = math.nan
    trained_tokens_per_s: float = math.nan
    tflops: float = math.nan
    wall_s: float = math.nan


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def info(self, name: str, text: str) -> None:
        print(f"INFO  {name}: {text}", flush=True)
        self.rows.append({"check": name, "status": "INFO", "detail": text})

    def check(self, name: str, ok: bool, text: str) -> bool:
        status = "PASS" if ok else "FAIL"
        print(f"{status}  {name}: {text}", flush=True)
        self.rows.append({"check": name, "status": status, "detail": text})
        return ok

    @property
    def failed(self) -> int:
        return sum(r["status"] == "FAIL" for r in self.rows)


# ---- inputs -------------------------------------------------------------------------------------------------


def response_lengths(n: int, max_len: int, seed: int) -> list[int]:
    """Long-tailed (geometric) response lengths, mean ~max_len/3 before the cap, capped so that prompt +
    response <= max_len."""
    import torch

    cap = max_len - PROMPT_LEN
    p = min(0.5, 3.0 / max_len)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g).clamp_min(1e-12)
    return [int(min(cap, max(1, math.ceil(math.log(float(x)) / math.log(1.0 - p))))) for x in u]


def grpo_batch(n: int, max_len: int, vocab: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """A GRPO TrainBatch of ``n`` rollouts (groups of ``GROUP``, mixed 0/1 rewards in every group so every
    advantage is non-zero) and the GRPO objective, as raylhf/trainers/grpo.py builds them."""
    import torch

    from raylhf.algos.advantages import compute_advantages
    from raylhf.config import GRPOAlgoConfig
    from raylhf.core.batch import Objective, Rollout
    from raylhf.driver import phases

    if n % GROUP:
        raise ValueError(f"--sequences must be a multiple of {GROUP}")
    g = GRPOAlgoConfig()
    for attempt in range(20):  # a loss far from 0, so |diff| / |loss| means something
        s = seed + 1000 * attempt
        gen = torch.Generator().manual_seed(s)
        lens = response_lengths(n, max_len, s)
        rewards = (torch.rand(n, generator=gen) < 0.5).float()
        rewards[0::GROUP], rewards[1::GROUP] = 0.0, 1.0
        adv = compute_advantages(g.advantage, rewards, GROUP, scale=g.scale_rewards).advantages
        rollouts: list[Any] = []
        for i, r in enumerate(lens):
            prompt = torch.randint(3, vocab, (PROMPT_LEN,), generator=gen).tolist()
            resp = torch.randint(3, vocab, (r,), generator=gen).tolist()
            lp = (-math.log(vocab) + 0.1 * torch.randn(r, generator=gen)).tolist()
            rollouts.append(Rollout(prompt_index=i // GROUP, prompt_ids=prompt, response_ids=resp, logprobs=lp,
                                    finish_reason="length" if r == max_len - PROMPT_LEN else "stop"))
        batch = phases.to_train_batch(rollouts, adv, mask_truncated=g.overlong == "mask")
        est = -sum(float(a) * r for a, r in zip(adv.tolist(), lens, strict=True)) / max(1, batch.num_tokens())
        if abs(est) >= 0.05:
            break
    objective = Objective(
        pg_coef=1.0, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, entropy_coef=g.entropy_coef,
        clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip, is_level=g.importance_sampling,
        tis_cap=g.tis_cap, loss_agg=g.loss_agg, norm_const=float(max_len - PROMPT_LEN), temperature=1.0,
    ).with_counts(batch)
    seq = [len(x) for x in batch.input_ids]
    stats = dict(sequences=n, seed=s, max_len=max_len, prompt_len=PROMPT_LEN, tokens=sum(seq),
                 trained_tokens=batch.num_tokens(), len_min=min(seq), len_median=int(statistics.median(seq)),
                 len_mean=round(sum(seq) / n, 1), len_max=max(seq), truncated=sum(r == max_len - PROMPT_LEN
                                                                                for r in lens),
                 loss_estimate_at_ratio_1=est)
    return batch, objective, stats


# ---- measurements -------------------------------------------------------------------------------------------


def env_info(ray_mode: str) -> dict[str, Any]:
    import deepspeed
    import torch
    import transformers

    info: dict[str, Any] = dict(python=platform.python_version(), torch=torch.__version__,
                                deepspeed=deepspeed.__version__, transformers=transformers.__version__,
                                torch_cuda=torch.version.cuda, ray=ray_mode, cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), device_properties=str(p),
                    total_memory_gib=round(p.total_memory / 2**30, 2), sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", nccl=str(torch.cuda.nccl.version()),
                    bf16=torch.cuda.is_bf16_supported(),
                    fp32_matmul_precision=torch.get_float32_matmul_precision())
    return info


def matmul_rate(n: int = 8192, warmup: int = 3, reps: int = 10) -> dict[str, float]:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    torch.cuda.synchronize()
    ms: list[float] = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        ms.append(start.elapsed_time(end))
    med = statistics.median(ms)
    del a, b
    torch.cuda.empty_cache()
    return {"n": n, "median_ms": med, "tflops": 2 * n**3 / (med / 1e3) / 1e12}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gib(x: int) -> float:
    return round(x / 2**30, 3)


def release(worker: Any) -> None:
    import torch

    engine = getattr(worker, "engine", None)
    if engine is not None:
        try:
            engine.destroy()
        except Exception as e:  # best effort: the next setting still gets fresh weights
            print(f"[gpu_policy_step] engine.destroy: {type(e).__name__}: {e}", flush=True)
    worker.__dict__.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_setting(s: Setting, model_path: Path, batch: Any, obj: Any, args: argparse.Namespace, port: int,
                params: int) -> Result:
    import torch

    from actors.common import attn_implementation
    from actors.policy import PolicyWorker
    from raylhf.config.sections import PolicyConfig
    from raylhf.core.guard import SKIPPED

    res = Result(s.name, s.precision, s.zero, s.packing)
    cfg = PolicyConfig(lr=1e-6, zero_stage=s.zero, packing=s.packing, precision=s.precision,
                       max_tokens_per_micro_batch=args.max_tokens, grad_clip=1.0,
                       num_cpus_per_worker=args.threads, gradient_checkpointing=args.grad_ckpt).model_dump()
    w = PolicyWorker(0, 1, "127.0.0.1", port, model_path=str(model_path), policy=cfg, dtype="float32",
                     total_steps=100, seed=0)
    on_gpu = torch.cuda.is_available()
    t_all = time.perf_counter()
    trained = 0.0
    if on_gpu:
        res.mem_before_gib = gib(torch.cuda.memory_allocated())
    try:
        t0 = time.perf_counter()
        w.setup()
        res.setup_s = time.perf_counter() - t0
        res.attn = attn_implementation(w.engine)
        res.micro_batches = len(w.micro_batches(batch))
        if on_gpu:
            sync()
            res.mem_after_setup_gib = gib(torch.cuda.memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        first = w.train_step(batch, obj)  # warm-up = the first step on fresh weights (the parity loss)
        sync()
        res.first_loss, res.first_grad_norm = float(first["loss/total"]), float(first["grad_norm"])
        res.first_entropy = float(first.get("entropy", math.nan))
        res.skipped_steps += int(first[SKIPPED] > 0)
        tokens = sum(len(x) for x in batch.input_ids)
        for _ in range(s.timed_steps):
            sync()
            t = time.perf_counter()
            out = w.train_step(batch, obj)
            sync()
            res.step_s.append(time.perf_counter() - t)
            res.losses.append(float(out["loss/total"]))
            res.grad_norms.append(float(out["grad_norm"]))
            res.skipped_steps += int(out[SKIPPED] > 0)
            trained = float(out["train_tokens"])
        if res.step_s:
            res.s_per_step = statistics.median(res.step_s)
            res.tokens_per_s = tokens / res.s_per_step
            res.trained_tokens_per_s = trained / res.s_per_step
            res.tflops = 6 * params * tokens / res.s_per_step / 1e12
        if on_gpu:
            res.peak_mem_gib = gib(torch.cuda.max_memory_allocated())
        res.status = "ok"
    except Exception as e:  # an OOM or a DeepSpeed error in one setting must not hide the others
        res.status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        import traceback

        traceback.print_exc()
    finally:
        release(w)
        res.wall_s = time.perf_counter() - t_all
    return res


def settings(args: argparse.Namespace, on_gpu: bool) -> list[Setting]:
    precisions = ["bf16", "fp32"] if on_gpu else ["fp32"]
    if args.quick:
        out = [Setting(precisions[0], 2, True, 1)]
        out += [Setting(precisions[0], 2, False, 0)]  # parity partner: the first step only
        for p in precisions[1:]:
            out += [Setting(p, 2, True, 0), Setting(p, 2, False, 0)]
        return out
    precisions = [p for p in precisions if p in args.precisions.split(",")]
    stages = [int(z) for z in args.zero.split(",")]
    # fp32 x ZeRO-3 last: the first to go when the time budget runs short
    return [Setting(p, z, pk, args.steps) for p in precisions for z in stages for pk in (True, False)]


def fmt(x: float | None, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(x, spec)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def parity_checks(results: list[Result], checks: Checks) -> None:
    ok = {(r.precision, r.zero, r.packing): r for r in results if r.status == "ok"}
    for (p, z, pk), r in sorted(ok.items()):
        if pk and (p, z, False) in ok:
            u = ok[(p, z, False)]
            d = rel(r.first_loss, u.first_loss)
            checks.check(f"parity packed vs unpacked {p} z{z}", d < TOL[p],
                         f"loss {r.first_loss:.8g} vs {u.first_loss:.8g}, |diff|/|loss| {d:.3e} (< {TOL[p]:g}); "
                         f"grad norm {r.first_grad_norm:.6g} vs {u.first_grad_norm:.6g}")
    for (p, z, pk), r in sorted(ok.items()):
        if p == "bf16" and ("fp32", z, pk) in ok:
            f = ok[("fp32", z, pk)]
            d = rel(r.first_loss, f.first_loss)
            checks.check(f"parity bf16 vs fp32 z{z} {'packed' if pk else 'unpacked'}", d < TOL_BF16_VS_FP32,
                         f"loss {r.first_loss:.8g} vs {f.first_loss:.8g}, rel diff {d:.3e} (< {TOL_BF16_VS_FP32:g})")
    if not any(r.status == "ok" and r.packing for r in results) or not any(
            r.status == "ok" and not r.packing for r in results):
        checks.check("parity", False, "no packed / unpacked pair ran")


def table(results: list[Result]) -> list[str]:
    head = (f"{'setting':18s} {'status':8s} {'setup s':>7s} {'mb':>3s} {'s/step':>7s} {'tok/s':>9s} "
            f"{'train tok/s':>11s} {'TFLOP/s':>7s} {'peak GiB':>8s} {'loss':>10s} {'grad norm':>9s} {'skip':>4s}")
    lines = [head, "-" * len(head)]
    for r in results:
        status = r.status if r.status == "ok" else r.status.split(":")[0]
        lines.append(
            f"{r.name:18s} {status:8s} {fmt(r.setup_s, '7.1f')} {r.micro_batches:3d} {fmt(r.s_per_step, '7.3f')} "
            f"{fmt(r.tokens_per_s, '9.0f')} {fmt(r.trained_tokens_per_s, '11.0f')} {fmt(r.tflops, '7.2f')} "
            f"{fmt(r.peak_mem_gib, '8.2f')} {fmt(r.first_loss, '10.6f')} "
            f"{fmt(r.grad_norms[-1] if r.grad_norms else r.first_grad_norm, '9.4f')} {r.skipped_steps:4d}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--quick", action="store_true", help="one timed setting (1 step) plus its parity partners")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu"))
    p.add_argument("--force-ray-stub", action="store_true", help="use the ray stub even where ray is installed")
    p.add_argument("--sequences", type=int, default=None, help="batch size (default 64 on GPU, 16 on CPU)")
    p.add_argument("--max-len", type=int, default=None, help="max sequence length (default 512 GPU, 64 CPU)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="policy.max_tokens_per_micro_batch (default 16384 GPU, 256 CPU)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    p.add_argument("--precisions", default="bf16,fp32", help="comma-separated subset of bf16,fp32 (not --quick)")
    p.add_argument("--zero", default="2,3", help="comma-separated ZeRO stages (not --quick)")
    p.add_argument("--grad-ckpt", action="store_true", help="policy.gradient_checkpointing")
    p.add_argument("--threads", type=float, default=None, help="policy.num_cpus_per_worker (default 8 GPU, 1 CPU)")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="soft time budget: settings that would not fit are skipped (the table still prints)")
    p.add_argument("--hard-timeout-s", type=float, default=None,
                   help="dump stacks and exit after this long (default budget + 60)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    faulthandler.dump_traceback_later(args.hard_timeout_s or args.budget_s + 60, exit=True)

    ray_mode = ensure_ray(args.force_ray_stub)
    import torch

    on_gpu = torch.cuda.is_available()
    args.sequences = args.sequences or (64 if on_gpu else 16)
    args.max_len = args.max_len or (512 if on_gpu else 64)
    args.max_tokens = args.max_tokens or (16384 if on_gpu else 256)
    args.threads = args.threads or (8.0 if on_gpu else 1.0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    checks = Checks()

    env = env_info(ray_mode)
    checks.info("env", ", ".join(f"{k} {v}" for k, v in env.items() if k != "device_properties"))
    if on_gpu:
        checks.info("device properties", env["device_properties"])
        mm = matmul_rate()
        checks.info("bf16 matmul", f"{mm['n']}^3 median {mm['median_ms']:.3f} ms = {mm['tflops']:.1f} TFLOP/s")
    else:
        mm = {}
        checks.info("bf16 matmul", "skipped (no CUDA)")

    from raylhf.assets import write_tiny_model
    from raylhf.config.sections import TinyModelConfig

    tmp = tempfile.TemporaryDirectory(prefix="gpu-policy-step-")
    t0 = time.perf_counter()
    model_path = write_tiny_model(Path(tmp.name) / "model", TinyModelConfig(
        **MODELS[args.model], max_position_embeddings=max(512, 2 * args.max_len), seed=0))
    from transformers import AutoConfig

    hf_cfg = AutoConfig.from_pretrained(model_path)
    from safetensors import safe_open

    params = 0
    for f in model_path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    checks.info("model", f"{args.model}: Llama hidden {hf_cfg.hidden_size}, {hf_cfg.num_hidden_layers} layers, "
                f"{hf_cfg.num_attention_heads}/{hf_cfg.num_key_value_heads} heads, intermediate "
                f"{hf_cfg.intermediate_size}, vocab {hf_cfg.vocab_size}: {params / 1e6:.1f}M parameters "
                f"(written in {time.perf_counter() - t0:.1f} s)")

    batch, obj, stats = grpo_batch(args.sequences, args.max_len, hf_cfg.vocab_size, seed=0)
    checks.info("batch", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
                + f"; micro-batch budget {args.max_tokens} tokens")

    from packing_step import free_port  # benchmarks/ (this script's directory) is on sys.path

    port = free_port()
    results: list[Result] = []
    path = out_dir / f"gpu_policy_step_{args.model}.json"

    def write_report() -> None:  # after every setting too, so a hard timeout still leaves what ran
        report = dict(args=vars(args), env=env, matmul_bf16=mm, model=dict(
            name=args.model, params=params, config=MODELS[args.model], vocab=hf_cfg.vocab_size), batch=stats,
            results=[asdict(r) for r in results], checks=checks.rows, failed=checks.failed,
            wall_s=time.perf_counter() - t_start)
        path.write_text(json.dumps(report, indent=1, default=str))

    longest = 0.0
    for s in settings(args, on_gpu):
        elapsed = time.perf_counter() - t_start
        if results and elapsed + 1.3 * longest > args.budget_s:
            r = Result(s.name, s.precision, s.zero, s.packing, status="skipped: time budget")
            checks.info(f"step {s.name}", f"skipped: {elapsed:.0f} s spent, the last took {longest:.0f} s, "
                                          f"budget {args.budget_s:.0f} s")
            results.append(r)
            continue
        r = run_setting(s, model_path, batch, obj, args, port, params)
        longest = max(longest, r.wall_s)
        results.append(r)
        finite = math.isfinite(r.first_loss) and all(math.isfinite(x) for x in r.losses)
        checks.check(f"step {s.name}", r.status == "ok" and finite and r.skipped_steps == 0,
                     f"{r.status}; setup {fmt(r.setup_s, '.1f')} s, {r.micro_batches} micro-batches, attn {r.attn}, "
                     f"s/step {fmt(r.s_per_step, '.4f')}, tok/s {fmt(r.tokens_per_s, '.0f')}, "
                     f"TFLOP/s {fmt(r.tflops, '.2f')}, peak {fmt(r.peak_mem_gib, '.2f')} GiB (before setup "
                     f"{fmt(r.mem_before_gib, '.2f')}, after {fmt(r.mem_after_setup_gib, '.2f')}), "
                     f"first loss {r.first_loss:.8g}, grad norm {r.first_grad_norm:.6g}, "
                     f"losses {[round(x, 6) for x in r.losses]}, skipped {r.skipped_steps}, wall {r.wall_s:.1f} s")
        write_report()
    parity_checks(results, checks)

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

    write_report()
    tmp.cleanup()
    print(f"wrote {path}")
    print(f"== {args.model} ({params / 1e6:.1f}M params), {stats['sequences']} seqs, {stats['tokens']} tokens "
          f"({stats['trained_tokens']} trained), {env.get('gpu', 'CPU')}, "
          f"matmul {fmt(mm.get('tflops'), '.0f')} TFLOP/s; checks: "
          f"{sum(r['status'] == 'PASS' for r in checks.rows)} passed, "
          f"{checks.failed} failed")
    print("\n".join(table(results)), flush=True)
    faulthandler.cancel_dump_traceback_later()
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
