"""FAB (Croce & Hein, ICML 2020): the minimal L-inf perturbation (``fab_minimal_perturbation``) and
the targeted FAB-T of the AutoAttack ensemble (``fab_targeted``)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from jarn_tf.robustness.autoattack.common import (
    ModelFn,
    as_inputs,
    batched_logits,
    broadcast_per_example,
    compiled_for,
    first_success,
    group_done,
    new_rows,
    ranked_targets,
    retire_rows,
    shrinking_invariants,
    target_rows,
)

# FAB constants of the reference (FABAttack defaults).
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9


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
            rows = new_rows(
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
                    adv=tf.where(broadcast_per_example(better), x, s["adv"]),
                    best_norm=best_norm,
                    # Past the boundary: step back towards the original image (bias to small norms).
                    x=tf.where(broadcast_per_example(wrong), s["images"] + FAB_BETA * (x - s["images"]), x),
                )
                new, out = retire_rows(
                    new, out, group_done(best_norm <= stop_below, s["group"], num_groups), result
                )
                return i + 1, new, out

            state = (tf.constant(0), rows, out)
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=shrinking_invariants(state))
            _, out = retire_rows(rows, out, tf.ones_like(rows["group"], tf.bool), result)
            return out["adv"], out["best_norm"]

        return run

    return builder


def _fab_run(model_fn: ModelFn, num_steps: int, image_shape: tuple):
    key = ("fab", int(num_steps), tuple(image_shape))
    return compiled_for(model_fn, key, _build_fab(int(num_steps), tuple(image_shape)))


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
    images, labels = as_inputs(images, labels)
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
    images, labels = as_inputs(images, labels)
    run = _fab_run(model_fn, num_steps, images.shape[1:])
    clean_logits = batched_logits(model_fn, images)
    adv = images.copy()
    robust = np.argmax(clean_logits, axis=-1) == labels
    targets = ranked_targets(clean_logits, num_target_classes)
    per_call = max(len(targets), 1) if targets_per_call is None else max(int(targets_per_call), 1)
    for first_rank in range(0, len(targets), per_call):
        idx = np.nonzero(robust)[0]
        if idx.size == 0:
            break
        ranks = range(first_rank, min(first_rank + per_call, len(targets)))
        x, y, t, group = target_rows(images[idx], labels[idx], [targets[r][idx] for r in ranks])
        x_t, norms = run(x, y, t, group, eps)
        broken, first_adv, _ = first_success(norms.numpy() <= eps, x_t.numpy(), len(ranks))
        adv[idx[broken]] = first_adv[broken]
        robust[idx[broken]] = False
    return tf.convert_to_tensor(adv)
