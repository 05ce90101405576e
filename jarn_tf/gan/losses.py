"""GAN losses (Zhou & Kraehenbuehl, ICLR 2019): the concave f, the objective and the generator losses.

Objective (eq. 1): ``L(G, D) = E_x f(-D(x)) + E_z f(D(G(z)))``, maximised by
D and minimised by G, with concave f:

  gan    f(t) = -log(1 + e^-t) = log sigmoid(t)
  lsgan  f(t) = -(1 + t)^2 / 2
  wgan   f(t) = t

Sign convention: for ``gan`` and ``wgan`` D scores generated images high and
real ones low (sigmoid(D(x)) is the probability that x is generated); for
``lsgan`` the optimum is D = +1 on real and -1 on generated images. In
TF-GAN's convention (D high on real), our gan and wgan discriminator outputs
are minus TF-GAN's logits, and our lsgan is TF-GAN's least squares with
labels real = 1, fake = -1.

Every function returns per-example values (shape [N]); the trainer sums them
and divides by the global batch size.

The regularisers of the discriminator (AR, RFM, gradient penalty, instance
noise) and their attacks are in ``jarn_tf.gan.regularizers``.
"""

from __future__ import annotations

import tensorflow as tf


def f(loss: str, t: tf.Tensor) -> tf.Tensor:
    """The concave loss f of eq. 1 for ``loss`` in gan, lsgan, wgan."""
    if loss == "gan":
        return -tf.nn.softplus(-t)
    if loss == "lsgan":
        return -0.5 * tf.square(1.0 + t)
    if loss == "wgan":
        return t
    raise ValueError(f"unknown GAN loss {loss!r}")


def objective(loss: str, d_real: tf.Tensor, d_fake: tf.Tensor) -> tf.Tensor:
    """Per-example L = f(-D(x)) + f(D(G(z))) (real and generated examples paired)."""
    return f(loss, -d_real) + f(loss, d_fake)


def discriminator_loss(loss: str, d_real: tf.Tensor, d_fake: tf.Tensor) -> tf.Tensor:
    """What D minimises (before regularisers): -L per example."""
    return -objective(loss, d_real, d_fake)


def generator_loss(loss: str, d_fake: tf.Tensor, kind: str = "minimax") -> tf.Tensor:
    """What G minimises, per example.

    minimax: f(D(G(z))), eq. 1's term. non_saturating: -f(-D(G(z))), the
    generator's images scored as if real: -log(1 - sigmoid(D)) for gan,
    (1 - D)^2 / 2 for lsgan (target: the real label), D for wgan (= minimax).
    """
    if kind == "minimax":
        return f(loss, d_fake)
    if kind == "non_saturating":
        return -f(loss, -d_fake)
    raise ValueError(f"unknown generator loss {kind!r}")
