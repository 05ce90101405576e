r"""Measure a GAN generator's image quality: FCD and classifier score against real images.

  python examples/measure_generator.py --generator=runs/wgan_rfm --feature_network=runs/fmnist_standard
  python examples/measure_generator.py     # offline: tiny untrained networks, exported to a temp dir

FCD is the Fréchet distance between Gaussians fitted to a classifier's features of generated and of
real images (lower is better); the classifier score is exp E KL(p(y|x) || p(y)) of its softmax
(higher is better). They are computed with a classifier of this package trained on the same dataset,
not the 2015 Inception network, so they are not FID/IS and not comparable with published values.
--generator takes a GAN run's model_dir, its export directory, generator.keras or the saved_model
directory; --feature_network a classifier's run directory, export directory or .keras file. The same
numbers come from

  python -m jarn_tf.evaluate_gan --model=GEN --feature_network=NET --num_samples=N --noreference_floor
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jarn_tf


def export_tiny_untrained(directory: str, dataset: str = "fashion_mnist") -> tuple:
    """Exports an untrained generator and classifier (28x28x1) the way training runs export them."""
    import keras

    from jarn_tf.core import export

    keras.utils.set_random_seed(0)
    # Functional models: the FCD's features are the input of the classifier's last Dense layer.
    latent = keras.Input((16,))
    generator = keras.Model(
        latent, keras.layers.Reshape((28, 28, 1))(keras.layers.Dense(28 * 28, activation="sigmoid")(latent))
    )
    images = keras.Input((28, 28, 1))
    features = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(images))
    classifier = keras.Model(images, keras.layers.Dense(10)(features))  # logits
    generator_dir, classifier_dir = os.path.join(directory, "generator"), os.path.join(
        directory, "classifier"
    )
    export.export_generator(generator, generator_dir, 16, (28, 28, 1), metadata={"dataset": dataset})
    export.export_classifier(classifier, classifier_dir, (28, 28, 1), metadata={"dataset": dataset})
    return generator_dir, classifier_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generator", help="Generator export or run directory. Default: a tiny untrained one."
    )
    parser.add_argument("--feature_network", help="Classifier export, run directory or .keras file.")
    parser.add_argument(
        "--dataset", default=None, help="Default: the generator's (metadata), else fashion_mnist."
    )
    parser.add_argument("--data_dir", default=None, help="TFDS data directory or a directory of IDX files.")
    parser.add_argument("--num_samples", type=int, default=1000, help="Generated images.")
    parser.add_argument("--num_real", type=int, default=1000, help="Real test images (the first ones).")
    parser.add_argument("--feature_layer", default="penultimate", choices=["penultimate", "logits"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generator, feature_network = args.generator, args.feature_network
        if generator is None or feature_network is None:
            tiny_generator, tiny_network = export_tiny_untrained(tmp, args.dataset or "fashion_mnist")
            generator, feature_network = generator or tiny_generator, feature_network or tiny_network

        # The core.
        generator = jarn_tf.load_generator(generator)
        dataset = args.dataset or generator.dataset or "fashion_mnist"
        real_images, _ = jarn_tf.load_dataset(dataset, num_examples=args.num_real, data_dir=args.data_dir)
        report = jarn_tf.measure_generator(
            generator,
            real_images,
            feature_network,
            num_samples=args.num_samples,
            feature_layer=args.feature_layer,
        )
        print(report)


if __name__ == "__main__":
    main()
