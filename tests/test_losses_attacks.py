"""Known values for the losses and the training attacks."""

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.jarn import losses
from jarn_tf.robustness import attacks


def _np_xent(labels, logits):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def test_cross_entropy_and_margin_known_values():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]], np.float32)
    labels = np.array([0, 2])
    np.testing.assert_allclose(losses.cross_entropy(labels, logits), _np_xent(labels, logits), rtol=1e-6)
    # margin = max other - true: [1 - 2, 3 - (-1)]
    np.testing.assert_allclose(losses.margin_loss(labels, logits), [-1.0, 4.0], rtol=1e-6)


def test_discriminator_losses_known_values():
    # Discriminator logits: fake example 0 says "fake" confidently, real says "real".
    fake = np.array([[3.0, 0.0]], np.float32)
    real = np.array([[0.0, 2.0]], np.float32)
    xent = losses.discriminator_cross_entropy(fake, real).numpy()
    expected = [np.log1p(np.exp(-3.0)), np.log1p(np.exp(-2.0))]
    np.testing.assert_allclose(xent, expected, rtol=1e-6)
    # L_adv of the pair is minus the mean discriminator xent over its 2 inputs.
    np.testing.assert_allclose(losses.jarn_adversarial_loss(fake, real), [-np.mean(expected)], rtol=1e-6)
    np.testing.assert_array_equal(losses.discriminator_accuracy(fake, real), [1.0, 1.0])
    np.testing.assert_array_equal(losses.discriminator_accuracy(real, fake), [0.0, 0.0])


def test_gan_loss_form_of_eq9():
    # log D(x) + log(1 - D(J')) with D = softmax prob of "real".
    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    d = lambda z: np.exp(z[:, 1]) / np.exp(z).sum(axis=1)
    eq9 = np.log(d(real)) + np.log(1 - d(fake))
    np.testing.assert_allclose(losses.jarn_adversarial_loss(fake, real), eq9 / 2, rtol=1e-5)


def test_standardize_and_penalty_and_weight_decay():
    x = tf.random.stateless_uniform([3, 4, 4, 2], seed=[1, 2])
    s = losses.standardize_per_example(x).numpy()
    np.testing.assert_allclose(s.mean(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.sqrt((s**2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)
    j = np.ones([2, 2, 2, 1], np.float32) * np.array([1.0, 2.0], np.float32)[:, None, None, None]
    np.testing.assert_allclose(losses.input_gradient_penalty(j), [4.0, 16.0])
    v = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    assert float(losses.l2_weight_decay(v)) == pytest.approx((1 + 4 + 9) / 2)
    assert float(losses.scale_loss(tf.constant([1.0, 2.0, 3.0]), 6)) == pytest.approx(1.0)


def test_prob_and_xent_jacobians_agree_after_standardisation():
    """d xent/dx = -(1/p_y) d p_y/dx, so standardised they are exact negatives."""
    w = tf.constant(np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32))
    model = lambda x: tf.matmul(tf.reshape(x, [-1, 12]), w)
    x = tf.random.stateless_uniform([5, 2, 2, 3], seed=[3, 4])
    y = tf.constant([0, 1, 2, 1, 0])
    out = {}
    for kind in losses.JACOBIAN_KINDS:
        with tf.GradientTape() as tape:
            tape.watch(x)
            obj = tf.reduce_sum(losses.jacobian_objective(y, model(x), kind))
        out[kind] = losses.standardize_per_example(tape.gradient(obj, x)).numpy()
    np.testing.assert_allclose(out["xent"], -out["prob"], atol=1e-5)


def _objective_value_j_and_its_weight_gradient(objective, w0, x, y, v, dtype):
    """objective(labels, logits) summed, J = d/dx, and d <J, v> / dW for logits = x W."""
    w = tf.Variable(w0.astype(dtype))
    x = tf.constant(x.astype(dtype))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            obj = objective(y, tf.matmul(x, w))
            total = tf.reduce_sum(obj)
        j = inner.gradient(total, x)
        inner_product = tf.reduce_sum(j * v.astype(dtype))
    return obj.numpy(), j.numpy(), outer.gradient(inner_product, w).numpy()


def _naive(kind):
    """The softmax forms: what the stable objective replaced."""
    if kind == "xent":
        return lambda y, z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
    return lambda y, z: tf.reduce_sum(tf.nn.softmax(z) * tf.one_hot(y, tf.shape(z)[-1], dtype=z.dtype), -1)


@pytest.mark.parametrize("kind", losses.JACOBIAN_KINDS)
def test_jacobian_objective_is_accurate_for_confident_examples(kind):
    # Margins of 25-33 logits: 1 - p_y ~ 1e-11 to 1e-14, which float32 cannot hold next to p_y ~ 1.
    # J and the gradient through J (what JARN and double backprop train on) against the softmax
    # forms in float64 (accurate here: their rounding error, 1e-16, is far below 1 - p_y).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6))
    y = np.array([0, 1, 2, 3])
    logits = rng.normal(size=(4, 4)) + 30.0 * np.eye(4)[y]
    w0 = np.linalg.pinv(x) @ logits  # x w0 = logits
    margin = np.sort((x @ w0)[np.arange(4), y][:, None] - x @ w0, axis=1)[:, 1]
    assert np.all((20 < margin) & (margin < 40)), margin
    # The float32 inputs exactly, so that the two differ by the arithmetic only.
    x, w0, v = (a.astype(np.float32).astype(np.float64) for a in (x, w0, rng.normal(size=x.shape)))
    obj, j, g = _objective_value_j_and_its_weight_gradient(
        lambda y_, z: losses.jacobian_objective(y_, z, kind), w0, x, y, v, np.float32
    )
    ref_obj, ref_j, ref_g = _objective_value_j_and_its_weight_gradient(_naive(kind), w0, x, y, v, np.float64)
    # Left: float32 rounding of the logits themselves (about 1e-4 of a logit here).
    np.testing.assert_allclose(obj, ref_obj, rtol=2e-3)
    np.testing.assert_allclose(j, ref_j, rtol=2e-3, atol=2e-3 * np.abs(ref_j).max())
    np.testing.assert_allclose(g, ref_g, rtol=2e-3, atol=2e-3 * np.abs(ref_g).max())
    # The softmax forms in float32 are far off here: what this test guards against.
    _, naive_j, naive_g = _objective_value_j_and_its_weight_gradient(_naive(kind), w0, x, y, v, np.float32)
    assert np.abs(naive_j - ref_j).max() > 0.1 * np.abs(ref_j).max()
    assert np.abs(naive_g - ref_g).max() > 0.1 * np.abs(ref_g).max()


def _linear_model(seed=0, d=2 * 2 * 1, k=3):
    w = tf.constant(np.random.default_rng(seed).normal(size=(d, k)).astype(np.float32))
    return lambda x: tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w), w.numpy()


def test_fgsm_matches_closed_form_on_linear_model():
    model, w = _linear_model()
    x = np.full([2, 2, 2, 1], 0.5, np.float32)
    y = np.array([0, 2])
    eps = 0.1
    adv = attacks.fgsm(model, x, y, eps).numpy()
    # Independent gradient of xent for a linear model: W (softmax - onehot).
    logits = x.reshape(2, -1) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(2), y] -= 1
    grad = (p @ w.T).reshape(x.shape)
    np.testing.assert_allclose(adv, np.clip(x + eps * np.sign(grad), 0, 1), atol=1e-6)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("loss", ["xent", "margin"])
def test_pgd_stays_in_ball_and_box(random_start, loss):
    model, _ = _linear_model(seed=2)
    x = tf.random.stateless_uniform([8, 2, 2, 1], seed=[5, 6])
    y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    eps = 0.05
    adv = attacks.pgd(
        model, x, y, eps, 0.02, 10, random_start=random_start, loss=loss, seed=tf.constant([1, 2])
    ).numpy()
    assert np.all(np.abs(adv - x.numpy()) <= eps + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # More steps of ascent never lower the attack loss on this linear model.
    fn = attacks.ATTACK_LOSSES[loss]
    assert float(tf.reduce_sum(fn(y, model(adv)))) >= float(tf.reduce_sum(fn(y, model(x)))) - 1e-6


def test_pgd_rejects_unknown_loss():
    model, _ = _linear_model()
    with pytest.raises(ValueError, match="Unknown attack loss"):
        attacks.pgd(model, np.zeros([1, 2, 2, 1], np.float32), [0], 0.1, 0.1, 1, loss="hinge")
