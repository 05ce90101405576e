"""L-inf gradient attacks in [0, 1] pixel units: FGSM and PGD.

Used by adversarial training (inside the compiled training step) and by the
evaluation. ``model_fn`` maps images in [0, 1] to logits; attacks never
update model state (callers pass ``training=False``).
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from jarn_tf.jarn import losses

ATTACK_LOSSES = {"xent": losses.cross_entropy, "margin": losses.margin_loss}

ModelFn = Callable[[tf.Tensor], tf.Tensor]


def project_linf(x: tf.Tensor, center: tf.Tensor, eps: float) -> tf.Tensor:
    """Projects onto the L-inf ball of radius eps around center, then [0, 1]."""
    x = tf.clip_by_value(x, center - eps, center + eps)
    return tf.clip_by_value(x, 0.0, 1.0)


def loss_gradient(
    model_fn: ModelFn, x: tf.Tensor, labels: tf.Tensor, loss: str = "xent"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example attack loss and its gradient with respect to the input.

    Args:
      model_fn: images -> logits.
      x: float32 [B, H, W, C].
      labels: int [B].
      loss: ``xent`` or ``margin``.

    Returns:
      (per-example loss [B], gradient [B, H, W, C]).
    """
    loss_fn = ATTACK_LOSSES[loss]
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_example = loss_fn(labels, model_fn(x))
        # Summing keeps each example's gradient its own.
        total = tf.reduce_sum(per_example)
    return per_example, tape.gradient(total, x)


def pgd(
    model_fn: ModelFn,
    images: tf.Tensor,
    labels: tf.Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    random_start: bool = True,
    loss: str = "xent",
    seed: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """Projected gradient ascent with sign steps (Madry et al., 2018).

    Args:
      model_fn: images in [0, 1] -> logits.
      images: float32 [B, H, W, C] in [0, 1].
      labels: int [B] true classes.
      eps: L-inf radius in [0, 1] units (a float or a scalar tensor).
      step_size: size of each sign step (a float or a scalar tensor).
      num_steps: number of steps; 1 step of size eps without random start is
        FGSM.
      random_start: start from a uniform point of the eps-ball.
      loss: ``xent`` (cross-entropy) or ``margin`` (CW margin).
      seed: int [2] seed for a stateless random start; None uses the global
        generator.

    Returns:
      Adversarial images, within eps of ``images`` and in [0, 1]; no gradient
      flows back through them.
    """
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"Unknown attack loss {loss!r}; expected one of {sorted(ATTACK_LOSSES)}.")
    images = tf.convert_to_tensor(images, tf.float32)
    x = images
    # eps may be a tensor (e.g. an eps warm-up during training): then the
    # random start is always drawn (of width 0 when eps is 0).
    if random_start and (not isinstance(eps, (int, float)) or eps > 0):
        shape = tf.shape(images)
        if seed is None:
            noise = tf.random.uniform(shape, -eps, eps)
        else:
            noise = tf.random.stateless_uniform(shape, seed=seed, minval=-eps, maxval=eps)
        x = project_linf(images + noise, images, eps)

    def body(i, x):
        _, grad = loss_gradient(model_fn, x, labels, loss)
        x = x + step_size * tf.sign(grad)
        return i + 1, project_linf(x, images, eps)

    _, x = tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), x))
    return tf.stop_gradient(x)


def fgsm(
    model_fn: ModelFn, images: tf.Tensor, labels: tf.Tensor, eps: float, loss: str = "xent"
) -> tf.Tensor:
    """Fast gradient sign method: one step of size eps, no random start."""
    return pgd(model_fn, images, labels, eps, eps, 1, random_start=False, loss=loss)
