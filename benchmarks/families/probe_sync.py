# ruff: noqa
# Probe script of the 2026-12-07 follow-up (issue 27 item 6), kept as it ran from /tmp/fam (models written there by
# raylhf.assets.write_tiny_model(TinyModelConfig(family=...)); deepseek_v3 and qwen3_moe_pad by hand, see README.md).
# Not part of the product or its tests.
"""Dev probe: raylhf's transfer engine (files transport) on one family: perturb HF, sync, compare probe log-probs."""
import json, os, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, "/work/main")
import torch

def main(name):
    from transformers import AutoModelForCausalLM
    from safetensors.torch import save_file
    import vllm
    from raylhf.core.weights import probe_ids
    from actors import vllm_families
    nofix = os.environ.get("PROBE_NOFIX", "")
    if nofix == "f1":
        vllm_families.repack_cpu_experts = lambda m: 0
    if nofix == "f2":
        vllm_families.GPT_OSS = "-"
    d = f"/tmp/fam/{name}"
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = probe_ids(hf.config.vocab_size)
    def hf_lp():
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    t = time.time()
    llm = vllm.LLM(model=d, enforce_eager=True, dtype="float32", max_model_len=256, seed=0, enable_prefix_caching=False,
                   max_num_batched_tokens=256, max_num_seqs=8, worker_extension_cls="actors.vllm_transfer.RaylhfWorkerExtension",
                   weight_transfer_config={"backend": "raylhf"}, **vllm_families.engine_kwargs(d, False))
    start = time.time() - t
    def v_lp():
        sp = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        out = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
        return torch.tensor([dd[tk].logprob for tk, dd in zip(ids[1:], out.prompt_logprobs[1:])])
    res = {"family": name, "start_s": round(start, 1), "initial": float((hf_lp() - v_lp()).abs().max())}
    def sync(tag):
        path = f"/dev/shm/probe-{name}.safetensors"
        save_file({n: p.detach().contiguous() for n, p in hf.named_parameters()}, path)
        llm.collective_rpc("start_weight_update")
        llm.collective_rpc("update_weights", args=({"transport": "files", "files": [path]},))
        llm.collective_rpc("finish_weight_update")
        res[tag] = float((hf_lp() - v_lp()).abs().max())
    sync("same")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    res["stale"] = float((hf_lp() - v_lp()).abs().max())
    sync("sync1")
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    sync("sync2")
    print("RESULT", json.dumps(res), flush=True)

if __name__ == "__main__":
    main(sys.argv[1])
