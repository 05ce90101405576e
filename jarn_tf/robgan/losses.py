"""Losses of the ``advgan`` modes (Rob-GAN: "From Adversarial Training to GANs").

The discriminator D has two heads on one trunk: the source logit s(x), with
P(S = real | x) = sigmoid(s(x)) (real scored high, TF-GAN's convention), and
class logits c(x), with P(C = k | x) = softmax(c(x))_k. With x_adv the
PGD-attacked real images and x_g = G(z, y_g) the generated ones:

  L_S  = E log P(S = real | x_adv) + E log P(S = fake | x_g)     (eq. 8/9)
  L_C1 = E log P(C = y | x_adv),  L_C2 = E log P(C = y_g | x_g)  (eq. 9)
  L_C  = L_C1 + L_C2                                             (eq. 8)

  eq. 9 (split, the paper's): D maximises L_S + L_C1; G maximises L_C2 - L_S.
  eq. 8 (AC-GAN):             D maximises L_S + L_C;  G maximises L_C - L_S
                              (the same generator gradient: L_C1 does not
                              depend on G).

Every function returns per-example values to MINIMISE (shape [N]): the
negatives of the likelihoods above, so log P(S = real | x) = -softplus(-s),
log P(S = fake | x) = -softplus(s) and log P(C = y | x) = -xent(y, c). The
trainers sum them and divide by the global batch size. ``non_saturating``
replaces the generator's -L_S term (E log P(S = fake | x_g), minimised) by
E -log P(S = real | x_g), as the authors' code does.

Weights of the terms (``--advgan_loss_weights``, ``LOSS_WEIGHTS``): ``paper``
weighs every term 1 (eq. 9 / 8 as written); ``authors`` follows the authors'
``loss_nll(bin, multi, lam) = lam BCE + (1 - lam) CE`` calls in train.py:
lam 0.5 on attacked real images (0.5 source + 0.5 class), lam 1 on generated
ones (1 source, no class term: train.py with ``--our_loss``, the README's
command), lam 0.5 for the generator (0.5 source + 0.5 class). With eq. 8
(``acgan``) the authors' weights put lam 0.5 on generated images (0.5 source
+ 0.5 class: train.py without ``--our_loss``).

Co-training attack (Fig. 3: "whenever feeding the real images to the D
network, we first run 5 steps of PGD attack"): sign-gradient ascent, within
the L-inf eps-ball and [0, 1], of the discriminator's loss on the true class
and "real" (the authors' code, up to its 0.5 / 0.5 weights, which do not
change a sign step):

  attack_objective(x, y) = -log P(S = real | x) - log P(C = y | x)
                         = softplus(-s(x)) + xent(y, c(x)).

Fine-tuning (eq. 10): the class head minimises xent on PGD-attacked real
images plus lambda times xent on PGD-attacked generated images with their
conditioning labels; the attack maximises xent (``jarn_tf.robustness.attacks.pgd``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf

from jarn_tf.robustness import attacks

# images -> (source logits [N] or [N, 1], class logits [N, K]).
TwoHeadFn = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the per-example terms of the co-training losses (see the module docstring)."""

    real_source: float  # -log P(S = real | x_adv), discriminator
    real_class: float  # -log P(C = y | x_adv), discriminator
    fake_source: float  # -log P(S = fake | x_g), discriminator
    fake_class: float  # -log P(C = y_g | x_g), discriminator, eq. 8 (acgan) only
    gen_source: float  # the generator's source term (minimax or non-saturating)
    gen_class: float  # -log P(C = y_g | x_g), generator


# (--advgan_loss_weights, --class_loss) -> weights.
LOSS_WEIGHTS: Dict[Tuple[str, str], LossWeights] = {
    ("paper", "split"): LossWeights(1.0, 1.0, 1.0, 0.0, 1.0, 1.0),  # eq. 9
    ("paper", "acgan"): LossWeights(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),  # eq. 8
    ("authors", "split"): LossWeights(0.5, 0.5, 1.0, 0.0, 0.5, 0.5),  # train.py --our_loss
    ("authors", "acgan"): LossWeights(0.5, 0.5, 0.5, 0.5, 0.5, 0.5),  # train.py without it
}


def loss_weights(weights: str, class_loss: str = "split") -> LossWeights:
    """The weights of ``--advgan_loss_weights=weights`` with ``--class_loss=class_loss``.

    Raises:
      ValueError: for an unknown name.
    """
    try:
        return LOSS_WEIGHTS[(weights, class_loss)]
    except KeyError:
        raise ValueError(
            f"unknown loss weights {weights!r} / class loss {class_loss!r}; expected one of "
            f"{sorted(LOSS_WEIGHTS)}"
        ) from None


def _flat(source: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(source, tf.float32), [-1])


def xent(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example -log P(C = y | x)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def neg_log_real(source: tf.Tensor) -> tf.Tensor:
    """Per-example -log P(S = real | x) = softplus(-s)."""
    return tf.nn.softplus(-_flat(source))


def neg_log_fake(source: tf.Tensor) -> tf.Tensor:
    """Per-example -log P(S = fake | x) = softplus(s)."""
    return tf.nn.softplus(_flat(source))


def discriminator_losses(
    real_source: tf.Tensor,
    real_logits: tf.Tensor,
    real_labels: tf.Tensor,
    fake_source: tf.Tensor,
    fake_logits: tf.Tensor,
    fake_labels: tf.Tensor,
    class_loss: str = "split",
    weights: str = "paper",
) -> Dict[str, tf.Tensor]:
    """The discriminator's per-example losses (each [N]; real and fake batches of one size).

    Args:
      real_source, real_logits, real_labels: D's heads on attacked real images, their labels.
      fake_source, fake_logits, fake_labels: D's heads on generated images, their conditioning labels.
      class_loss: ``split`` (eq. 9) or ``acgan`` (eq. 8).
      weights: ``paper`` or ``authors`` (``LOSS_WEIGHTS``).

    Returns:
      ``source``: -(log P(real | x_adv) + log P(fake | x_g)) per pair (the -L_S term);
      ``class_real``: -log P(y | x_adv) (-L_C1); ``class_fake``: -log P(y_g | x_g)
      (-L_C2, reported under both; counted only by ``acgan``), all three
      unweighted; ``total``: what D minimises, the weighted sum: -(L_S + L_C1)
      for split, -(L_S + L_C) for acgan with the paper's weights.
    """
    if class_loss not in ("split", "acgan"):
        raise ValueError(f"unknown class loss {class_loss!r}; expected split or acgan")
    w = loss_weights(weights, class_loss)
    real_source_loss, fake_source_loss = neg_log_real(real_source), neg_log_fake(fake_source)
    class_real = xent(real_labels, real_logits)
    class_fake = xent(fake_labels, fake_logits)
    total = w.real_source * real_source_loss + w.fake_source * fake_source_loss + w.real_class * class_real
    if w.fake_class:  # split: the fake class loss is kept out of D's objective (and out of its gradient)
        total = total + w.fake_class * class_fake
    return {
        "source": real_source_loss + fake_source_loss,
        "class_real": class_real,
        "class_fake": class_fake,
        "total": total,
    }


def generator_losses(
    fake_source: tf.Tensor,
    fake_logits: tf.Tensor,
    fake_labels: tf.Tensor,
    kind: str = "minimax",
    weights: str = "paper",
) -> Dict[str, tf.Tensor]:
    """The generator's per-example losses: -(L_C2 - L_S), its G-dependent part.

    Args:
      fake_source, fake_logits, fake_labels: D's heads on G(z, y), and y.
      kind: ``minimax`` (G minimises log P(S = fake | x_g), eq. 8/9 as written)
        or ``non_saturating`` (G minimises -log P(S = real | x_g), the code's).
      weights: ``paper`` (1 and 1) or ``authors`` (0.5 and 0.5), ``LOSS_WEIGHTS``.

    Returns:
      ``source``, ``class_fake`` (-log P(C = y | x_g)), both unweighted, and
      ``total`` = their weighted sum.
    """
    if kind == "minimax":
        source = -neg_log_fake(fake_source)
    elif kind == "non_saturating":
        source = neg_log_real(fake_source)
    else:
        raise ValueError(f"unknown generator loss {kind!r}; expected minimax or non_saturating")
    class_fake = xent(fake_labels, fake_logits)
    w = loss_weights(weights)
    return {
        "source": source,
        "class_fake": class_fake,
        "total": w.gen_source * source + w.gen_class * class_fake,
    }


def dequantize(images: tf.Tensor, noise: float, seed: tf.Tensor) -> tf.Tensor:
    """images + U(0, noise) per pixel, from a stateless seed (not clipped).

    The authors' train.py adds U(0, 1/128) to every real image in [-1, 1]
    units (U(0, 1/256) in ours), after SN-GAN's CIFAR-10 data code.

    Args:
      images: float32 [N, H, W, C] in [0, 1].
      noise: the width of the uniform noise in [0, 1] units; 0 returns ``images``.
      seed: int [2], the stateless seed (the same seed gives the same noise).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if noise <= 0:
        return images
    return images + tf.random.stateless_uniform(tf.shape(images), seed, minval=0.0, maxval=noise)


def attack_objective(source: tf.Tensor, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """What the co-training attack maximises, per example: softplus(-s) + xent(y, c)."""
    return neg_log_real(source) + xent(labels, logits)


def cotraining_attack(
    heads: TwoHeadFn,
    images: tf.Tensor,
    labels: tf.Tensor,
    eps: float,
    step_size: float,
    num_steps: int,
    random_start: bool = False,
    seed: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """L-inf PGD with sign steps on ``attack_objective`` (the co-training attack).

    Args:
      heads: images in [0, 1] -> (source logits, class logits), in inference mode.
      images: float32 [N, H, W, C] in [0, 1].
      labels: int [N] true classes.
      eps: L-inf radius in [0, 1] units.
      step_size: size of each sign step.
      num_steps: steps (0 returns the images).
      random_start: start from a uniform point of the eps-ball (the code has none).
      seed: int [2] for a stateless random start.

    Returns:
      Attacked images within eps of ``images`` and in [0, 1]; no gradient flows back.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    x = images
    if random_start and eps > 0:
        if seed is None:
            noise = tf.random.uniform(tf.shape(images), -eps, eps)
        else:
            noise = tf.random.stateless_uniform(tf.shape(images), seed=seed, minval=-eps, maxval=eps)
        x = attacks.project_linf(images + noise, images, eps)

    def body(i, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            source, logits = heads(x)
            total = tf.reduce_sum(attack_objective(source, logits, labels))
        x = x + step_size * tf.sign(tape.gradient(total, x))
        return i + 1, attacks.project_linf(x, images, eps)

    if num_steps > 0:
        _, x = tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), x))
    return tf.stop_gradient(x)


def finetune_loss(
    real_logits: tf.Tensor,
    real_labels: tf.Tensor,
    fake_logits: tf.Tensor,
    fake_labels: tf.Tensor,
    lambda_fake: float,
) -> Dict[str, tf.Tensor]:
    """Eq. 10 per example pair: xent(x_adv, y) + lambda * xent(G(z, y_g)_adv, y_g).

    Returns:
      ``real``, ``fake`` (the two cross-entropies, [N]) and ``total``.
    """
    real = xent(real_labels, real_logits)
    fake = xent(fake_labels, fake_logits)
    return {"real": real, "fake": fake, "total": real + lambda_fake * fake}
