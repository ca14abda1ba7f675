#!/usr/bin/env bash
# The depth study (100 layers x 512, plain stack, TinyShakespeare bytes) for residual, HC and
# mHC, K seeds each, at one length, with the paper's optimizer (Table 5): every run is its
# own process, all at once on one GPU (the runs are host-bound, so they overlap). Writes
# seed-<s>/<mode>/ (logs, summary), seed-<s>/<mode>.stdout and config.json (which makes the
# folder a seed study, as `mhc compare --seeds` writes it), without checkpoints, packed into
# one OUT/deep_seeds.tar.gz (one file: easy to carry off a remote machine); unpack it and run
# `mhc report DIR` for the table over seeds, `mhc report DIR/seed-<s>` for a seed's plots.
# WALL_S 0: no time limit per run.
#   bash benchmarks/deep_seeds.sh OUT [STEPS] [SEEDS] [WALL_S]
set -u
out=${1:-${OUT:-out}}; steps=${2:-1000}; seeds=${3:-3}; wall=${4:-470}
scratch=${TMPDIR:-/tmp}/deep_seeds_$$
mkdir -p "$out" "$scratch"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
t0=$(date +%s)
for s in $(seq 1337 $((1337 + seeds - 1))); do
  for m in residual hc mhc; do
    mkdir -p "$scratch/seed-$s"
    timeout "$wall" python -m torch_mhc.cli train --preset deep --connection "$m" --seed "$s" \
      --max-steps "$steps" --optimizer paper --ckpt-interval "$steps" --keep-last 1 \
      --no-progress --no-tensorboard --out "$scratch/seed-$s/$m" \
      > "$scratch/seed-$s/$m.stdout" 2>&1 &
  done
done
wait
echo "all runs ended after $(( $(date +%s) - t0 )) s"
for d in "$scratch"/seed-*; do
  for m in residual hc mhc; do
    echo "$(basename "$d") $m: $(grep -c . "$d/$m/log.jsonl" 2>/dev/null) log lines; $(tail -c 300 "$d/$m.stdout" | tr '\r\n' '  ' | tail -c 200)"
  done
done
python - "$scratch" "$seeds" <<'PY'
import json, sys
from torch_mhc.train.seeds import write_study_config
root, k = sys.argv[1], int(sys.argv[2])
try:
    with open(f"{root}/seed-1337/mhc/log.jsonl") as f:
        cfg = json.loads(f.readline())["config"]
except (OSError, ValueError, KeyError):
    cfg = {}
write_study_config(root, range(1337, 1337 + k), ["residual", "hc", "mhc"],
                   {**cfg, "connection": "(per mode)"})
PY
tar -czf "$out/deep_seeds.tar.gz" --exclude=checkpoints -C "$scratch" .
rm -rf "$scratch"
