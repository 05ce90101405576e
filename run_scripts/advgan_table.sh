#!/usr/bin/env bash
# Table 1 of "From Adversarial Training to Generative Adversarial Networks"
# (Rob-GAN / AdvGAN): co-training (eq. 9), fine-tuning (eq. 10) and the paper's
# baseline (PGD adversarial training of the same network, --mode=advgan_pgd_at),
# each evaluated with PGD-20 and AutoAttack on the test split at the table's eps.
# Kept for the command it always was; it runs
#   python -m jarn_tf.robgan_study --experiment=table1
# (which also runs Figures 1, 5, 6/7 and 8: see its --help).
#
#   bash run_scripts/advgan_table.sh                    # CPU scale (Fashion-MNIST), seed 0
#   SEEDS=0,1 bash run_scripts/advgan_table.sh          # two seeds
#   SCALE=cifar10 bash run_scripts/advgan_table.sh      # the paper's CIFAR-10 row (GPU and data)
#
# Env: SCALE (cpu | cifar10), SEEDS (0), OUT (default runs/robgan_<scale>), FEATURE_NET
# (a classifier export for FCD; default runs/paper_cpu/models/standard_seed0 at cpu scale),
# DATA_DIR (optional). Before this wrapper (issue 26) the script trained a PGD-AT7
# baseline on another network (the JARN CNN): the paper compares on the same network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
SCALE="${SCALE:-cpu}"
ARGS=(--experiment=table1 --scale="$SCALE" --seeds="${SEEDS:-0}")
if [ -n "${OUT:-}" ]; then ARGS+=(--output_dir="$OUT"); fi
if [ -n "${FEATURE_NET:-}" ]; then ARGS+=(--feature_net="$FEATURE_NET"); fi
if [ -n "${DATA_DIR:-}" ]; then ARGS+=(--data_dir="$DATA_DIR"); fi
exec "$PY" -m jarn_tf.robgan.study "${ARGS[@]}" "$@"
