r"""Evaluate a Keras classifier's robustness with PGD and AutoAttack, checks for gradient masking included.

  python examples/evaluate_keras_model.py --model=my_model.keras --dataset=fashion_mnist --eps=0.1
  python examples/evaluate_keras_model.py       # offline: a tiny CNN fitted on 512 Fashion-MNIST images
                                                # (AutoAttack with a small budget: --autoattack=standard)

The model contract: float32 images [N, H, W, C] (channels last) with values in [0, 1] in, logits
(not probabilities) out. --model takes a .keras file, a SavedModel directory, or a training run /
export directory of this package. Without --model the script fits a tiny CNN for a few seconds on
Fashion-MNIST (read from Debian's dataset-fashion-mnist files or TFDS's copy, as the package's
commands read it). With --autoattack=standard the same numbers come from

  python -m jarn_tf.evaluate --model=my_model.keras --dataset=fashion_mnist --eps=0.1 \
      --attacks=clean,pgd20,autoattack --num_examples=64
"""

from __future__ import annotations

import argparse

import jarn_tf


def fit_tiny_cnn(dataset: str, num_train: int, epochs: int, data_dir=None):
    """A small Keras CNN (images in [0, 1] -> logits) fitted briefly on the first training images."""
    import keras

    images, labels = jarn_tf.load_dataset(dataset, "train", num_examples=num_train, data_dir=data_dir)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(images.shape[1:]),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),  # logits: no softmax
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=32, epochs=epochs, verbose=0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="A .keras file, SavedModel, export or run directory. Default: a tiny CNN."
    )
    parser.add_argument(
        "--dataset", default=None, help="Default: the model's (metadata), else fashion_mnist."
    )
    parser.add_argument("--data_dir", default=None, help="TFDS data directory or a directory of IDX files.")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius in [0, 1] pixel units.")
    parser.add_argument("--num_examples", type=int, default=64, help="The first N test images.")
    parser.add_argument("--train_examples", type=int, default=512, help="Training images of the tiny CNN.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of the tiny CNN.")
    parser.add_argument(
        "--autoattack",
        choices=["standard", "quick"],
        default=None,
        help="standard: AutoAttack's standard version (what the papers report); quick: a small budget "
        "(jarn_tf.AUTOATTACK_QUICK_BUDGET), far weaker, for a smoke test. Default: standard with --model, "
        "quick for the tiny CNN.",
    )
    parser.add_argument("--verbose", type=int, default=0, help="1: progress bars.")
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = fit_tiny_cnn(args.dataset or "fashion_mnist", args.train_examples, args.epochs, args.data_dir)
    quick = args.autoattack == "quick" or (args.autoattack is None and args.model is None)
    budget = jarn_tf.AUTOATTACK_QUICK_BUDGET if quick else None

    # The five lines.
    model = jarn_tf.load_classifier(model)
    dataset = args.dataset or model.dataset or "fashion_mnist"
    images, labels = jarn_tf.load_dataset(dataset, num_examples=args.num_examples, data_dir=args.data_dir)
    report = jarn_tf.evaluate_robustness(
        model, images, labels, eps=args.eps, attacks=("pgd20", "autoattack"),
        autoattack_budget=budget, verbose=args.verbose,
    )  # fmt: skip
    print(report)


if __name__ == "__main__":
    main()
