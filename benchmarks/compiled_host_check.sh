#!/usr/bin/env bash
# GPU check of a compiled mHC model's host time and of the token forward that runs slower
# compiled than eager, in about 9 minutes (H100): per-kernel GPU time of connections eager vs
# compiled (with Inductor's wrapper code around the token kernel's launch), the issue time of
# compiled connections with Inductor's static launcher for user-defined Triton kernels off
# and on (TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS), and compiled gpt-small
# both ways and under mode="reduce-overhead". Writes under $OUT.
#   OUT=dir bash benchmarks/compiled_host_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
TORCH_LOGS=output_code timeout 150 python benchmarks/compiled_kernels.py --depth 4 \
  --inductor reorder_for_peak_memory=0 --opaque \
  --out "$OUT/compiled_kernels.json" 2>"$OUT/output_code.log" | tail -60
grep -n -B3 -A3 "_coef_token_kernel[_0-9]*\.run\|_coef_gemm_kernel[_0-9]*\.run" \
  "$OUT/output_code.log" | head -80 > "$OUT/token_launch.txt"
grep -n -A12 "user_autotune" "$OUT/output_code.log" | grep -A12 "_coef_token_kernel\|_coef_gemm" \
  | head -60 > "$OUT/token_meta.txt"; gzip -f "$OUT/output_code.log"
for v in 0 1; do
  echo "== static launch of user-defined kernels: $v"
  TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=$v timeout 60 \
    python benchmarks/profile_compiled_host.py --depth 4 --reps 20 --top 16 2>&1 \
    | grep -v -i warn | head -40 | tee "$OUT/compiled_host_static$v.txt"
done
b() { timeout "$1" python -m torch_mhc.bench --steps 15 --suite gpt-small "${@:2}" 2>&1 \
  | grep -v -i warn | tail -3; }
b 120 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled.json"
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 \
  b 130 --compile --variants residual,mhc-triton --out "$OUT/gpt-small_compiled_static.json"
b 110 --compile reduce-overhead --variants residual,mhc-triton \
  --out "$OUT/gpt-small_compiled_reduce-overhead.json"
