#!/usr/bin/env bash
# The main job on built-in simulated data (grows with the pipeline): simulate -> info -> plots.
# Usage: scripts/demo.sh [OUT_DIR]   (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo}"
scripts/setup-venv.sh .venv dev,io
es=.venv/bin/edgestem
mkdir -p "$out"
$es simulate --config configs/demo.yaml --out "$out/clean.h5"
$es noise --config configs/demo.yaml --data "$out/clean.h5" --out "$out/noisy-w0.25.h5" --noise-w 0.25
$es noise --config configs/demo.yaml --data "$out/clean.h5" --out "$out/dose-1e3.h5" --dose 1e3
$es info "$out/noisy-w0.25.h5"
$es plot "$out/clean.h5" --out "$out/plots/clean"
$es plot "$out/noisy-w0.25.h5" --out "$out/plots/noisy-w0.25"
$es plot "$out/dose-1e3.h5" --out "$out/plots/dose-1e3"
echo "demo finished: data and figures in $out/"
