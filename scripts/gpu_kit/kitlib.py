"""The GPU kit's chunk format: a tar of wheels cut into numbered chunks of at most N MiB, with a manifest.

Standard library only: it runs on the GPU machine (``python3 scripts/gpu_kit/kitlib.py ...``, called by run.sh)
as well as here (``build_chunks.py``, the tests).

    chunk-00.bin, chunk-01.bin, ...   the bytes of wheels.tar, in order (``cat chunk-* > wheels.tar``)
    manifest.json                     {"chunks": [{"name", "size", "sha256"}], "tar": {"size", "sha256"},
                                       "wheels": [{"file", "size", "sha256"}], ...}

Commands (exit status 1 with a message naming the chunk, its expected sha256 and what was found):

    python3 kitlib.py verify DIR               every chunk of DIR/manifest.json present with its size and sha256
    python3 kitlib.py missing DIR              the names of the chunks not yet in DIR (or damaged), one a line
    python3 kitlib.py receive SRC_DIR DIR      copy the chunks found in SRC_DIR (and the manifest) into DIR
    python3 kitlib.py unpack DIR WHEEL_DIR     verify, reassemble, check the tar's sha256, extract the wheels
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
MANIFEST = "manifest.json"
READ = 8 * MIB


class KitError(RuntimeError):
    """A missing, short or corrupt chunk or wheel; the message names it and its expected sha256."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ):
            h.update(block)
    return h.hexdigest()


def chunk_name(i: int) -> str:
    return f"chunk-{i:02d}.bin"


def write_tar(wheels: Iterable[Path], tar_path: Path) -> list[dict[str, Any]]:
    """An uncompressed tar of ``wheels`` (flat, by file name; wheels are zip files already); returns their entries
    for the manifest."""
    entries = []
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for w in sorted(wheels, key=lambda p: p.name):
            info = tar.gettarinfo(str(w), arcname=w.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""  # reproducible bytes
            with open(w, "rb") as f:
                tar.addfile(info, f)
            entries.append({"file": w.name, "size": w.stat().st_size, "sha256": sha256_file(w)})
    return entries


def split(tar_path: Path, out_dir: Path, chunk_mib: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cut ``tar_path`` into ``out_dir/chunk-NN.bin`` of at most ``chunk_mib`` MiB (what ``split -b`` does) and
    write ``out_dir/manifest.json``; chunks of an earlier build left in ``out_dir`` are removed first."""
    limit = int(chunk_mib * MIB)
    if limit <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_mib} MiB")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("chunk-*.bin"):
        old.unlink()
    chunks = []
    with open(tar_path, "rb") as src:
        i = 0
        while True:
            data = src.read(limit)
            if not data:
                break
            path = out_dir / chunk_name(i)
            path.write_bytes(data)
            chunks.append({"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            i += 1
    manifest = {"format": 1, "chunk_mib": chunk_mib, "chunks": chunks,
                "tar": {"name": "wheels.tar", "size": tar_path.stat().st_size, "sha256": sha256_file(tar_path)},
                **(extra or {})}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(kit_dir: Path) -> dict[str, Any]:
    path = kit_dir / MANIFEST
    if not path.is_file():
        raise KitError(f"no {MANIFEST} in {kit_dir}: bring it with the first chunk (scripts/gpu_kit/stage.py 0)")
    return json.loads(path.read_text())


def check_chunk(kit_dir: Path, entry: dict[str, Any]) -> str | None:
    """None if the chunk is there, whole; else why not (naming it and its expected size and sha256)."""
    path = kit_dir / entry["name"]
    want = f"expected {entry['size']} bytes, sha256 {entry['sha256']}"
    if not path.is_file():
        return f"{entry['name']} is missing from {kit_dir} ({want}); stage it and run `run.sh receive` again"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{entry['name']} in {kit_dir} has {size} bytes ({want}): a partial copy; bring it again"
    got = sha256_file(path)
    if got != entry["sha256"]:
        return f"{entry['name']} in {kit_dir} is corrupt: sha256 {got} ({want}); bring it again"
    return None


def missing(kit_dir: Path) -> list[str]:
    manifest = load_manifest(kit_dir)
    return [c["name"] for c in manifest["chunks"] if check_chunk(kit_dir, c) is not None]


def verify(kit_dir: Path) -> dict[str, Any]:
    """The manifest, once every chunk checked out; else a KitError listing each bad chunk."""
    manifest = load_manifest(kit_dir)
    problems = [p for c in manifest["chunks"] if (p := check_chunk(kit_dir, c)) is not None]
    if problems:
        raise KitError(f"{len(problems)} of {len(manifest['chunks'])} chunks not ready:\n  " + "\n  ".join(problems))
    return manifest


def receive(src_dir: Path, kit_dir: Path) -> list[str]:
    """Copy the manifest and each chunk of ``src_dir`` (the staging folder that travelled with the working tree)
    into ``kit_dir``, checking each against the manifest; returns the names copied."""
    kit_dir.mkdir(parents=True, exist_ok=True)
    if (src_dir / MANIFEST).is_file():
        shutil.copyfile(src_dir / MANIFEST, kit_dir / MANIFEST)
    manifest = load_manifest(kit_dir)
    by_name = {c["name"]: c for c in manifest["chunks"]}
    copied = []
    for path in sorted(src_dir.glob("chunk-*.bin")):
        entry = by_name.get(path.name)
        if entry is None:
            raise KitError(f"{path.name} is not in {kit_dir / MANIFEST} (a chunk of another build?): rebuild or "
                           "stage chunk 0 again, which brings this build's manifest")
        tmp = kit_dir / (path.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(kit_dir / path.name)
        problem = check_chunk(kit_dir, entry)
        if problem:
            raise KitError(problem)
        copied.append(path.name)
    return copied


def reassemble(kit_dir: Path, tar_path: Path) -> dict[str, Any]:
    manifest = verify(kit_dir)
    h = hashlib.sha256()
    with open(tar_path, "wb") as out:
        for c in manifest["chunks"]:
            with open(kit_dir / c["name"], "rb") as f:
                while block := f.read(READ):
                    h.update(block)
                    out.write(block)
    want = manifest["tar"]["sha256"]
    if h.hexdigest() != want:
        raise KitError(f"reassembled {tar_path} has sha256 {h.hexdigest()}, expected {want}: the chunks are from "
                       "different builds; bring them again")
    return manifest


def unpack(kit_dir: Path, wheel_dir: Path) -> list[Path]:
    """Verify and reassemble the chunks of ``kit_dir``, extract the wheels into ``wheel_dir``, check each wheel's
    sha256; returns the wheels' paths."""
    tar_path = kit_dir / "wheels.tar"
    manifest = reassemble(kit_dir, tar_path)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise KitError(f"unexpected entry {member.name!r} in {tar_path}")
            src = tar.extractfile(member)
            assert src is not None
            with src, open(wheel_dir / member.name, "wb") as out:
                shutil.copyfileobj(src, out, READ)
    tar_path.unlink()
    paths = []
    for w in manifest.get("wheels", []):
        path = wheel_dir / w["file"]
        got = sha256_file(path) if path.is_file() else "missing"
        if got != w["sha256"]:
            raise KitError(f"wheel {w['file']}: sha256 {got}, expected {w['sha256']}")
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"verify", "missing", "receive", "unpack"}:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], [Path(a) for a in argv[1:]]
    try:
        if cmd == "verify":
            m = verify(args[0])
            print(f"kit ok: {len(m['chunks'])} chunks, {m['tar']['size'] / MIB:.1f} MiB, {len(m.get('wheels', []))} "
                  "wheels")
        elif cmd == "missing":
            print("\n".join(missing(args[0])))
        elif cmd == "receive":
            got = receive(args[0], args[1])
            left = missing(args[1])
            print(f"received {', '.join(got) or 'no chunk'} into {args[1]}; still missing: {', '.join(left) or 'none'}")
        else:
            wheels = unpack(args[0], args[1])
            print(f"unpacked {len(wheels)} wheels into {args[1]}")
    except KitError as e:
        print(f"gpu kit: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
