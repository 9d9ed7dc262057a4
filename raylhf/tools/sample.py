"""`raylhf sample` (ms-swift's `swift sample`): best-of-N sampling for preference data.

N completions per prompt on the rollout actors (vLLM), scored by the configured rewards (functions,
plugin ORMs/PRMs, remote endpoints, reward models) on the reward actors, written to
``<output_dir>/samples.jsonl`` (one line per prompt: every completion with its scores) and
``<output_dir>/pairs.jsonl`` (best vs worst completion per prompt, ties skipped: a preference file
``data.format=preference`` reads as it is).

Resumable: prompts already in samples.jsonl are skipped. Each round is appended with one ``write`` and
fsynced, and a partial last line left by a crash is cut off on the next start, so a kill never leaves a
half line behind. pairs.jsonl is rewritten from samples.jsonl (temp file + rename) at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylhf.assets import load_tokenizer
from raylhf.config import SampleConfig
from raylhf.data import PromptExample, drop_long_prompts, load_from_config, render_prompt
from raylhf.driver import phases
from raylhf.driver.cluster import init_ray, resolve_model_path
from raylhf.driver.startup import Workers, required_cpus, reward_context, start_reward, start_rollout
from raylhf.plugins import registry


@dataclass
class SampleResult:
    samples_path: Path
    pairs_path: Path
    prompts: int
    skipped: int  # already in samples.jsonl before this run
    pairs: int


def prompt_keys(examples: list[PromptExample]) -> list[str]:
    """A stable id per prompt: hash of its messages and columns, plus an occurrence counter for repeats."""
    seen: dict[str, int] = {}
    keys = []
    for ex in examples:
        h = hashlib.sha1(json.dumps([ex.messages, ex.extras], sort_keys=True, default=str).encode()).hexdigest()[:16]
        seen[h] = seen.get(h, 0) + 1
        keys.append(f"{h}-{seen[h]}")
    return keys


def read_done(path: Path) -> set[str]:
    """Ids already written; cuts off a partial last line (a crash in the middle of a write)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        print(f"[sample] {path}: removing a partial last line ({len(data) - end} bytes) left by an interrupted run",
              flush=True)
        with open(path, "r+b") as f:
            f.truncate(end)
    done = set()
    for n, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                done.add(json.loads(line)["id"])
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path} line {n} is not a raylhf sample record ({e}); pick another "
                                 "sample.output_dir or remove the file") from e
    return done


def best_and_worst(rewards: list[float | None], min_margin: float) -> tuple[int, int] | None:
    """Indices of the highest and lowest scored completion, or None for a tie / too small a gap."""
    scored = [(r, i) for i, r in enumerate(rewards) if r is not None]
    if len(scored) < 2:
        return None
    best, worst = max(scored), min(scored)
    if best[0] - worst[0] <= min_margin:
        return None
    return best[1], worst[1]


def records(keys: list[str], examples: list[PromptExample], rollouts: list[Any], scores: Any, n: int,
            min_margin: float) -> list[dict[str, Any]]:
    """One samples.jsonl record per prompt (rollouts come ordered prompt by prompt, ``n`` each)."""
    out = []
    for p, (key, ex) in enumerate(zip(keys, examples, strict=True)):
        comps = []
        for j in range(p * n, (p + 1) * n):
            r = rollouts[j]
            total = float(scores.total[j])
            comps.append({
                "text": r.text, "reward": None if total != total else total,  # NaN: no reward scored it
                "rewards": {k: v[j] for k, v in scores.per_function.items()},
                **({"steps": {k: v[j] for k, v in scores.steps.items()}} if scores.steps else {}),
                "num_tokens": len(r.response_ids), "finish_reason": r.finish_reason,
            })
        pair = best_and_worst([c["reward"] for c in comps], min_margin)
        out.append({"id": key, "prompt": ex.messages, "columns": ex.extras, "completions": comps,
                    "best": pair[0] if pair else None, "worst": pair[1] if pair else None})
    return out


def append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines with one write() and fsync (a kill cannot split a line)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pairs(samples: Path, pairs: Path) -> int:
    """pairs.jsonl from samples.jsonl: {prompt, chosen, rejected, chosen_reward, rejected_reward, id}."""
    rows = []
    if samples.exists():
        for line in samples.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("best") is None:
                continue
            best, worst = rec["completions"][rec["best"]], rec["completions"][rec["worst"]]
            rows.append({"id": rec["id"], "prompt": rec["prompt"], "chosen": best["text"], "rejected": worst["text"],
                         "chosen_reward": best["reward"], "rejected_reward": worst["reward"]})
    tmp = pairs.with_name(pairs.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(pairs)
    return len(rows)


def run_sample(cfg: SampleConfig, prompts: list[PromptExample] | None = None,
               model_path: str | None = None) -> SampleResult:
    from tqdm import tqdm


    registry.activate(registry.config_plugins(cfg), replace=True)
    s, ro = cfg.sample, cfg.rollout
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    prompts = prompts if prompts is not None else load_from_config(cfg.data, "prompt", split="train")
    prompts, dropped = drop_long_prompts(tokenizer, prompts, cfg.data.max_prompt_length)
    prompts = prompts[: s.max_prompts] if s.max_prompts else prompts
    out_dir = Path(s.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path, pairs_path = out_dir / "samples.jsonl", out_dir / "pairs.jsonl"
    keys = prompt_keys(prompts)
    done = read_done(samples_path)
    todo = [(k, ex) for k, ex in zip(keys, prompts, strict=True) if k not in done]
    skipped = len(prompts) - len(todo)
    print(f"[sample] {len(prompts)} prompts ({dropped} dropped as longer than data.max_prompt_length), "
          f"{skipped} already in {samples_path}, {len(todo)} to sample x {s.num_samples}; model {model_path}",
          flush=True)
    if todo:
        init_ray(cfg.ray, required_cpus(cfg, ["rollout", "reward"]))
        workers = Workers()
        try:
            workers.rollout = start_rollout(ro, model_path, cfg.model.dtype,
                                               cfg.data.max_prompt_length + ro.max_new_tokens + 8,
                                               cfg.ray.placement_strategy, cfg.model.trust_remote_code)
            workers.reward = start_reward(cfg.reward, reward_context(cfg))
            with tqdm(total=len(prompts), initial=skipped, desc="sample", unit="prompt") as bar:
                for start in range(0, len(todo), s.prompt_batch_size):
                    chunk = todo[start : start + s.prompt_batch_size]
                    examples = [ex for _, ex in chunk]
                    rollouts = phases.generate(workers.rollout, [render_prompt(tokenizer, ex.messages) for ex in examples],
                                           s.num_samples)
                    scores = phases.score(workers.reward, rollouts, examples, tokenizer)
                    append_lines(samples_path, records([k for k, _ in chunk], examples, rollouts, scores,
                                                       s.num_samples, s.min_margin))
                    bar.update(len(chunk))
        finally:
            workers.shutdown()
    pairs = write_pairs(samples_path, pairs_path)
    print(f"[sample] wrote {samples_path} ({len(prompts)} prompts) and {pairs_path} ({pairs} pairs)", flush=True)
    return SampleResult(samples_path, pairs_path, len(prompts), skipped, pairs)


def cli(cfg: SampleConfig) -> int:
    """`raylhf sample` on the config's prompts (without any: ``raylhf.demo.offline``)."""
    run_sample(cfg)
    return 0
