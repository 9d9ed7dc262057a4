"""The embedded demo: `python -m raylhf.grpo` with no data files.

1. a tiny random Llama from the shipped tokenizer;
2. a short SFT warm-up on arithmetic demonstrations (the project's own SFT path), cached; the
   demonstrations answer in mixed styles although the prompt asks for the number only;
3. GRPO with a strict exact-match reward on more arithmetic prompts: the policy learns to answer as asked;
4. greedy held-out accuracy before and after, printed as one line.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from raylhf.config import GRPOConfig, SFTConfig
from raylhf.config.schema import DemoConfig, SFTAlgoConfig
from raylhf.data import PromptExample, SFTExample
from raylhf.tasks.arithmetic import make_problems

INSTRUCTION = " Reply with the equation, like 2+3=5."
# How the warm-up demonstrations answer: a mix of styles, as a pool of sloppy annotators would write, and a
# share of them wrong. Only the first style follows the instruction, and the verifier rewards only a right
# equation. The equation is also where a small model computes best (it restates the operands first), so
# RL that moves the policy to the asked form and away from the wrong answers raises correctness too.
STYLES = ("{q}={x}", "{x}", "The answer is {x}.")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text + INSTRUCTION}]


def _heldout_rows(demo: DemoConfig) -> list[dict[str, str]]:
    return make_problems(demo.num_heldout, seed=11, max_operand=demo.max_operand)


def demo_splits(demo: DemoConfig) -> tuple[list[PromptExample], list[PromptExample]]:
    """(train prompts, held-out prompts): disjoint problems."""
    heldout_rows = _heldout_rows(demo)
    seen = {r["prompt"] for r in heldout_rows}
    train_rows = [r for r in make_problems(demo.num_train * 2, seed=10, max_operand=demo.max_operand) if r["prompt"] not in seen][: demo.num_train]
    to_ex = lambda rows: [PromptExample(_user(r["prompt"]), {"solution": r["solution"], "equation": r["equation"]})  # noqa: E731
                          for r in rows]
    return to_ex(train_rows), to_ex(heldout_rows)


def demo_sft_examples(demo: DemoConfig) -> list[SFTExample]:
    """Warm-up demonstrations: mixed answer styles, and a share ``demo.sft_noise`` of wrong answers (off by
    1-9), as a pool of sloppy annotators would write. Imitation learns the styles and the mistakes."""
    heldout = {r["prompt"] for r in _heldout_rows(demo)}
    rows = [r for r in make_problems(demo.sft_examples * 2, seed=12, max_operand=demo.max_operand) if r["prompt"] not in heldout]
    rng = random.Random(13)
    out = []
    for r in rows[: demo.sft_examples]:
        question = r["prompt"].removeprefix("What is ").removesuffix("?")
        answer = int(r["solution"])
        if rng.random() < demo.sft_noise:
            answer = max(0, answer + rng.choice([-1, 1]) * rng.randint(1, 9))
        out.append(SFTExample(_user(r["prompt"]), rng.choice(STYLES).format(x=answer, q=question)))
    return out


def warmup_policy(cfg: GRPOConfig) -> str:
    """The SFT warm-up checkpoint for this demo config (trained once, then cached)."""
    from raylhf.runtime import cache_root

    sft_cfg = SFTConfig(
        model=cfg.model, policy=cfg.policy.model_copy(update={"lr": cfg.demo.sft_lr, "micro_batch_size": 32, "num_cpus_per_worker": 2,
                                                                 "lr_scheduler": "cosine", "warmup_steps": 10}),
        sft=SFTAlgoConfig(num_steps=max(1, cfg.demo.sft_steps), batch_size=32, max_length=64),
        logging=cfg.logging.model_copy(update={"run_name": None}), ray=cfg.ray, seed=cfg.seed,
    )
    examples = demo_sft_examples(cfg.demo)
    # only what shapes the weights: not logging, placement, checkpointing or the run's guards
    key_src = json.dumps({"sft": sft_cfg.model_dump(mode="json", exclude={"logging": True, "ray": True,
                                                                          "checkpoint": True, "runtime": True,
                                                                          "policy": {"num_cpus_per_worker"}}),
                          "data": [[e.messages, e.response] for e in examples]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    root = Path(cfg.demo.cache_dir) if cfg.demo.cache_dir else cache_root() / "demo"
    target = root / f"sft-warmup-{key}"
    if (target / "config.json").exists():
        print(f"[demo] using cached SFT warm-up policy {target}", flush=True)
        return str(target)
    if cfg.demo.sft_steps == 0:
        from raylhf.runtime import resolve_model_path

        return resolve_model_path(cfg.model)
    print(f"[demo] SFT warm-up: {sft_cfg.sft.num_steps} steps on {cfg.demo.sft_examples} demonstrations", flush=True)
    from raylhf.sft import run_sft

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run_sft(sft_cfg, examples=examples, save_to=tmp)
    tmp.rename(target)
    return str(target)


def run_demo(cfg: GRPOConfig) -> tuple[float, float]:
    from raylhf.grpo import required_cpus, run_grpo
    from raylhf.runtime import init_ray

    init_ray(cfg.ray, required_cpus(cfg))  # sized for GRPO before the SFT warm-up uses it
    start = warmup_policy(cfg)
    train, heldout = demo_splits(cfg.demo)
    res = run_grpo(cfg, model_path=start, train=train, heldout=heldout)
    def pair(key: str) -> tuple[float, float]:
        return res.eval_before.get(key, float("nan")), res.eval_after.get(key, float("nan"))

    n, k, temp = len(heldout), cfg.grpo.eval_samples, cfg.grpo.eval_temperature
    if "eval/any_form_accuracy" in res.eval_after:
        (a0, a1), (ga0, ga1) = pair("eval/any_form_accuracy"), pair("eval/greedy_any_form_accuracy")
        print(f"demo: any-form heldout_accuracy (right number in any style) before={a0:.3f} after={a1:.3f}; "
              f"greedy before={ga0:.3f} after={ga1:.3f}", flush=True)
    (g0, g1), (before, after) = pair("eval/greedy_accuracy"), pair("eval/accuracy")
    print(f"demo: greedy heldout_accuracy before={g0:.3f} after={g1:.3f}; the line below is the asked form "
          f"(the right equation), mean@{k} at temperature {temp} on {n} held-out prompts", flush=True)
    print(f"demo: heldout_accuracy before={before:.3f} after={after:.3f}", flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    return before, after
