"""GRPO throughput: raylhf (Ray + vLLM + DeepSpeed actors) against TRL's ``GRPOTrainer`` in one run.

Both sides get the same random-weight Llama, the same arithmetic prompts in the same order, the same samples
per prompt, batch, lengths, temperature, learning rate and precision (fp32 on CPU), with no KL term and one
optimizer step per generation round. The script prints per-step times, then a comparison table, and ends with

    ratio_samples_per_s=<raylhf samples/s divided by TRL samples/s>

Each side runs in its own child process, one after the other, so they never compete for the cores and neither
inherits the other's imports or threads. Child output (Ray, vLLM, TRL logs) goes to stderr; the tables and the
ratio line go to stdout.

    .venv/bin/python benchmarks/grpo_vs_trl.py                       # full size (several minutes on 2 cores)
    .venv/bin/python benchmarks/grpo_vs_trl.py --hidden 128 --layers 2 --steps 1 --max-new-tokens 16  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA_SEED = 1234
MAX_OPERAND = 50


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=512, help="hidden size of the random Llama")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--heads", type=int, default=8, help="attention heads (head_dim = hidden/heads >= 32)")
    p.add_argument("--kv-heads", type=int, default=4, help="key/value heads")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width; default 3 x hidden")
    p.add_argument("--steps", type=int, default=3, help="measured steps per side")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per side, run first and not measured")
    p.add_argument("--max-new-tokens", type=int, default=128, help="max response length (tokens)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step")
    p.add_argument("--samples-per-prompt", type=int, default=8, help="completions per prompt (group size)")
    p.add_argument("--micro-batch-size", type=int, default=16,
                   help="sequences per forward/backward on both sides (raylhf policy.micro_batch_size; TRL "
                        "per_device_train_batch_size, with gradient accumulation up to one generation round)")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate (both sides)")
    p.add_argument("--trl-loss-type", default="dapo", choices=["dapo", "grpo"],
                   help="TRL loss_type; dapo = token mean over the whole batch, like raylhf's token-mean")
    p.add_argument("--actor-threads", type=int, default=None,
                   help="CPUs (torch threads) of both raylhf's policy actor and its vLLM engine; default: "
                        "GRPOConfig's policy.num_cpus_per_worker and rollout.num_cpus_per_engine")
    p.add_argument("--trl-threads", type=int, default=0,
                   help="torch threads of the TRL process; 0 leaves torch's default (all cores)")
    p.add_argument("--skip-raylhf", action="store_true", help="run only TRL (debugging; no ratio line)")
    p.add_argument("--skip-trl", action="store_true", help="run only raylhf (debugging; no ratio line)")
    p.add_argument("--workdir", default=None, help="model, run dirs and results go here; default a temp dir")
    # internal: how the parent starts one side in a child process
    p.add_argument("--side", choices=["raylhf", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.intermediate is None:
        args.intermediate = 3 * args.hidden
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.samples_per_prompt < 2:
        p.error("--samples-per-prompt must be >= 2 (GRPO compares samples within a group)")
    per_step = args.prompts_per_step * args.samples_per_prompt
    if per_step % args.micro_batch_size:
        p.error(f"--micro-batch-size ({args.micro_batch_size}) must divide the samples per step ({per_step})")
    return args


def samples_per_step(args: argparse.Namespace) -> int:
    return args.prompts_per_step * args.samples_per_prompt


def total_steps(args: argparse.Namespace) -> int:
    return args.warmup + args.steps


def problems(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exactly the prompts of every step, in order; both sides read them unshuffled."""
    from raylhf.tasks.arithmetic import make_problems

    return make_problems(total_steps(args) * args.prompts_per_step, seed=DATA_SEED, max_operand=MAX_OPERAND)


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------------
# raylhf side (child process)
# ---------------------------------------------------------------------------------------------------------
def run_raylhf(args: argparse.Namespace, model_dir: str, workdir: Path) -> dict[str, Any]:
    import ray

    from raylhf.config import GRPOConfig, build_config
    from raylhf.data import PromptExample
    from raylhf.grpo import run_grpo

    train = [PromptExample(user_turn(r["prompt"]), {"solution": r["solution"]}) for r in problems(args)]
    overrides: list[tuple[str, Any]] = [
        ("model.dtype", "float32"),
        ("data.shuffle", False),
        ("data.max_prompt_length", 64),
        ("policy.lr", args.lr),
        ("policy.lr_scheduler", "constant"),
        ("policy.micro_batch_size", args.micro_batch_size),
        ("policy.precision", "fp32"),
        ("rollout.max_new_tokens", args.max_new_tokens),
        ("rollout.temperature", 1.0),
        ("grpo.num_steps", total_steps(args)),
        ("grpo.prompt_batch_size", args.prompts_per_step),
        ("grpo.samples_per_prompt", args.samples_per_prompt),
        ("grpo.updates_per_batch", 1),
        ("grpo.kl_coef", 0.0),
        ("grpo.loss_agg", "token-mean"),
        ("reward.functions", [{"name": "accuracy", "kwargs": {"strict": False}}]),  # as on the TRL side
        ("logging.run_dir", str(workdir / "runs")),
        ("logging.progress", False),
        ("logging.tensorboard", False),
        ("checkpoint.save_final", False),
    ]
    # explicit, because overriding any policy.* / rollout.* key rebuilds that section from its class defaults
    defaults = GRPOConfig()
    policy_cpus = defaults.policy.num_cpus_per_worker if args.actor_threads is None else args.actor_threads
    engine_cpus = defaults.rollout.num_cpus_per_engine if args.actor_threads is None else args.actor_threads
    overrides += [("policy.num_cpus_per_worker", float(policy_cpus)),
                  ("rollout.num_cpus_per_engine", float(engine_cpus))]
    cfg = build_config(GRPOConfig, overrides=overrides)
    t0 = time.perf_counter()
    try:
        res = run_grpo(cfg, model_path=model_dir, train=train, heldout=[])
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    n = samples_per_step(args)
    steps = []
    for row in res.history:
        if "time/step" not in row:
            continue
        steps.append({
            "step": int(row["step"]),
            "time_step": row["time/step"],
            "time_generate": row["time/generate"],
            "time_train": row.get("time/train", 0.0),
            "time_sync": row.get("time/sync", 0.0),
            "samples": n,
            "gen_tokens": row["response/len_mean"] * n,
        })
    threads = {"policy": max(1, int(cfg.policy.num_cpus_per_worker)),
               "engine": max(1, int(cfg.rollout.num_cpus_per_engine))}
    return {"side": "raylhf", "steps": steps, "wall_s": wall, "threads": threads,
            "run_dir": str(res.run_dir)}


# ---------------------------------------------------------------------------------------------------------
# TRL side (child process)
# ---------------------------------------------------------------------------------------------------------
def trl_accuracy(completions: list[Any], solution: list[Any], **_: Any) -> list[float]:
    """raylhf's ``accuracy`` reward; TRL passes chat completions as message lists, so take their text."""
    from rewards.orm import accuracy

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return accuracy(texts, solution)


def run_trl(args: argparse.Namespace, model_dir: str, workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from raylhf.assets import load_tokenizer

    if args.trl_threads > 0:
        torch.set_num_threads(args.trl_threads)
    n = samples_per_step(args)
    gen_log: dict[int, dict[str, float]] = {}

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that also records the wall time and the token count of each HF ``generate`` round."""

        def _generate_single_turn(self, prompt_ids, *a, **kw):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **kw)
            rec = gen_log.setdefault(self.state.global_step + 1, {"seconds": 0.0, "tokens": 0, "samples": 0})
            rec["seconds"] += time.perf_counter() - t
            rec["tokens"] += sum(len(c) for c in completion_ids)
            rec["samples"] += len(completion_ids)
            return completion_ids, logprobs

    timed = hasattr(GRPOTrainer, "_generate_single_turn")
    if not timed:
        log("this TRL has no GRPOTrainer._generate_single_turn: generate time not measured, tokens from logs")

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t_begin = 0.0
            self.steps: list[dict[str, float]] = []
            self.logs: dict[int, dict[str, Any]] = {}

        def on_step_begin(self, args_, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t_begin = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):  # type: ignore[no-untyped-def]
            dt = time.perf_counter() - self.t_begin
            self.steps.append({"step": state.global_step, "time_step": dt})
            log(f"TRL step {state.global_step}/{state.max_steps}: {dt:.2f}s")

        def on_log(self, args_, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            self.logs[state.global_step] = dict(logs or {})

    rows = problems(args)
    dataset = Dataset.from_list([{"prompt": user_turn(r["prompt"]), "solution": r["solution"]} for r in rows])
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(workdir / "trl-out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is True; raylhf does not recompute activations
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=n // args.micro_batch_size,  # one optimizer step = one generation round
        num_generations=args.samples_per_prompt,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        loss_type=args.trl_loss_type,
        epsilon=0.2,
        epsilon_high=0.28,  # raylhf's default clip_high (no effect on time; on-policy ratios are 1)
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=total_steps(args),
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_vllm=False,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if config.generation_batch_size != n:
        raise RuntimeError(f"TRL generation_batch_size is {config.generation_batch_size}, expected {n}")
    timer = StepTimer()
    cls = TimedGRPOTrainer if timed else GRPOTrainer
    trainer = cls(model=model, reward_funcs=[trl_accuracy], args=config, train_dataset=dataset,
                  processing_class=tokenizer, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steps = []
    for s in timer.steps:
        k = int(s["step"])
        logged = timer.logs.get(k, {})
        gen = gen_log.get(k)
        mean_len = logged.get("completions/mean_length")
        if gen is not None:
            tokens = float(gen["tokens"])
        elif mean_len is not None:
            tokens = float(mean_len) * n
        else:
            tokens = float("nan")
        steps.append({
            "step": k,
            "time_step": s["time_step"],
            "time_generate": gen["seconds"] if gen is not None else None,
            "samples": gen["samples"] if gen is not None else n,
            "gen_tokens": tokens,
            "logged_mean_length": mean_len,
        })
    return {"side": "trl", "steps": steps, "wall_s": wall, "threads": torch.get_num_threads(),
            "loss_type": args.trl_loss_type}


# ---------------------------------------------------------------------------------------------------------
# parent: model, children, report
# ---------------------------------------------------------------------------------------------------------
def prepare_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, int]:
    from safetensors import safe_open

    from raylhf.assets import write_tiny_model
    from raylhf.config.sections import TinyModelConfig

    tiny = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                           num_kv_heads=args.kv_heads, intermediate_size=args.intermediate,
                           max_position_embeddings=max(512, 64 + args.max_new_tokens + 8))
    out = workdir / (f"llama-h{tiny.hidden_size}-l{tiny.num_layers}-a{tiny.num_heads}-kv{tiny.num_kv_heads}"
                     f"-f{tiny.intermediate_size}-p{tiny.max_position_embeddings}")
    if not (out / "config.json").exists():
        log(f"writing random model to {out}")
        write_tiny_model(out, tiny)
    n_params = 0
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                n_params += _prod(st.get_slice(name).get_shape())
    return out, n_params


def _prod(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def run_side(side: str, argv: list[str], model_dir: Path, workdir: Path) -> dict[str, Any]:
    result = workdir / f"result-{side}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side,
           "--model-dir", str(model_dir), "--result", str(result), "--workdir", str(workdir)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log(f"--- {side}: starting child process")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stderr, env=env, check=False)
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"[bench] the {side} run failed (exit code {proc.returncode}); see the log above")
    log(f"--- {side}: done in {time.perf_counter() - t0:.1f}s (process wall time, start-up included)")
    return json.loads(result.read_text())


def summarize(res: dict[str, Any], warmup: int) -> dict[str, float | None]:
    measured = [s for s in res["steps"] if s["step"] > warmup]
    if not measured:
        raise SystemExit(f"[bench] {res['side']}: no measured steps (history has {len(res['steps'])} steps)")
    t = sum(s["time_step"] for s in measured)
    samples = sum(s["samples"] for s in measured)
    tokens = sum(s["gen_tokens"] for s in measured)
    gens = [s["time_generate"] for s in measured if s.get("time_generate") is not None]
    gen_t = sum(gens) / len(gens) if len(gens) == len(measured) else None
    out: dict[str, float | None] = {
        "steps": float(len(measured)),
        "time_step": t / len(measured),
        "time_generate": gen_t,
        "time_rest": t / len(measured) - gen_t if gen_t is not None else None,
        "len_mean": tokens / samples,
        "tokens_per_s": tokens / t,
        "gen_tokens_per_s": tokens / (gen_t * len(measured)) if gen_t else None,
        "samples_per_s": samples / t,
    }
    if res["side"] == "raylhf":
        out["time_train"] = sum(s["time_train"] for s in measured) / len(measured)
        out["time_sync"] = sum(s["time_sync"] for s in measured) / len(measured)
    return out


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def report(args: argparse.Namespace, n_params: int, results: dict[str, dict[str, Any]]) -> None:
    n = samples_per_step(args)
    print(f"model: random Llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
          f"kv_heads={args.kv_heads} intermediate={args.intermediate} params={n_params / 1e6:.2f}M (fp32, CPU)")
    print(f"batch: {args.prompts_per_step} prompts x {args.samples_per_prompt} samples = {n} samples/step, "
          f"max_new_tokens={args.max_new_tokens}, temperature=1.0, beta=0, 1 update/batch, lr={args.lr:g}, "
          f"micro_batch={args.micro_batch_size}; {args.warmup} warm-up + {args.steps} measured steps")
    if "raylhf" in results:
        th = results["raylhf"]["threads"]
        th_text = f"policy {th['policy']}, engine {th['engine']}" if isinstance(th, dict) else f"{th} each"
        print(f"raylhf: vLLM engine + DeepSpeed policy actors (torch threads: {th_text}), loss_agg=token-mean")
    if "trl" in results:
        print(f"TRL: GRPOTrainer, HF generate, one process (torch threads: {results['trl']['threads']}), "
              f"loss_type={results['trl']['loss_type']}")
    loads = ", ".join(f"{side} {res['loadavg_1min'][0]:.2f} -> {res['loadavg_1min'][1]:.2f}"
                      for side, res in results.items() if "loadavg_1min" in res)
    print(f"machine: {os.cpu_count()} CPUs; 1-min load average at the start -> end of each side: {loads}")
    print()
    print("per step (* = warm-up, not measured)")
    print(f"{'side':<7} {'step':>5} {'time_s':>8} {'gen_s':>8} {'rest_s':>8} {'len_mean':>9} {'tok/s':>8} "
          f"{'samples/s':>10}")
    for side, res in results.items():
        for s in res["steps"]:
            mark = "*" if s["step"] <= args.warmup else " "
            g = s.get("time_generate")
            rest = s["time_step"] - g if g is not None else None
            print(f"{side:<7} {s['step']:>4}{mark} {s['time_step']:>8.2f} {fmt(g):>8} {fmt(rest):>8} "
                  f"{s['gen_tokens'] / s['samples']:>9.1f} {s['gen_tokens'] / s['time_step']:>8.1f} "
                  f"{s['samples'] / s['time_step']:>10.3f}")
    print()
    sums = {side: summarize(res, args.warmup) for side, res in results.items()}
    rows = [
        ("step time (s)", "time_step", ".2f"),
        ("  generate (s)", "time_generate", ".2f"),
        ("  rest: reward+train+sync (s)", "time_rest", ".2f"),
        ("mean response length (tokens)", "len_mean", ".1f"),
        ("gen tokens/s (over step time)", "tokens_per_s", ".1f"),
        ("gen tokens/s (during generate)", "gen_tokens_per_s", ".1f"),
        ("samples/s", "samples_per_s", ".3f"),
    ]
    sides = list(sums)
    head = f"{'mean over measured steps':<32}" + "".join(f"{s:>12}" for s in sides)
    if len(sides) == 2:
        head += f"{'raylhf/TRL':>12}"
    print(head)
    for label, key, spec in rows:
        vals = [sums[s].get(key) for s in sides]
        line = f"{label:<32}" + "".join(f"{fmt(v, spec):>12}" for v in vals)
        if len(sides) == 2:
            a, b = vals
            line += f"{fmt(a / b if a is not None and b else None, '.2f'):>12}"
        print(line)
    if "raylhf" in sums:
        r = sums["raylhf"]
        print(f"raylhf breakdown (s): train={fmt(r['time_train'])} sync={fmt(r['time_sync'])}")
    if len(sides) == 2:
        ratio = sums["raylhf"]["samples_per_s"] / sums["trl"]["samples_per_s"]  # type: ignore[operator]
        print(f"ratio_samples_per_s={ratio:.3f}", flush=True)


def child(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    fn = run_raylhf if args.side == "raylhf" else run_trl
    load_before = os.getloadavg()[0]
    res = fn(args, args.model_dir, workdir)
    res["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    Path(args.result).write_text(json.dumps(res, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.side:
        return child(args)
    if args.skip_raylhf and args.skip_trl:
        raise SystemExit("--skip-raylhf and --skip-trl together leave nothing to run")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="grpo_vs_trl-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    with contextlib.redirect_stdout(sys.stderr):  # import-time library warnings stay off the report
        model_dir, n_params = prepare_model(args, workdir)
    log(f"model {model_dir}: {n_params / 1e6:.2f}M parameters")
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_raylhf:
        results["raylhf"] = run_side("raylhf", argv, model_dir, workdir)
    if not args.skip_trl:
        results["trl"] = run_side("trl", argv, model_dir, workdir)
    report(args, n_params, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
