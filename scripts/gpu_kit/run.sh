#!/usr/bin/env bash
# The GPU kit's run script, for the GPU machine (one H100/H200, Python 3.12, torch 2.11+cu130, no network, 64 MiB per
# `run` call; files stay only while the machine is warm, ~30 s idle). Steps, in the order given (default: probe):
#
#   receive   copy the chunks that came with this call (scripts/gpu_kit/payload/ from stage.py, or .gpu_kit/ when
#             the run tool's `carry` brought them) into $GPU_KIT_DIR (/tmp/kit); prints which are still missing
#   install   verify every chunk's sha256 (a missing or corrupt one is named with its expected sha256), reassemble,
#             pip install --no-index --no-deps into $GPU_KIT_DIR/site (skipped when this kit is installed already)
#   probe     versions (python, torch, CUDA, vllm, ray, deepspeed, transformers), vLLM's CUDA kernels and FA3,
#             nvidia-smi -> $OUT/probe.json
#   check     = engine grpo weight_sync, each a step of its own too, each under a hard `timeout`, all within
#             $GPU_KIT_DEADLINE_S (480) of the script's start (a part that no longer fits is skipped, with the reason):
#     engine      gpu_check.py engine: 1.5B random model, vLLM on CUDA: generate, sleep/wake memory, ipc + gloo
#                 sync timing with probe checks ($GPU_KIT_ENGINE_S, 200)
#     grpo        gpu_check.py grpo: colocated GRPO, 5 steps, Ray + vLLM + DeepSpeed ($GPU_KIT_GRPO_S, 180)
#     weight_sync benchmarks/weight_sync.py --sizes 25m ($GPU_KIT_WSYNC_S, 150)
#
#   bash scripts/gpu_kit/run.sh receive                      # once per chunk (stage.py K before each call)
#   bash scripts/gpu_kit/run.sh receive install probe engine # the last chunk, install, probe, the engine check
#   bash scripts/gpu_kit/run.sh grpo weight_sync             # next call, while the machine is still warm
#   RAYLHF_GPU_KIT_DRY_RUN=1 bash scripts/gpu_kit/run.sh --dry-run receive install probe check   # CPU, here
#
# Dry run (--dry-run or RAYLHF_GPU_KIT_DRY_RUN=1): the same steps on a CPU machine; CUDA-only parts are skipped with
# the reason printed; the chunks come from $GPU_KIT_SRC (default .gpu_kit/, or a test's fake kit) and install goes
# to a temporary $GPU_KIT_DIR; nothing starts Ray. Logs and JSON go to $OUT (default runs/gpu-kit).
set -u
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
T0=$(date +%s)
DRY=${RAYLHF_GPU_KIT_DRY_RUN:-0}
steps=()
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    receive|install|probe|engine|grpo|weight_sync) steps+=("$a") ;;
    check) steps+=(engine grpo weight_sync) ;;
    *) echo "run.sh: unknown step '$a' (receive | install | probe | check = engine grpo weight_sync | --dry-run)" >&2
       exit 2 ;;
  esac
done
[ ${#steps[@]} -eq 0 ] && steps=(probe)
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/runs/gpu-kit}
export OUT
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
  KIT=${GPU_KIT_DIR:-$(mktemp -d /tmp/raylhf-gpu-kit-dry.XXXXXX)}
else
  KIT=${GPU_KIT_DIR:-/tmp/kit}
fi
SITE=$KIT/site
WORK=${GPU_KIT_WORK:-/tmp/raylhf-gpu-kit}  # models and run folders of the checks
DEADLINE_S=${GPU_KIT_DEADLINE_S:-480}
DEADLINE=$((T0 + DEADLINE_S))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1
rc=0
say() { echo "[run.sh +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/run.log"; }
left() { echo $(( DEADLINE - $(date +%s) )); }
use_site() {  # the kit's packages first (where this Python can load them), the checkout importable
  local v; v=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -f "$SITE/.installed" ] && [ "$v" = 3.12 ]; then
    export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}; export PATH=$SITE/bin:$PATH
  else
    [ -f "$SITE/.installed" ] && say "kit not on the path: it is for Python 3.12, this is $v (dry run: this Python's own packages)"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  fi
}
say "steps: ${steps[*]}; dry run: $DRY; kit: $KIT; python: $($PY -c 'import sys; print(sys.version.split()[0])')"

do_receive() {
  local src found=0
  for src in "${GPU_KIT_PAYLOAD:-$REPO/scripts/gpu_kit/payload}" "${GPU_KIT_SRC:-$REPO/.gpu_kit}"; do
    if compgen -G "$src/chunk-*.bin" >/dev/null || [ -f "$src/manifest.json" ]; then
      found=1
      $PY scripts/gpu_kit/kitlib.py receive "$src" "$KIT" 2>&1 | tee -a "$OUT/run.log"
      [ "${PIPESTATUS[0]}" -ne 0 ] && return 1
    fi
  done
  [ $found = 1 ] || { say "receive: no chunk came with this call (stage.py K, or carry .gpu_kit/chunk-0K.bin)"; return 1; }
  return 0
}

do_install() {
  local tag
  tag=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['tar']['sha256'])" "$KIT/manifest.json" 2>/dev/null)
  if [ -n "$tag" ] && [ -f "$SITE/.installed" ] && [ "$(cat "$SITE/.installed")" = "$tag" ]; then
    say "install: this kit is installed in $SITE already"; return 0
  fi
  $PY scripts/gpu_kit/kitlib.py unpack "$KIT" "$KIT/wheels" 2>&1 | tee -a "$OUT/run.log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && return 1
  rm -rf "$SITE"
  local t=$(date +%s)
  # the wheels are for CPython 3.12 on manylinux x86_64: say so, so that a dry run on another Python unpacks them too
  local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
  for v in 5 12 17 24 26 27 28 31 34 35 39; do plat+=(--platform "manylinux_2_${v}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
  timeout -k 5 240 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    "${plat[@]}" --target "$SITE" "$KIT"/wheels/*.whl 2>&1 | grep -v "^WARNING: Location" | tail -20 | tee -a "$OUT/run.log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && { say "install: pip failed"; return 1; }
  echo "$tag" > "$SITE/.installed"
  rm -rf "$KIT/wheels"
  say "install: $(ls "$SITE" | wc -l) entries in $SITE in $(( $(date +%s) - t )) s"
}

do_probe() {
  use_site
  { if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; else echo "nvidia-smi: not available"; fi
    timeout -k 5 120 $PY scripts/gpu_kit/probe.py --out "$OUT"; } 2>&1 | tee "$OUT/probe.log"
  return "${PIPESTATUS[0]}"
}

part() {  # part NAME LIMIT_S COMMAND...: run under `timeout`, never past the deadline
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -lt 30 ]; then say "$name: skipped, ${l}s left before the deadline"; return 0; fi
  say "$name: start (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local r=$?
  tail -5 "$OUT/$name.log" | sed "s/^/  $name| /"
  if [ $r -eq 124 ] || [ $r -eq 137 ]; then say "$name: TIMEOUT after ${limit}s"; else say "$name: exit $r"; fi
  [ $r -ne 0 ] && rc=$r
  return 0
}

cuda_or_skip() {  # cuda_or_skip PART: 0 if the part should run on a GPU, 1 if it was skipped / failed for lack of one
  [ "$DRY" = 1 ] && return 1
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && return 0
  say "$1: no CUDA device visible; use --dry-run on a CPU machine"; rc=1; return 1
}

do_engine() {  # vLLM on CUDA, 1.5B random model: sleep/wake memory, ipc and gloo sync timing
  use_site
  if [ "$DRY" = 1 ]; then
    part engine 120 $PY scripts/gpu_kit/gpu_check.py engine --dry-run --out "$OUT" --workdir "$WORK" --deadline "$DEADLINE"
  elif cuda_or_skip engine; then
    part engine "${GPU_KIT_ENGINE_S:-200}" $PY scripts/gpu_kit/gpu_check.py engine --out "$OUT" --workdir "$WORK" \
      --deadline $(( $(date +%s) + ${GPU_KIT_ENGINE_S:-200} - 15 ))
  fi
}

do_grpo() {  # colocated GRPO, 5 steps (Ray + vLLM + DeepSpeed on the one GPU)
  use_site
  if [ "$DRY" = 1 ]; then
    part grpo 120 $PY scripts/gpu_kit/gpu_check.py grpo --dry-run --out "$OUT" --workdir "$WORK" --deadline "$DEADLINE"
  elif cuda_or_skip grpo; then
    local lim=${GPU_KIT_GRPO_S:-180}
    part grpo "$lim" $PY scripts/gpu_kit/gpu_check.py grpo --out "$OUT" --workdir "$WORK" --timeout $(( lim - 20 )) \
      --deadline "$DEADLINE"
    # the GRPO part's Ray, if its timeout cut it short (this machine runs nothing else of Ray)
    $PY -c "import ray" 2>/dev/null && timeout 20 $PY -m ray.scripts.scripts stop --force >/dev/null 2>&1
  fi
}

do_weight_sync() {  # benchmarks/weight_sync.py at 25M: raylhf's collective vs object-store sync into vLLM on CUDA
  use_site
  if [ "$DRY" = 1 ]; then
    say "weight_sync: skipped (dry run: benchmarks/weight_sync.py starts Ray and a vLLM engine; CPU figures are in benchmarks/README.md)"
  elif cuda_or_skip weight_sync; then
    part weight_sync "${GPU_KIT_WSYNC_S:-150}" $PY benchmarks/weight_sync.py --sizes 25m --repeats 2 --workdir "$WORK/wsync"
  fi
}

for s in "${steps[@]}"; do
  case "$s" in
    receive) do_receive || { rc=1; break; } ;;
    install) do_install || { rc=1; break; } ;;
    probe) do_probe || rc=1 ;;
    engine) do_engine ;;
    grpo) do_grpo ;;
    weight_sync) do_weight_sync ;;
  esac
done
say "done: exit $rc after $(( $(date +%s) - T0 )) s; figures in $OUT"
if [ "$DRY" = 1 ] && [ -z "${GPU_KIT_DIR:-}" ]; then rm -rf "$KIT"; fi
exit $rc
