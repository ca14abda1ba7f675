#!/usr/bin/env bash
# GPU check (about 10 minutes, H100) of what holds a compiled mHC gpt-small step:
#  1. the token kernels with their programs' phases split (``phase_split``: odd programs run
#     the Sinkhorn before their pass over x) against the defaults, one process;
#  2. per-kernel GPU time of connections eager against compiled (kernels traced into the
#     graph, then with Inductor's peak-memory reordering off, then with the ops opaque), and
#     Inductor's wrapper code and launch metadata around the token kernel (which ran 21 us
#     slower compiled than eager);
#  3. compiled gpt-small: default, with Inductor's static launcher for user-defined Triton
#     kernels (TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1), with phase_split,
#     and under mode="reduce-overhead";
#  4. issue time of compiled connections with the static launcher off and on (cProfile).
# Writes under $OUT.
#   OUT=dir bash benchmarks/compiled_host_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
S='{"phase_split": true}'
SPLIT="{\"coef_token\": $S, \"coef_token_bwd\": $S}"
timeout 90 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 30 \
  --variants "{\"split_fwd\": {\"coef_token\": $S}, \"split_bwd\": {\"coef_token_bwd\": $S},
  \"split\": $SPLIT, \"default_again\": {}}" \
  --out "$OUT/connection_kernels_phase_split.json" 2>&1 | grep -v -i warn | tail -40
TORCH_LOGS=output_code timeout 130 python benchmarks/compiled_kernels.py --depth 4 \
  --inductor reorder_for_peak_memory=0 --opaque \
  --out "$OUT/compiled_kernels.json" 2>"$OUT/output_code.log" | tail -60
grep -n -B3 -A3 "_coef_token_kernel[_0-9]*\.run\|_coef_gemm_kernel[_0-9]*\.run" \
  "$OUT/output_code.log" | head -80 > "$OUT/token_launch.txt"
grep -n -A12 "user_autotune" "$OUT/output_code.log" | grep -A12 "_coef_token_kernel\|_coef_gemm" \
  | head -60 > "$OUT/token_meta.txt"; gzip -f "$OUT/output_code.log"
b() { timeout "$1" python -m torch_mhc.bench --steps 15 --suite gpt-small "${@:2}" 2>&1 \
  | grep -v -i warn | tail -3; }
b 100 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 \
  b 100 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled_static.json"
TORCH_MHC_TUNING="$SPLIT" b 70 --compile --variants mhc-triton \
  --out "$OUT/gpt-small_compiled_phase-split.json"
b 90 --compile reduce-overhead --variants residual,mhc-triton \
  --out "$OUT/gpt-small_compiled_reduce-overhead.json"
for v in 0 1; do
  echo "== static launch of user-defined kernels: $v"
  TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=$v timeout 45 \
    python benchmarks/profile_compiled_host.py --depth 4 --reps 20 --top 16 2>&1 \
    | grep -v -i warn | head -40 | tee "$OUT/compiled_host_static$v.txt"
done
