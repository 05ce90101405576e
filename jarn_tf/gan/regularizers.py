"""Regularisers of a robust discriminator (Zhou & Kraehenbuehl, ICLR 2019) and their attacks.

The GAN losses f they act on are in ``jarn_tf.gan.losses``.

Regularisers of the discriminator's objective (subtracted from L, i.e. added
to D's loss), all on generated images unless said:

  instance noise     Gaussian noise on every input of D (real and generated)
  gradient penalty   (||grad_x D(x_hat)|| / target - 1)^2 at x_hat = a x +
                     (1 - a) G(z), a ~ U(0, 1) per example (WGAN-GP); the
                     norm is sqrt(sum g^2 + 1e-12)
  AR (eq. 4)         (D(G(z)) - D(G(z) + v))^2
  RFM (eq. 5)        ||phi(G(z)) - phi(G(z) + v)||^2 + alpha ||w||^2

v is an attack on the generated image, held constant (no gradient flows
through it): by default the fast normalised gradient v = delta g / ||g||_2
with g = grad_x D(G(z)) (section 4.1), else FGSM, L2 PGD or a CW-style
ascent (Appendix F). The robust-loss variant (Appendix D) applies AR and the
gradient penalty to f(D) of generated images instead of D; for RFM, whose
penalty is on the features phi before the last layer and f, it attacks along
the gradient of f(D) instead of D (Appendix G's "robust loss using GAN+RFM").
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import tensorflow as tf

from jarn_tf.gan.losses import f

ScoreFn = Callable[[tf.Tensor], tf.Tensor]
DistanceFn = Callable[[tf.Tensor], tf.Tensor]

_NORM_FLOOR = 1e-12


def _per_example_l2(x: tf.Tensor) -> tf.Tensor:
    """||x_i||_2 over all non-batch axes, shape [N, 1, ..., 1]."""
    axes = list(range(1, len(x.shape)))
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes, keepdims=True) + _NORM_FLOOR)


def input_gradient(score_fn: ScoreFn, x: tf.Tensor) -> tf.Tensor:
    """grad_x of sum_i score_fn(x)_i (each example's score w.r.t. its own input)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(score_fn(x))
    return tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def gradient_penalty(
    score_fn: ScoreFn, real: tf.Tensor, fake: tf.Tensor, seed: tf.Tensor, target: float = 1.0
) -> tf.Tensor:
    """WGAN-GP per example: (||grad D(x_hat)||_2 / target - 1)^2.

    ``x_hat = a real + (1 - a) fake`` with a ~ U(0, 1) per example (not a
    normal draw). The penalty's gradient reaches D's weights through the
    input gradient (double backpropagation), so call it inside D's tape.
    """
    n = tf.shape(real)[0]
    a = tf.random.stateless_uniform(tf.stack([n, 1, 1, 1]), seed, dtype=real.dtype)
    x_hat = a * real + (1.0 - a) * fake
    g = input_gradient(score_fn, x_hat)
    norm = tf.reshape(_per_example_l2(g), [-1])
    return tf.square(norm / target - 1.0)


def attack(
    score_fn: ScoreFn,
    distance_fn: DistanceFn,
    x: tf.Tensor,
    kind: str,
    delta: float,
    steps: int = 5,
) -> tf.Tensor:
    """The perturbation v of AR / RFM on generated images ``x``, without gradient.

    Args:
      score_fn: D (or f(D)) per example; its input gradient gives the first
        direction (the regularisers' distances have zero gradient at v = 0).
      distance_fn: v -> per-example distance the regulariser penalises
        (AR: (s(x) - s(x + v))^2; RFM: ||phi(x) - phi(x + v)||^2); pgd and
        cw ascend it.
      x: generated images.
      kind: fgm (delta g / ||g||_2), fgsm (delta sign g), pgd (L2 ball of
        radius delta, from the fgm point, step 2.5 delta / steps, normalised
        gradient ascent, projection) or cw (ascent on distance - ||v||^2 /
        delta^2 from the fgm point, no hard radius).
      delta: the radius (L2; L-inf for fgsm).
      steps: iterations of pgd and cw.

    Returns:
      v, the shape of ``x``, with its gradient stopped.
    """
    x = tf.stop_gradient(x)
    g = input_gradient(score_fn, x)
    if kind == "fgsm":
        return tf.stop_gradient(delta * tf.sign(g))
    v = delta * g / _per_example_l2(g)
    if kind == "fgm":
        return tf.stop_gradient(v)
    if kind not in ("pgd", "cw"):
        raise ValueError(f"unknown regulariser attack {kind!r}")
    step = 2.5 * delta / steps
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(v)
            gain = distance_fn(v)
            if kind == "cw":
                axes = list(range(1, len(v.shape)))
                gain = gain - tf.reduce_sum(tf.square(v), axis=axes) / (delta * delta)
            total = tf.reduce_sum(gain)
        gv = tape.gradient(total, v, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        v = v + step * gv / _per_example_l2(gv)
        if kind == "pgd":
            v = v * tf.minimum(1.0, delta / _per_example_l2(v))
        v = tf.stop_gradient(v)
    return v


def adversarial_regularizer(
    score_fn: ScoreFn, x: tf.Tensor, v: tf.Tensor, score_x: Optional[tf.Tensor] = None
) -> tf.Tensor:
    """AR (eq. 4) per example: (s(x) - s(x + v))^2, v held constant.

    ``score_x``: s(x) when the caller has it already (computed under the
    same tape), saving a forward pass.
    """
    if score_x is None:
        score_x = score_fn(x)
    return tf.square(score_x - score_fn(x + tf.stop_gradient(v)))


def robust_feature_matching(
    features_fn: ScoreFn,
    x: tf.Tensor,
    v: tf.Tensor,
    w: tf.Tensor,
    alpha: float,
    features_x: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """RFM (eq. 5) per example: ||phi(x) - phi(x + v)||^2 + alpha ||w||^2, v held constant.

    ``features_x``: phi(x) when the caller has it already (same tape).
    """
    if features_x is None:
        features_x = features_fn(x)
    diff = features_x - features_fn(x + tf.stop_gradient(v))
    return tf.reduce_sum(tf.square(diff), axis=-1) + alpha * tf.reduce_sum(tf.square(w))


def instance_noise(x: tf.Tensor, sigma: float, seed: tf.Tensor) -> tf.Tensor:
    """x plus Gaussian noise of std ``sigma`` (Sonderby et al.)."""
    return x + sigma * tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)


def regularizer_value(
    reg: str,
    score_fn: ScoreFn,
    features_fn: Optional[ScoreFn],
    real: tf.Tensor,
    fake: tf.Tensor,
    seed: tf.Tensor,
    *,
    loss: str,
    target: str = "discriminator",
    attack_kind: str = "fgm",
    delta: float = 0.05,
    steps: int = 5,
    alpha: float = 1e-4,
    w: Optional[tf.Tensor] = None,
    gp_target: float = 1.0,
    fake_score: Optional[tf.Tensor] = None,
    fake_features: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """The per-example regulariser ``reg`` of D (0 for none and instance noise).

    Args:
      reg: none, instance_noise, gradient_penalty, ar or rfm.
      score_fn: images -> D's score per example.
      features_fn: images -> penultimate features (rfm only).
      real, fake: the batch's real and generated images.
      seed: stateless seed (the penalty's interpolation weights).
      loss: gan, lsgan or wgan (for the robust-loss target).
      target: discriminator (regularise D) or loss (regularise f(D) of
        generated images, Appendix D).
      attack_kind, delta, steps: the attack of ar / rfm.
      alpha, w: RFM's weight and the last linear kernel.
      gp_target: the gradient penalty's target norm.
      fake_score, fake_features: D's score and penultimate features of
        ``fake`` (unperturbed) when the caller computed them already under
        the same tape; ar and rfm then skip those forward passes.
    """
    if reg in ("none", "instance_noise"):
        return tf.zeros([tf.shape(fake)[0]], fake.dtype)
    s = score_fn if target == "discriminator" else (lambda x: f(loss, score_fn(x)))
    if reg == "gradient_penalty":
        return gradient_penalty(s, real, fake, seed, gp_target)
    if reg == "ar":
        score = None
        if fake_score is not None:
            score = fake_score if target == "discriminator" else f(loss, fake_score)
        base = tf.stop_gradient(score if score is not None else s(fake))
        v = attack(s, lambda v: tf.square(base - s(fake + v)), fake, attack_kind, delta, steps)
        return adversarial_regularizer(s, fake, v, score)
    if reg == "rfm":
        if features_fn is None or w is None:
            raise ValueError(
                "--disc_reg=rfm needs the discriminator's penultimate features and last linear layer"
            )
        phi = tf.stop_gradient(fake_features if fake_features is not None else features_fn(fake))
        # The robust-loss target attacks along grad f(D) = f'(D) grad D: for gan and wgan (f' > 0)
        # the same direction as the discriminator target's wherever f'(D) grad D does not vanish;
        # for lsgan the direction flips where D(G(z)) > -1 (Appendix G's "robust loss using GAN+RFM").
        v = attack(
            s,
            lambda v: tf.reduce_sum(tf.square(phi - features_fn(fake + v)), axis=-1),
            fake,
            attack_kind,
            delta,
            steps,
        )
        return robust_feature_matching(features_fn, fake, v, w, alpha, fake_features)
    raise ValueError(f"unknown discriminator regulariser {reg!r}")


def configured_regularizer(
    params,
    score_fn: ScoreFn,
    features_fn: Optional[ScoreFn],
    real: tf.Tensor,
    fake: tf.Tensor,
    seed: tf.Tensor,
    *,
    loss: str,
    w: Optional[tf.Tensor] = None,
    fake_score: Optional[tf.Tensor] = None,
    fake_features: Optional[tf.Tensor] = None,
) -> Tuple[tf.Tensor, float]:
    """``regularizer_value`` with the ``--disc_reg`` settings of a config section, and its weight.

    Args:
      params: a config section with the ``--disc_reg`` fields (disc_reg, reg_weight, reg_delta,
        rfm_alpha, reg_attack, reg_attack_steps, reg_target, gp_weight, gp_target).
      score_fn, features_fn, real, fake, seed, loss, w, fake_score, fake_features: as in
        ``regularizer_value`` (``features_fn`` is used with rfm only).

    Returns:
      (per-example value, its weight in the discriminator's loss: gp_weight for the gradient
      penalty, reg_weight for ar and rfm, 0 otherwise).
    """
    reg_i = regularizer_value(
        params.disc_reg,
        score_fn,
        features_fn if params.disc_reg == "rfm" else None,
        real,
        fake,
        seed,
        loss=loss,
        target=params.reg_target,
        attack_kind=params.reg_attack,
        delta=params.reg_delta,
        steps=params.reg_attack_steps,
        alpha=params.rfm_alpha,
        w=w,
        gp_target=params.gp_target,
        fake_score=fake_score,
        fake_features=fake_features,
    )
    weights = {"gradient_penalty": params.gp_weight, "ar": params.reg_weight, "rfm": params.reg_weight}
    return reg_i, weights.get(params.disc_reg, 0.0)
