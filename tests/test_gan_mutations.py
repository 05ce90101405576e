"""Signs and directions of the ``gan`` mode, checked so that a flipped sign cannot pass.

Sign convention of ``jarn_tf.gan.losses``: L = E f(-D(x_real)) + E f(D(G(z))), D maximises L, G
minimises its loss; gan f(t) = log sigmoid(t), lsgan f(t) = -(1 + t)^2 / 2, wgan f(t) = t. So for
gan and wgan D scores generated images high and real ones low, for lsgan D's optimum is +1 on real
and -1 on generated images, and a generator step moves D(G(z)) down (gan, wgan) or up (lsgan).

Every expected value here is computed independently of ``gan_losses`` and ``gan_regularizers``: by numpy (closed-form
losses, input gradients of a tanh network), or by autodiff of formulas written out in this file
(the trainer's weight gradients, with the attack v precomputed as a numpy constant and the gradient
penalty's U(0, 1) weights reproduced from their stateless seed). Inputs are asymmetric: real !=
generated, every example different.

Two levels:
  * the pure functions of ``gan_losses`` and ``gan_regularizers`` (losses, gradient penalty, AR, RFM, the attack);
  * ``GANTrainer.replica_step`` on small networks (a tanh discriminator, a batch-norm generator
    used with training=True throughout, as the trainer does): the gradients it hands to each
    optimizer equal the hand-computed ones, and one real Adam step moves D toward separating real
    from generated and G(z) toward D's real side, for every loss and generator-loss kind.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gan_small_networks import small_discriminator, small_generator
from jarn_tf import config as config_lib
from jarn_tf.core import data, trainer as trainer_lib
from jarn_tf.gan import losses as gan_losses, models as gan_models, regularizers as gan_regularizers
from jarn_tf.gan import trainer as gan_trainer

LOSSES = ("gan", "lsgan", "wgan")


# ---------------------------------------------------------------------------
# Independent references.


def _f_np(loss, t):
    """The concave f of eq. 1 in numpy (float64)."""
    t = np.asarray(t, np.float64)
    if loss == "gan":
        return -np.logaddexp(0.0, -t)  # log sigmoid(t)
    if loss == "lsgan":
        return -0.5 * (1.0 + t) ** 2
    return t


def _f_tf(loss, t):
    """The same f for autodiff, written without gan_losses."""
    if loss == "gan":
        return tf.math.log_sigmoid(t)
    if loss == "lsgan":
        return -0.5 * tf.square(1.0 + t)
    return t


def _fprime_np(loss, t):
    t = np.asarray(t, np.float64)
    if loss == "gan":
        return 1.0 / (1.0 + np.exp(t))  # sigmoid(-t)
    if loss == "lsgan":
        return -(1.0 + t)
    return np.ones_like(t)


def _toward_real(loss):
    """The sign of the change of D(G(z)) that a generator step must give."""
    return +1.0 if loss == "lsgan" else -1.0


# A tanh network on 3x3x1 images in numpy: phi(x) = tanh(x A + c), s(x) = phi(x) . b.
_RNG = np.random.default_rng(1234)
NET_A = (_RNG.normal(size=(9, 5)) * 1.5).astype(np.float32)
NET_C = _RNG.normal(size=(5,)).astype(np.float32) * 0.3
NET_B = _RNG.normal(size=(5,)).astype(np.float32)
# Distinct, asymmetric batches: "real" bright and spread, "generated" dark and narrow.
REAL = _RNG.uniform(0.4, 1.0, size=(4, 3, 3, 1)).astype(np.float32)
FAKE = _RNG.uniform(0.0, 0.5, size=(4, 3, 3, 1)).astype(np.float32)


def _phi_np(x):
    return np.tanh(x.reshape(len(x), -1).astype(np.float64) @ NET_A + NET_C)


def _score_np(x):
    return _phi_np(x) @ NET_B.astype(np.float64)


def _grad_score_np(x):
    """grad_x s(x) per example, shape of x."""
    h = _phi_np(x)
    return ((1.0 - h**2) * NET_B) @ NET_A.T.astype(np.float64)


def _unit(g):
    g = g.reshape(len(g), -1)
    return g / np.sqrt(np.sum(g**2, axis=1, keepdims=True) + 1e-12)


def _tf_net(a=NET_A, c=NET_C, b=NET_B):
    """phi and s of the tanh network in TF (arguments may be variables)."""

    def phi(x):
        return tf.tanh(tf.reshape(x, [tf.shape(x)[0], -1]) @ a + c)

    def score(x):
        return tf.linalg.matvec(phi(x), b)

    return phi, score


SEED = tf.constant([3, 17], tf.int64)


# ---------------------------------------------------------------------------
# 1. Losses: values and which way they push.


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_equal_the_closed_forms_and_point_the_right_way(loss):
    """discriminator_loss = -(f(-D_real) + f(D_fake)); minimax = f(D_fake); non-saturating =
    -f(-D_fake), against numpy; and d(G loss)/d(D_fake) has the sign that moves D(G(z)) toward the
    real side (catches a flipped sign and real/generated swapped in the D loss)."""
    r = np.array([-1.3, 0.2, 0.9, -0.4], np.float32)
    g = np.array([0.7, -0.6, 0.35, -0.15], np.float32)
    expected_l = _f_np(loss, -r) + _f_np(loss, g)
    np.testing.assert_allclose(
        gan_losses.objective(loss, tf.constant(r), tf.constant(g)).numpy(), expected_l, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        gan_losses.discriminator_loss(loss, tf.constant(r), tf.constant(g)).numpy(),
        -expected_l,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        gan_losses.generator_loss(loss, tf.constant(g), "minimax").numpy(),
        _f_np(loss, g),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        gan_losses.generator_loss(loss, tf.constant(g), "non_saturating").numpy(),
        -_f_np(loss, -g),
        rtol=1e-5,
        atol=1e-6,
    )
    # The D loss falls when D moves toward its optimum: for gan/wgan down on real, up on generated;
    # for lsgan toward +1 on real, -1 on generated.
    dr, dg = tf.constant(r), tf.constant(g)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([dr, dg])
        d_loss = tf.reduce_sum(gan_losses.discriminator_loss(loss, dr, dg))
        g_losses = {
            k: tf.reduce_sum(gan_losses.generator_loss(loss, dg, k)) for k in config_lib.GAN_GENERATOR_LOSSES
        }
    grad_r, grad_g = (t.numpy() for t in tape.gradient(d_loss, [dr, dg]))
    if loss == "lsgan":
        assert np.all(np.sign(grad_r) == np.sign(r - 1.0)) and np.all(np.sign(grad_g) == np.sign(g + 1.0))
    else:
        assert np.all(grad_r > 0) and np.all(grad_g < 0), (grad_r, grad_g)
    for kind, total in g_losses.items():
        # Gradient descent on G's loss changes D(G(z)) by -grad: toward the real side (here
        # lsgan's D_fake > -1, where even minimax pushes up).
        step = -tape.gradient(total, dg).numpy()
        assert np.all(np.sign(step) == _toward_real(loss)), (kind, step)


# ---------------------------------------------------------------------------
# 2. The gradient penalty, AR and RFM against numpy.


@pytest.mark.parametrize("target", [1.0, 0.5])
def test_gradient_penalty_is_taken_from_real_toward_generated(target):
    """x_hat = a real + (1 - a) fake with a = stateless_uniform([n, 1, 1, 1], seed): the penalty of
    a tanh network equals numpy's (||grad s(x_hat)|| / target - 1)^2 (catches a * fake + (1 - a) * real)."""
    a = tf.random.stateless_uniform([4, 1, 1, 1], SEED, dtype=tf.float32).numpy().astype(np.float64)
    assert np.all(np.abs(a - 0.5) > 0.02), a  # a != 1 - a, or a swap would not show
    x_hat = a * REAL + (1.0 - a) * FAKE
    norm = np.sqrt(np.sum(_grad_score_np(x_hat) ** 2, axis=1) + 1e-12)
    expected = (norm / target - 1.0) ** 2
    _, score = _tf_net()
    value = gan_regularizers.gradient_penalty(score, tf.constant(REAL), tf.constant(FAKE), SEED, target).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # Through the configured entry point too (what the trainer calls).
    value = gan_regularizers.regularizer_value(
        "gradient_penalty",
        score,
        None,
        tf.constant(REAL),
        tf.constant(FAKE),
        SEED,
        loss="gan",
        gp_target=target,
    ).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def _fgm_v(x, delta, loss=None):
    """The fgm attack delta g / ||g|| on x in numpy; g the input gradient of s (or of f(s))."""
    g = _grad_score_np(x)
    if loss is not None:
        g = g * _fprime_np(loss, _score_np(x))[:, None]
    return (delta * _unit(g)).reshape(x.shape)


@pytest.mark.parametrize("reg_target, loss", [("discriminator", "gan"), ("loss", "gan"), ("loss", "lsgan")])
@pytest.mark.parametrize("given_score", [False, True])
def test_ar_attacks_the_generated_images_along_plus_the_gradient(reg_target, loss, given_score):
    """AR = (s(G(z)) - s(G(z) + v))^2 with v = +delta g / ||g||, g = grad s at the generated images,
    against numpy, for a non-linear s (so -v gives another value): catches AR on real images and a
    reversed attack direction, with and without the precomputed score the trainer passes."""
    delta = 0.4
    s_np = _score_np if reg_target == "discriminator" else (lambda x: _f_np(loss, _score_np(x)))
    v = _fgm_v(FAKE, delta, None if reg_target == "discriminator" else loss)
    expected = (s_np(FAKE) - s_np(FAKE + v)) ** 2
    # The attack's direction matters here: -v gives a different value (by more than the tolerance).
    reversed_value = (s_np(FAKE) - s_np(FAKE - v)) ** 2
    assert np.all(np.abs(reversed_value - expected) > 1e-2 * np.abs(expected)), (expected, reversed_value)
    _, score = _tf_net()
    fake_score = score(tf.constant(FAKE)) if given_score else None
    value = gan_regularizers.regularizer_value(
        "ar",
        score,
        None,
        tf.constant(REAL),
        tf.constant(FAKE),
        SEED,
        loss=loss,
        target=reg_target,
        delta=delta,
        fake_score=fake_score,
    ).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # The attack itself: +delta g / ||g|| (D's own gradient for the discriminator target).
    if reg_target == "discriminator":
        base = score(tf.constant(FAKE))
        attack = gan_regularizers.attack(
            score, lambda u: tf.square(base - score(tf.constant(FAKE) + u)), tf.constant(FAKE), "fgm", delta
        )
        np.testing.assert_allclose(attack.numpy(), v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("given_features", [False, True])
def test_rfm_attacks_the_generated_images_along_plus_the_score_gradient(given_features):
    """RFM = ||phi(G(z)) - phi(G(z) + v)||^2 + alpha ||w||^2, v = +delta grad s / ||grad s|| at the
    generated images, against numpy: catches RFM on real images and a reversed attack."""
    delta, alpha = 0.4, 0.01
    v = _fgm_v(FAKE, delta)
    expected = np.sum((_phi_np(FAKE) - _phi_np(FAKE + v)) ** 2, axis=1) + alpha * np.sum(NET_B**2)
    reversed_value = np.sum((_phi_np(FAKE) - _phi_np(FAKE - v)) ** 2, axis=1) + alpha * np.sum(NET_B**2)
    assert np.all(np.abs(reversed_value - expected) > 1e-2 * expected), (expected, reversed_value)
    phi, score = _tf_net()
    value = gan_regularizers.regularizer_value(
        "rfm",
        score,
        phi,
        tf.constant(REAL),
        tf.constant(FAKE),
        SEED,
        loss="gan",
        delta=delta,
        alpha=alpha,
        w=tf.constant(NET_B[:, None]),
        fake_features=phi(tf.constant(FAKE)) if given_features else None,
    ).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-4)


# ---------------------------------------------------------------------------
# 3. The attack v carries no gradient to D's weights.


def _variables():
    return [tf.Variable(NET_A), tf.Variable(NET_C), tf.Variable(NET_B)]


def _ar_by_hand(variables, x, v_const):
    _, score = _tf_net(*variables)
    return tf.reduce_sum(tf.square(score(x) - score(x + v_const)))


def _rfm_by_hand(variables, x, v_const, alpha):
    phi, _ = _tf_net(*variables)
    w = variables[2]
    features = tf.reduce_sum(tf.square(phi(x) - phi(x + v_const)), axis=-1)
    per_example = features + alpha * tf.reduce_sum(tf.square(w))
    return tf.reduce_sum(per_example)


def _assert_same_grads(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None, (what, i)
        e = e.numpy()
        np.testing.assert_allclose(
            a.numpy(), e, rtol=1e-4, atol=1e-5 * np.max(np.abs(e)), err_msg=f"{what}[{i}]"
        )


@pytest.mark.parametrize("reg", ["ar", "rfm"])
@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_regulariser_weight_gradient_holds_the_attack_constant(reg, kind):
    """d(AR or RFM)/d(weights) of a non-linear D equals the gradient with v precomputed as a numpy
    constant (the second-order path through v = delta grad_x D / ||.|| is non-zero for tanh, so a
    missing stop-gradient shows). Also: the attack's output has no gradient to the weights, and
    adversarial_regularizer / robust_feature_matching stop the gradient of a v that has one."""
    x = tf.constant(FAKE)
    delta, alpha = 0.4, 0.01
    variables = _variables()
    phi, score = _tf_net(*variables)
    with tf.GradientTape(persistent=True) as tape:
        w = variables[2][:, None]
        value = gan_regularizers.regularizer_value(
            reg,
            score,
            phi,
            tf.constant(REAL),
            x,
            SEED,
            loss="wgan",
            attack_kind=kind,
            delta=delta,
            steps=2,
            alpha=alpha,
            w=w,
        )
        total = tf.reduce_sum(value)
        base, feats = score(x), phi(x)
        distance = (
            (lambda u: tf.square(tf.stop_gradient(base) - score(x + u)))
            if reg == "ar"
            else (lambda u: tf.reduce_sum(tf.square(tf.stop_gradient(feats) - phi(x + u)), axis=-1))
        )
        v = gan_regularizers.attack(score, distance, x, kind, delta, steps=2)
    # v itself: no path to the weights.
    assert all(g is None for g in tape.gradient(v, variables)), kind
    # The same attack the regulariser ran (same inputs, deterministic); fgm's against numpy (pgd's
    # value is not the point here).
    v_const = tf.constant(v.numpy())
    if kind == "fgm":
        np.testing.assert_allclose(v_const.numpy(), _fgm_v(FAKE, delta), rtol=1e-4, atol=1e-6)
    with tf.GradientTape() as tape2:
        expected_total = (
            _ar_by_hand(variables, x, v_const) if reg == "ar" else _rfm_by_hand(variables, x, v_const, alpha)
        )
    np.testing.assert_allclose(total.numpy(), expected_total.numpy(), rtol=1e-4)
    _assert_same_grads(
        tape.gradient(total, variables), tape2.gradient(expected_total, variables), f"{reg}/{kind}"
    )
    # The regularisers alone, given a v that depends on the weights: they must treat it as a constant.
    with tf.GradientTape() as tape3:
        w = variables[2][:, None]
        v_live = tf.reshape(0.3 * tf.linalg.matvec(variables[0], variables[2]), [1, 3, 3, 1])
        v_live = v_live * tf.ones_like(x)
        if reg == "ar":
            direct = tf.reduce_sum(gan_regularizers.adversarial_regularizer(score, x, v_live))
        else:
            direct = tf.reduce_sum(gan_regularizers.robust_feature_matching(phi, x, v_live, w, alpha))
    v_fixed = tf.constant(v_live.numpy())
    with tf.GradientTape() as tape4:
        if reg == "ar":
            ref = _ar_by_hand(variables, x, v_fixed)
        else:
            ref = _rfm_by_hand(variables, x, v_fixed, alpha)
    _assert_same_grads(tape3.gradient(direct, variables), tape4.gradient(ref, variables), f"{reg} given v")


# ---------------------------------------------------------------------------
# 4. GANTrainer.replica_step on small networks.

LATENT_DIM = 8
BATCH = 8


class _Recorder:
    """An optimizer that records the gradients it is given, then applies them."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.grads = []

    def apply_gradients(self, pairs):
        pairs = list(pairs)
        self.grads.append([None if g is None else g.numpy() for g, _ in pairs])
        return self.optimizer.apply_gradients(pairs)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


# (gan_loss, gan_generator_loss, disc_reg): every loss with every generator-loss kind (wgan's are
# the same) without a regulariser, and each regulariser under some loss and kind.
CASES = [
    ("gan", "non_saturating", "none"),
    ("gan", "minimax", "none"),
    ("lsgan", "non_saturating", "none"),
    ("lsgan", "minimax", "none"),
    ("wgan", "minimax", "none"),
    ("gan", "non_saturating", "gradient_penalty"),
    ("lsgan", "non_saturating", "ar"),
    ("wgan", "minimax", "rfm"),
]
REG_FIELDS = {
    "none": {},
    "gradient_penalty": dict(gp_weight=10.0),
    "ar": dict(reg_weight=10.0, reg_delta=0.3),
    "rfm": dict(reg_weight=10.0, reg_delta=0.3, rfm_alpha=0.01),
}


def _config(data_dir, loss, kind, reg):
    return config_lib.with_fields(
        config_lib.ExperimentConfig(),
        mode="gan",
        dataset="fashion_mnist",
        data_dir=data_dir,
        download=False,
        model="mnist_cnn",
        disc_layers=2,
        latent_dim=LATENT_DIM,
        gan_channels=4,
        batch_size=BATCH,
        learning_rate=1e-3,
        lr_boundaries=(),
        weight_decay=0.0,  # the losses alone: the gradients compared below have no decay term
        augment=False,
        train_steps=4,
        gan_loss=loss,
        gan_generator_loss=kind,
        disc_reg=reg,
        **REG_FIELDS[reg],
    )


def _scores(disc, x):
    s, phi = disc(x, training=True)
    return tf.reshape(s, [-1]), phi


def _hand_d_total(trainer, loss, reg, real, fake, v, a):
    """D's loss written out: -(1/B) sum L_i + weight (1/B) sum R_i (v, a: constants). Returns
    (total, d_loss, reg) as tensors, for autodiff w.r.t. D's weights."""
    p, disc = trainer.params, trainer.discriminator
    s_real, _ = _scores(disc, real)
    s_fake, phi_fake = _scores(disc, fake)
    d_loss = -tf.reduce_sum(_f_tf(loss, -s_real) + _f_tf(loss, s_fake)) / BATCH
    if reg == "none":
        return d_loss, d_loss, tf.constant(0.0)
    if reg == "gradient_penalty":
        x_hat = tf.constant(a * real + (1.0 - a) * fake)
        with tf.GradientTape() as inner:
            inner.watch(x_hat)
            s_hat = tf.reduce_sum(_scores(disc, x_hat)[0])
        g = inner.gradient(s_hat, x_hat)
        norm = tf.sqrt(tf.reduce_sum(tf.square(g), axis=[1, 2, 3]) + 1e-12)
        r_i, weight = tf.square(norm / p.gp_target - 1.0), p.gp_weight
    elif reg == "ar":
        r_i, weight = tf.square(s_fake - _scores(disc, fake + v)[0]), p.reg_weight
    else:
        w = disc.get_layer("score").kernel
        r_i = tf.reduce_sum(tf.square(phi_fake - _scores(disc, fake + v)[1]), axis=-1)
        r_i = r_i + p.rfm_alpha * tf.reduce_sum(tf.square(w))
        weight = p.reg_weight
    r = tf.reduce_sum(r_i) / BATCH
    return d_loss + weight * r, d_loss, r


def _hand_g_loss(loss, kind, s_fake):
    per_example = _f_tf(loss, s_fake) if kind == "minimax" else -_f_tf(loss, -s_fake)
    return tf.reduce_sum(per_example) / BATCH


def _objective_np(loss, s_real, s_fake):
    return float(np.mean(_f_np(loss, -np.asarray(s_real)) + _f_np(loss, np.asarray(s_fake))))


def _run_case(data_dir, loss, kind, reg):
    """Step 0: a D-only replica_step; step 1: D then G. Records what the checks need."""
    config = _config(data_dir, loss, kind, reg)
    keras.utils.set_random_seed(7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gan_models, "build_generator", small_generator)
        mp.setattr(gan_models, "build_gan_discriminator", small_discriminator)
        trainer = trainer_lib.build_trainer(
            config, data.dataset_info("fashion_mnist"), tf.distribute.get_strategy()
        )
    d_opt = trainer.optimizers["discriminator"] = _Recorder(trainer.optimizers["discriminator"])
    g_opt = trainer.optimizers["generator"] = _Recorder(trainer.optimizers["generator"])
    gen, disc = trainer.generator, trainer.discriminator
    # Real images: distinct per example, bright top half (unlike the generator's ~0.5 outputs).
    rng = np.random.default_rng(5)
    real = rng.uniform(0.0, 0.3, size=(BATCH, 28, 28, 1)).astype(np.float32)
    real[:, :14] += rng.uniform(0.5, 0.7, size=(BATCH, 1, 1, 1)).astype(np.float32)
    labels = tf.zeros([BATCH], tf.int64)
    rec = dict(loss=loss, kind=kind, reg=reg)

    # --- step 0: discriminator only.
    z_d = tf.random.stateless_normal([BATCH, LATENT_DIM], trainer._seed(gan_trainer._LATENT_SEED))
    fake = gen(z_d, training=True).numpy()
    assert np.abs(fake - real).max() > 0.3  # real != generated
    v = a = None
    if reg in ("ar", "rfm"):
        x = tf.constant(fake)
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.reduce_sum(_scores(disc, x)[0])
        g = tape.gradient(s, x).numpy()
        v = (trainer.params.reg_delta * _unit(g)).reshape(fake.shape).astype(np.float32)
    if reg == "gradient_penalty":
        a = tf.random.stateless_uniform(
            [BATCH, 1, 1, 1], trainer._seed(gan_trainer._PENALTY_SEED), dtype=tf.float32
        ).numpy()
    with tf.GradientTape() as tape:
        total, d_loss, r = _hand_d_total(trainer, loss, reg, real, fake, v, a)
    rec["d_grads_expected"] = [t.numpy() for t in tape.gradient(total, disc.trainable_variables)]
    rec["d_loss_expected"], rec["reg_expected"], rec["d_total_before"] = float(d_loss), float(r), float(total)
    rec["scores_before"] = (_scores(disc, real)[0].numpy(), _scores(disc, fake)[0].numpy())
    rec["objective_before"] = _objective_np(loss, *rec["scores_before"])
    g_before = [w.numpy().copy() for w in gen.trainable_variables]
    out0 = trainer.replica_step((tf.constant(real), labels), gan_trainer.GANVariant(update_generator=False))
    rec["out0"] = {k: float(t) for k, t in out0.items()}
    rec["d_grads"] = d_opt.grads[0]
    rec["g_applied_at_step0"] = len(g_opt.grads)
    rec["g_unchanged_at_step0"] = all(
        np.array_equal(w0, w.numpy()) for w0, w in zip(g_before, gen.trainable_variables)
    )
    rec["scores_after"] = (_scores(disc, real)[0].numpy(), _scores(disc, fake)[0].numpy())
    rec["objective_after"] = _objective_np(loss, *rec["scores_after"])
    # The same v and a: the function D's step descended.
    rec["d_total_after"] = float(_hand_d_total(trainer, loss, reg, real, fake, v, a)[0])

    # --- step 1: discriminator, then generator.
    trainer.step.assign_add(1)
    z_g = tf.random.stateless_normal([BATCH, LATENT_DIM], trainer._seed(gan_trainer._GEN_LATENT_SEED))
    g_weights_before = gen.get_weights()
    out1 = trainer.replica_step((tf.constant(real), labels), gan_trainer.GANVariant(update_generator=True))
    rec["out1"] = {k: float(t) for k, t in out1.items()}
    rec["g_grads"] = g_opt.grads[0]
    g_weights_after = gen.get_weights()
    # D fixed at its weights after this step; G before (weights restored) and after its update.
    gen.set_weights(g_weights_before)
    with tf.GradientTape() as tape:
        s_before = _scores(disc, gen(z_g, training=True))[0]
        g_loss = _hand_g_loss(loss, kind, s_before)
    rec["g_grads_expected"] = [t.numpy() for t in tape.gradient(g_loss, gen.trainable_variables)]
    rec["g_loss_expected"] = float(g_loss)
    gen.set_weights(g_weights_after)
    s_after = _scores(disc, gen(z_g, training=True))[0]
    rec["s_gen_before"], rec["s_gen_after"] = s_before.numpy(), s_after.numpy()
    rec["g_loss_after"] = float(_hand_g_loss(loss, kind, s_after))
    return rec


@pytest.fixture(scope="module")
def stepped(tiny_data_dir):
    """``stepped(case)``: the record of ``_run_case``, run once per case per module."""
    done = {}

    def get(case):
        if case not in done:
            done[case] = _run_case(tiny_data_dir, *case)
        return done[case]

    return get


def _assert_grads_match(actual, expected, what):
    assert len(actual) == len(expected), what
    overall = max(np.max(np.abs(e)) for e in expected)
    assert overall > 0, what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None, f"{what} variable {i}: no gradient"
        # Per variable (wgan's score bias has gradient exactly 0: its real and generated terms cancel).
        scale = np.max(np.abs(e))
        atol = 1e-4 * scale if scale > 0 else 1e-6 * overall
        np.testing.assert_allclose(a, e, rtol=1e-3, atol=atol, err_msg=f"{what} variable {i}")


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_trainer_discriminator_gradient_is_the_hand_computed_one(stepped, case):
    """The gradient replica_step gives D's optimizer equals autodiff of -(1/B) sum [f(-D(x)) +
    f(D(G(z)))] + weight (1/B) sum R, R on the generated images with v precomputed (fgm, +) and the
    penalty's a reproduced: catches a flipped D-loss sign, a subtracted regulariser, real and
    generated swapped (loss or regulariser), a reversed attack and a v that carries gradient."""
    rec = stepped(case)
    _assert_grads_match(rec["d_grads"], rec["d_grads_expected"], "D")
    assert rec["out0"]["d_loss"] == pytest.approx(rec["d_loss_expected"], rel=1e-4, abs=1e-6)
    assert rec["out0"]["regularizer"] == pytest.approx(rec["reg_expected"], rel=1e-4, abs=1e-7)
    if case[2] != "none":
        assert rec["reg_expected"] > 0


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_trainer_generator_gradient_is_the_hand_computed_one(stepped, case):
    """The gradient replica_step gives G's optimizer equals autodiff of (1/B) sum f(D(G(z)))
    (minimax) or -(1/B) sum f(-D(G(z))) (non-saturating), D after its update of the same step, the
    generator's own latents: catches a flipped G-loss sign (gan_losses or the trainer)."""
    rec = stepped(case)
    _assert_grads_match(rec["g_grads"], rec["g_grads_expected"], "G")
    assert rec["out1"]["g_loss"] == pytest.approx(rec["g_loss_expected"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_discriminator_step_separates_real_from_generated(stepped, case):
    """One D-only Adam step (GANVariant(update_generator=False)) leaves G untouched and lowers D's
    regularised loss on its own batch (v and a held fixed); without a regulariser the objective L on
    the same real and generated images goes up."""
    rec = stepped(case)
    assert rec["g_applied_at_step0"] == 0 and rec["g_unchanged_at_step0"]
    assert rec["d_total_after"] < rec["d_total_before"] - 1e-5, (rec["d_total_before"], rec["d_total_after"])
    if case[2] == "none":
        assert rec["objective_after"] > rec["objective_before"] + 1e-5, (
            rec["objective_before"],
            rec["objective_after"],
        )
        # And the gap between D's mean scores on generated and real images widens in the
        # direction of the convention (generated high for gan and wgan, real high for lsgan); the
        # score's bias cancels in it, so Adam's equal-size step of the bias cannot fake it.
        gap = [np.mean(fake) - np.mean(real) for real, fake in (rec["scores_before"], rec["scores_after"])]
        assert -_toward_real(case[0]) * (gap[1] - gap[0]) > 1e-5, (case, gap)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_generator_step_moves_toward_the_real_side(stepped, case):
    """With D's weights after the step fixed and the generator's latents of that step (batch norm in
    training mode both times), G's Adam update lowers G's loss and moves the mean D(G(z)) toward the
    real side: down for gan and wgan, up for lsgan."""
    rec = stepped(case)
    loss = case[0]
    before, after = rec["s_gen_before"], rec["s_gen_after"]
    if loss == "lsgan" and case[1] == "minimax":
        assert np.all(before > -1.0), before  # where minimax lsgan pushes D(G(z)) up
    assert rec["g_loss_after"] < rec["g_loss_expected"] - 1e-6, (rec["g_loss_expected"], rec["g_loss_after"])
    change = float(np.mean(after) - np.mean(before))
    assert _toward_real(loss) * change > 1e-6, (loss, case[1], change)
