#!/usr/bin/env bash
# Launch configurations at gpt-small's shape (T = 8192 tokens, C = 1024, n = 4, bf16), where
# the defaults (swept at C = 4096) run the kernels at about half the byte floor, plus the
# compiled gpt-small / layer steps and a Python profile of one eager connection.
#   bash benchmarks/small_width_study.sh OUTDIR
set -u
out=${1:-${OUT:-out}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
sw() {  # key, JSON list of configurations
  timeout 60 python benchmarks/sweep.py --tokens 8192 --C 1024 --rounds 2 --only "$1" \
    --configs "$1=$2" --out "$out/tuning_c1024_$1.json" 2>&1 | grep -v -i warn | tail -${3:-12}
}
sw pre_mix_fwd '[{"BT":1,"BC":1024,"num_warps":8},{"BT":1,"BC":1024,"num_warps":4},{"BT":2,"BC":1024,"num_warps":8},{"BT":4,"BC":1024,"num_warps":8},{"BT":2,"BC":512,"num_warps":4},{"BT":4,"BC":512,"num_warps":4},{"BT":8,"BC":256,"num_warps":4},{"BT":4,"BC":1024,"num_warps":16}]'
sw pre_mix_bwd '[{"BT":1,"BC":1024,"num_warps":8},{"BT":1,"BC":512,"num_warps":4},{"BT":2,"BC":1024,"num_warps":8},{"BT":2,"BC":512,"num_warps":8},{"BT":4,"BC":256,"num_warps":8},{"BT":4,"BC":512,"num_warps":8},{"BT":8,"BC":256,"num_warps":8},{"BT":2,"BC":256,"num_warps":4}]'
sw post_res_fwd '[{"BT":1,"BC":1024,"num_warps":8},{"BT":1,"BC":1024,"num_warps":4},{"BT":2,"BC":1024,"num_warps":8},{"BT":4,"BC":512,"num_warps":8},{"BT":2,"BC":512,"num_warps":4},{"BT":4,"BC":256,"num_warps":4},{"BT":8,"BC":256,"num_warps":8},{"BT":4,"BC":1024,"num_warps":16}]'
sw post_res_bwd '[{"BT":1,"BC":1024,"num_warps":4},{"BT":2,"BC":512,"num_warps":4},{"BT":4,"BC":256,"num_warps":4},{"BT":2,"BC":1024,"num_warps":8},{"BT":4,"BC":512,"num_warps":8},{"BT":8,"BC":256,"num_warps":8},{"BT":4,"BC":1024,"num_warps":16},{"BT":8,"BC":512,"num_warps":16}]'
sw coef_gemm '[{"BT":128,"BK":128,"num_warps":8,"num_stages":3,"waves":4},{"BT":128,"BK":128,"num_warps":8,"num_stages":3,"waves":2},{"BT":128,"BK":128,"num_warps":8,"num_stages":3,"waves":1},{"BT":64,"BK":128,"num_warps":4,"num_stages":3,"waves":2},{"BT":128,"BK":64,"num_warps":8,"num_stages":4,"waves":2},{"BT":256,"BK":64,"num_warps":8,"num_stages":3,"waves":2},{"BT":64,"BK":256,"num_warps":8,"num_stages":3,"waves":1},{"BT":128,"BK":256,"num_warps":8,"num_stages":2,"waves":1}]'
sw coef_dx4 '[{"BT":32,"BC":64,"num_warps":4,"num_stages":2,"tiles_per_program":32,"pipeline_stages":2},{"BT":32,"BC":64,"num_warps":4,"num_stages":2,"tiles_per_program":16,"pipeline_stages":2},{"BT":32,"BC":64,"num_warps":4,"num_stages":2,"tiles_per_program":8,"pipeline_stages":2},{"BT":16,"BC":64,"num_warps":4,"num_stages":2,"tiles_per_program":32,"pipeline_stages":2},{"BT":32,"BC":32,"num_warps":4,"num_stages":2,"tiles_per_program":32,"pipeline_stages":2},{"BT":16,"BC":32,"num_warps":2,"num_stages":2,"tiles_per_program":32,"pipeline_stages":2},{"BT":64,"BC":32,"num_warps":4,"num_stages":2,"tiles_per_program":8,"pipeline_stages":2},{"BT":32,"BC":64,"num_warps":4,"num_stages":2,"tiles_per_program":64,"pipeline_stages":2}]'

timeout 60 python benchmarks/profile_host.py --out "$out/prof" 2>&1 | grep -v -i warn | head -60
b() { timeout "$1" python -m torch_mhc.bench --steps 20 "${@:2}" 2>&1 | grep -v -i warn | tail -4; }
b 150 --suite gpt-small --compile --variants residual,mhc-triton --out "$out/gpt-small_compiled.json"
b 120 --suite layer --compile --variants residual,mhc-triton --out "$out/layer_compiled.json"
