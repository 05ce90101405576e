#!/usr/bin/env bash
# The README's first command: set up, then train JARN on Fashion-MNIST offline
# (Debian's dataset-fashion-mnist files) on the CPU, and export the model.
#   bash run_scripts/quickstart.sh [MODEL_DIR] [extra train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/setup_env.sh
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)..."
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
model_dir=${1:-runs/fashion_mnist_jarn}
shift $(( $# > 0 ? 1 : 0 ))
export TF_CPP_MIN_LOG_LEVEL=2
time .venv/bin/python -m jarn_tf.train --flagfile=flags/fashion_mnist_jarn.cfg --nodownload \
  --model_dir="$model_dir" "$@"
# Then attack it: clean, FGSM and PGD-20 (cross-entropy and margin) at
# Fashion-MNIST's eps 0.1 on the first 1,000 test images.
time .venv/bin/python -m jarn_tf.evaluate --model="$model_dir" --attacks=clean,fgsm,pgd20 --pgd_loss=both \
  --eps=0.1 --num_examples=1000 --nodownload --output_dir="$model_dir/eval"
