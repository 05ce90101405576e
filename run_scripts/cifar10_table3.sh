#!/usr/bin/env bash
# Trains every row of the paper's Table 3 (CIFAR-10, WRN-34-10) one after the
# other, each in runs/cifar10/<row>. Needs a GPU and TFDS's cifar10 (or network).
#   bash run_scripts/cifar10_table3.sh [extra train flags, e.g. --strategy=mirrored]
set -euo pipefail
cd "$(dirname "$0")/.."
for row in standard uniform_noise fgsm_at1 double_backprop jarn pgd_at7 jarn_at1; do
  bash run_scripts/train_experiment.sh "flags/cifar10_${row}.cfg" "runs/cifar10/${row}" "$@"
done
