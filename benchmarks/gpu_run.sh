#!/usr/bin/env bash
# The one command of the GPU check (benchmarks/gpu_policy_step.py): run from the repository root on the GPU
# machine with the wheels of .whl/ carried over (deepspeed, pydantic, hjson, transformers 5.19, ...: that machine
# has no network and no ray/deepspeed/pydantic). Logs and JSON go to $OUT; the whole script ends within 6 minutes
# (each run under `timeout`, each with a soft budget that skips settings that would not fit and a faulthandler
# stack dump before the hard limit).
#
#     bash benchmarks/gpu_run.sh
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/runs/gpu}
export OUT
mkdir -p "$OUT"
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{
  echo "installed wheels in $(( $(date +%s) - t0 )) s: $(ls .whl)"
  nvidia-smi -L || echo "nvidia-smi failed"
  timeout 60 python3 -c "
import sys, torch, deepspeed, transformers, pydantic, huggingface_hub
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'deepspeed', deepspeed.__version__, deepspeed.__file__, 'transformers', transformers.__version__,
      'pydantic', pydantic.__version__, 'huggingface_hub', huggingface_hub.__version__)"
} 2>&1 | tee "$OUT/env.log"

rc=0
# small: ~40 s of work; large: ~2 min of work. Budgets leave room (t0 + ~20 s install + 2 x (budget + 45 s)).
PYTHONUNBUFFERED=1 timeout -k 5 100 python3 benchmarks/gpu_policy_step.py --model small --budget-s 60 \
  --hard-timeout-s 92 2>&1 | tee "$OUT/small.log"
r=${PIPESTATUS[0]}; echo "small: exit $r after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/small.log"; [ "$r" -ne 0 ] && rc=$r
PYTHONUNBUFFERED=1 timeout -k 5 200 python3 benchmarks/gpu_policy_step.py --model large --budget-s 150 \
  --hard-timeout-s 190 2>&1 | tee "$OUT/large.log"
r=${PIPESTATUS[0]}; echo "large: exit $r after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/large.log"; [ "$r" -ne 0 ] && rc=$r
exit "$rc"
