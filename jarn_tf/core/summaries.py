"""Training metrics and TensorBoard summaries, written from the host."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Sequence

import keras
import tensorflow as tf


class MetricSet:
    """A named group of ``keras.metrics.Mean`` (``train/xent``, ...).

    Built inside the strategy's scope; updated from the replica step with
    per-example values, so that the mean is over the global batch.
    """

    def __init__(self, names: Sequence[str]):
        self.metrics: Dict[str, keras.metrics.Mean] = {
            name: keras.metrics.Mean(name=name.replace("/", "_")) for name in names
        }

    def update(self, values: Mapping[str, tf.Tensor]) -> None:
        for name, value in values.items():
            self.metrics[name].update_state(value)

    def result(self) -> Dict[str, float]:
        return {
            name: float(m.result().numpy()) for name, m in self.metrics.items() if float(m.count.numpy()) > 0
        }

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset_state()


def to_display(images: tf.Tensor) -> tf.Tensor:
    """Rescales each image to [0, 1] (min-max) so Jacobians are visible."""
    # float16/bfloat16 under mixed precision (the adaptor's output).
    images = tf.cast(images, tf.float32)
    lo = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    return (images - lo) / tf.maximum(hi - lo, 1e-12)


class SummaryWriter:
    """Writes scalars and images under ``model_dir/<name>`` for TensorBoard.

    ``enabled=False`` (the non-chief workers of a multi-worker run) writes
    nothing, so only one process writes each event file.
    """

    def __init__(self, model_dir: str, name: str = "train", enabled: bool = True):
        if enabled:
            self.writer = tf.summary.create_file_writer(os.path.join(model_dir, name))
        else:
            self.writer = tf.summary.create_noop_writer()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)
        self.writer.flush()

    def images(self, step: int, images: Mapping[str, tf.Tensor], max_outputs: int = 8) -> None:
        with self.writer.as_default(step=step):
            for tag, value in images.items():
                tf.summary.image(tag, to_display(value), max_outputs=max_outputs)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

