"""GRPO throughput: raylhf (Ray + vLLM + DeepSpeed actors) against TRL's ``GRPOTrainer``, measured in one run.

Both sides get the same random-weight Llama, the same arithmetic prompts in the same order, the same samples
per prompt, batch, lengths, temperature, learning rate, precision (fp32 on CPU) and a dense reward (the share of
digit characters, so advantages are non-zero and the update does real work), with no KL term and one optimizer
step per generation round. Two workloads:

* ``max``: the random model almost never stops, so every response runs to ``--max-new-tokens``;
* ``longtail``: the same model with its EOS logit raised (a constant feature in the embeddings and a weight on
  it in the EOS row of the output head) so lengths spread from a few tokens to the maximum, mean about a third
  of it: what real responses look like, and where continuous batching and packing pay.

The machine's limit is printed beside: the step's FLOPs (6 x params x trained tokens for the update,
2 x params x generated tokens for generation) over this machine's fp32 matmul rate measured in the same run,
and each side's fraction of it. Sides run interleaved ``--repeats`` times (raylhf, TRL, raylhf, TRL, ...), each
in its own child process, one after the other, so they never compete for the cores; the report gives medians and
the min-max spread. The last two lines of stdout are

    limit_fraction=<raylhf's median fraction of the limit on the max workload>
    ratio_samples_per_s=<median raylhf/TRL samples/s on the longtail workload>

    .venv/bin/python benchmarks/grpo_vs_trl.py                       # full size (~21 minutes on 2 idle cores)
    .venv/bin/python benchmarks/grpo_vs_trl.py --hidden 128 --layers 2 --heads 4 --kv-heads 2 --steps 1 \
        --max-new-tokens 16 --repeats 1                              # smoke
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
CALIBRATION_SAMPLES = 2  # longtail: sampled continuations per prompt that calibrate the EOS weight


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
    p.add_argument("--cooldown", type=int, default=1,
                   help="steps run last and not measured on either side (a pipelined run's last step has no next "
                        "step to generate, so it would flatter the steady state)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="max response length (tokens)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step")
    p.add_argument("--samples-per-prompt", type=int, default=8, help="completions per prompt (group size)")
    p.add_argument("--micro-batch-size", type=int, default=16,
                   help="sequences per forward/backward on both sides (raylhf policy.micro_batch_size; TRL "
                        "per_device_train_batch_size, with gradient accumulation up to one generation round)")
    p.add_argument("--token-budget", choices=["on", "off"], default="on",
                   help="on: raylhf forms micro-batches by policy.max_tokens_per_micro_batch = micro-batch size x "
                        "(longest prompt + max new tokens), the most tokens one of TRL's padded micro-batches can "
                        "hold (same peak activation memory); off: micro-batch-size sequences on both sides")
    p.add_argument("--lr", type=float, default=1e-8,
                   help="learning rate (both sides). Small so the workload stays put: the update costs the same at "
                        "any rate, but at 1e-6 three steps of learning moved the longtail mean length from 38 to "
                        "88 tokens on one side and 68 on the other (their samples differ), so the sides no longer "
                        "ran the same workload; at 1e-12 it stayed at 44-49")
    p.add_argument("--trl-loss-type", default="dapo", choices=["dapo", "grpo"],
                   help="TRL loss_type; dapo = token mean over the whole batch, like raylhf's token-mean")
    p.add_argument("--actor-threads", type=int, default=None,
                   help="CPUs (torch threads) of both raylhf's policy actor and its vLLM engine; default: "
                        "GRPOConfig's policy.num_cpus_per_worker and rollout.num_cpus_per_engine")
    p.add_argument("--trl-threads", type=int, default=0,
                   help="torch threads of the TRL process; 0 leaves torch's default (all cores)")
    p.add_argument("--workloads", default="max,longtail",
                   help="comma-separated: max (responses run to max length), longtail (EOS raised)")
    p.add_argument("--longtail-mean", type=float, default=1 / 3,
                   help="longtail: target mean response length as a fraction of --max-new-tokens")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per side and workload")
    p.add_argument("--reward", choices=["digits", "accuracy"], default="digits",
                   help="digits: share of digit characters (dense); accuracy: the arithmetic answer (all 0 for a "
                        "random model, so every advantage is 0)")
    p.add_argument("--async-steps", type=int, default=None,
                   help="raylhf grpo.async_steps (default: GRPOConfig's)")
    p.add_argument("--profile", action="store_true",
                   help="raylhf runs with --profile (phase breakdown + policy-step trace in each run dir)")
    p.add_argument("--trl-vllm", action="store_true",
                   help="also try TRL with use_vllm=True, vllm_mode=colocate (vLLM CPU build) once per workload")
    p.add_argument("--skip-raylhf", action="store_true", help="run only TRL (debugging; no ratio line)")
    p.add_argument("--skip-trl", action="store_true", help="run only raylhf (debugging; no ratio line)")
    p.add_argument("--workdir", default=None, help="model, run dirs and results go here; default a temp dir")
    # internal: how the parent starts one side in a child process
    p.add_argument("--side", choices=["raylhf", "trl", "trl-vllm"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.intermediate is None:
        args.intermediate = 3 * args.hidden
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workload_list or set(args.workload_list) - {"max", "longtail"}:
        p.error(f"--workloads takes max and/or longtail, got {args.workloads!r}")
    if args.samples_per_prompt < 2:
        p.error("--samples-per-prompt must be >= 2 (GRPO compares samples within a group)")
    per_step = args.prompts_per_step * args.samples_per_prompt
    if per_step % args.micro_batch_size:
        p.error(f"--micro-batch-size ({args.micro_batch_size}) must divide the samples per step ({per_step})")
    return args


def samples_per_step(args: argparse.Namespace) -> int:
    return args.prompts_per_step * args.samples_per_prompt


def total_steps(args: argparse.Namespace) -> int:
    return args.warmup + args.steps + args.cooldown


def problems(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exactly the prompts of every step, in order; both sides read them unshuffled."""
    from raylhf.demo.tasks.arithmetic import make_problems

    return make_problems(total_steps(args) * args.prompts_per_step, seed=DATA_SEED, max_operand=MAX_OPERAND)


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_ids(tok: Any, prompt: str) -> list[int]:
    """The chat-rendered prompt's token ids, as both sides feed them to generation (``apply_chat_template``
    returns a BatchEncoding in transformers 5: its ``len`` counts keys, not tokens)."""
    return list(tok.apply_chat_template(user_turn(prompt), tokenize=True, add_generation_prompt=True,
                                        return_dict=True)["input_ids"])


# ---------------------------------------------------------------------------------------------------------
# raylhf side (child process)
# ---------------------------------------------------------------------------------------------------------
def run_raylhf(args: argparse.Namespace, model_dir: str, workdir: Path) -> dict[str, Any]:
    import ray

    from raylhf.config import GRPOConfig, build_config
    from raylhf.data import PromptExample
    from raylhf.trainers.grpo import run_grpo

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
        ("reward.functions", [reward_spec(args)]),  # the same function on the TRL side
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
    if args.token_budget == "on":
        overrides.append(("policy.max_tokens_per_micro_batch", token_budget(args, model_dir)))
    if args.async_steps is not None:
        overrides.append(("grpo.async_steps", args.async_steps))
    if args.profile:
        overrides.append(("runtime.profile", True))
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
            "reward_mean": row.get("reward/mean"),
        })
    threads = {"policy": max(1, int(cfg.policy.num_cpus_per_worker)),
               "engine": max(1, int(cfg.rollout.num_cpus_per_engine))}
    return {"side": "raylhf", "steps": steps, "wall_s": wall, "threads": threads,
            "run_dir": str(res.run_dir)}


# ---------------------------------------------------------------------------------------------------------
# TRL side (child process)
# ---------------------------------------------------------------------------------------------------------
def reward_spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.reward == "digits":
        return {"name": f"{ROOT / 'benchmarks' / 'bench_rewards.py'}:digit_fraction"}
    return {"name": "accuracy", "kwargs": {"strict": False}}


TRL_REWARD_MEANS: list[float] = []  # one per generation round (= optimizer step)


def trl_digit_fraction(completions: list[Any], **kw: Any) -> list[float]:
    from benchmarks.bench_rewards import digit_fraction

    out = digit_fraction(completions, **kw)
    TRL_REWARD_MEANS.append(sum(out) / max(1, len(out)))
    return out


def trl_accuracy(completions: list[Any], solution: list[Any], **_: Any) -> list[float]:
    """raylhf's ``accuracy`` reward; TRL passes chat completions as message lists, so take their text."""
    from rewards.orm import accuracy

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return accuracy(texts, solution)


def run_trl(args: argparse.Namespace, model_dir: str, workdir: Path, use_vllm: bool = False) -> dict[str, Any]:
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
        use_vllm=use_vllm,
        **({"vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3, "vllm_enable_sleep_mode": False}
           if use_vllm else {}),
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if config.generation_batch_size != n:
        raise RuntimeError(f"TRL generation_batch_size is {config.generation_batch_size}, expected {n}")
    timer = StepTimer()
    cls = TimedGRPOTrainer if timed else GRPOTrainer
    reward_fn = trl_digit_fraction if args.reward == "digits" else trl_accuracy
    trainer = cls(model=model, reward_funcs=[reward_fn], args=config, train_dataset=dataset,
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
            "reward_mean": TRL_REWARD_MEANS[k - 1] if len(TRL_REWARD_MEANS) >= k else logged.get("reward"),
        })
    return {"side": "trl-vllm" if use_vllm else "trl", "steps": steps, "wall_s": wall, "threads": torch.get_num_threads(),
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


def expected_length(base_eos: Any, h0: Any, rest: Any, w: float) -> float:
    """E[response length] when EOS's logit at each sampled position is ``base_eos + w * h0``.

    The rows are contexts sampled with EOS suppressed, i.e. exactly the model's paths conditioned on not having
    stopped yet (raising EOS changes only when a response stops, not what it says before), so
    E[len] = mean over rows of sum_t prod_{s<t} (1 - p_s), where p_s is EOS's probability at position s."""
    import torch

    p = torch.sigmoid(base_eos + w * h0 - rest)  # [rows, max_len]
    alive = torch.cumprod(1 - p, dim=1)
    survive = torch.cat([torch.ones_like(alive[:, :1]), alive[:, :-1]], dim=1)  # P(no stop before t)
    return float(survive.sum(dim=1).mean())


def longtail_model(base: Path, args: argparse.Namespace) -> Path:
    """A copy of ``base`` whose EOS logit is raised so response lengths spread (mean ~ longtail_mean x max).

    A random Llama has no bias to raise, so the copy gets one: embedding feature 0 becomes a constant, which
    dominates the final RMS-normed state's feature 0 at every position, and the EOS row of the output head gets a
    weight ``w`` on it. ``w`` is calibrated on the contexts the benchmark really samples: every step's prompts,
    continued by the model at the benchmark's temperature with EOS suppressed; the expected length under ``w``
    follows from EOS's probability at each of those positions (:func:`expected_length`), and bisection finds the
    ``w`` whose expected length is the target. Everything else is the base model, on both sides."""
    import torch
    from transformers import AutoModelForCausalLM

    from raylhf.assets import load_tokenizer

    target = args.longtail_mean * args.max_new_tokens
    out = base.parent / f"{base.name}-eos{target:.0f}-sampled"
    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tok = load_tokenizer(str(base))
    eos = int(model.config.eos_token_id if isinstance(model.config.eos_token_id, int)
              else model.config.eos_token_id[0])
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[eos, 0] = 0.0
        rows = []
        for r in problems(args):
            ids = torch.tensor([chat_ids(tok, r["prompt"])])
            seqs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  temperature=1.0, top_p=1.0, top_k=0,  # as both sides sample
                                  max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                  suppress_tokens=[eos], num_return_sequences=CALIBRATION_SAMPLES,
                                  pad_token_id=eos)
            hidden = model.model(input_ids=seqs).last_hidden_state[:, ids.shape[1] - 1:-1]  # predicts each new token
            logits = model.lm_head(hidden)
            others = logits.clone()
            others[..., eos] = float("-inf")
            rows.append((logits[..., eos], hidden[..., 0], torch.logsumexp(others, dim=-1)))
        base_eos, h0, rest = (torch.cat(x) for x in zip(*rows, strict=True))
        lo, hi = -50.0, 50.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if expected_length(base_eos, h0, rest, mid) > target else (lo, mid)
        w = (lo + hi) / 2
        model.lm_head.weight[eos, 0] = w
    model.save_pretrained(out)
    tok.save_pretrained(str(out))
    for extra in ("generation_config.json",):
        if (base / extra).exists() and not (out / extra).exists():
            (out / extra).write_text((base / extra).read_text())
    k = CALIBRATION_SAMPLES * args.prompts_per_step  # rows per step
    per_step = [expected_length(base_eos[i:i + k], h0[i:i + k], rest[i:i + k], w) for i in range(0, len(h0), k)]
    log(f"longtail model {out}: EOS weight {w:.4f}, expected length {expected_length(base_eos, h0, rest, w):.1f} "
        f"of {args.max_new_tokens} over {base_eos.shape[0]} sampled contexts; by step: "
        + " ".join(f"{x:.1f}" for x in per_step))
    return out


def matmul_gflops(rows: int, hidden: int, intermediate: int, seconds: float = 3.0) -> float:
    """This machine's fp32 matmul rate (GFLOP/s, all cores): [rows, hidden] x [hidden, intermediate], the median
    of repeated runs for ``seconds`` (sustained, not the best burst)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(rows, hidden), torch.randn(hidden, intermediate)
    for _ in range(3):
        a @ b
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * rows * hidden * intermediate / median(times) / 1e9


def prompt_lengths(args: argparse.Namespace, model_dir: str | Path) -> list[int]:
    """Chat-rendered token count of every step's prompts, in order."""
    from raylhf.assets import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    return [len(chat_ids(tok, r["prompt"])) for r in problems(args)]


def token_budget(args: argparse.Namespace, model_dir: str | Path) -> int:
    """raylhf's micro-batch token budget under ``--token-budget on``: micro-batch size x the longest padded row
    one of TRL's micro-batches can have (longest chat-rendered prompt + max new tokens)."""
    return args.micro_batch_size * (max(prompt_lengths(args, model_dir)) + args.max_new_tokens)


def prompt_tokens_per_step(args: argparse.Namespace, model_dir: Path) -> list[float]:
    """Chat-rendered prompt tokens of each step's prompts (x samples per prompt): what both sides train on."""
    lens = prompt_lengths(args, model_dir)
    k = args.prompts_per_step
    return [sum(lens[i * k:(i + 1) * k]) * args.samples_per_prompt for i in range(total_steps(args))]


def _prod(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def run_side(side: str, argv: list[str], model_dir: Path, workdir: Path, tag: str) -> dict[str, Any] | None:
    result = workdir / f"result-{tag}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side,
           "--model-dir", str(model_dir), "--result", str(result), "--workdir", str(workdir)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log(f"--- {tag}: starting child process")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stderr, env=env, check=False)
    if proc.returncode != 0 or not result.exists():
        if side == "trl-vllm":
            return None  # optional: reported as not run
        raise SystemExit(f"[bench] the {tag} run failed (exit code {proc.returncode}); see the log above")
    log(f"--- {tag}: done in {time.perf_counter() - t0:.1f}s (process wall time, start-up included)")
    return json.loads(result.read_text())


def summarize(res: dict[str, Any], args: argparse.Namespace, n_params: int, rate: float, decode_rate: float,
              prompt_tokens: list[float]) -> dict[str, float | None]:
    """Means over the measured steps of one run, and its fraction of the machine's limit."""
    warmup = args.warmup
    measured = [s for s in res["steps"] if warmup < s["step"] <= warmup + args.steps]
    if not measured:
        raise SystemExit(f"[bench] {res['side']}: no measured steps (history has {len(res['steps'])} steps)")
    t = sum(s["time_step"] for s in measured)
    samples = sum(s["samples"] for s in measured)
    tokens = sum(s["gen_tokens"] for s in measured)
    trained = tokens + sum(prompt_tokens[s["step"] - 1] for s in measured)
    flops = 6 * n_params * trained + 2 * n_params * tokens
    limit_s = flops / (rate * 1e9)
    shaped_s = 6 * n_params * trained / (rate * 1e9) + 2 * n_params * tokens / (decode_rate * 1e9)
    gens = [s["time_generate"] for s in measured if s.get("time_generate") is not None]
    gen_t = sum(gens) / len(gens) if len(gens) == len(measured) else None
    rewards = [s["reward_mean"] for s in measured if s.get("reward_mean") is not None]
    out: dict[str, float | None] = {
        "time_step": t / len(measured),
        "time_generate": gen_t,
        "time_rest": t / len(measured) - gen_t if gen_t is not None else None,
        "len_mean": tokens / samples,
        "tokens_per_s": tokens / t,
        "samples_per_s": samples / t,
        "limit_s": limit_s / len(measured),
        "limit_fraction": limit_s / t,
        "shaped_fraction": shaped_s / t,
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
    }
    if res["side"] == "raylhf":
        for key in ("time_train", "time_sync"):
            out[key] = sum(s[key] for s in measured) / len(measured)
    return out


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2


def spread(xs: list[float | None], spec: str) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "n/a"
    text = format(median(vals), spec)
    return text if len(vals) == 1 else f"{text} [{format(min(vals), spec)}-{format(max(vals), spec)}]"


def header(args: argparse.Namespace, n_params: int, rate: float, decode_rate: float) -> None:
    n = samples_per_step(args)
    print(f"model: random Llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
          f"kv_heads={args.kv_heads} intermediate={args.intermediate} params={n_params / 1e6:.2f}M (fp32, CPU)")
    print(f"batch: {args.prompts_per_step} prompts x {args.samples_per_prompt} samples = {n} samples/step, "
          f"max_new_tokens={args.max_new_tokens}, temperature=1.0, beta=0, 1 update/batch, lr={args.lr:g}, "
          f"micro_batch={args.micro_batch_size} sequences"
          f"{' (raylhf: the same peak tokens, packed by a token budget)' if args.token_budget == 'on' else ''}; "
          f"reward={args.reward}; {args.warmup} warm-up + {args.steps} "
          f"measured steps per run, {args.repeats} interleaved runs per side and workload")
    print(f"machine: {os.cpu_count()} CPUs, fp32 matmul {rate:.1f} GFLOP/s at the update's shapes "
          f"([{args.micro_batch_size * 128}, {args.hidden}] x [{args.hidden}, {args.intermediate}], median, measured "
          f"now); {decode_rate:.1f} GFLOP/s at one decode step's ([{samples_per_step(args)}, {args.hidden}] x ...)")
    print("limit = (6 x params x trained tokens + 2 x params x generated tokens) / the update-shape rate; "
          "'limit, decode at decode rate' counts generation at the decode-shape rate instead")


def report_workload(name: str, runs: dict[str, list[dict[str, float | None]]], per_step: list[str]) -> float | None:
    """Print one workload's table; returns the median raylhf/TRL samples/s ratio (None without both sides)."""
    print()
    print(f"== workload {name} ==")
    for line in per_step:
        print(line)
    sides = [s for s in ("raylhf", "trl", "trl-vllm") if runs.get(s)]
    rows = [("step time (s)", "time_step", ".2f"), ("  generate (s)", "time_generate", ".2f"),
            ("  rest: reward+train+sync (s)", "time_rest", ".2f"), ("  raylhf train (s)", "time_train", ".2f"),
            ("  raylhf sync (s)", "time_sync", ".2f"), ("mean response length", "len_mean", ".1f"),
            ("gen tokens/s", "tokens_per_s", ".1f"), ("samples/s", "samples_per_s", ".3f"),
            ("limit step time (s)", "limit_s", ".2f"), ("fraction of the limit", "limit_fraction", ".3f"),
            ("  limit, decode at decode rate", "shaped_fraction", ".3f"),
            ("reward mean", "reward_mean", ".3f")]
    print(f"{'median [min-max] over runs':<30}" + "".join(f"{s:>24}" for s in sides))
    for label, key, spec in rows:
        cells = [spread([r.get(key) for r in runs[s]], spec) for s in sides]
        if all(c == "n/a" for c in cells):
            continue
        print(f"{label:<30}" + "".join(f"{c:>24}" for c in cells))
    if not (runs.get("raylhf") and runs.get("trl")):
        return None
    ratios = [a["samples_per_s"] / b["samples_per_s"]  # type: ignore[operator]
              for a, b in zip(runs["raylhf"], runs["trl"], strict=False)]
    print(f"{'raylhf/TRL samples/s':<30}{spread(list(ratios), '.3f'):>24}  (per interleaved pair)")
    return median(ratios)


def child(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    load_before = os.getloadavg()[0]
    if args.side == "raylhf":
        res = run_raylhf(args, args.model_dir, workdir)
    else:
        res = run_trl(args, args.model_dir, workdir, use_vllm=args.side == "trl-vllm")
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
        base, n_params = prepare_model(args, workdir)
        models = {"max": base}
        if "longtail" in args.workload_list:
            models["longtail"] = longtail_model(base, args)
        prompt_tokens = prompt_tokens_per_step(args, base)
        # the update's matmuls: a micro-batch of tokens x the model's widths; generation's: one row per sequence
        rate = matmul_gflops(args.micro_batch_size * 128, args.hidden, args.intermediate)
        decode_rate = matmul_gflops(samples_per_step(args), args.hidden, args.intermediate)
    log(f"model {base}: {n_params / 1e6:.2f}M parameters; matmul {rate:.1f} GFLOP/s (decode shape {decode_rate:.1f})")
    sides = [s for s, skip in (("raylhf", args.skip_raylhf), ("trl", args.skip_trl)) if not skip]
    medians: dict[str, float | None] = {}
    fractions: dict[str, list[float]] = {}
    header(args, n_params, rate, decode_rate)
    for workload in args.workload_list:
        runs: dict[str, list[dict[str, float | None]]] = {s: [] for s in [*sides, "trl-vllm"]}
        per_step = ["(* = warm-up / cool-down, not measured)", f"{'run':<16} {'step':>5} {'time_s':>8} {'gen_s':>8} {'len_mean':>9} {'samples/s':>10}"]
        for r in range(args.repeats):
            for side in sides + (["trl-vllm"] if args.trl_vllm and r == 0 else []):
                tag = f"{workload}-{side}-{r + 1}"
                res = run_side(side, argv, models[workload], workdir, tag)
                if res is None:
                    log(f"{tag}: TRL with vLLM colocate did not run here (see its log above)")
                    continue
                runs[side].append(summarize(res, args, n_params, rate, decode_rate, prompt_tokens))
                for s in res["steps"]:
                    mark = " " if args.warmup < s["step"] <= args.warmup + args.steps else "*"
                    per_step.append(f"{tag:<16} {s['step']:>4}{mark} {s['time_step']:>8.2f} "
                                    f"{fmt(s.get('time_generate')):>8} {s['gen_tokens'] / s['samples']:>9.1f} "
                                    f"{s['samples'] / s['time_step']:>10.3f}")
        if args.trl_vllm and not runs["trl-vllm"]:
            per_step.append("trl-vllm: TRL GRPOTrainer(use_vllm=True, vllm_mode='colocate') did not run on this "
                            "machine (its log is on stderr)")
        medians[workload] = report_workload(workload, runs, per_step)
        fractions[workload] = [r["limit_fraction"] for r in runs.get("raylhf", [])]  # type: ignore[misc]
    print()
    if fractions.get("max"):
        print(f"limit_fraction={median(fractions['max']):.3f}")
    if medians.get("longtail") is not None:
        print(f"ratio_samples_per_s={medians['longtail']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
