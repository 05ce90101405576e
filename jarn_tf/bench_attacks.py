r"""Benchmark: our PGD against CleverHans's PGD on the same model and batch.

  python -m jarn_tf.bench_attacks --dataset=fashion_mnist --batch_size=256 --steps=20

Prints images/second of ``jarn_tf.attacks.pgd`` (compiled with tf.function,
as the evaluation runs it) and of CleverHans 4's
``cleverhans.tf2.attacks.projected_gradient_descent`` (as its users call it,
eagerly, and wrapped in tf.function), the largest difference between their
adversarial examples (both without random start, so they must agree), and
optionally AutoAttack's time per 1,000 examples.

CleverHans is a benchmark-only dependency; its own requirements are stale, so
install it without them: ``pip install --no-deps cleverhans==4.0.0``.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np
from absl import app, flags

from jarn_tf import config

FLAGS = flags.FLAGS


def define_bench_flags() -> None:
    from jarn_tf.flag_utils import define_fraction

    flags.DEFINE_enum("dataset", "fashion_mnist", config.DATASETS, "Input shape.")
    flags.DEFINE_string("model_path", None, "An exported model (.keras or model_dir); default: random init.")
    flags.DEFINE_enum("model", None, config.MODELS, "Architecture for a random-init model.")
    flags.DEFINE_list("cnn_channels", ["64", "128", "256"], "MNIST CNN channels.")
    flags.DEFINE_integer("wrn_depth", 34, "WRN depth.")
    flags.DEFINE_integer("wrn_width", 10, "WRN width.")
    flags.DEFINE_integer("batch_size", 256, "Images per attack call.")
    flags.DEFINE_integer("steps", 20, "PGD steps.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per implementation (after one warm-up).")
    define_fraction("eps", 0.1, "L-inf radius.", 0.0, 1.0)
    flags.DEFINE_integer("autoattack_examples", 0, "Also time standard AutoAttack on this many examples.")
    flags.DEFINE_integer("seed", 0, "Seed of the model and the inputs.")


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call, median of ``repeats`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        np.asarray(out)  # wait for the result
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def main(argv) -> int:
    del argv
    import keras
    import tensorflow as tf

    from jarn_tf import attacks, autoattack, data, export, models

    try:
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    except ImportError:
        print("error: CleverHans is not installed: pip install --no-deps cleverhans==4.0.0")
        return 2

    keras.utils.set_random_seed(FLAGS.seed)
    info = data.dataset_info(FLAGS.dataset)
    if FLAGS.model_path:
        model_fn = export.load_model(FLAGS.model_path).model_fn
        description = FLAGS.model_path
    else:
        arch = FLAGS.model or ("mnist_cnn" if info.image_shape[0] == 28 else "wrn")
        cfg = config.ModelConfig(
            model=arch,
            cnn_channels=tuple(int(c) for c in FLAGS.cnn_channels),
            wrn_depth=FLAGS.wrn_depth,
            wrn_width=FLAGS.wrn_width,
        )
        classifier = models.build_classifier(cfg, info.image_shape, info.num_classes)
        model_fn = lambda x: classifier(x, training=False)  # noqa: E731
        description = f"{arch} (random init) {cfg.cnn_channels if arch == 'mnist_cnn' else ''}"

    rng = np.random.default_rng(FLAGS.seed)
    images = tf.constant(rng.uniform(0, 1, (FLAGS.batch_size, *info.image_shape)).astype(np.float32))
    labels = tf.constant(rng.integers(0, info.num_classes, FLAGS.batch_size))
    eps, steps = FLAGS.eps, FLAGS.steps
    step_size = eps / 4

    def ours_fn(x, y):
        return attacks.pgd(model_fn, x, y, eps, step_size, steps, random_start=False)

    ours = tf.function(ours_fn)
    ours_xla = tf.function(ours_fn, jit_compile=True)  # what evaluate --jit_compile runs

    def cleverhans(x, y):
        return projected_gradient_descent(
            model_fn,
            x,
            eps,
            step_size,
            steps,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            y=y,
            rand_init=False,
            sanity_checks=False,
        )

    cleverhans_compiled = tf.function(cleverhans)
    runs: Dict[str, Callable[[], object]] = {
        "jarn_tf pgd (tf.function)": lambda: ours(images, labels),
        "jarn_tf pgd (XLA, --jit_compile)": lambda: ours_xla(images, labels),
        "cleverhans pgd (eager)": lambda: cleverhans(images, labels),
        "cleverhans pgd (tf.function)": lambda: cleverhans_compiled(images, labels),
    }
    print(f"PGD-{steps}, eps {eps:g}, step {step_size:g}, batch {FLAGS.batch_size}, {description}")
    seconds = {name: _timed(fn, FLAGS.repeats) for name, fn in runs.items()}
    base = seconds["jarn_tf pgd (tf.function)"]
    print(f"| implementation | s / batch | images / s | time vs jarn_tf |")
    print(f"| --- | --- | --- | --- |")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {FLAGS.batch_size / s:.0f} | {s / base:.2f}x |")
    diff = np.abs(ours(images, labels).numpy() - cleverhans(images, labels).numpy())
    # On an untrained model many input gradients are ~0 and their sign can
    # flip with summation order; on a trained model the two agree to ~1e-8.
    print(
        f"ours vs cleverhans: max |diff| {diff.max():.2e}, "
        f"pixels differing by > 1e-6: {100 * np.mean(diff > 1e-6):.3f}%"
    )

    if FLAGS.autoattack_examples:
        n = FLAGS.autoattack_examples
        x = (
            images[:n]
            if n <= FLAGS.batch_size
            else tf.constant(rng.uniform(0, 1, (n, *info.image_shape)).astype(np.float32))
        )
        y = tf.argmax(model_fn(x), axis=-1)  # attack correctly classified points
        tic = time.perf_counter()
        autoattack.run_autoattack(model_fn, x, y, eps, seed=FLAGS.seed)
        dt = time.perf_counter() - tic
        print(f"standard AutoAttack: {dt:.1f} s for {n} examples = {1000 * dt / n:.0f} s per 1,000 examples")
    return 0


def run() -> None:
    define_bench_flags()
    app.run(main)


if __name__ == "__main__":
    run()
