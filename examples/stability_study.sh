#!/usr/bin/env bash
# The two stability studies of docs/results.md, on one GPU (about 10 and 20 minutes):
#   1. LM study: a 12-block GPT on WikiText-2 with a high learning rate, residual vs HC vs
#      mHC (n = 4): losses, composite Amax gains per layer and over steps, gradient norms.
#   2. Depth study: the 100-layer, width-512 plain stack, residual vs HC vs mHC: gradient
#      norms per layer over training, the deepest/shallowest ratio, H_res statistics.
# Usage: examples/stability_study.sh [OUT_DIR] ; then open OUT_DIR/{lm,deep}/report.html
set -euo pipefail
OUT=${1:-runs/study}
mhc compare --preset lm-study --out "$OUT/lm" --overwrite "${@:2}"
mhc compare --preset deep --out "$OUT/deep" --overwrite "${@:2}"
