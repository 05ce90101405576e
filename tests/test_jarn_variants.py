"""The JARN variants (--jarn_variant=paper|release|release_intended) and the
Jacobian-alignment metrics: each departure of the authors' release is
reproduced by its variant and only there."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.core import data, loop as train_lib, trainer as trainer_lib
from jarn_tf.jarn import losses
from jarn_tf.jarn.trainer import ClassifierVariant

VARIANTS = ("paper", "release", "release_intended")


def _trainer(config):
    keras.utils.set_random_seed(config.seed)
    info = data.dataset_info(config.data.dataset)
    return trainer_lib.build_trainer(config, info, tf.distribute.get_strategy())


def _batch(config, n=8):
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=n)))
    return tf.constant(images), tf.constant(labels)


def _weights(model):
    return [w.numpy().copy() for w in model.trainable_weights]


@pytest.mark.parametrize("variant", VARIANTS)
def test_noise_before_jarn_start_only_in_the_release_variants(variant, tiny_config):
    # Before --jarn_start: the release (--img_random_pert) perturbs every
    # step of the run; Algorithm 1 adds noise only in the JARN phase.
    config = tiny_config(jarn=True, jarn_variant=variant, jarn_start=0.5, noise_eps=0.1)
    trainer = _trainer(config)
    images, labels = _batch(config)
    assert not trainer.variant(0).jarn
    x = trainer._inputs(images, labels, jarn=False).numpy()
    if variant == "paper":
        np.testing.assert_array_equal(x, images.numpy())
    else:
        delta = x - images.numpy()
        assert np.abs(delta).max() > 0.05 and np.abs(delta).max() <= 0.1 + 1e-6
        assert x.min() >= 0.0 and x.max() <= 1.0
    # In the JARN phase every variant adds it.
    assert np.abs(trainer._inputs(images, labels, jarn=True).numpy() - images.numpy()).max() > 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_discriminator_real_images_are_the_noisy_inputs(variant, tiny_config):
    # Algorithm 1 lines 4 and 8 (and the release) give the discriminator the
    # same noisy x as the classifier, not the clean images.
    config = tiny_config(jarn=True, jarn_variant=variant, jarn_start=0.0, noise_eps=0.1, disc_update_every=1)
    trainer = _trainer(config)
    images, labels = _batch(config)
    seen = {"inputs": [], "real": []}
    inputs, discriminate = trainer._inputs, trainer._discriminate

    def record_inputs(*args, **kwargs):
        x = inputs(*args, **kwargs)
        seen["inputs"].append(x.numpy())
        return x

    def record_real(jacobian, real):
        seen["real"].append(real.numpy())
        return discriminate(jacobian, real)

    trainer._inputs, trainer._discriminate = record_inputs, record_real
    trainer.replica_step((images, labels), ClassifierVariant(jarn=True, update_discriminator=True))
    (x,) = seen["inputs"]
    # One pass under paper, two (the release's separate discriminator pass) otherwise.
    assert len(seen["real"]) == (1 if variant == "paper" else 2)
    for real in seen["real"]:
        np.testing.assert_array_equal(real, x)
    assert np.abs(x - images.numpy()).max() > 0.05


def _one_update_step(tiny_config, variant):
    config = tiny_config(
        jarn=True, jarn_variant=variant, jacobian="prob", jarn_start=0.0, noise_eps=0.1, disc_update_every=1
    )
    trainer = _trainer(config)
    batch = _batch(config, 16)
    before = {n: _weights(m) for n, m in trainer.networks.items()}
    trainer.replica_step(batch, ClassifierVariant(jarn=True, update_discriminator=True))
    return trainer, batch, before, {n: _weights(m) for n, m in trainer.networks.items()}


def test_release_updates_the_discriminator_after_the_classifier(tiny_config):
    # Same start, same noise, same J: the classifier and adaptor updates of
    # release_intended are the paper's; its discriminator update is computed
    # in a fresh pass with the updated classifier and adaptor.
    paper = _one_update_step(tiny_config, "paper")
    release, batch, before, after = _one_update_step(tiny_config, "release_intended")
    for name in ("classifier", "adaptor"):
        for a, b in zip(paper[3][name], after[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
    differs = [
        not np.allclose(a, b, rtol=1e-4, atol=1e-7)
        for a, b in zip(paper[3]["discriminator"], after["discriminator"])
    ]
    assert any(differs), "the release's discriminator step used the old classifier"

    # The same step by hand: a discriminator at its old weights, one SGD step
    # (first step: lr * gradient, momentum has no history) on a pass with the
    # new classifier and adaptor.
    disc = release.networks["discriminator"]
    for v, w in zip(disc.trainable_weights, before["discriminator"]):
        v.assign(w)
    images, labels = batch
    release.step.assign(0)
    x = release._inputs(images, labels, jarn=True)
    with tf.GradientTape() as tape:
        _, jacobian = release.input_jacobian(x, labels, "prob", training=True)
        _, fake, real = release._discriminate(jacobian, x)
        loss = -tf.reduce_mean(losses.jarn_adversarial_loss(fake, real)) + release._weight_decay(disc)
    grads = tape.gradient(loss, disc.trainable_weights)
    lr = float(release.schedule(0))
    for w, g, a in zip(before["discriminator"], grads, after["discriminator"]):
        np.testing.assert_allclose(w - lr * g.numpy(), a, rtol=1e-4, atol=1e-6)


def test_release_feeds_raw_pixels_past_the_standardisation(tiny_config):
    # --jarn_variant=release: the layers after the standardisation see 255 x
    # (the release's feed dict), and J is the standardisation's VJP at x of
    # the gradient there (TF1 feeding replaces a value, not the graph).
    config = tiny_config(jarn=True, jarn_variant="release", jarn_start=0.0)
    trainer = _trainer(config)
    images, labels = _batch(config, 4)
    model = trainer.classifier
    standardize = model.get_layer("standardize")
    body = keras.Model(standardize.output, model.output)

    logits, jac = trainer.input_jacobian(images, labels, "prob", training=False)
    np.testing.assert_allclose(logits, body(255.0 * images, training=False), rtol=1e-5, atol=1e-5)
    raw = tf.constant(255.0 * images)
    with tf.GradientTape() as tape:
        tape.watch(raw)
        p = losses.true_class_probability(labels, body(raw, training=False))
    grad_at_raw = tape.gradient(p, raw)
    with tf.GradientTape() as tape:
        tape.watch(images)
        s = standardize(images)
    expected = tape.gradient(s, images, output_gradients=grad_at_raw)
    np.testing.assert_allclose(jac, expected, rtol=1e-4, atol=1e-9)
    assert not np.allclose(jac, tape_free_jacobian(model, images, labels), atol=1e-9)

    # release_intended (and paper) differentiate the classifier as exported.
    intended = _trainer(tiny_config(jarn=True, jarn_variant="release_intended", jarn_start=0.0))
    _, jac = intended.input_jacobian(images, labels, "prob", training=False)
    np.testing.assert_allclose(
        jac, tape_free_jacobian(intended.classifier, images, labels), rtol=1e-4, atol=1e-9
    )


def tape_free_jacobian(model, images, labels):
    with tf.GradientTape() as tape:
        tape.watch(images)
        p = losses.true_class_probability(labels, model(images, training=False))
    return tape.gradient(p, images)


@pytest.mark.parametrize(
    "args, jacobian, jarn_start",
    [
        ([], "xent", 0.75),
        (["--jarn_variant=release"], "prob", 0.875),
        (["--jarn_variant=release_intended"], "prob", 0.875),
        (["--jarn_variant=release", "--jacobian=xent", "--jarn_start=0.5"], "xent", 0.5),
    ],
)
def test_variant_sets_the_defaults_of_unset_flags(args, jacobian, jarn_start):
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    fv(["x", "--dataset=fashion_mnist", "--jarn", *args])
    config = flag_utils.config_from_flags(fv)
    assert (config.mode_config.jacobian, config.mode_config.jarn_start) == (jacobian, jarn_start)


def test_release_variant_trains_and_exports_the_standardising_classifier(tiny_config, tmp_path):
    # A whole run (through the loop, compiled) of the release as it ran; the
    # export is the classifier with its standardisation, as the release tested it.
    config = tiny_config(jarn=True, jarn_variant="release", jarn_start=0.5, train_steps=6, learning_rate=1e-4)
    result = train_lib.train(config, str(tmp_path / "release"), eval_examples=16, verbose=0)
    assert result.step == 6
    exported = keras.saving.load_model(
        str(tmp_path / "release" / "export" / "classifier.keras"), compile=False
    )
    assert exported.layers[1].name == "standardize"


def test_jacobian_alignment_known_values():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(3, 5, 5, 1)), tf.float32)
    norm_x = np.sqrt((x.numpy() ** 2).sum(axis=(1, 2, 3)))
    # J = -3 x: the same image up to sign and scale.
    np.testing.assert_allclose(losses.jacobian_image_cosine(-3.0 * x, x), 1.0, rtol=1e-5)
    np.testing.assert_allclose(losses.jacobian_alignment(-3.0 * x, x), norm_x, rtol=1e-5)
    # J = x + 7: the standardised cosine ignores brightness; the alignment does not.
    np.testing.assert_allclose(losses.jacobian_image_cosine(x + 7.0, x), 1.0, rtol=1e-4)
    assert np.all(losses.jacobian_alignment(x + 7.0, x).numpy() < norm_x)
    # J varying along rows only, the image along columns only: orthogonal once centred.
    ramp = np.tile(np.arange(5, dtype=np.float32), (5, 1)).reshape(1, 5, 5, 1)
    rows = np.transpose(ramp, (0, 2, 1, 3))
    assert float(losses.jacobian_image_cosine(rows, ramp)[0]) == pytest.approx(0.0, abs=1e-6)


def test_standardising_classifier_has_jacobian_orthogonal_to_the_image(tiny_config):
    # f(a x + b) = f(x) for the per-image standardisation, so <J, x> = 0 and
    # <J, 1> = 0 exactly: J can never equal x (the paper's Theorem 3.1
    # optimum), and the linear alignment measures are 0 for every such model.
    config = tiny_config()
    trainer = _trainer(config)
    images, labels = _batch(config, 8)
    _, jac = trainer.input_jacobian(images, labels, "xent", training=False)
    j, x = jac.numpy().reshape(8, -1), images.numpy().reshape(8, -1)
    scale = np.linalg.norm(j, axis=1) * np.linalg.norm(x, axis=1)
    np.testing.assert_allclose((j * x).sum(axis=1) / scale, 0.0, atol=1e-5)
    np.testing.assert_allclose(j.sum(axis=1) / np.linalg.norm(j, axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(losses.jacobian_image_cosine(jac, images), 0.0, atol=1e-5)
    assert np.all(np.abs(losses.saliency_image_cosine(jac, images).numpy()) > 1e-3)
    # Without the standardisation (--nostandardize_input, or a plain linear model) neither holds.
    unstandardised = _trainer(tiny_config(standardize_input=False))
    assert "standardize" not in [layer.name for layer in unstandardised.classifier.layers]
    _, jac = unstandardised.input_jacobian(images, labels, "xent", training=False)
    assert np.all(losses.jacobian_image_cosine(jac, images).numpy() > 1e-4)
    w = tf.constant(np.random.default_rng(1).normal(size=(28 * 28, 10)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        xent = losses.cross_entropy(labels, tf.reshape(images, [8, -1]) @ w)
    plain = tape.gradient(xent, images)
    assert np.all(losses.jacobian_image_cosine(plain, images).numpy() > 1e-3)


def test_non_saturating_generator_loss_keeps_its_gradient_when_the_discriminator_wins():
    # D rejects J' confidently (logit 10 for "fake"): the minimax term's
    # gradient has vanished, the non-saturating one's has not.
    fake = tf.constant([[10.0, 0.0]])
    real = tf.constant([[0.0, 10.0]])
    grads = {}
    for kind in ("minimax", "non_saturating"):
        with tf.GradientTape() as tape:
            tape.watch(fake)
            value = losses.jarn_generator_loss(fake, real, kind)
        grads[kind] = float(tf.reduce_max(tf.abs(tape.gradient(value, fake))))
        if kind == "non_saturating":
            assert float(value[0]) == pytest.approx(0.5 * np.log1p(np.exp(10.0)), rel=1e-6)
    assert grads["minimax"] < 1e-4 < 0.4 < grads["non_saturating"]


def test_generator_loss_flag_changes_the_classifier_update_only(tiny_config):
    after = {}
    for kind in ("minimax", "non_saturating"):
        config = tiny_config(jarn=True, jarn_start=0.0, jarn_generator_loss=kind, disc_update_every=1)
        trainer = _trainer(config)
        trainer.replica_step(_batch(config, 16), ClassifierVariant(jarn=True, update_discriminator=True))
        after[kind] = {n: _weights(m) for n, m in trainer.networks.items()}
    for name in ("classifier", "adaptor"):
        assert any(
            not np.allclose(a, b) for a, b in zip(after["minimax"][name], after["non_saturating"][name])
        )
    # The discriminator's objective is the same under both.
    for a, b in zip(after["minimax"]["discriminator"], after["non_saturating"]["discriminator"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
