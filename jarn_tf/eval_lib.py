"""Robustness evaluation: loading models, running attacks, results, checks.

The entry point ``jarn_tf/evaluate.py`` reads flags and calls this module;
everything here takes plain arguments.

- ``load_model`` accepts a training run's ``model_dir``, an export directory,
  a SavedModel directory or a ``.keras`` file, and returns a differentiable
  ``images -> logits`` function with what is known about its inputs.
- ``parse_attacks`` turns names (``clean``, ``fgsm``, ``pgd20``,
  ``pgd20_margin``, ``autoattack``...) into ``AttackSpec``s.
- ``evaluate`` runs every attack on every batch (compiled, optionally under a
  ``tf.distribute`` strategy) and returns per-example correctness, from which
  the per-attack accuracies and the per-example worst case follow.
- ``masking_checks`` runs the sanity checks of Carlini et al. (2019), "On
  Evaluating Adversarial Robustness", section 5, that flag gradient masking.
- ``write_results`` writes ``results.json``, ``results.md`` and
  ``results.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf import attacks as attacks_lib
from jarn_tf import export

ModelFn = Callable[[tf.Tensor], tf.Tensor]

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
WORST_CASE = "worst_case"

# Attacks of the native AutoAttack module (``jarn_tf.autoattack``), when it
# exists; ``autoattack`` is the standard ensemble of all four.
AUTOATTACK_MODULE = "jarn_tf.autoattack"
AUTOATTACK_PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")
AUTOATTACK_NAMES = ("autoattack",) + AUTOATTACK_PARTS

_PGD_RE = re.compile(r"^(transfer_)?pgd(\d+)(?:_(xent|margin))?$")


# ---------------------------------------------------------------------------
# Models.


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
    """

    model_fn: ModelFn
    path: str
    format: str
    image_shape: Optional[Tuple[int, int, int]]
    input_range: Tuple[float, float]
    metadata: Dict[str, Any]
    model_dir: Optional[str] = None

    @property
    def dataset(self) -> Optional[str]:
        """The dataset the model was trained on, from its metadata."""
        return self.metadata.get("dataset")

    @property
    def train_eps(self) -> Optional[float]:
        """The eps it was trained with, from its metadata, if any."""
        return (self.metadata.get("config") or {}).get("train", {}).get("eps")


def _read_metadata(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, export.METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _is_saved_model(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "saved_model.pb"))


def _load_keras(path: str) -> Tuple[ModelFn, Optional[Tuple[int, int, int]]]:
    import jarn_tf.layers  # noqa: F401  registers the custom layers

    model = keras.saving.load_model(path, compile=False)
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    image_shape = tuple(int(d) for d in shape[1:]) if all(d is not None for d in shape[1:]) else None

    def model_fn(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(images, training=False), tf.float32)

    return model_fn, image_shape


def _load_saved_model(path: str) -> Tuple[ModelFn, Optional[Tuple[int, int, int]]]:
    loaded = tf.saved_model.load(path)
    if "serving_default" not in loaded.signatures:
        raise ValueError(f"SavedModel {path} has no 'serving_default' signature.")
    signature = loaded.signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        raise ValueError(f"SavedModel {path}: expected one image input, found inputs {sorted(kwargs)}.")
    ((input_name, spec),) = kwargs.items()
    outputs = signature.structured_outputs
    if "logits" not in outputs:
        raise ValueError(f"SavedModel {path}: the signature returns {sorted(outputs)}, not 'logits'.")
    dims = spec.shape.as_list()[1:]
    image_shape = tuple(dims) if dims and all(d is not None for d in dims) else None

    def model_fn(images: tf.Tensor) -> tf.Tensor:
        # The signature's concrete function is differentiable like any other.
        return tf.cast(signature(**{input_name: images})["logits"], tf.float32)

    model_fn.loaded = loaded  # keeps the restored variables alive
    return model_fn, image_shape


def load_model(path: str) -> LoadedModel:
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
      The .keras model is preferred: it is the same network and its gradients
      are cheaper to compute than the SavedModel's.

    Returns:
      The loaded model.

    Raises:
      ValueError: nothing loadable at ``path``; the message says what was
        looked for.
    """
    path = os.path.abspath(path)
    model_dir = None
    if os.path.isdir(os.path.join(path, export.SAVED_MODEL_DIR)) or os.path.isfile(
        os.path.join(path, export.KERAS_FILE)
    ):
        export_dir = path
    elif os.path.isdir(os.path.join(path, "export")):
        model_dir, export_dir = path, os.path.join(path, "export")
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
        keras_file = os.path.join(export_dir, export.KERAS_FILE)
        saved_model = os.path.join(export_dir, export.SAVED_MODEL_DIR)
        if os.path.isfile(keras_file):
            target, fmt = keras_file, "keras"
        elif _is_saved_model(saved_model):
            target, fmt = saved_model, "saved_model"
        else:
            raise ValueError(
                f"--model={path}: {export_dir} holds neither {export.KERAS_FILE} nor a SavedModel."
            )
    else:
        raise ValueError(
            f"--model={path} is not a model: expected a training run's model_dir (with export/), "
            f"an export directory, a SavedModel directory (with saved_model.pb) or a .keras file."
        )

    if fmt == "keras":
        model_fn, image_shape = _load_keras(target)
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


# ---------------------------------------------------------------------------
# Attacks.


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the evaluation.

    Attributes:
      name: the name reported (``clean``, ``fgsm``, ``pgd20``,
        ``pgd20_margin``, ``transfer_pgd20``, ``autoattack``, ``apgd-ce``...).
      kind: ``clean``, ``fgsm``, ``pgd`` or ``autoattack``.
      steps: PGD steps (1 for FGSM, 0 otherwise).
      loss: ``xent`` or ``margin`` for gradient attacks.
      transfer: crafted on the source model, evaluated on the target.
      parts: for ``autoattack``, the AutoAttack components run.
    """

    name: str
    kind: str
    steps: int = 0
    loss: str = "xent"
    transfer: bool = False
    parts: Tuple[str, ...] = ()

    @property
    def gradient_based(self) -> bool:
        return self.kind in ("fgsm", "pgd")


def autoattack_available() -> bool:
    """Whether the native AutoAttack module ``jarn_tf.autoattack`` exists."""
    return importlib.util.find_spec(AUTOATTACK_MODULE) is not None


def known_attack_names() -> List[str]:
    """Human-readable list of valid attack names (for error messages)."""
    names = ["clean", "fgsm", "pgdK (K steps, e.g. pgd20)", "pgdK_margin", "pgdK_xent"]
    if autoattack_available():
        names += list(AUTOATTACK_NAMES)
    return names


def parse_attacks(names: Sequence[str], pgd_loss: str = "xent", transfer: bool = False) -> List[AttackSpec]:
    """Turns attack names into specs.

    Args:
      names: e.g. ``["clean", "fgsm", "pgd20"]``. ``pgdK`` uses ``pgd_loss``;
        ``pgdK_xent`` and ``pgdK_margin`` name the loss explicitly.
      pgd_loss: ``xent``, ``margin`` or ``both`` (each ``pgdK`` runs with both
        losses, reported as ``pgdK`` and ``pgdK_margin``).
      transfer: also run every PGD attack as a transfer attack (crafted on a
        source model), reported as ``transfer_pgdK``.

    Returns:
      The specs, without duplicates, in the order given.

    Raises:
      ValueError: unknown name, K < 1, bad ``pgd_loss`` or no attack at all.
    """
    if pgd_loss not in ("xent", "margin", "both"):
        raise ValueError(f"--pgd_loss must be xent, margin or both, got {pgd_loss!r}.")
    specs: List[AttackSpec] = []

    def add(spec: AttackSpec) -> None:
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)

    def pgd_name(steps: int, loss: str, is_transfer: bool) -> str:
        return ("transfer_" if is_transfer else "") + f"pgd{steps}" + ("_margin" if loss == "margin" else "")

    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("--attacks is empty; give at least one attack, e.g. clean,fgsm,pgd20.")
    for name in names:
        lower = name.lower()
        match = _PGD_RE.match(lower)
        if lower == "clean":
            add(AttackSpec("clean", "clean"))
        elif lower == "fgsm":
            add(AttackSpec("fgsm", "fgsm", steps=1))
        elif match:
            is_transfer, steps, loss = bool(match.group(1)), int(match.group(2)), match.group(3)
            if steps < 1:
                raise ValueError(f"Attack {name!r}: PGD needs at least 1 step.")
            losses = [loss] if loss else (["xent", "margin"] if pgd_loss == "both" else [pgd_loss])
            for l in losses:
                for t in sorted({is_transfer, is_transfer or transfer}):
                    add(AttackSpec(pgd_name(steps, l, t), "pgd", steps=steps, loss=l, transfer=t))
        elif lower in AUTOATTACK_NAMES and autoattack_available():
            parts = AUTOATTACK_PARTS if lower == "autoattack" else (lower,)
            add(AttackSpec(lower, "autoattack", parts=parts))
        else:
            extra = ""
            if lower in AUTOATTACK_NAMES:
                extra = f" ({AUTOATTACK_MODULE} is not installed in this checkout)"
            raise ValueError(
                f"Unknown attack {name!r}{extra}; valid attacks: {', '.join(known_attack_names())}."
            )
    if any(s.transfer for s in specs) and not transfer:
        raise ValueError("Transfer attacks need --source_model.")
    return specs


@dataclasses.dataclass(frozen=True)
class AttackParams:
    """Hyperparameters shared by the attacks (all in [0, 1] pixel units).

    Attributes:
      eps: L-inf radius.
      pgd_step_size: PGD step size; None means eps / 4.
      pgd_restarts: random restarts per PGD attack; an example counts as
        robust only if it survives all of them.
      pgd_random_start: start PGD from a uniform point of the eps-ball.
      seed: seed of the random starts (and AutoAttack).
      jit_compile: compile FGSM and PGD (with the model) with XLA. XLA may
        draw other random starts than the plain graph for the same seed.
        AutoAttack stays a plain ``tf.function``.
    """

    eps: float
    pgd_step_size: Optional[float] = None
    pgd_restarts: int = 1
    pgd_random_start: bool = True
    seed: int = 0
    jit_compile: bool = False

    @property
    def step_size(self) -> float:
        return self.eps / 4 if self.pgd_step_size is None else self.pgd_step_size

    def validate(self) -> None:
        """Raises ValueError for values outside their ranges."""
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"--eps must be in [0, 1] (pixel units, e.g. 8/255), got {self.eps}.")
        if not 0.0 < self.step_size <= 1.0 and self.eps > 0:
            raise ValueError(f"--pgd_step_size must be in (0, 1], got {self.step_size}.")
        if self.pgd_restarts < 1:
            raise ValueError(f"--pgd_restarts must be >= 1, got {self.pgd_restarts}.")


def attack_hyperparameters(spec: AttackSpec, params: AttackParams) -> Dict[str, Any]:
    """Every hyperparameter of one attack, as recorded in results.json."""
    out: Dict[str, Any] = {"kind": spec.kind, "norm": "linf", "eps": params.eps}
    if spec.kind == "clean":
        return {"kind": "clean"}
    if spec.kind == "fgsm":
        out.update(steps=1, step_size=params.eps, random_start=False, restarts=1, loss=spec.loss)
    elif spec.kind == "pgd":
        out.update(
            steps=spec.steps,
            step_size=params.step_size,
            random_start=params.pgd_random_start,
            restarts=params.pgd_restarts,
            loss=spec.loss,
        )
    elif spec.kind == "autoattack":
        out.update(parts=list(spec.parts), seed=params.seed)
    out["transfer"] = spec.transfer
    return out


def _craft_fn(spec: AttackSpec, params: AttackParams, model_fn: ModelFn, source_fn: Optional[ModelFn]):
    """The (uncompiled) replica function ``(images, labels, seed) -> (adversarial, correct)``."""
    craft_on = source_fn if spec.transfer else model_fn
    eps, step_size = float(params.eps), float(params.step_size)

    def run(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor):
        ctx = tf.distribute.get_replica_context()
        if ctx is not None:
            # Replicas attack different examples: give them different starts.
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
            seed = seed + tf.stack([tf.constant(0, tf.int64), 1_000_003 * replica])
        if spec.kind == "clean":
            adv = images
        elif spec.kind == "fgsm":
            adv = attacks_lib.fgsm(craft_on, images, labels, eps, loss=spec.loss)
        else:
            adv = attacks_lib.pgd(
                craft_on,
                images,
                labels,
                eps,
                step_size,
                spec.steps,
                random_start=params.pgd_random_start,
                loss=spec.loss,
                seed=seed,
            )
        predictions = tf.argmax(model_fn(adv), axis=-1, output_type=tf.int64)
        return adv, tf.equal(predictions, tf.cast(labels, tf.int64))

    return run


def craft_adversarial(
    spec: AttackSpec,
    params: AttackParams,
    model_fn: ModelFn,
    images: tf.Tensor,
    labels: tf.Tensor,
    source_fn: Optional[ModelFn] = None,
    restart: int = 0,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Runs one gradient attack (one restart) on one batch.

    Args:
      spec: a ``clean``, ``fgsm`` or ``pgd`` attack.
      params: eps, step size, seed.
      model_fn: the evaluated model.
      images: float32 [B, H, W, C] in [0, 1].
      labels: int [B].
      source_fn: the model transfer attacks are crafted on.
      restart: restart index (changes the random start).

    Returns:
      (adversarial images, bool [B] whether model_fn still classifies them
      correctly).
    """
    seed = tf.constant([params.seed, restart], tf.int64)
    images = tf.convert_to_tensor(images, tf.float32)
    signature = [
        tf.TensorSpec([None, *images.shape[1:]], tf.float32),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([2], tf.int64),
    ]
    fn = tf.function(
        _craft_fn(spec, params, model_fn, source_fn),
        input_signature=signature,
        jit_compile=params.jit_compile or None,
    )
    return fn(images, tf.convert_to_tensor(labels, tf.int64), seed)


# ---------------------------------------------------------------------------
# The evaluation loop.


@dataclasses.dataclass
class EvalOutput:
    """Per-example outcome of every attack.

    Attributes:
      correct: attack name -> bool [N], correctly classified under the
        attack (worst case over restarts).
      labels: int [N].
      max_perturbation: attack name -> the largest L-inf distance of any
        adversarial example from its input.
      pixel_range: attack name -> (min, max) pixel value of the adversarial
        examples.
      seconds: attack name -> wall time.
      extra: attack name -> additional per-example results (AutoAttack's
        per-component robustness).
    """

    correct: Dict[str, np.ndarray]
    labels: np.ndarray
    max_perturbation: Dict[str, float]
    pixel_range: Dict[str, Tuple[float, float]]
    seconds: Dict[str, float]
    extra: Dict[str, Dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def accuracies(self) -> Dict[str, float]:
        """Attack name -> accuracy, plus ``worst_case`` over all attacks."""
        out = {name: float(np.mean(c)) for name, c in self.correct.items()}
        out[WORST_CASE] = float(np.mean(self.worst_case()))
        return out

    def worst_case(self) -> np.ndarray:
        """bool [N]: correct under every attack run (per-example worst case)."""
        return np.logical_and.reduce(list(self.correct.values()))


def _local_concat(strategy: tf.distribute.Strategy, value) -> np.ndarray:
    parts = strategy.experimental_local_results(value)
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _run_autoattack(spec: AttackSpec, params: AttackParams, model_fn: ModelFn, images, labels):
    module = importlib.import_module(AUTOATTACK_MODULE)
    result = module.run_autoattack(
        model_fn, images, labels, params.eps, attacks=tuple(spec.parts), seed=params.seed
    )
    robust = np.asarray(result["robust"], bool)
    per_attack = {k: np.asarray(v, bool) for k, v in (result.get("per_attack") or {}).items()}
    adv = result.get("adversarial")
    return robust, per_attack, (None if adv is None else np.asarray(adv, np.float32))


def evaluate(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    specs: Sequence[AttackSpec],
    params: AttackParams,
    source_fn: Optional[ModelFn] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
    num_examples: Optional[int] = None,
    verbose: int = 1,
) -> EvalOutput:
    """Runs every attack on every batch of ``dataset``.

    Gradient attacks run compiled under ``strategy.run`` (each replica attacks
    its slice of the batch); AutoAttack runs on the host batch by batch.

    Args:
      model_fn: the evaluated model, images -> logits.
      dataset: finite dataset of (images [B, H, W, C] in [0, 1], labels [B]).
      specs: the attacks.
      params: their hyperparameters.
      source_fn: source model of transfer attacks.
      strategy: a tf.distribute strategy; None is the default strategy.
      num_examples: the number of examples (for the progress bar).
      verbose: 1 shows a progress bar.

    Returns:
      Per-example outcomes.
    """
    params.validate()
    if any(s.transfer for s in specs) and source_fn is None:
        raise ValueError("Transfer attacks need a source model.")
    strategy = strategy or tf.distribute.get_strategy()
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), tf.cast(y, tf.int64)))

    def compiled(replica_fn):
        # One compiled step per attack: strategy.run inside tf.function, so
        # that every replica runs the attack as a graph (an XLA cluster with
        # --jit_compile; the host loop around it stays a plain graph).
        if params.jit_compile:
            replica_fn = tf.function(replica_fn, jit_compile=True, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def step(images, labels, seed):
            return strategy.run(replica_fn, args=(images, labels, seed))

        return step

    fns = {
        s.name: compiled(_craft_fn(s, params, model_fn, source_fn)) for s in specs if s.kind != "autoattack"
    }
    correct: Dict[str, List[np.ndarray]] = {s.name: [] for s in specs}
    extra: Dict[str, Dict[str, List[np.ndarray]]] = {}
    max_pert = {s.name: 0.0 for s in specs}
    lo = {s.name: np.inf for s in specs}
    hi = {s.name: -np.inf for s in specs}
    seconds = {s.name: 0.0 for s in specs}
    all_labels: List[np.ndarray] = []
    restarts = {
        s.name: (params.pgd_restarts if s.kind == "pgd" and params.pgd_random_start else 1) for s in specs
    }

    progbar = keras.utils.Progbar(num_examples, verbose=verbose, unit_name="example")
    seen = 0
    dist_dataset = strategy.experimental_distribute_dataset(dataset)
    for batch_index, (images, labels) in enumerate(dist_dataset):
        host_images = _local_concat(strategy, images)
        host_labels = _local_concat(strategy, labels).astype(np.int64)
        all_labels.append(host_labels)
        for spec in specs:
            start = time.perf_counter()
            if spec.kind == "autoattack":
                ok, per_attack, adv = _run_autoattack(spec, params, model_fn, host_images, host_labels)
                for part, values in per_attack.items():
                    extra.setdefault(spec.name, {}).setdefault(part, []).append(values)
                advs = [adv] if adv is not None else []
            else:
                ok, advs = None, []
                for r in range(restarts[spec.name]):
                    seed = tf.constant([params.seed, batch_index * 1000 + r], tf.int64)
                    adv, c = fns[spec.name](images, labels, seed)
                    c = _local_concat(strategy, c)
                    ok = c if ok is None else np.logical_and(ok, c)
                    advs.append(_local_concat(strategy, adv))
            seconds[spec.name] += time.perf_counter() - start
            correct[spec.name].append(np.asarray(ok, bool))
            for adv in advs:
                if adv.size:
                    max_pert[spec.name] = max(max_pert[spec.name], float(np.max(np.abs(adv - host_images))))
                    lo[spec.name] = min(lo[spec.name], float(adv.min()))
                    hi[spec.name] = max(hi[spec.name], float(adv.max()))
        seen += len(host_labels)
        progbar.update(
            seen, values=[(s.name, float(np.mean(correct[s.name][-1]))) for s in specs if len(host_labels)]
        )

    out = EvalOutput(
        correct={k: np.concatenate(v) for k, v in correct.items()},
        labels=np.concatenate(all_labels),
        max_perturbation=max_pert,
        pixel_range={k: (lo[k], hi[k]) for k in lo},
        seconds=seconds,
        extra={k: {p: np.concatenate(v) for p, v in parts.items()} for k, parts in extra.items()},
    )
    return out


# ---------------------------------------------------------------------------
# Gradient-masking checks (Carlini et al., 2019, section 5).


@dataclasses.dataclass
class Check:
    """One sanity check of the evaluation.

    Attributes:
      name: what is checked.
      passed: False suggests gradient masking (or a broken attack).
      detail: the numbers behind the verdict.
      message: one line for the warning printed when it fails.
    """

    name: str
    passed: bool
    detail: Dict[str, Any]
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def masking_checks(output: EvalOutput, specs: Sequence[AttackSpec], tolerance: float = 0.02) -> List[Check]:
    """Checks that warn of gradient masking.

    Each runs only when the attacks it compares were run:

    - ``pgd_beats_fgsm``: no example is robust to a PGD attack but broken by
      FGSM (iterative attacks must be at least as strong as one step);
      counted per PGD attack.
    - ``more_steps_not_better``: PGD accuracy does not rise with more steps
      (same loss).
    - ``xent_margin_agree``: PGD with the cross-entropy and with the margin
      loss reach accuracies within ``tolerance`` (saturated softmaxes make
      cross-entropy gradients vanish while margin gradients do not).
    - ``whitebox_beats_transfer``: a white-box PGD attack is at least as
      strong as the same attack transferred from another model.
    - ``blackbox_not_below_whitebox`` (with AutoAttack): AutoAttack and its
      parts run alone (``square`` is gradient-free) are not far below the best
      PGD accuracy.

    Args:
      output: per-example outcomes.
      specs: the attacks run.
      tolerance: allowed accuracy difference (fraction of examples).

    Returns:
      The checks run.
    """
    acc = output.accuracies()
    n = max(output.num_examples, 1)
    by_name = {s.name: s for s in specs}
    checks: List[Check] = []
    white_pgd = [s for s in specs if s.kind == "pgd" and not s.transfer]

    if "fgsm" in by_name and white_pgd:
        fgsm_wrong = ~output.correct["fgsm"]
        counts = {s.name: int(np.sum(output.correct[s.name] & fgsm_wrong)) for s in white_pgd}
        worst = max(counts.values())
        checks.append(
            Check(
                "pgd_beats_fgsm",
                worst <= tolerance * n,
                {"robust_to_pgd_but_not_fgsm": counts, "num_examples": n},
                f"{worst} examples resist PGD but not FGSM: PGD is weaker than one step, a sign of "
                f"gradient masking or a too-small step size.",
            )
        )

    for loss in ("xent", "margin"):
        runs = sorted((s.steps, acc[s.name]) for s in white_pgd if s.loss == loss)
        if len(runs) >= 2:
            rises = [
                {"from_steps": a[0], "to_steps": b[0], "from_accuracy": a[1], "to_accuracy": b[1]}
                for a, b in zip(runs, runs[1:])
                if b[1] > a[1] + tolerance
            ]
            checks.append(
                Check(
                    f"more_steps_not_better_{loss}",
                    not rises,
                    {"accuracy_by_steps": {str(k): v for k, v in runs}, "rises": rises},
                    f"PGD ({loss}) accuracy rises with more steps: {rises}.",
                )
            )

    pairs = {}
    for s in white_pgd:
        pairs.setdefault(s.steps, {})[s.loss] = acc[s.name]
    both = {k: v for k, v in pairs.items() if len(v) == 2}
    if both:
        diffs = {str(k): v["xent"] - v["margin"] for k, v in both.items()}
        worst = max(abs(d) for d in diffs.values())
        checks.append(
            Check(
                "xent_margin_agree",
                worst <= tolerance,
                {
                    "xent_minus_margin_accuracy": diffs,
                    "accuracy": {str(k): v for k, v in both.items()},
                    "tolerance": tolerance,
                },
                f"PGD with cross-entropy and margin losses disagree by up to {worst:.3f} in accuracy: "
                f"cross-entropy gradients may be masked (saturated softmax).",
            )
        )

    transfer = [s for s in specs if s.transfer]
    if transfer:
        detail, failed = {}, []
        for t in transfer:
            white = t.name[len("transfer_") :]
            if white in acc:
                detail[white] = {"white_box": acc[white], "transfer": acc[t.name]}
                if acc[white] > acc[t.name] + tolerance:
                    failed.append(white)
        if detail:
            checks.append(
                Check(
                    "whitebox_beats_transfer",
                    not failed,
                    {"accuracy": detail, "failed": failed, "tolerance": tolerance},
                    f"Transfer attacks beat white-box ones ({failed}): the model's own gradients "
                    f"are less useful than another model's, a sign of gradient masking.",
                )
            )

    aa = [s for s in specs if s.kind == "autoattack"]
    if aa and white_pgd:
        best_pgd = min(acc[s.name] for s in white_pgd)
        detail = {"best_pgd_accuracy": best_pgd, **{s.name: acc[s.name] for s in aa}}
        failed = [s.name for s in aa if acc[s.name] < best_pgd - tolerance]
        checks.append(
            Check(
                "blackbox_not_below_whitebox",
                not failed,
                {"accuracy": detail, "failed": failed, "tolerance": tolerance},
                f"{failed} reach far lower accuracy than PGD: PGD's gradients are unreliable.",
            )
        )
    return checks


# ---------------------------------------------------------------------------
# Results.


LARGE_EPS = 0.5


def eps_checks(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    specs: Sequence[AttackSpec],
    output: EvalOutput,
    params: AttackParams,
    num_classes: int,
    tolerance: float = 0.02,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> List[Check]:
    """The eps-dependent checks of Carlini et al. (2019), with two extra PGD runs.

    Re-runs the strongest white-box PGD attack of ``specs`` (PGD-10 with the
    margin loss when none was run) at eps / 2 and at a large eps
    (``LARGE_EPS``, or 1 when eps is already that large), with the same
    step-to-eps ratio:

    - ``accuracy_not_rising_with_eps``: accuracy at eps / 2 is not below the
      accuracy at eps (minus ``tolerance``).
    - ``large_eps_reaches_chance``: at the large eps, accuracy is at most
      chance (1 / num_classes) plus ``tolerance``; an eps-ball of that size
      contains images of every class, so a model that stays accurate there
      is masking gradients.

    Args:
      model_fn: the evaluated model.
      dataset: the same examples as the main evaluation.
      specs: the attacks of the main evaluation.
      output: its per-example outcomes.
      params: its hyperparameters.
      num_classes: number of classes.
      tolerance: allowed accuracy difference.
      strategy: as for ``evaluate``.

    Returns:
      The two checks.
    """
    white = [s for s in specs if s.kind == "pgd" and not s.transfer]
    if white:
        spec = min(white, key=lambda s: float(np.mean(output.correct[s.name])))
        at_eps = float(np.mean(output.correct[spec.name]))
    else:
        spec = AttackSpec("pgd10_margin", "pgd", steps=10, loss="margin")
        at_eps = None
    ratio = params.step_size / params.eps if params.eps > 0 else 0.25
    large = LARGE_EPS if params.eps < LARGE_EPS else 1.0
    acc = {}
    for eps in (params.eps / 2, large) + (() if at_eps is not None else (params.eps,)):
        run_params = dataclasses.replace(params, eps=eps, pgd_step_size=min(1.0, ratio * eps))
        out = evaluate(model_fn, dataset, [spec], run_params, strategy=strategy, verbose=0)
        acc[eps] = float(np.mean(out.correct[spec.name]))
    if at_eps is None:
        at_eps = acc[params.eps]
    half = acc[params.eps / 2]
    chance = 1.0 / num_classes
    return [
        Check(
            "accuracy_not_rising_with_eps",
            half >= at_eps - tolerance,
            {
                "attack": spec.name,
                "eps_half": params.eps / 2,
                "accuracy_half": half,
                "eps": params.eps,
                "accuracy": at_eps,
            },
            f"{spec.name} accuracy rises from {half:.3f} at eps/2 to {at_eps:.3f} at eps: the attack "
            f"is failing (gradient masking?).",
        ),
        Check(
            "large_eps_reaches_chance",
            acc[large] <= chance + tolerance,
            {"attack": spec.name, "eps": large, "accuracy": acc[large], "chance": chance},
            f"{spec.name} at eps {large:g} leaves {acc[large]:.3f} accuracy, above chance "
            f"({chance:.3f}): gradients are probably masked.",
        ),
    ]


def library_versions() -> Dict[str, str]:
    """Versions of the libraries that determine the numbers."""
    import jarn_tf

    versions = {
        "jarn_tf": jarn_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import tensorflow_datasets as tfds

        versions["tensorflow_datasets"] = tfds.__version__
    except ImportError:
        pass
    return versions


def build_results(
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    params: AttackParams,
    checks: Sequence[Check],
    info: Mapping[str, Any],
    wall_seconds: float,
) -> Dict[str, Any]:
    """The content of results.json.

    Args:
      output: per-example outcomes.
      specs: the attacks run.
      params: their hyperparameters.
      checks: masking checks.
      info: model, dataset, split, batch size... recorded as given.
      wall_seconds: wall time of the whole evaluation.

    Returns:
      A JSON-serialisable dict; ``accuracy`` maps every attack (and
      ``worst_case``) to its accuracy in [0, 1].
    """
    acc = output.accuracies()
    attacks_out = {}
    for s in specs:
        entry = attack_hyperparameters(s, params)
        entry.update(
            accuracy=acc[s.name],
            num_correct=int(np.sum(output.correct[s.name])),
            seconds=round(output.seconds[s.name], 3),
        )
        if s.kind != "clean":
            entry["max_perturbation"] = output.max_perturbation[s.name]
            entry["pixel_range"] = list(output.pixel_range[s.name])
        if s.name in output.extra:
            # AutoAttack runs its parts in order, each on what is still robust.
            entry["accuracy_after_each_part"] = {
                k: float(np.mean(v)) for k, v in output.extra[s.name].items()
            }
        attacks_out[s.name] = entry
    return {
        **dict(info),
        "num_examples": output.num_examples,
        "seed": params.seed,
        "eps": params.eps,
        "jit_compile": params.jit_compile,
        "accuracy": acc,
        "attacks": attacks_out,
        "worst_case_over": [s.name for s in specs],
        "checks": [c.to_dict() for c in checks],
        "checks_passed": all(c.passed for c in checks),
        "versions": library_versions(),
        "wall_time_seconds": round(wall_seconds, 3),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _table_rows(results: Mapping[str, Any]) -> List[Tuple[str, str, str, str]]:
    rows = []
    for name, entry in results["attacks"].items():
        if entry["kind"] == "clean":
            params = "-"
        elif entry["kind"] == "autoattack":
            params = f"eps={entry['eps']:.4g} " + "+".join(entry["parts"])
        else:
            params = (
                f"eps={entry['eps']:.4g} steps={entry['steps']} step={entry['step_size']:.4g} "
                f"{entry['loss']}" + (f" restarts={entry['restarts']}" if entry["restarts"] > 1 else "")
            )
        rows.append((name, f"{100 * entry['accuracy']:.2f}", str(entry["num_correct"]), params))
    n_worst = int(round(results["accuracy"][WORST_CASE] * results["num_examples"]))
    rows.append(
        (WORST_CASE, f"{100 * results['accuracy'][WORST_CASE]:.2f}", str(n_worst), "all attacks above")
    )
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """A markdown table: attack, accuracy (%), correct, hyperparameters."""
    header = ("attack", "accuracy (%)", f"correct / {results['num_examples']}", "parameters")
    rows = [header] + _table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def format_checks(checks: Sequence[Mapping[str, Any]]) -> str:
    """One line per check: PASS/FAIL, name and, for failures, the warning."""
    lines = []
    for c in checks:
        lines.append(
            f"- {'PASS' if c['passed'] else 'FAIL'} {c['name']}"
            + ("" if c["passed"] else f": {c['message']}")
        )
    return "\n".join(lines) if lines else "- (no check applies to these attacks)"


def write_results(results: Mapping[str, Any], output_dir: str) -> Dict[str, str]:
    """Writes results.json, results.md and results.csv to ``output_dir``.

    Returns:
      File kind (json, md, csv) -> path.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        k: os.path.join(output_dir, f)
        for k, f in (("json", RESULTS_JSON), ("md", RESULTS_MD), ("csv", RESULTS_CSV))
    }
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(
            f"# Robustness of {results.get('model', '?')}\n\n"
            f"{results.get('dataset', '?')} {results.get('split', 'test')}, first {results['num_examples']} "
            f"examples, L-inf eps = {results['eps']:.6g}, seed {results['seed']}.\n\n"
        )
        f.write(
            format_table(results)
            + "\n\n## Gradient-masking checks\n\n"
            + format_checks(results["checks"])
            + "\n"
        )
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "attack",
                "accuracy",
                "num_correct",
                "num_examples",
                "eps",
                "steps",
                "step_size",
                "loss",
                "restarts",
            ]
        )
        for name, e in results["attacks"].items():
            writer.writerow(
                [
                    name,
                    e["accuracy"],
                    e["num_correct"],
                    results["num_examples"],
                    e.get("eps", 0.0),
                    e.get("steps", ""),
                    e.get("step_size", ""),
                    e.get("loss", ""),
                    e.get("restarts", ""),
                ]
            )
        writer.writerow(
            [
                WORST_CASE,
                results["accuracy"][WORST_CASE],
                int(round(results["accuracy"][WORST_CASE] * results["num_examples"])),
                results["num_examples"],
                results["eps"],
                "",
                "",
                "",
                "",
            ]
        )
    return paths
