#!/usr/bin/env bash
# The main job on built-in simulated data: the whole pipeline of configs/demo.yaml
# (simulate -> noise -> train -> qat -> export -> hls4ml firmware -> emulate --check -> report),
# then a look at the data, all under OUT_DIR. Re-running skips the steps that are up to date.
# Usage: scripts/demo.sh [OUT_DIR]   (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo}"
scripts/setup-venv.sh .venv dev,io,fpga
es=.venv/bin/edgestem
$es run configs/demo.yaml --out "$out"
$es info "$out/data/train.h5"
$es plot "$out/data/train.h5" --out "$out/plots"
echo "demo finished: run directory $out (report: $out/report/report.md, report.png; firmware: $out/firmware/hls4ml/)"
