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

All three are written to a new sibling directory (``export.tmp-XXXX``) that
then replaces ``export/`` whole: ``export`` is renamed to ``export.old``, the
new directory to ``export``, and ``export.old`` is deleted. A failure while
writing leaves the previous export whole; a kill at any point leaves one
whole export, old or new, never a mix: killed between the two renames, only
``export.old`` is there, which ``load_model`` reads and the next export moves
back before replacing it.

``load_model`` reads an export back (or a bare SavedModel or .keras file) as
a differentiable ``images -> logits`` function with what is known about its
inputs, for the evaluation; ``load_model(path, training=True)`` calls the
.keras model in Keras's training mode (batch norm with the statistics of the
batch it is given), the protocol of the authors' release.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import uuid
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "classifier.keras"
METADATA_FILE = "metadata.json"

ModelFn = Callable[[tf.Tensor], tf.Tensor]


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


def _is_export_or_saved_model(directory: str) -> bool:
    return os.path.isdir(directory) and any(
        os.path.exists(os.path.join(directory, name))
        for name in (SAVED_MODEL_DIR, KERAS_FILE, METADATA_FILE, "saved_model.pb")
    )


def recovered_path(path: str) -> str:
    """Where to read ``path`` from after a kill inside an export's swap.

    A kill between ``_replace_dir``'s two renames leaves the previous export
    (or, in an export written before exports swapped whole directories, the
    previous SavedModel) alone at ``<name>.old``; readers use it until the
    next export moves it back. ``path`` is an export directory, a path inside
    one, or anything else (returned as it is).
    """
    path = os.path.normpath(path)
    if os.path.exists(path):
        return path
    if _is_export_or_saved_model(f"{path}.old"):
        return f"{path}.old"
    parent, name = os.path.split(path)
    if name and not os.path.exists(parent) and _is_export_or_saved_model(f"{parent}.old"):
        return os.path.join(f"{parent}.old", name)
    return path


def export_path(export_dir: str) -> str:
    """The directory to read the export at ``export_dir`` from: ``export_dir``, or
    ``export_dir.old`` when a kill between the swap's two renames left only the
    previous export there (the next export moves it back)."""
    return recovered_path(export_dir)


def saved_model_path(export_dir: str) -> str:
    """The export's SavedModel directory: ``saved_model`` of ``export_path(export_dir)``,
    or ``saved_model.old`` in an export written by an older version that was
    killed between the SavedModel's two renames."""
    return recovered_path(os.path.join(export_path(export_dir), SAVED_MODEL_DIR))


def _replace_dir(tmp: str, final: str) -> None:
    """Moves directory ``tmp`` to ``final``, keeping a whole copy in place if killed.

    ``final`` is renamed to ``final.old`` and ``tmp`` to ``final``, then
    ``final.old`` is deleted. A kill between the two renames leaves
    ``final.old`` alone, which readers use (``recovered_path``) and the next call
    (``_recover_dir``) first moves back; a kill while deleting it leaves a
    part of it beside the whole ``final``, which readers ignore and the next
    call deletes. An exception between the renames moves ``final.old`` back.
    """
    old = f"{final}.old"
    _recover_dir(final)
    if os.path.exists(final):
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if not os.path.exists(final) and os.path.isdir(old):
            os.rename(old, final)
        raise
    if os.path.exists(old):
        shutil.rmtree(old)


def _recover_dir(final: str) -> None:
    """Undoes what a kill inside ``_replace_dir(..., final)`` left: moves ``final.old``
    back when it is alone, deletes it when ``final`` is there."""
    old = f"{final}.old"
    if not os.path.exists(final) and os.path.isdir(old):
        os.rename(old, final)  # a previous export was killed between the renames
    if os.path.exists(old):
        shutil.rmtree(old)  # a previous export was killed while deleting it


def _new_dir(parent: str, prefix: str) -> str:
    """Creates a new directory ``parent/prefix<random>`` with the usual permissions
    (``tempfile.mkdtemp``'s are 0700, which would hide the export from other users)."""
    while True:
        path = os.path.join(parent, prefix + uuid.uuid4().hex[:8])
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def export_classifier(
    classifier: keras.Model,
    export_dir: str,
    image_shape: Sequence[int],
    metadata: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes the SavedModel, the .keras file and metadata to ``export_dir``.

    All three are written to a new sibling directory (``<export_dir>.tmp-XXXX``),
    which then replaces ``export_dir`` as a whole (``_replace_dir``): anything
    else in ``export_dir`` is not kept.

    Args:
      classifier: Keras model mapping [0, 1] images to logits.
      export_dir: destination directory (created if needed).
      image_shape: (H, W, C) of the inputs.
      metadata: extra JSON-serialisable facts (dataset, step, config).

    Returns:
      The path of the SavedModel directory.
    """
    final = os.path.normpath(os.path.abspath(export_dir))
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)

    def write(tmp: str) -> None:
        _write_classifier_model(classifier, tmp, image_shape)

    write_export(final, write, _classifier_payload(image_shape, metadata))
    return os.path.join(export_dir, SAVED_MODEL_DIR)


def _classifier_payload(image_shape: Sequence[int], metadata: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    return {
        "image_shape": list(image_shape),
        "input_range": [0.0, 1.0],
        "input_dtype": "float32",
        "outputs": ["logits", "probabilities"],
        **(dict(metadata) if metadata else {}),
    }


def _write_classifier_model(classifier: keras.Model, directory: str, image_shape: Sequence[int]) -> None:
    module = ServingModule(classifier, image_shape)
    tf.saved_model.save(
        module, os.path.join(directory, SAVED_MODEL_DIR), signatures={"serving_default": module.serve}
    )
    classifier.save(os.path.join(directory, KERAS_FILE))


def write_classifier_files(
    classifier: keras.Model,
    directory: str,
    image_shape: Sequence[int],
    metadata: Optional[Mapping[str, Any]] = None,
) -> None:
    """Writes ``export_classifier``'s files into ``directory`` directly (no swap): for a classifier
    export nested in another export that is being written aside (e.g. a co-training run's
    ``class_head/``)."""
    os.makedirs(directory, exist_ok=True)
    _write_classifier_model(classifier, directory, image_shape)
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(_classifier_payload(image_shape, metadata), f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def write_export(final: str, write: Callable[[str], None], payload: Mapping[str, Any]) -> None:
    """Runs ``write(tmp)`` in a new sibling directory, adds metadata.json, and swaps it in.

    Everything is written aside and moved in with one directory swap, so a
    failure while writing leaves the previous export whole and a kill at any
    point leaves readers one whole export, old or new.
    """
    parent, name = os.path.split(final)
    _recover_dir(final)
    # What an export killed while writing left aside.
    for stale in glob.glob(os.path.join(glob.escape(parent), f"{glob.escape(name)}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = _new_dir(parent, f"{name}.tmp-")
    try:
        write(tmp)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        _replace_dir(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


GENERATOR_KERAS_FILE = "generator.keras"
DISCRIMINATOR_KERAS_FILE = "discriminator.keras"
SAMPLES_FILE = "samples.png"


class GeneratorServingModule(tf.Module):
    """A generator with an explicit serving signature: latent -> images in [0, 1]."""

    def __init__(self, generator: keras.Model, latent_dim: int):
        super().__init__(name="generator_serving")
        self.generator = generator
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="latent")]
        )

    def _serve(self, latent: tf.Tensor) -> dict:
        return {"images": tf.cast(self.generator(latent, training=False), tf.float32)}


def export_generator(
    generator: keras.Model,
    export_dir: str,
    latent_dim: int,
    image_shape: Sequence[int],
    metadata: Optional[Mapping[str, Any]] = None,
    samples_png: Optional[bytes] = None,
    discriminator: Optional[keras.Model] = None,
) -> str:
    """Writes a generator export: SavedModel, ``generator.keras``, metadata.json (and samples.png).

    The SavedModel's ``serving_default`` signature takes ``latent`` float32
    [N, latent_dim] (z ~ N(0, I)) and returns ``images`` float32 [N, H, W, C]
    in [0, 1]; it loads with plain ``tf.saved_model.load``. The .keras model
    uses stock Keras layers only. The directory is swapped in whole, as a
    classifier export is.

    ``discriminator`` (optional) is saved beside it as ``discriminator.keras``
    (images in [0, 1] -> its outputs, for ``jarn_tf.evaluate_gan
    --discriminator_robustness``); metadata.json then lists it under
    ``discriminator``.

    Returns:
      The export directory.
    """
    final = os.path.normpath(os.path.abspath(export_dir))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    payload = {
        "kind": "generator",
        "latent_dim": int(latent_dim),
        "latent_distribution": "standard_normal",
        "image_shape": list(image_shape),
        "output_range": [0.0, 1.0],
        "outputs": ["images"],
        **(dict(metadata) if metadata else {}),
    }
    if discriminator is not None:
        payload["discriminator"] = {
            "file": DISCRIMINATOR_KERAS_FILE,
            "input_range": [0.0, 1.0],
            # gan_models.build_gan_discriminator's outputs, in order.
            "outputs": ["score", "features"],
        }

    def write(tmp: str) -> None:
        module = GeneratorServingModule(generator, latent_dim)
        tf.saved_model.save(
            module, os.path.join(tmp, SAVED_MODEL_DIR), signatures={"serving_default": module.serve}
        )
        generator.save(os.path.join(tmp, GENERATOR_KERAS_FILE))
        if discriminator is not None:
            discriminator.save(os.path.join(tmp, DISCRIMINATOR_KERAS_FILE))
        if samples_png is not None:
            with open(os.path.join(tmp, SAMPLES_FILE), "wb") as f:
                f.write(samples_png)

    write_export(final, write, payload)
    return export_dir


# ---------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass
class LoadedModel:
    """A classifier ready to attack.

    Attributes:
      model_fn: images float32 [B, H, W, C] in [0, 1] -> logits float32
        [B, K]; differentiable with respect to the images.
      path: what was loaded (the .keras file or SavedModel directory).
      format: ``keras`` or ``saved_model``.
      image_shape: (H, W, C) the model takes, or None when unknown.
      input_range: (low, high) of the input values it expects.
      metadata: the export's metadata.json ({} when there is none).
      model_dir: the training run's directory when ``path`` came from one.
      training: ``model_fn`` calls the model with ``training=True`` (batch
        norm normalises with the statistics of the batch it is given).
    """

    model_fn: ModelFn
    path: str
    format: str
    image_shape: Optional[Tuple[int, int, int]]
    input_range: Tuple[float, float]
    metadata: Dict[str, Any]
    model_dir: Optional[str] = None
    training: bool = False

    @property
    def dataset(self) -> Optional[str]:
        """The dataset the model was trained on, from its metadata."""
        return self.metadata.get("dataset")

    @property
    def train_eps(self) -> Optional[float]:
        """The eps it was adversarially trained with, from its metadata, if any.

        Exports hold it in the training mode's section,
        ``config[config["mode"]]["eps"]`` (``config["classifier"]["eps"]``,
        ``config["advgan_finetune"]["eps"]``); exports written before the
        training config was re-sectioned hold it at ``config["train"]["eps"]``.
        """
        config = self.metadata.get("config") or {}
        # The training mode's own section first (e.g. ``advgan_finetune``).
        for section in (config.get("mode"), "classifier", "train"):
            if not isinstance(section, str):
                continue
            eps = (config.get(section) or {}).get("eps")
            if eps is not None:
                return eps
        return None


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def _read_metadata(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"{path} cannot be read ({_first_line(e)}). Export the model again, or delete the file and "
            "pass --dataset and --eps."
        ) from e
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} holds no JSON object. Export the model again, or delete the file.")
    return metadata


def _is_saved_model(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "saved_model.pb"))


def _load_keras(path: str, training: bool = False) -> Tuple[ModelFn, Optional[Tuple[int, int, int]]]:
    import jarn_tf.layers  # noqa: F401  registers the custom layers

    fix = (
        "Export the model again (a .keras file is the zip archive that model.save writes), or pass its "
        "SavedModel directory."
    )
    # Keras reports any file that is not a zip archive as "File not found".
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras file: it is not a zip archive (truncated?). {fix}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} cannot be loaded as a .keras model ({_first_line(e)}). {fix}") from e
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    image_shape = tuple(int(d) for d in shape[1:]) if all(d is not None for d in shape[1:]) else None

    if not training:

        def model_fn(images: tf.Tensor) -> tf.Tensor:
            return tf.cast(model(images, training=False), tf.float32)

    else:

        def model_fn(images: tf.Tensor) -> tf.Tensor:
            # Batch norm in training mode normalises with the batch's own statistics and assigns
            # new moving averages; the stateless scope drops those assignments, so the model's
            # variables stay as loaded.
            with keras.StatelessScope():
                return tf.cast(model(images, training=True), tf.float32)

    model_fn.keras_model = model
    return model_fn, image_shape


ServingSignature = Tuple[Any, Any, str, tf.TensorSpec]


def serving_signature(path: str, output: str, input_kind: str, how_to_save: str = "") -> ServingSignature:
    """Loads a SavedModel and checks its ``serving_default`` signature.

    Shared by the classifier loader here and the generator loader of
    ``jarn_tf.gan.metrics``.

    Args:
      path: the SavedModel directory.
      output: the output key the signature must return ("logits", "images").
      input_kind: what its single input is, for error messages ("image", "latent").
      how_to_save: appended to the missing-signature error (how to export one).

    Returns:
      ``(loaded, signature, input_name, input_spec)``; keep ``loaded`` alive
      as long as the signature is used (it owns the restored variables).

    Raises:
      ValueError: the directory cannot be loaded, has no ``serving_default``
        signature, takes more or fewer than one input, or lacks ``output``.
    """
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise ValueError(
            f"SavedModel {path} cannot be loaded ({_first_line(e)}); saved_model.pb or variables/ is "
            "damaged or missing. Export the model again."
        ) from e
    if "serving_default" not in loaded.signatures:
        raise ValueError(
            f"SavedModel {path} has no 'serving_default' signature (its signatures: "
            f"{', '.join(sorted(loaded.signatures)) or 'none'}).{(' ' + how_to_save) if how_to_save else ''}"
        )
    signature = loaded.signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        raise ValueError(f"SavedModel {path}: expected one {input_kind} input, found inputs {sorted(kwargs)}.")
    ((input_name, spec),) = kwargs.items()
    outputs = signature.structured_outputs
    if output not in outputs:
        raise ValueError(f"SavedModel {path}: the signature returns {sorted(outputs)}, not {output!r}.")
    return loaded, signature, input_name, spec


def _load_saved_model(path: str) -> Tuple[ModelFn, Optional[Tuple[int, int, int]]]:
    loaded, signature, input_name, spec = serving_signature(
        path,
        "logits",
        "image",
        "Save it with tf.saved_model.save(module, path, signatures={'serving_default': f}), f taking "
        "float32 images [N, H, W, C] in [0, 1] and returning {'logits': ...}; or pass the model's .keras file.",
    )
    dims = spec.shape.as_list()[1:]
    image_shape = tuple(dims) if dims and all(d is not None for d in dims) else None

    def model_fn(images: tf.Tensor) -> tf.Tensor:
        # The signature's concrete function is differentiable like any other.
        return tf.cast(signature(**{input_name: images})["logits"], tf.float32)

    model_fn.loaded = loaded  # keeps the restored variables alive
    return model_fn, image_shape


def load_model(path: str, training: bool = False) -> LoadedModel:
    """Loads a classifier to evaluate.

    Args:
      path: one of
        * a training run's ``model_dir`` (uses ``export/classifier.keras``, or
          ``export/saved_model`` when there is no .keras file);
        * an export directory (holding ``classifier.keras`` or
          ``saved_model/``, and ``metadata.json``);
        * a SavedModel directory (``saved_model.pb``), whose
          ``serving_default`` signature takes [0, 1] images and returns
          ``logits``;
        * a ``.keras`` file.
        The .keras model is preferred: it is the same network and its
        gradients are cheaper to compute than the SavedModel's.
      training: call the model with Keras's ``training=True`` (batch norm
        uses the statistics of each batch given to ``model_fn``; dropout, if
        any, is on) without changing its variables: no moving average is
        updated, and no seed state advances (dropout would draw the same
        masks at every call). Needs the .keras model: a SavedModel's serving
        signature runs in inference mode.

    Returns:
      The loaded model.

    Raises:
      ValueError: nothing loadable at ``path`` (the message says what was
        looked for), or ``training`` with only a SavedModel there.
    """
    # A kill inside an export's swap may have left the previous export at <export>.old alone.
    path = recovered_path(os.path.abspath(path))
    model_dir = None
    if os.path.isdir(saved_model_path(path)) or os.path.isfile(os.path.join(path, KERAS_FILE)):
        export_dir = path
    elif os.path.isdir(export_path(os.path.join(path, "export"))):
        model_dir, export_dir = path, export_path(os.path.join(path, "export"))
    else:
        export_dir = None

    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise ValueError(f"--model={path}: no such .keras file.")
        target, fmt, metadata = path, "keras", _read_metadata(os.path.dirname(path))
    elif os.path.isdir(path) and _is_saved_model(path):
        parent = os.path.dirname(path)
        target, fmt, metadata = path, "saved_model", _read_metadata(parent)
    elif export_dir is not None:
        metadata = _read_metadata(export_dir)
        keras_file = os.path.join(export_dir, KERAS_FILE)
        saved_model = saved_model_path(export_dir)
        if os.path.isfile(keras_file):
            target, fmt = keras_file, "keras"
        elif _is_saved_model(saved_model):
            target, fmt = saved_model, "saved_model"
        else:
            raise ValueError(f"--model={path}: {export_dir} holds neither {KERAS_FILE} nor a SavedModel.")
    else:
        raise ValueError(
            f"--model={path} is not a model: expected a training run's model_dir (with export/), "
            f"an export directory, a SavedModel directory (with saved_model.pb) or a .keras file."
        )

    if metadata.get("kind") == "generator":
        raise ValueError(
            f"--model={path} is a generator export (--mode=gan or advgan), not a classifier; measure its images "
            "with python -m jarn_tf.evaluate_gan"
        )
    if training and fmt != "keras":
        raise ValueError(
            f"--batchnorm=train calls the model with training=True, which needs its .keras file, but "
            f"{path} gives only the SavedModel {target}, whose serving signature runs in inference mode. "
            f"Pass the .keras file, or a model_dir or export directory holding {KERAS_FILE}; or use "
            "--batchnorm=inference."
        )
    if fmt == "keras":
        model_fn, image_shape = _load_keras(target, training)
    else:
        model_fn, image_shape = _load_saved_model(target)
    if image_shape is None and metadata.get("image_shape"):
        image_shape = tuple(int(d) for d in metadata["image_shape"])
    low, high = metadata.get("input_range", (0.0, 1.0))
    return LoadedModel(
        model_fn=model_fn,
        path=target,
        format=fmt,
        image_shape=image_shape,
        input_range=(float(low), float(high)),
        metadata=metadata,
        model_dir=model_dir,
        training=training,
    )


def check_model_matches_dataset(model: LoadedModel, dataset: str, image_shape: Sequence[int]) -> None:
    """Checks that the model takes the dataset's images, in [0, 1].

    Args:
      model: the loaded model.
      dataset: the dataset's name (for messages).
      image_shape: the dataset's (H, W, C).

    Raises:
      ValueError: the input shape or value range does not match.
    """
    if model.image_shape is not None and tuple(model.image_shape) != tuple(image_shape):
        raise ValueError(
            f"The model {model.path} takes images of shape {list(model.image_shape)} but {dataset} "
            f"images are {list(image_shape)}; pass the --dataset it was trained on"
            + (f" ({model.dataset})." if model.dataset else ".")
        )
    if model.input_range != (0.0, 1.0):
        raise ValueError(
            f"The model {model.path} expects inputs in {list(model.input_range)} (metadata input_range) "
            f"but the evaluation feeds images in [0, 1] and measures eps in those units."
        )
