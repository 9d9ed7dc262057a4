"""Multi-turn rollout throughput: raylhf's independent episodes against the turn barrier, on the same engine.

The workload: 64 episodes a step (16 prompts x 4 samples) on the benchmark's 25.7M random Llama with its EOS
logit raised (``grpo_vs_trl.py``'s longtail model: a turn's length spreads from a few tokens to
``--turn-tokens``, mean about a third of it), talking to an environment whose step takes ``--env-latency-s``
(default 300 ms, an ``asyncio.sleep``: a remote tool or a simulator) and which ends each episode after a
long-tailed number of model turns, 1 to 6 (P = .35 .25 .15 .12 .08 .05), decided from the episode's first turn
(the same in both designs, since per-request seeds make the sampled tokens independent of batching).

* ``raylhf``: ``agent.barrier: false``, every episode a coroutine on the engine, model turn -> env step -> model
  turn on its own;
* ``barrier``: ``agent.barrier: true``, the same episodes on the same engine and limits, but every episode waits
  for all the others after each generation and each env step (the turn-barrier design; TRL-style synchronous
  multi-turn rollouts).

TRL's multi-turn GRPO (``tools=`` / ``environment_factory``) is not run: its loop continues an episode only when
the model's output parses as a tool call in the chat template's format, which a random model never writes, so it
cannot express this workload without a trained model (and tests and benchmarks never download one).

Designs run interleaved ``--repeats`` times (raylhf, barrier, raylhf, ...) in one process on one engine after a
warm-up step each; the report gives medians and min-max. The last line of stdout is

    ratio_episodes_per_s=<raylhf median / barrier median>

    .venv/bin/python benchmarks/agent_rollout.py                    # ~10 minutes on 2 idle cores
    .venv/bin/python benchmarks/agent_rollout.py --repeats 1 --prompts 4 --samples 2 --hidden 128 --layers 2 \
        --heads 4 --kv-heads 2                                        # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

ENV_PLUGIN = '''
import asyncio
import zlib

from raylhf.plugins import Env, register_env

TURNS_CDF = [0.35, 0.60, 0.75, 0.87, 0.95, 1.00]  # P(turns <= k), k = 1..6


@register_env("bench_latency")
class LatencyEnv(Env):
    """Each step sleeps env_config['latency_s']; the episode ends after a long-tailed number of model turns (1-6)
    drawn from a hash of its first model turn (so every design sees the same episodes)."""

    async def reset(self, config):
        self.steps, self.turns = 0, None
        return "", {}, ""

    async def step(self, messages):
        await asyncio.sleep(float(self.env_config.get("latency_s", 0.3)))
        self.steps += 1
        if self.turns is None:
            u = zlib.crc32(messages[-1]["content"].encode()) / 2**32
            self.turns = 1 + next(k for k, c in enumerate(TURNS_CDF) if u <= c)
        return f"observation {self.steps}", 0.0, self.steps >= self.turns, {}
'''


def log(msg: str) -> None:
    print(f"[agent_rollout] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="episodes per prompt")
    p.add_argument("--turn-tokens", type=int, default=48, help="tokens of one model turn at most")
    p.add_argument("--max-turns", type=int, default=6)
    p.add_argument("--env-latency-s", type=float, default=0.3, help="seconds one env step takes")
    p.add_argument("--max-concurrent-steps", type=int, default=16,
                   help="agent.max_concurrent_steps (its default; the old driver-side design ran 16 tool threads)")
    p.add_argument("--engine-cpus", type=int, default=2, help="CPUs (threads) of the one engine")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    return p.parse_args(argv)


def model_args(args: argparse.Namespace) -> argparse.Namespace:
    """grpo_vs_trl's arguments for its model helpers: the same random Llama, the EOS raised per turn."""
    import grpo_vs_trl

    return grpo_vs_trl.parse_args([
        "--hidden", str(args.hidden), "--layers", str(args.layers), "--heads", str(args.heads),
        "--kv-heads", str(args.kv_heads), "--max-new-tokens", str(args.turn_tokens), "--prompts-per-step", "8",
        "--samples-per-prompt", "2", "--micro-batch-size", "16", "--steps", "1"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import grpo_vs_trl
    import ray

    from raylhf.agent.multiturn import EpisodeProgram, EpisodeRunner
    from raylhf.config.run import RayConfig
    from raylhf.config.sections import RolloutConfig
    from raylhf.data import PromptExample, render_prompt
    from raylhf.demo.tasks.arithmetic import make_problems
    from raylhf.driver.cluster import init_ray
    from raylhf.driver.startup import start_rollout
    from raylhf.plugins.registry import activate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="raylhf-agent-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    margs = model_args(args)
    base, n_params = grpo_vs_trl.prepare_model(margs, work)
    model = grpo_vs_trl.longtail_model(base, margs)
    log(f"model {model} ({n_params / 1e6:.1f}M parameters)")
    plugin = work / "bench_env.py"
    plugin.write_text(ENV_PLUGIN)
    activate([str(plugin)], replace=True)  # the engine's process loads it too

    budget = args.max_turns * (args.turn_tokens + 24)
    init_ray(RayConfig(num_cpus=args.engine_cpus), args.engine_cpus)
    rollout = start_rollout(RolloutConfig(num_engines=1, num_cpus_per_engine=args.engine_cpus, temperature=1.0,
                                          max_new_tokens=budget), str(model), "float32", 512, "PACK")
    rows = make_problems(args.prompts * (1 + 2 * args.repeats), seed=7, max_operand=50)
    examples = [PromptExample([{"role": "user", "content": r["prompt"]}], {"solution": r["solution"]}) for r in rows]

    def runner(barrier: bool) -> EpisodeRunner:
        program = EpisodeProgram(tokenizer=str(model), max_turns=args.max_turns, env="bench_latency",
                                 env_config=json.dumps({"latency_s": args.env_latency_s}),
                                 max_concurrent_steps=args.max_concurrent_steps, max_turn_tokens=args.turn_tokens,
                                 timeout_s=60.0, barrier=barrier)
        r = EpisodeRunner(program, budget)
        r.prepare(examples)
        return r

    designs = {"raylhf": runner(False), "barrier": runner(True)}
    tok = designs["raylhf"].tokenizer
    batches = [[render_prompt(tok, ex.messages) for ex in examples[k * args.prompts:(k + 1) * args.prompts]]
               for k in range(1 + 2 * args.repeats)]
    results: dict[str, list[dict[str, float]]] = {d: [] for d in designs}
    for r in designs.values():  # warm-up: the engine's first requests and the env plugin's import
        r(rollout, batches[0], args.samples, seed=1)
    for rep in range(args.repeats):
        for k, (name, r) in enumerate(designs.items()):
            prompts = batches[1 + rep]  # both designs run the same prompts with the same seeds
            t0 = time.perf_counter()
            eps = r(rollout, prompts, args.samples, seed=100 + rep)
            took = time.perf_counter() - t0
            turns = [e.episode["turns"] for e in eps]
            model_tokens = sum(sum(e.response_mask or []) for e in eps)
            res = {"seconds": took, "episodes_per_s": len(eps) / took, "turns_mean": statistics.mean(turns),
                   "turns_max": max(turns), "model_tokens": model_tokens}
            results[name].append(res)
            log(f"repeat {rep + 1} {name:8s} {took:6.2f}s  {res['episodes_per_s']:.2f} episodes/s  turns mean "
                f"{res['turns_mean']:.2f} max {res['turns_max']}  model tokens {model_tokens:.0f}  ({k})")
    rollout.shutdown()
    ray.shutdown()

    def summary(name: str, key: str) -> str:
        xs = [r[key] for r in results[name]]
        return f"{statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f})"

    n = args.prompts * args.samples
    print(f"agent rollout: {n} episodes/step, {args.max_turns} turns max (long-tailed), turn <= {args.turn_tokens} "
          f"tokens (EOS raised), env step {args.env_latency_s * 1000:.0f} ms, one engine on {args.engine_cpus} CPUs, "
          f"{args.repeats} interleaved repeats")
    for name in designs:
        print(f"  {name:8s} step {summary(name, 'seconds')} s   episodes/s {summary(name, 'episodes_per_s')}   "
              f"turns mean {summary(name, 'turns_mean')}")
    same = [a["model_tokens"] == b["model_tokens"] for a, b in zip(results["raylhf"], results["barrier"],
                                                                   strict=True)]
    print(f"  same episodes in both designs (model tokens equal per repeat): {all(same)}")
    ratio = (statistics.median(r["episodes_per_s"] for r in results["raylhf"])
             / statistics.median(r["episodes_per_s"] for r in results["barrier"]))
    print(f"ratio_episodes_per_s={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
