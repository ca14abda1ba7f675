#!/usr/bin/env bash
# torch.compile and host-overhead study on one GPU (writes JSON under $1, default $OUT):
# CUDA tests of the fused ops and of the compiled model, eager host overhead per connection,
# gpt-small and layer compiled (default mode and reduce-overhead) against compiled residual.
#   bash benchmarks/compile_study.sh OUTDIR [STEPS]
set -u
out=${1:-${OUT:-out}}; steps=${2:-20}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
b() { timeout "$1" python -m torch_mhc.bench --steps "$steps" "${@:2}" 2>&1 | grep -v -i warn | tail -3; }
timeout 300 python -m pytest -q -p no:warnings --tb=short tests/ops tests/models/test_compile.py \
  2>&1 | grep -v DEBUG | tail -4 | tee "$out/cuda_tests.log"
timeout 150 python benchmarks/host_overhead.py --out "$out/host_overhead.json" 2>&1 | grep -v -i warn | tail -6
b 240 --suite gpt-small --compile --variants residual,mhc-triton --out "$out/gpt-small_compiled.json"
b 240 --suite gpt-small --compile reduce-overhead --variants residual,mhc-triton \
  --out "$out/gpt-small_compiled_cudagraphs.json"
b 240 --suite layer --compile --variants residual,mhc-triton --out "$out/layer_compiled.json"
b 200 --suite gpt-small --interleave --variants residual,mhc-triton --out "$out/gpt-small_eager.json"
