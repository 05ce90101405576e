"""The discriminator's robustness measurement (jarn_tf.gan.disc_robustness): known values."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.gan import disc_robustness, losses as gan_losses

RNG = np.random.default_rng(0)
W = RNG.normal(size=(2, 2, 1)).astype(np.float32)  # one weight per pixel of 2x2x1 images
W_NORM = float(np.linalg.norm(W))


def _images(n: int = 6) -> np.ndarray:
    return RNG.uniform(0.2, 0.8, size=(n, 2, 2, 1)).astype(np.float32)


def _dot(x):
    return tf.reduce_sum(x * tf.constant(W), axis=[1, 2, 3])


@pytest.mark.parametrize("attack", disc_robustness.ATTACKS)
def test_linear_discriminator_changes_by_delta_times_its_gradient_norm(attack):
    # D(x) = w . x: every u of norm delta changes D by w . u, at most delta ||w|| (u along +-w).
    x = tf.constant(_images())
    moved = disc_robustness.worst_change(_dot, x, attack, 0.3, steps=5)
    np.testing.assert_allclose(np.abs(moved - _dot(x)), 0.3 * W_NORM, rtol=1e-5)
    np.testing.assert_allclose(disc_robustness.gradient_norm(_dot, x), W_NORM, rtol=1e-6)


@pytest.mark.parametrize("attack", disc_robustness.ATTACKS)
def test_the_other_sign_is_tried(attack):
    # D(x) = log(w . x + c) is concave: moving down the gradient changes it more than moving up,
    # log(a) - log(a - delta ||w||) > log(a + delta ||w||) - log(a). An attack that only follows +g
    # (the regularisers' first direction) reports the smaller change.
    x = tf.constant(_images())
    c = float(-np.min(np.sum(_images(50) * W, axis=(1, 2, 3)))) + 2.0
    score = lambda images: tf.math.log(_dot(images) + c)  # noqa: E731
    a = _dot(x).numpy() + c
    delta = 0.5
    expected = np.log(a) - np.log(a - delta * W_NORM)
    moved = disc_robustness.worst_change(score, x, attack, delta, steps=5)
    change = np.abs(moved.numpy() - np.log(a))
    np.testing.assert_allclose(change, expected, rtol=1e-4)
    assert np.all(change > np.log(a + delta * W_NORM) - np.log(a) + 1e-4)


def test_pgd_finds_at_least_fgm_and_stays_in_the_ball():
    # A non-linear D: PGD from the FGM points ascends (D(x) - D(x + u))^2 and keeps ||u|| <= delta.
    a = tf.constant(RNG.normal(size=(4, 16)).astype(np.float32) * 3.0)
    b = tf.constant(RNG.normal(size=(16,)).astype(np.float32))
    score = lambda x: tf.linalg.matvec(tf.tanh(tf.reshape(x, [tf.shape(x)[0], -1]) @ a), b)  # noqa: E731
    x = tf.constant(_images(16))
    delta = 0.4
    base = score(x).numpy()
    fgm = np.abs(disc_robustness.worst_change(score, x, "fgm", delta).numpy() - base)
    pgd = np.abs(disc_robustness.worst_change(score, x, "pgd", delta, steps=10).numpy() - base)
    assert np.all(pgd >= fgm - 1e-5) and pgd.sum() > 1.02 * fgm.sum(), (fgm, pgd)
    # For the linear D of the first test, PGD cannot beat delta ||w|| (the radius is kept; an
    # unprojected ascent would report more).
    lin = np.abs(disc_robustness.worst_change(_dot, x, "pgd", delta, steps=10).numpy() - _dot(x).numpy())
    assert np.all(lin <= delta * W_NORM * (1 + 1e-5))


def test_constant_discriminator_is_perfectly_robust():
    score = lambda x: 0.0 * tf.reduce_sum(x, axis=[1, 2, 3]) + 3.0  # noqa: E731
    result = disc_robustness.measure(score, _images(), ["fgm", "pgd"], [0.05, 0.5], steps=3, batch_size=4)
    assert result["num_images"] == 6 and result["score_mean"] == pytest.approx(3.0)
    assert set(result["attacks"]) == {"fgm@0.05", "fgm@0.5", "pgd@0.05", "pgd@0.5"}
    for entry in result["attacks"].values():
        assert entry["mean_abs_change"] == 0.0 and entry["max_abs_change"] == 0.0
        assert entry["mean_abs_loss_change"] == 0.0


@pytest.mark.parametrize("real", [False, True])
def test_loss_term_change_uses_the_sets_sign(real):
    # wgan: f(t) = t, so the loss term changes as D does; gan's f(t) = -softplus(-t) with the real
    # images' term f(-D(x)).
    images = _images()
    wgan = disc_robustness.measure(_dot, images, ["fgm"], [0.3], loss="wgan", real=real)
    entry = wgan["attacks"]["fgm@0.3"]
    assert entry["mean_abs_loss_change"] == pytest.approx(entry["mean_abs_change"], rel=1e-5)
    gan = disc_robustness.measure(_dot, images, ["fgm"], [0.3], loss="gan", real=real)
    d = _dot(tf.constant(images)).numpy()
    moved = disc_robustness.worst_change(_dot, tf.constant(images), "fgm", 0.3).numpy()
    sign = -1.0 if real else 1.0
    expected = np.abs(
        gan_losses.f("gan", tf.constant(sign * moved)).numpy() - gan_losses.f("gan", tf.constant(sign * d)).numpy()
    ).mean()
    assert gan["attacks"]["fgm@0.3"]["mean_abs_loss_change"] == pytest.approx(float(expected), rel=1e-5)


def test_unknown_attack_is_refused():
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        disc_robustness.worst_change(_dot, tf.constant(_images()), "cw", 0.1)
