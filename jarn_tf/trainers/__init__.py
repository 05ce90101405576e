"""Training modes: one module per family of modes, looked up by name.

A mode is a ``Trainer`` subclass (see ``base.py`` for the contract the loop
in ``train_lib`` relies on), registered with ``@register_trainer("<mode>")``
where it is defined, plus its config section in ``jarn_tf.config``,
registered with ``@register_mode("<mode>", ...)``. Importing this package
imports every trainer module, which registers them in ``TRAINERS``.
"""

from __future__ import annotations

import tensorflow as tf

from jarn_tf.config import ExperimentConfig
from jarn_tf.data import DatasetInfo
from jarn_tf.trainers import advgan, classifier, gan  # noqa: F401 (registers their trainers)
from jarn_tf.trainers.base import TRAINERS, Trainer, register_trainer  # noqa: F401


def trainer_class(mode: str) -> type:
    """The Trainer subclass of ``mode``.

    Raises:
      ValueError: for a mode without a trainer, listing those there are.
    """
    if mode not in TRAINERS:
        raise ValueError(f"--mode={mode!r} is not available; choose one of {sorted(TRAINERS)}.")
    return TRAINERS[mode]


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
    cls = trainer_class(config.mode)
    with strategy.scope():
        return cls(config, info, strategy)
