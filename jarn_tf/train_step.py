"""Training steps: one replica step per mode, run by ``train_lib``'s loop.

A mode is a ``Trainer``: its networks, one optimizer per network, the
metrics it logs, and ``replica_step(batch, variant)``. ``variant(step)`` tells
the loop which static flavour of the step runs at a given step (JARN on or
off, discriminator update or not), so the loop compiles one function per
flavour and the schedule never needs control flow around an optimizer.

``ClassifierTrainer`` implements standard training, uniform noise,
adversarial training (FGSM / PGD), double backpropagation and JARN
(Algorithm 1 of Chan et al., ICLR 2020), alone or combined.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Hashable, List, Tuple

import keras
import tensorflow as tf

from jarn_tf import attacks, losses, models
from jarn_tf.config import ExperimentConfig
from jarn_tf.data import DatasetInfo
from jarn_tf.summaries import MetricSet

# Purposes folded into the per-step random seed, so that noise and attack
# starts are independent streams.
_NOISE_SEED = 1
_ATTACK_SEED = 2


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


class Trainer:
    """Networks, optimizers, metrics and replica step of one training mode.

    Build inside ``strategy.scope()``. Subclasses set ``self.networks``,
    ``self.optimizers`` and ``self.metrics`` and implement ``replica_step``.
    """

    metric_names: Tuple[str, ...] = ()

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        self.config = config
        self.info = info
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        self.global_batch_size = config.train.batch_size
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.networks: Dict[str, keras.Model] = {}
        self.optimizers: Dict[str, keras.optimizers.Optimizer] = {}
        self.metrics = MetricSet(self.metric_names)
        # float16 needs loss scaling; bfloat16 has float32's range and does not.
        self.loss_scaling = keras.mixed_precision.dtype_policy().name == "mixed_float16"

    # -- schedule -------------------------------------------------------------
    def variant(self, step: int) -> Hashable:
        """The static flavour of the step run at ``step``."""
        return ()

    # -- state ----------------------------------------------------------------
    def checkpoint_items(self) -> Dict[str, object]:
        items = {"step": self.step}
        items.update(self.networks)
        items.update({f"{name}_optimizer": opt for name, opt in self.optimizers.items()})
        return items

    def export_model(self) -> keras.Model:
        """The classifier to export for evaluation."""
        return self.networks["classifier"]

    def learning_rates(self) -> Dict[str, float]:
        return {}

    # -- helpers for subclasses -----------------------------------------------
    def _seed(self, purpose: int) -> tf.Tensor:
        """A stateless seed unique to (run seed, purpose, step, replica)."""
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        seed = tf.constant([self.config.train.seed, purpose], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(self.step, tf.int64))
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64))

    def _weight_decay(self, model: keras.Model) -> tf.Tensor:
        # Every replica adds it and the optimizer sums replica gradients, so
        # each replica contributes 1/R of it.
        wd = self.config.train.weight_decay
        if wd == 0:
            return tf.constant(0.0)
        return wd * losses.l2_weight_decay(models.kernel_variables(model)) / self.num_replicas

    def _make_sgd(self, schedule, name: str) -> keras.optimizers.Optimizer:
        # The schedule follows the global step, not the optimizer's own
        # iteration count: the discriminator updates only every k steps.
        return self._maybe_scaled(
            keras.optimizers.SGD(
                learning_rate=lambda: schedule(self.step),
                momentum=self.config.train.momentum,
                name=f"{name}_sgd",
            )
        )

    def _maybe_scaled(self, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        """Wraps the optimizer in dynamic loss scaling under mixed_float16."""
        if self.loss_scaling:
            return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_scaled")
        return optimizer

    def _gradients(self, tape: tf.GradientTape, name: str, loss: tf.Tensor) -> list:
        """Gradients of ``loss`` for network ``name``, loss-scaled if needed.

        The LossScaleOptimizer unscales them in ``apply_gradients`` (and
        skips the update when they overflow).
        """
        if self.loss_scaling:
            loss = self.optimizers[name].scale_loss(loss)
        return tape.gradient(loss, self.networks[name].trainable_variables)

    def _inner_scale(self) -> tf.Tensor:
        """Scale for the inner (input-gradient) tape under float16.

        J would underflow in float16 like any gradient; the classifier
        optimizer's current loss scale keeps it representable, and J is
        divided by it again (exactly: the scale is a power of two).
        """
        if self.loss_scaling:
            return tf.cast(self.optimizers["classifier"].scale_loss(tf.constant(1.0)), tf.float32)
        return tf.constant(1.0)

    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant: Hashable) -> tf.Tensor:
        """Runs one step on this replica's batch; returns its scaled loss."""
        raise NotImplementedError

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"images/x": images}


@dataclasses.dataclass(frozen=True)
class ClassifierVariant:
    """Static flavour of the classifier step."""

    jarn: bool = False
    update_discriminator: bool = False


class ClassifierTrainer(Trainer):
    """Standard, noise, FGSM/PGD-AT, double backprop and JARN training."""

    metric_names = (
        "train/xent",
        "train/accuracy",
        "train/loss",
        "train/double_backprop_penalty",
        "train/adv_loss",
        "train/disc_xent",
        "train/disc_accuracy",
        "train/disc_loss",
        "train/adaptor_loss",
    )

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        t, m = config.train, config.model
        self.schedule = learning_rate_schedule(t.learning_rate, t.lr_boundaries, t.lr_decay, t.train_steps)
        self.networks["classifier"] = models.build_classifier(m, info.image_shape, info.num_classes)
        self.optimizers["classifier"] = self._make_sgd(self.schedule, "classifier")
        if t.jarn:
            self.networks["adaptor"] = models.build_adaptor(info.image_shape)
            self.networks["discriminator"] = models.build_discriminator(m, info.image_shape)
            self.optimizers["adaptor"] = self._make_sgd(self.schedule, "adaptor")
            if t.disc_optimizer == "adam":
                self.optimizers["discriminator"] = self._maybe_scaled(
                    keras.optimizers.Adam(learning_rate=t.disc_learning_rate, name="discriminator_adam")
                )
            else:
                self.optimizers["discriminator"] = self._make_sgd(self.schedule, "discriminator")
        for name, opt in self.optimizers.items():
            # Optimizer slots must exist before a checkpoint is restored.
            opt.build(self.networks[name].trainable_variables)

    @property
    def classifier(self) -> keras.Model:
        return self.networks["classifier"]

    def variant(self, step: int) -> ClassifierVariant:
        t = self.config.train
        jarn = t.jarn and step >= t.jarn_start_step
        return ClassifierVariant(jarn=jarn, update_discriminator=jarn and step % t.disc_update_every == 0)

    def learning_rates(self) -> Dict[str, float]:
        lr = float(self.schedule(self.step))
        rates = {"train/learning_rate": lr}
        if "discriminator" in self.optimizers and self.config.train.disc_optimizer == "adam":
            rates["train/disc_learning_rate"] = self.config.train.disc_learning_rate
        return rates

    # -- pieces of the step ---------------------------------------------------
    def _inference(self, x: tf.Tensor) -> tf.Tensor:
        return self.classifier(x, training=False)

    def _inputs(self, images: tf.Tensor, labels: tf.Tensor, jarn: bool) -> tf.Tensor:
        """Training inputs: uniform noise and/or adversarial examples."""
        t = self.config.train
        x = images
        # JARN adds uniform noise (Algorithm 1, line 4) unless adversarial
        # training already perturbs the inputs around the image.
        if t.noise_eps > 0 and (t.uniform_noise or (jarn and t.at_steps == 0)):
            noise = tf.random.stateless_uniform(
                tf.shape(x), seed=self._seed(_NOISE_SEED), minval=-t.noise_eps, maxval=t.noise_eps
            )
            x = tf.clip_by_value(x + noise, 0.0, 1.0)
        if t.at_steps > 0:
            x = attacks.pgd(
                self._inference,
                x,
                labels,
                eps=t.eps,
                step_size=t.step_size,
                num_steps=t.at_steps,
                random_start=t.at_random_start,
                seed=self._seed(_ATTACK_SEED),
            )
        return x

    def input_jacobian(
        self, x: tf.Tensor, labels: tf.Tensor, kind: str, training: bool
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Logits and the per-example input Jacobian J at ``x``.

        Called inside an outer tape, the returned J stays differentiable
        with respect to the classifier's weights (double backpropagation).

        Args:
          x: float32 [B, H, W, C].
          labels: int [B].
          kind: ``xent`` or ``prob`` (see ``losses.jacobian_objective``).
          training: batch-norm mode of the forward pass.

        Returns:
          (logits [B, K], J [B, H, W, C]).
        """
        scale = self._inner_scale()
        with tf.GradientTape() as inner:
            inner.watch(x)
            logits = self.classifier(x, training=training)
            objective = tf.reduce_sum(losses.jacobian_objective(labels, logits, kind))
            objective = objective * scale
        return logits, inner.gradient(objective, x) / scale

    def _discriminate(self, jacobian: tf.Tensor, images: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Adapted Jacobians and discriminator logits on (J', images)."""
        adapted = self.networks["adaptor"](losses.standardize_per_example(jacobian), training=True)
        adapted = tf.cast(adapted, tf.float32)  # compute dtype under mixed precision
        real = losses.standardize_per_example(images)
        # One batch of fakes then reals, as the reference: batch norm sees both.
        logits = self.networks["discriminator"](tf.concat([adapted, real], axis=0), training=True)
        fake_logits, real_logits = tf.split(logits, 2, axis=0)
        return adapted, fake_logits, real_logits

    # -- the step -------------------------------------------------------------
    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant: ClassifierVariant) -> tf.Tensor:
        t = self.config.train
        images, labels = batch
        x = self._inputs(images, labels, variant.jarn)
        batch_size = self.global_batch_size
        need_jacobian = variant.jarn or t.double_backprop > 0
        kind = t.jacobian if variant.jarn else "xent"
        values: Dict[str, tf.Tensor] = {}

        with tf.GradientTape(persistent=True) as tape:
            if need_jacobian:
                logits, jacobian = self.input_jacobian(x, labels, kind, training=True)
            else:
                logits = self.classifier(x, training=True)
            xent = losses.cross_entropy(labels, logits)
            classifier_loss = losses.scale_loss(xent, batch_size) + self._weight_decay(self.classifier)
            if t.double_backprop > 0:
                penalty = losses.input_gradient_penalty(jacobian)
                classifier_loss += t.double_backprop * losses.scale_loss(penalty, batch_size)
                values["train/double_backprop_penalty"] = penalty
            if variant.jarn:
                _, fake_logits, real_logits = self._discriminate(jacobian, images)
                adv = losses.jarn_adversarial_loss(fake_logits, real_logits)
                adv_loss = losses.scale_loss(adv, batch_size)
                classifier_loss += t.lambda_adv * adv_loss
                adaptor_loss = t.adaptor_gamma * adv_loss + self._weight_decay(self.networks["adaptor"])
                disc_loss = -adv_loss + self._weight_decay(self.networks["discriminator"])
                disc_xent = losses.discriminator_cross_entropy(fake_logits, real_logits)

        # All gradients come from the same forward pass; then all updates.
        updates: List[Tuple[str, tf.Tensor]] = [("classifier", classifier_loss)]
        if variant.jarn:
            updates.append(("adaptor", adaptor_loss))
            if variant.update_discriminator:
                updates.append(("discriminator", disc_loss))
        grads = {name: tape.gradient(loss, self.networks[name].trainable_variables) for name, loss in updates}
        del tape
        for name, g in grads.items():
            self.optimizers[name].apply_gradients(zip(g, self.networks[name].trainable_variables))

        correct = tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.cast(labels, tf.int64)), tf.float32
        )
        values.update({"train/xent": xent, "train/accuracy": correct})
        # Per-replica totals are already scaled by 1/global batch; the metric
        # mean over replicas therefore times R gives the global value.
        values["train/loss"] = tf.fill([1], classifier_loss * self.num_replicas)
        if variant.jarn:
            values["train/adv_loss"] = tf.fill([1], t.lambda_adv * adv_loss * self.num_replicas)
            values["train/disc_xent"] = disc_xent
            values["train/disc_accuracy"] = losses.discriminator_accuracy(fake_logits, real_logits)
            values["train/disc_loss"] = tf.fill([1], disc_loss * self.num_replicas)
            values["train/adaptor_loss"] = tf.fill([1], adaptor_loss * self.num_replicas)
        self.metrics.update(values)
        return classifier_loss

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """x, its Jacobian J and (with JARN) the adapted Jacobian J'."""
        kind = self.config.train.jacobian
        _, jacobian = self.input_jacobian(images, labels, kind, training=False)
        out = {"images/x": images, "images/jacobian": losses.standardize_per_example(jacobian)}
        if "adaptor" in self.networks:
            out["images/adapted_jacobian"] = self.networks["adaptor"](
                losses.standardize_per_example(jacobian), training=False
            )
        return out


TRAINERS = {"classifier": ClassifierTrainer}


def build_trainer(config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy) -> Trainer:
    """Builds the trainer of ``config.train.mode`` (inside the strategy scope)."""
    mode = config.train.mode
    if mode not in TRAINERS:
        raise ValueError(f"--mode={mode!r} is not available; choose one of {sorted(TRAINERS)}.")
    with strategy.scope():
        return TRAINERS[mode](config, info, strategy)
