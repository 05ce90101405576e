"""APGD (Croce & Hein, ICML 2020): APGD-CE (``apgd`` on cross-entropy) and APGD-T (``apgd_targeted``
on the targeted DLR loss), with the DLR losses."""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from jarn_tf.jarn import losses
from jarn_tf.robustness.attacks import project_linf
from jarn_tf.robustness.autoattack.common import (
    ModelFn,
    as_inputs,
    batched_logits,
    broadcast_per_example,
    compiled_for,
    first_success,
    group_done,
    new_rows,
    random_start,
    ranked_targets,
    retire_rows,
    shrinking_invariants,
    stream_seed,
    target_rows,
)

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")

# APGD constants of the reference: momentum, step-size halving threshold, checkpoint fractions.
APGD_MOMENTUM = 0.75
APGD_RHO = 0.75


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


def attack_loss(name: str, labels: tf.Tensor, target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    if name == "ce":
        return losses.cross_entropy(labels, logits)
    if name == "dlr":
        return dlr_loss(labels, logits)
    return dlr_loss_targeted(labels, target, logits)


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
                    per_example = attack_loss(loss, labels, target, logits)
                    total = tf.reduce_sum(per_example)  # each example's gradient stays its own
                grad = tape.gradient(total, x)
                wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
                return per_example, grad, wrong

            num_rows = tf.shape(images)[0]
            num_groups = tf.reduce_max(group) + 1
            # As the reference, the starting point is only clipped to the image range.
            x_adv = tf.clip_by_value(start, 0.0, 1.0)
            loss0, grad0, wrong0 = evaluate(x_adv, labels, target)
            rows = new_rows(
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
                    adv=tf.where(broadcast_per_example(r["found"]), r["x_best_adv"], r["x_best"]), found=r["found"]
                )

            def retire_found(rows, out):
                return retire_rows(rows, out, group_done(rows["found"], rows["group"], num_groups), result)

            rows, out = retire_found(rows, out)
            schedule = dict(i=tf.constant(0), counter=tf.constant(0), k=tf.constant(n_iter_2))

            def cond(schedule, rows, out):
                return tf.logical_and(schedule["i"] < num_steps, tf.size(rows["row"]) > 0)

            def body(schedule, s, out):
                images, x_adv, step = s["images"], s["x_adv"], broadcast_per_example(s["step"])
                momentum = tf.where(schedule["i"] > 0, APGD_MOMENTUM, 1.0)
                z = project_linf(x_adv + step * tf.sign(s["grad"]), images, eps)
                x_new = project_linf(
                    x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - s["x_old"]), images, eps
                )
                loss_new, grad_new, wrong = evaluate(x_new, s["labels"], s["target"])

                x_best_adv = tf.where(broadcast_per_example(wrong), x_new, s["x_best_adv"])
                improved = loss_new > s["loss_best"]
                x_best = tf.where(broadcast_per_example(improved), x_new, s["x_best"])
                grad_best = tf.where(broadcast_per_example(improved), grad_new, s["grad_best"])
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
                    x_adv=tf.where(broadcast_per_example(reduce), x_best, x_new),
                    x_old=x_adv,
                    grad=tf.where(broadcast_per_example(reduce), grad_best, grad_new),
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
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=shrinking_invariants(state))
            _, out = retire_rows(rows, out, tf.ones_like(rows["found"]), result)
            return project_linf(out["adv"], images, eps), out["found"]

        return run

    return builder


def _apgd_run(model_fn: ModelFn, loss: str, num_steps: int, image_shape: tuple):
    key = ("apgd", loss, int(num_steps), tuple(image_shape))
    return compiled_for(model_fn, key, _build_apgd(loss, int(num_steps), tuple(image_shape)))


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
    images, labels = as_inputs(images, labels)
    if len(labels) == 0:
        return tf.convert_to_tensor(images)
    target = labels if target is None else np.asarray(target).astype(np.int32).reshape(-1)
    start = random_start(images, eps, stream_seed(seed)) if x_init is None else np.asarray(x_init, np.float32)
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
    images, labels = as_inputs(images, labels)
    run = _apgd_run(model_fn, "dlr-targeted", num_steps, images.shape[1:])
    clean_logits = batched_logits(model_fn, images)
    adv = images.copy()
    robust = np.argmax(clean_logits, axis=-1) == labels
    targets = ranked_targets(clean_logits, num_target_classes)
    per_call = max(len(targets), 1) if targets_per_call is None else max(int(targets_per_call), 1)
    best_margin = np.full([len(images)], -np.inf, np.float32)
    for first_rank in range(0, len(targets), per_call):
        idx = np.nonzero(robust)[0]
        if idx.size == 0:
            break
        ranks = range(first_rank, min(first_rank + per_call, len(targets)))
        x, y, t, group = target_rows(images[idx], labels[idx], [targets[r][idx] for r in ranks])
        # One random start per (example, target), each target with its own stream, drawn for all
        # examples so that an example's start does not depend on which others are still robust.
        start = np.concatenate([random_start(images, eps, stream_seed(seed, r + 1)).numpy()[idx] for r in ranks])
        x_t, found = run(x, y, t, group, start, eps)
        x_t, found = x_t.numpy(), found.numpy()
        broken, first_adv, _ = first_success(found, x_t, len(ranks))
        adv[idx[broken]] = first_adv[broken]
        # Examples still robust keep the candidate with the largest margin over all targets.
        margin = losses.margin_loss(y, batched_logits(model_fn, x_t)).numpy().reshape(len(ranks), -1)
        best = np.argmax(margin, axis=0)
        candidate = x_t.reshape(len(ranks), len(idx), *x_t.shape[1:])[best, np.arange(len(idx))]
        better = ~broken & (margin[best, np.arange(len(idx))] > best_margin[idx])
        adv[idx[better]] = candidate[better]
        best_margin[idx[better]] = margin[best, np.arange(len(idx))][better]
        robust[idx[broken]] = False
    return tf.convert_to_tensor(adv)
