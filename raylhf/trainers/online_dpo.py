"""`python -m raylhf.online_dpo`: online (iterative) DPO on the RL driver's pieces.

Each round: N completions per prompt on the vLLM engines -> rewards -> per prompt the best and the worst
completion become a chosen / rejected pair (ties, and margins not above ``online_dpo.min_margin``, are
skipped) -> reference log-probs (not for SimPO) -> one DPO-family update on the policy
(``actors/dpo_worker.py``, the offline DPO trainer's worker) -> weight sync. With no data files it runs
the embedded arithmetic task from the SFT warm-up, like the GRPO demo.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from actors.dpo_worker import PreferenceLoss, PreferenceWorker
from raylhf.config import OnlineDPOConfig
from raylhf.core.batch import Objective
from raylhf.data import load_from_config
from raylhf.data.pairs import PreferenceBatch, sequence_sums
from raylhf.driver import phases
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.online import online_run
from raylhf.driver.startup import required_cpus


def actor_groups(cfg: OnlineDPOConfig) -> list[str]:
    """The actor groups an online DPO run starts (the reference only with a KL term)."""
    return ["policy", "rollout", *(["reference"] if cfg.online_dpo.kl_coef > 0 else []), "reward"]


def best_worst_pairs(rewards: torch.Tensor, group_size: int, min_margin: float = 0.0) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices per group: the highest and the lowest scored reward (NaN = unscored,
    ignored); a group whose best - worst is not above ``min_margin`` (ties) gives no pair."""
    pairs = []
    for g in range(len(rewards) // group_size):
        idx = [i for i in range(g * group_size, (g + 1) * group_size) if not torch.isnan(rewards[i])]
        if len(idx) < 2:
            continue
        best = max(idx, key=lambda i: float(rewards[i]))
        worst = min(idx, key=lambda i: float(rewards[i]))
        if float(rewards[best]) - float(rewards[worst]) > min_margin:
            pairs.append((best, worst))
    return pairs


def run_online_dpo(cfg: OnlineDPOConfig, model_path: str | None = None, train: list | None = None,
                   heldout: list | None = None) -> RunResult:
    """Run online DPO; overrides as in ``run_grpo``. Returns the run's result."""

    d, world = cfg.online_dpo, cfg.policy.num_workers
    model_path = model_path or resolve_model_path(cfg.model)
    train = train if train is not None else load_from_config(cfg.data, "prompt", split="train")
    heldout = heldout if heldout is not None else (
        load_from_config(cfg.data, "prompt", split="eval") if cfg.data.eval_files else [])
    spec = PreferenceLoss(loss_type=d.loss_type, beta=d.beta, simpo_gamma=d.simpo_gamma)
    curves = ["reward/accuracy", "eval/accuracy", "eval/greedy_accuracy", "rewards/accuracies"]
    with online_run(cfg, d, "online_dpo", model_path, train, heldout, d.num_steps, required_cpus(cfg, actor_groups(cfg)), curves,
                    policy_cls=PreferenceWorker, policy_extra={"preference": spec}) as run:
        for step, prompts in run.steps():
            rollouts = run.generate(step, d.samples_per_prompt)
            scores = run.score(rollouts, prompts, step)
            run.log_completions(step, rollouts, scores, None)
            pairs = best_worst_pairs(scores.total, d.samples_per_prompt, d.min_margin)
            pairs = pairs[: len(pairs) - len(pairs) % world]  # every rank takes whole pairs
            m = {**phases.rollout_metrics(rollouts, scores, run.timer), "dpo/pairs": float(len(pairs)),
                 "dpo/pairs_frac": len(pairs) / max(1, len(prompts))}
            if pairs:
                seqs = phases.to_train_batch([rollouts[i] for pair in pairs for i in pair], torch.zeros(2 * len(pairs)))
                batch = PreferenceBatch(input_ids=seqs.input_ids, loss_mask=seqs.loss_mask,
                                        group_ids=[g for g in range(len(pairs)) for _ in range(2)],
                                        chosen=[True, False] * len(pairs))
                if run.workers.reference is not None:
                    batch.ref_logps = sequence_sums(run.logprobs("reference", batch, 1.0), batch.loss_mask)
                objective = replace(Objective(pg_coef=0.0), global_seqs=float(batch.num_groups()),
                                    global_tokens=float(batch.chosen_tokens()))
                with run.timer("train"):
                    m.update(phases.reduce_ranks(run.policy.call_split("train_step", batch, objective)))
                run.sync()
            run.end_step(step, m, None, len(rollouts))
    return run.result()


def cli(cfg: OnlineDPOConfig) -> int:
    """`python -m raylhf.online_dpo` on the config's data files (without any: ``raylhf.demo.online``)."""
    res = run_online_dpo(cfg)
    print(f"run dir: {res.run_dir}")
    return 0
