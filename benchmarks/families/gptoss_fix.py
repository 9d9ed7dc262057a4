# ruff: noqa
# Probe script of the 2026-12-07 model-family investigation (issue 27), kept as it ran: paths under /tmp/families,
# run from /tmp/families. Findings: README.md beside it. Not part of the product or its tests.
"""gpt-oss probe: reload_weights drops experts + sinks (direct param.copy_ in GptOss load path). Try: reload, then direct
model.load_weights for experts+sinks, then re-run the CPU experts' prepack."""
import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch

sys.argv = [sys.argv[0], "gpt_oss"]
sys.path.insert(0, "/tmp/families")
from check_family import hf_logprobs, vllm_logprobs
from diag_moe import repack_moe

OUT = "/tmp/families/gpt_oss_sw8"
ITEMS = None

def direct_load(worker):
    model = worker.model_runner.model
    sel = [(n, t) for n, t in ITEMS if ".experts." in n or n.endswith("sinks")]
    loaded = model.load_weights(iter(sel))
    return len(sel), len(loaded) if loaded is not None else None

def main():
    global ITEMS
    import vllm
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
    V = model.config.vocab_size
    ids = torch.randint(10, V - 10, (32,), generator=torch.Generator().manual_seed(1234)).tolist()
    llm = vllm.LLM(model=OUT, enforce_eager=True, dtype="float32", max_model_len=256, seed=0,
                   enable_prefix_caching=False, max_num_batched_tokens=256, max_num_seqs=8)
    torch.manual_seed(7)
    with torch.no_grad():
        for _n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    lp_hf = hf_logprobs(model, ids)
    ITEMS = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(ITEMS)})
    r = {"after_reload": float((vllm_logprobs(llm, ids) - lp_hf).abs().max())}
    try:
        r["direct_load"] = llm.collective_rpc(direct_load)
        r["after_direct_load"] = float((vllm_logprobs(llm, ids) - lp_hf).abs().max())
        r["repacked_layers"] = llm.collective_rpc(repack_moe)
        r["after_direct_load_and_repack"] = float((vllm_logprobs(llm, ids) - lp_hf).abs().max())
    except Exception as e:
        import traceback; traceback.print_exc()
        r["err"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    print("GPTOSS", json.dumps(r), flush=True)
    json.dump(r, open("/tmp/families/gpt_oss_fix.json", "w"))

if __name__ == "__main__":
    main(); os._exit(0)
