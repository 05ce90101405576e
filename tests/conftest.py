"""Shared fixtures: a tiny learnable dataset in MNIST's IDX format, tiny
configurations and flags, and helpers that run and inspect training."""

from __future__ import annotations

import glob
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _write_idx(path: str, array: np.ndarray) -> None:
    dtype_code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_pattern_images(n: int, seed: int, num_classes: int = 10, size: int = 28) -> tuple:
    """Images whose class is a bright 7x7 block at one of 10 grid positions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    images = rng.integers(0, 80, size=(n, size, size), dtype=np.int64)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        images[i, 2 + 8 * r : 9 + 8 * r, 1 + 7 * col : 7 + 7 * col] += 170
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(directory: str, n_train: int = 256, n_test: int = 64, seed: int = 0) -> str:
    """Writes train/t10k IDX files (gzipped) of the pattern dataset."""
    os.makedirs(directory, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = make_pattern_images(n, s)
        _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A Fashion-MNIST-shaped IDX dataset: 256 train and 64 test images."""
    return write_idx_dataset(str(tmp_path_factory.mktemp("tiny_idx")))


# ---------------------------------------------------------------------------
# Shared helpers of the training tests, as fixtures.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny, fast run of the main command on Fashion-MNIST-shaped data.
TINY_FLAGS = (
    "--dataset=fashion_mnist",
    "--nodownload",
    "--model=mnist_cnn",
    "--cnn_channels=8,16,16",
    "--disc_layers=2",
    "--disc_base_channels=8",
    "--batch_size=32",
    "--learning_rate=0.1",
    "--steps_per_loop=5",
    "--summary_every=10",
    "--checkpoint_every=10",
    "--image_summary_every=20",
    "--eval_examples=64",
    "--verbose=0",
    "--eps=0.02",
)

# The tiny configuration built in code (fields by name, any section).
TINY_FIELDS = dict(
    dataset="fashion_mnist",
    download=False,
    model="mnist_cnn",
    cnn_channels=(8, 16, 16),
    disc_layers=2,
    disc_base_channels=8,
    train_steps=6,
    batch_size=16,
    learning_rate=0.05,
    steps_per_loop=2,
    checkpoint_every=2,
    summary_every=2,
    image_summary_every=0,
    disc_update_every=3,
    noise_eps=0.1,
    eps=0.1,
    step_size=0.1,
)


@pytest.fixture(scope="session")
def tiny_flags() -> list:
    """Flags of a tiny run of ``python -m jarn_tf.train`` (add --data_dir and --model_dir)."""
    return list(TINY_FLAGS)


@pytest.fixture(scope="session")
def tiny_config(tiny_data_dir):
    """Factory of tiny ExperimentConfigs: ``tiny_config(**fields)``, fields by name in any section.

    ``data_dir`` defaults to the session's tiny IDX dataset.
    """
    from jarn_tf import config as config_lib

    def make(data_dir: str = None, **fields) -> "config_lib.ExperimentConfig":
        values = dict(TINY_FIELDS, data_dir=data_dir or tiny_data_dir)
        values.update(fields)
        return config_lib.with_fields(config_lib.ExperimentConfig(), **values)

    return make


@pytest.fixture(scope="session")
def run_main():
    """Parses args as ``python -m jarn_tf.train`` would and runs its main() in this process."""
    from absl import flags

    from jarn_tf import train as train_entry

    def run(args: list) -> int:
        fv = flags.FLAGS
        if "model_dir" not in fv:
            train_entry.define_train_flags()
        fv.unparse_flags()
        fv(["jarn_tf.train"] + list(args))
        return train_entry.main(["jarn_tf.train"])

    return run


@pytest.fixture(scope="session")
def train_cli():
    """Runs ``python -m jarn_tf.train TINY_FLAGS + args`` in a fresh process."""

    def run(*args: str, env: dict = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "jarn_tf.train"] + list(TINY_FLAGS) + list(args),
            capture_output=True,
            text=True,
            env=env or dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
            cwd=REPO,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def evaluate_cli():
    """Runs ``python -m jarn_tf.evaluate args`` in a fresh process."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "jarn_tf.evaluate"] + list(args),
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
            cwd=REPO,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def tiny_keras_file(tmp_path_factory) -> str:
    """An untrained .keras classifier of 28x28x1 images (10 logits), no metadata."""
    import keras

    path = str(tmp_path_factory.mktemp("tiny_keras") / "tiny.keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(path)
    return path


@pytest.fixture(scope="session")
def read_events():
    """``read_events(logdir)``: TensorBoard tag -> list of (step, value) from its event files."""
    import tensorflow as tf

    def read(logdir: str) -> dict:
        out: dict = {}
        for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    out.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
        return out

    return read


@pytest.fixture(scope="session")
def checkpoint_values():
    """``checkpoint_values(model_dir, step)``: every variable of checkpoint ``ckpt-<step>``."""
    import tensorflow as tf

    def values(model_dir: str, step: int) -> dict:
        reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}

    return values


@pytest.fixture(scope="session")
def latest_step():
    """``latest_step(model_dir)``: the step of the newest checkpoint, 0 if none."""
    import tensorflow as tf

    def latest(model_dir: str) -> int:
        state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
        return int(state.model_checkpoint_path.rsplit("-", 1)[1]) if state else 0

    return latest
