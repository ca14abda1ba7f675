#!/usr/bin/env bash
# Follow-up of compiled_host_check.sh (about 8 minutes, H100): where an eager connection's
# host time goes (cProfile at gpt-small's and the layer suite's shapes), and the compiled
# layer suite with Inductor's static launcher for user-defined Triton kernels off and on.
# Writes under $OUT.
#   OUT=dir bash benchmarks/compiled_host_check2.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
for s in "8192 1024" "4096 4096"; do
  set -- $s
  echo "== eager host profile T=$1 C=$2"
  timeout 60 python benchmarks/profile_compiled_host.py --mode eager --T "$1" --C "$2" \
    --depth 4 --reps 20 --top 25 2>&1 | grep -v -i warn | head -45 | tee "$OUT/eager_host_T$1_C$2.txt"
done
b() { timeout "$1" python -m torch_mhc.bench --steps 15 --suite layer "${@:2}" 2>&1 \
  | grep -v -i warn | tail -3; }
b 220 --compile --variants residual,mhc-triton --out "$OUT/layer_compiled.json"
TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1 \
  b 200 --compile --variants residual,mhc-triton --out "$OUT/layer_compiled_static.json"
