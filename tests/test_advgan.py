"""The advgan modes (Rob-GAN): losses, the co-training attack, training, fine-tuning, export, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.robgan import losses as advgan_losses, models as advgan_models
from jarn_tf import config as config_lib
from jarn_tf.core import loop as train_lib
from jarn_tf.robgan import trainer as advgan_trainers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sp(t):  # softplus
    return math.log1p(math.exp(t))


def _xent(logits, y):
    m = max(logits)
    return m + math.log(sum(math.exp(v - m) for v in logits)) - logits[y]


# -- losses against hand-computed values -----------------------------------------
S_REAL, S_FAKE = [1.5, -0.5], [0.3, -2.0]
C_REAL, Y_REAL = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [0, 2]
C_FAKE, Y_FAKE = [[0.0, 1.0, 0.0], [3.0, -1.0, 1.0]], [1, 2]


def _losses(class_loss):
    return advgan_losses.discriminator_losses(
        tf.constant(S_REAL), tf.constant(C_REAL), tf.constant(Y_REAL),
        tf.constant(S_FAKE), tf.constant(C_FAKE), tf.constant(Y_FAKE), class_loss,
    )  # fmt: skip


@pytest.mark.parametrize("class_loss", ["split", "acgan"])
def test_discriminator_losses_eq8_eq9_hand_values(class_loss):
    out = {k: v.numpy() for k, v in _losses(class_loss).items()}
    for i in range(2):
        source = _sp(-S_REAL[i]) + _sp(S_FAKE[i])  # -log sigmoid(s_r) - log(1 - sigmoid(s_f))
        c1, c2 = _xent(C_REAL[i], Y_REAL[i]), _xent(C_FAKE[i], Y_FAKE[i])
        expected = source + c1 + (c2 if class_loss == "acgan" else 0.0)  # -(L_S + L_C1) or -(L_S + L_C)
        np.testing.assert_allclose(out["source"][i], source, rtol=1e-6)
        np.testing.assert_allclose(out["class_real"][i], c1, rtol=1e-6)
        np.testing.assert_allclose(out["class_fake"][i], c2, rtol=1e-6)
        np.testing.assert_allclose(out["total"][i], expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["minimax", "non_saturating"])
def test_generator_loss_hand_values(kind):
    out = advgan_losses.generator_losses(tf.constant(S_FAKE), tf.constant(C_FAKE), tf.constant(Y_FAKE), kind)
    for i in range(2):
        source = -_sp(S_FAKE[i]) if kind == "minimax" else _sp(-S_FAKE[i])
        np.testing.assert_allclose(out["total"].numpy()[i], source + _xent(C_FAKE[i], Y_FAKE[i]), rtol=1e-6)


def test_attack_objective_and_finetune_loss_hand_values():
    obj = advgan_losses.attack_objective(
        tf.constant(S_REAL), tf.constant(C_REAL), tf.constant(Y_REAL)
    ).numpy()
    ft = advgan_losses.finetune_loss(
        tf.constant(C_REAL), tf.constant(Y_REAL), tf.constant(C_FAKE), tf.constant(Y_FAKE), 0.5
    )["total"].numpy()
    for i in range(2):
        np.testing.assert_allclose(obj[i], _sp(-S_REAL[i]) + _xent(C_REAL[i], Y_REAL[i]), rtol=1e-6)
        np.testing.assert_allclose(
            ft[i], _xent(C_REAL[i], Y_REAL[i]) + 0.5 * _xent(C_FAKE[i], Y_FAKE[i]), rtol=1e-6
        )


def test_split_loss_gives_the_discriminator_no_gradient_from_the_fake_class_loss():
    # On the logits: d total / d fake class logits is 0 under eq. 9 and not under eq. 8.
    for class_loss, zero in (("split", True), ("acgan", False)):
        fake_logits = tf.Variable(C_FAKE)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(
                advgan_losses.discriminator_losses(
                    tf.constant(S_REAL), tf.constant(C_REAL), tf.constant(Y_REAL),
                    tf.constant(S_FAKE), fake_logits, tf.constant(Y_FAKE), class_loss,
                )["total"]
            )  # fmt: skip
        grad = tape.gradient(total, fake_logits)
        assert (grad is None or not np.any(grad.numpy())) == zero, class_loss
    # On the network: the discriminator's gradients do not depend on the generated images' labels.
    disc = advgan_models.build_discriminator((8, 8, 1), 3, channels=4)
    rng = np.random.default_rng(0)
    real, fake = (tf.constant(rng.uniform(size=(4, 8, 8, 1)), tf.float32) for _ in range(2))
    y_real = tf.constant([0, 1, 2, 0])

    def grads(class_loss, y_fake):
        with tf.GradientTape() as tape:
            (rs, rl), (fs, fl) = disc(real), disc(fake)
            total = tf.reduce_sum(
                advgan_losses.discriminator_losses(rs, rl, y_real, fs, fl, tf.constant(y_fake), class_loss)[
                    "total"
                ]
            )
        return [g.numpy() for g in tape.gradient(total, disc.trainable_variables)]

    for a, b in zip(grads("split", [0, 0, 0, 0]), grads("split", [2, 1, 0, 1])):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.allclose(a, b) for a, b in zip(grads("acgan", [0, 0, 0, 0]), grads("acgan", [2, 1, 0, 1]))
    )


def test_cotraining_attack_increases_the_discriminator_loss_within_eps_and_range():
    tf.keras.utils.set_random_seed(0)
    disc = advgan_models.build_discriminator((8, 8, 1), 3, channels=8)
    images = tf.constant(np.random.default_rng(1).uniform(size=(16, 8, 8, 1)), tf.float32)
    images = tf.clip_by_value(images * 1.2 - 0.1, 0.0, 1.0)  # some pixels at 0 and 1
    labels = tf.constant(np.arange(16) % 3)

    def heads(x):
        s, c = disc(x, training=False)
        return tf.reshape(s, [-1]), c

    eps = 0.05
    adv = advgan_losses.cotraining_attack(heads, images, labels, eps, eps / 4, 5)
    before = advgan_losses.attack_objective(*heads(images), labels).numpy()
    after = advgan_losses.attack_objective(*heads(adv), labels).numpy()
    assert after.mean() > before.mean() and np.mean(after > before) > 0.9
    assert np.max(np.abs(adv.numpy() - images.numpy())) <= eps + 1e-6
    assert adv.numpy().min() >= 0.0 and adv.numpy().max() <= 1.0
    # The seeded random start stays in range too; 0 steps is the identity.
    adv = advgan_losses.cotraining_attack(heads, images, labels, eps, eps / 4, 2, True, tf.constant([1, 2]))
    assert np.max(np.abs(adv.numpy() - images.numpy())) <= eps + 1e-6 and 0 <= adv.numpy().min()
    np.testing.assert_array_equal(
        advgan_losses.cotraining_attack(heads, images, labels, eps, 0.01, 0), images
    )


def test_marginal_generator_draws_classes_uniformly_and_matches_the_conditional_one():
    freq = advgan_models.uniform_class_check(10)
    np.testing.assert_allclose(freq, 0.1, atol=0.005)
    gens = advgan_models.build_generators(4, (8, 8, 1), 3, channels=4)
    z = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    labels = np.searchsorted(advgan_models.normal_quantiles(3), z[:, 0], side="right")
    np.testing.assert_allclose(
        gens["marginal"](z, training=False),
        gens["conditional"]([z[:, 1:], labels], training=False),
        atol=1e-6,
    )


# -- training, resuming, fine-tuning, export ---------------------------------------
ADVGAN_FIELDS = dict(
    dataset="fashion_mnist",
    # Classifier-mode fields, unused here, at values valid for 28x28 images.
    model="mnist_cnn",
    disc_layers=2,
    download=False,
    train_steps=4,
    batch_size=8,
    steps_per_loop=2,
    checkpoint_every=2,
    summary_every=2,
    image_summary_every=0,
    eval_every=0,
    eval_pgd_steps=1,
    eval_pgd_examples=8,
    eps=0.1,
    attack_steps=2,
    attack_step_size=0.05,  # 2 steps reach eps (--attack_must_reach_eps)
)


def _config(mode, data_dir, **fields):
    base = config_lib.ExperimentConfig(mode=mode)
    values = dict(ADVGAN_FIELDS, data_dir=data_dir)
    if mode == "advgan_pgd_at":
        values.update(gan_channels=4, learning_rate=1e-3, lr_boundaries=(0.5,), attack_random_start=True)
    elif mode != "advgan_finetune":
        values.update(latent_dim=8, gan_channels=4, advgan_disc_steps=2, learning_rate=2e-4, lr_boundaries=())
    else:
        values.update(learning_rate=1e-3, lr_boundaries=(0.5,), attack_random_start=True)
    values.update(fields)
    return config_lib.with_fields(base, **values)


@pytest.fixture(scope="module")
def cotrained(tiny_data_dir, tmp_path_factory):
    """A co-training run of 4 steps, interrupted at step 2 and resumed."""
    model_dir = str(tmp_path_factory.mktemp("advgan") / "co")
    config = _config("advgan", tiny_data_dir)
    first = train_lib.train(config, model_dir, eval_examples=16, stop_after=2, verbose=0)
    assert first.step == 2 and first.export_dir is None
    second = train_lib.train(config, model_dir, eval_examples=16, verbose=0)
    assert (second.start_step, second.step) == (2, 4)
    return model_dir, second


def test_advgan_trains_resumes_and_exports_a_conditional_generator(cotrained):
    model_dir, result = cotrained
    assert set(result.metrics) >= {"train/d_loss", "train/g_loss", "train/attack_gain", "train/real_accuracy"}
    assert all(np.isfinite(v) for v in result.metrics.values())
    export_dir = os.path.join(model_dir, "export")
    names = set(os.listdir(export_dir))
    assert {
        "generator.keras",
        "conditional_generator.keras",
        "saved_model",
        "metadata.json",
        "samples.png",
    } <= names
    metadata = json.load(open(os.path.join(export_dir, "metadata.json")))
    assert metadata["kind"] == "generator" and metadata["latent_dim"] == 9
    assert metadata["conditional"] == {**metadata["conditional"], "num_classes": 10, "latent_dim": 8}
    assert "clean_accuracy" in metadata["class_head"]
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    images = loaded.signatures["conditional"](latent=tf.zeros([3, 8]), labels=tf.constant([0, 1, 9]))[
        "images"
    ]
    assert images.shape == (3, 28, 28, 1) and 0 <= images.numpy().min() and images.numpy().max() <= 1
    assert loaded.signatures["serving_default"](latent=tf.zeros([2, 9]))["images"].shape == (2, 28, 28, 1)
    # The class head before fine-tuning (Figure 5), a classifier export of its own: the discriminator's
    # class logits.
    head_dir = os.path.join(export_dir, "class_head")
    head_meta = json.load(open(os.path.join(head_dir, "metadata.json")))
    assert head_meta["dataset"] == "fashion_mnist" and head_meta["image_shape"] == [28, 28, 1]
    assert "before fine-tuning" in head_meta["class_head_of"] and "kind" not in head_meta
    head = tf.saved_model.load(os.path.join(head_dir, "saved_model")).signatures["serving_default"]
    x = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype("float32")
    discriminator = result.trainer.discriminator
    np.testing.assert_allclose(
        head(images=tf.constant(x))["logits"].numpy(), discriminator(x, training=False)[1].numpy(), atol=1e-5
    )


def test_nan_in_the_cotraining_loss_stops_with_the_last_good_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    heads = advgan_trainers.AdvGANTrainer.heads

    def poisoned(self, x, training=False):
        source, logits = heads(self, x, training)
        if training:  # a real NaN in the discriminator's source logits from step 3 on
            source = source + tf.where(self.step >= 3, np.nan, 0.0)
        return source, logits

    monkeypatch.setattr(advgan_trainers.AdvGANTrainer, "heads", poisoned)
    model_dir = str(tmp_path / "nan")
    with pytest.raises(train_lib.NonFiniteLossError, match="at step 3"):
        train_lib.train(_config("advgan", tiny_data_dir), model_dir, eval_examples=0, verbose=0)
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-2")
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "ckpt-2"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def _tensor_like(checkpoint_dir, prefix, like):
    """The tensors of the newest checkpoint whose name starts with ``prefix`` and shape is ``like``'s.

    (A variable is stored once, under the first path to it: often its optimizer's.)
    """
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir))
    names = reader.get_variable_to_shape_map()
    return [reader.get_tensor(n) for n in names if n.startswith(prefix) and tuple(names[n]) == like.shape]


@pytest.fixture(scope="module")
def finetuned(cotrained, tiny_data_dir, tmp_path_factory):
    """A fine-tuning run from ``cotrained``: 2 steps, a resume that trains nothing, 2 more steps."""
    init, _ = cotrained
    model_dir = str(tmp_path_factory.mktemp("advgan") / "ft")
    config = _config("advgan_finetune", tiny_data_dir, init_from=init)
    first = train_lib.train(config, model_dir, eval_examples=16, stop_after=2, verbose=0)
    again = train_lib.train(config, model_dir, eval_examples=16, stop_after=2, verbose=0)
    second = train_lib.train(config, model_dir, eval_examples=16, verbose=0)
    assert (again.start_step, again.step, second.start_step, second.step) == (2, 2, 2, 4)
    return model_dir, init, first, again, second


def test_finetune_starts_from_the_cotraining_run_and_resumes_from_its_own_checkpoint(finetuned):
    _, init, first, again, second = finetuned
    checkpoints = os.path.join(init, "checkpoints")
    # Fresh start: the frozen generator is the co-trained one (the newest co-training checkpoint).
    assert first.trainer.init_checkpoint.endswith("ckpt-4")
    linear = first.trainer.generator.get_layer("linear").kernel.numpy()
    assert any(np.array_equal(t, linear) for t in _tensor_like(checkpoints, "", linear))
    # Resume: the fine-tuned class head of step 2 wins over the co-trained one restored first.
    head = first.trainer.classifier.get_layer("classes").kernel.numpy()
    np.testing.assert_array_equal(again.trainer.classifier.get_layer("classes").kernel.numpy(), head)
    cotrained_heads = _tensor_like(checkpoints, "", head)
    assert cotrained_heads and not any(np.array_equal(t, head) for t in cotrained_heads)
    assert set(second.metrics) >= {"train/xent_real", "train/xent_fake", "train/accuracy_real"}
    assert all(np.isfinite(v) for v in second.metrics.values())


LOAD_WITHOUT_PACKAGE = r"""
import json, sys
import numpy as np
import keras, tensorflow as tf
export_dir = sys.argv[1]
model = keras.saving.load_model(export_dir + "/classifier.keras")
x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
a = np.asarray(model(x, training=False))
b = tf.saved_model.load(export_dir + "/saved_model").signatures["serving_default"](images=tf.constant(x))["logits"]
assert "jarn_tf" not in sys.modules
print(json.dumps({"shape": list(a.shape), "diff": float(np.abs(a - b.numpy()).max())}))
"""


def test_finetuned_classifier_exports_loads_without_the_package_and_evaluates(
    finetuned, evaluate_cli, tmp_path
):
    model_dir = finetuned[0]
    export_dir = os.path.join(model_dir, "export")
    metadata = json.load(open(os.path.join(export_dir, "metadata.json")))
    assert metadata["mode"] == "advgan_finetune" and metadata["config"]["advgan_finetune"]["eps"] == 0.1
    assert "clean_accuracy" in metadata and "pgd_accuracy" in metadata
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, export_dir],
        capture_output=True, text=True, cwd=str(tmp_path), env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, 10] and out["diff"] < 1e-4
    proc = evaluate_cli(
        f"--model={model_dir}", "--attacks=clean,pgd2", "--num_examples=16", "--noeps_checks",
        "--square_check_queries=0", "--verbose=0", f"--output_dir={tmp_path / 'eval'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert results["eps_source"] == "metadata" and abs(results["eps"] - 0.1) < 1e-9
    assert set(results["attacks"]) == {"clean", "pgd2"}


# -- the paper's baseline: PGD-AT of the same network (--mode=advgan_pgd_at) ----------------
@pytest.fixture(scope="module")
def pgd_at(tiny_data_dir, tmp_path_factory):
    """A baseline run of 4 steps, killed at step 2 and resumed."""
    model_dir = str(tmp_path_factory.mktemp("advgan") / "pgd_at")
    config = _config("advgan_pgd_at", tiny_data_dir)
    first = train_lib.train(config, model_dir, eval_examples=16, stop_after=2, verbose=0)
    second = train_lib.train(config, model_dir, eval_examples=16, verbose=0)
    assert (first.step, second.start_step, second.step) == (2, 2, 4)
    return model_dir, second


def test_baseline_is_the_finetuned_classifiers_network_trained_from_scratch(pgd_at, finetuned):
    model_dir, result = pgd_at
    baseline, tuned = result.trainer.classifier, finetuned[4].trainer.classifier
    assert [(w.path, tuple(w.shape)) for w in baseline.weights] == [
        (w.path, tuple(w.shape)) for w in tuned.weights
    ]
    assert advgan_models.spectral_layers(baseline)  # sngan, as the co-training default
    # Only the trunk and the class head train: the source head keeps its initial weights.
    trained = {id(v) for v in result.trainer._train_vars}
    source = result.trainer.discriminator.get_layer("source").trainable_variables
    assert source and not any(id(v) in trained for v in source)
    assert set(result.metrics) >= {"train/xent_real", "train/accuracy_real"}
    assert all(np.isfinite(v) for v in result.metrics.values())
    metadata = json.load(open(os.path.join(model_dir, "export", "metadata.json")))
    assert metadata["mode"] == "advgan_pgd_at" and "pgd_accuracy" in metadata
    assert metadata["train_split"]["num_train_examples"] == 16 and "llv_train" in metadata["train_split"]


def test_class_head_evaluation_measures_the_train_and_test_gap_and_llv(pgd_at, finetuned):
    for trainer in (pgd_at[1].trainer, finetuned[4].trainer):
        evaluation = trainer.evaluate(16)
        assert set(evaluation) == {
            "eval/clean_accuracy",
            "eval/pgd1_accuracy",
            "eval/llv_test",
            "eval/clean_accuracy_train",
            "eval/pgd1_accuracy_train",
            "eval/llv_train",
        }
        assert evaluation["eval/llv_train"] > 0 and evaluation["eval/llv_test"] > 0
    # The train keys measure the training split: on a run whose training and test images differ,
    # they differ.
    from jarn_tf.core import data

    config = pgd_at[1].trainer.config
    train_x, _ = data.load_arrays(config.data, "train")
    test_x, _ = data.load_arrays(config.data, "test")
    if not np.array_equal(train_x[:16], test_x[:16]):
        assert evaluation["eval/llv_train"] != evaluation["eval/llv_test"]


def test_llv_is_the_per_image_input_gradient_norm_of_the_cross_entropy(pgd_at):
    """A linear classifier f(x) = W x + b: d xent / d x = W^T (softmax(f(x)) - onehot(y)), per image."""
    import keras

    trainer = pgd_at[1].trainer
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 28, 28, 1)).astype("float32")
    y = np.array([0, 3, 9, 3, 1], np.int32)
    linear = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    w = rng.normal(scale=0.05, size=(784, 10)).astype("float32")
    b = rng.normal(size=10).astype("float32")
    linear.layers[-1].set_weights([w, b])
    saved, trainer.classifier = trainer.classifier, linear
    try:
        got = trainer._llv(tf.constant(x), tf.constant(y)).numpy()
    finally:
        trainer.classifier = saved
    logits = x.reshape(5, -1) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(10)[y]) @ w.T
    np.testing.assert_allclose(got, np.linalg.norm(grad, axis=1), rtol=1e-4)


def test_baseline_steps_lower_the_adversarial_loss_of_a_fixed_batch(tiny_data_dir):
    from jarn_tf.core import data, trainer as trainer_lib

    config = _config("advgan_pgd_at", tiny_data_dir, learning_rate=3e-3, lr_boundaries=())
    tf.keras.utils.set_random_seed(0)
    trainer = trainer_lib.build_trainer(config, data.dataset_info(config.data.dataset), tf.distribute.get_strategy())
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=8)))
    x, y = tf.constant(images), tf.cast(tf.constant(labels), tf.int32)

    def adversarial_xent():
        adv = trainer._attack(x, y, advgan_trainers._ATTACK_SEED)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, trainer._logits(adv))))

    before = adversarial_xent()
    step = tf.function(lambda: trainer.replica_step((x, y), None))
    for _ in range(15):
        step()
    assert adversarial_xent() < 0.8 * before


def test_baseline_step_trains_on_the_attacked_images(tiny_data_dir, monkeypatch):
    """The update's logits are of the PGD-attacked batch (within eps, away from the clean images)."""
    from jarn_tf.core import data, trainer as trainer_lib

    config = _config("advgan_pgd_at", tiny_data_dir)
    tf.keras.utils.set_random_seed(0)
    trainer = trainer_lib.build_trainer(config, data.dataset_info(config.data.dataset), tf.distribute.get_strategy())
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=8)))
    x, y = tf.constant(images), tf.cast(tf.constant(labels), tf.int32)
    seen, attacked = [], []
    cls = type(trainer)
    train_logits, attack = cls._train_logits, cls._attack
    monkeypatch.setattr(cls, "_train_logits", lambda self, v: seen.append(v) or train_logits(self, v))
    monkeypatch.setattr(cls, "_attack", lambda self, *a: attacked.append(attack(self, *a)) or attacked[-1])
    trainer.replica_step((x, y), None)
    assert len(seen) == 1 and len(attacked) == 1
    np.testing.assert_array_equal(seen[0].numpy(), attacked[0].numpy())
    distance = np.abs(seen[0].numpy() - images).max()
    assert 0.5 * config.mode_config.eps < distance <= config.mode_config.eps + 1e-6


def test_baseline_refuses_the_cotraining_flags(run_main, tmp_path, capsys):
    out_dir = tmp_path / "run"
    args = ["--mode=advgan_pgd_at", "--dataset=fashion_mnist", "--class_loss=acgan", f"--model_dir={out_dir}"]
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "--mode=advgan_pgd_at does not use --class_loss (--mode=advgan" in err, err
    assert not os.path.exists(out_dir)


# -- bad input -----------------------------------------------------------------------
def _write_run(path, mode, dataset):
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"mode": mode, "seed": 0, "data": {"dataset": dataset}}, f)
    open(os.path.join(path, "checkpoints", "ckpt-1.index"), "w").close()
    return str(path)


def test_finetune_refuses_a_missing_or_wrong_init_run(run_main, tiny_data_dir, tmp_path, capsys):
    common = [
        "--mode=advgan_finetune",
        "--dataset=fashion_mnist",
        "--nodownload",
        f"--data_dir={tiny_data_dir}",
    ]
    cases = [
        ([], "needs --init_from"),
        ([f"--init_from={tmp_path / 'nothing'}"], "holds no training run"),
        ([f"--init_from={_write_run(tmp_path / 'gan', 'gan', 'fashion_mnist')}"], "is a --mode=gan run"),
        (
            [f"--init_from={_write_run(tmp_path / 'cls', 'classifier', 'fashion_mnist')}"],
            "--mode=classifier run",
        ),
        ([f"--init_from={_write_run(tmp_path / 'mnist', 'advgan', 'mnist')}"], "was trained on mnist"),
    ]
    for args, message in cases:
        model_dir = tmp_path / f"ft{len(message)}"
        assert run_main(common + args + [f"--model_dir={model_dir}"]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not os.path.exists(model_dir)
    # The alias is a mode name; a flag of another mode is refused.
    assert run_main(["--mode=robgan", "--jarn", f"--model_dir={tmp_path / 'x'}"]) == 2
    assert "does not use --jarn" in capsys.readouterr().err


def test_restore_cotraining_skips_a_damaged_checkpoint_and_refuses_other_networks(cotrained, tmp_path):
    import glob
    import shutil

    init = str(tmp_path / "co")
    shutil.copytree(cotrained[0], init)
    gens = advgan_models.build_generators(8, (28, 28, 1), 10, 4)
    disc = advgan_models.build_discriminator((28, 28, 1), 10, 4)
    assert advgan_trainers.restore_cotraining(init, gens["conditional"], disc).endswith("ckpt-4")
    for data_file in glob.glob(os.path.join(init, "checkpoints", "ckpt-4.data-*")):
        with open(data_file, "r+b") as f:
            f.truncate(100)  # a kill while writing
    assert advgan_trainers.restore_cotraining(init, gens["conditional"], disc).endswith("ckpt-2")
    wider = advgan_models.build_discriminator((28, 28, 1), 10, 6)
    with pytest.raises(ValueError, match=r"--init_from=.*does not match the networks.*--mode=advgan of this"):
        advgan_trainers.restore_cotraining(init, gens["conditional"], wider)
    shutil.rmtree(os.path.join(init, "checkpoints"))
    with pytest.raises(ValueError, match="no checkpoint can be read"):
        advgan_trainers.restore_cotraining(init, gens["conditional"], disc)


def _flagfile_values(name, train_steps=10):
    """(config, {field: value} over its sections) of flags/<name>.cfg, read from the repository root."""
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    cwd = os.getcwd()
    os.chdir(REPO)  # flagfiles include each other by paths from the repository root
    try:
        args = fv.read_flags_from_files([f"--flagfile=flags/{name}.cfg"], force_gnu=False)
    finally:
        os.chdir(cwd)
    if name.startswith("cifar10"):  # --epochs would count CIFAR-10's training split
        args = [a for a in args if not a.startswith("--epochs")] + [f"--train_steps={train_steps}"]
    if "finetune" in name:
        args.append("--init_from=runs/x")
    fv(["x"] + args)
    config = flag_utils.config_from_flags(fv)
    values = {}
    for section in config.sections().values():
        values.update(dataclasses.asdict(section))
    return config, values


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "cifar10_advgan",
            dict(
                class_loss="split",
                eps=8 / 255,
                attack_step_size=4 / 255,  # 2.5 eps / 5 (Madry et al.'s rule)
                advgan_disc_steps=5,
                advgan_discriminator="sngan",
                advgan_loss_weights="paper",
                dequantize_noise=1 / 256,
            ),
        ),
        ("cifar10_advgan_acgan", dict(class_loss="acgan", attack_random_start=False, adam_beta1=0.0)),
        (
            "cifar10_advgan_finetune",
            dict(lambda_fake=0.5, attack_step_size=8 / 255 / 5, attack_random_start=True),
        ),
        (
            "cpu_advgan",
            dict(
                class_loss="split",
                eps=0.1,
                attack_step_size=0.05,
                gan_channels=32,
                advgan_discriminator="sngan",
            ),
        ),
        ("cpu_advgan_acgan", dict(class_loss="acgan", train_steps=1200)),
        ("cpu_advgan_finetune", dict(eps=0.1, attack_step_size=0.02, batch_size=128, learning_rate=1e-3)),
        ("cpu_advgan_noattack", dict(class_loss="split", attack_steps=0, attack_random_start=False)),
        ("cpu_advgan_acgan_noattack", dict(class_loss="acgan", attack_steps=0, attack_random_start=False)),
        ("cifar10_advgan_noattack", dict(class_loss="split", attack_steps=0, attack_random_start=False)),
        ("cifar10_advgan_acgan_noattack", dict(class_loss="acgan", attack_steps=0)),
        (
            "cpu_advgan_pgd_at",
            dict(eps=0.1, attack_step_size=0.02, attack_random_start=True, gan_channels=32, train_steps=900),
        ),
        (
            "cifar10_advgan_pgd_at",
            dict(eps=8 / 255, attack_step_size=8 / 255 / 5, gan_channels=128, advgan_discriminator="sngan"),
        ),
    ],
)
def test_flagfiles_resolve_to_the_documented_settings(name, expected):
    config, values = _flagfile_values(name)
    for key, value in expected.items():
        assert values[key] == pytest.approx(value), (name, key)
    if "finetune" not in name:
        config.validate()


@pytest.mark.parametrize("scale", ["cpu", "cifar10"])
def test_the_baseline_flagfile_trains_the_cotrained_network_on_as_many_real_images(scale):
    """[paper] Table 1's baseline keeps "hyperparameters and network structure unchanged": the same
    discriminator network, width, dataset and eps as co-training, on the real images co-training and
    fine-tuning see together."""
    co_config, co = _flagfile_values(f"{scale}_advgan", train_steps=1200)
    at_config, at = _flagfile_values(f"{scale}_advgan_pgd_at", train_steps=900)
    ft_config, ft = _flagfile_values(f"{scale}_advgan_finetune", train_steps=300)
    assert at_config.mode == "advgan_pgd_at"
    for key in ("dataset", "advgan_discriminator", "gan_channels", "eps"):
        assert at[key] == co[key], key
    # The attack and optimizer are the fine-tuning's (PGD from a random start within eps).
    for key in ("attack_steps", "attack_step_size", "attack_random_start", "learning_rate", "batch_size"):
        assert at[key] == pytest.approx(ft[key]), key
    assert at["attack_steps"] * at["attack_step_size"] >= at["eps"] * (1 - 1e-6)
    if scale == "cpu":  # steps are given at CPU scale; CIFAR-10 counts epochs (100 + 60 = 160)
        seen = co["train_steps"] * co["batch_size"] + ft["train_steps"] * ft["batch_size"]
        assert at["train_steps"] * at["batch_size"] == seen
    else:
        text = open(os.path.join(REPO, "flags", f"{scale}_advgan_pgd_at.cfg")).read()
        co_text = open(os.path.join(REPO, "flags", f"{scale}_advgan.cfg")).read()
        ft_text = open(os.path.join(REPO, "flags", f"{scale}_advgan_finetune.cfg")).read()
        epochs = [int(t.split("--epochs=")[1].split()[0]) for t in (co_text, ft_text, text)]
        assert epochs[2] == epochs[0] + epochs[1]


# -- --disc_reg on the source head ---------------------------------------------------
DISC_REGS = ["ar", "rfm", "gradient_penalty", "instance_noise"]


def _cotrainer(data_dir, **fields):
    """An AdvGANTrainer on the tiny data (weights from the config's seed) and one batch of 8 real images."""
    from jarn_tf.core import data, trainer as trainer_lib

    config = _config("advgan", data_dir, **fields)
    tf.keras.utils.set_random_seed(config.seed)
    trainer = trainer_lib.build_trainer(
        config, data.dataset_info(config.data.dataset), tf.distribute.get_strategy()
    )
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=8)))
    return trainer, (tf.constant(images), tf.constant(labels))


def _step_inputs(trainer, batch):
    """The step's attacked real and generated images (the seeds of ``replica_step`` at this step)."""
    real, labels = tf.cast(batch[0], tf.float32), tf.cast(batch[1], tf.int32)
    n = tf.shape(real)[0]
    real = advgan_losses.dequantize(
        real, trainer.params.dequantize_noise, trainer._seed(advgan_trainers._DEQUANTIZE_SEED)
    )
    real_adv = trainer.attack(real, labels, trainer._seed(advgan_trainers._ATTACK_SEED))
    fake_labels = trainer._labels(n, advgan_trainers._LABEL_SEED)
    fake = trainer.generator([trainer._latent(n, advgan_trainers._LATENT_SEED), fake_labels], training=True)
    return real_adv, fake


def _disc_gradients(trainer, batch, like=None):
    """The gradients one discriminator update applies (weights copied from ``like`` first).

    ``like``'s weights as they were before its own step: sngan's step renormalises its kernels in
    place (``advgan_models.spectral_normalize``) even where the update itself is not applied.
    """
    from jarn_tf.gan.trainer import GANVariant

    if like is not None:
        for name in ("generator", "discriminator"):
            trainer.networks[name].set_weights(like.weights_before_step[name])
    trainer.weights_before_step = {name: trainer.networks[name].get_weights() for name in trainer.networks}
    captured = []
    optimizer = trainer.optimizers["discriminator"]
    optimizer.apply_gradients = lambda pairs: captured.extend(g.numpy() for g, _ in pairs)
    out = trainer.replica_step(batch, GANVariant(update_generator=False))
    return captured, out


@pytest.mark.parametrize("reg", DISC_REGS)
def test_each_disc_reg_trains_a_few_steps_with_finite_losses(reg, tiny_data_dir):
    from jarn_tf.gan.trainer import GANVariant

    trainer, batch = _cotrainer(tiny_data_dir, disc_reg=reg)
    before = [w.numpy().copy() for w in trainer.discriminator.trainable_weights]
    for _ in range(2):  # eagerly: the compiled loop is the run below's
        out = trainer.replica_step(batch, GANVariant(update_generator=True))
        trainer.step.assign_add(1)
        assert {"d_loss", "g_loss", "regularizer"} <= set(out)
        assert all(np.isfinite(float(v)) for v in out.values()), out
    metrics = trainer.metrics.result()
    assert "train/regularizer" in metrics and "train/regularizer" in trainer.progress_metrics
    assert (metrics["train/regularizer"] == 0) == (reg == "instance_noise"), metrics  # IN: noise, no term
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(
        not np.array_equal(a, w.numpy()) for a, w in zip(before, trainer.discriminator.trainable_weights)
    )


def test_disc_reg_run_checkpoints_resumes_and_logs_the_regularizer(tiny_data_dir, tmp_path, read_events):
    # rfm: the regulariser with its own view of the discriminator (trunk features beside the heads).
    model_dir = str(tmp_path / "rfm")
    config = _config("advgan", tiny_data_dir, disc_reg="rfm")
    first = train_lib.train(config, model_dir, eval_examples=0, stop_after=2, verbose=0)
    second = train_lib.train(config, model_dir, eval_examples=0, verbose=0)
    assert (first.step, second.start_step, second.step) == (2, 2, 4)
    assert all(np.isfinite(v) for v in second.metrics.values()), second.metrics
    logged = read_events(os.path.join(model_dir, "train"))["train/regularizer"]
    assert [step for step, _ in logged] == [2, 4] and all(float(v) > 0 for _, v in logged), logged
    assert json.load(open(os.path.join(model_dir, "config.json")))["advgan"]["disc_reg"] == "rfm"


@pytest.mark.parametrize("reg", DISC_REGS)
def test_disc_reg_is_added_to_the_discriminator_gradient(reg, tiny_data_dir):
    none, batch = _cotrainer(tiny_data_dir)
    g_none, _ = _disc_gradients(none, batch)
    weight = 1e4
    fields = {"gradient_penalty": dict(gp_weight=weight), "instance_noise": {}}.get(
        reg, dict(reg_weight=weight)
    )
    trainer, _ = _cotrainer(tiny_data_dir, disc_reg=reg, **fields)
    g_reg, out = _disc_gradients(trainer, batch, like=none)
    assert any(not np.allclose(a, b) for a, b in zip(g_none, g_reg))
    if reg == "instance_noise":
        return
    # The difference is +weight * the gradient of the penalty (> 0 here): it is ADDED to the loss the
    # discriminator minimises.
    d_vars = trainer.discriminator.trainable_variables
    real_adv, fake = _step_inputs(trainer, batch)
    with tf.GradientTape() as tape:
        reg_i, w = trainer.source_regularizer(real_adv, tf.stop_gradient(fake))
        penalty = tf.reduce_sum(reg_i) / trainer.global_batch_size
    assert w == weight and float(penalty) > 0
    np.testing.assert_allclose(float(out["regularizer"]), float(penalty), rtol=1e-4)
    grads = tape.gradient(penalty, d_vars)
    diff = np.concatenate([(b - a).ravel() for a, b in zip(g_none, g_reg)])
    expected = weight * np.concatenate(
        [np.zeros(v.shape).ravel() if g is None else g.numpy().ravel() for g, v in zip(grads, d_vars)]
    )
    # float32 cancellation in AR's (s(G) - s(G + v)) gradient: agreement to 1%, not to rounding (a
    # wrong sign would be 200% off).
    assert np.linalg.norm(diff - expected) <= 0.01 * np.linalg.norm(expected)


def test_zero_weight_disc_reg_is_the_none_step(tiny_data_dir):
    none, batch = _cotrainer(tiny_data_dir)
    g_none, _ = _disc_gradients(none, batch)
    zero, _ = _cotrainer(tiny_data_dir, disc_reg="ar", reg_weight=0.0)
    g_zero, _ = _disc_gradients(zero, batch, like=none)
    for a, b in zip(g_none, g_zero):
        np.testing.assert_array_equal(a, b)


def test_ar_and_rfm_are_zero_when_the_source_head_ignores_its_input(tiny_data_dir):
    # Source kernel 0: s(x) = its bias, so the fgm attack is v = 0, AR = RFM = 0 (alpha ||w||^2 = 0
    # too) and the gradient penalty is (0 / 1 - 1)^2 = 1; with the initial kernel all are > 0.
    for reg, fields, expected in (
        ("ar", {}, 0.0),
        ("ar", dict(reg_target="loss"), 0.0),
        ("rfm", {}, 0.0),
        ("gradient_penalty", {}, (1 - 1e-6) ** 2),  # the norm is sqrt(sum g^2 + 1e-12)
    ):
        trainer, batch = _cotrainer(tiny_data_dir, disc_reg=reg, **fields)
        real_adv, fake = _step_inputs(trainer, batch)
        assert np.all(trainer.source_regularizer(real_adv, fake)[0].numpy() > 0), (reg, fields)
        kernel = trainer.discriminator.get_layer("source").kernel
        kernel.assign(tf.zeros_like(kernel))
        np.testing.assert_allclose(trainer.source_regularizer(real_adv, fake)[0].numpy(), expected, rtol=1e-6)
    # RFM's alpha ||w||^2 is on the source head's kernel.
    # (legacy: its trunk starts with one conv; sngan's spectral norm would rescale the ones below.)
    trainer, batch = _cotrainer(tiny_data_dir, disc_reg="rfm", rfm_alpha=0.5, advgan_discriminator="legacy")
    kernel = trainer.discriminator.get_layer("source").kernel
    kernel.assign(tf.ones_like(kernel))
    trunk = trainer.discriminator.get_layer("conv_in")
    trunk.kernel.assign(tf.zeros_like(trunk.kernel))  # the trunk ignores its input: phi(G) = phi(G + v)
    real_adv, fake = _step_inputs(trainer, batch)
    np.testing.assert_allclose(
        trainer.source_regularizer(real_adv, fake)[0].numpy(), 0.5 * kernel.shape[0], rtol=1e-6
    )


@pytest.mark.parametrize("flag", ["--disc_reg=ar", "--reg_weight=3", "--disc_reg=none"])
def test_finetune_refuses_disc_reg(run_main, tiny_data_dir, tmp_path, capsys, flag):
    init = _write_run(tmp_path / "co", "advgan", "fashion_mnist")
    args = [
        "--mode=advgan_finetune",
        "--dataset=fashion_mnist",
        "--nodownload",
        f"--data_dir={tiny_data_dir}",
    ]
    model_dir = tmp_path / "ft"
    assert run_main(args + [f"--init_from={init}", flag, f"--model_dir={model_dir}"]) == 2
    err = capsys.readouterr().err
    assert f"does not use {flag.split('=')[0]} (--mode=" in err and "no real/fake loss" in err, err
    assert not os.path.exists(model_dir)


def test_disc_reg_flags_of_another_regulariser_are_refused_in_advgan(run_main, tmp_path, capsys):
    assert run_main(["--mode=robgan", "--disc_reg=ar", "--gp_weight=5", f"--model_dir={tmp_path / 'x'}"]) == 2
    assert (
        "--gp_weight applies to --disc_reg=gradient_penalty only, not --disc_reg=ar"
        in capsys.readouterr().err
    )


# -- issue 26: the paper's networks, the attack's reach, the authors' settings ----------------
KINDS = ["sngan", "authors", "legacy"]


def _layers_of(model, kind):
    return [layer for layer in model.layers if type(layer).__name__ == kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape, sides", [((28, 28, 1), [14, 7]), ((32, 32, 3), [16, 8])], ids=["28x28x1", "32x32x3"]
)
def test_each_discriminator_builds_with_its_layers_and_shapes(kind, shape, sides):
    import keras

    channels, k = 8, 10
    disc = advgan_models.build_discriminator(shape, k, channels=channels, kind=kind)
    names = [layer.name for layer in disc.layers]
    adds = {layer.name: tuple(layer.output.shape[1:]) for layer in disc.layers if layer.name.endswith("_add")}
    convs = [
        layer for layer in disc.layers if isinstance(getattr(layer, "layer", layer), keras.layers.Conv2D)
    ]
    if kind == "legacy":
        # Unchanged: conv stem, down-blocks as the generator's stages (32 -> 4), leaky ReLU, mean pooling.
        legacy_sides = {28: [14, 7], 32: [16, 8, 4]}[shape[0]]
        assert names[1] == "conv_in" and "final_lrelu" in names
        assert [adds[f"down{i}_add"][0] for i in range(len(legacy_sides))] == legacy_sides
        assert type(disc.get_layer("features")).__name__ == "GlobalAveragePooling2D"
        assert not _layers_of(disc, "SpectralNormalization") and not _layers_of(disc, "BatchNormalization")
        assert all(c.use_bias for c in convs)
    else:
        # The optimized block, then down-blocks to side <= 8 (pinned: 32 -> 16 -> 8, 28 -> 14 -> 7: two
        # down-sampling stages), two blocks at that side, ReLU, global SUM pooling.
        assert advgan_models.discriminator_sides(shape) == [shape[0]] + sides
        assert advgan_models.discriminator_sides((64, 64, 3)) == [64, 32, 16, 8]
        assert adds == {
            "down0_add": (sides[0], sides[0], channels),
            "down1_add": (sides[1], sides[1], channels),
            "block0_add": (sides[1], sides[1], channels),
            "block1_add": (sides[1], sides[1], channels),
        }
        assert "conv_in" not in names and not _layers_of(disc, "LeakyReLU") and "final_relu" in names
        # 2 convs + a 1x1 shortcut in each down-sampling block, 2 convs in each of the other two.
        assert len(convs) == 3 * 2 + 2 * 2
        spectral, norms = _layers_of(disc, "SpectralNormalization"), _layers_of(disc, "BatchNormalization")
        if kind == "sngan":
            assert len(spectral) == len(convs) + 2 and not norms  # every conv and both heads
            assert all(c.layer.use_bias for c in convs)  # SN-GAN's convs have biases
            assert {"source", "classes"} <= {layer.name for layer in spectral}
        else:
            assert len(norms) == len(convs) and not spectral  # batch norm after every conv
            assert not any(c.use_bias for c in convs)  # the authors' convs: bias=False
        x = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
        pooled = keras.Model(
            disc.input, [disc.get_layer("final_relu").output, disc.get_layer("features").output]
        )
        before, features = (t.numpy() for t in pooled(x, training=False))
        np.testing.assert_allclose(features, before.sum(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    source, logits = disc(np.zeros((2, *shape), np.float32), training=False)
    assert tuple(source.shape) == (2, 1) and tuple(logits.shape) == (2, k)
    assert tuple(disc.get_layer("features").output.shape) == (None, channels)
    # The classifier view and the class-head variables the fine-tuning trains.
    classifier = advgan_models.classifier_from_discriminator(disc)
    assert tuple(classifier([np.zeros((1, *shape), np.float32)]).shape) == (1, k)
    source_ids = {id(v) for v in disc.get_layer("source").trainable_variables}
    head = advgan_models.class_head_variables(disc)
    assert len(head) == len(disc.trainable_variables) - len(source_ids) and source_ids


def _advgan_trainer(kind, dataset, **fields):
    from jarn_tf.core import data, trainer as trainer_lib

    config = _config("advgan", "unused", dataset=dataset, advgan_discriminator=kind, **fields)
    config.validate()
    tf.keras.utils.set_random_seed(config.seed)
    return trainer_lib.build_trainer(config, data.dataset_info(dataset), tf.distribute.get_strategy())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"], ids=["28x28x1", "32x32x3"])
def test_each_discriminator_runs_a_cotraining_step(kind, dataset):
    from jarn_tf.gan.trainer import GANVariant

    trainer = _advgan_trainer(kind, dataset)
    assert bool(advgan_models.spectral_layers(trainer.discriminator)) == (kind == "sngan")
    assert bool(_layers_of(trainer.discriminator, "BatchNormalization")) == (kind == "authors")
    shape = trainer.info.image_shape
    rng = np.random.default_rng(0)
    batch = (tf.constant(rng.uniform(size=(8, *shape)), tf.float32), tf.constant(rng.integers(0, 10, 8)))
    before = [w.numpy().copy() for w in trainer.discriminator.trainable_weights]
    g_before = [w.numpy().copy() for w in trainer.generator.trainable_weights]
    out = trainer.replica_step(batch, GANVariant(update_generator=True))
    assert {"d_loss", "g_loss"} <= set(out) and all(np.isfinite(float(v)) for v in out.values())
    assert all(np.isfinite(v) for v in trainer.metrics.result().values())
    changed = [
        not np.array_equal(a, w.numpy()) for a, w in zip(before, trainer.discriminator.trainable_weights)
    ]
    assert all(changed), changed
    assert any(
        not np.array_equal(a, w.numpy()) for a, w in zip(g_before, trainer.generator.trainable_weights)
    )


def test_sngan_kernels_are_normalised_once_per_update_not_at_every_training_call():
    import keras

    # Keras' wrapper divides the kernel by its sigma estimate in place on every training-mode call.
    wrapper = keras.layers.SpectralNormalization(keras.layers.Dense(3))
    wrapper.build((None, 4))
    wrapper.kernel.assign(3.0 * wrapper.kernel)
    k0 = wrapper.kernel.numpy().copy()
    wrapper(np.ones((1, 4), np.float32), training=False)
    np.testing.assert_array_equal(wrapper.kernel.numpy(), k0)
    wrapper(np.ones((1, 4), np.float32), training=True)
    assert not np.allclose(wrapper.kernel.numpy(), k0)
    # The trainer runs sngan's passes in inference mode and renormalises once, before each update:
    # repeated, one power iteration each time, that brings every kernel's spectral norm to 1.
    trainer = _advgan_trainer("sngan", "fashion_mnist")
    spectral = advgan_models.spectral_layers(trainer.discriminator)
    kernels = [layer.kernel.numpy().copy() for layer in spectral]
    trainer.heads(np.zeros((2, 28, 28, 1), np.float32), training=True)
    for layer, kernel in zip(spectral, kernels):
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    for _ in range(30):
        trainer._renormalize()
    for layer in spectral:
        matrix = layer.kernel.numpy().reshape(-1, layer.kernel.shape[-1])
        np.testing.assert_allclose(np.linalg.norm(matrix, 2), 1.0, rtol=0.02, err_msg=layer.name)


def _resolve(args):
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    fv(["x", "--dataset=fashion_mnist", *args])
    return flag_utils.config_from_flags(fv)


def test_cotraining_attack_step_defaults_to_madry_rule_and_refuses_one_that_cannot_reach_eps():
    for args, step in (([], 0.05), (["--attack_steps=10"], 0.025), (["--eps=8/255"], 2.5 * (8 / 255) / 5)):
        config = _resolve(["--mode=advgan", *args])
        p = config.mode_config
        assert p.attack_step_size == pytest.approx(step) and p.attack_steps * p.attack_step_size >= p.eps
        config.validate()
    # The authors' eps/8 steps: 5 of them cover 5/8 of eps.
    config = _resolve(["--mode=advgan", "--attack_step_size=0.1/8"])
    with pytest.raises(ValueError) as error:
        config.validate()
    message = str(error.value)
    assert "\n" not in message and "can never reach eps" in message, message
    assert "--attack_step_size >= eps / steps = 0.02" in message and "--noattack_must_reach_eps" in message
    _resolve(["--mode=advgan", "--attack_step_size=0.1/8", "--noattack_must_reach_eps"]).validate()
    _resolve(["--mode=advgan", "--attack_step_size=0.02"]).validate()  # exactly eps
    _resolve(["--mode=advgan", "--attack_steps=0"]).validate()  # no attack
    # In code, the sections' defaults reach eps too.
    for section in (config_lib.AdvGANConfig(), config_lib.AdvGANFinetuneConfig()):
        assert section.attack_steps * section.attack_step_size >= section.eps * (1 - 1e-6)


@pytest.mark.parametrize("class_loss", ["split", "acgan"])
@pytest.mark.parametrize("weights", ["paper", "authors"])
def test_loss_weights_hand_values(weights, class_loss):
    # (real source, real class, fake source, fake class) of D; (source, class) of G.
    expected_weights = {
        ("paper", "split"): (1, 1, 1, 0, 1, 1),
        ("paper", "acgan"): (1, 1, 1, 1, 1, 1),
        ("authors", "split"): (0.5, 0.5, 1, 0, 0.5, 0.5),  # train.py --our_loss (the README's)
        ("authors", "acgan"): (0.5, 0.5, 0.5, 0.5, 0.5, 0.5),  # train.py without --our_loss
    }[(weights, class_loss)]
    wrs, wrc, wfs, wfc, wgs, wgc = expected_weights
    d = advgan_losses.discriminator_losses(
        tf.constant(S_REAL), tf.constant(C_REAL), tf.constant(Y_REAL),
        tf.constant(S_FAKE), tf.constant(C_FAKE), tf.constant(Y_FAKE), class_loss, weights,
    )["total"].numpy()  # fmt: skip
    g = advgan_losses.generator_losses(
        tf.constant(S_FAKE), tf.constant(C_FAKE), tf.constant(Y_FAKE), "non_saturating", weights
    )["total"].numpy()
    for i in range(2):
        rs, fs = _sp(-S_REAL[i]), _sp(S_FAKE[i])
        rc, fc = _xent(C_REAL[i], Y_REAL[i]), _xent(C_FAKE[i], Y_FAKE[i])
        np.testing.assert_allclose(d[i], wrs * rs + wrc * rc + wfs * fs + wfc * fc, rtol=1e-6)
        np.testing.assert_allclose(g[i], wgs * _sp(-S_FAKE[i]) + wgc * fc, rtol=1e-6)
    # The fixed logits tell every weight apart: swapping any two different weights changes a total.
    terms = [
        [_sp(-S_REAL[i]), _xent(C_REAL[i], Y_REAL[i]), _sp(S_FAKE[i]), _xent(C_FAKE[i], Y_FAKE[i])]
        for i in range(2)
    ]
    w = list(expected_weights[:4])
    for a in range(4):
        for b in range(a + 1, 4):
            if w[a] != w[b]:
                swapped = list(w)
                swapped[a], swapped[b] = w[b], w[a]
                assert any(abs(np.dot(swapped, t) - np.dot(w, t)) > 1e-3 for t in terms), (a, b)
    # The table is what the trainer reads.
    assert tuple(dataclasses.astuple(advgan_losses.loss_weights(weights, class_loss))) == expected_weights


def test_dequantize_noise_is_in_range_and_deterministic_per_seed():
    images = tf.constant(np.random.default_rng(0).uniform(size=(4, 8, 8, 3)), tf.float32)
    seed = tf.constant([3, 31], tf.int64)
    noise = 1 / 256
    a = advgan_losses.dequantize(images, noise, seed).numpy()
    delta = a - images.numpy()
    assert delta.min() >= 0 and delta.max() < noise and delta.std() > noise / 10
    np.testing.assert_allclose(delta.mean(), noise / 2, rtol=0.1)
    np.testing.assert_array_equal(advgan_losses.dequantize(images, noise, seed).numpy(), a)
    assert not np.array_equal(
        advgan_losses.dequantize(images, noise, tf.constant([4, 31], tf.int64)).numpy(), a
    )
    np.testing.assert_array_equal(advgan_losses.dequantize(images, 0.0, seed).numpy(), images.numpy())


@pytest.mark.parametrize("noise", [1 / 256, 0.0])
def test_cotraining_attacks_the_dequantized_real_images(noise, tiny_data_dir):
    from jarn_tf.gan.trainer import GANVariant

    trainer, batch = _cotrainer(tiny_data_dir, dequantize_noise=noise)
    seen = []
    attack = trainer.attack
    trainer.attack = lambda images, labels, seed=None: seen.append(images) or attack(images, labels, seed)
    trainer.replica_step(batch, GANVariant(update_generator=False))
    delta = seen[0].numpy() - batch[0].numpy()
    assert delta.min() >= 0 and delta.max() < max(noise, 1e-12)
    assert (delta.max() > 0) == (noise > 0)
    expected = advgan_losses.dequantize(
        batch[0], noise, trainer._seed(advgan_trainers._DEQUANTIZE_SEED)
    ).numpy()  # the trainer's seed of this step: deterministic, resumable
    np.testing.assert_array_equal(seen[0].numpy(), expected)


@pytest.mark.parametrize("kind", ["sngan", "legacy"])
def test_attack_gain_compares_attacked_and_clean_images_under_one_discriminator(kind, tiny_data_dir):
    from jarn_tf.gan.trainer import GANVariant

    # A large learning rate: the update moves the discriminator far enough to tell the weights apart.
    trainer, batch = _cotrainer(tiny_data_dir, advgan_discriminator=kind, learning_rate=0.05)
    weights = {name: net.get_weights() for name, net in trainer.networks.items()}
    real, labels = tf.cast(batch[0], tf.float32), tf.cast(batch[1], tf.int32)

    def objective(x):
        return advgan_losses.attack_objective(*trainer.heads(x, training=False), labels).numpy()

    # What the step does before its update: renormalise (sngan), dequantise, attack.
    trainer._renormalize()
    real = advgan_losses.dequantize(
        real, trainer.params.dequantize_noise, trainer._seed(advgan_trainers._DEQUANTIZE_SEED)
    )
    real_adv = trainer.attack(real, labels, trainer._seed(advgan_trainers._ATTACK_SEED))
    adv_before, clean_before = objective(real_adv), objective(real)
    expected = np.mean(adv_before - clean_before)
    assert expected > 0
    for name, net in trainer.networks.items():
        net.set_weights(weights[name])
    trainer.replica_step(batch, GANVariant(update_generator=False))
    logged = trainer.metrics.result()["train/attack_gain"]
    np.testing.assert_allclose(logged, expected, rtol=1e-4)
    # A gain mixing the weights before and after the update is another number.
    adv_after, clean_after = objective(real_adv), objective(real)
    for mixed in (np.mean(adv_before - clean_after), np.mean(adv_after - clean_before)):
        assert abs(mixed - expected) > 0.1 * abs(expected) + 1e-3, (mixed, expected)


def _strip_new_fields(model_dir):
    """Makes model_dir/config.json look written before issue 26 (no new advgan fields)."""
    path = os.path.join(model_dir, "config.json")
    stored = json.load(open(path))
    for name in ("advgan_discriminator", "advgan_loss_weights", "dequantize_noise", "attack_must_reach_eps"):
        stored["advgan"].pop(name)
    json.dump(stored, open(path, "w"))
    return stored


def test_an_old_config_without_the_new_fields_is_a_legacy_run(tiny_data_dir, tmp_path, run_main, capsys):
    old = {"mode": "advgan", "seed": 0, "advgan": {"eps": 0.1, "attack_step_size": 0.0125}}
    section = config_lib.ExperimentConfig.from_dict(old).mode_config
    assert (section.advgan_discriminator, section.dequantize_noise, section.advgan_loss_weights) == (
        "legacy",
        0.0,
        "paper",
    )
    # A legacy run written without the fields resumes with the settings it had, and only with them.
    model_dir = str(tmp_path / "old")
    legacy = _config("advgan", tiny_data_dir, advgan_discriminator="legacy", dequantize_noise=0.0)
    train_lib.train(legacy, model_dir, eval_examples=0, stop_after=2, verbose=0)
    stored = _strip_new_fields(model_dir)
    assert config_lib.config_differences(stored, legacy.to_dict()) == []
    with pytest.raises(ValueError, match="advgan.advgan_discriminator: 'legacy' -> 'sngan'"):
        train_lib.train(config_lib.with_fields(legacy, advgan_discriminator="sngan"), model_dir, verbose=0)
    with pytest.raises(ValueError, match=r"advgan.dequantize_noise: 0.0 -> 0.0039"):
        train_lib.train(config_lib.with_fields(legacy, dequantize_noise=1 / 256), model_dir, verbose=0)
    resumed = train_lib.train(legacy, model_dir, eval_examples=0, verbose=0)
    assert (resumed.start_step, resumed.step) == (2, 4)
    # Fine-tuning from it builds the legacy network (the co-trained weights load) and refuses another one.
    from jarn_tf.core import data, trainer as trainer_lib

    ft = config_lib.AdvGANFinetuneConfig(init_from=model_dir)
    assert ft.cotraining_section().advgan_discriminator == "legacy"
    assert config_lib.AdvGANFinetuneConfig.derive(dict(init_from=model_dir, eps=0.1))[
        "advgan_discriminator"
    ] == ("legacy")
    ft_config = _config("advgan_finetune", tiny_data_dir, init_from=model_dir)
    ft_config.validate()
    finetuner = trainer_lib.build_trainer(
        ft_config, data.dataset_info("fashion_mnist"), tf.distribute.get_strategy()
    )
    assert finetuner.init_checkpoint.endswith("ckpt-4")
    assert finetuner.discriminator.get_layer("conv_in") and not advgan_models.spectral_layers(
        finetuner.discriminator
    )
    args = [
        "--mode=advgan_finetune",
        "--dataset=fashion_mnist",
        "--nodownload",
        f"--data_dir={tiny_data_dir}",
    ]
    args += ["--train_steps=1", "--eval_every=0"]  # should the refusal break, a short run, not a long one
    out_dir = tmp_path / "ft"
    assert (
        run_main(
            args + [f"--init_from={model_dir}", "--advgan_discriminator=sngan", f"--model_dir={out_dir}"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "--advgan_discriminator=sngan but --init_from=" in err and "with --advgan_discriminator=legacy" in err
    )
    assert not os.path.exists(out_dir)


def test_finetune_builds_the_cotraining_runs_discriminator(finetuned):
    model_dir, init, first, _, _ = finetuned
    stored = json.load(open(os.path.join(init, "config.json")))
    assert stored["advgan"]["advgan_discriminator"] == "sngan"  # the co-training default
    assert advgan_models.spectral_layers(first.trainer.discriminator)
    # Built in code without the field: None, "the --init_from run's" (the flags fill it in, see derive).
    assert (
        json.load(open(os.path.join(model_dir, "config.json")))["advgan_finetune"]["advgan_discriminator"]
        is None
    )


def test_finetune_step_adds_lambda_times_the_generated_images_loss(finetuned):
    """Eq. 10 as the step applies it: loss = xent(real_adv) + lambda * xent(fake_adv), lambda > 0."""
    model_dir, _, _, _, second = finetuned
    lam = json.load(open(os.path.join(model_dir, "config.json")))["advgan_finetune"]["lambda_fake"]
    assert lam > 0
    m = second.metrics
    assert m["train/loss"] == pytest.approx(m["train/xent_real"] + lam * m["train/xent_fake"], rel=1e-4)
    assert m["train/xent_fake"] > 1e-3  # the generated term is there to weigh
