#!/usr/bin/env bash
# Set up from nothing and run the default (fast) test suite. Extra arguments go to pytest
# (e.g. scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv dev,io,fpga,study,rtl
.venv/bin/ruff check edgestem tests benchmarks
set +e
.venv/bin/python -m pytest -n auto "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected: that is a failure here, not a pass.
exit $rc
