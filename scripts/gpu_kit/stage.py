"""Put chunk K of the GPU kit where the next `run` call carries it: ``scripts/gpu_kit/payload/`` (git does not
ignore it, so the run tool copies it with the working tree), with the manifest; the chunk staged before is removed
first, so the tree never holds two (each call brings at most 64 MiB, the tree included).

    .venv/bin/python scripts/gpu_kit/stage.py 0        # then run: bash scripts/gpu_kit/run.sh receive
    .venv/bin/python scripts/gpu_kit/stage.py 3        # the last one can ride with: run.sh receive install probe check
    .venv/bin/python scripts/gpu_kit/stage.py clear    # empty the folder again (do this before any commit)

The payload folder must never be committed: `clear` when done (``git status`` shows it while it holds a chunk).
The run tool's ``carry`` argument is the alternative that needs no staging: carry=[".gpu_kit/chunk-0K.bin",
".gpu_kit/manifest.json"] (ignored paths travel too); run.sh receive looks in both places.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kitlib

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = Path(__file__).resolve().parent / "payload"


def clear(payload: Path = PAYLOAD) -> None:
    if payload.is_dir():
        for p in payload.iterdir():
            if p.name.startswith("chunk-") or p.name in {kitlib.MANIFEST, "README"}:
                p.unlink()
        if not any(payload.iterdir()):
            payload.rmdir()


def stage(k: int, kit_dir: Path, payload: Path = PAYLOAD) -> Path:
    """Copy chunk ``k`` of ``kit_dir`` and its manifest into ``payload`` (emptied first), checked against the
    manifest; returns the staged chunk's path."""
    manifest = kitlib.load_manifest(kit_dir)
    chunks = manifest["chunks"]
    if not 0 <= k < len(chunks):
        raise SystemExit(f"chunk {k} does not exist: the kit in {kit_dir} has chunks 0..{len(chunks) - 1}")
    problem = kitlib.check_chunk(kit_dir, chunks[k])
    if problem:
        raise SystemExit(f"gpu kit: {problem} (rebuild: scripts/gpu_kit/build_chunks.py)")
    clear(payload)
    payload.mkdir(parents=True, exist_ok=True)
    dst = payload / chunks[k]["name"]
    shutil.copyfile(kit_dir / chunks[k]["name"], dst)
    shutil.copyfile(kit_dir / kitlib.MANIFEST, payload / kitlib.MANIFEST)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chunk", help="chunk number K, or `clear`")
    p.add_argument("--kit", type=Path, default=ROOT / ".gpu_kit", help="the built kit (default .gpu_kit/)")
    args = p.parse_args(argv)
    if args.chunk == "clear":
        clear()
        print(f"cleared {PAYLOAD}")
        return 0
    dst = stage(int(args.chunk), args.kit)
    n = len(kitlib.load_manifest(args.kit)["chunks"])
    print(f"staged {dst.relative_to(ROOT)} ({dst.stat().st_size / kitlib.MIB:.2f} MiB; chunk {args.chunk} of 0..{n - 1}); "
          "now run: bash scripts/gpu_kit/run.sh receive")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
