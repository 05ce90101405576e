#!/usr/bin/env bash
# CPU-scale counterpart of Table 1a of "Don't let your discriminator be fooled"
# (Zhou & Kraehenbuehl, ICLR 2019): the 15 loss x regulariser cells on
# Fashion-MNIST (flags/cpu_<loss>_<reg>.cfg), each measured with FCD and the
# classifier score of a Fashion-MNIST classifier of this project (not FID: the
# 2015 Inception graph is not available offline), then one table.
#
#   bash run_scripts/cpu_gan_table1.sh                 # all 15 cells, seed 0
#   CELLS="gan_none wgan_rfm" SEED=1 bash run_scripts/cpu_gan_table1.sh
#
# Env: OUT (default runs/gan_cpu), SEED (0), CELLS (default: all, regulariser-major
# order), FEATURE_NET (default runs/paper_cpu/models/standard_seed0, trained with
# flags/cpu_standard.cfg when missing), NUM_SAMPLES (10000), DATA_DIR (optional),
# FCD_EVERY (250: eval/fcd logged every FCD_EVERY steps during training, on 5,000
# samples, for the convergence curves; 0: off), ROBUST_SAMPLES (1000: images of the
# discriminator-robustness measurement after training, FGM and PGD-10 at L2 radii
# 0.05 and 0.5; 0: off). oneDNN's CPU kernels are on (TF_ENABLE_ONEDNN_OPTS=1,
# about twice as fast on this project's 2-core AMD VM; results differ by rounding).
# A finished cell (its eval_gan/results.json exists) is skipped; a killed one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-runs/gan_cpu}"
SEED="${SEED:-0}"
FEATURE_NET="${FEATURE_NET:-runs/paper_cpu/models/standard_seed0}"
NUM_SAMPLES="${NUM_SAMPLES:-10000}"
DATA=()
if [ -n "${DATA_DIR:-}" ]; then DATA=(--data_dir="$DATA_DIR"); fi
DEFAULT_CELLS=""
for reg in none rfm ar gp in; do for loss in gan lsgan wgan; do DEFAULT_CELLS+="${loss}_${reg} "; done; done
CELLS="${CELLS:-$DEFAULT_CELLS}"
FCD_EVERY="${FCD_EVERY:-250}"
ROBUST_SAMPLES="${ROBUST_SAMPLES:-1000}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
CURVE=()
if [ "$FCD_EVERY" != 0 ]; then CURVE=(--fcd_network="$FEATURE_NET" --fcd_samples=5000 --eval_every="$FCD_EVERY"); fi
mkdir -p "$OUT"

if [ ! -e "$FEATURE_NET/export/metadata.json" ]; then
  echo "== feature network: training $FEATURE_NET (flags/cpu_standard.cfg)"
  "$PY" -m jarn_tf.train --flagfile=flags/cpu_standard.cfg --nodownload "${DATA[@]}" --model_dir="$FEATURE_NET" --verbose=0
fi

for cell in $CELLS; do
  run="$OUT/${cell}_seed${SEED}"
  if [ -e "$run/eval_gan/results.json" ]; then echo "== $cell: done"; continue; fi
  echo "== $cell: training ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  "$PY" -m jarn_tf.train --flagfile="flags/cpu_${cell}.cfg" --seed="$SEED" --nodownload "${DATA[@]}" \
    --model_dir="$run" "${CURVE[@]}" --verbose=0 > "$run.log" 2>&1 || { echo "   failed: see $run.log"; tail -3 "$run.log"; continue; }
  echo "$(( $(date +%s) - start ))" > "$run/train_seconds"
  tail -1 "$run.log"
  "$PY" -m jarn_tf.evaluate_gan --model="$run" --metrics=fcd,classifier_score --feature_network="$FEATURE_NET" \
    --num_samples="$NUM_SAMPLES" --seed="$SEED" "${DATA[@]}" --verbose=0 >> "$run.log" 2>&1 \
    || { echo "   evaluation failed: see $run.log"; continue; }
  if [ "$ROBUST_SAMPLES" != 0 ]; then
    "$PY" -m jarn_tf.evaluate_gan --model="$run" --discriminator_robustness --num_samples="$ROBUST_SAMPLES" \
      --deltas=0.05,0.5 --seed="$SEED" "${DATA[@]}" --verbose=0 >> "$run.log" 2>&1 \
      || echo "   discriminator robustness failed: see $run.log"
  fi
done
"$PY" -m jarn_tf.gan.table --runs="$OUT" --seed="$SEED" --output="$OUT/table1.md" \
  --curves="$OUT/fcd_curves_seed$SEED.png" || true
