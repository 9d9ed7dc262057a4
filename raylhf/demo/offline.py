"""The offline trainers' demos (SFT, DPO, KTO, RM, GKD with no data files) and best-of-N sampling's: generated
data from the arithmetic task, the cached SFT warm-up where a trainer starts from it, and the before / after
report lines. See docs/architecture.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from raylhf.assets import load_tokenizer
from raylhf.config import (
    DemoConfig,
    DPOConfig,
    GKDConfig,
    GRPOConfig,
    KTOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
)
from raylhf.data import end_of_turn_id, render_prompt
from raylhf.data.pairs import UnpairedExample
from raylhf.demo.tasks.chat_data import demo_chat_splits
from raylhf.demo.tasks.demo_data import demo_splits
from raylhf.demo.tasks.distill_data import distill_splits
from raylhf.demo.tasks.dpo_pairs import preference_splits, unpaired_splits
from raylhf.demo.tasks.rm_pairs import arithmetic_pair_splits
from raylhf.demo.warmup import warmup_policy
from raylhf.driver.cluster import init_ray, resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.startup import required_cpus
from raylhf.tools.sample import run_sample
from raylhf.trainers import gkd, rm, sft
from raylhf.trainers.dpo import run_dpo
from raylhf.trainers.kto import run_kto
from rewards.orm import accuracy, exact_match


def sft_demo(cfg: SFTConfig) -> int:
    """Generated two-turn chats and their held-out set (no warm-up: SFT is the warm-up's own trainer)."""
    train, heldout = demo_chat_splits(cfg.demo)
    res = sft.run_sft(cfg, examples=train, eval_examples=heldout)
    sft.report(res.checkpoint, res.history)
    return 0


def dpo_demo(cfg: DPOConfig) -> int:
    """The cached SFT warm-up, then DPO on one pair per training prompt; prints the held-out preference accuracy
    and the greedy accuracy before / after."""
    return _preference_demo(cfg, "dpo", run_dpo, preference_splits)


def kto_demo(cfg: KTOConfig) -> int:
    """The cached SFT warm-up, then KTO on one labelled answer per training prompt; prints the held-out metrics
    and the greedy accuracy before / after."""

    def splits(demo: Any) -> tuple[list[UnpairedExample], list[UnpairedExample], list[Any]]:
        train_rows, held_rows, prompts = unpaired_splits(demo)
        return _unpaired(train_rows), _unpaired(held_rows), prompts

    return _preference_demo(cfg, "kto", run_kto, splits)


def _unpaired(rows: list[dict[str, Any]]) -> list[UnpairedExample]:
    return [UnpairedExample([{"role": "user", "content": r["prompt"]}], r["completion"], r["label"]) for r in rows]


def _preference_demo(cfg: Any, name: str, run: Callable[..., RunResult],
                     splits: Callable[[Any], tuple[list[Any], list[Any], list[Any]]]) -> int:
    """The DPO / KTO demo: the cached SFT warm-up, ``run`` on the demo rows ``splits(cfg.demo)`` gives (train,
    held-out, prompts for the greedy check), and the before / after report."""
    init_ray(cfg.ray, required_cpus(cfg, ["policy", "reference"]))
    start = warmup_policy(cfg)
    train, heldout, prompts = splits(cfg.demo)
    greedy_before = greedy_accuracy(start, prompts)
    res = run(cfg, model_path=start, train=train, heldout=heldout)
    greedy_after = greedy_accuracy(res.checkpoint, prompts) if res.checkpoint else {}
    preference_report(res, greedy_before, greedy_after, len(heldout), len(prompts), name)
    return 0


def rm_start_policy(cfg: RMConfig) -> str:
    """model.path; with none, the GRPO demo's SFT warm-up policy (cached) when ``demo.warmup``, else the tiny
    random model. The warm-up knows the task's format and some arithmetic, which the reward model builds on."""
    if cfg.model.path or not cfg.demo.warmup:
        return resolve_model_path(cfg.model)
    return warmup_policy(GRPOConfig(model=cfg.model, demo=DemoConfig(cache_dir=cfg.demo.cache_dir),
                                    logging=cfg.logging, ray=cfg.ray, seed=cfg.seed))


def rm_demo(cfg: RMConfig) -> int:
    """The synthetic arithmetic pairs (right equation vs a wrong answer / another style), from the warm-up
    policy; prints the held-out pair accuracy before / after, overall and per kind."""
    init_ray(cfg.ray, required_cpus(cfg, ["policy"]))
    start = rm_start_policy(cfg)
    train, heldout = arithmetic_pair_splits(cfg.demo.num_train, cfg.demo.num_heldout,
                                            max_operand=cfg.demo.max_operand)
    res = rm.run_rm(cfg, model_path=start, train=train, heldout=heldout)
    b, a = res.eval_before, res.eval_after
    kinds = ", ".join(f"{k.removeprefix('eval/accuracy_')} {b.get(k, float('nan')):.3f} -> {v:.3f}"
                      for k, v in a.items() if k.startswith("eval/accuracy_"))
    print(f"rm: per kind of rejected reply: {kinds}", flush=True)
    rm.report(res)
    if res.checkpoint:
        link = res.run_dir / "start_policy"
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(Path(start).resolve(), target_is_directory=True)
        print(f"rm: the policy it started from: {link} (examples/configs/grpo_with_rm.yaml starts GRPO there)",
              flush=True)
    return 0


def sft_rows(name: str, cfg: SFTConfig) -> tuple[list[Any], list[Any]]:
    """The SFT demo's (train, held-out) chats (what ``raylhf eval sft`` uses without data files)."""
    return demo_chat_splits(cfg.demo)  # type: ignore[return-value]


def rm_rows(name: str, cfg: RMConfig) -> tuple[list[Any], list[Any]]:
    """The RM demo's (train, held-out) pairs (what ``raylhf eval rm`` uses without data files)."""
    return arithmetic_pair_splits(cfg.demo.num_train, cfg.demo.num_heldout,  # type: ignore[return-value]
                                  max_operand=cfg.demo.max_operand)


def gkd_teacher(cfg: GKDConfig) -> str:
    """teacher.path, else the GRPO demo's SFT warm-up policy (cached; trained on first use)."""
    if cfg.teacher.path:
        return cfg.teacher.path
    return warmup_policy(GRPOConfig(demo=DemoConfig(cache_dir=cfg.demo.cache_dir), logging=cfg.logging, ray=cfg.ray,
                                    seed=cfg.seed))


def gkd_demo(cfg: GKDConfig) -> int:
    """The demo's arithmetic demonstrations, the warm-up policy as the teacher, the tiny random model (or
    model.path) as the student; prints the held-out KL before / after."""
    init_ray(cfg.ray, required_cpus(cfg, ["policy", "rollout", "teacher"]))
    teacher = gkd_teacher(cfg)
    train, heldout = distill_splits(cfg.demo.num_train, cfg.demo.num_heldout)
    gkd.report(gkd.run_gkd(cfg, teacher_path=teacher, train=train, heldout=heldout))
    return 0


def sample_demo(cfg: SampleConfig) -> int:
    """Best-of-N sampling of the embedded arithmetic task's prompts."""
    prompts = demo_splits(cfg.demo)[0]
    print(f"[sample] no data.train_files: sampling the embedded arithmetic task ({len(prompts)} prompts)", flush=True)
    run_sample(cfg, prompts)
    return 0


def greedy_accuracy(model_path: str, prompts: Sequence[Any], max_new_tokens: int = 16, batch_size: int = 200
                    ) -> dict[str, float]:
    """Greedy completions of an HF checkpoint (transformers ``generate`` on the driver) for PromptExamples with
    ``equation`` / ``solution`` extras: ``greedy_accuracy`` (the exact equation, the asked form; the GRPO
    demo's verifier) and ``greedy_any_form_accuracy`` (the right number in any form)."""
    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    stop = [end_of_turn_id(tok), tok.eos_token_id]
    texts: list[str] = []
    for s in range(0, len(prompts), batch_size):
        ids = [render_prompt(tok, p.messages) for p in prompts[s: s + batch_size]]
        width = max(len(x) for x in ids)
        inp = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])  # left padding
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=inp, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tok.pad_token_id)
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    eqs = [p.extras["equation"] for p in prompts]
    sols = [p.extras["solution"] for p in prompts]
    exact = exact_match(texts, column="equation", equation=eqs)
    any_form = accuracy(texts, solution=sols)
    return {"greedy_accuracy": sum(v or 0.0 for v in exact) / max(1, len(prompts)),
            "greedy_any_form_accuracy": sum(v or 0.0 for v in any_form) / max(1, len(prompts))}


def preference_report(res: RunResult, greedy_before: dict[str, float], greedy_after: dict[str, float], n_pairs: int,
           n_prompts: int, name: str) -> dict[str, tuple[float, float]]:
    """Print and return the default run's before / after figures (held-out preference metrics, greedy accuracy)."""
    nan = float("nan")
    out = {"rewards/accuracies": (res.eval_before.get("eval/rewards/accuracies", nan),
                                  res.eval_after.get("eval/rewards/accuracies", nan)),
           "loss": (res.eval_before.get("eval/loss", nan), res.eval_after.get("eval/loss", nan))}
    for k in ("greedy_accuracy", "greedy_any_form_accuracy"):
        out[k] = (greedy_before.get(k, nan), greedy_after.get(k, nan))
    (a0, a1), (l0, l1) = out["rewards/accuracies"], out["loss"]
    print(f"{name}: held-out preference accuracy before={a0:.3f} after={a1:.3f}; loss before={l0:.4f} "
          f"after={l1:.4f} ({n_pairs} held-out {'pairs' if name != 'kto' else 'examples'})", flush=True)
    (g0, g1), (f0, f1) = out["greedy_accuracy"], out["greedy_any_form_accuracy"]
    print(f"{name}: greedy heldout_accuracy (the right equation) before={g0:.3f} after={g1:.3f}; any form "
          f"before={f0:.3f} after={f1:.3f} ({n_prompts} held-out prompts, transformers generate)", flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    return out
