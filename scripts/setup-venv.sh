#!/usr/bin/env bash
# Create the project's virtual environment from nothing: torch first (pinned CPU wheel), then edgestem.
# Usage: scripts/setup-venv.sh [VENV_DIR] [EXTRAS]   (defaults: .venv, dev)
# Re-running is cheap: it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
extras="${2:-dev}"
python="${PYTHON:-python3}"
stamp="$venv/.edgestem-installed-$extras"

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "setup: $python is older than Python 3.10; set PYTHON=python3.11" >&2; exit 2; }

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x "$venv/bin/edgestem" ]; then
  exit 0
fi
echo "setup: creating $venv (torch 2.13.0 CPU first, then edgestem[$extras])" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }
# An unpinned torch would pull a multi-GB CUDA build: install the pinned CPU wheel before anything asks for torch.
pip install "torch==2.13.0"
pip install -e ".[$extras]"
"$venv/bin/python" -c "import torch, edgestem" || { echo "setup: installation failed (see pip output above)" >&2; exit 1; }
touch "$stamp"
