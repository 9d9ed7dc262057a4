"""Assets shipped with the package: a tiny tokenizer and a factory for tiny random HF causal LMs.

Tests and the demo use these instead of downloading anything.

Layers and where new code goes: docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from raylhf.assets.families import family_config
from raylhf.config.sections import TinyModelConfig

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"


def load_tokenizer(path: str | Path | None = None):  # -> PreTrainedTokenizerBase
    """Load a tokenizer (the shipped tiny one when path is None) with a pad token set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path or TOKENIZER_DIR))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_model_config(cfg: TinyModelConfig | None = None, vocab_size: int | None = None):  # -> PretrainedConfig
    from transformers import LlamaConfig, Qwen2Config

    cfg = cfg or TinyModelConfig()
    tok = load_tokenizer()
    common = dict(
        vocab_size=vocab_size or len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    if cfg.family is not None:  # docs/families.md
        common.pop("intermediate_size")
        return family_config(cfg.family, common, cfg.intermediate_size)
    if cfg.arch == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def write_tiny_model(out_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Write a random-weight HF causal LM plus the shipped tokenizer to ``out_dir`` (safetensors): a Llama / Qwen2
    (``cfg.arch``) or one of the families of ``raylhf/assets/families.py`` (``cfg.family``, docs/families.md)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = tiny_model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=hf_cfg.eos_token_id, pad_token_id=hf_cfg.pad_token_id, do_sample=True
    )
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    return out


def tiny_model_key(cfg: TinyModelConfig) -> str:
    # without family when it is unset: the keys (cache folders) of the models that existed before families did stay
    blob = json.dumps(cfg.model_dump(exclude={"family"} if cfg.family is None else None), sort_keys=True) + (TOKENIZER_DIR / "tokenizer.json").read_text()
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_tiny_model(cache_dir: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """The tiny model for ``cfg`` under ``cache_dir``, written on first use."""
    cfg = cfg or TinyModelConfig()
    out = Path(cache_dir) / f"tiny-{cfg.family or cfg.arch}-{tiny_model_key(cfg)}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_tiny_model(tmp, cfg)
        tmp.rename(out)
    return out


def write_tiny_reward_model(
    out_dir: str | Path, kind: str = "orm", cfg: TinyModelConfig | None = None, num_labels: int = 1
) -> Path:
    """Write a random-weight reward checkpoint plus the shipped tokenizer to ``out_dir`` (safetensors).

    ``kind="orm"``: a sequence-classification Llama/Qwen2 with ``num_labels`` outputs (1 for a reward model)
    and the pad token set; ``kind="prm"``: the tiny causal LM of ``write_tiny_model`` (a step-tag PRM).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    if kind == "prm":
        return write_tiny_model(out_dir, cfg)
    if kind != "orm":
        raise ValueError(f"kind must be 'orm' or 'prm', got {kind!r}")
    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = tiny_model_config(cfg)
    hf_cfg.num_labels = num_labels
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_config(hf_cfg, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    return out
