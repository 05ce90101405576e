"""Datasets: finding the data, loading it into memory and feeding it.

Images are held in memory as uint8 arrays (CIFAR-10's training set is about
150 MB) and fed as ``(images float32 [B, H, W, C] in [0, 1], labels int64
[B])``.

Where the data comes from, in order of preference:

1. TFDS, when the dataset is already prepared in ``DataConfig.data_dir`` (or
   TFDS's default directory when it is None).
2. For mnist and fashion_mnist: MNIST-format IDX files in ``data_dir``,
   ``data_dir/<name>/`` or (fashion_mnist) Debian's ``dataset-fashion-mnist``
   package.
3. With ``DataConfig.download``: TFDS downloads and prepares it (network).

Otherwise ``DatasetNotFoundError`` says where it looked and how to get the data.

The training pipeline is deterministic and resumable: the global batch of step
``s`` is a pure function of (data, seed, s, global batch size), whatever the
step the run was resumed from and however many input pipelines and replicas
consume it.

Example order (``EXAMPLE_ORDERS``): ``stored`` is the order of the copy read.
IDX files are the dataset's original release, in its original order; TFDS
shuffled its copy when preparing it (records sorted by a hash of their keys).
``original`` is the order of the original release (MNIST's and
Fashion-MNIST's IDX files, CIFAR-10's ``test_batch``, SVHN's ``.mat`` files),
which RobustBench and the PyTorch loaders use, so that "the first N test
images" are the same images everywhere. Training always reads ``stored``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import struct
import threading
import zlib
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jarn_tf.config import DataConfig

SPLITS = ("train", "test")

# Zero padding on each side before the random crop: 2, as the JARN release and
# Madry et al.'s cifar10_challenge (pad 32x32 to 36x36, random 32x32 crop).
_AUGMENT_PAD = 2

# Examples per batch while reading a TFDS split into memory.
_TFDS_READ_BATCH = 4096

# IDX file stems per split; each file may also be gzipped (``.gz``).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), rank.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801

# How an evaluation split's examples are ordered (see the module docstring);
# ``auto`` is ``original`` where the source can give it, else ``stored``.
EXAMPLE_ORDERS = ("auto", "original", "stored")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a supported dataset.

    Attributes:
      name: our name (the key of ``DATASETS``).
      tfds_name: the TFDS builder name.
      image_shape: (height, width, channels).
      num_classes: number of labels.
      default_augment: whether pad-crop-flip augmentation is on by default.
      idx_subdirs: subdirectories of ``data_dir`` searched for IDX files (the
        directory itself is searched first); empty when the dataset has no
        IDX form.
      idx_system_dirs: system directories holding IDX files, e.g. from a
        Debian package.
      idx_system_package: the Debian package that fills ``idx_system_dirs``.
      tfds_original_order: TFDS's builder numbers each split's examples in the
        original release's order: its example keys are 0..N-1 and, where it
        has an ``id`` feature, the ids are ``<split>_<index>``; so the
        original order can be recovered from a TFDS copy.
    """

    name: str
    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    default_augment: bool
    idx_subdirs: tuple[str, ...] = ()
    idx_system_dirs: tuple[str, ...] = ()
    idx_system_package: Optional[str] = None
    tfds_original_order: bool = False

    @property
    def has_idx(self) -> bool:
        """Whether the dataset can be read from MNIST-format IDX files."""
        return bool(self.idx_subdirs)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        tfds_name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        default_augment=False,
        idx_subdirs=("mnist",),
        tfds_original_order=True,
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        tfds_name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        default_augment=False,
        idx_subdirs=("fashion_mnist", "fashion-mnist"),
        idx_system_dirs=("/usr/share/datasets/fashion-mnist",),
        idx_system_package="dataset-fashion-mnist",
        tfds_original_order=True,
    ),
    "svhn": DatasetInfo(
        name="svhn",
        tfds_name="svhn_cropped",
        image_shape=(32, 32, 3),
        num_classes=10,
        default_augment=False,
        tfds_original_order=True,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        tfds_name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        default_augment=True,
        tfds_original_order=True,
    ),
}


class DatasetNotFoundError(RuntimeError):
    """The dataset is in none of the places searched and cannot be downloaded.

    The message names the dataset, every place searched and the commands that
    get the data.
    """


class ExampleOrderError(ValueError):
    """The source cannot give the examples in the order asked for."""


def dataset_info(name: str) -> DatasetInfo:
    """Returns the ``DatasetInfo`` of a dataset.

    Args:
      name: one of ``DATASETS``.

    Returns:
      Its static description.

    Raises:
      ValueError: for an unknown name; the message lists the valid ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.") from None


# ---------------------------------------------------------------------------
# Finding the data.


@dataclasses.dataclass(frozen=True)
class _Source:
    kind: str  # "tfds", "idx" or "tfds-download"
    location: str  # TFDS dataset directory or IDX directory; "" for download
    builder: Optional[tfds.core.DatasetBuilder] = None  # for the TFDS kinds

    def describe(self) -> str:
        return f"{self.kind}:{self.location}" if self.location else self.kind


def _tfds_builder(info: DatasetInfo, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    # Building the builder reads only local metadata: no network access.
    return tfds.builder(info.tfds_name, data_dir=data_dir)


def _find_idx_file(directory: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _idx_search_dirs(info: DatasetInfo, data_dir: Optional[str]) -> list[str]:
    dirs = []
    if data_dir:
        dirs.append(data_dir)
        dirs.extend(os.path.join(data_dir, sub) for sub in info.idx_subdirs)
    dirs.extend(info.idx_system_dirs)
    return dirs


def _idx_dir_complete(directory: str) -> bool:
    # A directory counts only if it has both splits, so train and eval always
    # read the same copy of the dataset.
    return all(_find_idx_file(directory, stem) is not None for stems in _IDX_FILES.values() for stem in stems)


def _tfds_default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _not_found_message(info: DatasetInfo, config: DataConfig, searched: list[str], reason: str) -> str:
    example_dir = config.data_dir or "DIR"
    lines = [
        f"Dataset {info.name!r} was not found {reason}.",
        "Searched:",
        *(f"  - {place}" for place in searched),
        "To get it, do one of:",
        "  * with network access, run once with --download, or prepare it once:",
        f'      python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{info.tfds_name}', data_dir='{example_dir}')"
        f'.download_and_prepare()"',
        f"    then pass --data_dir={example_dir} (TFDS's default directory, "
        f"used without --data_dir, is {_tfds_default_dir()}).",
    ]
    if info.has_idx:
        files = ", ".join(stem for stems in _IDX_FILES.values() for stem in stems)
        lines.append(
            f"  * put the MNIST-format IDX files ({files}; each may be .gz) "
            f"in --data_dir or in --data_dir/{info.idx_subdirs[0]}/."
        )
    if info.idx_system_package:
        lines.append(
            f"  * install the Debian package: sudo apt-get install "
            f"{info.idx_system_package} (it puts the IDX files in "
            f"{', '.join(info.idx_system_dirs)})."
        )
    return "\n".join(lines)


def _resolve_source(config: DataConfig) -> _Source:
    """Picks the first usable source (see the module docstring).

    Reads only metadata and file headers: no network, no image data.
    """
    info = dataset_info(config.dataset)
    searched = []

    builder = _tfds_builder(info, config.data_dir)
    # The existence check first spares an absl warning per missing directory.
    if builder.data_path.exists() and builder.is_prepared():
        return _Source("tfds", os.fspath(builder.data_dir), builder)
    searched.append(f"TFDS prepared data: {os.fspath(builder.data_dir)}")

    if info.has_idx:
        for directory in _idx_search_dirs(info, config.data_dir):
            if _idx_dir_complete(directory):
                # Header checks are cheap; a corrupt copy fails here, early.
                for split in SPLITS:
                    _check_idx_pair(directory, split, info)
                return _Source("idx", directory)
            searched.append(f"IDX files: {directory}")

    if config.download:
        return _Source("tfds-download", "", builder)
    raise DatasetNotFoundError(
        _not_found_message(info, config, searched, "and downloading is off (--download=false)")
    )


def describe_source(config: DataConfig) -> str:
    """Says which source ``load_arrays`` would use, without loading data.

    Entry points call this first so that missing data fails before any
    training work. It touches no network and reads no image data.

    Args:
      config: the data configuration.

    Returns:
      ``"tfds:<dataset dir>"``, ``"idx:<dir>"`` or ``"tfds-download"``.

    Raises:
      ValueError: unknown dataset, or corrupt IDX files.
      DatasetNotFoundError: no source has the data and downloading is off.
    """
    return _resolve_source(config).describe()


# ---------------------------------------------------------------------------
# Reading IDX files.


# What reading a damaged file raises: EOFError (a truncated .gz),
# gzip.BadGzipFile (not gzip data, or a failed CRC check; an OSError),
# zlib.error (damaged compressed data), OSError (permissions, I/O).
_IDX_READ_ERRORS = (OSError, EOFError, zlib.error)

_IDX_FIX = "Replace it with a complete copy of the dataset's file (download or copy it again)."


def _open_idx(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _idx_read_error(path: str, error: BaseException) -> ValueError:
    """A one-line error for an IDX file that cannot be read, with the fix."""
    if isinstance(error, EOFError):
        reason = "it is truncated"
    elif isinstance(error, (gzip.BadGzipFile, zlib.error)):
        reason = "it is not valid gzip data although its name ends in .gz"
    else:
        reason = "it cannot be read"
    detail = (str(error).splitlines() or [""])[0]
    return ValueError(f"IDX file {path}: {reason} ({type(error).__name__}: {detail}). {_IDX_FIX}")


def _read_idx_header(f, path: str, magic: int, rank: int) -> tuple[int, ...]:
    head = f.read(4 + 4 * rank)
    if len(head) < 4:
        raise ValueError(f"IDX file {path} is truncated: no magic number. {_IDX_FIX}")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        raise ValueError(
            f"IDX file {path} has magic number 0x{found:08x}, expected "
            f"0x{magic:08x} (unsigned bytes, {rank} dimensions); it is not an "
            f"MNIST-format {'image' if rank == 3 else 'label'} file or is corrupt. {_IDX_FIX}"
        )
    if len(head) < 4 + 4 * rank:
        raise ValueError(f"IDX file {path} is truncated inside its header. {_IDX_FIX}")
    return struct.unpack(f">{rank}I", head[4:])


def _read_idx_file(path: str, magic: int, rank: int, header_only: bool) -> tuple[tuple[int, ...], bytes]:
    """The header's dimensions and (unless ``header_only``) the data bytes."""
    try:
        with _open_idx(path) as f:
            dims = _read_idx_header(f, path, magic, rank)
            return dims, b"" if header_only else f.read()
    except _IDX_READ_ERRORS as e:
        raise _idx_read_error(path, e) from e


def read_idx(path: str, rank: int) -> np.ndarray:
    """Reads an MNIST-format IDX file of unsigned bytes.

    Args:
      path: the file, gzipped when its name ends in ``.gz``.
      rank: 3 for images (magic 0x00000803), 1 for labels (0x00000801).

    Returns:
      A uint8 array of the shape stored in the header.

    Raises:
      ValueError: wrong magic number, truncated header, a data size that
        does not match the header, or a file that cannot be read (damaged
        gzip data, permissions); the message names the file and the fix.
    """
    magic = _IDX_IMAGES_MAGIC if rank == 3 else _IDX_LABELS_MAGIC
    dims, payload = _read_idx_file(path, magic, rank, header_only=False)
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise ValueError(
            f"IDX file {path}: header says shape {tuple(dims)} "
            f"({expected} bytes of data) but the file holds {len(payload)}. {_IDX_FIX}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _check_idx_pair(directory: str, split: str, info: DatasetInfo) -> None:
    """Validates the headers of one split's IDX files (no data is read)."""
    images_path, labels_path = (_find_idx_file(directory, stem) for stem in _IDX_FILES[split])
    (n_images, height, width), _ = _read_idx_file(images_path, _IDX_IMAGES_MAGIC, 3, header_only=True)
    (n_labels,), _ = _read_idx_file(labels_path, _IDX_LABELS_MAGIC, 1, header_only=True)
    if (height, width) != info.image_shape[:2]:
        raise ValueError(
            f"IDX file {images_path} holds {height}x{width} images; "
            f"{info.name} images are {info.image_shape[0]}x{info.image_shape[1]}. "
            f"Pass the --dataset these files hold, or put {info.name}'s files there."
        )
    if n_images != n_labels:
        raise ValueError(
            f"IDX files disagree: {images_path} has {n_images} images but "
            f"{labels_path} has {n_labels} labels. Replace them with complete copies of one "
            "release of the dataset."
        )


def _load_idx(directory: str, split: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    _check_idx_pair(directory, split, info)
    images_path, labels_path = (_find_idx_file(directory, stem) for stem in _IDX_FILES[split])
    images = read_idx(images_path, rank=3)[..., np.newaxis]
    labels = read_idx(labels_path, rank=1).astype(np.int64)
    if labels.size and labels.max() >= info.num_classes:
        raise ValueError(
            f"IDX file {labels_path} has label {labels.max()}; {info.name} "
            f"has {info.num_classes} classes. {_IDX_FIX}"
        )
    return images, labels


# ---------------------------------------------------------------------------
# Loading whole splits.


def _load_tfds(
    builder: tfds.core.DatasetBuilder, split: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    # Not batch_size=-1: it batches by the split size recorded in the
    # metadata, which TFDS's mock_data leaves empty.
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)):
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)


def _tfds_has_ids(builder: tfds.core.DatasetBuilder) -> bool:
    return "id" in builder.info.features.keys()


def _tfds_key_positions(split: str, num_examples: int) -> np.ndarray:
    """Where TFDS stored the examples generated with keys 0..N-1.

    TFDS writes a split's records sorted by the md5 hash of the split name
    followed by the key as a decimal string (``tfds.core.hashing``: a change
    of it would change every dataset's major version).

    Args:
      split: the split's name, TFDS's hash salt.
      num_examples: N.

    Returns:
      int64 [N]: the example with key ``k`` is record ``positions[k]`` of the
      stored order.
    """
    salt = hashlib.md5(split.encode("utf-8"))
    hashes = []
    for key in range(num_examples):
        md5 = salt.copy()
        md5.update(str(key).encode("utf-8"))
        hashes.append(int(md5.hexdigest(), 16))
    stored_keys = sorted(range(num_examples), key=hashes.__getitem__)
    return np.argsort(np.asarray(stored_keys, np.int64))


def _tfds_id_positions(ids: np.ndarray, split: str, tfds_name: str) -> np.ndarray:
    """Where each original index sits, from ids ``<split>_<index>``.

    Args:
      ids: the ``id`` feature of every record, in the order read.
      split: the split's name, the ids' prefix.
      tfds_name: the TFDS dataset (for messages).

    Returns:
      int64 [N]: the example with original index ``k`` is record
      ``positions[k]`` of the order read.

    Raises:
      ExampleOrderError: an id is not ``<split>_<index>``, or the indices are
        not 0..N-1.
    """
    pattern = re.compile(rf"{re.escape(split)}_(\d+)")
    indices = np.empty(len(ids), np.int64)
    for i, raw in enumerate(ids):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        match = pattern.fullmatch(text)
        if match is None:
            raise ExampleOrderError(
                f"TFDS's {tfds_name} {split} record {i} has id {text!r}, not '{split}_<index>'"
            )
        indices[i] = int(match.group(1))
    if not np.array_equal(np.sort(indices), np.arange(len(ids))):
        raise ExampleOrderError(
            f"TFDS's {tfds_name} {split} ids do not number the {len(ids)} records 0..{len(ids) - 1}"
        )
    positions = np.empty(len(ids), np.int64)
    positions[indices] = np.arange(len(ids))
    return positions


def _load_tfds_original(
    builder: tfds.core.DatasetBuilder, split: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    """A TFDS split in the original release's order.

    Raises:
      ExampleOrderError: the TFDS copy cannot give that order.
    """
    if not info.tfds_original_order:
        raise ExampleOrderError(f"TFDS's {info.tfds_name} does not record its examples' original order")
    with_ids = _tfds_has_ids(builder)
    # One file after the other (no interleaving), so the records come in
    # their stored order whatever the number of shards.
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
        as_supervised=not with_ids,
    )
    if with_ids:
        ds = ds.map(lambda example: (example["image"], example["label"], example["id"]))
    else:
        ds = ds.map(lambda image, label: (image, label, tf.constant(b"")))
    images, labels, ids = [], [], []
    for x, y, i in tfds.as_numpy(ds.batch(_TFDS_READ_BATCH)):
        images.append(x)
        labels.append(y)
        ids.append(i)
    if not images:
        return np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int64)
    images, labels = np.concatenate(images), np.concatenate(labels)
    if with_ids:
        positions = _tfds_id_positions(np.concatenate(ids), split, info.tfds_name)
    elif builder.info.disable_shuffling:
        positions = np.arange(len(labels))
    else:
        recorded = builder.info.splits[split].num_examples if split in builder.info.splits else 0
        if recorded and recorded != len(labels):
            raise ExampleOrderError(
                f"TFDS's {info.tfds_name} {split} split holds {len(labels)} records but its metadata "
                f"says {recorded}, so their keys are unknown"
            )
        positions = _tfds_key_positions(split, len(labels))
    return images[positions], labels[positions]


_CACHE: dict[tuple[str, Optional[str], str, str], tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets the arrays ``load_arrays`` kept in memory."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_arrays(config: DataConfig, split: str, order: str = "stored") -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split into memory.

    Results are cached in-process by (dataset, data_dir, split, order), since
    training and evaluation both load; the cached arrays are read-only.

    Args:
      config: the data configuration.
      split: ``"train"`` or ``"test"``.
      order: ``"stored"``, the order of the copy read (what training uses),
        or ``"original"``, the original release's order (see the module
        docstring); ``resolve_example_order`` picks one for ``"auto"``.

    Returns:
      ``(images uint8 [N, H, W, C], labels int64 [N])``.

    Raises:
      ValueError: unknown dataset, split or order, or malformed data.
      ExampleOrderError: ``order="original"`` and the copy cannot give it.
      DatasetNotFoundError: no source has the data (or downloading failed).
    """
    info = dataset_info(config.dataset)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {SPLITS}.")
    if order not in ("stored", "original"):
        raise ValueError(f"Unknown example order {order!r}; load_arrays takes 'stored' or 'original'.")
    data_dir = os.path.abspath(config.data_dir) if config.data_dir else None
    key = (info.name, data_dir, split, order)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]

    source = _resolve_source(config)
    if source.kind == "idx" and order == "original":
        return load_arrays(config, split)  # IDX files are the original release, in its order
    if source.kind == "idx":
        images, labels = _load_idx(source.location, split, info)
    else:
        builder = source.builder
        if source.kind == "tfds-download":
            try:
                builder.download_and_prepare()
            except Exception as e:  # any failure: network, disk, TFDS
                raise DatasetNotFoundError(
                    _not_found_message(
                        info,
                        config,
                        [f"TFDS prepared data: {os.fspath(builder.data_dir)}"],
                        f"and TFDS could not download and prepare "
                        f"{info.tfds_name!r} ({type(e).__name__}: {e})",
                    )
                ) from e
        if order == "original":
            images, labels = _load_tfds_original(builder, split, info)
        else:
            images, labels = _load_tfds(builder, split, info)

    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    if images.shape[1:] != info.image_shape or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{info.name} {split} from {source.describe()}: got images "
            f"{images.shape} and labels {labels.shape}, expected "
            f"[N, {', '.join(map(str, info.image_shape))}] and [N]."
        )
    # Read-only, so no caller can corrupt the cached copy.
    images.flags.writeable = False
    labels.flags.writeable = False
    with _CACHE_LOCK:
        _CACHE[key] = (images, labels)
    return images, labels


@dataclasses.dataclass(frozen=True)
class ExampleOrder:
    """The order an evaluation split was read in.

    Attributes:
      name: ``"original"`` (the original release's order) or ``"stored"``
        (the copy's own order, when it differs).
      detail: how that order was obtained, and why it is not the original
        one where it is not; one sentence for logs and results files.
    """

    name: str
    detail: str


def resolve_example_order(config: DataConfig, split: str, requested: str = "auto") -> ExampleOrder:
    """Decides the order of an evaluation split's examples (reads the split).

    Args:
      config: the data configuration.
      split: ``"train"`` or ``"test"``.
      requested: one of ``EXAMPLE_ORDERS``: ``"original"`` fails when the
        source cannot give it, ``"auto"`` then falls back to ``"stored"``
        and says why in ``detail``.

    Returns:
      The order to pass to ``load_arrays`` and ``make_eval_dataset``. IDX
      files are in the original order, whatever was requested.

    Raises:
      ValueError: unknown order (or dataset, split, malformed data).
      ExampleOrderError: ``requested="original"`` and the source cannot give it.
      DatasetNotFoundError: no source has the data.
    """
    if requested not in EXAMPLE_ORDERS:
        raise ValueError(f"Unknown example order {requested!r}; valid orders: {', '.join(EXAMPLE_ORDERS)}.")
    info = dataset_info(config.dataset)
    source = _resolve_source(config)
    if source.kind == "idx":
        return ExampleOrder(
            "original", f"the order of the IDX files in {source.location} (the original release's)"
        )
    stored = (
        f"the order of TFDS's copy of {info.tfds_name}, which TFDS shuffled when preparing it: "
        "not the original order RobustBench and PyTorch loaders use"
    )
    if requested == "stored":
        return ExampleOrder("stored", stored)
    try:
        load_arrays(config, split, "original")
    except ExampleOrderError as e:
        if requested == "original":
            raise ExampleOrderError(
                f"--example_order=original: {e}. Evaluate a copy in the original order (for "
                f"{info.name}: {'its IDX files in --data_dir' if info.has_idx else 'a TFDS copy with ids'}), "
                "or pass --example_order=stored to evaluate TFDS's order."
            ) from e
        return ExampleOrder("stored", f"{stored} (the original order is unavailable: {e})")
    builder = _tfds_builder(info, config.data_dir)
    how = (
        f"from TFDS's per-example ids ({split}_00000, ...)"
        if _tfds_has_ids(builder)
        else "recomputed from the keys TFDS's builder gave the examples"
    )
    return ExampleOrder("original", f"the original release's order, {how}")


def steps_per_epoch(config: DataConfig, global_batch_size: int) -> int:
    """Number of full global batches in one pass over the training set.

    Args:
      config: the data configuration.
      global_batch_size: examples per step over all replicas.

    Returns:
      ``N_train // global_batch_size`` (the remainder is dropped).
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}.")
    images, _ = load_arrays(config, "train")
    return len(images) // global_batch_size


# ---------------------------------------------------------------------------
# Pipelines.


def _to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 255.0


def _pad_crop_flip(images: tf.Tensor, rand: tf.Tensor) -> tf.Tensor:
    """Pads by ``_AUGMENT_PAD``, crops back and flips, one draw per image.

    Vectorised over the batch with gathers, so each image gets its own crop
    and flip without a per-example function call.

    Args:
      images: uint8 [B, H, W, C].
      rand: int32 [B, 3]: row offset, column offset in [0, 2 * pad], and flip
        (0 or 1) of each image.

    Returns:
      uint8 [B, H, W, C].
    """
    height, width = images.shape[1], images.shape[2]
    pad = _AUGMENT_PAD
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = rand[:, 0:1] + tf.range(height)[tf.newaxis, :]
    cols = tf.range(width)[tf.newaxis, :]
    # A flip reads the crop's columns right to left.
    cols = tf.where(rand[:, 2:3] > 0, width - 1 - cols, cols) + rand[:, 1:2]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def make_train_dataset(
    config: DataConfig,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """The infinite, deterministic and resumable training pipeline.

    Epoch ``e`` visits the examples in a permutation seeded by (seed, e),
    dropping the last ``N % global_batch_size`` of it. Step ``s`` is batch
    ``s % spe`` of epoch ``s // spe`` (``spe = steps_per_epoch``), so it does
    not depend on where the run was resumed. Augmentation draws come from
    stateless random ops seeded by (seed, epoch), indexed by the example's
    position in the epoch.

    Args:
      config: the data configuration.
      global_batch_size: examples per step over all replicas.
      seed: seed of the order and the augmentation.
      start_step: first global step to produce; earlier ones are skipped
        without reading or augmenting their images.
      input_context: from ``strategy.distribute_datasets_from_function``.
        Pipeline ``i`` of ``P`` takes the contiguous slice
        ``[i * G / P, (i + 1) * G / P)`` of each global batch and yields it as
        consecutive per-replica batches; None means one pipeline feeding one
        replica with whole global batches.

    Returns:
      A dataset of ``(images float32 [b, H, W, C] in [0, 1], labels int64
      [b])`` with ``b`` the per-replica batch size.

    Raises:
      ValueError: bad batch size or start step, or fewer training examples
        than one global batch.
    """
    info = dataset_info(config.dataset)
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}.")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    num_pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} must be divisible by "
            f"the number of replicas in sync ({replicas})."
        )
    if replicas % num_pipelines:
        raise ValueError(f"{replicas} replicas cannot be split evenly over {num_pipelines} input pipelines.")
    per_replica = global_batch_size // replicas
    per_pipeline = global_batch_size // num_pipelines
    replicas_per_pipeline = replicas // num_pipelines

    images, labels = load_arrays(config, "train")
    num_examples = len(images)
    spe = num_examples // global_batch_size
    if spe == 0:
        raise ValueError(
            f"{info.name} has {num_examples} training examples, fewer than one "
            f"global batch of {global_batch_size}."
        )
    augment = info.default_augment if config.augment is None else config.augment
    start_epoch, skip = divmod(start_step, spe)
    lo = pipeline_id * per_pipeline

    # Pinned to the host: tf.data runs there, and an accelerator copy of the
    # whole training set would be wasted memory plus a copy per batch.
    with tf.device("/cpu:0"):
        # Converted once and captured by reference by the map function below.
        images_t = tf.constant(images)
        labels_t = tf.constant(labels)
        seed_t = tf.constant(seed, tf.int64)

        def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
            # Second seed words 3e, 3e + 1, 3e + 2 keep the order, crop and
            # flip streams apart.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_examples, dtype=tf.int64), seed=tf.stack([seed_t, 3 * epoch])
            )
            # One draw per position in the epoch, independent of the batch
            # size, pipelines and resume point.
            offsets = tf.random.stateless_uniform(
                [num_examples, 2],
                seed=tf.stack([seed_t, 3 * epoch + 1]),
                minval=0,
                maxval=2 * _AUGMENT_PAD + 1,
                dtype=tf.int32,
            )
            flips = tf.random.stateless_uniform(
                [num_examples, 1], seed=tf.stack([seed_t, 3 * epoch + 2]), minval=0, maxval=2, dtype=tf.int32
            )
            rand = tf.concat([offsets, flips], axis=1)
            order = tf.reshape(order[: spe * global_batch_size], [spe, -1])
            rand = tf.reshape(rand[: spe * global_batch_size], [spe, -1, 3])
            # This pipeline's contiguous slice of every global batch.
            order = order[:, lo : lo + per_pipeline]
            rand = rand[:, lo : lo + per_pipeline]
            # Resuming mid-epoch: drop the index rows already consumed, so
            # skipped examples are never gathered or augmented.
            first = tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), 0)
            return tf.data.Dataset.from_tensor_slices((order[first:], rand[first:]))

        def load_batch(order: tf.Tensor, rand: tf.Tensor):
            x = tf.gather(images_t, order)
            if augment:
                x = _pad_crop_flip(x, rand)
            return _to_float(x), tf.gather(labels_t, order)

        ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch_batches)
        ds = ds.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if replicas_per_pipeline > 1:
            # One pipeline slice per step feeds several replicas in turn.
            shape = [replicas_per_pipeline, per_replica]
            ds = ds.flat_map(
                lambda x, y: tf.data.Dataset.from_tensor_slices(
                    (
                        tf.reshape(x, shape + list(info.image_shape)),
                        tf.reshape(y, shape),
                    )
                )
            )
        ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return _deterministic(ds)


def make_eval_dataset(
    config: DataConfig,
    batch_size: int,
    num_examples: Optional[int] = None,
    split: str = "test",
    order: str = "stored",
) -> tf.data.Dataset:
    """The first examples of a split, in order, unaugmented.

    Args:
      config: the data configuration.
      batch_size: examples per batch; the last batch may be smaller.
      num_examples: how many examples from the start of the split; None for
        all of them.
      split: ``"train"`` or ``"test"``.
      order: ``"stored"`` or ``"original"`` (``load_arrays``); the name of
        a ``resolve_example_order`` result.

    Returns:
      A finite dataset of ``(images float32 [b, H, W, C] in [0, 1], labels
      int64 [b])``.

    Raises:
      ValueError: bad batch size or num_examples, or an empty split.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1 or None, got {num_examples}.")
    images, labels = load_arrays(config, split, order)
    if len(images) == 0:
        raise ValueError(f"The {split} split of {config.dataset} is empty.")
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    with tf.device("/cpu:0"):
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.batch(batch_size, drop_remainder=False)
        ds = ds.map(lambda x, y: (_to_float(x), y))
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return _deterministic(ds)
