"""PolicyWorker: one data-parallel rank of the trained policy (HF model on DeepSpeed ZeRO 0-3).

It runs the generic objective of ``raylhf.core.objective`` on a ``TrainBatch``: one call of
``train_step`` is one optimizer step over the rank's shard, split into length-sorted micro-batches
with gradient accumulation. DeepSpeed averages gradients over ranks, so each rank's loss (already
normalized by the global counts) is multiplied by the world size: the update equals the update of
the whole batch on one rank. A step whose loss or gradient norm is not finite on any rank is skipped
on every rank (``guard/*`` metrics, ``raylhf.core.guard``, docs/reliability.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from actors import adapters
from actors.common import (
    batched_logprobs,
    device,
    forward_logprobs,
    init_distributed,
    load_causal_lm,
    logprob_chunk_size,
    micro_batches,
    packing_options,
    pad,
    resolve_dtype,
    set_threads,
)
from actors.ds_config import deepspeed_config, load_dtype, zero3_model_config
from actors.evaluation import eval_predictions
from actors.faults import maybe_die
from actors.group import BaseWorker
from actors.lockstep import lockstep_count
from actors.moe_router import RouterRecorder, with_router_loss
from actors.offload import OffloadStates
from actors.optimizers import (
    OptimizerArgs,
    build_optimizer,
    describe,
    lr_lambda,  # noqa: F401  (the default schedule; tests import it from here)
)
from actors.reference_host import ReferenceHost
from actors.tuners import TUNERS, FullTuner, TunerArgs, is_peft, prepare, trainable_counts
from actors.weights_out import WeightExport
from raylhf.core.batch import Objective, TrainBatch
from raylhf.core.checkpoint import load_rng, save_rng
from raylhf.core.guard import SKIPPED, guard_metrics, local_flags
from raylhf.core.metrics import SUM_METRICS, reduce_metrics
from raylhf.core.objective import objective_loss


class PolicyWorker(WeightExport, OffloadStates, ReferenceHost, BaseWorker):
    fault_group = "policy"  # the group name fault injection matches (actors/faults.py)
    tuner: Any = None  # the policy.tuner class (actors/tuners.py); set by build_model, the full tuner otherwise
    load_dtype: torch.dtype = torch.float32  # what build_model loads in; setup sets it (actors/ds_config.py)
    router: RouterRecorder | None = None  # a MoE policy's router hooks; setup sets them

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        model_path: str = "",
        policy: dict[str, Any] | None = None,
        dtype: str = "auto",
        total_steps: int = 1,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.model_path, self.cfg, self.dtype_name = model_path, dict(policy or {}), dtype
        self.total_steps, self.seed, self.trust_remote_code = total_steps, seed, trust_remote_code
        self.steps_done = 0
        self._trace_to: str | None = None  # set by trace_next_step (--profile)

    # ---- start-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        import deepspeed

        set_threads(self.cfg.get("num_cpus_per_worker", 1))
        os.environ.update(MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        on_gpu = torch.cuda.is_available()
        init_distributed(on_gpu)
        torch.manual_seed(self.seed)
        precision = self.cfg.get("precision", "auto")
        bf16 = precision == "bf16" or (precision == "auto" and resolve_dtype("auto") == torch.bfloat16)
        ds_config = deepspeed_config(self.cfg, self.world_size, bf16)
        self.load_dtype = load_dtype(bf16)
        # ZeRO-3: while this lives, from_pretrained builds inside zero.Init (each rank holds its partition only)
        self._zero3_config = zero3_model_config(ds_config)
        model = self.build_model()
        self.router = RouterRecorder.of(model)  # MoE: router load balance and aux loss (actors/moe_router.py)
        if self.tuner is None:  # a subclass that builds its own model (critic, reward model) trains all of it

            self.tuner = FullTuner
        if self.cfg.get("gradient_checkpointing"):
            model.gradient_checkpointing_enable()
        opt, sched = self.build_optimizer(model)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds_config
        )
        self.micro = int(ds_config["train_micro_batch_size_per_gpu"])

    def build_optimizer(self, model: torch.nn.Module) -> tuple[Any, Any]:
        """The optimizer and LR scheduler of ``policy.optimizer`` (a registered factory, ``actors/optimizers.py``)
        over ``model``'s trainable parameters; DeepSpeed steps both."""

        name = str(self.cfg.get("optimizer", "adamw"))
        opt, sched = build_optimizer(name, OptimizerArgs.from_policy(self.cfg, self.total_steps), model)
        self._optimizer, self._optimizer_info = opt, {"name": name, **describe(opt, sched)}
        if self.rank == 0 and name != "adamw":
            groups = ", ".join(f"{g['name']}: lr {g['lr']:g} ({g['params']:,})" for g in self._optimizer_info["groups"])
            print(f"[policy] optimizer {name}: {self._optimizer_info['optimizer']} [{groups}], scheduler "
                  f"{self._optimizer_info['scheduler']}", flush=True)
        return opt, sched

    def optimizer_summary(self) -> dict[str, Any]:
        """What steps: ``{name, optimizer (class), scheduler (class), groups: [{name, lr (current), params}]}``."""

        return {"name": self._optimizer_info["name"], **describe(self._optimizer, self.scheduler)}

    # ---- hooks of the trainers built on this worker (the DPO family, reward models, distillation) ---------
    def build_model(self) -> torch.nn.Module:
        """The trained module, in ``self.load_dtype`` (bf16 when DeepSpeed trains in bf16, else fp32; ZeRO-3:
        partitioned as it loads, ``actors/ds_config.py``), with ``policy.attn_implementation``, prepared by the
        tuner ``policy.tuner.type`` names (``actors/tuners.py``: full, lora, ia3, freeze, or a plugin's); only
        what it leaves trainable trains."""

        model = load_causal_lm(self.model_path, self.load_dtype, self.trust_remote_code,
                               attn_implementation=self.cfg.get("attn_implementation"))
        args = TunerArgs(self.cfg.get("tuner"), model_path=self.model_path,
                         gradient_checkpointing=bool(self.cfg.get("gradient_checkpointing")))
        self.tuner = TUNERS.get_entry(args.type)
        model = prepare(self.tuner, args, model)
        if self.rank == 0 and args.type != "full":
            trainable, total = trainable_counts(model)
            print(f"[policy] {args.type}: {trainable:,} of {total:,} parameters train "
                  f"({100 * trainable / max(1, total):.2f}%)", flush=True)
        return model

    def micro_batches(self, batch: TrainBatch) -> list[list[int]]:
        """The micro-batches of one optimizer step over this rank's shard, as index lists: ``micro_batch_size``
        length-sorted sequences, or ``policy.max_tokens_per_micro_batch`` tokens (``actors.common.micro_batches``)."""

        packing, max_tokens = packing_options(self.cfg)
        return list(micro_batches([len(x) for x in batch.input_ids], self.micro, max_tokens, packing))

    def token_logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0, with_entropy: bool = False,
                       entropy_grad: bool = True, router: RouterRecorder | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward pass of the trained model over a micro-batch: ``(logp [B, L], attention mask [B, L],
        entropy [B, L] | None)``, right-padded, position ``t`` = log p(token_t | tokens_<t)``. Every loss
        goes through here, so ``policy.packing`` (several sequences per row inside, ``actors.packing``) applies
        to all trainers without changing what they receive; so does ``policy.logprob_chunk_size`` (the head and
        the fp32 log-softmax chunk by chunk). ``entropy_grad=False``: the entropy without a graph (a metric)."""

        packing, _ = packing_options(self.cfg)
        return forward_logprobs(self.engine, input_ids, temperature, with_entropy=with_entropy, packing=packing,
                                chunk_size=logprob_chunk_size(self.cfg), entropy_grad=entropy_grad, router=router)

    def micro_loss(self, sub: TrainBatch, obj: Objective) -> tuple[torch.Tensor, dict[str, float], float]:
        """One micro-batch: its loss (already normalized by the step's global counts, see ``Objective``), its
        metrics and its weight when the metrics of the micro-batches and ranks are reduced (trained tokens)."""
        dev = self.engine.device
        # the entropy is always a metric; it needs a graph only when it is in the loss
        logp, _, ent = self.token_logprobs(sub.input_ids, obj.temperature, with_entropy=True,
                                           entropy_grad=bool(obj.entropy_coef), router=self.router)

        def padded(xs: list[torch.Tensor] | None) -> torch.Tensor | None:
            return None if xs is None else pad(xs, 0.0).to(dev, torch.float32)

        mask = padded(sub.loss_mask)
        assert mask is not None
        loss, m = objective_loss(
            logp, ent, mask, obj, advantages=padded(sub.advantages), old_logp=padded(sub.old_logprobs),
            rollout_logp=padded(sub.rollout_logprobs), ref_logp=padded(sub.ref_logprobs),
            ce_weights=padded(sub.ce_weights),
        )
        loss = with_router_loss(self.router, loss, m, float(self.cfg.get("router_aux_loss_coef") or 0.0),
                                float(mask.sum()), obj.global_tokens)  # a MoE policy's router (moe/* metrics)
        return loss, m, float(mask.sum())

    # ---- compute --------------------------------------------------------------------------------
    def train_step(self, batch: TrainBatch, obj: Objective) -> dict[str, float]:
        """One optimizer step on this rank's shard; its metrics reduced over the micro-batches
        (``raylhf.core.metrics.reduce_metrics``: losses summed, maxima / minima as such, the rest token-weighted)."""

        maybe_die(self.fault_group, "train_step")
        self.record("train_step")
        trace, self._trace_to = self._trace_to, None
        if trace is not None:  # --profile: this step under the torch profiler, one chrome trace per rank
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            with profile(activities=acts, record_shapes=True) as prof:
                out = self._train_step(batch, obj)
            path = Path(trace) / f"policy-step-rank{self.rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(path))
            (path.with_suffix(".txt")).write_text(prof.key_averages().table(sort_by="self_cpu_time_total",
                                                                            row_limit=30))
            return out
        return self._train_step(batch, obj)

    def trace_next_step(self, directory: str) -> None:
        """``--profile``: run the next ``train_step`` under the torch profiler, its trace written to
        ``directory/policy-step-rank<R>.json`` (and the top operators to ``.txt``)."""
        self._trace_to = directory

    def _train_step(self, batch: TrainBatch, obj: Objective) -> dict[str, float]:
        t0 = time.perf_counter()
        self.engine.train()
        groups = self.micro_batches(batch)
        real, stage = len(groups), int(self.cfg.get("zero_stage", 0))
        if stage > 0 and groups:  # ZeRO reduces (and stage 3 gathers) in every micro-batch: ranks in lockstep,
            groups += [groups[0][:1]] * (lockstep_count(real) - real)  # fillers: one sequence, loss x 0
        rows: list[dict[str, float]] = []
        tokens: list[float] = []
        for k, idx in enumerate(groups):
            self.engine.set_gradient_accumulation_boundary(k == len(groups) - 1)
            loss, m, weight = self.micro_loss(batch.select(idx), obj)
            if k >= real:
                self.engine.backward(loss * 0.0)
                continue
            self.engine.backward(loss * self.world_size)
            rows.append(m)
            tokens.append(weight)
        grad_norm = self._grad_norm() if stage == 0 else None
        # NaN/Inf guard (raylhf.core.guard): every rank takes the same decision, else the collectives desync
        flags = local_flags([r["loss/total"] for r in rows], grad_norm,
                            stage > 0 and bool(self.engine.optimizer.has_overflow(partition_gradients=True)))
        guard = guard_metrics(self._max_over_ranks(flags))
        lr = float(self.scheduler.get_last_lr()[0])  # the rate this step uses (engine.step advances the scheduler)
        if guard[SKIPPED]:
            self._discard_grads()
        else:
            self.engine.step()
            if self.engine.was_step_applied():
                self.steps_done += 1
            else:  # DeepSpeed's own overflow check (invalid grad norm) dropped the step
                guard = guard_metrics([0.0, 1.0])
            if grad_norm is None:
                grad_norm = self.engine.get_global_grad_norm()
        out = reduce_metrics(rows, tokens, SUM_METRICS)
        out.update(guard)
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        out["lr"] = lr
        out["train_tokens"] = sum(tokens)
        out["time/train_step_rank"] = time.perf_counter() - t0
        return out

    def _max_over_ranks(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float32, device=self.engine.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def _discard_grads(self) -> None:
        """Drop a skipped step's gradients: no optimizer step, so the weights, the optimizer state and the LR
        schedule stay as they were, and the next step accumulates from zero.

        ``engine.step()`` is not called. Each branch repeats what DeepSpeed's own optimizer does when its
        overflow check drops a step (fp16 loss scaling); the gradients live in different places per stage.
        """
        opt = self.engine.optimizer
        stage = int(self.cfg.get("zero_stage", 0))
        if stage in (1, 2):  # DeepSpeedZeroOptimizer.step: reduced partitions in averaged_gradients
            opt.micro_step_id = -1  # INITIAL_MICRO_STEP_ID, as step() leaves it
            opt.zero_grad(set_to_none=True)
            opt._release_preflattened_grad_buffers()
            for k in list(opt.averaged_gradients):
                opt.averaged_gradients[k] = None
                opt.all_grad_tensors[k] = None
        elif stage == 3:  # DeepSpeedZeroOptimizer_Stage3.step up to its overflow return
            opt._pre_step()
            opt._partition_all_parameters()
            opt._overflow_clean_up(opt.loss_scale)
        else:  # the torch optimizer, or DeepSpeed's bf16 / fp16 wrapper with its own fp32 gradient buffers
            opt.zero_grad()
        self.engine.zero_grad()

    @torch.no_grad()
    def _grad_norm(self) -> float:
        """Global grad norm before clipping (ZeRO-0 keeps full, already averaged grads on every rank)."""
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @torch.no_grad()
    def eval_loss(self, batch: TrainBatch, obj: Objective) -> dict[str, float]:
        """The objective on this rank's shard without an update (held-out loss): ``micro_loss`` over the
        micro-batches in eval mode (no dropout) under no_grad, reduced like ``train_step``'s metrics (losses
        summed; with ``obj``'s global counts, the sum over ranks is the whole batch's loss); ``train_tokens`` is
        the shard's weighted token count."""
        self.engine.eval()
        rows: list[dict[str, float]] = []
        tokens: list[float] = []
        for idx in self.micro_batches(batch):
            _, m, weight = self.micro_loss(batch.select(idx), obj)
            rows.append(m)
            tokens.append(weight)
        out = reduce_metrics(rows, tokens, SUM_METRICS)
        out["train_tokens"] = sum(tokens)
        return out

    @torch.no_grad()
    def logprobs(self, input_ids: list[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
        """Per-sequence token log-probs (no grad, input order), micro-batched and packed as in ``train_step``."""

        self.engine.eval()
        packing, max_tokens = packing_options(self.cfg)
        return batched_logprobs(self.engine, input_ids, self.micro, temperature, packing=packing, max_tokens=max_tokens,
                                chunk_size=logprob_chunk_size(self.cfg),
                                lockstep=int(self.cfg.get("zero_stage", 0)) == 3)

    # ---- weights out ----------------------------------------------------------------------------
    def _full_params(self):  # -> Iterator[tuple[str, torch.Tensor]]
        """(name, full CPU tensor) for every parameter; ZeRO-3 shards are gathered (collective). Under an adapter
        tuner (LoRA, IA3) the base model's parameter names with the adapters merged in (what HF and vLLM load);
        a tuner's own ``export_params`` when it has one (``actors/tuners.py``)."""

        zero3 = int(self.cfg.get("zero_stage", 0)) == 3
        yield from adapters.export_params(self.engine.module, adapters.gatherer(zero3), self.tuner)

    def vocab_size(self) -> int:
        return int(self.engine.module.config.vocab_size)

    def save(self, path: str) -> str | None:
        """Save an HF checkpoint (rank 0 writes; every rank must call it) through the tuner's ``save_pretrained``.
        An adapter tuner (LoRA, IA3: a peft model) writes the base model with the adapters merged in at ``path``
        and the adapter (peft format) under ``path/adapter``; with ``policy.tuner.merge_on_save=false`` only the
        adapter, at ``path``. Other tuners write the whole model. The tokenizer goes beside either."""

        module = self.engine.module
        peft = is_peft(module)
        merge = not peft or bool((self.cfg.get("tuner") or {}).get("merge_on_save", True))
        zero3 = int(self.cfg.get("zero_stage", 0)) == 3
        adapter = adapters.adapter_state(module, adapters.gatherer(zero3)) if peft else {}
        state = dict(self._full_params()) if merge else {}
        if self.rank != 0:
            return None
        from transformers import AutoTokenizer

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if peft:
            if merge:
                adapters.save_merged(module, state, out)
            adapters.save_adapter(module, adapter, out / "adapter" if merge else out, base_model=self.model_path,
                                tuner=self.tuner)
        else:
            self.tuner.save_pretrained(module, str(out), state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(out)
        return str(out)

    # ---- resumable state (raylhf.core.checkpoint) ----------------------------------------------------
    def save_state(self, path: str) -> None:
        """Engine (model, optimizer, LR scheduler) and this rank's RNG states under ``path`` (every rank must
        call it: DeepSpeed writes each rank's partition)."""

        out = Path(path)
        (out / "rng").mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(out / "engine"), tag="state", client_state={"steps_done": self.steps_done},
                                    save_latest=False)
        save_rng(out / "rng" / f"rank-{self.rank}.pt")

    def load_state(self, path: str) -> int:
        """Restore what ``save_state`` wrote; returns the optimizer steps done. The world size must match."""

        src = Path(path)
        rng = src / "rng" / f"rank-{self.rank}.pt"
        if not rng.is_file():
            raise FileNotFoundError(f"{rng} missing: the checkpoint was written by fewer policy ranks than "
                                    f"policy.num_workers={self.world_size}; resume with the run's policy.num_workers")
        load_path, client = self.engine.load_checkpoint(str(src / "engine"), tag="state", load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no engine state under {src / 'engine'}")
        self.steps_done = int((client or {}).get("steps_done", 0))
        load_rng(rng)
        return self.steps_done

    def device_name(self) -> str:
        return str(device())

    def gpu_ids(self) -> tuple[str, list[str]]:
        """``(node id, the GPU ids this rank sees)``: where a colocated engine's tensor-parallel shards go."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return self.node_id(), [x for x in visible.split(",") if x]

    def eval_predictions(self, batch: TrainBatch, request: dict[str, Any]) -> dict[str, Any]:
        """Held-out predictions for the eval metrics (``sft.metrics``): see ``actors/evaluation.py``."""

        return eval_predictions(self, batch, request)

