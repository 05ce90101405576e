"""Square (Andriushchenko et al., ECCV 2020): score-based random search on the margin, L-inf."""

from __future__ import annotations

import tensorflow as tf

from jarn_tf.jarn import losses
from jarn_tf.robustness.attacks import project_linf
from jarn_tf.robustness.autoattack.common import (
    ModelFn,
    as_inputs,
    broadcast_per_example,
    compiled_for,
    new_rows,
    retire_rows,
    shrinking_invariants,
    stream_seed,
)

# Square: iterations after which the fraction p of changed pixels is halved.
SQUARE_P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


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
            rows = new_rows(images, labels, x_best=x_best, margin=margin(x_best, labels), **known)
            out = dict(adv=x_best, margin=rows["margin"])

            def result(r):
                return dict(adv=r["x_best"], margin=r["margin"])

            rows, out = retire_rows(rows, out, rows["margin"] <= 0, result)
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
                    carried = dict(tried=tf.logical_and(tried, tf.logical_not(broadcast_per_example(accept))))
                new = dict(
                    s,
                    x_best=tf.where(broadcast_per_example(accept), x_new, s["x_best"]),
                    margin=tf.where(accept, margin_new, s["margin"]),
                    **carried,
                )
                new, out = retire_rows(new, out, new["margin"] <= 0, result)
                return i + 1, new, out

            state = (tf.constant(0), rows, out)
            _, rows, out = tf.while_loop(cond, body, state, shape_invariants=shrinking_invariants(state))
            _, out = retire_rows(rows, out, tf.ones_like(rows["margin"], tf.bool), result)
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
    images, labels = as_inputs(images, labels)
    if len(labels) == 0:
        return tf.convert_to_tensor(images)
    key = ("square", int(num_queries), float(p_init), images.shape[1:], bool(skip_known))
    builder = _build_square(int(num_queries), float(p_init), images.shape[1:], bool(skip_known))
    run = compiled_for(model_fn, key, builder)
    adv, _ = run(images, labels, tf.constant(eps, tf.float32), stream_seed(seed))
    return adv
