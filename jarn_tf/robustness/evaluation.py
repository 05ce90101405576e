"""The attack loop of the robustness evaluation.

The entry point ``jarn_tf/evaluate.py`` reads flags and calls this module;
everything here takes plain arguments.

- ``parse_attacks`` turns names (``clean``, ``fgsm``, ``pgd20``,
  ``pgd20_margin``, ``autoattack``...) into ``AttackSpec``s;
  ``attack_hyperparameters`` lists each one's settings under an
  ``AttackParams``.
- ``craft_adversarial`` runs one gradient attack on one batch.
- ``evaluate`` runs every attack on every batch (compiled, optionally under a
  ``tf.distribute`` strategy) and returns per-example correctness
  (``EvalOutput``), from which the per-attack accuracies and the per-example
  worst case follow.

Models are loaded by ``jarn_tf.core.export.load_model``; ``jarn_tf.robustness.checks``
checks the outcome for gradient masking and ``jarn_tf.robustness.reports`` writes the
results files.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf.robustness import attacks as attacks_lib
from jarn_tf.robustness import autoattack
from jarn_tf.core.export import ModelFn

# Key of the per-example worst case over all attacks in ``EvalOutput.accuracies``.
WORST_CASE = "worst_case"

# Attacks of the native AutoAttack module (``jarn_tf.robustness.autoattack``);
# ``autoattack`` is the standard ensemble of all four.
AUTOATTACK_PARTS = autoattack.ATTACKS
AUTOATTACK_NAMES = ("autoattack",) + AUTOATTACK_PARTS

_PGD_RE = re.compile(r"^(transfer_)?pgd(\d+)(?:_(xent|margin))?$")


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


def known_attack_names() -> List[str]:
    """Human-readable list of valid attack names (for error messages)."""
    names = ["clean", "fgsm", "pgdK (K steps, e.g. pgd20)", "pgdK_margin", "pgdK_xent"]
    return names + list(AUTOATTACK_NAMES)


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
        elif lower in AUTOATTACK_NAMES:
            parts = AUTOATTACK_PARTS if lower == "autoattack" else (lower,)
            add(AttackSpec(lower, "autoattack", parts=parts))
        else:
            raise ValueError(f"Unknown attack {name!r}; valid attacks: {', '.join(known_attack_names())}.")
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


def _run_autoattack(
    spec: AttackSpec,
    params: AttackParams,
    model_fn: ModelFn,
    images,
    labels,
    log: Optional[Callable[[str], None]] = None,
):
    result = autoattack.run_autoattack(
        model_fn, images, labels, params.eps, attacks=tuple(spec.parts), seed=params.seed, log=log
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
      verbose: 1 shows a progress bar of the running accuracies (its last
        line holds the final ones) and AutoAttack's progress within each
        batch (attack, examples still robust, time).

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

    # The bar shows running accuracies as stateful metrics: Keras would show the last batch's value
    # on the final line otherwise.
    bar_names = [s.name for s in specs] + ([WORST_CASE] if len(specs) > 1 else [])
    progbar = keras.utils.Progbar(
        num_examples, verbose=verbose, unit_name="example", stateful_metrics=bar_names
    )
    bar_open = False  # a bar line is on screen without its newline
    num_correct = {name: 0 for name in bar_names}

    def log_line(message: str) -> None:
        nonlocal bar_open
        print(("\n" if bar_open else "") + message, flush=True)
        bar_open = False

    seen = 0
    dist_dataset = strategy.experimental_distribute_dataset(dataset)
    for batch_index, (images, labels) in enumerate(dist_dataset):
        host_images = _local_concat(strategy, images)
        host_labels = _local_concat(strategy, labels).astype(np.int64)
        all_labels.append(host_labels)
        for spec in specs:
            start = time.perf_counter()
            if spec.kind == "autoattack":
                where = f"examples {seen + 1}-{seen + len(host_labels)}" + (
                    f" of {num_examples}" if num_examples else ""
                )
                log = (lambda m, w=where, n=spec.name: log_line(f"{n} [{w}] {m}")) if verbose else None
                ok, per_attack, adv = _run_autoattack(
                    spec, params, model_fn, host_images, host_labels, log=log
                )
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
        for s in specs:
            num_correct[s.name] += int(np.sum(correct[s.name][-1]))
        if WORST_CASE in num_correct:
            num_correct[WORST_CASE] += int(
                np.sum(np.logical_and.reduce([correct[s.name][-1] for s in specs]))
            )
        if seen:
            progbar.update(seen, values=[(k, v / seen) for k, v in num_correct.items()], finalize=False)
            bar_open = bool(verbose)
    if seen and verbose:
        # The last line: the final accuracies, as in the results table.
        progbar.update(seen, values=[(k, v / seen) for k, v in num_correct.items()], finalize=True)

    out = EvalOutput(
        correct={k: np.concatenate(v) for k, v in correct.items()},
        labels=np.concatenate(all_labels),
        max_perturbation=max_pert,
        pixel_range={k: (lo[k], hi[k]) for k in lo},
        seconds=seconds,
        extra={k: {p: np.concatenate(v) for p, v in parts.items()} for k, parts in extra.items()},
    )
    return out
