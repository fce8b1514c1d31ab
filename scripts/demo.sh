#!/usr/bin/env bash
# The main job on built-in simulated data (grows with the pipeline):
# simulate -> noise -> train (unsupervised, on the noisy scan itself) -> strain maps (encoder and
# encoder + likelihood refinement) -> classical baseline -> figures, all under OUT_DIR.
# Usage: scripts/demo.sh [OUT_DIR]   (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo}"
scripts/setup-venv.sh .venv dev,io
es=.venv/bin/edgestem
mkdir -p "$out"
$es simulate --config configs/demo.yaml --out "$out/clean.h5"
$es noise --config configs/demo.yaml --data "$out/clean.h5" --out "$out/noisy-w0.25.h5" --noise-w 0.25
$es info "$out/noisy-w0.25.h5"
$es plot "$out/noisy-w0.25.h5" --out "$out/plots"
if [ -f "$out/run/checkpoint.pt" ]; then resume=--resume; else resume=; fi
$es train --config configs/demo.yaml --data "$out/noisy-w0.25.h5" --out "$out/run" $resume
$es strain --run "$out/run" --data "$out/noisy-w0.25.h5" --out "$out/strain.h5" --refine
$es baseline --data "$out/noisy-w0.25.h5" --out "$out/classical.h5"
echo "demo finished: data, run, maps (strain.png, classical.png) and figures in $out/"
