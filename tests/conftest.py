"""Shared fixtures: a tiny learnable dataset in MNIST's IDX format."""

from __future__ import annotations

import gzip
import os
import struct

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
