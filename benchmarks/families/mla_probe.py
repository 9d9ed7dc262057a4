# ruff: noqa
# Probe script of the 2026-12-07 model-family investigation (issue 27), kept as it ran: paths under /tmp/families,
# run from /tmp/families. Findings: README.md beside it. Not part of the product or its tests.
"""MLA parity probe: fresh vLLM engine vs HF on variants of a dense DeepSeek tiny model (no MoE).
Usage: python mla_probe.py SRC VARIANT   VARIANT in: base, sharp (q/kv_a x8), sharp_flip (x8 + rope_interleave toggled)."""
import json
import os
import shutil
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch

SRC, VAR = sys.argv[1], sys.argv[2]

def main():
    import vllm
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(f"/tmp/families/{SRC}", dtype=torch.float32).eval()
    if VAR.startswith("sharp"):
        with torch.no_grad():
            for n, p in m.named_parameters():
                if any(k in n for k in ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")) and p.dim() == 2:
                    p.mul_(4.0)
    if VAR.endswith("flip"):
        m.config.rope_interleave = not getattr(m.config, "rope_interleave", True)
    out = f"/tmp/families/{SRC}_{VAR}"
    shutil.rmtree(out, ignore_errors=True)
    m.save_pretrained(out, safe_serialization=True)
    for f in os.listdir(f"/tmp/families/{SRC}"):
        if f.startswith("tokenizer") or f.startswith("special"):
            shutil.copy(f"/tmp/families/{SRC}/{f}", out)
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    V = m.config.vocab_size
    ids = torch.randint(10, V - 10, (32,), generator=torch.Generator().manual_seed(1234)).tolist()
    with torch.no_grad():
        lp = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    llm = vllm.LLM(model=out, enforce_eager=True, dtype="float32", max_model_len=256, seed=0,
                   enable_prefix_caching=False, max_num_batched_tokens=256, max_num_seqs=8, **({"compilation_config": {"custom_ops": json.loads(os.environ["PROBE_CUSTOM_OPS"])}} if os.environ.get("PROBE_CUSTOM_OPS") else {}))
    o = llm.generate([{"prompt_token_ids": ids}], vllm.SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    lv = torch.tensor([d[t].logprob for t, d in zip(ids[1:], o.prompt_logprobs[1:], strict=False)])
    d = (lv - lp).abs()
    r = {"src": SRC, "variant": VAR, "rope_interleave": getattr(m.config, "rope_interleave", None),
         "max_abs_diff": float(d.max()), "diff_pos1": float(d[0]), "diff_first4": d[:4].tolist(), "diff_last4": d[-4:].tolist()}
    print("PROBE", json.dumps(r), flush=True)
    json.dump(r, open(f"/tmp/families/probe_{SRC}_{VAR}{os.environ.get('PROBE_CUSTOM_OPS','')}.json", "w"))

if __name__ == "__main__":
    main(); os._exit(0)
