"""The GPU kit (scripts/gpu_kit/) on a small fake payload, never the real downloads: chunks of at most N MiB, the
manifest, reassembly, named errors for a missing or corrupt chunk, staging one chunk at a time, and the run
script's CPU dry run (receive -> install -> probe -> check with the CUDA parts skipped; no Ray is started)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "scripts" / "gpu_kit"
sys.path.insert(0, str(KIT))

import build_chunks  # noqa: E402
import kitlib  # noqa: E402
import stage  # noqa: E402

CHUNK_MIB = 0.05  # 51,200 bytes: the fake payload below spans several chunks


def fake_wheel(folder: Path, name: str = "raylhf_kit_fake", version: str = "0.0.1") -> Path:
    """A valid pure-Python wheel with one module (``pip install --no-index`` takes it)."""
    di = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{di}/RECORD", "".join(f"{k},,\n" for k in files) + f"{di}/RECORD,,\n")
    return path


@pytest.fixture()
def payload(tmp_path: Path) -> Path:
    folder = tmp_path / "payload-src"
    folder.mkdir()
    fake_wheel(folder)
    (folder / "blob_a.bin").write_bytes(os.urandom(70_000))  # not wheels: only split and joined
    (folder / "blob_b.bin").write_bytes(os.urandom(33_333))
    return folder


@pytest.fixture()
def kit(tmp_path: Path, payload: Path) -> Path:
    out = tmp_path / "kit"
    build_chunks.main(["--payload-dir", str(payload), "--out", str(out), "--chunk-mib", str(CHUNK_MIB)])
    return out


def test_chunks_respect_the_limit_and_the_manifest_describes_them(kit: Path, payload: Path) -> None:
    m = json.loads((kit / "manifest.json").read_text())
    chunks = sorted(kit.glob("chunk-*.bin"))
    assert [c.name for c in chunks] == [c["name"] for c in m["chunks"]] == [f"chunk-{i:02d}.bin"
                                                                              for i in range(len(chunks))]
    limit = int(CHUNK_MIB * kitlib.MIB)
    assert len(chunks) >= 3 and all(c.stat().st_size <= limit for c in chunks)
    assert all(c.stat().st_size == limit for c in chunks[:-1])  # split -b: every chunk but the last is full
    for c, e in zip(chunks, m["chunks"], strict=True):
        assert e["size"] == c.stat().st_size and e["sha256"] == hashlib.sha256(c.read_bytes()).hexdigest()
    assert m["tar"]["size"] == sum(c.stat().st_size for c in chunks)
    assert {w["file"] for w in m["wheels"]} == {p.name for p in payload.iterdir()}
    joined = b"".join(c.read_bytes() for c in chunks)  # `cat chunk-* > wheels.tar`
    assert hashlib.sha256(joined).hexdigest() == m["tar"]["sha256"]


def test_unpack_gives_back_the_payload_byte_for_byte(kit: Path, payload: Path, tmp_path: Path) -> None:
    wheels = kitlib.unpack(kit, tmp_path / "wheels")
    assert sorted(p.name for p in wheels) == sorted(p.name for p in payload.iterdir())
    for p in wheels:
        assert p.read_bytes() == (payload / p.name).read_bytes()
    assert not (kit / "wheels.tar").exists()


def test_a_missing_or_corrupt_chunk_is_named_with_its_expected_sha256(kit: Path) -> None:
    m = kitlib.load_manifest(kit)
    first, second = m["chunks"][0], m["chunks"][1]
    (kit / second["name"]).unlink()
    with pytest.raises(kitlib.KitError, match=rf"{second['name']} is missing .*sha256 {second['sha256']}"):
        kitlib.verify(kit)
    assert kitlib.missing(kit) == [second["name"]]
    data = bytearray((kit / first["name"]).read_bytes())
    data[100] ^= 0xFF
    (kit / first["name"]).write_bytes(bytes(data))
    with pytest.raises(kitlib.KitError) as e:
        kitlib.unpack(kit, kit / "wheels")
    assert f"{first['name']} in {kit} is corrupt" in str(e.value) and first["sha256"] in str(e.value)
    assert second["name"] in str(e.value)  # every bad chunk is listed, not just the first
    (kit / first["name"]).write_bytes(bytes(data[:-7]))
    assert "partial copy" in (kitlib.check_chunk(kit, first) or "")


def test_staging_keeps_one_chunk_and_receive_collects_them(kit: Path, tmp_path: Path) -> None:
    staged, device = tmp_path / "staged", tmp_path / "device"
    n = len(kitlib.load_manifest(kit)["chunks"])
    for k in range(n):
        stage.stage(k, kit, payload=staged)
        assert sorted(p.name for p in staged.iterdir()) == sorted([f"chunk-{k:02d}.bin", "manifest.json"])
        assert kitlib.receive(staged, device) == [f"chunk-{k:02d}.bin"]
        assert len(kitlib.missing(device)) == n - k - 1
    kitlib.verify(device)
    with pytest.raises(SystemExit, match=f"chunk {n} does not exist"):
        stage.stage(n, kit, payload=staged)
    stage.clear(staged)
    assert not staged.exists()


def test_build_refuses_a_chunk_from_another_build(kit: Path, payload: Path, tmp_path: Path) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "chunk-99.bin").write_bytes(b"x")
    device = tmp_path / "device"
    device.mkdir()
    (device / "manifest.json").write_text((kit / "manifest.json").read_text())
    with pytest.raises(kitlib.KitError, match=r"chunk-99\.bin is not in"):
        kitlib.receive(stray, device)


def test_strip_wheel_rewrites_the_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    w = fake_wheel(src, "pkg", "1.0")
    with zipfile.ZipFile(w, "a") as z:  # a big file to strip, listed in RECORD
        z.writestr("pkg/big,lib.so", b"0" * 1000)
        rec = z.read("pkg-1.0.dist-info/RECORD").decode()
    with zipfile.ZipFile(w) as z:
        items = {i.filename: z.read(i.filename) for i in z.infolist() if not i.filename.endswith("RECORD")}
    rec = "".join(f'"{k}",,\n' if "," in k else f"{k},,\n" for k in items) + "pkg-1.0.dist-info/RECORD,,\n"
    w.unlink()
    with zipfile.ZipFile(w, "w") as z:
        for k, v in items.items():
            z.writestr(k, v)
        z.writestr("pkg-1.0.dist-info/RECORD", rec)
    out, removed = build_chunks.strip_wheel(w, tmp_path / "stripped", ["pkg/big*"])
    assert removed == [("pkg/big,lib.so", 1000)]
    build_chunks.check_wheel(out)
    with zipfile.ZipFile(out) as z:
        assert "pkg/big,lib.so" not in z.namelist() and "big" not in z.read("pkg-1.0.dist-info/RECORD").decode()


@pytest.mark.tier2  # ~22 s: the slower tier, run by .ci/run after make test
def test_run_script_dry_run_passes_on_cpu(kit: Path, tmp_path: Path) -> None:
    """The whole sequence the GPU machine runs, on this CPU machine: receive, install (pip --target from the
    chunks), probe, check (CUDA parts skipped with their reason; no Ray)."""
    out, site_dir, empty = tmp_path / "out", tmp_path / "device-kit", tmp_path / "no-payload"
    empty.mkdir()
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_KIT_SRC=str(kit), GPU_KIT_DIR=str(site_dir),
               GPU_KIT_PAYLOAD=str(empty), GPU_KIT_WORK=str(tmp_path / "work"), RAYLHF_GPU_KIT_DRY_RUN="1")
    res = subprocess.run(["bash", str(KIT / "run.sh"), "receive", "install", "probe", "check"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (site_dir / "site" / "raylhf_kit_fake" / "__init__.py").is_file()
    assert "install: " in res.stdout and "still missing: none" in res.stdout
    probe = json.loads((out / "probe.json").read_text())
    assert probe["imports"]["actors.vllm_compat"]["ok"]
    engine = json.loads((out / "engine.json").read_text())
    assert engine["status"] == "skipped" and "dry run" in engine["reason"]
    assert (tmp_path / "work" / "llama-tiny" / "config.json").is_file()
    grpo = json.loads((out / "grpo.json").read_text())
    assert grpo["status"] in {"skipped", "not available"}
    assert "weight_sync: skipped (dry run" in res.stdout
    # a second install of the same kit is a no-op
    res2 = subprocess.run(["bash", str(KIT / "run.sh"), "install"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert res2.returncode == 0 and "installed in" in res2.stdout


def test_run_script_names_a_missing_chunk(kit: Path, tmp_path: Path) -> None:
    m = kitlib.load_manifest(kit)
    (kit / m["chunks"][-1]["name"]).unlink()
    empty = tmp_path / "no-payload"
    empty.mkdir()
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, GPU_KIT_SRC=str(kit),
               GPU_KIT_DIR=str(tmp_path / "device-kit"), GPU_KIT_PAYLOAD=str(empty), RAYLHF_GPU_KIT_DRY_RUN="1")
    res = subprocess.run(["bash", str(KIT / "run.sh"), "receive", "install"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    assert f"{m['chunks'][-1]['name']} is missing" in res.stdout + res.stderr
    assert m["chunks"][-1]["sha256"] in res.stdout + res.stderr
