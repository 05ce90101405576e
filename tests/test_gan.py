"""The ``gan`` mode (Zhou & Kraehenbuehl, ICLR 2019): losses, regularisers, training, export.

Known values: the losses against TF-GAN's losses_impl_test.py numbers (through our sign
convention), the gradient penalty of a linear "discriminator", regularisers of discriminators
that ignore their input, the attacks' radii, the penalty's U(0, 1) interpolation weights.

Training runs are in-process and tiny. Tracing a step of the residual networks of
``gan_models`` costs ~15 s on one CPU core, so the 15 loss x regulariser runs, the resumes and
the NaN stops use a small generator and discriminator of the same interface (the step, the
regularisers, the checkpoints and the loop are the same code); the real networks are trained
once (``real_run``: TensorBoard, the export loaded without this package, evaluate's refusal) and
run through every regulariser eagerly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from gan_small_networks import small_discriminator, small_generator
from jarn_tf import config as config_lib
from jarn_tf.core import export, loop as train_lib
from jarn_tf.gan import losses as gan_losses, models as gan_models, regularizers as gan_regularizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT_DIM = 8

# TF-GAN's losses_impl_test.py: discriminator logits on real and generated images (TF-GAN's
# convention: high on real).
TFGAN_REAL = np.array([-5.0, 1.4, 12.5, 2.7], np.float32)
TFGAN_GEN = np.array([10.0, 4.4, -5.5, 3.6], np.float32)


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, np.float64)))


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


# ---------------------------------------------------------------------------
# 1. Losses against TF-GAN's test values.


def test_wasserstein_losses_match_tfgan():
    # Ours: D = minus TF-GAN's logits for gan and wgan.
    r, g = tf.constant(-TFGAN_REAL), tf.constant(-TFGAN_GEN)
    assert _mean(gan_losses.generator_loss("wgan", g)) == pytest.approx(-3.125, abs=1e-6)
    assert _mean(gan_losses.generator_loss("wgan", g, "non_saturating")) == pytest.approx(-3.125, abs=1e-6)
    assert _mean(gan_losses.discriminator_loss("wgan", r, g)) == pytest.approx(0.225, abs=1e-6)


def test_gan_losses_match_tfgan_modified_and_minimax():
    r, g = tf.constant(-TFGAN_REAL), tf.constant(-TFGAN_GEN)
    # TF-GAN's modified (non-saturating) generator loss: -mean(log sigmoid(gen logits)).
    assert _mean(gan_losses.generator_loss("gan", g, "non_saturating")) == pytest.approx(1.38582, abs=1e-4)
    # TF-GAN's minimax / modified discriminator loss without label smoothing: sigmoid
    # cross-entropy with label 1 on real and 0 on generated images.
    expected = _mean(_softplus(-TFGAN_REAL)) + _mean(_softplus(TFGAN_GEN))
    assert _mean(gan_losses.discriminator_loss("gan", r, g)) == pytest.approx(expected, abs=1e-5)
    # TF-GAN's minimax generator loss: minus the discriminator's loss on generated images.
    assert _mean(gan_losses.generator_loss("gan", g)) == pytest.approx(-_mean(_softplus(TFGAN_GEN)), abs=1e-5)
    # The objective L that D maximises is minus its loss.
    np.testing.assert_allclose(
        gan_losses.objective("gan", r, g).numpy(), -gan_losses.discriminator_loss("gan", r, g).numpy()
    )


def test_least_squares_losses_match_tfgan_with_fake_label_minus_one():
    # No sign flip for lsgan: TF-GAN's least squares with real label 1 and fake label -1.
    r, g = tf.constant(TFGAN_REAL), tf.constant(TFGAN_GEN)
    assert _mean(gan_losses.generator_loss("lsgan", g, "non_saturating")) == pytest.approx(17.69625, abs=1e-4)
    # 0.5 mean((r - 1)^2) + 0.5 mean((g + 1)^2) = 21.4125 + 23.94625.
    r64, g64 = TFGAN_REAL.astype(np.float64), TFGAN_GEN.astype(np.float64)
    expected = 0.5 * _mean((r64 - 1) ** 2) + 0.5 * _mean((g64 + 1) ** 2)
    assert expected == pytest.approx(45.35875, abs=1e-6)
    assert _mean(gan_losses.discriminator_loss("lsgan", r, g)) == pytest.approx(45.35875, abs=1e-4)
    # Minimax lsgan: f(D(G(z))) = -(1 + D)^2 / 2.
    assert _mean(gan_losses.generator_loss("lsgan", g)) == pytest.approx(-0.5 * _mean((TFGAN_GEN + 1) ** 2))


def test_unknown_loss_names_are_refused():
    with pytest.raises(ValueError, match="unknown GAN loss 'hinge'"):
        gan_losses.f("hinge", tf.zeros([2]))
    with pytest.raises(ValueError, match="unknown generator loss"):
        gan_losses.generator_loss("gan", tf.zeros([2]), "feature_matching")


# ---------------------------------------------------------------------------
# 2. and 4. The gradient penalty.


def test_gradient_penalty_of_a_linear_discriminator():
    # D(x) = 2 sum(x) over 4 pixels: ||grad|| = sqrt(4 * 2^2) = 4 wherever it is taken.
    score = lambda x: 2.0 * tf.reduce_sum(x, axis=[1, 2, 3])  # noqa: E731
    real = tf.random.stateless_uniform([3, 2, 2, 1], seed=[1, 2])
    fake = tf.random.stateless_uniform([3, 2, 2, 1], seed=[3, 4])
    seed = tf.constant([5, 6], tf.int64)
    np.testing.assert_allclose(
        gan_regularizers.gradient_penalty(score, real, fake, seed).numpy(), [9.0] * 3, rtol=1e-6
    )
    np.testing.assert_allclose(
        gan_regularizers.gradient_penalty(score, real, fake, seed, target=2.0).numpy(), [1.0] * 3, rtol=1e-6
    )


def test_gradient_penalty_interpolation_weight_is_uniform_in_0_1():
    # x_hat = a * 1 + (1 - a) * (-1) = 2a - 1 on one pixel; D(x) = exp(x) has ||grad|| = exp(x_hat),
    # so with target 100 (> e) the penalty p = (exp(x_hat) / 100 - 1)^2 gives x_hat back:
    # x_hat = log(100 (1 - sqrt(p))). A normal draw (the popular Keras example's) gives weights
    # outside [0, 1] and mean 0.
    n = 2000
    score = lambda x: tf.reduce_sum(tf.exp(x), axis=[1, 2, 3])  # noqa: E731
    real, fake = tf.ones([n, 1, 1, 1], tf.float64), -tf.ones([n, 1, 1, 1], tf.float64)
    penalty = gan_regularizers.gradient_penalty(score, real, fake, tf.constant([7, 8], tf.int64), target=100.0)
    a = (np.log(100.0 * (1.0 - np.sqrt(penalty.numpy()))) + 1.0) / 2.0
    assert a.min() >= -1e-9 and a.max() <= 1.0 + 1e-9, (a.min(), a.max())
    assert abs(a.mean() - 0.5) < 0.03, a.mean()
    assert abs(a.var() - 1.0 / 12.0) < 0.01, a.var()
    assert a.min() < 0.01 and a.max() > 0.99
    # One weight per example (not per pixel), and another draw for another seed.
    again = gan_regularizers.gradient_penalty(score, real, fake, tf.constant([7, 9], tf.int64), target=100.0)
    assert not np.allclose(again.numpy(), penalty.numpy())


# ---------------------------------------------------------------------------
# 3. AR, RFM and their attacks.


def _images(n=4, seed=0):
    return tf.random.stateless_uniform([n, 3, 3, 1], seed=[seed, 1])


def _linear(w):
    w = tf.constant(np.asarray(w, np.float32).reshape(-1))
    return lambda x: tf.linalg.matvec(tf.reshape(x, [tf.shape(x)[0], -1]), w)


def test_ar_and_rfm_are_zero_for_a_discriminator_that_ignores_its_input():
    x = _images()
    # Constant per example (the input enters with weight 0, so its gradient is 0, not None).
    score = lambda x: tf.constant([1.0, -2.0, 3.0, 0.5]) + 0.0 * tf.reduce_sum(
        x, axis=[1, 2, 3]
    )  # noqa: E731
    features = (
        lambda x: tf.ones([4, 3]) * tf.constant([1.0, 2.0, 3.0])
        + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3], keepdims=True)[:, :, 0, 0]  # noqa: E731
    )
    w = tf.constant([[0.5], [-1.0], [2.0]])
    seed = tf.constant([1, 2], tf.int64)
    for kind in ("fgm", "fgsm", "pgd", "cw"):
        v = gan_regularizers.attack(score, lambda v: tf.square(score(x) - score(x + v)), x, kind, 0.05, steps=3)
        np.testing.assert_array_equal(gan_regularizers.adversarial_regularizer(score, x, v).numpy(), 0.0)
        np.testing.assert_array_equal(gan_regularizers.robust_feature_matching(features, x, v, w, 0.0).numpy(), 0.0)
        np.testing.assert_allclose(
            gan_regularizers.robust_feature_matching(features, x, v, w, 0.1).numpy(), [0.1 * 5.25] * 4, rtol=1e-6
        )
    for target in ("discriminator", "loss"):
        ar = gan_regularizers.regularizer_value("ar", score, None, x, x, seed, loss="gan", target=target)
        np.testing.assert_array_equal(ar.numpy(), 0.0)
    rfm = gan_regularizers.regularizer_value("rfm", score, features, x, x, seed, loss="gan", w=w, alpha=0.0)
    np.testing.assert_array_equal(rfm.numpy(), 0.0)
    rfm = gan_regularizers.regularizer_value("rfm", score, features, x, x, seed, loss="gan", w=w, alpha=2.0)
    np.testing.assert_allclose(rfm.numpy(), [2.0 * 5.25] * 4, rtol=1e-6)
    for reg in ("none", "instance_noise"):
        np.testing.assert_array_equal(
            gan_regularizers.regularizer_value(reg, score, None, x, x, seed, loss="gan").numpy(), [0.0] * 4
        )


def test_ar_and_rfm_of_a_linear_discriminator():
    # s(x) = w . x: the fgm attack is v = delta w / ||w||, so AR = (delta ||w||)^2 per example.
    rng = np.random.default_rng(0)
    w_in = rng.normal(size=(9, 3)).astype(np.float32)  # phi(x) = x W
    w_out = rng.normal(size=(3, 1)).astype(np.float32)  # s = phi . w
    x = _images()
    features = lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) @ tf.constant(w_in)  # noqa: E731
    score = lambda x: tf.reshape(features(x) @ tf.constant(w_out), [-1])  # noqa: E731
    g = (w_in @ w_out).reshape(-1)
    delta, seed = 0.05, tf.constant([1, 2], tf.int64)
    ar = gan_regularizers.regularizer_value("ar", score, None, x, x, seed, loss="wgan", delta=delta)
    np.testing.assert_allclose(ar.numpy(), [(delta * np.linalg.norm(g)) ** 2] * 4, rtol=1e-4)
    v = delta * g / np.linalg.norm(g)
    alpha = 0.3
    expected = np.sum((v @ w_in) ** 2) + alpha * np.sum(w_out**2)
    rfm = gan_regularizers.regularizer_value(
        "rfm", score, features, x, x, seed, loss="wgan", delta=delta, alpha=alpha, w=tf.constant(w_out)
    )
    np.testing.assert_allclose(rfm.numpy(), [expected] * 4, rtol=1e-4)
    assert np.all(ar.numpy() > 0) and np.all(rfm.numpy() > alpha * np.sum(w_out**2))
    # Appendix D's robust loss regularises f(D): for wgan f is the identity.
    ar_loss = gan_regularizers.regularizer_value(
        "ar", score, None, x, x, seed, loss="wgan", target="loss", delta=delta
    )
    np.testing.assert_allclose(ar_loss.numpy(), ar.numpy(), rtol=1e-5)
    ar_gan = gan_regularizers.regularizer_value(
        "ar", score, None, x, x, seed, loss="gan", target="loss", delta=delta
    )
    assert not np.allclose(ar_gan.numpy(), ar.numpy())
    with pytest.raises(ValueError, match="rfm"):
        gan_regularizers.regularizer_value("rfm", score, None, x, x, seed, loss="gan")


def _nonlinear_score(seed=0):
    rng = np.random.default_rng(seed)
    a = tf.constant(rng.normal(size=(9, 16)).astype(np.float32) * 3.0)
    b = tf.constant(rng.normal(size=(16,)).astype(np.float32))
    return lambda x: tf.linalg.matvec(tf.tanh(tf.reshape(x, [tf.shape(x)[0], -1]) @ a), b)


def test_rfm_of_the_robust_loss_attacks_along_the_loss_gradient():
    # Appendix G's "robust loss using GAN+RFM": the features penalised are phi, as for the robust
    # discriminator, but the attack follows grad f(D) = f'(D) grad D. For gan and wgan f' > 0, so the
    # FGM direction, and the value, are the discriminator target's; for lsgan f'(t) = -(1 + t) flips
    # it where D > -1, and a non-linear phi then gives another value.
    rng = np.random.default_rng(1)
    a = tf.constant(rng.normal(size=(9, 6)).astype(np.float32))
    w = tf.constant(rng.normal(size=(6, 1)).astype(np.float32))
    features = lambda x: tf.tanh(tf.reshape(x, [tf.shape(x)[0], -1]) @ a)  # noqa: E731
    score = lambda x: tf.reshape(features(x) @ w, [-1])  # noqa: E731
    x = _images(6, seed=5)
    seed = tf.constant([1, 2], tf.int64)
    kw = dict(delta=0.3, alpha=0.0, w=w)
    value = lambda loss, target: gan_regularizers.regularizer_value(  # noqa: E731
        "rfm", score, features, x, x, seed, loss=loss, target=target, **kw
    ).numpy()
    for loss in ("gan", "wgan"):
        np.testing.assert_allclose(value(loss, "loss"), value(loss, "discriminator"), rtol=1e-5)
    d = score(x).numpy()
    flipped = d > -1.0  # lsgan's f' < 0 there
    assert flipped.any()
    lsgan_loss, lsgan_disc = value("lsgan", "loss"), value("lsgan", "discriminator")
    np.testing.assert_allclose(lsgan_loss[~flipped], lsgan_disc[~flipped], rtol=1e-5)
    # By hand: v = -delta g / ||g|| where f' < 0.
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(score(x))
    g = tape.gradient(total, x).numpy().reshape(6, -1)
    v = 0.3 * g / np.linalg.norm(g, axis=1, keepdims=True) * np.where(flipped, -1.0, 1.0)[:, None]
    phi = features(x).numpy()
    moved = features(x + tf.constant(v.reshape(x.shape), tf.float32)).numpy()
    np.testing.assert_allclose(lsgan_loss, np.sum((phi - moved) ** 2, axis=1), rtol=1e-4)
    assert not np.allclose(lsgan_loss[flipped], lsgan_disc[flipped], rtol=1e-3)


def test_attack_radii_and_pgd_beats_fgm():
    x = _images(16, seed=3)
    score = _nonlinear_score()
    delta = 0.3
    base = score(x)
    distance = lambda v: tf.square(base - score(x + v))  # noqa: E731
    fgm = gan_regularizers.attack(score, distance, x, "fgm", delta)
    np.testing.assert_allclose(np.linalg.norm(fgm.numpy().reshape(16, -1), axis=1), delta, rtol=1e-5)
    fgsm = gan_regularizers.attack(score, distance, x, "fgsm", delta)
    np.testing.assert_allclose(np.abs(fgsm.numpy()), delta, rtol=1e-6)  # every pixel at +-delta
    pgd = gan_regularizers.attack(score, distance, x, "pgd", delta, steps=10)
    assert np.all(np.linalg.norm(pgd.numpy().reshape(16, -1), axis=1) <= delta * (1 + 1e-5))
    d_fgm, d_pgd = distance(fgm).numpy(), distance(pgd).numpy()
    assert np.all(d_pgd >= d_fgm - 1e-6), (d_fgm, d_pgd)
    assert d_pgd.sum() > 1.05 * d_fgm.sum(), (d_fgm.sum(), d_pgd.sum())
    cw = gan_regularizers.attack(score, distance, x, "cw", delta, steps=3)
    assert cw.shape == x.shape and np.all(np.isfinite(cw.numpy()))
    # The perturbation carries no gradient back to the images.
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = gan_regularizers.attack(score, distance, x, "pgd", delta, steps=2)
        total = tf.reduce_sum(v)
    assert tape.gradient(total, x) is None
    with pytest.raises(ValueError, match="unknown regulariser attack"):
        gan_regularizers.attack(score, distance, x, "deepfool", delta)


def test_every_regularizer_runs_on_the_real_networks_with_finite_gradients():
    keras.utils.set_random_seed(0)
    disc = gan_models.build_gan_discriminator((28, 28, 1), channels=4)
    gen = gan_models.build_generator(LATENT_DIM, (28, 28, 1), channels=4)
    assert gen.output_shape == (None, 28, 28, 1) and [o.shape for o in disc.outputs] == [(None, 1), (None, 4)]
    assert gan_models.last_linear_kernel(disc) is disc.get_layer("score").kernel
    real = tf.random.stateless_uniform([2, 28, 28, 1], seed=[0, 1])
    fake = gen(tf.random.stateless_normal([2, LATENT_DIM], seed=[0, 2]), training=True)
    score = lambda x: tf.reshape(disc(x, training=True)[0], [-1])  # noqa: E731
    phi = lambda x: disc(x, training=True)[1]  # noqa: E731
    w = gan_models.last_linear_kernel(disc)
    seed = tf.constant([1, 2], tf.int64)
    for reg, target in (
        ("gradient_penalty", "discriminator"),
        ("gradient_penalty", "loss"),
        ("ar", "discriminator"),
        ("ar", "loss"),
        ("rfm", "discriminator"),
        ("rfm", "loss"),
    ):
        with tf.GradientTape() as tape:
            value = gan_regularizers.regularizer_value(
                reg, score, phi, real, fake, seed, loss="gan", target=target, w=w, alpha=0.0
            )
            total = tf.reduce_sum(value)
        grads = dict(
            zip([v.path for v in disc.trainable_variables], tape.gradient(total, disc.trainable_variables))
        )
        assert value.shape == (2,) and np.all(np.isfinite(value.numpy())) and np.all(value.numpy() > 0), reg
        # Only the score's bias may be out of reach (the penalties of input gradients and features
        # do not depend on it); every other weight gets a finite gradient, most of them non-zero.
        reached = {name: g for name, g in grads.items() if name != "score/bias"}
        assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in reached.values()), reg
        assert sum(np.any(g.numpy() != 0) for g in reached.values()) > len(reached) // 2, reg
    with pytest.raises(ValueError, match="last linear layer"):
        gan_models.last_linear_kernel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


# ---------------------------------------------------------------------------
# Training runs.


@pytest.fixture
def small_networks(monkeypatch):
    """The trainer builds small networks of the real ones' interface (see the module docstring)."""
    monkeypatch.setattr(gan_models, "build_generator", small_generator)
    monkeypatch.setattr(gan_models, "build_gan_discriminator", small_discriminator)


def _gan_config(data_dir: str, **fields) -> config_lib.ExperimentConfig:
    values = dict(
        mode="gan",
        dataset="fashion_mnist",
        data_dir=data_dir,
        download=False,
        # The classifier's model section is validated in every mode; mnist_cnn fits 28x28.
        model="mnist_cnn",
        disc_layers=2,
        latent_dim=LATENT_DIM,
        gan_channels=4,
        batch_size=8,
        learning_rate=2e-4,
        lr_boundaries=(),
        weight_decay=1e-4,
        augment=False,
        train_steps=2,
        steps_per_loop=2,
        summary_every=1,
        checkpoint_every=1,
        image_summary_every=0,
    )
    values.update(fields)
    return config_lib.with_fields(config_lib.ExperimentConfig(), **values)


def _scalars(events: dict, tag: str) -> list:
    return [(step, float(v)) for step, v in events[tag]]


# Settings of the runs besides the loss and the regulariser, so that the runs cover more paths:
# the non-saturating generator loss for gan, two D steps per G step for gan with the gradient
# penalty (its generator first updates at step index 1; two step variants cost two more traces),
# L2 PGD as the attack of wgan's AR and RFM.
COMBO_SETTINGS = {
    ("gan", "*"): dict(gan_generator_loss="non_saturating"),
    ("gan", "gradient_penalty"): dict(disc_steps=2),
    ("lsgan", "*"): dict(gan_generator_loss="minimax"),
    ("wgan", "ar"): dict(reg_attack="pgd", reg_attack_steps=2),
    ("wgan", "rfm"): dict(reg_attack="pgd", reg_attack_steps=2),
}


def _combo_fields(loss: str, reg: str) -> dict:
    fields = dict(COMBO_SETTINGS.get((loss, "*"), {}), **COMBO_SETTINGS.get((loss, reg), {}))
    if reg == "rfm":
        fields["rfm_alpha"] = 0.0  # RFM > 0 then means the features moved under the attack
    return fields


def _combo_config(data_dir: str, loss: str, reg: str) -> config_lib.ExperimentConfig:
    return _gan_config(data_dir, gan_loss=loss, disc_reg=reg, checkpoint_every=2, **_combo_fields(loss, reg))


@pytest.fixture(scope="module")
def combo_runs(tiny_data_dir, tmp_path_factory):
    """``run(loss, reg)``: the model_dir of the 2-step run of that combination, trained once per module."""
    done = {}

    def run(loss: str, reg: str) -> str:
        if (loss, reg) not in done:
            model_dir = str(tmp_path_factory.mktemp(f"{loss}_{reg}") / "run")
            result = train_lib.train(
                _combo_config(tiny_data_dir, loss, reg), model_dir, eval_examples=0, verbose=0
            )
            assert result.step == 2 and result.export_dir, (loss, reg)
            done[(loss, reg)] = model_dir
        return done[(loss, reg)]

    return run


@pytest.mark.parametrize("loss", config_lib.GAN_LOSSES)
def test_every_loss_and_regularizer_trains(loss, small_networks, combo_runs, read_events):
    first_d_loss = {}
    for reg in config_lib.DISC_REGULARIZERS:
        model_dir = combo_runs(loss, reg)
        saved = json.load(open(os.path.join(model_dir, "config.json")))
        assert (saved["mode"], saved["gan"]["gan_loss"], saved["gan"]["disc_reg"]) == ("gan", loss, reg)
        events = read_events(os.path.join(model_dir, "train"))
        values = {
            tag: _scalars(events, f"train/{tag}") for tag in ("d_loss", "g_loss", "regularizer", "objective")
        }
        for tag, logged in values.items():
            # With two D steps per G step the generator's loss exists at its update only.
            steps = [2] if tag == "g_loss" and _combo_fields(loss, reg).get("disc_steps") == 2 else [1, 2]
            assert [step for step, _ in logged] == steps, (reg, tag, logged)
            assert all(np.isfinite(v) for _, v in logged), (reg, tag, logged)
        np.testing.assert_allclose(
            [v for _, v in values["objective"]], [-v for _, v in values["d_loss"]], rtol=1e-6
        )
        regs = [v for _, v in values["regularizer"]]
        if reg in ("none", "instance_noise"):
            assert regs == [0.0, 0.0], reg
        else:
            assert all(v > 0 for v in regs), (reg, regs)
        first_d_loss[reg] = values["d_loss"][0][1]
    # The first step's D loss is measured before any update, on the same initial networks, data
    # and latents: the regularisers are not in it, and instance noise changes what D sees.
    for reg in ("gradient_penalty", "ar", "rfm"):
        assert first_d_loss[reg] == pytest.approx(first_d_loss["none"], rel=1e-6), first_d_loss
    assert first_d_loss["instance_noise"] != pytest.approx(first_d_loss["none"], rel=1e-4), first_d_loss


# Where a checkpoint keeps each network's trainable weights.
NETWORK_WEIGHTS = {name: f"{name}_optimizer/_trainable_variables/" for name in ("generator", "discriminator")}


@pytest.mark.parametrize(
    "loss, reg", [("gan", "gradient_penalty"), ("lsgan", "instance_noise"), ("wgan", "rfm")]
)
def test_interrupted_run_resumes_to_the_uninterrupted_weights(
    loss, reg, small_networks, combo_runs, tiny_data_dir, tmp_path, checkpoint_values
):
    full = combo_runs(loss, reg)  # the uninterrupted run
    config = _combo_config(tiny_data_dir, loss, reg)
    resumed = str(tmp_path / "resumed")
    part = train_lib.train(config, resumed, eval_examples=0, verbose=0, stop_after=1)
    assert part.step == 1 and part.export_dir is None
    again = train_lib.train(config, resumed, eval_examples=0, verbose=0)
    assert again.start_step == 1 and again.step == 2
    a, b = checkpoint_values(full, 2), checkpoint_values(resumed, 2)
    assert a.keys() == b.keys()
    names = [n for n in a if n != "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
    # Keras' weights are saved under their optimizer's _trainable_variables, batch norm's moving
    # statistics under generator/.
    for prefix in NETWORK_WEIGHTS.values():
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    assert any("moving_mean" in n for n in names), names
    for name in names:
        if isinstance(a[name], np.ndarray) and a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # Both networks moved in the resumed step (with disc_steps=2: the generator's first update).
    start = checkpoint_values(resumed, 1)
    for prefix in NETWORK_WEIGHTS.values():
        assert any(n.startswith(prefix) and not np.array_equal(start[n], a[n]) for n in names), prefix
    disc_steps = _combo_fields(loss, reg).get("disc_steps", 1)
    assert int(a["discriminator_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    assert int(a["generator_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 2 // disc_steps


@pytest.mark.parametrize(
    "module, function, not_finite",
    [
        (gan_losses, "generator_loss", "g_loss"),
        # D's weights are NaN after its update, so the same step's generator loss is NaN too.
        (gan_regularizers, "regularizer_value", "regularizer, g_loss"),
    ],
)
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    module, function, not_finite, small_networks, tiny_data_dir, tmp_path, monkeypatch, latest_step
):
    # The patched loss is multiplied by NaN from its third call on: at the step at index 2 (each
    # step calls it once), so NaN flows into that step's gradients and weights.
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    real = getattr(module, function)

    def poisoned(*args, **kwargs):
        value = real(*args, **kwargs)
        n = calls.assign_add(1)
        return value * tf.where(n >= 3, tf.constant(np.nan, value.dtype), tf.constant(1.0, value.dtype))

    monkeypatch.setattr(module, function, poisoned)
    config = _gan_config(
        tiny_data_dir, disc_reg="gradient_penalty", train_steps=4, checkpoint_every=2, summary_every=2
    )
    model_dir = str(tmp_path / "nan")
    with pytest.raises(
        train_lib.NonFiniteLossError,
        match=rf"Non-finite loss at step 2; stopped at step 4\. Not finite: {not_finite}\. "
        r"The last good checkpoint \(\S+ckpt-2\) was left untouched",
    ):
        train_lib.train(config, model_dir, eval_examples=0, verbose=0)
    assert int(calls.numpy()) == 4
    assert latest_step(model_dir) == 2
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "ckpt-2"))
    names = reader.get_variable_to_shape_map()
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 2
    assert all(any(n.startswith(prefix) for n in names) for prefix in NETWORK_WEIGHTS.values()), names
    for name in names:
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    assert not os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-4.index"))
    assert not os.path.exists(os.path.join(model_dir, "export"))


# ---------------------------------------------------------------------------
# One run of the real networks: TensorBoard, the export, evaluate's refusal.


@pytest.fixture(scope="module")
def real_run(tiny_data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("gan_real") / "run")
    config = _gan_config(
        tiny_data_dir, gan_loss="wgan", disc_reg="rfm", image_summary_every=2, steps_per_loop=2
    )
    result = train_lib.train(config, model_dir, eval_examples=0, verbose=0)
    assert result.step == 2
    latent = tf.random.stateless_normal([5, LATENT_DIM], seed=[3, 4])
    images = result.trainer.sample(latent).numpy()
    return dict(model_dir=model_dir, result=result, latent=latent.numpy(), images=images)


def test_real_run_logs_losses_and_the_sample_grid(real_run, read_events):
    events = read_events(os.path.join(real_run["model_dir"], "train"))
    for tag in ("train/d_loss", "train/g_loss", "train/regularizer"):
        logged = _scalars(events, tag)
        assert [s for s, _ in logged] == [1, 2] and all(np.isfinite(v) for _, v in logged), (tag, logged)
    assert all(v > 0 for _, v in _scalars(events, "train/regularizer"))
    ((step, grid),) = events["images/sample_grid"]
    # An image summary: width, height, then one PNG; 64 samples of 28x28 in an 8x8 grid, 1-pixel gaps.
    side = 8 * 29 - 1
    assert step == 2 and [int(grid[0]), int(grid[1])] == [side, side]
    png = tf.io.decode_png(grid[2]).numpy()
    assert png.shape == (side, side, 1) and png.std() > 0


LOAD_KERAS = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
    model = keras.saving.load_model(sys.argv[1])
    images = keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False))
    np.save(sys.argv[3], np.asarray(images, np.float32))
    print(json.dumps({m: m in sys.modules for m in ("jarn_tf", "tensorflow")}))
""")

LOAD_SAVED_MODEL = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    signature = loaded.signatures["serving_default"]
    out = signature(latent=tf.constant(np.load(sys.argv[2])))
    np.save(sys.argv[3], out["images"].numpy())
    print(json.dumps({"outputs": sorted(out), "inputs": sorted(signature.structured_input_signature[1]),
                      "jarn_tf": "jarn_tf" in sys.modules}))
""")


def test_export_loads_without_this_package_and_gives_the_trainers_images(real_run, tmp_path):
    export_dir = real_run["result"].export_dir
    assert sorted(os.listdir(export_dir)) == [
        "discriminator.keras",
        "generator.keras",
        "metadata.json",
        "samples.png",
        "saved_model",
    ]
    meta = json.load(open(os.path.join(export_dir, "metadata.json")))
    assert meta["kind"] == "generator" and meta["mode"] == "gan" and meta["step"] == 2
    assert meta["discriminator"]["file"] == "discriminator.keras"
    assert meta["latent_dim"] == LATENT_DIM and meta["image_shape"] == [28, 28, 1]
    samples = tf.io.decode_png(open(os.path.join(export_dir, "samples.png"), "rb").read()).numpy()
    assert samples.shape == (8 * 29 - 1, 8 * 29 - 1, 1)

    # Keras' numpy backend needs jax and scipy (requirements-dev.txt): only their absence outside CI skips.
    missing = [m for m in ("jax", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"Keras' numpy backend needs {' and '.join(missing)}, not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI (CI={os.environ['CI']}) must run this test, not skip it")
        pytest.skip(reason)
    np.save(tmp_path / "z.npy", real_run["latent"])
    # Both loaders at once, in fresh interpreters that never import jarn_tf (cwd outside the repo).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    jobs = {
        "keras": subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD_KERAS,
                os.path.join(export_dir, "generator.keras"),
                str(tmp_path / "z.npy"),
                str(tmp_path / "keras.npy"),
            ],
            env=dict(env, KERAS_BACKEND="numpy", JAX_PLATFORMS="cpu"),
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "saved_model": subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD_SAVED_MODEL,
                os.path.join(export_dir, "saved_model"),
                str(tmp_path / "z.npy"),
                str(tmp_path / "saved_model.npy"),
            ],
            env=env,
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    reports = {}
    for name, proc in jobs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-3000:])
        reports[name] = json.loads(out.strip().splitlines()[-1])
    assert reports["keras"] == {"jarn_tf": False, "tensorflow": False}, reports
    assert reports["saved_model"] == {"outputs": ["images"], "inputs": ["latent"], "jarn_tf": False}, reports
    for name in jobs:
        np.testing.assert_allclose(
            np.load(tmp_path / f"{name}.npy"), real_run["images"], atol=2e-5, err_msg=name
        )


def test_discriminator_export_and_its_robustness_command(real_run, tiny_data_dir, tmp_path):
    # The exported discriminator gives the trainer's scores; the command attacks it on generated and
    # real images and writes what it measured, with the attack, radius, counts and seed.
    export_dir = real_run["result"].export_dir
    loaded = keras.saving.load_model(os.path.join(export_dir, "discriminator.keras"), compile=False)
    images = real_run["images"]
    np.testing.assert_allclose(
        loaded(images, training=False)[0].numpy(),
        real_run["result"].trainer.discriminator(images, training=False)[0].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    out = tmp_path / "robust"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jarn_tf.evaluate_gan",
            f"--model={real_run['model_dir']}",
            "--discriminator_robustness",
            "--num_samples=12",
            "--deltas=0.05,0.5",
            "--attack_steps=3",
            "--seed=3",
            f"--data_dir={tiny_data_dir}",
            f"--output_dir={out}",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    assert results["kind"] == "discriminator_robustness" and results["seed"] == 3
    assert (results["num_samples"], results["num_real"], results["real_split"]) == (12, 12, "test")
    assert results["discriminator"]["gan_loss"] == "wgan" and results["discriminator"]["disc_reg"] == "rfm"
    for name in ("generated", "real"):
        attacks = results[name]["attacks"]
        assert set(attacks) == {"fgm@0.05", "fgm@0.5", "pgd@0.05", "pgd@0.5"}
        assert attacks["pgd@0.5"]["steps"] == 3 and attacks["fgm@0.05"]["delta"] == 0.05
        for entry in attacks.values():
            assert 0 < entry["mean_abs_change"] <= entry["max_abs_change"], entry
        # A larger ball finds at least as large a change; PGD at least FGM's (it starts there).
        assert attacks["fgm@0.5"]["mean_abs_change"] > attacks["fgm@0.05"]["mean_abs_change"]
        assert attacks["pgd@0.5"]["mean_abs_change"] >= attacks["fgm@0.5"]["mean_abs_change"] * (1 - 1e-5)
    assert "| generated | pgd-3 | 0.5 |" in open(out / "results.md").read()
    # An unknown attack is refused before anything is loaded.
    bad = subprocess.run(
        [sys.executable, "-m", "jarn_tf.evaluate_gan", f"--model={real_run['model_dir']}",
         "--discriminator_robustness", "--attacks=cw"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
        cwd=REPO, timeout=300,
    )
    assert bad.returncode == 2 and "error: --attacks: ['cw']" in bad.stderr, bad.stderr[-2000:]


def test_classifier_loaders_refuse_the_generator_export(real_run):
    model_dir = real_run["model_dir"]
    export_dir = real_run["result"].export_dir
    for path in (
        model_dir,
        export_dir,
        os.path.join(export_dir, "saved_model"),
        os.path.join(export_dir, "generator.keras"),
    ):
        with pytest.raises(ValueError, match=r"is a generator export \(--mode=gan.*jarn_tf\.evaluate_gan"):
            export.load_model(path)
    proc = subprocess.run(
        [sys.executable, "-m", "jarn_tf.evaluate", f"--model={model_dir}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1 and "generator export" in errors[0] and "jarn_tf.evaluate_gan" in errors[0]
    ), errors


# ---------------------------------------------------------------------------
# Flags: refused combinations and the mode's presets.

GAN_FLAGS = [
    "--mode=gan",
    "--dataset=fashion_mnist",
    "--nodownload",
    "--gan_channels=4",
    f"--latent_dim={LATENT_DIM}",
    "--batch_size=8",
    "--train_steps=2",
]


def _resolve(args: list) -> config_lib.ExperimentConfig:
    """The config the flags give (``config_from_flags`` and ``validate_config``), in fresh flags."""
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    fv(["prog"] + list(args))
    config = flag_utils.config_from_flags(fv)
    train_lib.validate_config(config)
    return config


@pytest.mark.parametrize(
    "bad, good, message",
    [
        (
            ["--gp_weight=5"],
            ["--gp_weight=5", "--disc_reg=gradient_penalty"],
            "--gp_weight applies to --disc_reg=gradient_penalty only, not --disc_reg=none",
        ),
        (
            ["--reg_target=loss", "--disc_reg=instance_noise"],
            ["--reg_target=loss", "--disc_reg=rfm"],
            "--reg_target=loss (Appendix D's robust loss) applies to --disc_reg=ar, gradient_penalty or rfm, "
            "not --disc_reg=instance_noise",
        ),
        (["--jarn"], [], "--mode=gan does not use --jarn (--mode=classifier)"),
        (["--momentum=0.5"], [], "--mode=gan does not use --momentum"),
        (
            ["--reg_attack_steps=3", "--reg_attack=fgm", "--disc_reg=ar"],
            ["--reg_attack_steps=3", "--reg_attack=pgd", "--disc_reg=ar"],
            "--reg_attack_steps applies to --reg_attack=pgd or cw only, not --reg_attack=fgm",
        ),
    ],
)
def test_bad_gan_flags_fail_before_any_work(bad, good, message, tiny_data_dir, tmp_path, run_main, capsys):
    model_dir = tmp_path / "bad"
    common = GAN_FLAGS + [f"--data_dir={tiny_data_dir}"]
    assert run_main(common + bad + ["--eval_examples=0", "--verbose=0", f"--model_dir={model_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not model_dir.exists()
    # Without the offending flag the same command resolves (so the test can fail).
    _resolve(common + good)


def test_gan_mode_presets_and_given_flags_win():
    # cifar10: its classifiers augment by default, so "no augmentation" is the preset's doing.
    gan = _resolve(["--mode=gan", "--dataset=cifar10"])
    assert gan.optimizer.learning_rate == 2e-4 and gan.optimizer.weight_decay == 1e-4
    assert gan.optimizer.batch_size == 64 and gan.optimizer.lr_boundaries == ()
    assert gan.data.augment is False
    classifier = _resolve(["--mode=classifier", "--dataset=cifar10"])
    assert classifier.optimizer.learning_rate != 2e-4 and classifier.optimizer.weight_decay != 1e-4
    assert classifier.optimizer.lr_boundaries != () and classifier.data.augment is not False
    given = _resolve(
        [
            "--mode=gan",
            "--dataset=cifar10",
            "--learning_rate=0.01",
            "--weight_decay=0",
            "--batch_size=16",
            "--lr_boundaries=0.5",
            "--augment",
        ]
    )
    assert given.optimizer.learning_rate == 0.01 and given.optimizer.weight_decay == 0.0
    assert given.optimizer.batch_size == 16 and given.optimizer.lr_boundaries == (0.5,)
    assert given.data.augment is True
