#!/usr/bin/env bash
# Set up an environment and run `gpu-watchdog demo`: a real PyTorch training job
# (CPU) with a planted host-memory leak, watched by the daemon on a SIMULATED idle
# GPU; the leak is raised, the job checkpointed, restarted, resumed and finished.
# About 2 minutes; leaves nothing running. Arguments go to `gpu-watchdog demo`
# (see `gpu-watchdog demo --help` and docs/demo.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${WATCHDOG_DEMO_VENV:-.venv-demo}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[torch]"
exec "$VENV/bin/gpu-watchdog" demo "$@"
