"""The work of `raylhf export` (raylhf/tools/export.py parses and resolves the source): merge a peft adapter into its
base model (float32, peft's ``merge_and_unload``) and write the standalone checkpoint, or copy a merged one; then
the check: vLLM's prompt log-probs of OUT against transformers' (and, for a merge, transformers' of the model
with the adapter unmerged) on a few fixed token sequences."""

from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from raylhf.core.weights import probe_ids
from raylhf.data.render import chat_text, encode_text
from raylhf.data.retrieval import TASK_CARD
from raylhf.tools.export_source import Source
from raylhf.tools.vllm_local import hf_logprobs, max_gap, prompt_logprobs, start_llm

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FIXED_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789, 12 + 30 = 42!"
FIXED_CHAT = [{"role": "system", "content": "You are a careful assistant."},
              {"role": "user", "content": "What is 12 + 30? Answer briefly."},
              {"role": "assistant", "content": "12 + 30 = 42."}]


@dataclass
class Written:
    source: Source
    out: Path
    dtype: str
    sequences: list[list[int]] = field(default_factory=list)
    adapter_logprobs: list[list[float]] | None = None  # the unmerged adapter model's, float32 (merges only)

    def describe(self) -> str:
        if self.source.kind == "full":
            return f"copied the merged checkpoint {self.source.path} to {self.out}"
        return f"merged {self.source.path} into {self.source.base} -> {self.out} ({self.dtype})"


@dataclass
class CheckResult:
    vllm_gap: float | None  # vLLM vs transformers on OUT; None when not a causal LM
    merge_gap: float | None  # transformers on OUT vs the adapter model (float32 merges only)
    tolerance: float
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        if self.vllm_gap is None:
            return "skipped (not a causal LM: vLLM serves causal LMs)"
        merge = "" if self.merge_gap is None else f"; merged vs adapter model {self.merge_gap:.3g}"
        return (f"max |log-prob gap| vLLM vs transformers {self.vllm_gap:.3g}{merge} (tolerance {self.tolerance:g}) "
                f"{'ok' if self.ok else 'FAILED'}")


def fixed_sequences(tokenizer: Any, vocab_size: int) -> list[list[int]]:
    """The token sequences the check scores: a chat rendered with the template (when there is one), a plain text,
    and the post-sync probe (seeded random ids)."""
    seqs = [encode_text(tokenizer, FIXED_TEXT)]
    if getattr(tokenizer, "chat_template", None):
        seqs.insert(0, encode_text(tokenizer, chat_text(tokenizer, FIXED_CHAT, add_generation_prompt=False)))
    seqs.append(probe_ids(min(vocab_size, len(tokenizer))))
    return [s for s in seqs if len(s) > 1]


def _dtype_of(base: str, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    declared = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    return declared if isinstance(declared, torch.dtype) else DTYPES.get(str(declared), torch.float32)


def export(source: Source, out: Path, dtype: str = "auto") -> Written:
    """Write OUT: the merged model (adapter) or a copy of the checkpoint (full, its ``adapter/`` left out)."""
    if source.kind == "full":
        shutil.copytree(source.path, out, ignore=shutil.ignore_patterns("adapter"), dirs_exist_ok=True)
        return Written(source, out, dtype)
    base = AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(base, str(source.path)).eval()
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"the adapter {source.path} does not load onto {source.base}: {e}") from e
    tokenizer = AutoTokenizer.from_pretrained(str(source.tokenizer or source.base))
    seqs = fixed_sequences(tokenizer, int(model.get_base_model().config.get_text_config().vocab_size))
    reference = hf_logprobs(model, seqs)
    merged = model.merge_and_unload()
    target = _dtype_of(str(source.base), dtype)
    merged.to(target).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card = next((d / TASK_CARD for d in (source.path, source.path.parent) if (d / TASK_CARD).is_file()), None)
    if card is not None:  # a generative reranker's LoRA run: its task card goes with it (raylhf infer reads it)
        shutil.copy(card, out / TASK_CARD)
    del base, model, merged
    gc.collect()
    name = {v: k for k, v in DTYPES.items()}[target]
    return Written(source, out, name, seqs, reference if target == torch.float32 else None)


def check(out: Path, written: Written, tolerance: float = 2e-4) -> CheckResult:
    """vLLM on OUT against transformers on OUT (float32 both) and, for a float32 merge, transformers on OUT against
    the unmerged adapter model."""
    hf_cfg = AutoConfig.from_pretrained(out)
    if not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in hf_cfg.architectures or []):
        return CheckResult(None, None, tolerance)
    seqs = written.sequences or fixed_sequences(AutoTokenizer.from_pretrained(out),
                                                int(hf_cfg.get_text_config().vocab_size))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = hf_logprobs(model, seqs)
    del model
    gc.collect()
    merge_gap = None if written.adapter_logprobs is None else max_gap(ours, written.adapter_logprobs)
    llm = start_llm(str(out), max(len(s) for s in seqs) + 8, dtype="float32")  # compared with float32 transformers
    try:
        vllm_gap = max_gap(prompt_logprobs(llm, seqs), ours)
    finally:
        del llm
        gc.collect()
    result = CheckResult(vllm_gap, merge_gap, tolerance)
    if vllm_gap > tolerance:
        result.problem = (f"vLLM's log-probs of {out} differ from transformers' by up to {vllm_gap:.3g} (> "
                          f"{tolerance:g}): vLLM maps this model's weights differently; report it with the model's "
                          "architecture")
    elif merge_gap is not None and merge_gap > tolerance:
        result.problem = (f"the merged weights give log-probs up to {merge_gap:.3g} away from the adapter model's (> "
                          f"{tolerance:g}): the adapter did not merge faithfully")
    return result
