#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned requirements and jarn_tf.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "${REQUIREMENTS:-requirements.txt}"
.venv/bin/python -m pip install -q --no-deps -e .
