"""AutoAttack (Croce & Hein, ICML 2020) for L-inf, natively in TensorFlow 2.

The "standard" L-inf ensemble of the reference implementation (fra31/auto-attack):

* APGD-CE: auto-PGD on cross-entropy, 100 iterations, 1 restart.
* APGD-T: auto-PGD on the targeted DLR loss, 9 target classes, 100 iterations, 1 restart each.
* FAB-T: targeted FAB, 9 target classes, 100 iterations, 1 restart each (no random start).
* Square: score-based random search on the margin, 5000 queries, p_init = 0.8, 1 restart.

``run_autoattack`` applies each attack only to the examples that are still robust and reports the
per-example worst case. Images are float32 NHWC in [0, 1], eps is in [0, 1] units and ``model_fn``
maps images to logits (e.g. ``lambda x: model(x, training=False)``). The inner loops are compiled
with ``tf.function`` once per (model_fn, attack settings, image shape) and accept any batch size.

Which examples break is the reference's (``tests/test_official_reference.py`` checks it against the
official code's recorded outputs); the work is less. The attacks run on "rows" (an image and, for
APGD-T and FAB-T, one target class; all targets of an example in one batch) and retire a row from
the loop as soon as its example is settled, so no forward or backward pass is spent on it again,
without retracing (the loops' per-row state shrinks, ``_retire``), and Square does not query proposals
whose margin is known (the image unchanged, or the same proposal rejected at the same point before).
On CPUs, run with oneDNN (``TF_ENABLE_ONEDNN_OPTS=1``, which the commands set;
``jarn_tf.core.startup.prefer_onednn``): the input gradient of strided convolutions is about 3x faster
with it.
"""

from __future__ import annotations

import time
import weakref
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from jarn_tf.jarn import losses
from jarn_tf.robustness.attacks import project_linf

ModelFn = Callable[[tf.Tensor], tf.Tensor]

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
APGD_LOSSES = ("ce", "dlr", "dlr-targeted")

# APGD constants of the reference: momentum, step-size halving threshold, checkpoint fractions.
APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
# FAB constants of the reference (FABAttack defaults).
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9
# Square: iterations after which the fraction p of changed pixels is halved.
SQUARE_P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# --------------------------------------------------------------------------------------------------
# Losses.


def dlr_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example Difference of Logits Ratio loss (to be maximised).

    DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), where z_pi1 >= z_pi2 >= ... are the
    sorted logits. Invariant to shifting and positive scaling of the logits.

    Args:
      labels: int [B] true classes.
      logits: float [B, K], K >= 3.

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0.5
    true_logit = tf.reduce_sum(tf.where(onehot, logits, 0.0), axis=-1)
    other = tf.reduce_max(tf.where(onehot, tf.constant(-np.inf, tf.float32), logits), axis=-1)
    top = tf.math.top_k(logits, k=3).values
    return -(true_logit - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_loss_targeted(labels: tf.Tensor, target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example targeted DLR loss (to be maximised).

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

    Args:
      labels: int [B] true classes.
      target: int [B] target classes.
      logits: float [B, K], K >= 4.

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    true_logit = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    target_logit = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    top = tf.math.top_k(logits, k=4).values
    return -(true_logit - target_logit) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _attack_loss(name: str, labels: tf.Tensor, target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    if name == "ce":
        return losses.cross_entropy(labels, logits)
    if name == "dlr":
        return dlr_loss(labels, logits)
    return dlr_loss_targeted(labels, target, logits)


# --------------------------------------------------------------------------------------------------
# Helpers.

# model_fn -> {settings key: compiled function}. Weak keys, and the compiled functions only hold
# a weak reference to model_fn, so a cache entry dies with its model_fn.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled(model_fn: ModelFn, key: tuple, builder: Callable[[Callable[[], ModelFn]], Callable]):
    """Returns builder(get_model_fn), cached per model_fn and key where model_fn allows weakrefs."""
    try:
        ref = weakref.ref(model_fn)
        per_model = _COMPILED.setdefault(model_fn, {})
    except TypeError:
        return builder(lambda: model_fn)
    if key not in per_model:
        per_model[key] = builder(ref)
    return per_model[key]


def _per_example(mask: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1], to broadcast a per-example value over NHWC images."""
    return tf.reshape(mask, [-1, 1, 1, 1])


def _seed(seed: int, stream: int = 0) -> tf.Tensor:
    return tf.constant([int(seed), int(stream)], tf.int64)


def _as_inputs(images, labels):
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected images [N, H, W, C] and labels [N]; got {images.shape}, {labels.shape}.")
    return images, labels


def _logits(model_fn: ModelFn, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    out = [
        np.asarray(model_fn(tf.convert_to_tensor(images[i : i + batch_size])), np.float32)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0) if out else np.zeros([0, 0], np.float32)


def _ranked_targets(logits: np.ndarray, num_target_classes: int) -> list:
    """Targets of the reference: the 2nd, 3rd, ... largest clean logit of each example."""
    num_classes = logits.shape[-1]
    order = np.argsort(-logits, axis=-1, kind="stable")
    return [order[:, rank - 1] for rank in range(2, min(num_target_classes + 2, num_classes + 1))]


def _random_start(images: np.ndarray, eps: float, seed: tf.Tensor) -> tf.Tensor:
    """The reference's L-inf random start: x + eps t / (max |t| + 1e-12), t ~ U(-1, 1), in [0, 1]."""
    t = tf.random.stateless_uniform(images.shape, seed=seed, minval=-1.0, maxval=1.0)
    t_max = tf.reduce_max(tf.abs(t), axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(images + eps * t / (t_max + 1e-12), 0.0, 1.0)


def _invariants(structure):
    """Shape invariants of while-loop state whose per-row tensors shrink: [None, ...] for rank >= 1."""
    return tf.nest.map_structure(
        lambda t: tf.TensorShape([None] + t.shape.as_list()[1:]) if t.shape.rank else t.shape, structure
    )


def _retire(rows: Dict[str, tf.Tensor], out: Dict[str, tf.Tensor], done: tf.Tensor, result) -> tuple:
    """Stops work on finished rows: writes their results into ``out``, keeps the others.

    The attacks below work on "rows" (an image, and for the targeted attacks one target class) and
    drop every row whose example is settled, so no forward or backward pass is spent on it again;
    official AutoAttack (whose verdicts do not change after that point) keeps computing on it.

    Args:
      rows: per-row tensors of the rows still worked on, with ``row``, their index in ``out``.
      out: full-size result tensors, one entry per row of the call.
      done: bool [active rows], the rows to retire.
      result: rows -> {name of an ``out`` entry: the retired rows' value}.

    Returns:
      (the rows still worked on, ``out`` with the retired rows' results written).
    """

    def retire():
        finished = tf.where(done)[:, 0]
        indices = tf.gather(rows["row"], finished)[:, None]
        values = result({k: tf.gather(v, finished) for k, v in rows.items()})
        written = dict(out)
        for name, value in values.items():
            written[name] = tf.tensor_scatter_nd_update(out[name], indices, value)
        kept = tf.where(tf.logical_not(done))[:, 0]
        return {k: tf.gather(v, kept) for k, v in rows.items()}, written

    return tf.cond(tf.reduce_any(done), retire, lambda: (dict(rows), dict(out)))


def _new_rows(images: tf.Tensor, labels: tf.Tensor, **per_row: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The per-row state of a call: its index, image and label, and ``per_row``."""
    return dict(row=tf.range(tf.shape(images)[0]), images=images, labels=labels, **per_row)


def _group_done(flags: tf.Tensor, group: tf.Tensor, num_groups: tf.Tensor) -> tf.Tensor:
    """Per row: whether any row of its group (its example) has ``flags`` set."""
    per_group = tf.math.unsorted_segment_max(tf.cast(flags, tf.int32), group, num_groups) > 0
    return tf.gather(per_group, group)


def _rows(images: np.ndarray, labels: np.ndarray, targets: Sequence[np.ndarray]) -> tuple:
    """Rows (image, label, target, group) for every example and target, target-major."""
    n = len(labels)
    return (
        np.concatenate([images] * len(targets)),
        np.concatenate([labels] * len(targets)),
        np.concatenate([np.asarray(t, np.int32) for t in targets]).astype(np.int32),
        np.tile(np.arange(n, dtype=np.int32), len(targets)),
    )


def _first_success(found: np.ndarray, values: np.ndarray, num_targets: int) -> tuple:
    """Per example: whether any target's row succeeded, and the row of the first target that did."""
    found = found.reshape(num_targets, -1)
    any_found = found.any(axis=0)
    first = np.argmax(found, axis=0)  # the first True (0 where none)
    n = found.shape[1]
    return any_found, values.reshape(num_targets, n, *values.shape[1:])[first, np.arange(n)], first


# --------------------------------------------------------------------------------------------------
# APGD.


def _build_apgd(loss: str, num_steps: int, image_shape: tuple):
    n_iter_2 = max(int(0.22 * num_steps), 1)  # length of the first checkpoint interval
    n_iter_min = max(int(0.06 * num_steps), 1)  # shortest interval
    size_decr = max(int(0.03 * num_steps), 1)  # interval shrinkage per checkpoint

    def builder(get_model_fn):
        spec = [
            tf.TensorSpec([None, *image_shape], tf.float32),  # images
            tf.TensorSpec([None], tf.int32),  # labels
            tf.TensorSpec([None], tf.int32),  # target classes (dlr-targeted)
            tf.TensorSpec([None], tf.int32),  # group: rows of one example stop together
            tf.TensorSpec([None, *image_shape], tf.float32),  # starting points
            tf.TensorSpec([], tf.float32),  # eps
        ]

        @tf.function(input_signature=spec)
        def run(images, labels, target, group, start, eps):
            model_fn = get_model_fn()

            def evaluate(x, labels, target):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    logits = model_fn(x)
                    per_example = _attack_loss(loss, labels, target, logits)
                    total = tf.reduce_sum(per_example)  # each example's gradient stays its own
                grad = tape.gradient(total, x)
                wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
                return per_example, grad, wrong

            num_rows = tf.shape(images)[0]
            num_groups = tf.reduce_max(group) + 1
            # As the reference, the starting point is only clipped to the image range.
            x_adv = tf.clip_by_value(start, 0.0, 1.0)
            loss0, grad0, wrong0 = evaluate(x_adv, labels, target)
            rows = _new_rows(
                images,
                labels,
                target=target,
                group=group,
                x_adv=x_adv,
                x_old=x_adv,
                grad=grad0,
                step=tf.fill([num_rows], 2.0 * eps),
                x_best=x_adv,
                grad_best=grad0,
                loss_best=loss0,
                x_best_adv=x_adv,
                found=wrong0,
                # The reference counts increases in a [num_steps, B] array of zeros, so the first
                # checkpoint compares the first step's loss with 0, not with the starting loss.
                loss_prev=tf.zeros_like(loss0),
                n_increase=tf.zeros([num_rows], tf.int32),
                loss_best_last_check=loss0,
                reduced_last_check=tf.ones([num_rows], tf.bool),
            )
            out = dict(adv=x_adv, found=tf.zeros([num_rows], tf.bool))

            def result(r):
                return dict(
                    adv=tf.where(_per_example(r["found"]), r["x_best_adv"], r["x_best"]), found=r["found"]
                )

            def retire_found(rows, out):
                return _retire(rows, out, _group_done(rows["found"], rows["group"], num_groups), result)

            rows, out = retire_found(rows, out)
            schedule = dict(i=tf.constant(0), counter=tf.constant(0), k=tf.constant(n_iter_2))

            def cond(schedule, rows, out):
                return tf.logical_and(schedule["i"] < num_steps, tf.size(rows["row"]) > 0)

            def body(schedule, s, out):
                images, x_adv, step = s["images"], s["x_adv"], _per_example(s["step"])
                momentum = tf.where(schedule["i"] > 0, APGD_MOMENTUM, 1.0)
                z = project_linf(x_adv + step * tf.sign(s["grad"]), images, eps)
                x_new = project_linf(
                    x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - s["x_old"]), images, eps
                )
                loss_new, grad_new, wrong = evaluate(x_new, s["labels"], s["target"])

                x_best_adv = tf.where(_per_example(wrong), x_new, s["x_best_adv"])
                improved = loss_new > s["loss_best"]
                x_best = tf.where(_per_example(improved), x_new, s["x_best"])
                grad_best = tf.where(_per_example(improved), grad_new, s["grad_best"])
                loss_best = tf.where(improved, loss_new, s["loss_best"])
                n_increase = s["n_increase"] + tf.cast(loss_new > s["loss_prev"], tf.int32)

                # Checkpoint: halve the step (and restart from the best point) where the loss
                # increased in at most rho * k of the last k steps, or where the step was not
                # halved at the last checkpoint and the best loss has not improved since.
                counter = schedule["counter"] + 1
                k = schedule["k"]
                at_check = tf.equal(counter, k)
                oscillating = tf.cast(n_increase, tf.float32) <= APGD_RHO * tf.cast(k, tf.float32)
                no_improvement = tf.logical_and(
                    tf.logical_not(s["reduced_last_check"]), s["loss_best_last_check"] >= loss_best
                )
                reduce = tf.logical_and(at_check, tf.logical_or(oscillating, no_improvement))
                new = dict(
                    s,
                    x_adv=tf.where(_per_example(reduce), x_best, x_new),
                    x_old=x_adv,
                    grad=tf.where(_per_example(reduce), grad_best, grad_new),
                    step=tf.where(reduce, 0.5 * s["step"], s["step"]),
                    x_best=x_best,
                    grad_best=grad_best,
                    loss_best=loss_best,
                    x_best_adv=x_best_adv,
                    found=tf.logical_or(s["found"], wrong),
                    loss_prev=loss_new,
                    n_increase=tf.where(at_check, 0, n_increase),
                    loss_best_last_check=tf.where(at_check, loss_best, s["loss_best_last_check"]),
                    reduced_last_check=tf.where(
                        at_check, tf.logical_or(oscillating, no_improvement), s["reduced_last_check"]
                    ),
                )
                schedule = dict(
                    i=schedule["i"] + 1,
                    counter=tf.where(at_check, 0, counter),
                    k=tf.where(at_check, tf.maximum(k - size_decr, n_iter_min), k),
                )
                new, out = retire_found(new, out)
                return schedule, new, out

            state = (schedule, rows, out)
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=_invariants(state))
            _, out = _retire(rows, out, tf.ones_like(rows["found"]), result)
            return project_linf(out["adv"], images, eps), out["found"]

        return run

    return builder


def _apgd_run(model_fn: ModelFn, loss: str, num_steps: int, image_shape: tuple):
    key = ("apgd", loss, int(num_steps), tuple(image_shape))
    return _compiled(model_fn, key, _build_apgd(loss, int(num_steps), tuple(image_shape)))


def apgd(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    num_steps: int = 100,
    loss: str = "ce",
    target=None,
    seed: int = 0,
    x_init=None,
) -> tf.Tensor:
    """Auto-PGD (Croce & Hein, 2020), L-inf, one run (restart).

    Step size starts at 2 eps; momentum 0.75 (none on the first step); at checkpoints
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions of num_steps)
    the step size of an example is halved, and it restarts from its best point, if the loss
    increased in at most 75% of the steps since the last checkpoint, or if its step was not halved
    at the last checkpoint and its best loss has not improved since. As in the reference, the
    count of the first checkpoint compares the first step's loss with 0. An example is no longer
    computed on once it is misclassified (the reference keeps iterating; its verdict cannot change).

    Args:
      model_fn: images -> logits.
      images: float32 [B, H, W, C] in [0, 1].
      labels: int [B] true classes.
      eps: L-inf radius.
      num_steps: iterations (gradient evaluations after the one at the starting point).
      loss: ``ce``, ``dlr`` or ``dlr-targeted`` (needs ``target``).
      target: int [B] target classes for ``dlr-targeted``.
      seed: seed of the random start.
      x_init: float32 [B, H, W, C], a starting point instead of the random one (as the reference's
        ``x_init``, it is clipped to [0, 1] but not projected onto the eps-ball).

    Returns:
      float32 [B, H, W, C]: per example, the first misclassified point found if any, else the
      point of highest loss. Within eps of ``images`` and in [0, 1].
    """
    if loss not in APGD_LOSSES:
        raise ValueError(f"Unknown APGD loss {loss!r}; expected one of {APGD_LOSSES}.")
    if loss == "dlr-targeted" and target is None:
        raise ValueError("loss='dlr-targeted' needs target classes.")
    images, labels = _as_inputs(images, labels)
    if len(labels) == 0:
        return tf.convert_to_tensor(images)
    target = labels if target is None else np.asarray(target).astype(np.int32).reshape(-1)
    start = _random_start(images, eps, _seed(seed)) if x_init is None else np.asarray(x_init, np.float32)
    run = _apgd_run(model_fn, loss, num_steps, images.shape[1:])
    adv, _ = run(images, labels, target, np.arange(len(labels), dtype=np.int32), start, eps)
    return adv


def apgd_targeted(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    num_steps: int = 100,
    num_target_classes: int = 9,
    seed: int = 0,
    targets_per_call: Optional[int] = None,
) -> tf.Tensor:
    """APGD-T: APGD on the targeted DLR loss, once per target class.

    The targets are the classes with the 2nd, 3rd, ..., (num_target_classes + 1)-th largest clean
    logit (capped at K - 1 targets). The reference runs one target after the other, each on the
    examples that no earlier target has broken; here ``targets_per_call`` targets at a time run as
    one batch of (example, target) rows (default: all of them), and all rows of an example stop once
    any of them breaks it. The verdict per example is the same; the adversarial example returned is
    that of the first target (in rank order) that broke it.

    Returns:
      float32 [B, H, W, C]: a misclassified point where one was found, else the candidate with
      the largest logit margin max_{i != y} z_i - z_y. Within eps and in [0, 1].
    """
    images, labels = _as_inputs(images, labels)
    run = _apgd_run(model_fn, "dlr-targeted", num_steps, images.shape[1:])
    clean_logits = _logits(model_fn, images)
    adv = images.copy()
    robust = np.argmax(clean_logits, axis=-1) == labels
    targets = _ranked_targets(clean_logits, num_target_classes)
    per_call = max(len(targets), 1) if targets_per_call is None else max(int(targets_per_call), 1)
    best_margin = np.full([len(images)], -np.inf, np.float32)
    for first_rank in range(0, len(targets), per_call):
        idx = np.nonzero(robust)[0]
        if idx.size == 0:
            break
        ranks = range(first_rank, min(first_rank + per_call, len(targets)))
        x, y, t, group = _rows(images[idx], labels[idx], [targets[r][idx] for r in ranks])
        # One random start per (example, target), each target with its own stream, drawn for all
        # examples so that an example's start does not depend on which others are still robust.
        start = np.concatenate([_random_start(images, eps, _seed(seed, r + 1)).numpy()[idx] for r in ranks])
        x_t, found = run(x, y, t, group, start, eps)
        x_t, found = x_t.numpy(), found.numpy()
        broken, first_adv, _ = _first_success(found, x_t, len(ranks))
        adv[idx[broken]] = first_adv[broken]
        # Examples still robust keep the candidate with the largest margin over all targets.
        margin = losses.margin_loss(y, _logits(model_fn, x_t)).numpy().reshape(len(ranks), -1)
        best = np.argmax(margin, axis=0)
        candidate = x_t.reshape(len(ranks), len(idx), *x_t.shape[1:])[best, np.arange(len(idx))]
        better = ~broken & (margin[best, np.arange(len(idx))] > best_margin[idx])
        adv[idx[better]] = candidate[better]
        best_margin[idx[better]] = margin[best, np.arange(len(idx))][better]
        robust[idx[broken]] = False
    return tf.convert_to_tensor(adv)


# --------------------------------------------------------------------------------------------------
# Square attack.


def _build_square(num_queries: int, p_init: float, image_shape: tuple, skip_known: bool = True):
    height, width, channels = image_shape

    def builder(get_model_fn):
        spec = [
            tf.TensorSpec([None, *image_shape], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([2], tf.int64),
        ]

        @tf.function(input_signature=spec)
        def run(images, labels, eps, seed):
            model_fn = get_model_fn()
            num_rows = tf.shape(images)[0]

            def margin(x, labels):  # z_y - max_{i != y} z_i; the attack minimises it
                return -losses.margin_loss(labels, model_fn(x))

            def random_signs(shape, seed):
                return tf.where(tf.random.stateless_uniform(shape, seed=seed) < 0.5, -1.0, 1.0)

            boundaries = tf.constant(SQUARE_P_BOUNDARIES, tf.int32)

            def window_side(i):
                # Fraction of pixels changed: p_init halved after iterations 10, 50, 200, ...
                halvings = tf.reduce_sum(tf.cast(i > boundaries, tf.int32))
                p = p_init / tf.pow(2.0, tf.cast(halvings, tf.float32))
                side = tf.cast(tf.round(tf.sqrt(p * height * width)), tf.int32)
                return tf.clip_by_value(side, 1, min(height, width))

            # Initialisation with vertical stripes: one random sign per column and channel.
            x_best = tf.clip_by_value(
                images + eps * random_signs([num_rows, 1, width, channels], seed), 0.0, 1.0
            )
            # tried[row, top, left, signs]: that proposal (window of the current side at top, left;
            # the vertex of sign vector `signs`, bit c = channel c positive) was rejected at the
            # row's current point, so its margin is known not to be lower.
            known = (
                dict(tried=tf.zeros([num_rows, height, width, 2**channels], tf.bool)) if skip_known else {}
            )
            rows = _new_rows(images, labels, x_best=x_best, margin=margin(x_best, labels), **known)
            out = dict(adv=x_best, margin=rows["margin"])

            def result(r):
                return dict(adv=r["x_best"], margin=r["margin"])

            rows, out = _retire(rows, out, rows["margin"] <= 0, result)
            r_idx = tf.range(height)[None, :]
            c_idx = tf.range(width)[None, :]
            sign_bits = tf.constant([2**c for c in range(channels)], tf.int32)

            def cond(i, rows, out):
                return tf.logical_and(i < num_queries, tf.size(rows["row"]) > 0)

            def body(i, s, out):
                active = tf.shape(s["row"])[0]
                side = window_side(i)
                seeds = tf.random.experimental.stateless_split(
                    tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64)), 3
                )
                top = tf.random.stateless_uniform([active, 1], seeds[0], 0, height - side + 1, tf.int32)
                left = tf.random.stateless_uniform([active, 1], seeds[1], 0, width - side + 1, tf.int32)
                in_rows = tf.logical_and(r_idx >= top, r_idx < top + side)
                in_cols = tf.logical_and(c_idx >= left, c_idx < left + side)
                window = tf.logical_and(in_rows[:, :, None, None], in_cols[:, None, :, None])
                # The window moves to a vertex of the eps-ball: one random sign per channel.
                signs = random_signs([active, 1, 1, channels], seeds[2])
                vertex = tf.clip_by_value(s["images"] + eps * signs, 0.0, 1.0)
                x_new = tf.where(window, vertex, s["x_best"])
                if skip_known:
                    tried = s["tried"]
                    # Proposals whose margin is known are not queried: the window already sits at
                    # the drawn vertex (x_new is x_best), or the same proposal was rejected at the
                    # same point before. Neither can be accepted (a strict decrease is needed).
                    tried = tf.cond(
                        tf.equal(side, window_side(i - 1)), lambda: tried, lambda: tf.zeros_like(tried)
                    )
                    proposal = tf.stack(
                        [
                            tf.range(active),
                            top[:, 0],
                            left[:, 0],
                            tf.reduce_sum(tf.cast(signs[:, 0, 0, :] > 0, tf.int32) * sign_bits, axis=-1),
                        ],
                        axis=1,
                    )
                    unknown = tf.logical_and(
                        tf.reduce_any(tf.not_equal(x_new, s["x_best"]), axis=[1, 2, 3]),
                        tf.logical_not(tf.gather_nd(tried, proposal)),
                    )
                    queried = tf.where(unknown)
                    margin_new = tf.cond(
                        tf.size(queried) > 0,
                        lambda: tf.tensor_scatter_nd_update(
                            s["margin"],
                            queried,
                            margin(tf.gather_nd(x_new, queried), tf.gather_nd(s["labels"], queried)),
                        ),
                        lambda: s["margin"],
                    )
                else:
                    margin_new = margin(x_new, s["labels"])
                accept = margin_new < s["margin"]
                carried = {}
                if skip_known:
                    # This iteration's proposals are rejected at the rows' points, except where
                    # accepted: a new point, where nothing is known yet.
                    tried = tf.tensor_scatter_nd_update(tried, proposal, tf.ones([active], tf.bool))
                    carried = dict(tried=tf.logical_and(tried, tf.logical_not(_per_example(accept))))
                new = dict(
                    s,
                    x_best=tf.where(_per_example(accept), x_new, s["x_best"]),
                    margin=tf.where(accept, margin_new, s["margin"]),
                    **carried,
                )
                new, out = _retire(new, out, new["margin"] <= 0, result)
                return i + 1, new, out

            state = (tf.constant(0), rows, out)
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=_invariants(state))
            _, out = _retire(rows, out, tf.ones_like(rows["margin"], tf.bool), result)
            return project_linf(out["adv"], images, eps), out["margin"] <= 0

        return run

    return builder


def square(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
    skip_known: bool = True,
) -> tf.Tensor:
    """Square attack (Andriushchenko et al., 2020), L-inf, margin loss, one restart.

    Starts from vertical stripes at the vertices of the eps-ball; each iteration moves one random
    square window per example (side round(sqrt(p * H * W)), p = p_init halved after iterations 10,
    50, 200, 500, 1000, 2000, 4000, 6000, 8000: AutoAttack's schedule, not rescaled to
    ``num_queries``) to a random vertex and keeps it if the margin z_y - max_{i != y} z_i decreases.
    As in the reference, ``num_queries`` iterations follow the initial query and an example is no
    longer queried once misclassified. Unlike the reference (one window position and one sign
    vector shared by the batch per iteration) each example draws its own, as in the original Square
    Attack, and the window's top-left corner ranges over all valid positions.

    Many proposals have a margin known without a query, and the reference queries the model on
    them anyway and rejects them: the window already sits at the drawn vertex (the image is
    unchanged), or the same window and vertex was rejected at the same point before (late in the
    attack the window has 2 or 3 pixels a side and few positions, and a robust example rarely
    moves). Here (``skip_known``) only the other rows are queried, which changes no result: a
    proposal is kept only if its margin is strictly lower.

    Args:
      model_fn: images -> logits.
      images: float32 [B, H, W, C] in [0, 1].
      labels: int [B] true classes.
      eps: L-inf radius.
      num_queries: iterations after the initial query.
      p_init: initial fraction of changed pixels.
      seed: seed of the windows and signs.
      skip_known: do not query the model on proposals whose margin is known (False: query every
        row every iteration, as the reference; the same result, for comparisons).

    Returns:
      float32 [B, H, W, C], within eps and in [0, 1].
    """
    images, labels = _as_inputs(images, labels)
    if len(labels) == 0:
        return tf.convert_to_tensor(images)
    key = ("square", int(num_queries), float(p_init), images.shape[1:], bool(skip_known))
    builder = _build_square(int(num_queries), float(p_init), images.shape[1:], bool(skip_known))
    run = _compiled(model_fn, key, builder)
    adv, _ = run(images, labels, tf.constant(eps, tf.float32), _seed(seed))
    return adv


# --------------------------------------------------------------------------------------------------
# FAB-T.


def project_hyperplane_linf(points: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Minimal L-inf step d with w . (points + d) = b and points + d in [0, 1], row by row.

    Where the box makes the hyperplane unreachable, d moves to the box corner that gets closest.

    Args:
      points: float [M, D] in [0, 1].
      w: float [M, D] hyperplane normals.
      b: float [M] offsets.

    Returns:
      float [M, D].
    """
    needed = b - tf.reduce_sum(w * points, axis=-1)
    w = w * tf.where(needed < 0, -1.0, 1.0)[:, None]  # now w . d must increase by |needed|
    needed = tf.abs(needed)
    direction = tf.sign(w)
    room = tf.where(w > 0, 1.0 - points, points)  # how far each coordinate can move
    weight = tf.abs(w)

    def gain(delta):  # increase of w . d for the step of L-inf norm delta: piecewise linear
        return tf.reduce_sum(weight * tf.minimum(delta[:, None], room), axis=-1)

    # Bisection brackets the solution delta of gain(delta) = needed between two breakpoints (CPU
    # sorts are slow); the linear piece then gives it exactly.
    hi = tf.reduce_max(room, axis=-1)
    reachable = gain(hi) >= needed
    lo = tf.zeros_like(hi)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        enough = gain(mid) >= needed
        lo, hi = tf.where(enough, lo, mid), tf.where(enough, mid, hi)
    saturated = room <= lo[:, None]
    saturated_gain = tf.reduce_sum(tf.where(saturated, weight * room, 0.0), axis=-1)
    free_weight = tf.reduce_sum(tf.where(saturated, 0.0, weight), axis=-1)
    delta = (needed - saturated_gain) / tf.maximum(free_weight, 1e-30)
    delta = tf.clip_by_value(delta, lo, hi)
    delta = tf.where(reachable, delta, np.inf)
    return direction * tf.minimum(delta[:, None], room)


def _build_fab(num_steps: int, image_shape: tuple):
    def builder(get_model_fn):
        spec = [
            tf.TensorSpec([None, *image_shape], tf.float32),  # images
            tf.TensorSpec([None], tf.int32),  # labels
            tf.TensorSpec([None], tf.int32),  # target classes
            tf.TensorSpec([None], tf.int32),  # group: rows of one example stop together
            tf.TensorSpec([], tf.float32),  # stop_below
        ]

        @tf.function(input_signature=spec)
        def run(images, labels, target, group, stop_below):
            model_fn = get_model_fn()
            num_rows = tf.shape(images)[0]
            num_groups = tf.reduce_max(group) + 1
            rows = _new_rows(
                images,
                labels,
                target=target,
                group=group,
                x=images,
                adv=images,
                best_norm=tf.fill([num_rows], tf.constant(1e10, tf.float32)),
            )
            out = dict(adv=images, best_norm=rows["best_norm"])

            def result(r):
                return dict(adv=r["adv"], best_norm=r["best_norm"])

            def cond(i, rows, out):
                return tf.logical_and(i < num_steps, tf.size(rows["row"]) > 0)

            def body(i, s, out):
                active = tf.shape(s["row"])[0]
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(s["x"])
                    logits = model_fn(s["x"])
                    # f = z_t - z_y >= 0 where the target (or another class) wins.
                    diff = tf.gather(logits, s["target"], batch_dims=1) - tf.gather(
                        logits, s["labels"], batch_dims=1
                    )
                    total = tf.reduce_sum(diff)
                grad = tf.reshape(tape.gradient(total, s["x"]), [active, -1])
                x_flat = tf.reshape(s["x"], [active, -1])
                x0 = tf.reshape(s["images"], [active, -1])
                # Linearised decision hyperplane {z: grad . z = grad . x - f(x)}; project the
                # current iterate and the original image onto it.
                offset = tf.reduce_sum(grad * x_flat, axis=-1) - diff
                d = project_hyperplane_linf(
                    tf.concat([x_flat, x0], 0), tf.concat([grad, grad], 0), tf.concat([offset, offset], 0)
                )
                norms = tf.maximum(tf.reduce_max(tf.abs(d), axis=-1), 1e-8)
                d_x, d_0 = d[:active], d[active:]
                n_x, n_0 = norms[:active], norms[active:]
                alpha = tf.clip_by_value(n_x / (n_x + n_0), 0.0, FAB_ALPHA_MAX)[:, None]
                x_flat = tf.clip_by_value(
                    (x_flat + FAB_ETA * d_x) * (1.0 - alpha) + (x0 + FAB_ETA * d_0) * alpha, 0.0, 1.0
                )
                x = tf.reshape(x_flat, [-1, *image_shape])
                predicted = tf.argmax(model_fn(x), axis=-1, output_type=tf.int32)
                wrong = tf.not_equal(predicted, s["labels"])
                norm = tf.reduce_max(tf.abs(x_flat - x0), axis=-1)
                better = tf.logical_and(wrong, norm < s["best_norm"])
                best_norm = tf.where(better, norm, s["best_norm"])
                new = dict(
                    s,
                    adv=tf.where(_per_example(better), x, s["adv"]),
                    best_norm=best_norm,
                    # Past the boundary: step back towards the original image (bias to small norms).
                    x=tf.where(_per_example(wrong), s["images"] + FAB_BETA * (x - s["images"]), x),
                )
                new, out = _retire(
                    new, out, _group_done(best_norm <= stop_below, s["group"], num_groups), result
                )
                return i + 1, new, out

            state = (tf.constant(0), rows, out)
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=_invariants(state))
            _, out = _retire(rows, out, tf.ones_like(rows["group"], tf.bool), result)
            return out["adv"], out["best_norm"]

        return run

    return builder


def _fab_run(model_fn: ModelFn, num_steps: int, image_shape: tuple):
    key = ("fab", int(num_steps), tuple(image_shape))
    return _compiled(model_fn, key, _build_fab(int(num_steps), tuple(image_shape)))


def fab_minimal_perturbation(
    model_fn: ModelFn, images, labels, target, num_steps: int = 100, stop_below: float = 0.0
) -> tuple:
    """One FAB-T run towards ``target``: the smallest L-inf adversarial perturbation it finds.

    Each of num_steps iterations linearises f = z_t - z_y, projects both the iterate and the
    original image onto the linearised boundary (exact L-inf projection within [0, 1]), steps to
    the convex combination (extrapolation eta = 1.05, weight of the original at most
    alpha_max = 0.1) and, once misclassified, shrinks towards the original by beta = 0.9. No random
    start.

    Args:
      model_fn: images -> logits.
      images: float32 [B, H, W, C] in [0, 1].
      labels: int [B] true classes.
      target: int [B] target classes.
      num_steps: iterations.
      stop_below: an example is no longer computed on once it has an adversarial point of norm
        <= stop_below (the reference runs every iteration).

    Returns:
      (adversarial float32 [B, H, W, C], L-inf norms float32 [B]): per example the misclassified
      point of smallest norm found (any class but the true one), or the image with norm 1e10 where
      none was found.
    """
    images, labels = _as_inputs(images, labels)
    if len(labels) == 0:
        return tf.convert_to_tensor(images), tf.zeros([0], tf.float32)
    target = np.asarray(target).astype(np.int32).reshape(-1)
    run = _fab_run(model_fn, num_steps, images.shape[1:])
    return run(images, labels, target, np.arange(len(labels), dtype=np.int32), stop_below)


def fab_targeted(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    num_steps: int = 100,
    num_target_classes: int = 9,
    seed: int = 0,
    targets_per_call: Optional[int] = None,
) -> tf.Tensor:
    """FAB-T (Croce & Hein, 2020), L-inf: ``fab_minimal_perturbation`` once per target class.

    As in AutoAttack's standard version there is no random start (1 restart per target); targets
    are the 2nd, ..., (num_target_classes + 1)-th largest clean logits, and an example counts as
    broken, as in the reference, where the smallest misclassified point found has an L-inf norm of
    at most eps. ``targets_per_call`` targets run at a time as one batch of (example, target) rows
    (default: all), and all rows of an example stop once one of them is within eps. ``seed`` is
    unused (FAB-T with one restart is deterministic) and kept for a uniform signature.

    Returns:
      float32 [B, H, W, C]: for broken examples the adversarial point of the first target (in rank
      order) that broke them, else the clean image.
    """
    del seed
    images, labels = _as_inputs(images, labels)
    run = _fab_run(model_fn, num_steps, images.shape[1:])
    clean_logits = _logits(model_fn, images)
    adv = images.copy()
    robust = np.argmax(clean_logits, axis=-1) == labels
    targets = _ranked_targets(clean_logits, num_target_classes)
    per_call = max(len(targets), 1) if targets_per_call is None else max(int(targets_per_call), 1)
    for first_rank in range(0, len(targets), per_call):
        idx = np.nonzero(robust)[0]
        if idx.size == 0:
            break
        ranks = range(first_rank, min(first_rank + per_call, len(targets)))
        x, y, t, group = _rows(images[idx], labels[idx], [targets[r][idx] for r in ranks])
        x_t, norms = run(x, y, t, group, eps)
        broken, first_adv, _ = _first_success(norms.numpy() <= eps, x_t.numpy(), len(ranks))
        adv[idx[broken]] = first_adv[broken]
        robust[idx[broken]] = False
    return tf.convert_to_tensor(adv)


# --------------------------------------------------------------------------------------------------
# The ensemble.


def run_autoattack(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    attacks: Sequence[str] = ATTACKS,
    seed: int = 0,
    batch_size: Optional[int] = None,
    num_steps: int = 100,
    num_target_classes: int = 9,
    fab_steps: int = 100,
    num_queries: int = 5000,
    p_init: float = 0.8,
    log: Optional[Callable[[str], None]] = None,
    targets_per_call: Optional[int] = None,
) -> Dict[str, object]:
    """Runs the attacks in order, each only on the examples that are still robust.

    Defaults are AutoAttack's "standard" L-inf version. Clean-misclassified examples count as
    broken (their adversarial example is the clean image). With ``log``, reports progress as the
    reference's log does: the clean accuracy, then after each chunk of ``batch_size`` examples how
    many the attack broke, and after each attack the robust accuracy and the time so far.

    Args:
      model_fn: images -> logits.
      images: float32 [N, H, W, C] in [0, 1].
      labels: int [N].
      eps: L-inf radius.
      attacks: names from ``ATTACKS``, run in the given order.
      seed: seed of the randomised attacks.
      batch_size: examples per attack call (None: all still-robust examples at once). APGD-T and
        FAB-T attack ``targets_per_call`` targets of each example in one batch, so their batches
        have up to batch_size * targets_per_call rows.
      num_steps: APGD iterations.
      num_target_classes: targets of APGD-T and FAB-T.
      fab_steps: FAB-T iterations.
      num_queries: Square queries.
      p_init: Square's initial fraction of changed pixels.
      log: called with one line of progress at a time (e.g. ``print``); None is quiet.
      targets_per_call: target classes of APGD-T and FAB-T attacked in one batch (None: all).

    Returns:
      dict with ``robust`` (bool [N], worst case over the attacks run), ``per_attack`` ({name:
      bool [N] robust after that attack, cumulative}), ``adversarial`` (float32 [N, H, W, C]),
      ``seconds`` ({name: wall time}) and ``clean`` (bool [N], correctly classified).
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attacks {unknown}; expected names from {ATTACKS}.")
    images, labels = _as_inputs(images, labels)
    attack_fns = {
        "apgd-ce": lambda x, y: apgd(model_fn, x, y, eps, num_steps=num_steps, loss="ce", seed=seed),
        "apgd-t": lambda x, y: apgd_targeted(
            model_fn,
            x,
            y,
            eps,
            num_steps=num_steps,
            num_target_classes=num_target_classes,
            seed=seed,
            targets_per_call=targets_per_call,
        ),
        "fab-t": lambda x, y: fab_targeted(
            model_fn,
            x,
            y,
            eps,
            num_steps=fab_steps,
            num_target_classes=num_target_classes,
            targets_per_call=targets_per_call,
        ),
        "square": lambda x, y: square(model_fn, x, y, eps, num_queries=num_queries, p_init=p_init, seed=seed),
    }
    log = log or (lambda message: None)
    first = time.perf_counter()
    clean = np.argmax(_logits(model_fn, images), axis=-1) == labels
    robust = clean.copy()
    adversarial = images.copy()
    per_attack, seconds = {}, {}
    n = len(labels)
    log(f"clean accuracy: {np.mean(clean) if n else 0.0:.2%} ({int(np.sum(clean))}/{n})")
    for name in attacks:
        start = time.perf_counter()
        todo = np.nonzero(robust)[0]
        step = len(todo) if batch_size is None else int(batch_size)
        chunks = -(-len(todo) // max(step, 1))
        for chunk, begin in enumerate(range(0, len(todo), max(step, 1))):
            idx = todo[begin : begin + step]
            x_adv = np.asarray(attack_fns[name](images[idx], labels[idx]), np.float32)
            x_adv = np.asarray(project_linf(x_adv, images[idx], eps))  # guard the constraint
            broken = np.argmax(_logits(model_fn, x_adv), axis=-1) != labels[idx]
            adversarial[idx[broken]] = x_adv[broken]
            robust[idx[broken]] = False
            if chunks > 1:
                log(
                    f"{name} - {chunk + 1}/{chunks} - {int(np.sum(broken))} out of {len(idx)} "
                    f"successfully perturbed ({time.perf_counter() - start:.1f} s)"
                )
        per_attack[name] = robust.copy()
        seconds[name] = time.perf_counter() - start
        log(
            f"robust accuracy after {name.upper()}: {np.mean(robust) if n else 0.0:.2%} "
            f"({int(np.sum(robust))}/{n} still robust; {seconds[name]:.1f} s, total "
            f"{time.perf_counter() - first:.1f} s)"
        )
    return {
        "robust": robust,
        "per_attack": per_attack,
        "adversarial": adversarial,
        "seconds": seconds,
        "clean": clean,
    }
