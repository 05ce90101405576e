"""Export of a class-conditional generator (the ``advgan`` mode).

``export/`` holds, swapped in whole like every export (``export.write_export``):

  saved_model/                 signatures ``serving_default``: ``latent``
                               float32 [N, latent_dim + 1] ~ N(0, I) ->
                               ``images`` (the class-marginal generator, whose
                               first latent coordinate z_0 picks the class
                               floor(K * Phi(z_0)), uniform over the K
                               classes); and ``conditional``: ``latent``
                               float32 [N, latent_dim], ``labels`` int32 [N] ->
                               ``images``. Images are float32 [N, H, W, C] in
                               [0, 1]. Loads with plain ``tf.saved_model.load``.
  generator.keras              the class-marginal generator (one input, as an
                               unconditional generator's: what
                               ``jarn_tf.evaluate_gan`` samples from).
  conditional_generator.keras  (latent, labels) -> images, the same weights.
  metadata.json, samples.png   (one row of the grid per class).
  class_head/                  (co-training runs) the discriminator's trunk and
                               class head as a classifier export
                               (``export.export_classifier``'s layout:
                               saved_model/, classifier.keras, metadata.json),
                               the class head BEFORE fine-tuning (Rob-GAN's
                               Figure 5): ``python -m jarn_tf.evaluate
                               --model=<run>/export/class_head`` attacks it.

Both .keras models use stock Keras layers only (class-conditional batch norm
is BatchNormalization + Embedding gains and biases; the class choice is a
``Discretization`` at the normal quantiles).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import keras
import tensorflow as tf

from jarn_tf.core import export

CONDITIONAL_KERAS_FILE = "conditional_generator.keras"
CLASS_HEAD_DIR = "class_head"


class ConditionalGeneratorServingModule(tf.Module):
    """Serving signatures of a conditional generator and its class-marginal view."""

    def __init__(self, conditional: keras.Model, marginal: keras.Model, latent_dim: int):
        super().__init__(name="conditional_generator_serving")
        self.conditional_model = conditional
        self.marginal_model = marginal
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, latent_dim + 1], tf.float32, name="latent")]
        )
        self.conditional = tf.function(
            self._conditional,
            input_signature=[
                tf.TensorSpec([None, latent_dim], tf.float32, name="latent"),
                tf.TensorSpec([None], tf.int32, name="labels"),
            ],
        )

    def _serve(self, latent: tf.Tensor) -> dict:
        return {"images": tf.cast(self.marginal_model(latent, training=False), tf.float32)}

    def _conditional(self, latent: tf.Tensor, labels: tf.Tensor) -> dict:
        return {"images": tf.cast(self.conditional_model([latent, labels], training=False), tf.float32)}


def export_conditional_generator(
    conditional: keras.Model,
    marginal: keras.Model,
    export_dir: str,
    latent_dim: int,
    num_classes: int,
    image_shape: Sequence[int],
    metadata: Optional[Mapping[str, Any]] = None,
    samples_png: Optional[bytes] = None,
    class_head: Optional[keras.Model] = None,
    class_head_metadata: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes a conditional generator export (see the module docstring).

    Args:
      conditional: (latent [N, latent_dim], labels [N]) -> images.
      marginal: latent [N, latent_dim + 1] -> images (shares the weights).
      export_dir: destination (replaced whole).
      latent_dim: the conditional generator's latent size.
      num_classes: K.
      image_shape: (H, W, C).
      metadata: facts of the run.
      samples_png: a PNG of samples, written as samples.png.
      class_head: images -> class logits, written as the classifier export
        ``class_head/`` (in the same swap as the rest).
      class_head_metadata: facts for ``class_head/metadata.json`` (besides
        the classifier export's own).

    Returns:
      The export directory.
    """
    final = os.path.normpath(os.path.abspath(export_dir))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    payload = {
        "kind": "generator",
        # What generator.keras and serving_default take.
        "latent_dim": int(latent_dim) + 1,
        "latent_distribution": "standard_normal",
        "image_shape": list(image_shape),
        "output_range": [0.0, 1.0],
        "outputs": ["images"],
        "conditional": {
            "num_classes": int(num_classes),
            "latent_dim": int(latent_dim),
            "keras_file": CONDITIONAL_KERAS_FILE,
            "signature": "conditional",
            "class_from_latent": "class = floor(num_classes * Phi(latent[:, 0])) (uniform); "
            "latent[:, 1:] is the conditional generator's latent",
        },
        **(dict(metadata) if metadata else {}),
    }

    def write(tmp: str) -> None:
        module = ConditionalGeneratorServingModule(conditional, marginal, latent_dim)
        tf.saved_model.save(
            module,
            os.path.join(tmp, export.SAVED_MODEL_DIR),
            signatures={"serving_default": module.serve, "conditional": module.conditional},
        )
        marginal.save(os.path.join(tmp, export.GENERATOR_KERAS_FILE))
        conditional.save(os.path.join(tmp, CONDITIONAL_KERAS_FILE))
        if samples_png is not None:
            with open(os.path.join(tmp, export.SAMPLES_FILE), "wb") as f:
                f.write(samples_png)
        if class_head is not None:
            export.write_classifier_files(
                class_head, os.path.join(tmp, CLASS_HEAD_DIR), image_shape, class_head_metadata
            )

    export.write_export(final, write, payload)
    return export_dir
