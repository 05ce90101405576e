"""The contract between a training mode and the loop (``jarn_tf.core.loop``), and the registry of modes.

The loop never names a network. It asks the trainer for:

  * ``variant(step)``: the static flavour of the step run at ``step`` (e.g.
    JARN on or off, discriminator update or not). The loop compiles one
    function per flavour, so a schedule needs no control flow around an
    optimizer.
  * ``replica_step(batch, variant)``: one step on this replica's batch. It
    updates the networks and the metrics and returns a dict of named scalar
    losses, each already scaled by 1/global batch size (so their sum over
    replicas is the global loss). The loop checks every one for NaN/Inf.
  * ``metrics`` (a ``MetricSet``) and ``progress_metrics``: what is logged
    to TensorBoard and what the progress bar shows.
  * ``learning_rates()``: scalars for TensorBoard.
  * ``summary_images(images, labels)``: images for TensorBoard.
  * ``evaluate(num_examples)``: host-side numbers for ``eval/`` (clean
    accuracy for classifiers; image-quality numbers for generators).
  * ``export(export_dir, metadata, evaluation, num_examples)``: what the
    mode exports, with which metadata.
  * ``checkpoint_items()``: every network, optimizer and the step counter.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Hashable, Mapping, Tuple

import keras
import tensorflow as tf

from jarn_tf.jarn import losses, models
from jarn_tf.config import ExperimentConfig
from jarn_tf.core.data import DatasetInfo
from jarn_tf.core.summaries import MetricSet


# The registry of trainers, filled by ``register_trainer`` where each trainer is defined:
# --mode -> the Trainer subclass that runs it (its config section is registered with
# ``config.register_mode`` under the same names).
TRAINERS: Dict[str, type] = {}


def register_trainer(*modes: str):
    """Class decorator: the trainer of ``modes`` (a mode and its aliases).

    Raises:
      ValueError: a mode registered twice.
    """

    def register(cls: type) -> type:
        for mode in modes:
            if mode in TRAINERS:
                raise ValueError(f"mode {mode!r} has two trainers ({TRAINERS[mode].__name__}, {cls.__name__})")
            TRAINERS[mode] = cls
        return cls

    return register


# The modules that define the trainers (each registers its own with ``register_trainer``):
# imported on the first look-up, so that this contract imports no mode and no mode imports
# the loop.
MODE_MODULES = ("jarn_tf.jarn.trainer", "jarn_tf.gan.trainer", "jarn_tf.robgan.trainer")


def register_all_modes() -> Dict[str, type]:
    """Imports every module of ``MODE_MODULES`` (registering their trainers); returns ``TRAINERS``."""
    for name in MODE_MODULES:
        importlib.import_module(name)
    return TRAINERS


def trainer_class(mode: str) -> type:
    """The Trainer subclass of ``mode``.

    Raises:
      ValueError: for a mode without a trainer, listing those there are.
    """
    register_all_modes()
    if mode not in TRAINERS:
        raise ValueError(f"--mode={mode!r} is not available; choose one of {sorted(TRAINERS)}.")
    return TRAINERS[mode]


def build_trainer(config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy) -> "Trainer":
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


def learning_rate_schedule(
    base: float, boundaries: Tuple[float, ...], decay: float, train_steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Piecewise-constant learning rate: ``base * decay^i`` after boundary i.

    Args:
      base: initial learning rate.
      boundaries: fractions of ``train_steps`` (paper: 0.5 and 0.75).
      decay: multiplier at each boundary.
      train_steps: total steps of the run.

    Returns:
      A schedule mapping the global step to the learning rate.
    """
    steps = [max(1, int(round(b * train_steps))) for b in boundaries]
    values = [base * decay**i for i in range(len(steps) + 1)]
    if not steps:
        return keras.optimizers.schedules.PiecewiseConstantDecay([train_steps + 1], [base, base])
    return keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)


def classifier_export_metadata(
    metadata: Mapping[str, Any],
    evaluation: Mapping[str, float],
    num_examples: int,
    eps: float,
    runtime: Any,
) -> Dict[str, Any]:
    """A classifier export's metadata: ``metadata`` plus the evaluation's clean and PGD accuracy.

    Args:
      metadata: the loop's facts of the run.
      evaluation: ``evaluate``'s result (``eval/clean_accuracy``, ``eval/pgd<k>_accuracy``).
      num_examples: the test images ``evaluation`` was measured on.
      eps: the PGD radius of the evaluation (the mode's training eps).
      runtime: the run's ``RuntimeConfig`` (PGD steps and attacked examples).
    """
    out = dict(metadata)
    if "eval/clean_accuracy" in evaluation:
        out["clean_accuracy"] = {
            "value": evaluation["eval/clean_accuracy"],
            "num_test_examples": num_examples,
        }
    pgd = [k for k in evaluation if k.startswith("eval/pgd")]
    if pgd:
        out["pgd_accuracy"] = {
            "value": evaluation[pgd[0]],
            "num_test_examples": min(num_examples, runtime.eval_pgd_examples),
            "eps": eps,
            "steps": runtime.eval_pgd_steps,
            "step_size": eps / 4,
        }
    return out


class Trainer:
    """Networks, optimizers, metrics and replica step of one training mode.

    Built inside ``strategy.scope()`` (``build_trainer`` does so).
    Subclasses fill ``self.networks``, ``self.optimizers``, set
    ``metric_names`` and ``progress_metrics``, and implement
    ``replica_step``, ``evaluate`` and ``export``.
    """

    metric_names: Tuple[str, ...] = ()
    # The metrics the progress bar shows (a subset of metric_names).
    progress_metrics: Tuple[str, ...] = ()

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        self.config = config
        self.info = info
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        self.global_batch_size = config.optimizer.batch_size
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.networks: Dict[str, keras.Model] = {}
        self.optimizers: Dict[str, keras.optimizers.Optimizer] = {}
        self.metrics = MetricSet(self.metric_names)
        # float16 needs loss scaling; bfloat16 has float32's range and does not.
        self.loss_scaling = keras.mixed_precision.dtype_policy().name == "mixed_float16"

    # -- what the loop calls ---------------------------------------------------
    @classmethod
    def check_image_shape(cls, config: ExperimentConfig, image_shape: Tuple[int, int, int]) -> None:
        """Refuses networks that cannot take the dataset's images, before anything is built.

        The default checks the classifier's architecture (``--model`` and its
        fields); modes that build other networks override it.

        Raises:
          ValueError: naming the flag and the image shape.
        """
        models.validate_model_config(config.model, image_shape)

    def variant(self, step: int) -> Hashable:
        """The static flavour of the step run at ``step``."""
        del step
        return ()

    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant: Hashable) -> Dict[str, tf.Tensor]:
        """Runs one step on this replica's batch.

        Returns:
          Named scalar losses of this replica, scaled by 1/global batch size.
        """
        raise NotImplementedError

    def checkpoint_items(self) -> Dict[str, object]:
        """The step counter, every network and every optimizer (``<name>_optimizer``)."""
        items: Dict[str, object] = {"step": self.step}
        items.update(self.networks)
        items.update({f"{name}_optimizer": opt for name, opt in self.optimizers.items()})
        return items

    def learning_rates(self) -> Dict[str, float]:
        """Current learning rates, as ``train/...`` scalars."""
        return {}

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Images for TensorBoard, computed on a fixed batch of test images."""
        del labels
        return {"images/x": images}

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        """Host-side evaluation on ``num_examples`` test examples (``eval/...`` scalars)."""
        del num_examples
        return {}

    def export(
        self, export_dir: str, metadata: Mapping[str, Any], evaluation: Mapping[str, float], num_examples: int
    ) -> None:
        """Writes what this mode exports to ``export_dir``.

        Args:
          export_dir: the destination directory.
          metadata: facts of the run (dataset, step, mode, config) to store.
          evaluation: the ``evaluate`` result at this step (may be empty).
          num_examples: the test examples ``evaluation`` was measured on.
        """
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------
    def _seed(self, purpose: int) -> tf.Tensor:
        """A stateless seed unique to (run seed, purpose, step, replica)."""
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        seed = tf.constant([self.config.seed, purpose], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(self.step, tf.int64))
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64))

    def _weight_decay(self, model: keras.Model) -> tf.Tensor:
        # Every replica adds it and the optimizer sums replica gradients, so
        # each replica contributes 1/R of it.
        wd = self.config.optimizer.weight_decay
        if wd == 0:
            return tf.constant(0.0)
        return wd * losses.l2_weight_decay(models.kernel_variables(model)) / self.num_replicas

    def _make_sgd(self, schedule, name: str) -> keras.optimizers.Optimizer:
        # The schedule follows the global step, not the optimizer's own
        # iteration count: a network may update only every k steps.
        return self._maybe_scaled(
            keras.optimizers.SGD(
                learning_rate=lambda: schedule(self.step),
                momentum=self.config.optimizer.momentum,
                name=f"{name}_sgd",
            )
        )

    def _maybe_scaled(self, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        """Wraps the optimizer in dynamic loss scaling under mixed_float16."""
        if self.loss_scaling:
            return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_scaled")
        return optimizer

    def _scaled(self, name: str, loss: tf.Tensor) -> tf.Tensor:
        """``loss`` times network ``name``'s loss scale under mixed_float16, else ``loss``.

        Call it inside the tape. The LossScaleOptimizer divides the gradients
        by the scale again in ``apply_gradients`` (and skips the update when
        they overflow), so an unscaled loss would shrink every update by the
        scale (2^15 at first).
        """
        if self.loss_scaling:
            return self.optimizers[name].scale_loss(loss)
        return loss

    def _build_optimizers(self) -> None:
        """Creates every optimizer's slots, which must exist before a restore."""
        for name, opt in self.optimizers.items():
            opt.build(self.networks[name].trainable_variables)
