"""Tests of jarn_tf.core.data: sources, IDX parsing and the input pipelines."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import struct
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jarn_tf.core import data
from jarn_tf.config import DataConfig

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _skip_unless_ci(reason: str) -> None:
    """Skips the test outside CI; in CI (CI=true, as .ci/run sets) what it needs must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI (CI={os.environ['CI']}) must run this test, not skip it")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Tests reuse (dataset, data_dir) keys with different contents.
    data.clear_cache()
    yield
    data.clear_cache()


def write_idx(path: str, array: np.ndarray, magic: int | None = None) -> None:
    """Writes an MNIST-format IDX file (gzipped when path ends in .gz)."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0803 if array.ndim == 3 else 0x0801
    payload = struct.pack(">I", magic)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_idx_dataset(directory, splits: dict, gz: bool = False) -> None:
    """Writes {split: (images [N, H, W], labels [N])} as IDX files."""
    os.makedirs(directory, exist_ok=True)
    for split, (images, labels) in splits.items():
        suffix = ".gz" if gz else ""
        images_stem, labels_stem = IDX_STEMS[split]
        write_idx(os.path.join(directory, images_stem + suffix), images)
        write_idx(os.path.join(directory, labels_stem + suffix), labels)


def indexed_splits(n_train: int = 20, n_test: int = 7) -> dict:
    """Image i of each split is filled with the value i, so batches say which
    examples they hold."""

    def split(n: int, offset: int):
        images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()
        return images, (np.arange(n) + offset) % 10

    return {"train": split(n_train, 0), "test": split(n_test, 3)}


def random_splits(n_train: int, n_test: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        split: (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n),
        )
        for split, n in (("train", n_train), ("test", n_test))
    }


def take(ds: tf.data.Dataset, n: int) -> list:
    return list(ds.take(n).as_numpy_iterator())


def batch_indices(batch) -> np.ndarray:
    """Example indices of an unaugmented batch of indexed_splits images."""
    return np.rint(batch[0][:, 0, 0, 0] * 255).astype(np.int64)


@pytest.fixture
def indexed_config(tmp_path) -> DataConfig:
    write_idx_dataset(tmp_path, indexed_splits())
    return DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False, augment=False)


def prepare_tfds_metadata(data_dir, tfds_name: str) -> str:
    """Makes TFDS see a prepared dataset: writes only its metadata files.

    Under tfds.testing.mock_data(data_dir=...) the records are then faked.
    """
    builder = tfds.builder(tfds_name, data_dir=str(data_dir))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return os.fspath(builder.data_dir)


# --- Dataset names ----------------------------------------------------------


def test_dataset_info_known_names():
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "svhn", "cifar10"}
    cifar = data.dataset_info("cifar10")
    assert (cifar.tfds_name, cifar.image_shape, cifar.default_augment) == (
        "cifar10",
        (32, 32, 3),
        True,
    )
    assert data.dataset_info("svhn").tfds_name == "svhn_cropped"
    assert data.dataset_info("fashion_mnist").image_shape == (28, 28, 1)
    assert not data.dataset_info("mnist").default_augment


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        data.dataset_info("imagenet")
    for name in ("imagenet", "mnist", "fashion_mnist", "svhn", "cifar10"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="cifar10"):
        data.load_arrays(DataConfig(dataset="imagenet", download=False), "train")


# --- IDX files --------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_exactly(tmp_path, gz):
    splits = random_splits(5, 3)
    write_idx_dataset(tmp_path, splits, gz=gz)
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    assert data.describe_source(config) == f"idx:{tmp_path}"
    for split, (images, labels) in splits.items():
        got_images, got_labels = data.load_arrays(config, split)
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images, images[..., None])
        np.testing.assert_array_equal(got_labels, labels)


def test_idx_files_in_dataset_subdir(tmp_path):
    splits = random_splits(4, 2)
    write_idx_dataset(tmp_path / "mnist", splits, gz=True)
    config = DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)
    assert data.describe_source(config) == f"idx:{tmp_path / 'mnist'}"
    images, labels = data.load_arrays(config, "test")
    np.testing.assert_array_equal(images[..., 0], splits["test"][0])
    np.testing.assert_array_equal(labels, splits["test"][1])


def test_load_arrays_caches_read_only_arrays(indexed_config):
    first = data.load_arrays(indexed_config, "train")
    assert data.load_arrays(indexed_config, "train")[0] is first[0]
    with pytest.raises(ValueError):
        first[0][0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="split"):
        data.load_arrays(indexed_config, "validation")


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("magic", "magic number"),
        ("truncated", "header says shape"),
        ("count", "disagree"),
        ("size", "28x28"),
        ("label", "label 12"),
    ],
)
def test_corrupt_idx_files_raise_naming_the_file(tmp_path, corruption, message):
    splits = random_splits(4, 3)
    write_idx_dataset(tmp_path, splits, gz=True)
    images_path = str(tmp_path / "train-images-idx3-ubyte.gz")
    labels_path = str(tmp_path / "train-labels-idx1-ubyte.gz")
    images, labels = splits["train"]
    bad_path = images_path
    if corruption == "magic":
        write_idx(images_path, images, magic=0x0802)
    elif corruption == "truncated":
        with gzip.open(images_path, "rb") as f:
            payload = f.read()
        with gzip.open(images_path, "wb") as f:
            f.write(payload[:-10])
    elif corruption == "count":
        write_idx(labels_path, labels[:3])
    elif corruption == "size":
        write_idx(images_path, images[:, :5, :5])
    else:
        bad_path = labels_path
        write_idx(labels_path, np.array([0, 1, 12, 3]))
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match=message) as err:
        data.load_arrays(config, "train")
    assert bad_path in str(err.value)


def test_read_idx_rejects_labels_file_as_images(tmp_path):
    path = str(tmp_path / "labels")
    write_idx(path, np.arange(3))
    with pytest.raises(ValueError, match="0x00000801.*0x00000803"):
        data.read_idx(path, rank=3)


# --- Missing data and source selection -----------------------------------


def test_missing_mnist_says_how_to_get_it(tmp_path):
    config = DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False)
    with pytest.raises(data.DatasetNotFoundError) as early:
        data.describe_source(config)
    with pytest.raises(data.DatasetNotFoundError) as late:
        data.load_arrays(config, "train")
    message = str(early.value)
    assert message == str(late.value)
    assert "'mnist'" in message
    assert str(tmp_path) in message  # where it looked
    assert str(tmp_path / "mnist") in message
    assert "download_and_prepare()" in message  # how to get it
    assert f"--data_dir={tmp_path}" in message
    assert "train-images-idx3-ubyte" in message
    assert "apt-get" not in message  # no Debian package has MNIST


def test_missing_fashion_mnist_mentions_debian_package(tmp_path, monkeypatch):
    info = data.dataset_info("fashion_mnist")
    monkeypatch.setitem(
        data.DATASETS,
        "fashion_mnist",
        dataclasses.replace(info, idx_system_dirs=(str(tmp_path / "not-installed"),)),
    )
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path / "d"), download=False)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.describe_source(config)
    assert "sudo apt-get install dataset-fashion-mnist" in str(err.value)
    assert str(tmp_path / "not-installed") in str(err.value)


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    config = DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.describe_source(config)
    message = str(err.value)
    assert "tfds.builder('cifar10'" in message
    assert str(tmp_path / "cifar10") in message
    assert "IDX" not in message


def test_describe_source_reads_no_data_and_no_network(indexed_config, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("describe_source must not load or download data")

    monkeypatch.setattr(data, "read_idx", fail)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", fail)
    assert data.describe_source(indexed_config) == f"idx:{indexed_config.data_dir}"
    empty = DataConfig(dataset="svhn", data_dir=indexed_config.data_dir, download=True)
    assert data.describe_source(empty) == "tfds-download"


def test_download_failure_is_wrapped(tmp_path, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    config = DataConfig(dataset="svhn", data_dir=str(tmp_path), download=True)
    with pytest.raises(data.DatasetNotFoundError, match="network unreachable") as err:
        data.load_arrays(config, "train")
    assert "svhn_cropped" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


def test_sources_are_tried_in_the_readme_order(tmp_path, monkeypatch):
    # README, Data: (1) TFDS's prepared copy in --data_dir; (2) IDX files in --data_dir, in
    # --data_dir/<dataset>/ (both spellings for Fashion-MNIST), then in the Debian directory;
    # (3) a TFDS download. Every source holds a copy of its own size; each is removed in turn.
    debian = tmp_path / "debian"
    info = data.dataset_info("fashion_mnist")
    monkeypatch.setitem(
        data.DATASETS, "fashion_mnist", dataclasses.replace(info, idx_system_dirs=(str(debian),))
    )
    data_dir = tmp_path / "data"
    idx_dirs = [data_dir, data_dir / "fashion_mnist", data_dir / "fashion-mnist", debian]
    for n, directory in enumerate(idx_dirs):
        write_idx_dataset(directory, random_splits(3 + n, 2, seed=n), gz=n % 2 == 1)
    tfds_dir = prepare_tfds_metadata(data_dir, "fashion_mnist")  # inside data_dir/fashion_mnist/
    config = DataConfig(dataset="fashion_mnist", data_dir=str(data_dir), download=True)

    def loaded() -> int:
        data.clear_cache()
        return len(data.load_arrays(config, "train")[1])

    with tfds.testing.mock_data(num_examples=9, data_dir=str(data_dir)):
        assert data.describe_source(config) == f"tfds:{tfds_dir}"
        assert loaded() == 9
    shutil.rmtree(tfds_dir)
    for n, directory in enumerate(idx_dirs):
        assert data.describe_source(config) == f"idx:{directory}", n
        assert loaded() == 3 + n
        for stem in IDX_STEMS["train"] + IDX_STEMS["test"]:
            os.remove(os.path.join(directory, stem + (".gz" if n % 2 == 1 else "")))
    assert data.describe_source(config) == "tfds-download"
    # Without the download, the error lists the places in the same order.
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.describe_source(dataclasses.replace(config, download=False))
    message = str(err.value)
    places = [f"TFDS prepared data: {tfds_dir}"] + [f"IDX files: {d}" for d in idx_dirs]
    positions = [message.find(place + "\n") for place in places]
    assert -1 not in positions and positions == sorted(positions), message


# --- TFDS (faked by tfds.testing.mock_data) ------------------------------


def test_tfds_prepared_data_is_used_first(tmp_path):
    # A TFDS copy wins over IDX files in the same data_dir.
    write_idx_dataset(tmp_path, random_splits(3, 2))
    dataset_dir = prepare_tfds_metadata(tmp_path, "fashion_mnist")
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    with tfds.testing.mock_data(num_examples=9, data_dir=str(tmp_path)):
        assert data.describe_source(config) == f"tfds:{dataset_dir}"
        images, labels = data.load_arrays(config, "train")
    assert images.shape == (9, 28, 28, 1)


def test_tfds_cifar10_under_mock_data(tmp_path):
    dataset_dir = prepare_tfds_metadata(tmp_path, "cifar10")
    config = DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    with tfds.testing.mock_data(num_examples=10, data_dir=str(tmp_path)):
        assert data.describe_source(config) == f"tfds:{dataset_dir}"
        images, labels = data.load_arrays(config, "train")
        eval_batches = take(data.make_eval_dataset(config, batch_size=4), 10)
        # cifar10 augments by default.
        train_batch = take(data.make_train_dataset(config, 4, seed=1), 1)[0]
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 10
    assert [len(b[1]) for b in eval_batches] == [4, 4, 2]
    x, y = eval_batches[0]
    assert x.dtype == np.float32 and x.shape == (4, 32, 32, 3)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    np.testing.assert_allclose(x, images[:4] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y, labels[:4])
    assert train_batch[0].shape == (4, 32, 32, 3) and train_batch[1].dtype == np.int64
    assert 0.0 <= train_batch[0].min() and train_batch[0].max() <= 1.0


def test_tfds_svhn_downloads_when_allowed(tmp_path):
    # Plain mock_data has no prepared metadata: only step 3 (download, a
    # no-op under the mock) reaches the fake records.
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(data.DatasetNotFoundError, match="svhn_cropped"):
            data.describe_source(DataConfig(dataset="svhn", download=False))
        config = DataConfig(dataset="svhn", data_dir=str(tmp_path), download=True)
        assert data.describe_source(config) == "tfds-download"
        images, labels = data.load_arrays(config, "test")
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64


# --- Training pipeline ------------------------------------------------------


def test_steps_per_epoch(indexed_config):
    assert data.steps_per_epoch(indexed_config, 6) == 3
    assert data.steps_per_epoch(indexed_config, 20) == 1
    with pytest.raises(ValueError, match="fewer than one global batch"):
        data.make_train_dataset(indexed_config, 21, seed=0)


def test_train_batches_are_deterministic_per_seed(indexed_config):
    a = take(data.make_train_dataset(indexed_config, 6, seed=3), 4)
    b = take(data.make_train_dataset(indexed_config, 6, seed=3), 4)
    c = take(data.make_train_dataset(indexed_config, 6, seed=4), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert not all(np.array_equal(x[0], z[0]) for x, z in zip(a, c))
    x, y = a[0]
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (6,) and y.dtype == np.int64
    # Labels travel with their images.
    np.testing.assert_array_equal(y, batch_indices(a[0]) % 10)


def test_each_epoch_is_a_fresh_permutation(indexed_config):
    spe = data.steps_per_epoch(indexed_config, 6)  # 20 examples: 3 steps, 2 left
    batches = take(data.make_train_dataset(indexed_config, 6, seed=0), 3 * spe)
    epochs = [np.concatenate([batch_indices(b) for b in batches[e * spe : (e + 1) * spe]]) for e in range(3)]
    for order in epochs:
        assert len(set(order)) == spe * 6  # no example twice in an epoch
        assert set(order) <= set(range(20))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("augment", [False, True])
def test_resume_gives_the_same_batches(indexed_config, augment):
    config = dataclasses.replace(indexed_config, augment=augment)
    # 20 examples, batch 6: epochs of 3 steps; steps 0..8 cross two boundaries.
    reference = take(data.make_train_dataset(config, 6, seed=7), 9)
    for k in range(9):
        resumed = take(data.make_train_dataset(config, 6, seed=7, start_step=k), 9 - k)
        for s, batch in enumerate(resumed, start=k):
            np.testing.assert_array_equal(batch[0], reference[s][0], f"step {s}")
            np.testing.assert_array_equal(batch[1], reference[s][1], f"step {s}")


def test_resume_far_into_training_is_immediate(indexed_config):
    # Resuming jumps straight to the epoch: it must not replay skipped steps
    # (10**9 steps here would take hours).
    config = dataclasses.replace(indexed_config, augment=True)
    reference = take(data.make_train_dataset(config, 6, seed=1, start_step=3 * 10**9), 2)
    start = time.perf_counter()
    resumed = take(data.make_train_dataset(config, 6, seed=1, start_step=10**9 * 3 + 1), 1)
    assert time.perf_counter() - start < 10
    np.testing.assert_array_equal(resumed[0][0], reference[1][0])


# Zero padding a side of the release's and Madry et al.'s CIFAR-10 augmentation
# (32x32 padded to 36x36, then a random 32x32 crop).
REFERENCE_PAD = 2


def pad_crop_flip_draw(original: np.ndarray, augmented: np.ndarray):
    """The (row, column, flip) whose pad-2-crop-flip of original gives augmented."""
    pad = REFERENCE_PAD
    height, width = original.shape[:2]
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
    for r in range(2 * pad + 1):
        for c in range(2 * pad + 1):
            crop = padded[r : r + height, c : c + width]
            for flip, candidate in ((0, crop), (1, crop[:, ::-1])):
                if np.array_equal(augmented, candidate):
                    return r, c, flip
    return None


def test_augmentation_is_pad_crop_flip_and_deterministic(tmp_path):
    write_idx_dataset(tmp_path, random_splits(40, 2, seed=5))
    base = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    plain_config = dataclasses.replace(base, augment=False)
    aug_config = dataclasses.replace(base, augment=True)
    plain = take(data.make_train_dataset(plain_config, 8, seed=2), 3)
    aug = take(data.make_train_dataset(aug_config, 8, seed=2), 3)
    again = take(data.make_train_dataset(aug_config, 8, seed=2), 3)
    draws = []
    for (px, py), (ax, ay), (gx, _) in zip(plain, aug, again):
        np.testing.assert_array_equal(ay, py)  # same order as without it
        np.testing.assert_array_equal(ax, gx)  # deterministic
        assert ax.shape == px.shape and ax.dtype == np.float32
        assert ax.min() >= 0.0 and ax.max() <= 1.0
        for original, augmented in zip(px, ax):
            draw = pad_crop_flip_draw(original, augmented)
            assert draw is not None, "not a pad-crop-flip of the original"
            draws.append(draw)
    # 24 images: both flips occur and the crops move around.
    assert {flip for _, _, flip in draws} == {0, 1}
    assert len({(r, c) for r, c, _ in draws}) > 8
    # Offsets cover [0, 2 * pad] = [0, 4] and nothing else (a shift of at most
    # 2 pixels; with a wider pad some crop would match no pad-2 draw above).
    assert {r for r, _, _ in draws} | {c for _, c, _ in draws} == set(range(2 * REFERENCE_PAD + 1))
    other = take(data.make_train_dataset(aug_config, 8, seed=3), 1)[0]
    reordered = take(data.make_train_dataset(plain_config, 8, seed=3), 1)[0]
    np.testing.assert_array_equal(other[1], reordered[1])
    assert not np.array_equal(other[0], aug[0][0])


def test_pad_crop_shifts_by_at_most_two_pixels():
    """The extreme crops of a white image leave a zero border exactly 2 pixels wide."""
    images = tf.fill([2, 32, 32, 3], tf.constant(255, tf.uint8))
    # Offsets (0, 0): the top-left corner of the 36x36 padded image; (4, 4): the bottom-right.
    rand = tf.constant([[0, 0, 0], [4, 4, 0]], tf.int32)
    out = data._pad_crop_flip(images, rand).numpy()
    assert out.shape == (2, 32, 32, 3)
    top_left, bottom_right = out[0, :, :, 0] > 0, out[1, :, :, 0] > 0
    np.testing.assert_array_equal(top_left[:2], False)
    np.testing.assert_array_equal(top_left[:, :2], False)
    np.testing.assert_array_equal(top_left[2:, 2:], True)
    np.testing.assert_array_equal(bottom_right[-2:], False)
    np.testing.assert_array_equal(bottom_right[:, -2:], False)
    np.testing.assert_array_equal(bottom_right[:-2, :-2], True)


@pytest.mark.parametrize("pipelines, replicas, global_batch", [(2, 2, 6), (1, 2, 6), (2, 4, 8), (1, 1, 6)])
def test_distributed_pipelines_reassemble_global_batches(indexed_config, pipelines, replicas, global_batch):
    config = dataclasses.replace(indexed_config, augment=True)
    steps, start = 5, 2
    reference = take(data.make_train_dataset(config, global_batch, 4, start), steps)
    per_replica = global_batch // replicas
    per_pipeline_replicas = replicas // pipelines
    streams = []
    for i in range(pipelines):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=pipelines,
            input_pipeline_id=i,
            num_replicas_in_sync=replicas,
        )
        ds = data.make_train_dataset(config, global_batch, 4, start, ctx)
        streams.append(take(ds, steps * per_pipeline_replicas))
    for s in range(steps):
        parts = [
            stream[s * per_pipeline_replicas + r] for stream in streams for r in range(per_pipeline_replicas)
        ]
        assert all(len(p[1]) == per_replica for p in parts)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), reference[s][0], f"step {s}")
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), reference[s][1], f"step {s}")


def test_global_batch_must_divide_over_replicas(indexed_config):
    ctx = tf.distribute.InputContext(num_replicas_in_sync=4)
    with pytest.raises(ValueError, match="divisible by the number of replicas"):
        data.make_train_dataset(indexed_config, 6, seed=0, input_context=ctx)


def test_train_pipeline_throughput(tmp_path):
    # A Fashion-MNIST-sized set; the (slower) augmented path must feed well
    # over 2,000 images/s on a 2-core machine.
    write_idx_dataset(tmp_path, random_splits(60000, 1), gz=False)
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False, augment=True)
    iterator = iter(data.make_train_dataset(config, 128, seed=0))
    next(iterator)
    start, n = time.perf_counter(), 0
    for _ in range(100):
        n += len(next(iterator)[1])
    rate = n / (time.perf_counter() - start)
    assert rate > 2000, f"{rate:.0f} images/s"


# --- Evaluation pipeline ----------------------------------------------------


def test_eval_dataset_keeps_order_and_last_partial_batch(indexed_config):
    images, labels = data.load_arrays(indexed_config, "test")  # 7 examples
    batches = take(data.make_eval_dataset(indexed_config, batch_size=3), 10)
    assert [len(b[1]) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), images / 255.0, atol=1e-7)
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64

    first5 = take(data.make_eval_dataset(indexed_config, 3, num_examples=5), 10)
    assert [len(b[1]) for b in first5] == [3, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in first5]), labels[:5])

    train = take(data.make_eval_dataset(indexed_config, 8, split="train"), 10)
    np.testing.assert_array_equal(np.concatenate([batch_indices(b) for b in train]), np.arange(20))


def test_eval_dataset_rejects_bad_sizes(tmp_path, indexed_config):
    with pytest.raises(ValueError, match="num_examples"):
        data.make_eval_dataset(indexed_config, 3, num_examples=0)
    empty_dir = tmp_path / "empty"
    write_idx_dataset(
        empty_dir,
        {
            "train": random_splits(3, 1)["train"],
            "test": (np.zeros((0, 28, 28)), np.zeros((0,))),
        },
    )
    config = DataConfig(dataset="mnist", data_dir=str(empty_dir), download=False)
    with pytest.raises(ValueError, match="empty"):
        data.make_eval_dataset(config, 3)


# --- The real Debian copy ---------------------------------------------------


def test_debian_fashion_mnist(tmp_path):
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        _skip_unless_ci("Debian package dataset-fashion-mnist is not installed")
    # An empty data_dir: no TFDS copy there, so the Debian files are used.
    config = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    assert data.describe_source(config) == f"idx:{DEBIAN_FASHION_MNIST}"
    train_images, train_labels = data.load_arrays(config, "train")
    test_images, test_labels = data.load_arrays(config, "test")
    assert train_images.shape == (60000, 28, 28, 1) and train_labels.shape == (60000,)
    assert test_images.shape == (10000, 28, 28, 1) and test_labels.shape == (10000,)
    assert set(np.unique(train_labels)) == set(range(10))
    assert train_images.max() == 255
