"""--disc_reg on JARN's discriminator (issue 12): the robust-discriminator
regularisers of the gan mode change the discriminator's update only."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.core import data, trainer as trainer_lib
from jarn_tf.jarn.trainer import ClassifierVariant


def _step(tiny_config, variant="paper", steps=2, **fields):
    config = tiny_config(
        jarn=True, jarn_variant=variant, jarn_start=0.0, noise_eps=0.1, disc_update_every=1, **fields
    )
    keras.utils.set_random_seed(config.seed)
    trainer = trainer_lib.build_trainer(
        config, data.dataset_info(config.data.dataset), tf.distribute.get_strategy()
    )
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=8)))
    for _ in range(steps):
        trainer.replica_step((tf.constant(images), tf.constant(labels)), ClassifierVariant(True, True))
        trainer.step.assign_add(1)
    weights = {n: [w.numpy().copy() for w in m.trainable_weights] for n, m in trainer.networks.items()}
    return trainer, weights


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("reg", ["ar", "rfm", "gradient_penalty", "instance_noise"])
def test_regulariser_changes_the_discriminator(tiny_config, reg):
    _, none = _step(tiny_config)
    trainer, with_reg = _step(tiny_config, disc_reg=reg)
    assert not _same(none["discriminator"], with_reg["discriminator"])
    if reg != "instance_noise":
        # The term does not reach the classifier's or the adaptor's update (one step: after it the
        # discriminator differs, and so does the adversarial loss).
        _, none1 = _step(tiny_config, steps=1)
        _, reg1 = _step(tiny_config, steps=1, disc_reg=reg)
        assert not _same(none1["discriminator"], reg1["discriminator"])
        assert _same(none1["classifier"], reg1["classifier"])
        assert _same(none1["adaptor"], reg1["adaptor"])


def test_zero_weight_is_the_none_run(tiny_config):
    _, none = _step(tiny_config)
    _, zero = _step(tiny_config, disc_reg="ar", reg_weight=0.0)
    for name in none:
        assert _same(none[name], zero[name]), name


@pytest.mark.parametrize(
    "args, names",
    [
        (["--disc_reg=ar"], ("--disc_reg", "--jarn")),
        (["--jarn", "--disc_reg=ar", "--gp_weight=5"], ("--gp_weight", "--disc_reg")),
    ],
)
def test_bad_flags(run_main, tiny_data_dir, tmp_path, capsys, args, names):
    code = run_main(["--dataset=mnist", f"--data_dir={tiny_data_dir}", f"--model_dir={tmp_path}"] + args)
    assert code == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err
