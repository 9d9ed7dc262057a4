"""The GPU kit's import probe: what is installed and importable, with versions and where each comes from; writes
``probe.json`` to --out. Each import is tried on its own (a failure is recorded, not fatal); exit status 1 when
one of the packages raylhf needs on the GPU path does not import."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

NEEDED = ["torch", "transformers", "vllm", "ray", "deepspeed", "pydantic", "peft", "safetensors", "raylhf",
          "actors.vllm_compat"]
# the vLLM modules raylhf's rollout imports, and the kernels a dense model on Hopper loads
VLLM_MODULES = ["vllm.engine.arg_utils", "vllm.v1.engine.async_llm", "vllm.distributed.weight_transfer.factory",
                "vllm.model_executor.model_loader.reload", "vllm.sampling_params", "vllm.inputs"]
CUDA_MODULES = ["vllm._C_stable_libtorch", "vllm.vllm_flash_attn.flash_attn_interface"]


def try_import(name: str) -> dict[str, Any]:
    t = time.time()
    try:
        m = importlib.import_module(name)
    except BaseException as e:  # a probe records every failure, SystemExit included
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500],
                "trace": traceback.format_exc(limit=3)[-1500:]}
    return {"ok": True, "version": str(getattr(m, "__version__", "")), "file": str(getattr(m, "__file__", "")),
            "s": round(time.time() - t, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-kit"))
    args = p.parse_args(argv)
    res: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "pythonpath": os.environ.get("PYTHONPATH", "")}
    res["imports"] = {n: try_import(n) for n in NEEDED}
    import torch

    cuda = torch.cuda.is_available()
    res["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        res["torch"].update(device=props.name, capability=f"{props.major}.{props.minor}",
                            total_gib=round(props.total_memory / 2**30, 1), nccl=str(torch.cuda.nccl.version()))
    if res["imports"]["vllm"]["ok"]:
        res["vllm_modules"] = {n: try_import(n) for n in VLLM_MODULES}
        if cuda:
            res["vllm_cuda"] = {n: try_import(n) for n in CUDA_MODULES}
            fa = sys.modules.get("vllm.vllm_flash_attn.flash_attn_interface")
            if fa is not None:
                res["flash_attn"] = {"fa2": getattr(fa, "FA2_AVAILABLE", None), "fa3": getattr(fa, "FA3_AVAILABLE", None),
                                     "fa3_reason": getattr(fa, "FA3_UNAVAILABLE_REASON", None)}
        else:
            res["vllm_cuda"] = "skipped: no CUDA device (dry run)"
        from actors import vllm_compat

        res["vllm_compat"] = {"version": vllm_compat.vllm_version(), "log_format": vllm_compat.log_format(),
                              "has_weight_transfer": vllm_compat.has_weight_transfer()}
    bad = [n for n, r in res["imports"].items() if not r["ok"]]
    res["missing"] = bad
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    for n, r in res["imports"].items():
        print(f"{n:20s} {'ok ' + r['version'] if r['ok'] else 'FAILED ' + r['error']}")
    print(f"torch {torch.__version__} cuda {torch.version.cuda} available {cuda} {res['torch'].get('device', '')}")
    if "flash_attn" in res:
        print(f"flash-attention: {res['flash_attn']}")
    for group in ("vllm_modules", "vllm_cuda"):
        if isinstance(res.get(group), dict):
            for n, r in res[group].items():
                print(f"  {n:45s} {'ok' if r['ok'] else 'FAILED ' + r['error']}")
    print(f"probe: {'all imports ok' if not bad else 'failed: ' + ', '.join(bad)}; wrote {args.out}/probe.json")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
