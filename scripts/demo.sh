#!/usr/bin/env bash
# Set up an environment and run the demo: the daemon watching a SIMULATED GPU
# that leaks, serving Prometheus metrics, until Ctrl-C (or --duration seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${WATCHDOG_DEMO_VENV:-.venv-demo}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[torch]"
exec "$VENV/bin/python" scripts/demo.py "$@"
