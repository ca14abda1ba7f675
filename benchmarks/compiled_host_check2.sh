#!/usr/bin/env bash
# The GPU check after compiled_host_check.sh (H100; about 20 minutes, so three calls of at
# most 10: `PART=1`, `PART=2`, `PART=3`):
#  1. compiled gpt-small with the phase-split token kernels (the default since cbf7de3) and
#     the cached kernel analysis (warmup_s: compile time); the token forward eager, compiled,
#     compiled with the ops opaque (fresh compiles: the earlier opaque run was a cache hit of
#     the inlined build) and eager with every kernel queued behind a GPU sleep (back to back,
#     as a compiled graph runs them), with each run's kernel builds dumped (warps, stages,
#     registers, TTGIR, PTX, the compiled wrapper code): is the compiled token forward's
#     +21 us its build or the queue? (Inductor builds user kernels with Triton's debug
#     option on, eager Triton with it off; compiled for sm_90 on a CPU, Triton 3.8, the
#     fused kernels' PTX is the same either way, so that run is left out.)
#  2. the same mHC model with the analysis cache off (TORCH_MHC_CACHE_KERNEL_ANALYSIS=0:
#     compile time without it), then with Inductor's static launcher for user-defined Triton
#     kernels; where an eager connection's host time goes (cProfile at gpt-small's shape);
#  3. the token kernels' tiles and warps again with their phases split; the CUDA tests of the
#     ops and of compiled models (the static-launch numerics test among them).
# `PART=0`: the compiled gpt-small step and per-kernel times again once the kernels turn
# their float arguments to float32, then the step with CUDA graphs (reduce-overhead).
# `PART=4`: launch variants of the projection GEMM, the dx pass and the post-res backward at
# gpt-small's shape (one process), then compiled gpt-small and compiled layer against compiled
# residual. (Run at commit c3229b5 with two more variants, the post-res kernels reading x one
# stream at a time through a `loads_first` option since removed.)
# `PART=6`: compile time of the mHC gpt-small with the kernel-analysis cache (which wraps
# `identify_mutated_tensors` too since commit c0a9f3a) and without it, fresh Inductor and Triton caches each
# (`compile_phases_s` in the JSON), then the rest of the CUDA tests.
# `PART=5`: the CUDA tests of the ops and compiled models, then compiled gpt-small with CUDA
# graphs (reduce-overhead, mHC compiles for about two minutes).
# Writes under $OUT.
#   OUT=dir PART=1 bash benchmarks/compiled_host_check2.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"; PART=${PART:-1}
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
b() { timeout "$1" python -m torch_mhc.bench --steps 15 --suite gpt-small "${@:2}" 2>&1 \
  | grep -v -i warn | tail -3; }
if [ "$PART" = 0 ]; then  # after the float32 fix (commit 417a138): about 7 minutes
  b 200 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
  timeout 80 python benchmarks/compiled_kernels.py --depth 4 \
    --out "$OUT/compiled_kernels.json" 2>&1 | grep -v -i warn | tail -30
  b 110 --compile reduce-overhead --variants residual,mhc-triton \
    --out "$OUT/gpt-small_compiled_reduce-overhead.json"
elif [ "$PART" = 4 ]; then  # about 9 minutes
  timeout 80 python -m pytest -q -x -p no:warnings tests/ops/test_post_res_triton.py \
    tests/ops/test_connection_triton.py -k "bf16 or matches_reference or load_orders" 2>&1 \
    | tail -3 | tee "$OUT/cuda_tests.log"
  timeout 160 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 30 \
    --variants '{"g_bt128_bk64_w8": {"coef_gemm": {"BT": 128, "BK": 64, "num_warps": 8}},
    "g_waves4": {"coef_gemm": {"waves": 4}},
    "g_bk64_s4": {"coef_gemm": {"BK": 64, "num_stages": 4}},
    "d_bc32": {"coef_dx4": {"BC": 32}}, "d_bt16": {"coef_dx4": {"BT": 16}},
    "d_bt16_t32": {"coef_dx4": {"BT": 16, "tiles_per_program": 32}},
    "p_w8": {"post_res_bwd": {"num_warps": 8}}, "p_w2": {"post_res_bwd": {"num_warps": 2}},
    "default_again": {}}' \
    --out "$OUT/connection_kernels_gemm-dx4.json" 2>&1 | grep -v -i warn | tail -40
  b 200 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
  timeout 130 python -m torch_mhc.bench --steps 10 --suite layer --compile \
    --variants residual,mhc-triton --out "$OUT/layer_compiled.json" 2>&1 | grep -v -i warn | tail -3
elif [ "$PART" = 6 ]; then  # about 8 minutes
  TRITON_CACHE_DIR=/tmp/tc-cached TORCHINDUCTOR_CACHE_DIR=/tmp/ind-cached b 200 --compile --variants mhc-triton \
    --out "$OUT/gpt-small_compiled_analysis-cache.json"
  TORCH_MHC_CACHE_KERNEL_ANALYSIS=0 TRITON_CACHE_DIR=/tmp/tc-uncached \
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind-uncached \
    b 200 --compile --variants mhc-triton --out "$OUT/gpt-small_compiled_no-analysis-cache.json"
  timeout 150 python -m pytest -q -x -p no:warnings tests/models/test_compile.py 2>&1 \
    | tail -3 | tee "$OUT/cuda_tests_compile.log"
elif [ "$PART" = 5 ]; then  # about 9 minutes
  timeout 280 python -m pytest -q -x -p no:warnings tests/models/test_compile.py tests/ops \
    2>&1 | tail -8 | tee "$OUT/cuda_tests.log"
  b 280 --compile reduce-overhead --variants residual,mhc-triton \
    --out "$OUT/gpt-small_compiled_reduce-overhead.json"
elif [ "$PART" = 1 ]; then
  b 220 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
  TRITON_CACHE_DIR=/tmp/tcache timeout 200 python benchmarks/compiled_kernels.py --depth 4 \
    --queued --opaque --dump "$OUT/builds" --out "$OUT/compiled_kernels_queued.json" 2>&1 \
    | grep -v -i warn | tail -60
  timeout 50 python -m pytest -q -x -p no:cacheprovider tests/ops/test_coefficients_triton.py \
    -k "partial_sums or bf16_streams" 2>&1 | tail -3
elif [ "$PART" = 2 ]; then
  TORCH_MHC_CACHE_KERNEL_ANALYSIS=0 TORCHINDUCTOR_CACHE_DIR=/tmp/ind-nocache \
    b 220 --compile --variants mhc-triton --out "$OUT/gpt-small_compiled_no-analysis-cache.json"
  TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 \
    b 200 --compile --variants mhc-triton --out "$OUT/gpt-small_compiled_static.json"
  echo "== eager host profile T=8192 C=1024"
  timeout 50 python benchmarks/profile_compiled_host.py --mode eager --depth 4 --reps 20 \
    --top 25 2>&1 | grep -v -i warn | head -45 | tee "$OUT/eager_host.txt"
else
  # the token kernels' tiles again, now that their phases are split (one process)
  timeout 100 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 30 \
    --variants '{"fwd_bt8": {"coef_token": {"BT": 8}}, "bwd_bt4": {"coef_token_bwd": {"BT": 4}},
    "bwd_bt16": {"coef_token_bwd": {"BT": 16}}, "fwd_w2": {"coef_token": {"num_warps": 2}},
    "bwd_w2": {"coef_token_bwd": {"num_warps": 2}}, "default_again": {}}' \
    --out "$OUT/connection_kernels_token-tiles.json" 2>&1 | grep -v -i warn | tail -60
  timeout 300 python -m pytest -q -x tests/models/test_compile.py tests/ops 2>&1 | tail -15
fi
