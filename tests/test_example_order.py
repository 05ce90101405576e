"""--example_order: the first N evaluation images are the original release's
first N (RobustBench's), from IDX files and from TFDS copies alike."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar as tfds_cifar
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from jarn_tf.core import data
from jarn_tf.config import DataConfig

CIFAR_FILES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}


def _release_files(directory: str, seed: int = 0) -> dict:
    """Tiny CIFAR-10 binary files; returns split -> (images [N, 32, 32, 3], labels) in file order."""
    rng = np.random.default_rng(seed)
    root = os.path.join(directory, "cifar-10-batches-bin")
    os.makedirs(root)
    with open(os.path.join(root, "batches.meta.txt"), "w") as f:
        f.write("\n".join(f"class{i}" for i in range(10)) + "\n")
    out = {}
    for split, names in CIFAR_FILES.items():
        images, labels = [], []
        for name in names:
            x = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)  # channels first, as released
            y = rng.integers(0, 10, size=6, dtype=np.uint8)
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"".join(bytes([label]) + image.tobytes() for label, image in zip(y, x)))
            images.append(x.transpose(0, 2, 3, 1))
            labels.append(y)
        out[split] = (np.concatenate(images), np.concatenate(labels).astype(np.int64))
    return out


@pytest.fixture(scope="module")
def tfds_copies(tiny_data_dir, tmp_path_factory):
    """TFDS copies of the tiny IDX Fashion-MNIST and of a tiny CIFAR-10, prepared by TFDS's own
    builders (in 3 shards) from local files; returns (data_dir, {dataset: {split: release arrays}})."""
    tmp = tmp_path_factory.mktemp("tfds_copies")
    raw = str(tmp / "raw")
    os.makedirs(raw)
    for name in os.listdir(tiny_data_dir):  # the builders read extracted IDX files
        with gzip.open(os.path.join(tiny_data_dir, name)) as src, open(
            os.path.join(raw, name[:-3]), "wb"
        ) as dst:
            shutil.copyfileobj(src, dst)
    cifar = _release_files(raw)

    def local_files(self, urls):
        if isinstance(urls, dict):  # mnist-style: one URL per IDX file
            return {k: os.path.join(raw, os.path.basename(v)[: -len(".gz")]) for k, v in urls.items()}
        return raw  # cifar10: the extracted archive

    release = {"cifar10": cifar}
    config = DataConfig(dataset="fashion_mnist", data_dir=tiny_data_dir, download=False)
    release["fashion_mnist"] = {split: data.load_arrays(config, split) for split in data.SPLITS}
    data_dir = str(tmp / "tfds")
    builder_classes = (tfds_mnist.FashionMNIST, tfds_cifar.Cifar10)
    assert not any("url_infos" in vars(c) for c in builder_classes)  # inherited, so del restores it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "download_and_extract", local_files)
        patch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", len(release["fashion_mnist"]["train"][1]))
        patch.setattr(tfds_mnist, "_TEST_EXAMPLES", len(release["fashion_mnist"]["test"][1]))
        try:
            # No checksums of the real files (monkeypatch would read the class property first).
            for builder_class in builder_classes:
                builder_class.url_infos = None
            for name in ("fashion_mnist", "cifar10"):
                tfds.builder(name, data_dir=data_dir).download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3)
                )
        finally:
            for builder_class in builder_classes:
                del builder_class.url_infos
    data.clear_cache()
    yield data_dir, release
    data.clear_cache()


@pytest.mark.parametrize("dataset, how", [("fashion_mnist", "keys"), ("cifar10", "ids")])
def test_tfds_copy_gives_the_original_order(tfds_copies, dataset, how):
    data_dir, release = tfds_copies
    config = DataConfig(dataset=dataset, data_dir=data_dir, download=False)
    assert data.describe_source(config).startswith("tfds:")
    for split in data.SPLITS:
        images, labels = release[dataset][split]
        original = data.load_arrays(config, split, "original")
        np.testing.assert_array_equal(original[0], images)
        np.testing.assert_array_equal(original[1], labels)
        # TFDS's own order is another permutation of the same examples; training keeps reading it.
        stored, stored_labels = data.load_arrays(config, split)
        assert not np.array_equal(stored, images)
        assert sorted(map(bytes, stored)) == sorted(map(bytes, images))
        assert np.array_equal(stored_labels, np.asarray(labels)[_permutation(stored, images)])
    order = data.resolve_example_order(config, "test", "auto")
    assert order.name == "original" and how in order.detail
    assert data.resolve_example_order(config, "test", "original") == order
    assert data.resolve_example_order(config, "test", "stored").name == "stored"
    first = next(iter(data.make_eval_dataset(config, batch_size=5, num_examples=5, order="original")))
    np.testing.assert_allclose(first[0].numpy(), release[dataset]["test"][0][:5] / 255.0, atol=1e-6)


def _permutation(shuffled: np.ndarray, reference: np.ndarray) -> np.ndarray:
    where = {bytes(x): i for i, x in enumerate(reference)}
    return np.array([where[bytes(x)] for x in shuffled])


def test_idx_files_are_the_original_order_whatever_is_asked(tiny_data_dir):
    config = DataConfig(dataset="fashion_mnist", data_dir=tiny_data_dir, download=False)
    for requested in data.EXAMPLE_ORDERS:
        order = data.resolve_example_order(config, "test", requested)
        assert order.name == "original" and "IDX files" in order.detail
    assert data.load_arrays(config, "test", "original")[0] is data.load_arrays(config, "test")[0]
    with pytest.raises(ValueError, match="valid orders: auto, original, stored"):
        data.resolve_example_order(config, "test", "random")


def test_copy_without_the_original_order_falls_back_or_fails_clearly(tmp_path):
    # mock_data's records carry random ids, like a copy that does not number its examples.
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    config = DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    data.clear_cache()
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        auto = data.resolve_example_order(config, "test", "auto")
        with pytest.raises(data.ExampleOrderError) as err:
            data.resolve_example_order(config, "test", "original")
        stored = data.load_arrays(config, "test")
    data.clear_cache()
    assert auto.name == "stored"
    assert "shuffled" in auto.detail and "original order is unavailable" in auto.detail
    message = str(err.value)
    assert "\n" not in message and "not 'test_<index>'" in message and "--example_order=stored" in message
    assert isinstance(err.value, ValueError)  # the command prints it as "error: ..." and exits 2
    assert len(stored[0]) == 6


def test_evaluate_records_and_prints_the_order(tfds_copies, tiny_keras_file, tmp_path, evaluate_cli):
    data_dir, _ = tfds_copies
    out = tmp_path / "eval"
    proc = evaluate_cli(
        f"--model={tiny_keras_file}",
        "--dataset=fashion_mnist",
        f"--data_dir={data_dir}",
        "--nodownload",
        "--attacks=clean",
        "--num_examples=5",
        "--verbose=0",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Example order: original: the original release's order" in proc.stdout, proc.stdout
    results = json.load(open(out / "results.json"))
    assert results["example_order"] == "original" and "keys" in results["example_order_detail"]
    assert results["num_examples"] == 5
