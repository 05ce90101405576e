"""Exporting a trained classifier for evaluation by any tool.

``model_dir/export/`` holds:
  saved_model/      a SavedModel whose ``serving_default`` signature takes
                    ``images``: float32 [N, H, W, C] in [0, 1] and returns
                    ``logits`` and ``probabilities``. Loads with plain
                    ``tf.saved_model.load``, without this package.
  classifier.keras  the same Keras 3 model; loads under any Keras backend
                    after ``import jarn_tf.layers`` (its custom layers are
                    written with ``keras.ops``).
  metadata.json     dataset, image shape, classes, value range, step.

Every artefact is written next to its final place and moved in with a
rename, so a run killed while exporting leaves the previous export usable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

import keras
import tensorflow as tf

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "classifier.keras"
METADATA_FILE = "metadata.json"


class ServingModule(tf.Module):
    """A classifier with an explicit serving signature in pixel units."""

    def __init__(self, classifier: keras.Model, image_shape: Sequence[int]):
        super().__init__(name="serving")
        self.classifier = classifier
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")],
        )

    def _serve(self, images: tf.Tensor) -> dict:
        logits = tf.cast(self.classifier(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def _replace_dir(tmp: str, final: str) -> None:
    """Moves directory ``tmp`` to ``final``, keeping ``final`` valid if killed."""
    old = f"{final}.old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)


def export_classifier(
    classifier: keras.Model,
    export_dir: str,
    image_shape: Sequence[int],
    metadata: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes the SavedModel, the .keras file and metadata to ``export_dir``.

    Args:
      classifier: Keras model mapping [0, 1] images to logits.
      export_dir: destination directory (created if needed).
      image_shape: (H, W, C) of the inputs.
      metadata: extra JSON-serialisable facts (dataset, step, config).

    Returns:
      The path of the SavedModel directory.
    """
    os.makedirs(export_dir, exist_ok=True)
    final = os.path.join(export_dir, SAVED_MODEL_DIR)

    tmp = tempfile.mkdtemp(prefix=".tmp-saved_model-", dir=export_dir)
    try:
        module = ServingModule(classifier, image_shape)
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    fd, tmp_keras = tempfile.mkstemp(prefix=".tmp-classifier-", suffix=".keras", dir=export_dir)
    os.close(fd)
    try:
        classifier.save(tmp_keras)
        os.replace(tmp_keras, os.path.join(export_dir, KERAS_FILE))
    finally:
        if os.path.exists(tmp_keras):
            os.remove(tmp_keras)

    payload = {
        "image_shape": list(image_shape),
        "input_range": [0.0, 1.0],
        "input_dtype": "float32",
        "outputs": ["logits", "probabilities"],
        **(dict(metadata) if metadata else {}),
    }
    tmp_meta = os.path.join(export_dir, f".{METADATA_FILE}.tmp")
    with open(tmp_meta, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp_meta, os.path.join(export_dir, METADATA_FILE))
    return final
