#!/usr/bin/env bash
# Trains one experiment from its flagfile and exports it.
#   bash run_scripts/train_experiment.sh flags/cifar10_jarn_at1.cfg runs/jarn_at1 [more flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 FLAGFILE MODEL_DIR [extra train flags]" >&2
  exit 2
fi
flagfile=$1
model_dir=$2
shift 2
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" -m jarn_tf.train --flagfile="$flagfile" --model_dir="$model_dir" "$@"
