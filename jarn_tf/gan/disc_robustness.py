"""The discriminator's own robustness: Definition 3.2 of Zhou & Kraehenbuehl (ICLR 2019).

A discriminator D is robust on a distribution of images x (generated: x = G(z)) when
``E_x |D(x) - D(x + u(x))|`` is small for every perturbation with ``||u(x)||_2 < delta``.
The paper's theory (Theorems 4.2, 4.3, B.1) needs this of the discriminators that AR and RFM
train; this module measures it, on generated and on real images:

* ``fgm``: u = +-delta g / ||g||_2 with g = grad_x D(x) (the paper's fast normalised gradient,
  section 4.1), the larger change of the two signs per image;
* ``pgd``: L2 PGD ascending (D(x) - D(x + u))^2 from each of those two starting points
  (``gan_regularizers.attack``: step 2.5 delta / steps, projection onto the ball), the larger change.

Perturbed images are not clipped to [0, 1], as in the regularisers and Definition 3.2.

Raw changes are in D's own units, which differ between regularisers (WGAN-GP's D has
gradients of norm ~1, an unregularised D can be large and flat or small and steep). So the
report also gives, per image set, the change relative to D's separation of the two sets,
``|E D(generated) - E D(real)|``, the mean input-gradient norm (delta ||g|| is the first-order
change), and the change of the loss f(D) the run trained with (Theorem 4.1's robust loss).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

from jarn_tf.gan import losses as gan_losses, regularizers as gan_regularizers

ATTACKS = ("fgm", "pgd")
ScoreFn = Callable[[tf.Tensor], tf.Tensor]


def _fgm_points(score_fn: ScoreFn, x: tf.Tensor, delta: float) -> tf.Tensor:
    g = gan_regularizers.input_gradient(score_fn, x)
    axes = list(range(1, len(x.shape)))
    norm = tf.sqrt(tf.reduce_sum(tf.square(g), axis=axes, keepdims=True) + 1e-12)
    return delta * g / norm


def worst_change(score_fn: ScoreFn, x: tf.Tensor, attack: str, delta: float, steps: int = 10) -> tf.Tensor:
    """D(x + u) for the u (||u||_2 <= delta) that changes D most among those the attack finds.

    Args:
      score_fn: images -> D(x) per image, shape [N].
      x: images [N, H, W, C].
      attack: ``fgm`` or ``pgd`` (module docstring).
      delta: the L2 radius, in [0, 1] image units.
      steps: PGD iterations.

    Returns:
      float32 [N]: the perturbed score of the better of the two starting signs; |it - D(x)| is
      the change.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")
    base = tf.stop_gradient(score_fn(x))
    best = None
    for sign in (1.0, -1.0):
        signed = lambda images, s=sign: s * score_fn(images)  # noqa: E731  (-g starts the other way)
        if attack == "fgm":
            u = _fgm_points(signed, x, delta)
        else:
            u = gan_regularizers.attack(signed, lambda v: tf.square(base - score_fn(x + v)), x, "pgd", delta, steps)
        moved = score_fn(x + u)
        best = moved if best is None else tf.where(tf.abs(moved - base) > tf.abs(best - base), moved, best)
    return best


def gradient_norm(score_fn: ScoreFn, x: tf.Tensor) -> tf.Tensor:
    """||grad_x D(x)||_2 per image, shape [N]."""
    g = gan_regularizers.input_gradient(score_fn, x)
    return tf.norm(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1)


def measure(
    score_fn: ScoreFn,
    images: np.ndarray,
    attacks: Sequence[str],
    deltas: Sequence[float],
    steps: int = 10,
    batch_size: int = 250,
    loss: str = "gan",
    real: bool = False,
) -> Dict[str, object]:
    """D's scores, gradient norms and worst changes on one set of images.

    Args:
      score_fn: images -> D(x) per image (shape [N]).
      images: float32 [N, H, W, C] in [0, 1].
      attacks, deltas: every (attack, delta) pair is measured.
      steps: PGD iterations.
      batch_size: images per pass.
      loss: the GAN loss the discriminator was trained with (for the change of its term of eq. 1:
        f(D(x)) for generated images, f(-D(x)) for real ones).
      real: the images are real (the loss term's sign).

    Returns:
      ``{"num_images", "score_mean", "score_std", "grad_norm_mean", "attacks": {"<attack>@<delta>":
      {"mean_abs_change", "median_abs_change", "max_abs_change", "mean_abs_loss_change"}}}``.
    """
    scores, grads = [], []
    changes = {(a, d): ([], []) for a in attacks for d in deltas}
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start : start + batch_size], tf.float32)
        base = score_fn(x)
        scores.append(base.numpy())
        grads.append(gradient_norm(score_fn, x).numpy())
        for (attack, delta), (d_out, f_out) in changes.items():
            moved = worst_change(score_fn, x, attack, delta, steps)
            d_out.append(tf.abs(moved - base).numpy())
            # What the same u does to the loss f(D) the run trained with (Theorem 4.1's robust loss).
            sign = -1.0 if real else 1.0
            f_out.append(tf.abs(gan_losses.f(loss, sign * moved) - gan_losses.f(loss, sign * base)).numpy())
    s, g = np.concatenate(scores), np.concatenate(grads)
    out: Dict[str, object] = {
        "num_images": int(len(s)),
        "score_mean": float(s.mean()),
        "score_std": float(s.std()),
        "grad_norm_mean": float(g.mean()),
        "attacks": {},
    }
    for (attack, delta), (d_out, f_out) in changes.items():
        c, fc = np.concatenate(d_out), np.concatenate(f_out)
        out["attacks"][f"{attack}@{delta:g}"] = {
            "attack": attack,
            "delta": float(delta),
            "steps": int(steps) if attack == "pgd" else 1,
            "mean_abs_change": float(c.mean()),
            "median_abs_change": float(np.median(c)),
            "max_abs_change": float(c.max()),
            "mean_abs_loss_change": float(fc.mean()),
        }
    return out
