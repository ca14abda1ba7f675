#!/usr/bin/env bash
# GPU check of `mhc train --compile-mode` and of the compiled gpt-small and layer suites, in
# three calls of at most 10 minutes (`PART=A`, `B`, `C`). Writes under $OUT.
#  A. compiled training equals eager on CUDA with CUDA graphs (reduce-overhead, gradient
#     accumulation in place, blocks compiled one by one: tests/train/test_trainer.py), then
#     compiled gpt-small with CUDA graphs (residual and mHC in one process);
#  B. compiled gpt-small in default mode from fresh Inductor and Triton caches, residual and
#     mHC, the whole model as one graph and then block by block (`--compile-scope block`):
#     compile time (warmup_s, compile_phases_s) and step time of both;
#  C. mHC compile time without the kernel-analysis cache (TORCH_MHC_CACHE_KERNEL_ANALYSIS=0,
#     fresh caches; against B's first run), one connection's kernels at gpt-small's shape
#     against the byte floor, compiled layer, and the CUDA tests of compiled models.
#   OUT=dir PART=A bash benchmarks/graphs_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"; PART=${PART:-A}
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
b() { timeout "$1" python -m torch_mhc.bench --steps 15 --suite gpt-small "${@:2}" 2>&1 \
  | grep -v -i warn | tail -3; }
if [ "$PART" = A ]; then  # about 8 minutes
  timeout 240 python -m pytest -q -x -p no:warnings tests/train/test_trainer.py \
    -k "compiled_training or compile_mode" 2>&1 | tail -4 | tee "$OUT/cuda_tests_train.log"
  b 290 --compile reduce-overhead --variants residual,mhc-triton \
    --out "$OUT/gpt-small_compiled_reduce-overhead.json"
elif [ "$PART" = B ]; then  # about 9 minutes
  TRITON_CACHE_DIR=/tmp/tc-a TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a b 290 --compile \
    --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
  TRITON_CACHE_DIR=/tmp/tc-b TORCHINDUCTOR_CACHE_DIR=/tmp/ind-b b 250 --compile \
    --compile-scope block --variants residual,mhc-triton --out "$OUT/gpt-small_compiled_block.json"
else  # about 9 minutes
  TORCH_MHC_CACHE_KERNEL_ANALYSIS=0 TRITON_CACHE_DIR=/tmp/tc-c TORCHINDUCTOR_CACHE_DIR=/tmp/ind-c \
    b 200 --compile --variants mhc-triton --out "$OUT/gpt-small_compiled_no-analysis-cache.json"
  timeout 90 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 30 \
    --out "$OUT/connection_kernels.json" 2>&1 | grep -v -i warn | tail -25
  timeout 130 python -m torch_mhc.bench --steps 10 --suite layer --compile \
    --variants residual,mhc-triton --out "$OUT/layer_compiled.json" 2>&1 | grep -v -i warn | tail -3
  timeout 100 python -m pytest -q -x -p no:warnings tests/models/test_compile.py 2>&1 \
    | tail -3 | tee "$OUT/cuda_tests_compile.log"
fi
