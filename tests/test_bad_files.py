"""Bad files end in one line naming the file and the fix, never a traceback,
and lose nothing already saved; a damaged newest checkpoint is skipped."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import subprocess
from concurrent import futures
from typing import Optional

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.core import data, export, loop as train_lib
from jarn_tf.config import DataConfig

# Every training run of the command-line cases: 2 steps, checkpoints at 1 and 2.
SHORT_RUN = ("--train_steps=2", "--checkpoint_every=1", "--summary_every=1", "--eval_examples=0")
IMAGES = "train-images-idx3-ubyte.gz"
KEEP = "a file the run must not touch\n"


def _copy_data(source: str, target) -> str:
    shutil.copytree(source, target)
    return str(target)


def _truncate(path: str, fraction: float = 0.5) -> None:
    with open(path, "rb") as f:
        payload = f.read()
    with open(path, "wb") as f:
        f.write(payload[: int(len(payload) * fraction)])


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The only ``error:`` line of a failed command; asserts there is no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def cli_runs(tiny_data_dir, tiny_keras_file, tmp_path_factory, train_cli, evaluate_cli):
    """Runs every command-line case, a few at a time; name -> (process, the bad file)."""
    tmp = tmp_path_factory.mktemp("bad_files")
    truncated = _copy_data(tiny_data_dir, tmp / "truncated")
    _truncate(os.path.join(truncated, IMAGES))
    not_gzip = _copy_data(tiny_data_dir, tmp / "not_gzip")
    with open(os.path.join(not_gzip, IMAGES), "w") as f:
        f.write("this is not gzip data\n")
    a_file = tmp / "a_file"
    a_file.write_text(KEEP)
    not_zip = tmp / "x.keras"
    not_zip.write_text("not a zip archive\n")
    no_signature = str(tmp / "no_signature")
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, no_signature)

    def train(data_dir: str, model_dir, *extra: str) -> subprocess.CompletedProcess:
        return train_cli(f"--data_dir={data_dir}", f"--model_dir={model_dir}", *SHORT_RUN, *extra)

    def evaluate(model: str, *extra: str) -> subprocess.CompletedProcess:
        args = [f"--model={model}", "--dataset=fashion_mnist", f"--data_dir={tiny_data_dir}", "--nodownload"]
        return evaluate_cli(*args, "--attacks=clean", "--num_examples=4", "--verbose=0", *extra)

    def damaged_newest_checkpoint() -> tuple:
        model_dir = tmp / "damaged"
        first = train(tiny_data_dir, model_dir)
        assert first.returncode == 0, first.stderr[-3000:]
        _truncate(str(model_dir / "checkpoints" / "ckpt-2.data-00000-of-00001"))
        return train(tiny_data_dir, model_dir), str(model_dir / "checkpoints" / "ckpt-2")

    cases = {
        "damaged_newest_checkpoint": (damaged_newest_checkpoint, None),
        "truncated_gzip": (
            lambda: train(truncated, tmp / "m1"),
            os.path.join(truncated, IMAGES),
        ),
        "not_gzip": (lambda: train(not_gzip, tmp / "m2"), os.path.join(not_gzip, IMAGES)),
        "model_dir_is_a_file": (lambda: train(tiny_data_dir, a_file), str(a_file)),
        "keras_not_a_zip": (lambda: evaluate(str(not_zip)), str(not_zip)),
        "saved_model_without_signature": (lambda: evaluate(no_signature), no_signature),
        "output_dir_is_a_file": (
            lambda: evaluate(tiny_keras_file, f"--output_dir={a_file}"),
            str(a_file),
        ),
    }
    # Each process spends most of its time starting TensorFlow.
    with futures.ThreadPoolExecutor(max_workers=3) as pool:
        running = {name: pool.submit(run) for name, (run, _) in cases.items()}
        out = {name: (job.result(), cases[name][1]) for name, job in running.items()}
    out["damaged_newest_checkpoint"] = out["damaged_newest_checkpoint"][0]
    out["tmp"] = tmp
    return out


@pytest.mark.parametrize(
    "case, fix",
    [
        ("truncated_gzip", "truncated"),
        ("not_gzip", "not valid gzip data"),
        ("model_dir_is_a_file", "Pass a new directory"),
        ("keras_not_a_zip", "Export the model again"),
        ("saved_model_without_signature", "signatures={'serving_default'"),
        ("output_dir_is_a_file", "pass a directory"),
    ],
)
def test_bad_file_gives_one_line_naming_it(case, fix, cli_runs):
    proc, path = cli_runs[case]
    line = _one_error_line(proc)
    assert path in line and fix in line, line
    assert "Evaluating" not in proc.stdout
    tmp = cli_runs["tmp"]
    # Nothing was written: no model_dir, the file given as a directory intact.
    assert not (tmp / "m1").exists() and not (tmp / "m2").exists()
    assert (tmp / "a_file").read_text() == KEEP


def test_damaged_newest_checkpoint_resumes_from_the_one_before(cli_runs, latest_step):
    proc, damaged = cli_runs["damaged_newest_checkpoint"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Finished at step 2" in proc.stdout and "(resumed from step 1)" in proc.stdout, proc.stdout
    skipped = [line for line in proc.stderr.splitlines() if "Skipped checkpoint" in line]
    assert len(skipped) == 1 and damaged in skipped[0] and "IndexError" in skipped[0], proc.stderr[-3000:]
    # Step 2 was trained again and saved whole over the damaged checkpoint.
    model_dir = os.path.dirname(os.path.dirname(damaged))
    assert latest_step(model_dir) == 2
    reader = tf.train.load_checkpoint(damaged)
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 2


# ---------------------------------------------------------------------------
# The same guarantees in-process, for the bad inputs without a command-line run.


@pytest.fixture
def saved_checkpoints(tmp_path):
    """Checkpoints 2, 4 and 6 of a variable whose value is the step; returns (checkpoint, directory)."""
    step = tf.Variable(0, dtype=tf.int64)
    value = tf.Variable(tf.zeros([64]))
    checkpoint = tf.train.Checkpoint(step=step, value=value)
    directory = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=5, step_counter=step)
    for s in (2, 4, 6):
        step.assign(s)
        value.assign(tf.fill([64], float(s)))
        manager.save(checkpoint_number=s)
    step.assign(0)
    value.assign(tf.zeros([64]))
    return checkpoint, directory


def _data_file(directory: str, number: int) -> str:
    return os.path.join(directory, f"ckpt-{number}.data-00000-of-00001")


def test_restore_skips_every_damaged_checkpoint(saved_checkpoints, caplog):
    checkpoint, directory = saved_checkpoints
    _truncate(_data_file(directory, 6))  # IndexError
    with open(_data_file(directory, 4), "r+b") as f:  # a failed checksum: DataLossError
        f.seek(8)
        f.write(b"\xff" * 8)
    with caplog.at_level(logging.WARNING):
        restored = train_lib.restore_newest_readable(checkpoint, directory)
    assert restored == os.path.join(directory, "ckpt-2")
    # No value of the damaged checkpoints is left behind.
    assert int(checkpoint.step.numpy()) == 2 and np.all(checkpoint.value.numpy() == 2.0)
    warnings = [r.getMessage() for r in caplog.records if "Skipped checkpoint" in r.getMessage()]
    assert len(warnings) == 2
    assert "ckpt-6" in warnings[0] and "IndexError" in warnings[0]
    assert "ckpt-4" in warnings[1] and "DataLossError" in warnings[1]


def test_restore_fails_when_no_checkpoint_reads_and_deletes_nothing(saved_checkpoints):
    checkpoint, directory = saved_checkpoints
    for number in (2, 4, 6):
        _truncate(_data_file(directory, number))
    before = sorted(os.listdir(directory))
    with pytest.raises(train_lib.CheckpointRestoreError) as err:
        train_lib.restore_newest_readable(checkpoint, directory)
    message = str(err.value)
    assert "\n" not in message and directory in message and "Nothing was deleted" in message
    assert all(f"ckpt-{n}: IndexError" in message for n in (2, 4, 6))
    assert isinstance(err.value, ValueError)  # the commands turn it into "error: ..." and exit 2
    assert sorted(os.listdir(directory)) == before


def test_restore_finds_checkpoints_when_the_state_file_is_unreadable(saved_checkpoints):
    # TensorFlow ignores a garbled state file: the run would start from step 0.
    checkpoint, directory = saved_checkpoints
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("garbled {{{\n")
    assert tf.train.latest_checkpoint(directory) is None
    assert train_lib.restore_newest_readable(checkpoint, directory) == os.path.join(directory, "ckpt-6")
    assert int(checkpoint.step.numpy()) == 6


def test_restore_without_checkpoints_starts_from_scratch(tmp_path):
    checkpoint = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64))
    assert train_lib.restore_newest_readable(checkpoint, str(tmp_path / "none")) is None


def _write_idx(
    path: str, array: np.ndarray, magic: Optional[int] = None, count: Optional[int] = None
) -> None:
    dims = list(array.shape)
    if count is not None:
        dims[0] = count
    magic = magic if magic is not None else 0x0800 + array.ndim
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes())


@pytest.mark.parametrize(
    "damage, bad_file, fix",
    [
        ("magic", IMAGES, "is not an MNIST-format image file"),
        ("count", IMAGES, "header says shape (9, 28, 28)"),
        ("lengths", "train-labels-idx1-ubyte.gz", "Replace them with complete copies"),
        ("crc", IMAGES, "not valid gzip data"),
        ("truncated", IMAGES, "truncated"),
    ],
)
def test_bad_idx_files_give_one_line_naming_the_file_and_the_fix(tmp_path, damage, bad_file, fix):
    images = np.zeros((8, 28, 28), np.uint8)
    labels = np.zeros((8,), np.uint8)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), images)
        _write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), labels)
    path = str(tmp_path / bad_file)
    if damage == "magic":
        _write_idx(path, images, magic=0x0801)
    elif damage == "count":  # the labels agree with the header, the data is short
        _write_idx(path, images, count=9)
        _write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros((9,), np.uint8))
    elif damage == "lengths":
        _write_idx(path, labels[:5])
    elif damage == "crc":
        with open(path, "r+b") as f:  # the CRC-32 of the data, in the 8-byte trailer
            f.seek(-8, os.SEEK_END)
            f.write(b"\x00\x00\x00\x00")
    else:
        _truncate(path, 0.7)
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    data.clear_cache()
    with pytest.raises(ValueError) as err:
        data.load_arrays(config, "train")
    data.clear_cache()
    message = str(err.value)
    assert "\n" not in message and path in message and fix in message, message
    assert "Replace" in message  # the fix


def test_bad_config_metadata_and_saved_model_files_name_the_file(tmp_path, tiny_config):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"mode": ')
    with pytest.raises(ValueError, match="Restore the file, or use a new --model_dir") as err:
        train_lib.check_model_dir(tiny_config(), str(model_dir))
    assert str(model_dir / "config.json") in str(err.value)

    export_dir = tmp_path / "export"
    (export_dir / "saved_model").mkdir(parents=True)
    (export_dir / "saved_model" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    (export_dir / "metadata.json").write_text("{")
    with pytest.raises(ValueError, match="metadata.json cannot be read") as err:
        export.load_model(str(export_dir))
    assert "\n" not in str(err.value)
    (export_dir / "metadata.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot be loaded .*Export the model again") as err:
        export.load_model(str(export_dir))
    assert str(export_dir / "saved_model") in str(err.value) and "\n" not in str(err.value)
