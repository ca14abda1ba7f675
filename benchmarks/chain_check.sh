#!/usr/bin/env bash
# GPU check of chained connections (each post-res computes the next connection's projection),
# about 9 minutes: their CUDA tests, the per-kernel GPU time of a chained and an unchained
# connection with launch variants of the projecting post-res, and compiled gpt-small with
# residual, chained and unchained mHC in one process.
#   OUT=dir bash benchmarks/chain_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python -m pytest -q -p no:warnings --tb=short tests/ops/test_post_res_triton.py tests/ops/test_connection_triton.py tests/ops/test_library_triton.py -k "project or chain or opcheck" 2>&1 | tail -5
V='{
"p_32_32_512_w4": {"post_res_proj": {"BT": 32, "BC": 32, "BK": 512, "num_warps": 4, "num_stages": 2}},
"p_64_64_512_w8": {"post_res_proj": {"BT": 64, "BC": 64, "BK": 512, "num_warps": 8, "num_stages": 2}},
"p_32_64_256_w4": {"post_res_proj": {"BT": 32, "BC": 64, "BK": 256, "num_warps": 4, "num_stages": 2}},
"p_64_32_256_w8_s3": {"post_res_proj": {"BT": 64, "BC": 32, "BK": 256, "num_warps": 8, "num_stages": 3}},
"p_16_64_1024_w4": {"post_res_proj": {"BT": 16, "BC": 64, "BK": 1024, "num_warps": 4, "num_stages": 2}}
}'
timeout 100 python benchmarks/connection_kernels.py --shapes 8192x1024,4096x4096 --chain --reps 15 --out $OUT/ck_chain.json 2>&1 | grep -v -i warn | grep -v "^  .*\(reduce\|elementwise\|vectorized\)"
timeout 120 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 15 --variants "$V" --chain --out $OUT/ck_chain_variants.json 2>&1 | grep -v -i warn | grep "us, floor\|post_res_proj\|failed"
timeout 230 python -m torch_mhc.bench --steps 10 --suite gpt-small --compile --variants residual,mhc-triton,mhc-triton-unchained --out $OUT/gpt-small_compiled.json 2>&1 | grep -v -i warn | tail -5
