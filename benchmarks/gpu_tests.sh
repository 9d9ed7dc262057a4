#!/usr/bin/env bash
# The worker-level unit tests on the GPU check machine (no ray there: benchmarks/gpu_pytest_plugin.py stubs it),
# so the code paths that pick CUDA when it exists (actors.common.device, bf16 "auto", NCCL for DeepSpeed) run
# on a GPU. Wheels as in benchmarks/gpu_run.sh (.whl carried). Output and a junit file go to $OUT.
#
#     bash benchmarks/gpu_tests.sh
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/runs/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/benchmarks:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DEEPSPEED_TIMEOUT=3
timeout -k 5 "${GPU_TESTS_TIMEOUT:-300}" python3 -m pytest -p gpu_pytest_plugin -p no:cacheprovider -q -rfEs --continue-on-collection-errors \
  --timeout 120 --junitxml "$OUT/gpu-tests.xml" \
  tests/test_packing.py tests/test_nan_guard.py tests/test_step_plumbing.py tests/test_tuners.py \
  tests/test_rl_pieces.py tests/test_ppo_pieces.py tests/algos tests/plugins/test_losses.py \
  tests/plugins/test_optimizers.py tests/plugins/test_tuners_plugin.py tests/plugins/test_metrics.py \
  "$@" 2>&1 | tee "$OUT/gpu-tests.log"
exit "${PIPESTATUS[0]}"
