"""Frozen configuration dataclasses shared by the library modules.

Only the entry points (``jarn_tf/train.py``, ...) read absl flags; they build
these dataclasses and pass them down. Everything here is plain data, so a
config can be written to ``model_dir/config.json`` and compared on resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Tuple


# ---------------------------------------------------------------------------
# Name tables: the one place each list of choices is spelled out.

DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10")
MODELS = ("wrn", "mnist_cnn")
JACOBIAN_KINDS = ("xent", "prob")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# Strategies that configure the runtime, so they are built before any other op.
CLUSTER_STRATEGIES = ("multi_worker", "tpu")
DISC_OPTIMIZERS = ("sgd", "adam")

# The paper's settings per dataset (section 4), used for flags left unset.
PAPER_DEFAULTS = {
    "mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.3
    ),
    "fashion_mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.1
    ),
    "svhn": dict(
        model="wrn", disc_layers=5, disc_base_channels=16, disc_update_every=20, lambda_adv=5.0, eps=8 / 255
    ),
    "cifar10": dict(
        model="wrn", disc_layers=5, disc_base_channels=32, disc_update_every=20, lambda_adv=1.0, eps=8 / 255
    ),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is fed.

    Attributes:
      dataset: one of ``jarn_tf.data.DATASETS`` (mnist, fashion_mnist, svhn,
        cifar10).
      data_dir: TFDS data directory, or a directory holding MNIST-format IDX
        files (``train-images-idx3-ubyte[.gz]`` ...). None: TFDS's default.
      download: let TFDS download and prepare the data when it has no copy.
      augment: pad-crop-flip augmentation of training images. None means the
        dataset's default (on for cifar10, off otherwise).
    """

    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = True
    augment: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the classifier, adaptor and discriminator.

    Attributes:
      model: ``wrn`` (Madry et al.'s Wide ResNet) or ``mnist_cnn``.
      wrn_depth: total depth of the Wide ResNet; (depth - 4) / 6 residual
        units per stage. 34 gives the paper's 5 units per stage.
      wrn_width: widening factor k; stage widths are 16k, 32k, 64k.
      cnn_channels: output channels of the MNIST CNN's conv layers.
      disc_layers: number of stride-2 conv layers in the discriminator.
      disc_base_channels: channels of its first layer; layer i has base * 2^i.
      sync_batchnorm: batch statistics over all replicas instead of per
        replica (slower; makes multi-replica training equal to one device).
    """

    model: str = "wrn"
    wrn_depth: int = 34
    wrn_width: int = 10
    cnn_channels: Tuple[int, ...] = (64, 128, 256)
    disc_layers: int = 5
    disc_base_channels: int = 32
    sync_batchnorm: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the classifier (and, with JARN, adaptor and discriminator) train.

    All image-space quantities (eps, step sizes, noise) are in [0, 1] units.

    Attributes:
      mode: training mode; ``classifier`` covers standard training, uniform
        noise, adversarial training, double backprop and JARN.
      train_steps: total number of classifier steps.
      batch_size: global batch size (split over replicas).
      seed: seed of data order, augmentation, attacks and initialisation.
      learning_rate: base learning rate of all networks' SGD optimizers.
      lr_boundaries: fractions of ``train_steps`` where the learning rate is
        multiplied by ``lr_decay``.
      lr_decay: the multiplier at each boundary.
      momentum: SGD momentum.
      weight_decay: coefficient of sum(w^2)/2 over kernels, every network.
      disc_optimizer: ``sgd`` (same schedule as the classifier) or ``adam``.
      disc_learning_rate: Adam learning rate of the discriminator.
      jarn: enable the JARN regulariser.
      jarn_start: fraction of training after which JARN is on (0 = always).
      lambda_adv: weight of the adversarial term in the classifier's loss.
      adaptor_gamma: weight of the adversarial term in the adaptor's loss.
      disc_update_every: the discriminator is updated when step % k == 0.
      jacobian: ``xent`` (d cross-entropy / dx, the paper) or ``prob``
        (d softmax_y / dx, the authors' release).
      noise_eps: half-width of the uniform input noise.
      uniform_noise: uniform-noise augmentation baseline (whole run).
      at_steps: PGD steps of adversarial training; 0 = off, 1 = FGSM-AT.
      eps: L-inf radius of adversarial training.
      step_size: PGD step size.
      at_random_start: start PGD from a uniform point in the eps-ball.
      double_backprop: weight of the input-gradient Frobenius penalty; 0 = off.
      steps_per_loop: steps run inside one compiled loop between host work.
      checkpoint_every: steps between checkpoints.
      summary_every: steps between scalar summaries.
      image_summary_every: steps between image summaries (x, J, adapted J).
      export_every: steps between exports; 0 = only at the end.
      keep_checkpoints: how many checkpoints to keep.
      strategy: ``default``, ``one_device``, ``mirrored`` (local GPUs),
        ``multi_worker`` (the workers of ``TF_CONFIG``) or ``tpu``.
      num_gpus: devices for ``mirrored`` (0 = all visible).
      jit_compile: compile the replica step with XLA.
      mixed_precision: ``none``; ``auto`` (mixed_float16 on GPU,
        mixed_bfloat16 otherwise); ``float16``; ``bfloat16``.
      deterministic: TensorFlow op determinism; with the stateless data
        pipeline and seeds, two runs give bit-identical weights on CPU.
    """

    mode: str = "classifier"
    train_steps: int = 160000
    batch_size: int = 64
    seed: int = 0
    learning_rate: float = 0.1
    lr_boundaries: Tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    disc_optimizer: str = "sgd"
    disc_learning_rate: float = 1e-3
    jarn: bool = False
    jarn_start: float = 0.75
    lambda_adv: float = 1.0
    adaptor_gamma: float = 1.0
    disc_update_every: int = 20
    jacobian: str = "xent"
    noise_eps: float = 8.0 / 255.0
    uniform_noise: bool = False
    at_steps: int = 0
    eps: float = 8.0 / 255.0
    step_size: float = 2.0 / 255.0
    at_random_start: bool = True
    double_backprop: float = 0.0
    steps_per_loop: int = 50
    checkpoint_every: int = 1000
    summary_every: int = 100
    image_summary_every: int = 1000
    export_every: int = 0
    keep_checkpoints: int = 3
    strategy: str = "default"
    num_gpus: int = 0
    deterministic: bool = False
    jit_compile: bool = False
    mixed_precision: str = "none"

    @property
    def jarn_start_step(self) -> int:
        """First step at which the JARN regulariser is active."""
        return int(round(self.jarn_start * self.train_steps)) if self.jarn else self.train_steps


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a training run."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        def build(klass, values: dict):
            fields = {f.name: f for f in dataclasses.fields(klass)}
            kwargs = {}
            for key, value in values.items():
                if key not in fields:
                    raise ValueError(f"Unknown {klass.__name__} field {key!r}.")
                if isinstance(value, list):
                    value = tuple(value)
                kwargs[key] = value
            return klass(**kwargs)

        return cls(
            data=build(DataConfig, d.get("data", {})),
            model=build(ModelConfig, d.get("model", {})),
            train=build(TrainConfig, d.get("train", {})),
        )


# Fields that may differ between a run and its resumption without changing
# what is being trained (bookkeeping and where the data lives).
RESUMABLE_FIELDS = {
    ("data", "data_dir"),
    ("data", "download"),
    ("train", "steps_per_loop"),
    ("train", "checkpoint_every"),
    ("train", "summary_every"),
    ("train", "image_summary_every"),
    ("train", "export_every"),
    ("train", "keep_checkpoints"),
    ("train", "strategy"),
    ("train", "num_gpus"),
    ("train", "deterministic"),
    ("train", "jit_compile"),
}



def config_differences(old: dict, new: dict) -> list:
    """Lists ``section.field: old -> new`` for fields that must match on resume.

    Args:
      old: the dict stored in ``model_dir/config.json``.
      new: the dict of the configuration asked for now.

    Returns:
      Human-readable differences, empty when the run may resume.
    """
    diffs = []
    for section in ("data", "model", "train"):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) in RESUMABLE_FIELDS:
                continue
            va, vb = a.get(key), b.get(key)
            if isinstance(va, list):
                va = tuple(va)
            if isinstance(vb, list):
                vb = tuple(vb)
            if va != vb:
                diffs.append(f"{section}.{key}: {va!r} -> {vb!r}")
    return diffs


def write_config(config: ExperimentConfig, path: str, extra: Optional[dict] = None) -> None:
    """Writes the resolved configuration as JSON, atomically."""
    payload: dict[str, Any] = config.to_dict()
    if extra:
        payload.update(extra)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_config(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
