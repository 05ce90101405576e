"""The public Python API: evaluate your own Keras model, measure a generator, in a few lines.

    import jarn_tf
    model = jarn_tf.load_classifier("my_model.keras")  # or a keras.Model object
    images, labels = jarn_tf.load_dataset("fashion_mnist", num_examples=1000)
    report = jarn_tf.evaluate_robustness(model, images, labels, eps=0.1, attacks=("pgd20", "autoattack"))
    print(report)  # accuracy per attack, worst case, and the gradient-masking checks

A thin layer over the code the commands run: ``evaluate_robustness`` wires
``jarn_tf.core.export``, ``jarn_tf.robustness.evaluation``, ``jarn_tf.robustness.checks`` and
``jarn_tf.robustness.reports`` as ``python -m jarn_tf.evaluate`` does, so the same model,
images and settings give the same numbers and the same checks; and
``measure_generator`` computes what ``python -m jarn_tf.evaluate_gan`` computes
(``jarn_tf.gan.metrics``).

The model contract (classifiers):

* input: float32 images ``[N, H, W, C]`` (NHWC, channels last) with pixel
  values in ``[0, 1]``; ``eps`` is measured in those units (8/255, not 8).
  Put any normalisation (mean/std, [-1, 1]) inside the model.
* output: logits ``[N, num_classes]``, not probabilities. A model ending in
  a softmax is detected on the first batch (check ``outputs_are_logits``,
  AutoAttack's own check): the evaluation still runs, the check FAILs in the
  report and a warning is issued, because cross-entropy attacks on softmax
  outputs are weak and the accuracies are then too high. Drop the final
  softmax (or wrap the model as ``log(probabilities)``).
* deterministic in inference mode (check ``deterministic_outputs``);
  Keras models are called with ``training=False`` (``load_classifier(...,
  batchnorm="train")`` for batch statistics, as ``--batchnorm=train``).

Bad inputs (arrays of the wrong rank, channels-first arrays, [0, 255] pixel
values, labels that do not match the images, eps outside [0, 1], unknown
attacks) raise ``ValueError`` with one sentence saying what to change, before
the model is called or any attack runs.

Importing this module does not import TensorFlow; the functions do. Before
TensorFlow's first import they ask for oneDNN's CPU kernels
(``TF_ENABLE_ONEDNN_OPTS=1`` unless set), as the commands do
(``jarn_tf.core.startup.prefer_onednn``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import jarn_tf

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from jarn_tf.robustness.evaluation import EvalOutput
    from jarn_tf.core.export import LoadedModel
    from jarn_tf.gan.metrics import LoadedGenerator
    from jarn_tf.robustness.checks import Check

# The public names, listed once in jarn_tf/__init__.py (which re-exports them lazily).
__all__ = list(jarn_tf.API_NAMES)

# Keyword arguments of ``jarn_tf.robustness.autoattack.run_autoattack`` that set AutoAttack's budget.
AUTOATTACK_BUDGET_KEYS = ("num_steps", "fab_steps", "num_queries", "num_target_classes", "p_init")
# A small budget for a quick look (a smoke test, an example): a lower bound on robustness far
# weaker than the standard version (100 APGD steps, 9 targets, 100 FAB steps, 5000 Square queries).
AUTOATTACK_QUICK_BUDGET = {"num_steps": 10, "fab_steps": 10, "num_queries": 100, "num_target_classes": 3}


def _prepare_tensorflow() -> None:
    """Asks for oneDNN before TensorFlow's first import, as the commands do (same kernels, same numbers)."""
    if "tensorflow" not in sys.modules:
        from jarn_tf.core import startup

        startup.prefer_onednn()


# ---------------------------------------------------------------------------
# Input checks (NumPy only: they run before TensorFlow is imported).


def _check_images(images: Any, what: str = "images") -> np.ndarray:
    """``images`` as float32 [N, H, W, C] in [0, 1], or ValueError saying what to change."""
    if images is None:
        raise ValueError(f"{what} is None; pass float32 images [N, H, W, C] with values in [0, 1].")
    try:
        array = np.asarray(images)
    except Exception as e:  # ragged lists, objects
        raise ValueError(f"{what} cannot be read as an array ({type(e).__name__}: {e}).") from e
    if array.ndim != 4:
        hint = ""
        if array.ndim == 3:
            hint = (
                " For one image add a batch axis (images[None]); for grey images [N, H, W] add a channel "
                "axis (images[..., None])."
            )
        elif array.ndim == 2:
            hint = " Flattened images? Reshape them to [N, H, W, C] (e.g. images.reshape(-1, 28, 28, 1))."
        raise ValueError(
            f"{what} must be a 4-D array [N, H, W, C] (NHWC), got shape {list(array.shape)}.{hint}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {list(array.shape)}); pass at least one image.")
    if array.shape[1] in (1, 3, 4) and array.shape[3] not in (1, 3, 4) and array.shape[2] > 4:
        raise ValueError(
            f"{what} of shape {list(array.shape)} look channels-first (NCHW, PyTorch's layout); this "
            "package takes channels-last NHWC arrays: pass images.transpose(0, 2, 3, 1)."
        )
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{what} must be float32 in [0, 1], got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{what} have integer dtype {array.dtype} (values {array.min()}..{array.max()}): pass float32 "
            "values in [0, 1], e.g. images.astype('float32') / 255."
        )
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} hold NaN or infinite values.")
    low, high = float(array.min()), float(array.max())
    if high > 1.0 + 1e-6:
        raise ValueError(
            f"{what} have values up to {high:g}: they look like [0, 255] pixels, and the model contract is "
            "[0, 1] (eps is measured in those units). Pass images / 255."
            if high > 1.5
            else f"{what} have values up to {high:g}, above 1: clip them to [0, 1]."
        )
    if low < -1e-6:
        raise ValueError(
            f"{what} have values down to {low:g}: they look normalised (mean/std or [-1, 1]), and the "
            "model contract is raw pixels in [0, 1] (eps is measured in those units). Pass the [0, 1] "
            "images and put the normalisation inside the model."
        )
    return array


def _check_labels(labels: Any, num_images: int) -> np.ndarray:
    """``labels`` as int64 [N], or ValueError."""
    if labels is None:
        raise ValueError("labels is None; pass integer class labels [N].")
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] > 1:
        raise ValueError(
            f"labels of shape {list(array.shape)} look one-hot (or like scores): pass the class indices, "
            "labels.argmax(axis=-1)."
        )
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices [N], got shape {list(array.shape)}.")
    if array.shape[0] != num_images:
        raise ValueError(
            f"{array.shape[0]} labels for {num_images} images: labels must have one class index per image."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {array.dtype}.")
    if array.size and int(array.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(array.min())}.")
    return array.astype(np.int64)


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a number in [0, 1] (pixel units, e.g. 8/255), got {eps!r}.")
    eps = float(eps)
    if not math.isfinite(eps) or not 0.0 <= eps <= 1.0:
        hint = f" Did you mean {eps:g}/255 = {eps / 255:.6g}?" if 1.0 < eps <= 255.0 else ""
        raise ValueError(
            f"eps must be in [0, 1] (the L-inf radius in [0, 1] pixel units, e.g. 8/255), got {eps:g}.{hint}"
        )
    return eps


def _check_count(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)


# ---------------------------------------------------------------------------
# Classifiers.


def _keras_model_fn(model: "keras.Model", training: bool) -> Callable:
    """``model`` as the ``images -> float32 logits`` function ``export.load_model`` gives for a .keras file."""
    import keras
    import tensorflow as tf

    if not training:

        def model_fn(images):
            return tf.cast(model(images, training=False), tf.float32)

    else:

        def model_fn(images):
            # Batch statistics without updating the moving averages (export._load_keras does the same).
            with keras.StatelessScope():
                return tf.cast(model(images, training=True), tf.float32)

    model_fn.keras_model = model
    return model_fn


def load_classifier(path_or_model: Any, batchnorm: str = "inference") -> "LoadedModel":
    """Loads a classifier to evaluate, as ``python -m jarn_tf.evaluate --model=...`` does.

    Model contract: float32 images [N, H, W, C] (NHWC) in [0, 1] -> logits
    [N, num_classes] (not probabilities; a softmax output is detected by
    ``evaluate_robustness``'s check ``outputs_are_logits``).

    Args:
      path_or_model: one of
        * a ``keras.Model`` object (Keras 3, TensorFlow backend);
        * a ``.keras`` file, a SavedModel directory (``serving_default``
          signature returning ``logits``), an export directory of this
          package, or a training run's model_dir (``jarn_tf.core.export.load_model``);
        * a ``LoadedModel`` (returned as it is), or any differentiable
          TensorFlow function ``images -> logits``.
      batchnorm: ``"inference"`` (Keras ``training=False``) or ``"train"``
        (``training=True``: batch norm with the statistics of each batch, the
        JARN authors' protocol; nothing is updated). ``--batchnorm`` of the
        command.

    Returns:
      A ``jarn_tf.core.export.LoadedModel``: ``.model_fn`` (images -> float32
      logits), ``.path``, ``.format``, ``.image_shape`` (H, W, C) or None,
      ``.metadata``.

    Raises:
      ValueError: nothing loadable there, a generator export, or a bad
        ``batchnorm``.
    """
    if batchnorm not in ("inference", "train"):
        raise ValueError(f"batchnorm must be 'inference' or 'train', got {batchnorm!r}.")
    training = batchnorm == "train"
    _prepare_tensorflow()
    from jarn_tf.core import export

    if isinstance(path_or_model, export.LoadedModel):
        if path_or_model.training != training:
            raise ValueError(
                f"{path_or_model.path} was loaded with batchnorm="
                f"{'train' if path_or_model.training else 'inference'}; load it again with "
                f"batchnorm={batchnorm!r}."
            )
        return path_or_model
    if isinstance(path_or_model, (str, os.PathLike)):
        return export.load_model(os.fspath(path_or_model), training=training)

    import keras

    if isinstance(path_or_model, keras.Model):
        model = path_or_model
        try:
            shape = model.input_shape
        except (AttributeError, ValueError):  # a Sequential model that was never built
            shape = None
        if isinstance(shape, list):
            if len(shape) != 1:
                raise ValueError(
                    f"The Keras model {model.name} takes {len(shape)} inputs; it must take images."
                )
            shape = shape[0]
        image_shape = None
        if shape is not None and len(shape) == 4 and all(d is not None for d in shape[1:]):
            image_shape = tuple(int(d) for d in shape[1:])
        elif shape is not None and len(shape) != 4:
            raise ValueError(
                f"The Keras model {model.name} takes inputs of shape {list(shape)}; it must take images "
                "[N, H, W, C] (put any flattening inside the model)."
            )
        return export.LoadedModel(
            model_fn=_keras_model_fn(model, training),
            path=f"<keras.Model {model.name}>",
            format="keras_model",
            image_shape=image_shape,
            input_range=(0.0, 1.0),
            metadata={},
            training=training,
        )
    if callable(path_or_model):
        if training:
            raise ValueError("batchnorm='train' needs a Keras model; a plain function has no training mode.")
        name = getattr(path_or_model, "__name__", type(path_or_model).__name__)
        return export.LoadedModel(
            model_fn=path_or_model,
            path=f"<function {name}>",
            format="function",
            image_shape=None,
            input_range=(0.0, 1.0),
            metadata={},
        )
    raise ValueError(
        f"Cannot load a classifier from {type(path_or_model).__name__}: pass a keras.Model, a path (.keras "
        "file, SavedModel, export directory or run model_dir), or a function images -> logits."
    )


def load_dataset(
    name: str,
    split: str = "test",
    num_examples: Optional[int] = None,
    data_dir: Optional[str] = None,
    download: bool = True,
    example_order: str = "auto",
) -> Tuple[np.ndarray, np.ndarray]:
    """The images ``python -m jarn_tf.evaluate --dataset=NAME`` evaluates, as arrays.

    Reads the data as the command does (``jarn_tf.core.data``: TFDS's copy, else
    MNIST-format IDX files in ``data_dir`` or Debian's dataset packages, else a
    TFDS download when ``download``), in the same example order, so "the
    first N" are the same images.

    Args:
      name: ``mnist``, ``fashion_mnist``, ``cifar10``...
      split: ``test`` or ``train``.
      num_examples: the first N (default all).
      data_dir, download, example_order: as the command's flags.

    Returns:
      ``(images float32 [N, H, W, C] in [0, 1], labels int64 [N])``.
    """
    num_examples = _check_count(num_examples, "num_examples")
    _prepare_tensorflow()
    from jarn_tf import config
    from jarn_tf.core import data

    data_config = config.DataConfig(
        dataset=data.dataset_info(name).name, data_dir=data_dir, download=download
    )
    data.describe_source(data_config)
    order = data.resolve_example_order(data_config, split, example_order)
    images, labels = data.load_arrays(data_config, split, order.name)
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    # As data.make_eval_dataset: float32(x) / 255.
    return images.astype(np.float32) / np.float32(255.0), labels.astype(np.int64)


@dataclasses.dataclass
class RobustnessReport:
    """What ``evaluate_robustness`` found; ``print(report)`` shows the table and the checks.

    Attributes:
      accuracy: attack name -> accuracy in [0, 1]: ``clean``, each attack,
        and ``worst_case`` (correct under every attack run, per example).
      checks: the model checks (``outputs_are_logits``,
        ``deterministic_outputs``) and gradient-masking checks, each a
        ``jarn_tf.robustness.checks.Check`` (``name``, ``passed``: True / False / None
        when it could not run, ``message``: why it failed or what it needs,
        ``detail``: the numbers behind the verdict).
      results: the content of ``results.json`` the command writes
        (hyperparameters of every attack, versions...).
      output: per-example outcomes (``jarn_tf.robustness.evaluation.EvalOutput``).
      paths: the results files written (``output_dir``), else {}.
    """

    accuracy: Dict[str, float]
    checks: List["Check"]
    results: Dict[str, Any]
    output: "EvalOutput" = dataclasses.field(repr=False)
    paths: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def clean_accuracy(self) -> Optional[float]:
        return self.accuracy.get("clean")

    @property
    def robust_accuracy(self) -> float:
        """The per-example worst case over all attacks run (the number to report)."""
        return self.accuracy["worst_case"]

    @property
    def checks_passed(self) -> bool:
        """No check failed (checks that could not run do not count)."""
        return all(c.passed is not False for c in self.checks)

    @property
    def failed_checks(self) -> List["Check"]:
        return [c for c in self.checks if c.passed is False]

    def check(self, name: str) -> "Check":
        """The check called ``name`` (KeyError when there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"No check {name!r}; checks: {', '.join(c.name for c in self.checks)}.")

    def to_dict(self) -> Dict[str, Any]:
        """The content of results.json."""
        return self.results

    def __str__(self) -> str:
        from jarn_tf.robustness import reports as results_lib

        text = results_lib.format_table(self.results)
        for name, attack in self.results["attacks"].items():
            if isinstance(attack.get("budget"), dict):
                text += (
                    f"\n({name} with a reduced budget {attack['budget']}: weaker than the standard version.)"
                )
        text += "\n\nModel and gradient-masking checks:\n" + (
            results_lib.format_checks(self.results["checks"])
            if self.checks
            else "- not run (masking_checks=False)"
        )
        return text


def _autoattack_with_budget(model_fn, dataset, specs, params, budget, verbose) -> "EvalOutput":
    """AutoAttack specs batch by batch, as ``eval_lib.evaluate`` runs them, with ``budget`` passed on.

    ``eval_lib.evaluate`` runs ``autoattack.run_autoattack`` with its standard budget only; this
    runs it on the same batches, with the same seed, with the budget given.
    """
    from jarn_tf.robustness import autoattack, evaluation as eval_lib

    correct = {s.name: [] for s in specs}
    extra: Dict[str, Dict[str, list]] = {s.name: {} for s in specs}
    max_pert = {s.name: 0.0 for s in specs}
    lo = {s.name: np.inf for s in specs}
    hi = {s.name: -np.inf for s in specs}
    seconds = {s.name: 0.0 for s in specs}
    labels_all = []
    for images, labels in dataset:
        x, y = np.asarray(images, np.float32), np.asarray(labels, np.int64)
        labels_all.append(y)
        for spec in specs:
            start = time.perf_counter()
            log = (lambda m, n=spec.name: print(f"{n} {m}", flush=True)) if verbose else None
            result = autoattack.run_autoattack(
                model_fn, x, y, params.eps, attacks=tuple(spec.parts), seed=params.seed, log=log, **budget
            )
            seconds[spec.name] += time.perf_counter() - start
            correct[spec.name].append(np.asarray(result["robust"], bool))
            for part, values in (result.get("per_attack") or {}).items():
                extra[spec.name].setdefault(part, []).append(np.asarray(values, bool))
            adv = np.asarray(result["adversarial"], np.float32)
            if adv.size:
                max_pert[spec.name] = max(max_pert[spec.name], float(np.max(np.abs(adv - x))))
                lo[spec.name] = min(lo[spec.name], float(adv.min()))
                hi[spec.name] = max(hi[spec.name], float(adv.max()))
    return eval_lib.EvalOutput(
        correct={k: np.concatenate(v) for k, v in correct.items()},
        labels=np.concatenate(labels_all),
        max_perturbation=max_pert,
        pixel_range={k: (lo[k], hi[k]) for k in lo},
        seconds=seconds,
        extra={k: {p: np.concatenate(v) for p, v in parts.items()} for k, parts in extra.items() if parts},
    )


def evaluate_robustness(
    model: Any,
    images: Any,
    labels: Any,
    eps: float,
    attacks: Sequence[str] = ("pgd20", "autoattack"),
    num_examples: Optional[int] = None,
    seed: int = 0,
    masking_checks: bool = True,
    batch_size: int = 100,
    pgd_step_size: Optional[float] = None,
    pgd_restarts: int = 1,
    pgd_loss: str = "xent",
    pgd_random_start: bool = True,
    autoattack_budget: Optional[Mapping[str, Any]] = None,
    masking_tolerance: float = 0.02,
    eps_checks: bool = True,
    pgd_fgsm_tolerance: float = 0.0,
    square_check_queries: int = 200,
    square_tolerance: float = 0.01,
    jit_compile: bool = False,
    output_dir: Optional[str] = None,
    verbose: int = 1,
) -> RobustnessReport:
    """Attacks a classifier under an L-inf budget and checks the result for gradient masking.

    The protocol of ``python -m jarn_tf.evaluate``: the same attacks
    (``eval_lib.evaluate``), AutoAttack's model checks on the first batch,
    the Square check, the eps checks and the masking checks
    (``jarn_tf.robustness.checks``) and the same results (``jarn_tf.robustness.reports``), so the
    same model, images and settings give the same numbers as the command
    (``--attacks=clean,...`` with the flags of the same names). Clean
    accuracy is always measured (``clean`` is added first when missing).

    Model contract: float32 images [N, H, W, C] (NHWC) in [0, 1] -> logits
    [N, num_classes], not probabilities. A softmax output makes the check
    ``outputs_are_logits`` FAIL (with a warning); the attacks still run, and
    their accuracies are then too high.

    Args:
      model: a ``keras.Model``, a path, a ``LoadedModel`` or a function
        images -> logits (see ``load_classifier``).
      images: float32 [N, H, W, C] in [0, 1] (other float dtypes are cast).
      labels: int [N] class indices.
      eps: L-inf radius in [0, 1] pixel units (e.g. 8/255).
      attacks: names: ``clean``, ``fgsm``, ``pgdK`` (K steps, random start),
        ``pgdK_margin``, ``autoattack`` (APGD-CE, APGD-T, FAB-T, Square),
        ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``.
      num_examples: evaluate the first N images (default all).
      seed: seed of the random starts and of AutoAttack.
      masking_checks: run the model checks and the gradient-masking checks
        (including the Square check and the eps checks, which run more
        attacks); False runs none of them.
      batch_size: images per attack batch (``--batch_size``).
      pgd_step_size: PGD step; None is eps / 4.
      pgd_restarts, pgd_loss, pgd_random_start: as the command's flags
        (``pgd_loss="both"`` runs each pgdK with both losses).
      autoattack_budget: None runs AutoAttack's standard version, as the
        command does. A dict of ``jarn_tf.robustness.autoattack.run_autoattack``'s
        budget arguments (``num_steps``, ``fab_steps``, ``num_queries``,
        ``num_target_classes``, ``p_init``; ``AUTOATTACK_QUICK_BUDGET`` for a
        quick look) runs a weaker AutoAttack; the report says so.
      masking_tolerance, eps_checks, pgd_fgsm_tolerance, square_check_queries,
        square_tolerance: the checks' settings, as the command's flags.
      jit_compile: compile FGSM and PGD with XLA.
      output_dir: also write results.json, results.md and results.csv there.
      verbose: 1 shows progress bars and what runs; 0 is quiet.

    Returns:
      A ``RobustnessReport``.

    Raises:
      ValueError: a bad input (images, labels, eps, attack names, a model
        that does not take the images or gives no [N, K] logits), before any
        attack runs.
    """
    # Everything that can be wrong with the inputs is checked first, before TensorFlow is imported
    # (the arrays) or the model is called (what needs it).
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    eps = _check_eps(eps)
    num_examples = _check_count(num_examples, "num_examples")
    batch_size = _check_count(batch_size, "batch_size")
    if isinstance(attacks, str):
        attacks = attacks.split(",")
    budget = dict(autoattack_budget or {})
    unknown = sorted(set(budget) - set(AUTOATTACK_BUDGET_KEYS))
    if unknown:
        raise ValueError(
            f"autoattack_budget: unknown keys {unknown}; valid keys: {', '.join(AUTOATTACK_BUDGET_KEYS)}."
        )
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    _prepare_tensorflow()
    from jarn_tf.robustness import evaluation as eval_lib

    names = [str(a).strip() for a in attacks if str(a).strip()]
    if "clean" not in [n.lower() for n in names]:
        names = ["clean"] + names
    specs = eval_lib.parse_attacks(names, pgd_loss)
    params = eval_lib.AttackParams(
        eps=eps,
        pgd_step_size=pgd_step_size,
        pgd_restarts=pgd_restarts,
        pgd_random_start=pgd_random_start,
        seed=seed,
        jit_compile=jit_compile,
    )
    params.validate()
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir} is a file; pass a directory for the results.")

    import tensorflow as tf

    from jarn_tf.core import distribute
    from jarn_tf.robustness import checks as masking
    from jarn_tf.robustness import reports as results_lib

    loaded = load_classifier(model)
    if loaded.image_shape is not None and tuple(loaded.image_shape) != tuple(images.shape[1:]):
        transposed = (images.shape[2], images.shape[3], images.shape[1])
        raise ValueError(
            f"The model {loaded.path} takes images of shape {list(loaded.image_shape)} (H, W, C) but the "
            f"images are {list(images.shape[1:])}"
            + (
                ": they look channels-first; pass images.transpose(0, 2, 3, 1)."
                if tuple(loaded.image_shape) == transposed
                else "."
            )
        )
    if loaded.input_range != (0.0, 1.0):
        raise ValueError(
            f"The model {loaded.path} expects inputs in {list(loaded.input_range)} (metadata input_range) "
            "but the evaluation feeds images in [0, 1] and measures eps in those units."
        )
    # What the model gives on the first batch: logits [B, K] with every label below K.
    with tf.device("/cpu:0"):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    sample_images = next(iter(dataset))[0]
    try:
        sample_outputs = np.asarray(loaded.model_fn(sample_images))
    except Exception as e:
        raise ValueError(
            f"The model {loaded.path} cannot be called on the images (float32 {list(images.shape[1:])} "
            f"batches): {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    if sample_outputs.ndim != 2 or sample_outputs.shape[0] != sample_images.shape[0]:
        raise ValueError(
            f"The model {loaded.path} returns outputs of shape {list(sample_outputs.shape)} for "
            f"{sample_images.shape[0]} images; it must return logits [N, num_classes]."
        )
    num_classes = int(sample_outputs.shape[1])
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels go up to {int(labels.max())} but the model has {num_classes} outputs (classes "
            f"0..{num_classes - 1}): the labels do not belong to this model."
        )

    training = bool(loaded.training)
    strategy = distribute.get_strategy("default")
    start = time.time()
    model_checks: list = []
    if masking_checks:
        # AutoAttack's checks of the model itself, on the first batch, before any attack.
        model_checks = masking.model_checks(loaded.model_fn, sample_images)
        for c in model_checks:
            if c.passed is False:
                warnings.warn(f"Model check failed ({c.name}): {c.message}", stacklevel=2)
    if budget:
        plain = [s for s in specs if s.kind != "autoattack"]
        with strategy.scope():
            output = (
                eval_lib.evaluate(
                    loaded.model_fn,
                    dataset,
                    plain,
                    params,
                    strategy=strategy,
                    num_examples=len(labels),
                    verbose=verbose,
                )
                if plain
                else None
            )
        aa = _autoattack_with_budget(
            loaded.model_fn, dataset, [s for s in specs if s.kind == "autoattack"], params, budget, verbose
        )
        if output is None:
            output = aa
        else:
            # The attacks in the order given, as eval_lib.evaluate orders them.
            for field in ("correct", "max_perturbation", "pixel_range", "seconds"):
                merged = {**getattr(output, field), **getattr(aa, field)}
                setattr(output, field, {s.name: merged[s.name] for s in specs})
            output.extra.update(aa.extra)
    else:
        with strategy.scope():
            output = eval_lib.evaluate(
                loaded.model_fn,
                dataset,
                specs,
                params,
                strategy=strategy,
                num_examples=len(labels),
                verbose=verbose,
            )
    checks = list(model_checks)
    if masking_checks:
        checks += masking.checks_after_attacks(
            loaded.model_fn,
            dataset,
            output,
            specs,
            params,
            num_classes,
            square_check_queries=square_check_queries,
            masking_tolerance=masking_tolerance,
            pgd_fgsm_tolerance=pgd_fgsm_tolerance,
            square_tolerance=square_tolerance,
            run_eps_checks=eps_checks,
            eps_checks_needs="eps_checks=True, eps > 0 and an attack other than clean",
            strategy=strategy,
            verbose=verbose,
        )
        for c in checks[len(model_checks) :]:
            if c.passed is False:
                warnings.warn(f"Possible gradient masking ({c.name}): {c.message}", stacklevel=2)
    run_info = {
        "model": loaded.path,
        "model_format": loaded.format,
        "source_model": None,
        "dataset": None,
        "inputs": "arrays passed to jarn_tf.evaluate_robustness",
        "batch_size": batch_size,
        "batchnorm": "train" if training else "inference",
        "batchnorm_batch_size": batch_size if training else None,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": "default",
        "eps_source": "argument",
    }
    results = results_lib.build_results(output, specs, params, checks, run_info, time.time() - start)
    for s in specs:
        if s.kind == "autoattack":
            results["attacks"][s.name]["budget"] = dict(budget) if budget else "standard"
    paths = results_lib.write_results(results, os.path.abspath(output_dir)) if output_dir else {}
    return RobustnessReport(
        accuracy=dict(results["accuracy"]), checks=checks, results=results, output=output, paths=paths
    )


# ---------------------------------------------------------------------------
# Generators.


def load_generator(path_or_model: Any) -> "LoadedGenerator":
    """Loads a generator as ``python -m jarn_tf.evaluate_gan --model=...`` does.

    Generator contract: latent float32 [N, latent_dim] (z ~ N(0, I)) ->
    images float32 [N, H, W, C] in [0, 1].

    Args:
      path_or_model: a GAN run's model_dir, its export directory, the
        ``generator.keras`` file or the ``saved_model`` directory
        (``jarn_tf.gan.metrics.load_generator``); or a ``keras.Model``
        (latent [N, d] -> images in [0, 1]; no metadata), or a
        ``LoadedGenerator`` (returned as it is).

    Returns:
      A ``jarn_tf.gan.metrics.LoadedGenerator`` (``.generate(num, seed)``,
      ``.latent_dim``, ``.image_shape``, ``.metadata``).
    """
    _prepare_tensorflow()
    from jarn_tf.gan import metrics as gm

    if isinstance(path_or_model, gm.LoadedGenerator):
        return path_or_model
    if isinstance(path_or_model, (str, os.PathLike)):
        return gm.load_generator(os.fspath(path_or_model))
    import keras
    import tensorflow as tf

    if not isinstance(path_or_model, keras.Model):
        raise ValueError(
            f"Cannot load a generator from {type(path_or_model).__name__}: pass a path (run model_dir, export "
            "directory, generator.keras or saved_model) or a keras.Model."
        )
    model = path_or_model
    in_shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    out_shape = tuple(model.output_shape[1:])
    if len(in_shape) != 2 or in_shape[1] is None:
        raise ValueError(
            f"The generator {model.name} takes inputs of shape {list(in_shape)}, not [N, latent_dim]."
        )
    if len(out_shape) != 3 or any(d is None for d in out_shape):
        raise ValueError(
            f"The generator {model.name} makes outputs of shape {list(out_shape)}, not images [H, W, C]."
        )

    @tf.function(reduce_retracing=True)
    def forward(z):
        return tf.cast(model(z, training=False), tf.float32)

    def sample(z: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(z, tf.float32)).numpy()

    return gm.LoadedGenerator(
        sample=sample,
        metadata={},
        path=f"<keras.Model {model.name}>",
        format="keras_model",
        latent_dim=int(in_shape[1]),
        image_shape=tuple(int(d) for d in out_shape),
    )


@dataclasses.dataclass
class GeneratorReport:
    """What ``measure_generator`` found; ``print(report)`` shows it.

    Attributes:
      values: metric -> value (``fcd``: Fréchet classifier distance, lower is
        better; ``classifier_score``: higher is better; ``fid``/``is`` only
        with the 2015 Inception graph).
      metrics: metric -> everything ``evaluate_gan``'s results.json records
        for it (std over splits, the real images' own score, the real-data
        floor, the network, its feature layer and size, the sample counts).
      networks: the feature networks' descriptions (path, SHA-256...).
      notes: what a reader must know (clipped pixels, what FCD is not).
      num_samples: generated images measured.
      pixel_range: (min, max) of the generated pixels before clipping.
    """

    values: Dict[str, float]
    metrics: Dict[str, Dict[str, Any]]
    networks: Dict[str, Dict[str, Any]]
    notes: List[str]
    num_samples: int
    pixel_range: Tuple[float, float]

    def __str__(self) -> str:
        lines = []
        for key, m in self.metrics.items():
            floor = m.get("floor")
            lines.append(
                f"{m['name']}"
                + (f" ({m['long_name']})" if m["long_name"] != m["name"] else "")
                + f": {m['value']:.6g}"
                + (
                    f" (std {m['std']:.3g} over {m['splits']} splits; real images {m['reference_value']:.6g})"
                    if "std" in m
                    else ""
                )
                + (f"; real-data floor {floor['value']:.6g}" if floor else "")
                + f"  [{m['num_samples']} samples vs {m['reference_size']} real; {m['feature_layer']} "
                f"({m['feature_dim']} features)]"
            )
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])


_METRIC_NETWORK = {
    "fcd": "classifier",
    "classifier_score": "classifier",
    "fid": "inception",
    "is": "inception",
}


def measure_generator(
    generator: Any,
    real_images: Any,
    feature_network: Any,
    num_samples: int = 10000,
    metrics: Sequence[str] = ("fcd", "classifier_score"),
    seed: int = 0,
    batch_size: int = 100,
    feature_layer: str = "penultimate",
    score_splits: Optional[int] = None,
    floor_images: Any = None,
    verbose: int = 0,
) -> GeneratorReport:
    """Image quality of a generator, as ``python -m jarn_tf.evaluate_gan`` measures it.

    Draws ``num_samples`` images (latents from ``seed``; pixels outside
    [0, 1] are clipped, and a note says so) and compares them with
    ``real_images`` through ``feature_network``: FCD, the Fréchet distance
    between Gaussians fitted to the two sets' features (a classifier's, so it
    is not FID and not comparable with published FID values), and the
    classifier score exp E KL(p(y|x) || p(y)).

    Args:
      generator: a path or model (see ``load_generator``).
      real_images: float32 [N, H, W, C] in [0, 1], the reference (e.g. a
        test split: ``load_dataset(name)[0]``).
      feature_network: a classifier of this package trained on the same
        dataset (run model_dir, export directory or ``.keras`` file: its
        penultimate features, or logits with ``feature_layer="logits"``), a
        ``jarn_tf.gan.metrics.FeatureNetwork``, or, for ``fid``/``is``, the
        2015 Inception GraphDef ``.pb``.
      num_samples: generated images; the FCD needs more than the feature
        dimension.
      metrics: ``fcd``, ``classifier_score`` (a classifier) or ``fid``, ``is``
        (the Inception graph).
      seed: seed of the latents.
      batch_size: images per forward pass.
      feature_layer: ``penultimate`` or ``logits`` for a classifier.
      score_splits: splits of the score's mean and std (default 10, the
        command's).
      floor_images: optional real images not in ``real_images`` (the command
        takes ``num_samples`` training images): measured the same way, they
        give the value of a perfect generator at this sample count.
      verbose: 1 prints what runs.

    Returns:
      A ``GeneratorReport``.

    Raises:
      ValueError: an unknown metric or one its network cannot give, bad
        images, networks or generators of another image shape or dataset,
        too few samples for the covariance; before any image is generated.
    """
    from jarn_tf import config as config_lib

    if isinstance(metrics, str):
        metrics = metrics.split(",")
    metrics = list(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    if not metrics:
        raise ValueError("metrics is empty; pass e.g. ('fcd', 'classifier_score').")
    unknown = [m for m in metrics if m not in _METRIC_NETWORK]
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}; valid metrics: {', '.join(_METRIC_NETWORK)}.")
    if len({_METRIC_NETWORK[m] for m in metrics}) > 1:
        raise ValueError(
            "fcd/classifier_score need a classifier and fid/is the 2015 Inception graph; measure them in two "
            "calls, one per feature network."
        )
    num_samples = _check_count(num_samples, "num_samples")
    batch_size = _check_count(batch_size, "batch_size")
    score_splits = _check_count(score_splits, "score_splits") or config_lib.CLASSIFIER_SCORE_SPLITS
    real = _check_images(real_images, "real_images")
    floor = None if floor_images is None else _check_images(floor_images, "floor_images")
    _prepare_tensorflow()
    from jarn_tf.gan import metrics as gm

    gen = load_generator(generator)
    kind = _METRIC_NETWORK[metrics[0]]
    if isinstance(feature_network, gm.FeatureNetwork):
        net = feature_network
    elif isinstance(feature_network, (str, os.PathLike)):
        path = os.fspath(feature_network)
        if kind == "inception":
            if not path.endswith(".pb"):
                raise ValueError(
                    f"metrics {metrics} need the 2015 TensorFlow Inception graph as feature_network "
                    f"(inception-2015-12-05/classify_image_graph_def.pb), got {path}; with a classifier of "
                    "this package measure fcd and classifier_score."
                )
            net = gm.load_inception_network(path)
        else:
            try:
                net = gm.load_classifier_network(path, feature_layer)
            except AttributeError as e:  # gan_metrics cuts the model at its last Dense layer
                raise ValueError(
                    f"feature_network={path} cannot be cut at its last Dense layer ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); save the classifier as a functional "
                    "keras.Model(inputs, outputs) (a loaded keras.Sequential has no symbolic output)."
                ) from e
    else:
        raise ValueError(
            f"feature_network must be a path or a jarn_tf.gan.metrics.FeatureNetwork, got "
            f"{type(feature_network).__name__} (save a Keras classifier with model.save('x.keras') and pass the path)."
        )
    if (net.kind == "inception_2015") != (kind == "inception"):
        raise ValueError(
            f"metrics {metrics} need {'the 2015 Inception graph' if kind == 'inception' else 'a classifier'}, "
            f"but the feature network {net.path} is {'the Inception graph' if net.is_inception else 'a classifier'}."
        )
    if net.dataset and gen.dataset and net.dataset != gen.dataset:
        raise ValueError(
            f"The feature network {net.path} was trained on {net.dataset} but the generator {gen.path} on "
            f"{gen.dataset}: its features say nothing about {gen.dataset} images."
        )
    if tuple(real.shape[1:]) != tuple(gen.image_shape):
        raise ValueError(
            f"The generator {gen.path} makes images of shape {list(gen.image_shape)} but real_images are "
            f"{list(real.shape[1:])}."
        )
    net.check_image_shape(gen.image_shape, "the generated images")
    if any(m in ("fcd", "fid") for m in metrics):
        dim = net.feature_dim
        for what, count in (
            ("num_samples", num_samples),
            ("real_images", len(real)),
            ("floor_images", None if floor is None else len(floor)),
        ):
            if count is not None and count <= dim:
                raise ValueError(
                    f"{what}: {count} images, but the {net.distance_name} fits a full covariance of {dim} "
                    f"features ({net.feature_layer}), which needs more images than features: at least "
                    f"{dim + 1}, better many more."
                    + (" Or pass feature_layer='logits'." if kind == "classifier" else "")
                )
    if any(m in ("classifier_score", "is") for m in metrics) and score_splits > num_samples:
        raise ValueError(f"score_splits={score_splits} exceeds num_samples={num_samples}.")

    notes: List[str] = []
    if gen.fallback_reason:
        notes.append(f"Read the SavedModel because the .keras generator failed: {gen.fallback_reason}")
    if kind == "classifier":
        notes.append(
            "FCD and classifier score are computed with a classifier of this project, not the 2015 Inception "
            "graph: they are not comparable with published Inception-based values, only with values of the "
            "same classifier file (sha256), feature layer, sample count and reference."
        )
    if verbose:
        print(f"Generating {num_samples} images with {gen.path}, seed {seed}; metrics: {', '.join(metrics)}.")
    # As evaluate_gan.main: generate, refuse non-finite pixels, clip to [0, 1] with a note.
    generated, pixel_range, clip_note = gm.clip_generated(gen.generate(num_samples, seed, batch_size), gen.path)
    if clip_note:
        notes.append(clip_note)
    entries = gm.measure_images(
        net,
        generated,
        real,
        floor,
        distance=any(m in ("fcd", "fid") for m in metrics),
        score=any(m in ("classifier_score", "is") for m in metrics),
        batch_size=batch_size,
        score_splits=score_splits,
    )
    out: Dict[str, Dict[str, Any]] = {
        m: entries["distance" if m in ("fcd", "fid") else "score"] for m in metrics
    }
    return GeneratorReport(
        values={m: float(e["value"]) for m, e in out.items()},
        metrics=out,
        networks={kind: net.describe()},
        notes=notes,
        num_samples=len(generated),
        pixel_range=tuple(pixel_range),
    )
