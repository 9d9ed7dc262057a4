"""Build the GPU kit: the wheels the GPU machine lacks, as numbered chunks of at most 60 MiB plus a manifest.

The GPU machine this project is sometimes lent has Python 3.12, torch 2.11+cu130 and transformers 5.17, no ray /
vllm / deepspeed and no network; each `run` call brings at most 64 MiB (the working tree included). So:

- vLLM 0.26.0 (the last release pinning torch 2.11; cp38-abi3, 290 MiB) is stripped of what a dense model on Hopper
  never loads: FlashAttention-2's library (Hopper runs FA3), the MoE kernels, the Rust frontend binary `vllm-rs`,
  and the DeepGEMM / SM100-FMHA sources (`STRIP`); its RECORD is rewritten, so it stays a valid wheel.
- ray 2.60.0 cp312 without its Java jars and the dashboard's source maps.
- deepspeed 0.19.8 built here as a pure-Python wheel (`DS_BUILD_OPS=0 pip wheel --no-deps`).
- their dependencies, resolved by pip for CPython 3.12 on manylinux x86_64 against torch 2.11.0 (a stub wheel stands
  in for it, so nothing of CUDA is resolved) and transformers 5.17.0, minus what the machine has (`ASSUMED_PRESENT`)
  and the heavy GPU-kernel packages vLLM imports only for features raylhf does not use (`LEFT_OUT`, with reasons).

Output (default `.gpu_kit/`, ignored by git): `chunk-00.bin ...` (an uncompressed tar of the wheels, cut like
`split -b`), `manifest.json` (each chunk's size and sha256, the tar's, the wheel list, what was left out). Downloads,
the resolution and the stripped wheels are cached under `.gpu_kit/cache/`, so a rerun takes seconds.

    .venv/bin/python scripts/gpu_kit/build_chunks.py                 # build (downloads ~700 MB the first time)
    .venv/bin/python scripts/gpu_kit/build_chunks.py --list          # what would go in, with sizes; no chunks
    .venv/bin/python scripts/gpu_kit/build_chunks.py --payload-dir D --chunk-mib 0.01   # chunk D's files (tests)

Then see scripts/gpu_kit/run.sh (bring each chunk, install, probe, check) and benchmarks/README.md "GPU kit".
"""

from __future__ import annotations

import argparse
import base64
import csv
import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kitlib

ROOT = Path(__file__).resolve().parents[2]
MIB = kitlib.MIB
TRANSFER_MIB = 64  # what one `run` call brings: the working tree plus the chunk

VLLM = "vllm==0.26.0"
RAY = "ray==2.60.0"
DEEPSPEED = "deepspeed==0.19.8"
MACHINE = {"torch": "2.11.0", "transformers": "5.17.0"}  # what the GPU machine has (its torch is 2.11.0+cu130)
# the torch stub's own requirements (torch 2.11.0's, less the CUDA wheels): the resolver then keeps triton and
# setuptools where torch has them
TORCH_REQUIRES = ["filelock", "typing-extensions>=4.10.0", "setuptools<82", "sympy>=1.13.3", "networkx>=2.5.1",
                  "jinja2", "fsspec>=0.8.5", "cuda-bindings<14,>=13.0.3", "triton==3.6.0"]
# raylhf's own imports on the GPU path that neither vLLM nor ray nor deepspeed bring (peft: actors/adapters.py;
# math-verify: the demo's `accuracy` reward)
EXTRA = ["peft", "math-verify>=0.7", "pydantic>=2.6,<3", "pyyaml>=6", "safetensors>=0.4", "tqdm>=4.66", "aiohttp>=3.9"]

# On the machine already: torch and every package torch 2.11+cu130 requires, transformers 5.17 and numpy (which
# transformers requires). Shipping them would shadow the machine's CUDA build.
ASSUMED_PRESENT = {
    "torch": "the machine's torch 2.11.0+cu130",
    "triton": "comes with torch (3.6.0)",
    "transformers": "the machine's 5.17",
    "numpy": "transformers requires it; torch's build matches the machine's",
    "setuptools": "comes with torch (<82)",
    "sympy": "comes with torch", "mpmath": "comes with sympy", "networkx": "comes with torch",
    "cuda-bindings": "comes with torch 2.11 cu130", "cuda-pathfinder": "comes with cuda-bindings",
    "cuda-toolkit": "comes with torch 2.11 cu130",
}
ASSUMED_PREFIXES = ("nvidia-",)  # the CUDA libraries of torch's build: the nvidia-* wheels ...
SHIP_ANYWAY = {"nvidia-ml-py"}  # ... but NVML's Python binding, which torch does not require
# Required by vLLM 0.26's metadata but imported only by features raylhf does not use (checked in vLLM's source:
# lazy imports inside functions, or modules of other models / kernels / video / structured outputs' extras).
LEFT_OUT = {
    "flashinfer-python": "FlashInfer attention/sampling; Hopper uses FA3, sampling falls back to PyTorch; JIT needs nvcc",
    "flashinfer-cubin": "FlashInfer", "flashinfer-jit-cache": "FlashInfer",
    "tilelang": "TileLang kernels (sparse MLA); lazy import", "z3-solver": "tilelang's",
    "ml-dtypes": "tilelang's", "torch-c-dlpack-ext": "tilelang / quack's",
    "tokenspeed-mla": "MLA kernels (DeepSeek); lazy import", "tokenspeed-triton": "tokenspeed-mla's",
    "nvidia-cutlass-dsl": "CuTe-DSL kernels (FA4 on Blackwell, DeepSeek, MoE)",
    "quack-kernels": "CuTe-DSL kernels (Blackwell)", "humming-kernels": "quantized GEMM kernels",
    "cuda-python": "cutlass-dsl's", "cuda-core": "cutlass-dsl's", "cuda-tile": "flashinfer's",
    "pynvvideocodec": "video decoding (multimodal)", "opencv-python-headless": "video/image (multimodal); lazy",
    "torchvision": "image processors of VL models", "torchaudio": "audio models", "torchcodec": "audio/video",
    "numba": "n-gram speculative decoding; lazy", "llvmlite": "numba's",
    "fastsafetensors": "optional loader (GDS); lazy", "nvidia-cudnn-frontend": "cuDNN attention; lazy",
    "nvidia-cuda-nvcc": "CUDA compiler wheels of the left-out kernel packages (JIT)", "nvidia-nvvm": "nvcc's",
    "nvidia-cuda-crt": "nvcc's", "nvidia-cuda-nvdisasm": "nvcc's", "nvidia-cuda-cccl": "the kernel packages'",
    "pycountry": "language codes of pydantic-extra-types (mistral_common's); imported only for those fields",
    "hf-xet": "huggingface_hub's Xet downloads (no network there; imported lazily)",
    "fastapi-cloud-cli": "the `fastapi` CLI's cloud commands", "rignore": "fastapi-cloud-cli's",
    "sentry-sdk": "fastapi-cloud-cli's", "fastar": "fastapi-cloud-cli's",
    "apache-tvm-ffi": "kept (xgrammar needs it)",
}
KEEP_ANYWAY = {"apache-tvm-ffi"}  # listed above only to say why it stays

STRIP: dict[str, list[str]] = {
    "vllm": [
        "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",  # FlashAttention-2 (Ampere); Hopper loads _vllm_fa3_C
        "vllm/_moe_C_stable_libtorch.abi3.so",  # MoE kernels; a dense model never loads them (import suppressed)
        "vllm/vllm-rs",  # the Rust frontend binary (VLLM_RUST_FRONTEND only)
        "vllm/third_party/deep_gemm/*",  # DeepGEMM (FP8 GEMM, MoE) headers and builds
        "vllm/third_party/fmha_sm100/*",  # Blackwell FMHA sources
    ],
    "ray": ["ray/jars/*", "ray/dashboard/client/build/*.map"],  # the Java worker; the dashboard's source maps
}

PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in (17, 24, 26, 27, 28, 31, 34, 35, 39)] + ["manylinux2014_x86_64",
                                                                                         "linux_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def log(msg: str) -> None:
    print(f"[gpu-kit] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd[:8]) + (" ..." if len(cmd) > 8 else ""))
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
        raise SystemExit(f"[gpu-kit] command failed ({res.returncode}): {' '.join(cmd)}\n{tail}")
    return res


# ---- the resolver's Python ---------------------------------------------------------------------------------------
def python312(cache: Path, given: str | None) -> tuple[str, bool]:
    """A Python 3.12 with a recent pip (markers such as ``python_version > "3.11"`` are evaluated by pip for the
    interpreter that runs it, whatever ``--python-version`` says): a venv under the cache. Falls back to this
    interpreter (second value False) with a warning."""
    venv = cache / "py312"
    py = venv / "bin" / "python"
    if py.exists():
        return str(py), True
    cands = [given] if given else []
    cands += [shutil.which("python3.12") or ""]
    cands += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    for c in cands:
        if not c:
            continue
        probe = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            run([c, "-m", "venv", str(venv)])
            run([str(py), "-m", "pip", "install", "-q", "-U", "pip"])
            return str(py), True
    log(f"WARNING: no Python 3.12 found (--python); resolving with {sys.version.split()[0]}: environment markers "
        "are then evaluated for this version, not 3.12 (e.g. vLLM's `six` and `setuptools<81` for > 3.11)")
    return sys.executable, False


def torch_stub(folder: Path) -> Path:
    """A wheel named torch 2.11.0+cu130 with torch's non-CUDA requirements: the resolver takes it for the machine's
    torch (the local version sorts above PyPI's 2.11.0) and resolves nothing of CUDA."""
    folder.mkdir(parents=True, exist_ok=True)
    ver = MACHINE["torch"] + "+cu130"
    path = folder / f"torch-{ver}-py3-none-any.whl"
    di = f"torch-{ver}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: torch\nVersion: {ver}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in TORCH_REQUIRES)
    files = {f"{di}/METADATA": meta, f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: raylhf-gpu-kit\n"
             "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{di}/RECORD", "".join(f"{k},,\n" for k in files) + f"{di}/RECORD,,\n")
    return path


def pip_platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
            "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def deepspeed_wheel(cache: Path) -> Path:
    folder = cache / "deepspeed"
    found = sorted(folder.glob("deepspeed-*.whl"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DS_BUILD_OPS="0")  # no prebuilt ops: a pure-Python wheel (ops JIT-build if ever used)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), DEEPSPEED],
        env=env)
    found = sorted(folder.glob("deepspeed-*.whl"))
    if not found or not found[-1].name.endswith("py3-none-any.whl"):
        raise SystemExit(f"[gpu-kit] building {DEEPSPEED} gave {found}; expected a py3-none-any wheel")
    return found[-1]


def wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def resolve(cache: Path, py: str, ds: Path) -> list[dict[str, Any]]:
    """pip's resolution of vLLM + ray + deepspeed's requirements + raylhf's extras for the machine: one entry per
    package (name, version, url, sha256). Cached by its inputs."""
    reqs = [VLLM, RAY, *EXTRA, *[r for r in wheel_requires(ds) if norm(re.split(r"[ ;<>=!~\[(]", r)[0]) != "torch"],
            f"torch=={MACHINE['torch']}", f"transformers=={MACHINE['transformers']}"]
    key = hashlib.sha256(json.dumps([reqs, TORCH_REQUIRES, PLATFORMS, py]).encode()).hexdigest()[:16]
    report = cache / f"resolve-{key}.json"
    if not report.exists():
        stub = torch_stub(cache / "stub")
        run([py, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report) + ".tmp",
             "--find-links", str(stub.parent), *pip_platform_args(), *reqs])
        Path(str(report) + ".tmp").replace(report)
    out = []
    for item in json.loads(report.read_text())["install"]:
        m, info = item["metadata"], item["download_info"]
        out.append({"name": m["name"], "version": m["version"], "url": info["url"],
                    "file": urllib.parse.unquote(info["url"].rsplit("/", 1)[-1]),
                    "sha256": info.get("archive_info", {}).get("hashes", {}).get("sha256"),
                    "requires": m.get("requires_dist") or []})
    return out


def classify(pkgs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(what ships, {package: why not})."""
    ship, skipped = [], {}
    for p in pkgs:
        n = norm(p["name"])
        if n in LEFT_OUT and n not in KEEP_ANYWAY:
            skipped[n] = "left out: " + LEFT_OUT[n]
        elif n.startswith(("nvidia-cutlass-dsl", "flashinfer-")):
            skipped[n] = "left out: " + LEFT_OUT.get(n, "CuTe-DSL / FlashInfer kernels")
        elif n in ASSUMED_PRESENT or (n.startswith(ASSUMED_PREFIXES) and n not in SHIP_ANYWAY):
            skipped[n] = "on the machine: " + ASSUMED_PRESENT.get(n, "a CUDA library of torch's build")
        else:
            ship.append(p)
    return ship, skipped


def download(pkgs: list[dict[str, Any]], dl: Path) -> list[Path]:
    dl.mkdir(parents=True, exist_ok=True)
    need = [p for p in pkgs if not (dl / p["file"]).exists()]
    if need:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dl), *pip_platform_args(),
             *[f"{p['name']}=={p['version']}" for p in need]])
    paths = []
    for p in pkgs:
        path = dl / p["file"]
        if not path.exists():
            raise SystemExit(f"[gpu-kit] pip download did not produce {p['file']} ({p['name']} {p['version']})")
        if p["sha256"] and kitlib.sha256_file(path) != p["sha256"]:
            path.unlink()
            raise SystemExit(f"[gpu-kit] {p['file']}: sha256 differs from the index's {p['sha256']}; removed, rerun")
        paths.append(path)
    return paths


# ---- stripping ---------------------------------------------------------------------------------------------------
def strip_wheel(src: Path, dst_dir: Path, patterns: list[str]) -> tuple[Path, list[tuple[str, int]]]:
    """A copy of wheel ``src`` without the files matching ``patterns`` (fnmatch; ``*`` crosses ``/``), its RECORD
    rewritten without them; cached by the source's hash and the patterns. Returns (path, [(removed, bytes)])."""
    key = hashlib.sha256((kitlib.sha256_file(src) + json.dumps(patterns)).encode()).hexdigest()[:16]
    out_dir = dst_dir / key
    dst = out_dir / src.name
    removed_log = out_dir / "removed.json"
    if dst.exists() and removed_log.exists():
        return dst, [tuple(x) for x in json.loads(removed_log.read_text())]  # type: ignore[misc]
    out_dir.mkdir(parents=True, exist_ok=True)
    removed: list[tuple[str, int]] = []
    tmp = dst.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout:
        names = zin.namelist()
        record = next(n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n))
        drop = {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in patterns)}
        if not drop:
            raise SystemExit(f"[gpu-kit] none of {patterns} matched a file of {src.name}: update STRIP")
        for info in zin.infolist():
            if info.filename in drop:
                removed.append((info.filename, info.file_size))
                continue
            if info.filename == record:
                continue
            zout.writestr(info, zin.read(info.filename), compress_type=info.compress_type)
        rows = [r for r in csv.reader(io.StringIO(zin.read(record).decode())) if r and r[0] not in drop]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zout.writestr(zin.getinfo(record), buf.getvalue())
    tmp.replace(dst)
    removed_log.write_text(json.dumps(removed))
    return dst, removed


def check_wheel(path: Path) -> None:
    """Every file of the wheel is in its RECORD with the right hash, and every RECORD line is a file."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        record = next(n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n))
        listed = {r[0]: r[1] for r in csv.reader(io.StringIO(z.read(record).decode())) if r}
        if set(listed) != names:
            raise SystemExit(f"[gpu-kit] {path.name}: RECORD and files differ: {sorted(set(listed) ^ names)[:5]}")
        for name, digest in listed.items():
            if digest and name.startswith(("vllm/vllm_flash_attn/", "ray/_raylet")):  # spot-check the big ones
                algo, b64 = digest.split("=", 1)
                h = hashlib.new(algo, z.read(name)).digest()
                if base64.urlsafe_b64encode(h).rstrip(b"=").decode() != b64:
                    raise SystemExit(f"[gpu-kit] {path.name}: {name} does not match its RECORD hash")


# ---- the tree that travels with each `run` call ------------------------------------------------------------------
def tree_mib(root: Path) -> float | None:
    """MiB of what the `run` tool copies: tracked files and untracked files git does not ignore."""
    try:
        res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in res.stdout.decode().split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total / MIB


def build(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    cache = out / "cache"
    t0 = time.time()
    extra: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.payload_dir:
        wheels = sorted(p for p in args.payload_dir.iterdir() if p.is_file())
        extra["payload"] = "files of " + str(args.payload_dir)
        skipped: dict[str, str] = {}
        removed: dict[str, list[tuple[str, int]]] = {}
    else:
        py, is312 = python312(cache, args.python)
        ds = deepspeed_wheel(cache)
        pkgs = resolve(cache, py, ds)
        ship, skipped = classify(pkgs)
        paths = download(ship, cache / "dl")
        removed = {}
        wheels = []
        for p, path in zip(ship, paths, strict=True):
            pats = STRIP.get(norm(p["name"]))
            if pats:
                path, gone = strip_wheel(path, cache / "stripped", pats)
                check_wheel(path)
                removed[p["name"]] = gone
            wheels.append(path)
        wheels.append(ds)
        extra.update(resolved_with="python3.12" if is312 else f"python{sys.version_info[0]}.{sys.version_info[1]}",
                     machine=MACHINE, targets=[VLLM, RAY, DEEPSPEED + " (built here, DS_BUILD_OPS=0)", *EXTRA],
                     not_shipped=skipped,
                     stripped={k: {"files": len(v), "mib": round(sum(s for _, s in v) / MIB, 1),
                                   "patterns": STRIP[norm(k)]} for k, v in removed.items()})
        if args.list:
            for w in sorted(wheels, key=lambda p: -p.stat().st_size):
                print(f"{w.stat().st_size / MIB:8.2f} MiB  {w.name}")
            print(f"{sum(w.stat().st_size for w in wheels) / MIB:8.2f} MiB  in {len(wheels)} wheels")
            for n, why in sorted(skipped.items()):
                print(f"  not shipped: {n}: {why}")
            return {}
    out.mkdir(parents=True, exist_ok=True)
    tar = out / "wheels.tar"
    entries = kitlib.write_tar(wheels, tar)
    manifest = kitlib.split(tar, out, args.chunk_mib, {**extra, "wheels": entries})
    tar.unlink()
    tree = tree_mib(ROOT)
    biggest = max((c["size"] for c in manifest["chunks"]), default=0) / MIB
    print(f"GPU kit in {out}: {len(entries)} wheels, {manifest['tar']['size'] / MIB:.1f} MiB, "
          f"{len(manifest['chunks'])} chunks ({time.time() - t0:.0f} s)")
    for c in manifest["chunks"]:
        print(f"  {c['name']}  {c['size'] / MIB:6.2f} MiB  {c['size']:>10d} B  sha256 {c['sha256'][:16]}...")
    if tree is not None:
        fits = tree + biggest <= TRANSFER_MIB
        print(f"working tree that travels with each run call: {tree:.2f} MiB; with the largest chunk "
              f"{tree + biggest:.2f} of {TRANSFER_MIB} MiB{'' if fits else '  <-- TOO BIG: lower --chunk-mib'}")
    if not args.payload_dir:
        for name, info in extra["stripped"].items():
            print(f"  stripped from {name}: {info['files']} files, {info['mib']} MiB uncompressed")
        print(f"  not shipped: {len(skipped)} packages (manifest.json 'not_shipped')")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_kit", help="output folder (default .gpu_kit/)")
    p.add_argument("--chunk-mib", type=float, default=60.0, help="largest chunk, MiB (default 60)")
    p.add_argument("--python", default=None, help="a Python 3.12 for pip's resolution (default: found)")
    p.add_argument("--payload-dir", type=Path, default=None,
                   help="chunk the files of this folder instead of the real wheels (tests, dry runs)")
    p.add_argument("--list", action="store_true", help="print what would ship and why the rest does not; no chunks")
    args = p.parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
