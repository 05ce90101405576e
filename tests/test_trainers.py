"""The mode contract: a second mode, defined here, runs through the unchanged loop.

Also: config sections (flags generated from them, validation in one place)
and runs written before the sections still resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf import config as config_lib
from jarn_tf.core import loop as train_lib, trainer as trainer_lib
from jarn_tf.config import flag_field
from jarn_tf.core.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A two-network mode: a linear classifier and a linear 'critic' of its inputs."""

    first_learning_rate: float = flag_field(0.05, "Learning rate of the first network.")
    second_learning_rate: float = flag_field(0.05, "Learning rate of the second network.")
    nan_at_step: int = flag_field(-1, "Make the second loss NaN at this step (-1: never).")

    def validate(self, config: config_lib.ExperimentConfig) -> None:
        if self.first_learning_rate <= 0:
            raise ValueError("--first_learning_rate must be positive")


class ToyTrainer(Trainer):
    metric_names = ("train/first_loss", "train/second_loss")
    progress_metrics = ("train/first_loss",)

    def __init__(self, config, info, strategy):
        super().__init__(config, info, strategy)
        params: ToyConfig = config.mode_config
        self.nan_at_step = params.nan_at_step
        inputs = keras.Input(info.image_shape)
        flat = keras.layers.Flatten()(inputs)
        self.networks["first"] = keras.Model(inputs, keras.layers.Dense(info.num_classes)(flat), name="first")
        self.networks["second"] = keras.Model(inputs, keras.layers.Dense(1)(flat), name="second")
        self.optimizers["first"] = keras.optimizers.SGD(params.first_learning_rate)
        self.optimizers["second"] = keras.optimizers.SGD(params.second_learning_rate)
        self._build_optimizers()

    def replica_step(self, batch, variant) -> Dict[str, tf.Tensor]:
        images, labels = batch
        with tf.GradientTape(persistent=True) as tape:
            logits = self.networks["first"](images, training=True)
            first = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            second = tf.squeeze(tf.square(self.networks["second"](images, training=True) - 1.0), -1)
            second = tf.where(self.step == self.nan_at_step, np.nan, second)
            losses = {
                "first": tf.reduce_sum(first) / self.global_batch_size,
                "second": tf.reduce_sum(second) / self.global_batch_size,
            }
        for name, loss in losses.items():
            variables = self.networks[name].trainable_variables
            self.optimizers[name].apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.metrics.update({"train/first_loss": first, "train/second_loss": second})
        return losses

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        return {"eval/toy_score": float(num_examples)}

    def export(self, export_dir: str, metadata: Mapping[str, Any], evaluation, num_examples: int) -> None:
        os.makedirs(export_dir, exist_ok=True)
        self.networks["first"].save(os.path.join(export_dir, "first.keras"))
        with open(os.path.join(export_dir, "metadata.json"), "w") as f:
            json.dump({**metadata, **evaluation}, f)


@pytest.fixture
def toy_mode(monkeypatch):
    monkeypatch.setitem(config_lib.MODE_SECTIONS, "toy", ToyConfig)
    monkeypatch.setitem(trainer_lib.TRAINERS, "toy", ToyTrainer)


def _toy_config(tiny_config, **fields) -> config_lib.ExperimentConfig:
    base = tiny_config(train_steps=6, summary_every=2, checkpoint_every=2, steps_per_loop=2)
    return config_lib.with_fields(config_lib.with_fields(base, mode="toy"), **fields)


def test_toy_mode_trains_logs_checkpoints_resumes_and_exports(toy_mode, tiny_config, read_events, tmp_path):
    config = _toy_config(tiny_config)
    full = train_lib.train(config, str(tmp_path / "full"), eval_examples=16, verbose=0)
    assert full.step == 6 and sorted(full.trainer.networks) == ["first", "second"]

    events = read_events(str(tmp_path / "full" / "train"))
    for tag in ("train/first_loss", "train/second_loss"):
        assert [step for step, _ in events[tag]] == [2, 4, 6], tag
    first = [float(v) for _, v in events["train/first_loss"]]
    assert first[-1] < first[0], first
    # The mode's evaluation every ceil(6 / 4) = 2 steps (--eval_every's default), the last at the export.
    evals = read_events(str(tmp_path / "full" / "eval"))["eval/toy_score"]
    assert [(step, float(v)) for step, v in evals] == [(2, 16.0), (4, 16.0), (6, 16.0)]
    saved = json.load(open(tmp_path / "full" / "config.json"))
    assert saved["mode"] == "toy" and saved["toy"]["nan_at_step"] == -1

    # Interrupted at step 4, resumed: the same weights as the uninterrupted run.
    part = train_lib.train(config, str(tmp_path / "resumed"), eval_examples=0, verbose=0, stop_after=4)
    assert part.step == 4 and part.export_dir is None
    resumed = train_lib.train(config, str(tmp_path / "resumed"), eval_examples=0, verbose=0)
    assert resumed.start_step == 4 and resumed.step == 6
    for name in ("first", "second"):
        for a, b in zip(full.trainer.networks[name].weights, resumed.trainer.networks[name].weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)

    # The export is the mode's own.
    meta = json.load(open(os.path.join(full.export_dir, "metadata.json")))
    assert meta["mode"] == "toy" and meta["step"] == 6 and meta["eval/toy_score"] == 16.0
    loaded = keras.saving.load_model(os.path.join(full.export_dir, "first.keras"))
    x = tf.random.stateless_uniform([3, 28, 28, 1], seed=[1, 2])
    np.testing.assert_allclose(loaded(x).numpy(), full.trainer.networks["first"](x).numpy(), rtol=1e-6)


@pytest.mark.parametrize("nan_at_step", [1, 4])
def test_toy_mode_stops_on_a_nan_in_its_second_loss(toy_mode, tiny_config, tmp_path, nan_at_step):
    config = _toy_config(tiny_config, nan_at_step=nan_at_step)
    model_dir = str(tmp_path / "nan")
    with pytest.raises(train_lib.NonFiniteLossError, match=f"at step {nan_at_step};.*Not finite: second\\."):
        train_lib.train(config, model_dir, eval_examples=0, verbose=0)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    # Checkpoints every 2 steps; none is written at or after the NaN step.
    if nan_at_step < 2:
        assert latest is None
    else:
        assert latest.endswith(f"ckpt-{nan_at_step // 2 * 2}")
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name
    assert not os.path.exists(os.path.join(model_dir, "export"))


def test_mode_section_validates_itself_and_flags_come_from_it(toy_mode, tiny_config):
    with pytest.raises(ValueError, match="--first_learning_rate"):
        _toy_config(tiny_config, first_learning_rate=0.0).validate()
    with pytest.raises(ValueError, match="No field"):
        _toy_config(tiny_config, jarn=True)  # a classifier field is not the toy mode's
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_section_flags(ToyConfig, fv)
    fv(["prog", "--nan_at_step=3"])
    assert flag_utils.section_from_flags(ToyConfig, fv, {}) == ToyConfig(nan_at_step=3)
    assert fv["second_learning_rate"].help == "Learning rate of the second network."


def _old_layout(config: config_lib.ExperimentConfig) -> dict:
    """config.json as written before the sections: data, model, and everything else in train."""
    d = config.to_dict()
    train = {"mode": d["mode"], "seed": d["seed"], "mixed_precision": d["model"].pop("mixed_precision")}
    for section in ("optimizer", "runtime", d["mode"]):
        train.update(d[section])
    return {"data": d["data"], "model": d["model"], "train": train}


def test_runs_written_before_the_sections_still_resume(tiny_config, tmp_path):
    config = tiny_config(jarn=True, jarn_start=0.5, at_steps=1, seed=3, mixed_precision="bfloat16")
    old = _old_layout(config)
    assert config_lib.ExperimentConfig.from_dict(old) == config
    assert config_lib.config_differences(old, config.to_dict()) == []
    # Fields of the runtime section may change on resume; the others may not.
    changed = config_lib.with_fields(config, steps_per_loop=7, data_dir="/elsewhere", eps=0.2, seed=4)
    assert config_lib.config_differences(old, changed.to_dict()) == [
        "seed: 3 -> 4",
        "classifier.eps: 0.1 -> 0.2",
    ]
    model_dir = tmp_path / "old"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(old))
    train_lib.check_model_dir(config, str(model_dir))
    with pytest.raises(ValueError, match="classifier.eps"):
        train_lib.check_model_dir(changed, str(model_dir))


def test_runs_written_before_a_field_existed_resume_at_its_default(tiny_config):
    config = tiny_config(jarn=True)
    stored = config.to_dict()
    del stored["model"]["standardize_input"], stored["classifier"]["jarn_variant"]
    assert config_lib.config_differences(stored, config.to_dict()) == []
    # Asking for another value than the default is still a difference.
    other = config_lib.with_fields(config, standardize_input=False, jarn_variant="release_intended")
    assert config_lib.config_differences(stored, other.to_dict()) == [
        "model.standardize_input: True -> False",
        "classifier.jarn_variant: 'paper' -> 'release_intended'",
    ]


def test_every_section_field_has_a_flag_of_its_name_except_mixed_precision():
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    for section in list(config_lib.COMMON_SECTIONS.values()) + list(config_lib.MODE_SECTIONS.values()):
        for field in dataclasses.fields(section):
            if field.name == "mixed_precision":
                continue  # --mixed_precision and --mixed_precision_dtype
            assert field.name in fv, field.name
            assert field.metadata["help"] in fv[field.name].help, field.name
    assert [n for n in flag_utils.config_flag_names() if n not in fv] == []


@pytest.mark.parametrize("entry", ["jarn_tf.train", "jarn_tf.bench.training"])
def test_help_lists_the_generated_flags(entry):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", entry, "--help"],
        capture_output=True,
        text=True,
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    listed = {
        line.split(":")[0].strip().replace("[no]", "")
        for line in proc.stdout.splitlines()
        if line.startswith("  --")
    }
    for name in (
        "--dataset",
        "--jarn",
        "--eps",
        "--noise_eps",
        "--train_steps",
        "--steps_per_loop",
        "--seed",
    ):
        assert name in listed, (name, proc.stdout[-2000:])


def test_name_tables_agree_with_the_modules_that_implement_them():
    from jarn_tf.core import data, distribute
    from jarn_tf.jarn import losses, models

    assert tuple(data.DATASETS) == config_lib.DATASETS
    assert set(config_lib.PAPER_DEFAULTS) == set(config_lib.DATASETS)
    assert set(config_lib.MODE_SECTIONS) == set(trainer_lib.TRAINERS)
    assert models.MODELS is config_lib.MODELS and losses.JACOBIAN_KINDS is config_lib.JACOBIAN_KINDS
    assert distribute.STRATEGIES is config_lib.STRATEGIES
