#!/usr/bin/env bash
# Set up the test environments and run the whole test suite.
#
# Twice: once in a virtual environment with only the core dependencies (so the
# daemon is proven to work without torch and the other extras; tests that need
# an extra skip), then in one with every extra (torch pinned to the CPU build
# 2.13.0), where everything runs. Extra arguments go to the second pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CORE_VENV=${WATCHDOG_CORE_VENV:-.venv-test-core}
FULL_VENV=${WATCHDOG_TEST_VENV:-.venv-test}

setup() {  # setup VENV EXTRAS
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$2]"
}

echo "== core dependencies only (no torch) =="
setup "$CORE_VENV" dev
"$CORE_VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
  || { echo "torch must not be installed in the core environment" >&2; exit 1; }
"$CORE_VENV/bin/ruff" check .
"$CORE_VENV/bin/ruff" format --check .
"$CORE_VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow"

echo "== every extra =="
setup "$FULL_VENV" "$(grep -v '^#' requirements-extras.txt | paste -sd, -)"
"$FULL_VENV/bin/mypy" watchdog benchmarks grafana scripts
"$FULL_VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
