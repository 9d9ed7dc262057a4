"""Resumable checkpoints without Ray: atomic commit, verification, pruning, --resume resolution, and the
state of the data streams and the metrics log across a resume."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylhf.config.loader import parse_argv
from raylhf.core import checkpoint as ck
from raylhf.driver.offline import RowOrder
from raylhf.driver.stream import PromptStream


def _write(run: Path, step: int, payload: bytes = b"x" * 100) -> Path:
    tmp = ck.staging_dir(run, step)
    (tmp / "engine").mkdir()
    (tmp / "engine" / "model.pt").write_bytes(payload)
    return ck.commit(tmp, ck.step_dir(run, step), {"step": step, "data": {"pos": step}})


def test_commit_writes_a_verified_checkpoint_and_no_temporary_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "step-000003"
    assert ck.verify(path) == ""
    assert ck.read_state(path) == {"format": ck.FORMAT, "step": 3, "data": {"pos": 3}}
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"engine/model.pt", "trainer_state.json"}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]


def test_verify_names_what_is_wrong(tmp_path: Path) -> None:
    path = _write(tmp_path, 1)
    model = path / "engine" / "model.pt"
    model.write_bytes(b"x" * 50)
    assert "50 bytes, the manifest says 100" in ck.verify(path)
    model.write_bytes(b"y" * 100)  # same size, other bytes
    assert "SHA-256" in ck.verify(path)
    model.unlink()
    assert "engine/model.pt missing" in ck.verify(path)
    (path / "manifest.json").unlink()
    assert "interrupted write" in ck.verify(path)


def test_latest_skips_damaged_and_half_written_checkpoints(tmp_path: Path) -> None:
    _write(tmp_path, 2)
    good = _write(tmp_path, 4)
    bad = _write(tmp_path, 6)
    (bad / "engine" / "model.pt").write_bytes(b"")  # truncated
    half = ck.step_dir(tmp_path, 8)  # a writer killed before the manifest (renamed by hand, say)
    (half / "engine").mkdir(parents=True)
    ck.staging_dir(tmp_path, 10)  # a temporary dir is never a candidate
    found = ck.latest(tmp_path)
    assert found.path == good
    assert [p.name for p, _ in found.skipped] == ["step-000008", "step-000006"]
    assert "no manifest.json" in found.skipped[0][1] and "truncated" in found.skipped[1][1]


def test_prune_keeps_the_newest_complete(tmp_path: Path) -> None:
    for s in (1, 2, 3, 4):
        _write(tmp_path, s)
    removed = ck.prune(tmp_path, 2)
    assert [p.name for p in removed] == ["step-000001", "step-000002"]
    assert [s for s, _ in ck.checkpoints(tmp_path)] == [3, 4]
    assert ck.prune(tmp_path, None) == []


def test_commit_replaces_a_checkpoint_of_the_same_step(tmp_path: Path) -> None:
    _write(tmp_path, 5, b"a" * 10)
    path = _write(tmp_path, 5, b"b" * 20)
    assert (path / "engine" / "model.pt").read_bytes() == b"b" * 20 and ck.verify(path) == ""
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000005"]


def test_resolve_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    assert ck.resolve_resume(None, root, None, "grpo") is None
    assert ck.resolve_resume("auto", root, "named", "grpo") is None  # nothing yet: fresh start
    assert "starting fresh" in capsys.readouterr().out
    old = _write(root / "grpo-20260101-000000", 2)
    time.sleep(0.01)
    newer_run = root / "grpo-20260102-000000"
    good = _write(newer_run, 3)
    bad = _write(newer_run, 5)
    (bad / "trainer_state.json").write_text("{")  # corrupted after the manifest: size differs
    os.utime(newer_run)
    assert ck.resolve_resume("auto", root, None, "grpo") == good
    assert "skipping" in capsys.readouterr().out
    assert ck.resolve_resume("auto", root, "grpo-20260101-000000", "grpo") == old
    assert ck.resolve_resume(str(newer_run), root, None, "grpo") == good  # a run dir: its newest good one
    assert ck.resolve_resume(str(old), root, None, "grpo") == old
    with pytest.raises(ck.ResumeError, match="not a complete checkpoint"):
        ck.resolve_resume(str(bad), root, None, "grpo")
    with pytest.raises(ck.ResumeError, match="no such file"):
        ck.resolve_resume(str(tmp_path / "nope"), root, None, "grpo")
    assert ck.run_dir_of(good) == newer_run.resolve()


def test_killed_writer_leaves_no_checkpoint_that_auto_picks(tmp_path: Path) -> None:
    """A process SIGKILLed while writing: only its temporary dir remains; auto resumes the previous one."""
    first = _write(tmp_path, 1)
    code = ("import sys, time; from pathlib import Path; from raylhf.core import checkpoint as ck\n"
            f"tmp = ck.staging_dir(Path({str(tmp_path)!r}), 2)\n"
            "(tmp / 'big.bin').write_bytes(b'z' * 1000); print('written', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert ck.latest(tmp_path).path == first


def test_prompt_stream_resumes_mid_epoch_and_across_epochs() -> None:
    items = list(range(10))
    ref = PromptStream(items, 3, shuffle=True, seed=4)  # type: ignore[arg-type]
    expected = [next(ref) for _ in range(9)]
    for cut in (1, 3, 4, 7):
        a = PromptStream(items, 3, shuffle=True, seed=4)  # type: ignore[arg-type]
        got = [next(a) for _ in range(cut)]
        state = json.loads(json.dumps(a.state_dict()))  # it goes through trainer_state.json
        b = PromptStream(items, 3, shuffle=True, seed=99)  # type: ignore[arg-type]
        b.load_state_dict(state)
        got += [next(b) for _ in range(9 - cut)]
        assert got == expected, cut
    with pytest.raises(ValueError, match="same data files"):
        PromptStream(items[:5], 3, True, 4).load_state_dict(state)  # type: ignore[arg-type]


def test_row_order_resumes() -> None:
    ref = RowOrder(7, True, 1)
    expected = [ref.take(3) for _ in range(6)]
    a = RowOrder(7, True, 1)
    got = [a.take(3) for _ in range(4)]
    b = RowOrder(7, True, 2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert got + [b.take(3) for _ in range(2)] == expected


def test_metrics_log_keeps_rows_up_to_the_resumed_step(tmp_path: Path) -> None:
    from raylhf.config.run import LoggingConfig
    from raylhf.driver.metrics_log import MetricsLogger

    cfg = LoggingConfig(report_to=[], progress=False)
    rows = [{"step": 0, "eval/accuracy": 0.1}] + [{"step": s, "loss": float(s)} for s in range(1, 8)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    log = MetricsLogger(tmp_path, cfg, 10, "t", resume_step=5, stream=io.StringIO())
    assert [r["step"] for r in log.history] == [0, 1, 2, 3, 4, 5]
    log.log(6, {"loss": 60.0})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5, 6] and lines[-1]["loss"] == 60.0


def test_resume_flag_is_checkpoint_resume() -> None:
    assert parse_argv(["--resume", "auto"]).overrides == [("checkpoint.resume", "auto")]
    assert parse_argv(["--resume=/x/step-000002"]).overrides == [("checkpoint.resume", "/x/step-000002")]


def test_rng_state_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    ck.save_rng(tmp_path / "rng.pt")
    a = (torch.rand(3), random.random(), np.random.rand())
    ck.load_rng(tmp_path / "rng.pt")
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
