#!/usr/bin/env bash
# GPU check of the launch options at gpt-small's shape (T = 8192, C = 1024, n = 4, bf16), in
# about 7 minutes: the coefficient and connection CUDA tests, each variant's per-kernel GPU time
# in one process (connection_kernels.py --variants), the fastest variant of each group (at least
# 1.5 % below the defaults) written to $OUT/tuning.json (and out/tuning.json), and compiled
# gpt-small against compiled residual with the defaults and with that tuning.
#   OUT=dir bash benchmarks/c1024_check.sh
set -u
OUT=${OUT:-out}; mkdir -p "$OUT" out
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python -m pytest -q -p no:warnings --tb=line tests/ops/test_coefficients_triton.py tests/ops/test_connection_triton.py 2>&1 | tail -3
V='{
"fwd:tok_p2": {"coef_token": {"pipeline_stages": 2}},
"fwd:tok_p3": {"coef_token": {"pipeline_stages": 3}},
"bwd:tbwd_p2": {"coef_token_bwd": {"pipeline_stages": 2}},
"bwd:tbwd_p3": {"coef_token_bwd": {"pipeline_stages": 3}},
"bwd:tbwd_16_64_p2": {"coef_token_bwd": {"BT": 16, "pipeline_stages": 2}},
"dx:tpp8": {"coef_dx4": {"tiles_per_program": 8}}
}'
timeout 150 python benchmarks/connection_kernels.py --shapes 8192x1024 --reps 15 --variants "$V" --out $OUT/ck_c1024.json 2>&1 | grep -v -i warn | grep -v "^  .*\(reduce\|elementwise\|vectorized\)"
python - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/ck_c1024.json"))
base = d["shapes"]["8192x1024"]["total_us"]
best = {}
for k, r in d["shapes"].items():
    if "/" not in k or "total_us" not in r: continue
    name = k.split("/", 1)[1]; grp = name.split(":")[0]
    if r["total_us"] < best.get(grp, (base * 0.985, None))[0]:  # 1.5 % better than default
        best[grp] = (r["total_us"], name)
tun = {}
for grp, (t, name) in best.items():
    tun.update(d["variants"][name]); print("picked", name, t, "vs default", base)
for path in (os.environ["OUT"] + "/tuning.json", "out/tuning.json"):  # out/ stays on the machine
    json.dump(tun, open(path, "w"), indent=1)
print("tuning", json.dumps(tun))
PY
b() { timeout "$1" python -m torch_mhc.bench --steps 10 --suite gpt-small --compile "${@:2}" 2>&1 | grep -v -i warn | tail -3; }
b 130 --variants residual,mhc-triton --out $OUT/gpt-small_compiled_default.json
if [ "$(cat $OUT/tuning.json)" != "{}" ]; then  # a variant won: the model with it
  TORCH_MHC_TUNING=$OUT/tuning.json b 100 --variants residual,mhc-triton --out $OUT/gpt-small_compiled_tuned.json
fi
