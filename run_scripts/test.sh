#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=requirements-dev.txt bash run_scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python -m pip install -q --no-deps cleverhans==4.0.0  # its declared deps are stale; PGD needs only TF
# Two workers, one test file each at a time (module fixtures stay in one process);
# PYTEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest tests -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
