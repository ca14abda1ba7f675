#!/usr/bin/env bash
# GPU check of the coefficient token backward at both suite shapes, in about 6 minutes: the
# compile tests (dynamic sequence lengths included) and the coefficient CUDA tests, every
# kernel's GPU time with the default token tile and with BT 4 / 16
# (connection_kernels.py --variants, one process), and Nsight Compute reports of the token
# backward and the dx pass at T = 8192, C = 1024. Writes under $OUT. (At commit b6f0604 it
# also timed the ``lse_scratch`` option, the default from 490a4db on.)
#   OUT=dir bash benchmarks/token_bwd_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python -m pytest -q -p no:warnings -p no:logging --tb=short tests/models/test_compile.py 2>&1 \
  | grep -v DEBUG | tail -15 | tee "$OUT/tests_compile.log"
timeout 100 python -m pytest -q -p no:warnings --tb=line tests/ops/test_coefficients_triton.py \
  2>&1 | tail -3 | tee "$OUT/tests_coefficients.log"
V='{"bt16": {"coef_token_bwd": {"BT": 16}}, "bt4": {"coef_token_bwd": {"BT": 4}}}'
timeout 150 python benchmarks/connection_kernels.py --shapes 8192x1024,4096x4096 --reps 15 \
  --variants "$V" --out "$OUT/ck_token_bwd.json" 2>&1 | grep -v -i warn | grep "T=\|token_bwd\|dx4"
cat > /tmp/one.py <<'PY'
import sys, torch
sys.path.insert(0, "benchmarks")
from host_overhead import _connection
conn, _ = _connection(8192, 1024)
for _ in range(3):
    conn()
torch.cuda.synchronize()
PY
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section LaunchStats"
n() { timeout 100 ncu --clock-control none -k "regex:$1" --launch-skip 1 --launch-count 1 $S python /tmp/one.py > "$OUT/$2" 2>&1; grep -E "Duration|Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Eligible|Issued Warp|L2 Hit|Local" "$OUT/$2" | head -16; }
n _coef_token_bwd ncu_token_bwd.txt
n _coef_dx4 ncu_dx4.txt
