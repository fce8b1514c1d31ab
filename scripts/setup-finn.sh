#!/usr/bin/env bash
# FINN (finn-plus 1.6.1) in its own virtual environment: it cannot share .venv (it pins brevitas
# 0.13.0, onnx 1.21.0, onnxruntime 1.25.1 and protobuf 5.29.6; see docs/firmware.md).
# Usage: scripts/setup-finn.sh [VENV_DIR]   (default .venv-finn)
# Re-running is cheap: a stamp file records a finished install of exactly these pins.
# Afterwards `source VENV_DIR/finn-env.sh` sets FINN_BUILD_DIR, FINN_RTLLIB and FINN_CUSTOM_HLS.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-finn}"
python="${PYTHON:-python3}"

torch_pin="torch==2.13.0"
finn_pins=(brevitas==0.13.0 finn-plus==1.6.1)
# finn-plus 1.6.1's declared dependencies (its wheel METADATA), with its exact pins ...
finn_deps=(
  "bitstring>=4.3.1,<4.4.0" "click>=8.1.8,<9.0.0" "cmake>=4.0.3,<4.1.0" "mashumaro[yaml]>=3.15,<4.0"
  "matplotlib>=3.10.9,<3.11.0" "mip==1.17.0" "numpy>=2.4.6,<2.5.0" "onnx==1.21.0" "onnx-ir>=0.1.15"
  "onnx-passes>=0.4.0" "onnxoptimizer>=0.4.2,<0.5.0" "onnxruntime==1.25.1" "onnxscript>=0.7.0"
  "pandas>=2.3.1,<2.4.0" "protobuf==5.29.6" "pybind11==3.0.1" "pydantic>2.0" "pyyaml>=6.0.2,<6.1.0"
  "qonnx==1.0.0" "rich>=13.9.4,<14.0.0" "scikit-learn>=1.7.2,<1.8.0" "scipy>=1.17.0,<1.18.0"
  "termcolor>=2.5.0,<3.0.0"
)
# ... brevitas 0.13.0's, with setuptools in place of its <70 pin: torch 2.13 needs >= 77.0.3, and
# brevitas imports pkg_resources, which setuptools 81 removed; 77-80 satisfies both ...
brevitas_deps=("dependencies==2.0.1" packaging sympy "typing-extensions>=3.7.4" unfoldNd "setuptools>=77.0.3,<81")
# ... and what finn-plus imports without declaring it.
undeclared=(psutil)

key="$torch_pin ${finn_pins[*]} ${finn_deps[*]} ${brevitas_deps[*]} ${undeclared[*]}"
stamp="$venv/.edgestem-finn-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup-finn: finn-plus needs Python >= 3.11 and $python is older; set PYTHON=python3.11" >&2; exit 2; }

start=$(date +%s)
echo "setup-finn: creating $venv ($torch_pin first, then finn-plus 1.6.1 and its pinned dependencies)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }
# An unpinned torch would pull a multi-GB CUDA build: the pinned CPU wheel goes in before anything asks for torch.
pip install "$torch_pin"
pip install "$torch_pin" "${finn_deps[@]}" "${brevitas_deps[@]}" "${undeclared[@]}"
# --no-deps: brevitas 0.13.0 declares setuptools<70, which would downgrade what torch needs.
pip install --no-deps "${finn_pins[@]}"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
build_dir="$(cd "$venv" && pwd)/finn-build"
mkdir -p "$build_dir"
cat >"$venv/finn-env.sh" <<EOF
# Written by scripts/setup-finn.sh: the environment FINN's build steps read.
export FINN_BUILD_DIR="\${FINN_BUILD_DIR:-$build_dir}"
export FINN_RTLLIB="$site/finn/finn-rtllib"
export FINN_CUSTOM_HLS="$site/finn/custom_hls"
EOF

# The check docs/toolchain.md describes (FINN): the build steps import without Vivado once finn.xsi.SimEngine is None;
# and brevitas, whose pkg_resources import breaks with a too-new setuptools.
# shellcheck disable=SC1091
if ! (source "$venv/finn-env.sh" && "$venv/bin/python" -W ignore::UserWarning -c '
import finn.xsi
finn.xsi.SimEngine = None
import finn.builder.build_dataflow_steps  # noqa: F401
import brevitas.nn  # noqa: F401
'); then
  echo "setup-finn: finn.builder.build_dataflow_steps or brevitas does not import (see the output above)" >&2
  exit 1
fi
# pip check: brevitas's setuptools<70 pin is the one conflict we accept (see above); report any other.
conflicts=$("$venv/bin/python" -m pip check 2>&1 | grep -v "^brevitas 0.13.0 has requirement setuptools<70" || true)
if [ -n "$conflicts" ] && [ "$conflicts" != "No broken requirements found." ]; then
  echo "setup-finn: warning: pip check: $conflicts" >&2
fi
echo "$key" >"$stamp"
echo "setup-finn: $venv ready in $(($(date +%s) - start)) s, $(du -sh "$venv" | cut -f1); source $venv/finn-env.sh before running FINN" >&2
