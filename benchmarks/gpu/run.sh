#!/usr/bin/env bash
# GPU checks on one lent GPU machine (see DEVELOPERS.md, "GPU checks"): every gpu-marked
# test, then full fine-tuning throughput and MFU of a ~1.1B model, in under 8 minutes.
# Writes benchmarks/gpu/results.json and RESULTS.md (and copies them to $OUT if set).
#   benchmarks/gpu/run.sh               # on the GPU machine
#   benchmarks/gpu/run.sh --cpu-smoke   # same stages, tiny model, CPU, < 2 minutes
set -euo pipefail
cd "$(dirname "$0")/../.."

# The project's venv (make venv) when there is one; else the machine's python3. Wheels
# carried in .whl/ (benchmarks/gpu/wheels.sh) install to /tmp/site first.
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/trainer:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
unset DS_ACCELERATOR  # DeepSpeed must find CUDA, not the CPU accelerator the CPU tests use

status=0
timeout --signal=TERM --kill-after=15 470 "$PY" benchmarks/gpu/bench_gpu.py "$@" || status=$?
if [ -n "${OUT:-}" ]; then
  cp benchmarks/gpu/results.json benchmarks/gpu/RESULTS.md "$OUT"/ 2>/dev/null || true
fi
exit "$status"
