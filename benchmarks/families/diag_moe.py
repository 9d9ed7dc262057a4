# ruff: noqa
# Probe script of the 2026-12-07 model-family investigation (issue 27), kept as it ran: paths under /tmp/families,
# run from /tmp/families. Findings: README.md beside it. Not part of the product or its tests.
"""Which parameter subsets survive reload_weights for a MoE family. Usage: python diag_moe.py NAME (model dir from check_family)."""
import json
import os
import re
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch

sys.path.insert(0, "/tmp/families")
sys.argv = sys.argv[:2] + sys.argv[3:] if False else sys.argv
from check_family import hf_logprobs, vllm_logprobs

NAME = sys.argv[1]; MODE = sys.argv[2] if len(sys.argv) > 2 else "named"; TAG = MODE + ("+ops" + os.environ["PROBE_CUSTOM_OPS"].replace("\"", "").replace("[", "").replace("]", "").replace(",", "_") if os.environ.get("PROBE_CUSTOM_OPS") else ""); OUT = f"/tmp/families/{NAME}"

REPACK = "repack" in MODE
if REPACK: MODE = MODE.replace("+repack", "")

def repack_moe(worker):
    """Workaround probe: re-run the CPU experts' prepack that vLLM skips on a weight update."""
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    model = worker.model_runner.model
    n = 0
    for m in model.modules():
        qm = getattr(m, "quant_method", None)
        k = getattr(qm, "moe_kernel", None)
        fe = getattr(k, "fused_experts", None)
        if isinstance(fe, CPUUnquantizedExperts):
            fe.process_weights_after_loading(m); n += 1
    return n

def main():
    import vllm
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
    V = model.config.vocab_size
    ids = torch.randint(10, V - 10, (32,), generator=torch.Generator().manual_seed(1234)).tolist()
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    llm = vllm.LLM(model=OUT, enforce_eager=True, dtype="float32", max_model_len=256, seed=0,
                   enable_prefix_caching=False, max_num_batched_tokens=256, max_num_seqs=8, **({"compilation_config": {"custom_ops": json.loads(os.environ["PROBE_CUSTOM_OPS"])}} if os.environ.get("PROBE_CUSTOM_OPS") else {}))
    subsets = {
        "none(reload original)": lambda n: False,
        "experts_only": lambda n: ".experts." in n,
        "router_only": lambda n: re.search(r"mlp\.(gate|router)\.", n) is not None,
        "attn_only": lambda n: "self_attn" in n,
        "sinks_only": lambda n: n.endswith("sinks"),
        "shared_experts_only": lambda n: "shared_expert" in n,
        "embed_lm_head_norms": lambda n: "embed" in n or "lm_head" in n or "norm" in n,
        "non_moe(all but experts/router)": lambda n: ".experts." not in n and re.search(r"mlp\.(gate|router)\.", n) is None,
        "all": lambda n: True,
    }
    res = {}
    for label, sel in subsets.items():
        torch.manual_seed(7)
        chosen = []
        with torch.no_grad():
            for n, p in model.named_parameters():
                noise = torch.randn_like(p) * 0.02
                p.copy_(orig[n] + (noise if sel(n) else 0))
                if sel(n): chosen.append(n)
        if label != "none(reload original)" and not chosen:
            continue
        lp_hf = hf_logprobs(model, ids)
        if MODE == "ckpt":
            import shutil

            from safetensors.torch import load_file
            tmp = OUT + "_diagtmp"; shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            items = [kv for f in sorted(os.listdir(tmp)) if f.endswith(".safetensors") for kv in load_file(os.path.join(tmp, f)).items()]
        else:
            items = [(n, p.detach().clone()) for n, p in model.named_parameters()]
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items)})
        if REPACK:
            llm.collective_rpc(repack_moe)
        lp_v = vllm_logprobs(llm, ids)
        res[label] = {"n_perturbed": len(chosen), "max_abs_diff": float((lp_v - lp_hf).abs().max())}
        print("DIAG", label, res[label], flush=True)
    json.dump(res, open(f"/tmp/families/{NAME}_{TAG}_diag.json", "w"), indent=1)

if __name__ == "__main__":
    main(); os._exit(0)
