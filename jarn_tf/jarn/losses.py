"""Loss functions of JARN, adversarial training and the baselines.

Every function returns PER-EXAMPLE values (shape [B]) unless its name says
otherwise; the training step reduces them with ``sum * 1/global_batch_size``
so that the gradients all-reduced (summed) across replicas equal the gradient
of the mean over the global batch. Image-space tensors are NHWC in [0, 1].
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from jarn_tf.config import JACOBIAN_KINDS

# Discriminator labels: 0 = adapted Jacobian ("fake"), 1 = image ("real").
FAKE_LABEL = 0
REAL_LABEL = 1


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy.

    Args:
      labels: int [B] class indices.
      logits: float [B, K].

    Returns:
      float32 [B].
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def margin_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example Carlini-Wagner margin: max_{j != y} z_j - z_y.

    Positive means misclassified. Attacks maximise it.

    Args:
      labels: int [B].
      logits: float [B, K].

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=logits.dtype)
    true_logit = tf.reduce_sum(onehot * logits, axis=-1)
    other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
    return other - true_logit


def log_odds_against_true_class(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example u = log sum_{k != y} exp(z_k - z_y) = log((1 - p_y) / p_y).

    Cross-entropy is softplus(u) and p_y is exp(-softplus(u)), with the same values as the softmax forms,
    but their derivatives stay accurate where the example is confidently right. The softmax forms
    differentiate through p_y - 1, which float32 rounds to a multiple of 2^-24 (to 0 once p_y rounds
    to 1): their first derivative, J, is then off by up to 100%, and their second derivative (JARN's
    and double backprop's gradient through J) carries a rounding error of about 2^-24 |dz/dtheta|
    against a true value of about (1 - p_y) |dz/dtheta|. On a classifier that fits its batch
    (1 - p_y ~ 1e-17), that made the first JARN step's classifier gradient ~1e11-1e24 and every loss
    NaN. Here 1 - p_y (softplus' derivative sigmoid(u)) and the softmax over the other classes are
    computed directly.

    Args:
      labels: int [B].
      logits: float [B, K].

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], on_value=True, off_value=False)
    true_logit = tf.reduce_sum(tf.where(onehot, logits, 0.0), axis=-1, keepdims=True)
    others = tf.where(onehot, tf.constant(-float("inf"), tf.float32), logits - true_logit)
    return tf.reduce_logsumexp(others, axis=-1)


def true_class_probability(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example softmax probability of the true class, shape [B].

    Computed as exp(-softplus(u)) (see ``log_odds_against_true_class``): TensorFlow differentiates
    sigmoid(-u) through its output p_y as p_y (1 - p_y), which is 0 once p_y rounds to 1, whereas
    softplus' derivative sigmoid(u) = 1 - p_y is computed from u.
    """
    return tf.exp(-tf.nn.softplus(log_odds_against_true_class(labels, logits)))


def jacobian_objective(labels: tf.Tensor, logits: tf.Tensor, kind: str) -> tf.Tensor:
    """The per-example scalar whose input gradient is JARN's Jacobian J.

    Both kinds are written through ``log_odds_against_true_class``, so that J and the gradients
    through it (double backpropagation) are accurate for confidently classified examples too.

    Args:
      labels: int [B].
      logits: float [B, K].
      kind: ``xent`` for J = d L_cls / dx (paper, eq. 6) or ``prob`` for
        J = d softmax_y / dx (the authors' release).

    Returns:
      float32 [B]. Summed over the batch and differentiated w.r.t. the input,
      it gives each example's own Jacobian (examples do not interact, except
      through batch norm's batch statistics in training mode).
    """
    if kind == "xent":
        return tf.nn.softplus(log_odds_against_true_class(labels, logits))
    if kind == "prob":
        return true_class_probability(labels, logits)
    raise ValueError(f"Unknown Jacobian kind {kind!r}; expected one of {JACOBIAN_KINDS}.")


def standardize_per_example(x: tf.Tensor, epsilon: float = 1e-12) -> tf.Tensor:
    """Zero mean and unit L2 norm over H, W, C, per example (as the reference).

    Args:
      x: float [B, H, W, C].
      epsilon: guards the norm of a constant input.

    Returns:
      float [B, H, W, C].
    """
    x = x - tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2, 3], keepdims=True) + epsilon)
    return x / norm


def jacobian_image_cosine(jacobian: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Per-example |cos| between the standardised Jacobian and image.

    What JARN's discriminator compares: both are mean-centred and
    L2-normalised over H, W, C, so this is |<s(J), s(x)>|. 1 means J is the
    image up to brightness and scale (the adaptor can flip the sign, hence
    the absolute value); about 0 means unrelated.

    Args:
      jacobian: float [B, H, W, C].
      images: float [B, H, W, C].

    Returns:
      float32 [B] in [0, 1].

    A classifier that standardises its input per image (ours and the
    release's: subtract the mean, divide by the L2 norm) is invariant to
    x -> a x + b, so its J satisfies <J, x> = 0 and <J, 1> = 0 exactly
    (differentiate f(a x + b) = f(x) in a and b): this cosine and
    ``jacobian_alignment`` are then 0 up to rounding for every such model,
    JARN or not. ``saliency_image_cosine`` is the measure that can move.
    """
    return tf.abs(cosine_similarity(jacobian, images))


def cosine_similarity(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Per-example cosine between the standardised (centred, L2-normalised) a and b, shape [B]."""
    a = standardize_per_example(tf.cast(a, tf.float32))
    b = standardize_per_example(tf.cast(b, tf.float32))
    return tf.reduce_sum(a * b, axis=[1, 2, 3])


def saliency_image_cosine(jacobian: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Per-example cosine between the standardised |J| and the standardised image.

    Whether the gradient's magnitude sits where the image is bright (a
    saliency map that looks like the image): positive when it does, about 0
    when unrelated. Unlike ``jacobian_image_cosine`` it is not forced to 0 by
    an input standardisation (see there).

    Args:
      jacobian: float [B, H, W, C].
      images: float [B, H, W, C].

    Returns:
      float32 [B] in [-1, 1].
    """
    return cosine_similarity(tf.abs(tf.cast(jacobian, tf.float32)), images)


def jacobian_alignment(jacobian: tf.Tensor, images: tf.Tensor, epsilon: float = 1e-12) -> tf.Tensor:
    """Per-example alignment |<x, J>| / ||J||_2 of Etmann et al. (2019).

    The length of the image's projection on the gradient direction, in the
    images' units ([0, 1] pixels): at most ||x||_2, reached when J is a
    multiple of x. Etmann et al. bound a model's linearised robustness by it
    (with J the gradient of the predicted class's logit; here J is the
    configured Jacobian, whose direction for ``xent`` and ``prob`` is the
    same up to sign).

    Args:
      jacobian: float [B, H, W, C].
      images: float [B, H, W, C].
      epsilon: guards a zero Jacobian.

    Returns:
      float32 [B].
    """
    j = tf.cast(jacobian, tf.float32)
    x = tf.cast(images, tf.float32)
    dot = tf.reduce_sum(j * x, axis=[1, 2, 3])
    return tf.abs(dot) / tf.sqrt(tf.reduce_sum(tf.square(j), axis=[1, 2, 3]) + epsilon)


def discriminator_cross_entropy(fake_logits: tf.Tensor, real_logits: tf.Tensor) -> tf.Tensor:
    """Per-example 2-class cross-entropy of the JARN discriminator.

    The reference feeds the discriminator one batch of adapted Jacobians
    (label 0) and the batch's images (label 1) and minimises softmax
    cross-entropy; -mean(xent) is L_adv of the paper's eq. (9).

    Args:
      fake_logits: [B, 2] logits on adapted Jacobians.
      real_logits: [B, 2] logits on images.

    Returns:
      float32 [2B]: fake examples first, then real ones.
    """
    fake = cross_entropy(tf.fill(tf.shape(fake_logits)[:1], FAKE_LABEL), fake_logits)
    real = cross_entropy(tf.fill(tf.shape(real_logits)[:1], REAL_LABEL), real_logits)
    return tf.concat([fake, real], axis=0)


def jarn_adversarial_loss(fake_logits: tf.Tensor, real_logits: tf.Tensor) -> tf.Tensor:
    """Per-example L_adv = log D(x) + log(1 - D(J')) of the paper's eq. (9).

    The classifier and adaptor minimise it (fool the discriminator), the
    discriminator maximises it. Its mean over the batch equals minus the
    discriminator's mean cross-entropy over its 2B inputs (the reference's
    ``-disc_xent``), so pair i (J'_i, x_i) contributes
    ``-(xent_fake_i + xent_real_i) / 2``.

    Args:
      fake_logits: [B, 2] discriminator logits on adapted Jacobians.
      real_logits: [B, 2] discriminator logits on the images.

    Returns:
      float32 [B].
    """
    xent = discriminator_cross_entropy(fake_logits, real_logits)
    fake, real = tf.split(xent, 2, axis=0)
    return -0.5 * (fake + real)


def jarn_generator_loss(fake_logits: tf.Tensor, real_logits: tf.Tensor, kind: str) -> tf.Tensor:
    """Per-example adversarial term the classifier and adaptor minimise.

    Args:
      fake_logits: [B, 2] discriminator logits on adapted Jacobians.
      real_logits: [B, 2] discriminator logits on the images.
      kind: ``minimax``: L_adv itself (the paper's eq. 9, Algorithm 1), whose
        gradient vanishes once the discriminator confidently rejects J'
        (log(1 - D(J')) saturates); ``non_saturating``: -log D(J') / 2
        (Goodfellow et al., 2014), the usual GAN remedy, with the same
        scale as the minimax term's J' half.

    Returns:
      float32 [B].
    """
    if kind == "minimax":
        return jarn_adversarial_loss(fake_logits, real_logits)
    if kind == "non_saturating":
        return 0.5 * cross_entropy(tf.fill(tf.shape(fake_logits)[:1], REAL_LABEL), fake_logits)
    raise ValueError(f"Unknown JARN generator loss {kind!r}; expected minimax or non_saturating.")


def discriminator_accuracy(fake_logits: tf.Tensor, real_logits: tf.Tensor) -> tf.Tensor:
    """Per-example 0/1 correctness of the discriminator, shape [2B]."""
    fake = tf.equal(tf.argmax(fake_logits, axis=-1), FAKE_LABEL)
    real = tf.equal(tf.argmax(real_logits, axis=-1), REAL_LABEL)
    return tf.cast(tf.concat([fake, real], axis=0), tf.float32)


def input_gradient_penalty(jacobian: tf.Tensor) -> tf.Tensor:
    """Per-example squared Frobenius norm ||d L / dx||_F^2 (double backprop).

    Args:
      jacobian: float [B, H, W, C], each example's input gradient.

    Returns:
      float32 [B].
    """
    return tf.reduce_sum(tf.square(tf.cast(jacobian, tf.float32)), axis=[1, 2, 3])


def l2_weight_decay(variables: Sequence[tf.Variable]) -> tf.Tensor:
    """sum(w^2) / 2 over the given variables (the reference's weight decay).

    Not divided by the batch size: the caller adds it once per replica,
    scaled by 1/num_replicas, so the all-reduced sum counts it once.
    """
    if not variables:
        return tf.constant(0.0)
    return tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def scale_loss(per_example: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """Sum of per-example losses times 1 / global_batch_size.

    Each replica sees B / R examples; the optimizer sums gradients over the R
    replicas, so this scaling yields the gradient of the global-batch mean.
    """
    return tf.reduce_sum(per_example) * (1.0 / global_batch_size)


LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
