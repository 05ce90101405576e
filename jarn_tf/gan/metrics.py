"""Image-quality metrics of generative models, named after the network that computes them.

The Fréchet Inception distance (FID, Heusel et al. 2017) and the Inception
Score (IS, Salimans et al. 2016) are defined by one network: the 2015
TensorFlow Inception graph (``classify_image_graph_def.pb`` of
inception-2015-12-05, 2048 ``pool_3`` features and 1008 logits). Any other
network (Keras's InceptionV3 included) gives other numbers. So the metrics
here are computed from any *feature network* and named after it:

* a classifier export of this project (``load_classifier_network``):
  features are the input of its last Dense layer (the penultimate
  activations; ``feature_layer="logits"`` takes the logits), probabilities
  the softmax of its logits. The numbers are the **FCD** (Fréchet
  classifier distance) and the **classifier score**, never FID or IS.
* the 2015 Inception graph (``load_inception_network``), only when given as
  a GraphDef .pb file whose structure is checked (``pool_3`` of 2048
  features, 1008 logits): then they are the **FID** and the **IS**, fed as
  the reference implementations feed that graph (see
  ``load_inception_network``).

``FeatureNetwork.describe()`` gives what every report must name: the
network's path and the SHA-256 of its file, the feature layer and its size.

The statistics are computed in float64. ``frechet_distance`` takes the trace
of the matrix square root as TF-GAN's ``trace_sqrt_product`` does, through
two symmetric eigendecompositions, which stays finite and accurate where the
eigenvalues of the non-symmetric product ``sigma1 @ sigma2`` come out
negative or complex (near-singular covariances).

Generators are read back from a GAN run's export by ``load_generator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

# The 2015 Inception graph (inception-2015-12-05/classify_image_graph_def.pb).
INCEPTION_POOL_TENSOR = "pool_3:0"
INCEPTION_POOL_DIM = 2048
INCEPTION_NUM_LOGITS = 1008
INCEPTION_IMAGE_SIZE = 299
# The input of the 2015 graph after its JPEG decoding: float32 [1, H, W, 3] in
# [0, 255] at any size; the graph resizes it to 299x299 (bilinear) and scales
# it to [-1, 1] itself. TTUR's fid.py and OpenAI's inception_score code feed
# batches of [0, 255] images here.
INCEPTION_RAW_INPUT = "ExpandDims:0"
# The input of the network proper, after that preprocessing: float32
# [N, 299, 299, 3] in [-1, 1] (TF-GAN's frozen graph has only this one).
INCEPTION_SCALED_INPUT = "Mul:0"
# The 2015 graph reshapes pool_3 to a batch of 1 before its logits, so the
# logits are recomputed from pool_3 with the weights of this MatMul, without
# the bias, as OpenAI's inception_score code (whose numbers are the published
# Inception Scores) and TTUR's code do.
INCEPTION_LOGITS_MATMUL = "softmax/logits/MatMul"
# TF-GAN's frozen graph (inceptionv1_for_inception_score.pb) outputs logits
# for any batch size here.
INCEPTION_LOGITS_TENSOR = "logits:0"

GENERATOR_KERAS_FILE = "generator.keras"
CLASSIFIER_KERAS_FILE = "classifier.keras"
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "metadata.json"
FEATURE_LAYERS = ("penultimate", "logits")
LATENT_DISTRIBUTIONS = ("standard_normal", "uniform")

ImagesFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------
# Statistics and metrics (NumPy, float64).


def _as_features(features: Any, name: str = "features") -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [num_samples, feature_dim], got shape {features.shape}."
        )
    if not np.all(np.isfinite(features)):
        bad = int(np.sum(~np.all(np.isfinite(features), axis=1)))
        raise ValueError(f"{name}: {bad} of {len(features)} rows hold NaN or infinite values.")
    return features


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and full covariance of features, in float64.

    Args:
      features: [num_samples, feature_dim] activations.

    Returns:
      ``(mu [d], sigma [d, d])``; sigma is the unbiased sample covariance
      (divided by n - 1, as ``np.cov`` and the reference FID code).

    Raises:
      ValueError: not a finite 2-D array, or no more samples than features
        (the full covariance would be singular).
    """
    features = _as_features(features)
    n, d = features.shape
    if n <= d:
        raise ValueError(
            f"{n} samples of {d} features: the full {d}x{d} covariance needs more samples than features "
            f"(at least {d + 1}, better many more), else it is singular. Use more samples, or a smaller "
            "feature layer."
        )
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False, ddof=1)
    return mu, np.atleast_2d(sigma)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return (matrix + matrix.T) / 2.0


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative
    eigenvalues, rounding errors, are taken as 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(_symmetric(matrix))
    root = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * root) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` of two covariance matrices, computed stably.

    With A = sqrt(sigma1) (symmetric), sigma1 sigma2 = A (A sigma2) has the
    eigenvalues of A sigma2 A, which is symmetric positive semi-definite, so
    the trace is the sum of the square roots of its eigenvalues (negative
    ones, rounding errors, clipped to 0), as in TF-GAN's
    ``trace_sqrt_product``.
    """
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    root1 = _symmetric_sqrt(sigma1)
    inner = _symmetric(root1 @ sigma2 @ root1)
    eigenvalues = np.linalg.eigvalsh(inner)
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``,
    in float64, with the last trace from ``trace_sqrt_product``.

    Raises:
      ValueError: shapes that do not match, or non-finite values.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}."
        )
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"frechet_distance: {name} holds NaN or infinite values.")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two sets of features."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _as_probabilities(probabilities: Any) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty 2-D array [N, classes], got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities hold negative, NaN or infinite values.")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > 1e-3):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"probabilities: a row sums to {worst:.6g}, not 1. Pass softmax outputs, not logits "
            "(softmax_float64 converts logits)."
        )
    return p / sums[:, None]


def _log_score(p: np.ndarray) -> float:
    """E_x KL(p(y|x) || p(y)) with 0 log 0 = 0 (no epsilon needed: p(y) > 0
    wherever some p(y|x) > 0)."""
    marginal = p.mean(axis=0)
    positive = p > 0
    log_p = np.log(np.where(positive, p, 1.0))
    log_q = np.log(np.where(marginal > 0, marginal, 1.0))
    kl = np.sum(np.where(positive, p * (log_p - log_q[None, :]), 0.0), axis=1)
    return float(np.mean(kl))


def classifier_score_and_std(probabilities: np.ndarray, splits: int = 1) -> Tuple[float, float]:
    """Classifier (Inception) score, mean and standard deviation over splits.

    ``exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits`` consecutive parts
    of the samples (``np.array_split``), as the Inception Score is reported
    (10 splits); ``splits=1`` gives the score of all samples and std 0.

    Args:
      probabilities: [N, K] class probabilities (rows summing to 1).
      splits: number of parts, 1 <= splits <= N.

    Returns:
      ``(mean, std)`` of the per-split scores (float64 arithmetic).
    """
    p = _as_probabilities(probabilities)
    if not 1 <= int(splits) <= len(p):
        raise ValueError(f"splits must be in [1, {len(p)}] (the number of samples), got {splits}.")
    scores = [np.exp(_log_score(part)) for part in np.array_split(p, int(splits))]
    return float(np.mean(scores)), float(np.std(scores))


def classifier_score(probabilities: np.ndarray, splits: int = 1) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))``, the mean over ``splits`` parts (see
    ``classifier_score_and_std``)."""
    return classifier_score_and_std(probabilities, splits)[0]


def softmax_float64(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def clip_generated(generated: np.ndarray, source: str) -> Tuple[np.ndarray, list, Optional[str]]:
    """Generated images ready to measure: non-finite pixels refused, the rest clipped to [0, 1].

    Returns (images, [min, max] before clipping, a note when any pixel was
    clipped, else None). Raises ValueError on NaN or infinite pixels.
    """
    if not np.all(np.isfinite(generated)):
        raise ValueError(f"the generator {source} produced NaN or infinite pixels.")
    pixel_range = [float(generated.min()), float(generated.max())]
    outside = float(((generated < 0) | (generated > 1)).mean())
    if outside == 0:
        return generated, pixel_range, None
    note = (
        f"{outside:.3%} of the generated pixels lie outside [0, 1] (range {pixel_range}); they were clipped to "
        "[0, 1] before measuring."
    )
    return generated.clip(0.0, 1.0), pixel_range, note


def measure_images(
    net: "FeatureNetwork",
    generated: np.ndarray,
    reference: np.ndarray,
    floor: Optional[np.ndarray] = None,
    *,
    distance: bool = True,
    score: bool = True,
    batch_size: int = 100,
    score_splits: int = 10,
    reference_info: Optional[Dict[str, Any]] = None,
    floor_info: Optional[Dict[str, Any]] = None,
) -> Dict[str, Dict[str, Any]]:
    """The Frechet distance and the score of ``generated`` against ``reference`` in ``net``'s features.

    What ``python -m jarn_tf.evaluate_gan`` and ``jarn_tf.measure_generator``
    report for one feature network: ``{"distance": ..., "score": ...}`` (the
    ones asked for), each entry naming the network (path, kind, sha256,
    layer, dimension) and the counts. ``floor`` (real images not in the
    reference) is measured the same way: the value of a perfect generator at
    this count. ``reference_info`` goes into every entry after the sample
    count (default: the reference size); ``floor_info`` into the floor's.
    """
    gen_features, gen_probs = net.features_and_probabilities(generated, batch_size)
    ref_features, ref_probs = net.features_and_probabilities(reference, batch_size)
    floor_features = floor_probs = None
    if floor is not None:
        floor_features, floor_probs = net.features_and_probabilities(floor, batch_size)
    common = {
        "network": net.path,
        "network_kind": net.kind,
        "sha256": net.sha256,
        "feature_layer": net.feature_layer,
        "feature_dim": net.feature_dim,
        "num_samples": len(generated),
        **(reference_info if reference_info is not None else {"reference_size": len(reference)}),
    }
    out: Dict[str, Dict[str, Any]] = {}
    if distance:
        ref_stats = feature_statistics(ref_features)
        entry = {
            "name": net.distance_name,
            "long_name": net.distance_long_name,
            "value": frechet_distance(*feature_statistics(gen_features), *ref_stats),
            **common,
        }
        if floor_features is not None:
            entry["floor"] = {
                "value": frechet_distance(*feature_statistics(floor_features), *ref_stats),
                "num_real": len(floor_features),
                **(floor_info or {}),
                "meaning": "real images against the reference: what a perfect generator gets at this count",
            }
        out["distance"] = entry
    if score:
        mean, std = classifier_score_and_std(gen_probs, score_splits)
        ref_mean, ref_std = classifier_score_and_std(ref_probs, min(score_splits, len(ref_probs)))
        entry = {
            "name": net.score_name,
            "long_name": net.score_long_name,
            "value": mean,
            "std": std,
            "splits": score_splits,
            "num_classes": net.num_classes,
            "reference_value": ref_mean,
            "reference_std": ref_std,
            **common,
        }
        if floor_probs is not None:
            floor_mean, floor_std = classifier_score_and_std(floor_probs, min(score_splits, len(floor_probs)))
            entry["floor"] = {
                "value": floor_mean,
                "std": floor_std,
                "num_real": len(floor_probs),
                **(floor_info or {}),
                "meaning": "the score of real images, at this count",
            }
        out["score"] = entry
    return out


def sha256_of_file(path: str) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Feature networks.


@dataclasses.dataclass
class FeatureNetwork:
    """A network that turns [0, 1] images into features and class probabilities.

    Attributes:
      kind: ``"classifier"`` (an export of this project: FCD and classifier
        score) or ``"inception_2015"`` (the 2015 Inception graph: FID, IS).
      path: the file read (``classifier.keras`` or the GraphDef .pb).
      sha256: SHA-256 of that file.
      feature_layer: which activations are the features, in words.
      feature_dim: number of features.
      num_classes: number of class probabilities.
      image_shape: (H, W, C) the network takes, or None when it takes any
        height and width (the Inception graph resizes).
      dataset: the dataset it was trained on (metadata), or None.
      preprocessing: how the [0, 1] images are fed, in words.
      metadata: the export's metadata.json ({} when none).
      run_batch: one batch float32 [B, H, W, C] in [0, 1] ->
        (features [B, d], logits [B, K]) as NumPy arrays.
    """

    kind: str
    path: str
    sha256: str
    feature_layer: str
    feature_dim: int
    num_classes: int
    image_shape: Optional[Tuple[int, int, int]]
    dataset: Optional[str]
    preprocessing: str
    metadata: Dict[str, Any]
    run_batch: ImagesFn = dataclasses.field(repr=False)

    @property
    def is_inception(self) -> bool:
        return self.kind == "inception_2015"

    @property
    def distance_name(self) -> str:
        """``"FID"`` for the 2015 Inception graph, else ``"FCD"``."""
        return "FID" if self.is_inception else "FCD"

    @property
    def distance_long_name(self) -> str:
        return "Fréchet Inception distance" if self.is_inception else "Fréchet classifier distance"

    @property
    def score_name(self) -> str:
        """``"IS"`` for the 2015 Inception graph, else ``"classifier score"``."""
        return "IS" if self.is_inception else "classifier score"

    @property
    def score_long_name(self) -> str:
        return "Inception Score" if self.is_inception else "classifier score"

    @property
    def name(self) -> str:
        """The name of the distance this network gives (``"FCD"`` or ``"FID"``)."""
        return self.distance_name

    def describe(self) -> Dict[str, Any]:
        """What a report must say about the network."""
        return {
            "kind": self.kind,
            "path": self.path,
            "sha256": self.sha256,
            "feature_layer": self.feature_layer,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "dataset": self.dataset,
            "preprocessing": self.preprocessing,
            "distance_name": self.distance_name,
            "score_name": self.score_name,
        }

    def check_image_shape(self, image_shape: Sequence[int], what: str = "the images") -> None:
        """Raises ValueError when images of ``image_shape`` (H, W, C) cannot be fed."""
        shape = tuple(int(d) for d in image_shape)
        if len(shape) != 3:
            raise ValueError(f"{what}: expected an image shape (H, W, C), got {list(shape)}.")
        if self.image_shape is not None and shape != tuple(self.image_shape):
            raise ValueError(
                f"The feature network {self.path} takes images of shape {list(self.image_shape)} but "
                f"{what} are {list(shape)}; use a feature network trained on the same dataset."
            )
        if self.is_inception and shape[-1] not in (1, 3):
            raise ValueError(
                f"The Inception graph takes RGB (or grey, tiled to RGB) images; {what} have {shape[-1]} "
                "channels."
            )

    def features_and_probabilities(
        self, images: np.ndarray, batch_size: int = 100
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Features and class probabilities of images.

        Args:
          images: [N, H, W, C] in [0, 1] (float; uint8 is divided by 255).
          batch_size: images per forward pass.

        Returns:
          ``(features float64 [N, feature_dim], probabilities float64 [N, K])``.
        """
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}.")
        self.check_image_shape(images.shape[1:])
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        features, logits = [], []
        for start in range(0, len(images), batch_size):
            f, lg = self.run_batch(np.asarray(images[start : start + batch_size], dtype=np.float32))
            features.append(np.asarray(f, dtype=np.float64).reshape(len(f), -1))
            logits.append(np.asarray(lg, dtype=np.float64))
        if not features:
            return np.zeros((0, self.feature_dim)), np.zeros((0, self.num_classes))
        return np.concatenate(features), softmax_float64(np.concatenate(logits))


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}).") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds no JSON object.")
    return value


def _recovered(path: str) -> str:
    from jarn_tf.core import export

    return export.recovered_path(os.path.abspath(path))  # an export left at <export>.old by a kill


def _is_generator_export(directory: str) -> bool:
    if os.path.isfile(os.path.join(directory, GENERATOR_KERAS_FILE)):
        return True
    return _read_json(os.path.join(directory, METADATA_FILE)).get("kind") == "generator"


def _resolve_classifier_file(path: str) -> Tuple[str, Dict[str, Any]]:
    """The classifier.keras of a run dir, export dir or .keras path, and its metadata."""
    original = path
    path = _recovered(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise ValueError(f"{original}: no such .keras file.")
        if os.path.basename(path) == GENERATOR_KERAS_FILE:
            raise ValueError(f"{original} is a generator, not a classifier to compute features with.")
        return path, _read_json(os.path.join(os.path.dirname(path), METADATA_FILE))
    if not os.path.isdir(path):
        raise ValueError(f"{original}: no such file or directory.")
    for directory in (path, _recovered(os.path.join(path, "export"))):
        if not os.path.isdir(directory):
            continue
        keras_file = os.path.join(directory, CLASSIFIER_KERAS_FILE)
        if os.path.isfile(keras_file):
            return keras_file, _read_json(os.path.join(directory, METADATA_FILE))
        if _is_generator_export(directory):
            raise ValueError(
                f"{original} is a generator export ({directory}), not a classifier; pass a classifier "
                "export (run dir, export dir or .keras file) trained on the generator's dataset."
            )
        if os.path.isdir(os.path.join(directory, SAVED_MODEL_DIR)) or os.path.isfile(
            os.path.join(directory, "saved_model.pb")
        ):
            raise ValueError(
                f"{original}: {directory} holds a SavedModel but no {CLASSIFIER_KERAS_FILE}; the features "
                f"are the input of the classifier's last Dense layer, which only the .keras model gives. "
                f"Export the classifier again (it writes {CLASSIFIER_KERAS_FILE})."
            )
    raise ValueError(
        f"{original} is not a classifier export: expected a training run's model_dir (with "
        f"export/{CLASSIFIER_KERAS_FILE}), an export directory or a .keras file."
    )


def load_classifier_network(path: str, feature_layer: str = "penultimate") -> FeatureNetwork:
    """Loads a classifier export of this project as a feature network (FCD, classifier score).

    Args:
      path: a training run's model_dir (``export/classifier.keras``), an
        export directory or a ``.keras`` file.
      feature_layer: ``"penultimate"``: the input of the last Dense layer;
        ``"logits"``: the logits (few features: fewer samples needed).

    Raises:
      ValueError: nothing loadable, a generator export, or no Dense layer.
    """
    if feature_layer not in FEATURE_LAYERS:
        raise ValueError(f"feature_layer must be one of {FEATURE_LAYERS}, got {feature_layer!r}.")
    keras_file, metadata = _resolve_classifier_file(path)
    import keras
    import tensorflow as tf

    import jarn_tf.layers  # noqa: F401  registers the custom layers

    if not zipfile.is_zipfile(keras_file):
        raise ValueError(f"{keras_file} is not a .keras file (not a zip archive; truncated?).")
    try:
        model = keras.saving.load_model(keras_file, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{keras_file} cannot be loaded as a .keras model ({type(e).__name__}: {e}).") from e
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            f"{keras_file}: the classifier has no Dense layer whose input could be the features."
        )
    last_dense = dense[-1]
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    image_shape = tuple(int(d) for d in shape[1:]) if all(d is not None for d in shape[1:]) else None
    if image_shape is None and metadata.get("image_shape"):
        image_shape = tuple(int(d) for d in metadata["image_shape"])
    num_classes = int(model.output_shape[-1])
    if feature_layer == "penultimate":
        feature_model = keras.Model(model.inputs, [last_dense.input, model.output])
        feature_dim = int(np.prod([d for d in last_dense.input.shape[1:]]))
        described = f"input of the last Dense layer '{last_dense.name}' (penultimate activations)"
    else:
        feature_model = keras.Model(model.inputs, [model.output, model.output])
        feature_dim = num_classes
        described = f"logits (output of '{last_dense.name}')"

    @tf.function(reduce_retracing=True)
    def forward(images):
        features, logits = feature_model(images, training=False)
        return tf.reshape(features, [tf.shape(features)[0], -1]), logits

    def run_batch(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        features, logits = forward(tf.convert_to_tensor(images, tf.float32))
        return features.numpy(), logits.numpy()

    return FeatureNetwork(
        kind="classifier",
        path=keras_file,
        sha256=sha256_of_file(keras_file),
        feature_layer=described,
        feature_dim=feature_dim,
        num_classes=num_classes,
        image_shape=image_shape,
        dataset=metadata.get("dataset"),
        preprocessing="[0, 1] images fed as they are, Keras training=False",
        metadata=metadata,
        run_batch=run_batch,
    )


def _node_names(graph_def) -> set:
    return {node.name for node in graph_def.node}


def check_inception_graph(graph_def, path: str = "the graph") -> Dict[str, str]:
    """Checks that a GraphDef has the structure of the 2015 Inception graph.

    It must have a ``pool_3`` node, an input (``ExpandDims``, the 2015
    graph's input after JPEG decoding, or ``Mul``, TF-GAN's frozen graph's
    preprocessed input) and logits (``softmax/logits/MatMul`` or ``logits``).
    The sizes (2048 features, 1008 logits) are checked on a forward pass by
    ``load_inception_network``.

    Returns:
      ``{"input": tensor name, "logits": "matmul" or "tensor"}``.

    Raises:
      ValueError: a node is missing; the message says which.
    """
    names = _node_names(graph_def)
    fix = (
        "FID and IS are defined by the 2015 Inception graph (classify_image_graph_def.pb of "
        "inception-2015-12-05: pool_3 of 2048 features, 1008 logits); pass that file, or leave out "
        "--inception_graph and use a classifier (FCD, classifier score)."
    )
    if "pool_3" not in names:
        raise ValueError(f"{path} has no 'pool_3' node, so it is not the 2015 Inception graph. {fix}")
    if "ExpandDims" in names:
        inputs = INCEPTION_RAW_INPUT
    elif "Mul" in names:
        inputs = INCEPTION_SCALED_INPUT
    else:
        raise ValueError(
            f"{path} has neither the 'ExpandDims' nor the 'Mul' input of the Inception graph. {fix}"
        )
    if INCEPTION_LOGITS_MATMUL in names:
        logits = "matmul"
    elif INCEPTION_LOGITS_TENSOR.split(":")[0] in names:
        logits = "tensor"
    else:
        raise ValueError(
            f"{path} has neither '{INCEPTION_LOGITS_MATMUL}' nor 'logits': no 1008 Inception logits. {fix}"
        )
    return {"input": inputs, "logits": logits}


def load_inception_network(graph_path: str) -> FeatureNetwork:
    """Loads the 2015 Inception graph from a GraphDef .pb file (FID, IS).

    Images are fed as the reference implementations feed that graph: grey
    images tiled to 3 channels, pixel values scaled to [0, 255], and
    * through ``ExpandDims:0`` (TTUR's fid.py, OpenAI's inception_score code)
      at their own size: the graph resizes them to 299x299 (its bilinear
      ResizeBilinear op) and maps them to [-1, 1] ((x - 128) / 128) itself;
    * or, when the graph has no ``ExpandDims`` (TF-GAN's frozen graph),
      through ``Mul:0`` after TF-GAN's ``preprocess_image``: bilinear resize
      to 299x299, then (x - 128) / 128.
    Features are ``pool_3:0`` (2048). Logits are ``pool_3 @ W`` with W the
    weights of ``softmax/logits/MatMul``, no bias, as OpenAI's code computes
    them (the 2015 graph reshapes pool_3 to a batch of one), or TF-GAN's
    graph's ``logits:0``.

    Raises:
      ValueError: not a GraphDef, or not the 2015 graph's structure (no
        pool_3, not 2048 features, not 1008 logits).
    """
    import tensorflow as tf

    path = os.path.abspath(graph_path)
    if os.path.isdir(path):
        raise ValueError(
            f"--inception_graph={graph_path} is a directory; pass the GraphDef file "
            "(inception-2015-12-05/classify_image_graph_def.pb)."
        )
    if not os.path.isfile(path):
        raise ValueError(f"--inception_graph={graph_path}: no such file.")
    with open(path, "rb") as f:
        content = f.read()
    try:
        graph_def = tf.compat.v1.GraphDef.FromString(content)
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise ValueError(
            f"--inception_graph={graph_path} is not a GraphDef .pb file ({type(e).__name__})."
        ) from e
    structure = check_inception_graph(graph_def, path)
    input_name = structure["input"]

    def import_graph(images):
        if structure["logits"] == "matmul":
            pool3, matmul = tf.compat.v1.import_graph_def(
                graph_def,
                input_map={input_name: images},
                return_elements=[INCEPTION_POOL_TENSOR, INCEPTION_LOGITS_MATMUL],
                name="inception",
            )
            features = tf.reshape(pool3, [tf.shape(pool3)[0], -1])
            logits = tf.matmul(features, matmul.inputs[1])
        else:
            pool3, logits = tf.compat.v1.import_graph_def(
                graph_def,
                input_map={input_name: images},
                return_elements=[INCEPTION_POOL_TENSOR, INCEPTION_LOGITS_TENSOR],
                name="inception",
            )
            features = tf.reshape(pool3, [tf.shape(pool3)[0], -1])
            logits = tf.reshape(logits, [tf.shape(logits)[0], -1])
        return features, logits

    try:
        wrapped = tf.compat.v1.wrap_function(import_graph, [tf.TensorSpec([None, None, None, 3], tf.float32)])
    except (ValueError, TypeError, tf.errors.OpError) as e:
        raise ValueError(
            f"--inception_graph={graph_path} cannot be imported with its {input_name} input fed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
        ) from e

    if input_name == INCEPTION_RAW_INPUT:
        preprocessing = (
            "grey tiled to RGB, x255 to [0, 255], fed to ExpandDims:0 at native size; the graph resizes to "
            "299x299 (bilinear) and scales to [-1, 1] (as TTUR's fid.py and OpenAI's inception_score)"
        )

        def prepare(images: np.ndarray) -> np.ndarray:
            return images * 255.0

    else:
        preprocessing = (
            "grey tiled to RGB, x255, bilinear resize to 299x299, (x - 128) / 128, fed to Mul:0 "
            "(as TF-GAN's preprocess_image)"
        )

        def prepare(images: np.ndarray) -> np.ndarray:
            resized = tf.image.resize(
                tf.convert_to_tensor(images * 255.0),
                [INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE],
                method=tf.image.ResizeMethod.BILINEAR,
            )
            return ((resized - 128.0) / 128.0).numpy()

    def run_batch(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, dtype=np.float32)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        features, logits = wrapped(tf.convert_to_tensor(prepare(images), tf.float32))
        return features.numpy(), logits.numpy()

    # The sizes, on one grey image.
    try:
        features, logits = run_batch(
            np.full((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 1), 0.5, np.float32)
        )
    except (ValueError, TypeError, tf.errors.OpError) as e:
        raise ValueError(
            f"--inception_graph={graph_path}: a forward pass through {input_name} to pool_3 fails "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
        ) from e
    if features.shape[-1] != INCEPTION_POOL_DIM or logits.shape[-1] != INCEPTION_NUM_LOGITS:
        raise ValueError(
            f"--inception_graph={graph_path} gives {features.shape[-1]} pool_3 features and "
            f"{logits.shape[-1]} logits, not the 2015 Inception graph's {INCEPTION_POOL_DIM} and "
            f"{INCEPTION_NUM_LOGITS}: it is another network, whose numbers are not FID or IS."
        )
    return FeatureNetwork(
        kind="inception_2015",
        path=path,
        sha256=hashlib.sha256(content).hexdigest(),
        feature_layer=f"{INCEPTION_POOL_TENSOR} ({INCEPTION_POOL_DIM} features)",
        feature_dim=INCEPTION_POOL_DIM,
        num_classes=INCEPTION_NUM_LOGITS,
        image_shape=None,
        dataset=None,
        preprocessing=preprocessing,
        metadata={"input": input_name, "logits": structure["logits"]},
        run_batch=run_batch,
    )


def load_feature_network(
    path: Optional[str], inception_graph: Optional[str] = None, feature_layer: str = "penultimate"
) -> FeatureNetwork:
    """Loads the network the metrics are computed with.

    Args:
      path: a classifier export of this project (run dir, export dir or
        .keras file): FCD and classifier score. None with ``inception_graph``.
      inception_graph: a GraphDef .pb with the 2015 Inception graph's
        structure: FID and IS (``path`` must then be None).
      feature_layer: for a classifier, ``"penultimate"`` or ``"logits"``.

    Raises:
      ValueError: both or neither given, or what the loaders raise.
    """
    if inception_graph is not None and path is not None:
        raise ValueError(
            "load_feature_network: pass a classifier (path) or inception_graph, not both: each defines "
            "different metrics (FCD/classifier score, FID/IS)."
        )
    if inception_graph is not None:
        return load_inception_network(inception_graph)
    if path is None:
        raise ValueError("load_feature_network: pass a classifier export (path) or inception_graph.")
    return load_classifier_network(path, feature_layer)


# ---------------------------------------------------------------------------
# Real images.


def load_real_images(
    dataset: str,
    split: str,
    data_dir: Optional[str] = None,
    num: Optional[int] = None,
    order: str = "auto",
    shuffle_seed: Optional[int] = None,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Real images of a split as float32 [N, H, W, C] in [0, 1], and where they came from.

    Args:
      dataset, split, data_dir: what to read (``jarn_tf.core.data.load_arrays``,
        no download).
      num: take this many (default all); the first ones in ``order``, or a
        random subset drawn with ``shuffle_seed`` when it is given.
      order: the example order (``jarn_tf.core.data.EXAMPLE_ORDERS``).

    Returns:
      ``(images, info)``: info names the split, its size, the count taken,
      the source and the order.
    """
    from jarn_tf import config as config_lib
    from jarn_tf.core import data

    data_config = config_lib.DataConfig(dataset=dataset, data_dir=data_dir, download=False)
    source = data.describe_source(data_config)
    resolved = data.resolve_example_order(data_config, split, order)
    images, _ = data.load_arrays(data_config, split, resolved.name)
    size = len(images)
    count = size if num is None else min(int(num), size)
    if shuffle_seed is not None and count < size:
        index = np.sort(np.random.default_rng(shuffle_seed).permutation(size)[:count])
        selection = f"{count} drawn at random (seed {shuffle_seed})"
    else:
        index = np.arange(count)
        selection = f"the first {count}" if count < size else "all"
    info = {
        "dataset": dataset,
        "split": split,
        "split_size": size,
        "num_images": count,
        "selection": selection,
        "source": source,
        "order": resolved.name,
    }
    return images[index].astype(np.float32) / 255.0, info


def reference_statistics(
    network: FeatureNetwork,
    dataset: str,
    split: str = "test",
    data_dir: Optional[str] = None,
    num: Optional[int] = None,
    batch_size: int = 100,
) -> Dict[str, Any]:
    """Feature statistics of a dataset split's real images.

    Returns:
      ``{"mu", "sigma", "features", "probabilities", "info"}``.
    """
    images, info = load_real_images(dataset, split, data_dir, num)
    network.check_image_shape(images.shape[1:], f"{dataset} images")
    features, probabilities = network.features_and_probabilities(images, batch_size)
    mu, sigma = feature_statistics(features)
    return {"mu": mu, "sigma": sigma, "features": features, "probabilities": probabilities, "info": info}


# ---------------------------------------------------------------------------
# Generators.


@dataclasses.dataclass
class LoadedGenerator:
    """A generator export read back.

    Unpacks as ``sample, metadata = load_generator(path)``.

    Attributes:
      sample: latent float32 [N, latent_dim] -> images float32 [N, H, W, C]
        in [0, 1] (mapped from the export's ``output_range``).
      metadata: the export's metadata.json ({} when none).
      path: the file or directory loaded.
      format: ``keras`` or ``saved_model``.
      latent_dim: size of the latent vector.
      image_shape: (H, W, C) of the images.
      model_dir: the run's directory when ``path`` came from one.
      sha256: SHA-256 of the .keras file, or of saved_model.pb.
      fallback_reason: why the SavedModel was read instead of the .keras
        file, if it was.
    """

    sample: Callable[[np.ndarray], np.ndarray]
    metadata: Dict[str, Any]
    path: str
    format: str
    latent_dim: int
    image_shape: Tuple[int, int, int]
    model_dir: Optional[str] = None
    sha256: Optional[str] = None
    fallback_reason: Optional[str] = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.sample, self.metadata))

    @property
    def dataset(self) -> Optional[str]:
        return self.metadata.get("dataset")

    @property
    def step(self) -> Optional[int]:
        return self.metadata.get("step")

    @property
    def latent_distribution(self) -> str:
        return self.metadata.get("latent_distribution", "standard_normal")

    def latents(self, num: int, seed: int) -> np.ndarray:
        """``num`` latent vectors drawn from the export's latent distribution."""
        rng = np.random.default_rng(seed)
        if self.latent_distribution == "standard_normal":
            z = rng.standard_normal((num, self.latent_dim))
        else:
            low, high = self.metadata.get("latent_range", (-1.0, 1.0))
            z = rng.uniform(low, high, (num, self.latent_dim))
        return z.astype(np.float32)

    def generate(self, num: int, seed: int = 0, batch_size: int = 100) -> np.ndarray:
        """``num`` images float32 [num, H, W, C] in [0, 1] from latents drawn with ``seed``."""
        z = self.latents(num, seed)
        out = [self.sample(z[i : i + batch_size]) for i in range(0, num, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)


def _classifier_error(path: str) -> ValueError:
    return ValueError(
        f"{path} is a classifier export; evaluate it with jarn_tf.evaluate (jarn_tf.evaluate_gan takes "
        "a generator: a GAN run's model_dir, its export directory, generator.keras or saved_model)."
    )


def _is_classifier_export(directory: str, metadata: Dict[str, Any]) -> bool:
    if metadata.get("kind") == "generator":
        return False
    return (
        os.path.isfile(os.path.join(directory, CLASSIFIER_KERAS_FILE))
        or metadata.get("kind") == "classifier"
        or "logits" in (metadata.get("outputs") or [])
    )


def _keras_generator(path: str):
    import keras
    import tensorflow as tf

    import jarn_tf.layers  # noqa: F401  registers the custom layers

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras file (not a zip archive; truncated?).")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # unknown custom layers, damaged archive...
        raise ValueError(f"{path} cannot be loaded as a .keras model ({type(e).__name__}: {e}).") from e
    in_shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    out_shape = model.output_shape

    @tf.function(reduce_retracing=True)
    def forward(z):
        return tf.cast(model(z, training=False), tf.float32)

    def sample(z: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(z, tf.float32)).numpy()

    return sample, in_shape[1:], out_shape[1:]


def _saved_model_generator(path: str):
    import tensorflow as tf

    from jarn_tf.core.export import serving_signature

    loaded, signature, input_name, spec = serving_signature(path, "images", "latent")
    outputs = signature.structured_outputs

    def sample(z: np.ndarray) -> np.ndarray:
        return tf.cast(
            signature(**{input_name: tf.convert_to_tensor(z, tf.float32)})["images"], tf.float32
        ).numpy()

    sample.loaded = loaded  # keeps the restored variables alive
    return sample, tuple(spec.shape.as_list()[1:]), tuple(outputs["images"].shape.as_list()[1:])


def load_generator(path: str) -> LoadedGenerator:
    """Loads a generator exported by a GAN run.

    Args:
      path: the run's model_dir (``export/generator.keras``), an export
        directory, the ``generator.keras`` file or the ``saved_model``
        directory (signature ``serving_default``: ``latent`` -> ``{"images"}``).
        The .keras file is preferred; the SavedModel is read when there is
        no .keras file or it cannot be loaded (``fallback_reason`` says why).

    Returns:
      The generator, with its metadata; unpacks as ``(sample, metadata)``.

    Raises:
      ValueError: nothing loadable, a classifier export, or sizes the
        metadata contradicts.
    """
    original = path
    path = _recovered(path)
    model_dir = None
    candidates = []  # (format, path), in order of preference
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise ValueError(f"--model={original}: no such .keras file.")
        directory = os.path.dirname(path)
        metadata = _read_json(os.path.join(directory, METADATA_FILE))
        if os.path.basename(path) == CLASSIFIER_KERAS_FILE:
            raise _classifier_error(original)
        candidates.append(("keras", path))
    elif os.path.isfile(os.path.join(path, "saved_model.pb")):
        directory = os.path.dirname(path)
        metadata = _read_json(os.path.join(directory, METADATA_FILE))
        if _is_classifier_export(directory, metadata):
            raise _classifier_error(original)
        candidates.append(("saved_model", path))
    elif os.path.isdir(path):
        directory = path
        if not any(
            os.path.exists(os.path.join(path, name))
            for name in (GENERATOR_KERAS_FILE, CLASSIFIER_KERAS_FILE, SAVED_MODEL_DIR, METADATA_FILE)
        ):
            export_dir = _recovered(os.path.join(path, "export"))
            if not os.path.isdir(export_dir):
                raise ValueError(
                    f"--model={original} is not a generator: expected a GAN run's model_dir (with export/), "
                    f"its export directory, {GENERATOR_KERAS_FILE} or the saved_model directory."
                )
            model_dir, directory = path, export_dir
        metadata = _read_json(os.path.join(directory, METADATA_FILE))
        if _is_classifier_export(directory, metadata):
            raise _classifier_error(original)
        if os.path.isfile(os.path.join(directory, GENERATOR_KERAS_FILE)):
            candidates.append(("keras", os.path.join(directory, GENERATOR_KERAS_FILE)))
        saved_model = _recovered(os.path.join(directory, SAVED_MODEL_DIR))
        if os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
            candidates.append(("saved_model", saved_model))
        if not candidates:
            raise ValueError(
                f"--model={original}: {directory} holds neither {GENERATOR_KERAS_FILE} nor a SavedModel."
            )
    else:
        raise ValueError(f"--model={original}: no such file or directory.")
    if metadata.get("kind") not in (None, "generator"):
        raise ValueError(
            f"--model={original}: its metadata says kind={metadata.get('kind')!r}, not a generator."
        )

    fallback_reason = None
    for i, (fmt, target) in enumerate(candidates):
        try:
            if fmt == "keras":
                sample, latent_shape, image_shape = _keras_generator(target)
            else:
                sample, latent_shape, image_shape = _saved_model_generator(target)
            break
        except ValueError as e:
            if i + 1 == len(candidates):
                raise
            fallback_reason = str(e)
    latent_shape = tuple(latent_shape)
    if len(latent_shape) != 1:
        raise ValueError(
            f"{target}: the generator takes inputs of shape {list(latent_shape)}, not [latent_dim]."
        )
    latent_dim = metadata.get("latent_dim", latent_shape[0])
    if latent_dim is None:
        raise ValueError(
            f"{target}: the latent size is unknown (no metadata latent_dim, no static input shape)."
        )
    latent_dim = int(latent_dim)
    if latent_shape[0] is not None and int(latent_shape[0]) != latent_dim:
        raise ValueError(
            f"{target} takes latents of size {latent_shape[0]} but its metadata says {latent_dim}."
        )
    if metadata.get("image_shape"):
        shape = tuple(int(d) for d in metadata["image_shape"])
        if all(d is not None for d in image_shape) and tuple(int(d) for d in image_shape) != shape:
            raise ValueError(
                f"{target} makes images of shape {list(image_shape)} but its metadata says {list(shape)}."
            )
        image_shape = shape
    if len(image_shape) != 3 or any(d is None for d in image_shape):
        raise ValueError(
            f"{target}: the image shape is unknown ({list(image_shape)}); add image_shape to metadata.json."
        )
    image_shape = tuple(int(d) for d in image_shape)
    distribution = metadata.get("latent_distribution", "standard_normal")
    if distribution not in LATENT_DISTRIBUTIONS:
        raise ValueError(
            f"{target}: unknown latent_distribution {distribution!r} in its metadata; known: "
            f"{', '.join(LATENT_DISTRIBUTIONS)}."
        )
    low, high = (float(v) for v in metadata.get("output_range", (0.0, 1.0)))
    if not high > low:
        raise ValueError(f"{target}: output_range {[low, high]} is empty.")
    raw_sample = sample

    def sample_unit(z: np.ndarray) -> np.ndarray:
        images = np.asarray(raw_sample(z), dtype=np.float32)
        if (low, high) != (0.0, 1.0):
            images = (images - low) / (high - low)
        return images

    digest_file = target if fmt == "keras" else os.path.join(target, "saved_model.pb")
    return LoadedGenerator(
        sample=sample_unit,
        metadata=metadata,
        path=target,
        format=fmt,
        latent_dim=latent_dim,
        image_shape=image_shape,
        model_dir=model_dir,
        sha256=sha256_of_file(digest_file),
        fallback_reason=fallback_reason,
    )


class TrainingFCD:
    """FCD and classifier score of a generator during training (``--fcd_network``).

    The feature network and the reference statistics of the first
    ``num_samples`` real images are computed once, at the first call; every
    call then measures ``num_samples`` generated images. The numbers are FCD
    (a classifier of this project), not FID. The classifier score is the mean
    over ``score_splits`` parts (``jarn_tf.evaluate_gan``'s default, so the
    two report the same quantity).
    """

    def __init__(
        self,
        network_path: str,
        num_samples: int,
        batch_size: int = 500,
        score_splits: Optional[int] = None,
    ):
        from jarn_tf import config as config_lib

        self.network_path = network_path
        self.num_samples = num_samples
        self.batch_size = batch_size
        splits = config_lib.CLASSIFIER_SCORE_SPLITS if score_splits is None else score_splits
        self.score_splits = max(1, min(int(splits), int(num_samples)))
        self._network: Optional[FeatureNetwork] = None
        self._reference: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def check(self) -> None:
        """Loads the feature network (once) and refuses a sample count its covariance cannot use.

        The trainers call it when they are built, so that a bad ``--fcd_samples``
        or ``--fcd_network`` stops the run before any training, not at the first
        evaluation.

        Raises:
          ValueError: the network cannot be loaded, or ``num_samples`` is not
            more than its feature count (the covariance would be singular).
        """
        if self._network is None:
            self._network = load_feature_network(self.network_path)
        d = self._network.feature_dim
        if self.num_samples <= d:
            raise ValueError(
                f"--fcd_samples={self.num_samples} but --fcd_network={self.network_path} has {d} features: "
                f"the covariance needs more samples than features; give --fcd_samples > {d} (e.g. "
                f"{max(5000, 2 * d)})"
            )

    def measure(self, real_uint8: np.ndarray, generate: Any) -> Dict[str, float]:
        """``eval/fcd`` and ``eval/classifier_score`` of ``generate(n)`` ([0, 1] images).

        Args:
          real_uint8: the reference split's images (uint8 [N, H, W, C]); its
            first ``num_samples`` are the reference.
          generate: n -> n generated images, float [n, H, W, C] in [0, 1].
        """
        self.check()
        if self._reference is None:
            real = real_uint8[: self.num_samples].astype(np.float32) / 255.0
            feats, _ = self._network.features_and_probabilities(real, self.batch_size)
            self._reference = feature_statistics(feats)
        feats, probs = self._network.features_and_probabilities(generate(self.num_samples), self.batch_size)
        mu, sigma = feature_statistics(feats)
        return {
            "eval/fcd": frechet_distance(mu, sigma, *self._reference),
            "eval/classifier_score": float(classifier_score(probs, self.score_splits)),
        }
