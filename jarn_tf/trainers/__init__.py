"""Training modes: one module per mode, looked up by name.

A mode is a ``Trainer`` subclass (see ``base.py`` for the contract the loop
in ``train_lib`` relies on) plus its config section in ``jarn_tf.config``
(``MODE_SECTIONS``). ``TRAINERS`` maps ``--mode`` to the trainer class;
adding a mode adds one entry here and one there.
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

from jarn_tf.config import ExperimentConfig
from jarn_tf.data import DatasetInfo
from jarn_tf.trainers.base import Trainer
from jarn_tf.trainers.classifier import ClassifierTrainer
from jarn_tf.trainers.gan import GANTrainer

TRAINERS: Dict[str, type] = {"classifier": ClassifierTrainer, "gan": GANTrainer}

from jarn_tf.trainers.advgan import AdvGANFinetuneTrainer, AdvGANPGDATTrainer, AdvGANTrainer  # noqa: E402

TRAINERS.update(
    {
        "advgan": AdvGANTrainer,
        "robgan": AdvGANTrainer,
        "advgan_finetune": AdvGANFinetuneTrainer,
        "advgan_pgd_at": AdvGANPGDATTrainer,
    }
)


def build_trainer(config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy) -> Trainer:
    """Builds the trainer of ``config.mode`` inside the strategy's scope.

    Args:
      config: the resolved configuration.
      info: the dataset's static description.
      strategy: the strategy the networks are replicated by.

    Returns:
      The trainer, with its networks, optimizers and metrics built.

    Raises:
      ValueError: for a mode without a trainer.
    """
    if config.mode not in TRAINERS:
        raise ValueError(f"--mode={config.mode!r} is not available; choose one of {sorted(TRAINERS)}.")
    with strategy.scope():
        return TRAINERS[config.mode](config, info, strategy)
