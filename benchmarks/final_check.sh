#!/usr/bin/env bash
# One GPU check of the current tree in about 10 minutes: the CUDA tests of the fused ops and
# the compiled model, compiled gpt-small / layer against compiled residual, eager gpt-small
# (interleaved rounds), and host overhead and GPU time of one connection at both suite shapes
# (eager and compiled). Writes JSON under OUTDIR.
#   bash benchmarks/final_check.sh OUTDIR [STEPS]
set -u
out=${1:-${OUT:-out}}; steps=${2:-15}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor_$$}
timeout 270 python -m pytest -q -p no:warnings --tb=short tests/ops tests/models/test_compile.py \
  2>&1 | grep -v DEBUG | tail -6 | tee "$out/cuda_tests.log"
b() { timeout "$1" python -m torch_mhc.bench --steps "$steps" "${@:2}" 2>&1 | grep -v -i warn | tail -3; }
b 150 --suite gpt-small --compile --variants residual,mhc-triton --out "$out/gpt-small_compiled.json"
b 90 --suite layer --compile --variants residual,mhc-triton --out "$out/layer_compiled.json"
b 90 --suite gpt-small --interleave --variants residual,mhc-triton --out "$out/gpt-small_eager.json"
timeout 120 python benchmarks/host_overhead.py --no-gpt-small --reps 30 --out "$out/host_overhead.json" \
  2>&1 | grep -v -i warn | tail -8
