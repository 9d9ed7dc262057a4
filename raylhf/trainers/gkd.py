"""`python -m raylhf.gkd`: generalized knowledge distillation (GKD, Agarwal et al., 2024; on-policy
distillation). With no data files it runs the embedded default.

One step: a batch of prompts; with probability ``gkd.lmbda`` the responses are the student's own samples from
the rollout engines (vLLM, the student's current weights), else the dataset's responses; the frozen teacher
actor (``actors/teacher.py``) returns its next-token distributions on those tokens (top-k log-probs plus the
evenly spread rest, or full rows: ``gkd.teacher_top_k``); the student ranks (``actors/distill.py``) minimise
the generalized JSD with ``gkd.beta`` at ``gkd.temperature``; the new weights sync into the engines. The
held-out metric is the student's token-mean KL(teacher || student) on held-out dataset sequences (``eval/kl``)
and on its own greedy completions of the held-out prompts (``eval/kl_on_policy``), with the teacher's full
distributions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from actors.distill import DistillBatch, DistillWorker, trained_positions
from actors.group import ActorGroup
from actors.teacher import TeacherWorker
from raylhf.assets import load_tokenizer
from raylhf.config import GKDConfig
from raylhf.core.batch import Objective
from raylhf.data import DataError, load_from_config, render_prompt, tokenize_sft
from raylhf.driver import phases
from raylhf.driver.cluster import init_ray, resolve_model_path
from raylhf.driver.lifecycle import RunResult
from raylhf.driver.offline import OfflineSpec, RowOrder, run_offline
from raylhf.driver.startup import gpus_per_rank, required_cpus, start_rollout
from raylhf.driver.stream import phase_seed
from raylhf.driver.weight_sync import SyncOptions, sync_weights

if TYPE_CHECKING:
    from actors.distill import DistillBatch
    from actors.group import ActorGroup
    from raylhf.core.batch import Rollout
    from raylhf.data import SFTExample


@dataclass
class Encoded:
    """One dataset row: the whole sequence, its trained-token weights and where the prompt ends."""

    ids: list[int]
    mask: list[float]
    prompt_len: int


class GKDBatches:
    """Batches of dataset rows; each batch is marked on-policy (responses to be sampled from the student) with
    probability ``lmbda``. The row order, the draws and the step count are part of checkpoints."""

    def __init__(self, rows: list[Encoded], batch_size: int, shuffle: bool, seed: int, lmbda: float) -> None:
        self.rows, self.batch_size, self.lmbda = rows, batch_size, lmbda
        self.order = RowOrder(len(rows), shuffle, seed)
        self.rng = random.Random(seed + 1)
        self.step = 0

    def next_batch(self) -> DistillBatch:
        rows = [self.rows[i] for i in self.order.take(self.batch_size)]
        on_policy = self.rng.random() < self.lmbda
        self.step += 1
        return DistillBatch(input_ids=[torch.tensor(r.ids, dtype=torch.long) for r in rows],
                            loss_mask=[torch.tensor(r.mask, dtype=torch.float32) for r in rows],
                            prompt_lens=[r.prompt_len for r in rows], sampled=[on_policy] * len(rows))

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"order": self.order.state_dict(), "rng": [version, list(internal), gauss], "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.step = int(state["step"])


def encode_rows(tokenizer: Any, examples: Sequence[SFTExample], max_length: int) -> list[Encoded]:
    """Dataset rows as token ids (chat template), trained on the reply; rows with no trained token are dropped."""

    out = []
    for ex in examples:
        ids, weights = tokenize_sft(tokenizer, ex, max_length)
        mask = [1.0 if w > 0 else 0.0 for w in weights]
        if sum(mask[1:]) > 0:
            out.append(Encoded(ids, mask, min(len(render_prompt(tokenizer, ex.messages)), len(ids))))
    return out


def with_samples(batch: DistillBatch, rollouts: Sequence[Rollout]) -> DistillBatch:
    """``batch`` with the sequences marked ``sampled`` answered by ``rollouts`` (in that order): prompt + the
    student's completion, trained on the completion."""

    ids, masks = list(batch.input_ids), list(batch.loss_mask)
    todo = [i for i, s in enumerate(batch.sampled) if s]
    for i, r in zip(todo, rollouts, strict=True):
        p = batch.prompt_lens[i]
        ids[i] = torch.tensor(list(batch.input_ids[i][:p].tolist()) + list(r.response_ids), dtype=torch.long)
        masks[i] = torch.tensor([0.0] * p + [1.0] * len(r.response_ids))
    return DistillBatch(input_ids=ids, loss_mask=masks, prompt_lens=batch.prompt_lens, sampled=batch.sampled)


def padded_for_ranks(batch: DistillBatch, world: int) -> DistillBatch:
    """``batch`` grown to a multiple of ``world`` sequences with copies that train no token (ZeRO-3 ranks run
    their forwards in lockstep, so every rank gets as many sequences)."""

    extra = -len(batch) % world
    if not extra:
        return batch
    last = batch.input_ids[-1]
    empty = batch.teacher[-1].head(0)
    return DistillBatch(input_ids=[*batch.input_ids, *[last] * extra],
                        loss_mask=[*batch.loss_mask, *[torch.zeros(len(last))] * extra],
                        teacher=[*batch.teacher, *[empty] * extra])


def run_gkd(cfg: GKDConfig, student_path: str | None = None, teacher_path: str | None = None,
            train: Sequence[SFTExample] | None = None, heldout: Sequence[SFTExample] | None = None) -> RunResult:
    """Distil ``teacher_path`` (default ``teacher.path``) into the student (default ``model.path``, else a tiny
    random model); ``train`` / ``heldout`` (SFTExample rows) override the data files."""
    g = cfg.gkd
    student_path = student_path or resolve_model_path(cfg.model)
    teacher_path = teacher_path or cfg.teacher.path
    if not teacher_path:
        raise DataError("no teacher: set teacher.path (the embedded default's teacher only goes with its own data, "
                        "when data.train_files is empty)")
    tokenizer = load_tokenizer(cfg.model.tokenizer or student_path)
    train, heldout = split_data(cfg, train, heldout)
    rows, held_rows = encode_rows(tokenizer, train, g.max_length), encode_rows(tokenizer, heldout, g.max_length)
    if len(rows) < g.batch_size:
        raise DataError(f"{len(rows)} usable rows (with response tokens) < gkd.batch_size={g.batch_size}")
    limit = cfg.runtime.phase_timeout_s or None
    init_ray(cfg.ray, required_cpus(cfg, ["policy", "rollout", "teacher"]))
    teacher = ActorGroup(TeacherWorker, 1, name="teacher", num_cpus=cfg.teacher.num_cpus,
                         num_gpus=gpus_per_rank(cfg.teacher.num_gpus),
                         init_kwargs=dict(model_path=teacher_path, teacher=cfg.teacher.model_dump(),
                                          trust_remote_code=cfg.model.trust_remote_code),
                         sizing="teacher.num_cpus or teacher.num_gpus", call_timeout_s=limit)
    rollout = None
    try:
        max_len = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens + 8
        rollout = start_rollout(cfg.rollout, student_path, cfg.model.dtype, max(max_len, g.max_length),
                                cfg.ray.placement_strategy, cfg.model.trust_remote_code, call_timeout_s=limit)
        vocab = int(teacher.call_rank0("vocab_size"))
        source = GKDBatches(rows, g.batch_size, cfg.data.shuffle, cfg.data.seed, g.lmbda)
        steps = GKDSteps(cfg, teacher, rollout, source, held_rows)
        spec = OfflineSpec(
            name="gkd", num_steps=g.num_steps, objective=Objective(pg_coef=0.0), batches=source,
            worker_cls=DistillWorker, worker_extra={"beta": g.beta, "temperature": g.temperature},
            prepare=steps.prepare, evaluate=steps.evaluate if held_rows else None, eval_every=g.eval_every,
            after_step=steps.after_step, curves=["loss/total", "eval/kl", "eval/kl_on_policy"],
            summary=(f"{len(rows)} train / {len(held_rows)} held-out rows; teacher {teacher_path}; vocab {vocab}; "
                     f"teacher top-k {g.teacher_top_k or 'full'}"),
        )
        res = run_offline(cfg, spec, student_path)
    finally:
        if rollout is not None:
            rollout.shutdown()
        teacher.shutdown()
    return res


def split_data(cfg: GKDConfig, train: Sequence[SFTExample] | None, heldout: Sequence[SFTExample] | None
               ) -> tuple[Sequence[SFTExample], Sequence[SFTExample]]:
    """The training and held-out rows: given, or from the data files (``gkd.eval_fraction`` of the training rows
    held out when there are no eval files)."""
    train = train if train is not None else load_from_config(cfg.data, "sft", split="train")
    if heldout is None:
        heldout = load_from_config(cfg.data, "sft", split="eval") if cfg.data.eval_files else []
        if not heldout and cfg.gkd.eval_fraction > 0 and len(train) > 1:
            order = list(range(len(train)))
            random.Random(cfg.data.seed).shuffle(order)
            held = set(order[: max(1, round(len(train) * cfg.gkd.eval_fraction))])
            train, heldout = [x for i, x in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    return train, heldout


class GKDSteps:
    """The offline loop's hooks of a GKD run: each batch gets the student's samples (a share ``gkd.lmbda`` of
    it, from the rollout engines) and the teacher's distributions; the held-out KL on dataset responses and on
    the student's own greedy completions; weight sync to the engines after the steps that need it."""

    def __init__(self, cfg: GKDConfig, teacher: ActorGroup, rollout: ActorGroup, source: GKDBatches,
                 held_rows: list[Encoded]) -> None:
        self.cfg, self.g, self.teacher, self.rollout, self.source = cfg, cfg.gkd, teacher, rollout, source
        self.world = cfg.policy.num_workers
        self.held_rows = held_rows
        self.synced = False  # the engines hold the student's current weights
        # held-out sequences: the teacher's full distributions once (it is frozen)
        held = source_batch(held_rows)
        self.held_batch = padded_for_ranks(self.teacher_dists(held, 0), self.world) if held is not None else None
        self.held_prompts = [r.ids[: r.prompt_len] for r in held_rows]

    def teacher_dists(self, batch: DistillBatch, top_k: int) -> DistillBatch:
        batch.teacher = self.teacher.call_rank0("distributions", batch.input_ids, trained_positions(batch.loss_mask),
                                                top_k, self.g.temperature)
        return batch

    def sync(self, policy: ActorGroup) -> None:
        sync_weights(policy, self.rollout, **SyncOptions.of(self.cfg).kwargs())
        self.synced = True

    def prepare(self, policy: ActorGroup, batch: DistillBatch) -> DistillBatch:
        if any(batch.sampled):
            if not self.synced:  # a resumed run: the engines start from the student's start weights
                self.sync(policy)
            prompts = [batch.input_ids[i][: batch.prompt_lens[i]].tolist() for i, s in enumerate(batch.sampled) if s]
            rolls = phases.generate(self.rollout, prompts, 1, temperature=self.g.temperature,
                                    max_new_tokens=self.cfg.rollout.max_new_tokens,
                                    seed=phase_seed(self.cfg.seed, self.source.step, "gkd"))
            batch = with_samples(batch, rolls)
        return self.teacher_dists(batch, self.g.teacher_top_k)

    def evaluate(self, policy: ActorGroup, step: int) -> dict[str, float]:
        if self.held_batch is None:
            return {}
        out = _divergences(policy, self.held_batch, "eval/")
        if not self.synced and step > 0:
            self.sync(policy)
        rolls = phases.generate(self.rollout, self.held_prompts, 1, temperature=0.0,
                                max_new_tokens=self.cfg.rollout.max_new_tokens,
                                seed=phase_seed(self.cfg.seed, step, "gkd-eval"))
        sampled = source_batch(self.held_rows)
        assert sampled is not None
        sampled.sampled = [True] * len(self.held_rows)
        sampled = padded_for_ranks(self.teacher_dists(with_samples(sampled, rolls), 0), self.world)
        out.update(_divergences(policy, sampled, "eval/", "_on_policy"))
        out["eval/response_len"] = sum(len(r.response_ids) for r in rolls) / max(1, len(rolls))
        return out

    def after_step(self, policy: ActorGroup, step: int) -> None:
        g = self.g
        if g.lmbda > 0 or (g.eval_every and step % g.eval_every == 0) or step == g.num_steps:
            self.sync(policy)


def source_batch(rows: list[Encoded]) -> DistillBatch | None:
    """All ``rows`` as one DistillBatch (dataset responses), or None when there are none."""
    if not rows:
        return None
    return GKDBatches(rows, len(rows), False, 0, 0.0).next_batch()


def _divergences(policy: ActorGroup, batch: DistillBatch, prefix: str, suffix: str = "") -> dict[str, float]:
    parts = policy.call_split("divergences", batch)
    tokens = sum(p["tokens"] for p in parts)
    if not tokens:
        return {}
    return {f"{prefix}kl{suffix}": sum(p["kl_sum"] for p in parts) / tokens,
            f"{prefix}jsd{suffix}": sum(p["jsd_sum"] for p in parts) / tokens}


def report(res: RunResult) -> None:
    b, a = res.eval_before, res.eval_after
    for key, label in (("eval/kl", "held-out KL(teacher || student) on dataset responses"),
                       ("eval/kl_on_policy", "on its own greedy completions")):
        if key in a:
            ratio = a[key] / b[key] if b.get(key) else float("nan")
            print(f"gkd: {label}: before={b.get(key, float('nan')):.4f} after={a[key]:.4f} (x{ratio:.3f})",
                  flush=True)
    print(f"run dir: {res.run_dir}", flush=True)
    if res.checkpoint:
        print(f"student: {res.checkpoint}", flush=True)


def cli(cfg: GKDConfig) -> int:
    """`python -m raylhf.gkd` on the config's data files (without any: ``raylhf.demo.offline``)."""
    report(run_gkd(cfg))
    return 0
