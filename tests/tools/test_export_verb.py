"""`raylhf export` without an engine: what ``--run`` resolves to, wrong arguments, and merges (LoRA, IA3) whose
checkpoint loads in plain transformers with the adapter model's log-probs. The vLLM check: tests/tools/
test_verbs_slow.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from raylhf.tools import export, merge
from raylhf.tools.export_source import ExportError, resolve_source
from raylhf.tools.vllm_local import hf_logprobs, max_gap

from .helpers import train_adapter


def test_run_resolution(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter = train_adapter(tiny_model_dir, tmp_path / "run", steps=0)
    for given in (tmp_path / "run", adapter):
        src = resolve_source(given)
        assert (src.kind, src.path, src.base, src.tokenizer) == ("adapter", adapter, str(tiny_model_dir), adapter)
    assert resolve_source(adapter, base=str(tmp_path)).base == str(tmp_path)
    assert resolve_source(tiny_model_dir).kind == "full"
    step = tmp_path / "run2" / "checkpoints" / "step-000004" / "hf"  # a run with resumable checkpoints only
    shutil.copytree(tiny_model_dir, step)
    assert resolve_source(tmp_path / "run2").path == step
    assert resolve_source(step.parent).path == step
    with pytest.raises(ExportError, match="no such directory"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ExportError, match="neither an adapter"):
        resolve_source(tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "/gone/model"}))
    with pytest.raises(ExportError, match=r"base model /gone/model is not there.*--base"):
        resolve_source(adapter)


def test_argument_errors(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    adapter = train_adapter(tiny_model_dir, tmp_path / "run", steps=0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    for argv, message in [(["--run", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], "no such directory"),
                          (["--run", str(adapter), "--output", str(busy)], "not an empty directory"),
                          (["--run", str(adapter), "--output", str(adapter / "merged")], "inside the source")]:
        assert export.main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--run", str(adapter)])  # --output missing


@pytest.mark.parametrize("tuner", ["lora", "ia3"])
def test_merge_writes_a_plain_checkpoint_with_the_adapter_models_logprobs(tmp_path: Path, tiny_model_dir: Path,
                                                                         tuner: str) -> None:
    train_adapter(tiny_model_dir, tmp_path / "run", tuner)
    out = tmp_path / "merged"
    assert export.main(["--run", str(tmp_path / "run"), "--output", str(out), "--no-check"]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists()
    written = merge.export(resolve_source(tmp_path / "run"), tmp_path / "again")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert written.adapter_logprobs is not None and len(written.sequences) == 3
    lp = hf_logprobs(merged, written.sequences)
    assert max_gap(lp, written.adapter_logprobs) < 1e-5
    assert max_gap(lp, hf_logprobs(base, written.sequences)) > 1e-3  # the adapter did train


def test_a_merged_checkpoint_is_copied_without_its_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoint"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / "adapter").mkdir()
    (ckpt / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "out"
    assert export.main(["--run", str(tmp_path / "run"), "--output", str(out), "--no-check"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
