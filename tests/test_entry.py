"""The main command, the flagfiles, --epochs, and a failed export (kills inside one: test_export_swap.py)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from jarn_tf.core import data, export, loop as train_lib
from jarn_tf import train as train_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# <prefix>_advgan_network.cfg are fragments that flagfiles include (they name no mode); the
# flagfiles that include them are checked (tests/test_advgan.py checks that they share them).
FLAGFILES = sorted(p for p in glob.glob(os.path.join(REPO, "flags", "*.cfg")) if not p.endswith("_network.cfg"))


def _prepare_tfds_metadata(data_dir: str, tfds_name: str) -> None:
    """Makes TFDS see a prepared dataset; mock_data then fakes its records."""
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)


def test_main_command_jarn_at1_on_cifar10(tmp_path, monkeypatch, run_main):
    """`python -m jarn_tf.train --dataset=cifar10 --jarn --at_steps=1 --at_random_start` via its flagfile."""
    data_dir, model_dir = str(tmp_path / "tfds"), str(tmp_path / "jarn_at1")
    _prepare_tfds_metadata(data_dir, "cifar10")
    monkeypatch.chdir(REPO)  # flagfiles include each other by relative path
    small = [
        "--train_steps=8",
        "--batch_size=8",
        "--wrn_depth=10",
        "--wrn_width=1",
        "--disc_base_channels=4",
        "--steps_per_loop=4",
        "--summary_every=4",
        "--checkpoint_every=4",
        "--image_summary_every=8",
        "--eval_examples=8",
        "--verbose=0",
        "--nodownload",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
    ]
    with tfds.testing.mock_data(num_examples=16, data_dir=data_dir):
        data.clear_cache()
        assert run_main(["--flagfile=flags/cifar10_jarn_at1.cfg"] + small) == 0
    data.clear_cache()
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t, o, m = cfg["classifier"], cfg["optimizer"], cfg["model"]
    # The paper's JARN-AT1 settings survive the small overrides.
    assert (t["jarn"], t["at_steps"], t["at_random_start"], t["jarn_variant"]) == (True, 1, True, "paper")
    assert t["eps"] == pytest.approx(8 / 255) and t["step_size"] == pytest.approx(8 / 255)
    assert (t["jarn_start"], t["lambda_adv"], t["disc_update_every"], t["jacobian"]) == (
        0.75,
        1.0,
        20,
        "xent",
    )
    assert (o["learning_rate"], o["lr_boundaries"], o["weight_decay"]) == (0.1, [0.5, 0.75], 2e-4)
    assert (m["model"], m["disc_layers"]) == ("wrn", 5)
    meta = json.load(open(os.path.join(model_dir, "export", "metadata.json")))
    assert meta["image_shape"] == [32, 32, 3] and meta["step"] == 8 and meta["dataset"] == "cifar10"
    loaded = tf.saved_model.load(os.path.join(model_dir, "export", "saved_model"))
    out = loaded.signatures["serving_default"](images=tf.zeros([2, 32, 32, 3]))
    assert out["logits"].shape == (2, 10)


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: os.path.basename(p))
def test_every_flagfile_resolves_to_a_valid_config(path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    # --epochs needs the training-set size; no data is needed to check a flagfile.
    monkeypatch.setattr(data, "steps_per_epoch", lambda config, batch: 60000 // batch)
    fv = flags.FLAGS
    if "model_dir" not in fv:
        train_entry.define_train_flags()
    fv.unparse_flags()
    fv(["jarn_tf.train", f"--flagfile={os.path.relpath(path, REPO)}", f"--model_dir={tmp_path}"])
    name = os.path.basename(path)
    if "finetune" in name:
        # Fine-tuning flagfiles are used with --init_from=<co-training run> (tests/test_advgan.py);
        # alone they must say so.
        with pytest.raises(ValueError, match="--init_from"):
            train_lib.validate_config(train_entry.config_from_flags())
        return
    config = train_entry.config_from_flags()
    train_lib.validate_config(config)
    # The cpu_* flagfiles are the CPU-scale tables, on Fashion-MNIST.
    expected = "fashion_mnist" if name.startswith(("fashion", "cpu_")) else name.split("_")[0]
    assert config.data.dataset == expected
    t = config.mode_config
    if config.mode == "gan":
        # <prefix>_<loss>_<reg>.cfg, or the shared <prefix>_gan_base.cfg (the paper's settings).
        assert (config.optimizer.learning_rate, config.optimizer.batch_size) == (2e-4, 64)
        assert (t.adam_beta1, t.adam_beta2, config.optimizer.weight_decay) == (0.0, 0.9, 1e-4)
        # The generator is trained as the authors' code does (issue 25): non-saturating for gan and
        # lsgan (minimax saturates gan and is not Mao et al.'s LSGAN), the same for wgan.
        assert t.gan_generator_loss == "non_saturating"
        if not name.endswith("_base.cfg"):
            # <prefix>_<loss>_<reg>[_<variant>].cfg: Appendix D's robust loss or Appendix F's attack.
            loss, reg, *variant = name[: -len(".cfg")].split("_")[1:]
            if variant == ["loss"]:
                assert t.reg_target == "loss"
            elif variant:
                assert variant[0] in ("fgsm", "pgd", "cw") and t.reg_attack == variant[0], name
            else:
                assert t.reg_target == "discriminator" and t.reg_attack == "fgm"
            regs = {
                "none": "none",
                "in": "instance_noise",
                "gp": "gradient_penalty",
                "ar": "ar",
                "rfm": "rfm",
            }
            assert (t.gan_loss, t.disc_reg) == (loss, regs[reg])
        return
    if config.mode != "classifier":
        return
    assert t.jarn == ("jarn" in name)
    if "release" in name:
        variant = "release_intended" if "intended" in name else "release"
        assert (t.jarn_variant, t.jacobian, t.jarn_start) == (variant, "prob", 0.875)
    elif t.jarn:
        assert (t.jarn_variant, t.jacobian, t.jarn_start) == ("paper", "xent", 0.75)
    if "at1" in name:
        assert config.mode_config.at_steps == 1
    if "jarn_at1" in name:
        # JARN-AT1 (paper variant) adds no noise: the attack's random start replaces it.
        assert t.at_random_start
    if "at7" in name:
        # Madry et al.'s step: eps / 4 (2/255 for CIFAR-10's 8/255).
        assert t.at_steps == 7 and t.step_size == pytest.approx(t.eps / 4)


def test_epochs_sets_train_steps(tiny_data_dir, tmp_path, run_main, tiny_flags):
    model_dir = str(tmp_path / "epochs")
    # 256 training images, batch 32: 8 steps an epoch.
    args = tiny_flags + [f"--data_dir={tiny_data_dir}", f"--model_dir={model_dir}", "--epochs=1.5"]
    assert run_main([a for a in args if not a.startswith("--summary_every")] + ["--summary_every=4"]) == 0
    assert json.load(open(os.path.join(model_dir, "config.json")))["optimizer"]["train_steps"] == 12


def _export_state(export_dir: str, images: tf.Tensor) -> dict:
    """What each artefact of an export holds: the SavedModel's and the .keras model's logits on
    ``images``, the metadata, and the names in the directory."""
    import keras

    import jarn_tf.layers  # noqa: F401  registers the custom layers

    saved = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    return {
        "saved_model": saved.serve(images)["logits"].numpy(),
        "keras": np.asarray(
            keras.saving.load_model(os.path.join(export_dir, "classifier.keras"))(images, training=False)
        ),
        "metadata": json.load(open(os.path.join(export_dir, "metadata.json"))),
        "files": sorted(os.listdir(export_dir)),
    }


def _fail_at(where: str, monkeypatch, classifier) -> None:
    """Makes the next export raise KeyboardInterrupt while writing ``where``."""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt(where)

    if where == "saved_model":
        monkeypatch.setattr(tf.saved_model, "save", interrupt)
    elif where == "keras":
        monkeypatch.setattr(classifier, "save", interrupt)
    else:  # metadata.json, the last file written
        monkeypatch.setattr(export.json, "dump", interrupt)


@pytest.mark.parametrize("where", ["saved_model", "keras", "metadata"])
def test_failed_export_keeps_the_whole_previous_export(where, tmp_path, monkeypatch, tiny_config):
    # An export that fails while writing any of its three artefacts leaves the previous export
    # exactly as it was: all old, never a new SavedModel beside the old .keras file and metadata.
    result = train_lib.train(tiny_config(train_steps=2), str(tmp_path / "run"), eval_examples=0, verbose=0)
    classifier = result.trainer.networks["classifier"]
    export_dir = result.export_dir
    images = tf.random.stateless_uniform([4, 28, 28, 1], seed=[0, 1])
    old = _export_state(export_dir, images)
    assert (
        old["files"] == ["classifier.keras", "metadata.json", "saved_model"] and old["metadata"]["step"] == 2
    )
    np.testing.assert_allclose(old["keras"], old["saved_model"], rtol=1e-5, atol=1e-5)
    run_files = sorted(os.listdir(os.path.dirname(export_dir)))

    for w in classifier.trainable_weights:  # the new export's model differs from the old one
        w.assign(w + 0.1)
    new_logits = classifier(images, training=False).numpy()
    assert np.abs(new_logits - old["keras"]).max() > 1e-2
    new_metadata = dict(old["metadata"], step=3)
    _fail_at(where, monkeypatch, classifier)
    with pytest.raises(KeyboardInterrupt):
        export.export_classifier(classifier, export_dir, (28, 28, 1), metadata=new_metadata)
    monkeypatch.undo()
    after = _export_state(export_dir, images)
    assert after["files"] == old["files"]  # nothing half-written or set aside is left
    assert sorted(os.listdir(os.path.dirname(export_dir))) == run_files
    assert after["metadata"] == old["metadata"]
    np.testing.assert_array_equal(after["saved_model"], old["saved_model"])
    np.testing.assert_array_equal(after["keras"], old["keras"])

    # The next export replaces all three together.
    export.export_classifier(classifier, export_dir, (28, 28, 1), metadata=new_metadata)
    new = _export_state(export_dir, images)
    assert new["files"] == old["files"] and new["metadata"]["step"] == 3
    assert sorted(os.listdir(os.path.dirname(export_dir))) == run_files
    np.testing.assert_allclose(new["saved_model"], new_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["keras"], new_logits, rtol=1e-5, atol=1e-5)


def test_later_of_epochs_and_train_steps_wins(tmp_path):
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text("--dataset=fashion_mnist\n--epochs=4\n--batch_size=64\n")
    keep = train_entry.keep_last_length_flag
    assert keep([f"--flagfile={flagfile}", "--train_steps=200"]) == [
        "--dataset=fashion_mnist",
        "--batch_size=64",
        "--train_steps=200",
    ]
    assert keep(["--train_steps=5", f"--flagfile={flagfile}"]) == [
        "--dataset=fashion_mnist",
        "--epochs=4",
        "--batch_size=64",
    ]
    assert keep(["--epochs", "2", "--train_steps", "7"]) == ["--train_steps", "7"]
    assert keep(["--epochs=2", "--", "--train_steps=7"]) == ["--epochs=2", "--", "--train_steps=7"]
    assert keep(["--epochs=2"]) == ["--epochs=2"]


def test_train_steps_overrides_a_flagfiles_epochs_on_the_command_line(tiny_data_dir, tmp_path, train_cli):
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text("--epochs=4\n")
    proc = train_cli(
        f"--flagfile={flagfile}",
        f"--data_dir={tiny_data_dir}",
        f"--model_dir={tmp_path / 'm'}",
        "--train_steps=3",
        "--eval_examples=0",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Finished at step 3 " in proc.stdout
