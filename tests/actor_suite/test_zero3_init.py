"""ZeRO-3 builds the policy partitioned (``actors/ds_config.py``: ``HfDeepSpeedConfig`` before ``from_pretrained``,
so transformers loads inside ``deepspeed.zero.Init``), with the full and the LoRA tuner: the base weights are
DeepSpeed partitions as soon as ``build_model`` returns, the loaded values are the checkpoint's, a step trains with
the chunked log-probs, and the exported weights have the full shapes. One rank on gloo, in a subprocess
(DeepSpeed's process group is once per process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
from actors.common import batched_logprobs
from actors.policy import PolicyWorker
from raylhf.core.batch import Objective, TrainBatch

path, port, tuner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
policy = {"zero_stage": 3, "micro_batch_size": 2, "lr": 1e-2, "logprob_chunk_size": 4}
if tuner == "lora":
    policy["tuner"] = {"type": "lora", "lora_rank": 4, "lora_dropout": 0.0}
w = PolicyWorker(0, 1, "127.0.0.1", port, model_path=path, policy=policy, dtype="float32")
seen = {}
build = w.build_model
def spy():
    model = build()
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    seen["partitioned"] = all(hasattr(p, "ds_id") and p.numel() == 0 for p in base)
    seen["hf_zero3"] = w._zero3_config is not None
    return model
w.build_model = spy
g = torch.Generator().manual_seed(0)
ids = [torch.randint(1, 200, (n,), generator=g) for n in (6, 9, 4, 7)]
# before setup: while the worker's HfDeepSpeedConfig lives, every from_pretrained in the process is partitioned
plain = batched_logprobs(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), ids, 2)
ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
w.setup()
live = w.logprobs(ids)
batch = TrainBatch(input_ids=ids, loss_mask=[torch.ones(len(x)) for x in ids],
                   advantages=[torch.full((len(x),), 1.0 - 0.5 * i) for i, x in enumerate(ids)])
m = w.train_step(batch, Objective(pg_coef=1.0).with_counts(batch))
full = dict(w._full_params())
print("RESULT " + json.dumps({
    **seen, "load_gap": max(float((a - b).abs().max()) for a, b in zip(live, plain)),
    "loss_finite": bool(torch.isfinite(torch.tensor(m["loss/total"]))), "skipped": m["guard/skipped"],
    "shapes_match": all(full[k].shape == v.shape for k, v in ref.items() if k in full),
    "names_match": set(ref) - {"lm_head.weight"} <= set(full),
    "moved": max(float((full[k] - ref[k]).abs().max()) for k in full if k in ref)}))
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("tuner", ["full", "lora"])
def test_zero3_builds_partitioned_and_trains(tmp_path: Path, tiny_model_dir: Path, tuner: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(port), tuner], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    assert r["hf_zero3"] and r["partitioned"], r  # each rank held only its partition from the start
    assert r["load_gap"] < 1e-5, r  # the partitions hold the checkpoint's values
    assert r["loss_finite"] and r["skipped"] == 0.0, r
    assert r["shapes_match"] and r["names_match"] and r["moved"] > 1e-4, r
