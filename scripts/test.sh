#!/usr/bin/env bash
# Set up from nothing and run the default (fast) test suite. Extra arguments go to pytest
# (e.g. scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv dev,io,fpga,study,rtl,physics
# FINN (finn-plus) lives in its own environment (its pins conflict with ours): about 1-2 min and
# 2.3 GB the first time, nothing afterwards. EDGESTEM_SKIP_FINN=1 leaves it out (the `finn` tests
# then skip, saying so).
if [ "${EDGESTEM_SKIP_FINN:-0}" != 1 ]; then scripts/setup-finn.sh .venv-finn; fi
.venv/bin/ruff check edgestem tests benchmarks
set +e
.venv/bin/python -m pytest -n auto "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected: that is a failure here, not a pass.
exit $rc
