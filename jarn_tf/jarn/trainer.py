"""The ``classifier`` mode: standard training and its regularisers.

``ClassifierTrainer`` implements standard training, uniform noise,
adversarial training (FGSM / PGD), double backpropagation and JARN
(Algorithm 1 of Chan et al., ICLR 2020), alone or combined, on the settings
of ``config.ClassifierConfig``. It exports the classifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf.core import data, export
from jarn_tf.gan import regularizers as gan_regularizers
from jarn_tf.jarn import losses, models
from jarn_tf.robustness import attacks
from jarn_tf.config import ClassifierConfig, ExperimentConfig
from jarn_tf.core.data import DatasetInfo
from jarn_tf.core.trainer import Trainer, classifier_export_metadata, learning_rate_schedule, register_trainer

# Purposes folded into the per-step random seed, so that noise and attack
# starts are independent streams.
_NOISE_SEED = 1
_ATTACK_SEED = 2
_EVAL_SEED = 3
_DISC_NOISE_SEED = 4
_PENALTY_SEED = 5


@dataclasses.dataclass(frozen=True)
class ClassifierVariant:
    """Static flavour of the classifier step."""

    jarn: bool = False
    update_discriminator: bool = False


@register_trainer("classifier")
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
        "train/adapted_cosine",
        "train/saliency_cosine",
        "train/disc_regularizer",
    )

    progress_metrics = ("train/xent", "train/accuracy", "train/adv_loss", "train/disc_accuracy")

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        self.params: ClassifierConfig = config.mode_config
        t, m, o = self.params, config.model, config.optimizer
        self.schedule = learning_rate_schedule(o.learning_rate, o.lr_boundaries, o.lr_decay, o.train_steps)
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
        self._build_optimizers()
        if t.jarn and t.disc_reg == "rfm":
            # Penultimate features (the Flatten output) beside the logits: same layers and variables.
            d = self.networks["discriminator"]
            self._disc_features = keras.Model(d.inputs, [d.output, d.get_layer("flatten").output])
            self._disc_w = d.get_layer("logits").kernel
        # --jarn_variant=release trains the layers after the standardisation
        # on raw pixels (see ``_classifier_logits``): the same layers and
        # variables, called from the standardised tensor on.
        self._body = None
        if t.jarn and t.jarn_variant == "release":
            standardize = self.classifier.get_layer("standardize")
            self._body = keras.Model(standardize.output, self.classifier.output, name="classifier_body")
        self._eval_fn = None  # the compiled evaluation of one batch, built at first use
        self._eval_order = "stored"

    @property
    def classifier(self) -> keras.Model:
        return self.networks["classifier"]

    def variant(self, step: int) -> ClassifierVariant:
        t = self.params
        jarn = t.jarn and step >= t.jarn_start_step(self.config.optimizer.train_steps)
        return ClassifierVariant(jarn=jarn, update_discriminator=jarn and step % t.disc_update_every == 0)

    def learning_rates(self) -> Dict[str, float]:
        lr = float(self.schedule(self.step))
        rates = {"train/learning_rate": lr}
        if "discriminator" in self.optimizers and self.params.disc_optimizer == "adam":
            rates["train/disc_learning_rate"] = self.params.disc_learning_rate
        return rates

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        """Clean and PGD accuracy on the first ``num_examples`` test images.

        The first in the dataset's original order where the data can give it
        (as ``python -m jarn_tf.evaluate`` takes them), else in the copy's.

        PGD: ``config.runtime.eval_pgd_steps`` sign steps of eps/4 from a
        seeded random start, eps of the mode (skipped when 0). The images and
        the random starts are the same at every evaluation, so the curves
        in TensorBoard compare the same examples.
        """
        r = self.config.runtime
        steps = r.eval_pgd_steps if self.params.eps > 0 else 0
        attacked = min(num_examples, r.eval_pgd_examples) if steps else 0
        if self._eval_fn is None:
            self._eval_fn = tf.function(self._eval_batch)
            # The same first images as ``jarn_tf.evaluate``'s default (the original release's order).
            self._eval_order = data.resolve_example_order(self.config.data, "test", "auto").name
        correct = np.zeros(2, np.int64)
        alignment = np.zeros(3, np.float64)
        total = 0
        batches = data.make_eval_dataset(
            self.config.data, batch_size=256, num_examples=num_examples, order=self._eval_order
        )
        for i, (images, labels) in enumerate(batches):
            n = int(labels.shape[0])
            # PGD on the first ``attacked`` images only (the batches are 256).
            k = max(0, min(n, attacked - total))
            batch_correct, batch_alignment = self._eval_fn(
                images, labels, tf.constant(i, tf.int64), steps if k else 0, k
            )
            correct += batch_correct.numpy()
            alignment += batch_alignment.numpy()
            total += n
        out = {"eval/clean_accuracy": correct[0] / max(total, 1)}
        out["eval/jacobian_cosine"] = alignment[0] / max(total, 1)
        out["eval/jacobian_alignment"] = alignment[1] / max(total, 1)
        out["eval/saliency_cosine"] = alignment[2] / max(total, 1)
        if attacked:
            out[f"eval/pgd{steps}_accuracy"] = correct[1] / min(attacked, max(total, 1))
        return {k: float(v) for k, v in out.items()}

    def _eval_batch(
        self, images: tf.Tensor, labels: tf.Tensor, index: tf.Tensor, steps: int, attacked: int
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """On one batch: correct predictions [clean, PGD on the first
        ``attacked`` images], and the sums of the Jacobian's [|cosine| with
        the image, alignment, saliency cosine] (J = d xent/dx, inference
        mode, clean images; the first two are 0 for a standardising
        classifier, see ``losses.jacobian_image_cosine``)."""
        labels = tf.cast(labels, tf.int64)

        def correct(x, y):
            predicted = tf.argmax(self._inference(x), axis=-1, output_type=tf.int64)
            return tf.reduce_sum(tf.cast(predicted == y, tf.int64))

        clean = correct(images, labels)
        with tf.GradientTape() as tape:
            tape.watch(images)
            # The training J's objective: accurate for confidently classified examples too.
            xent = tf.reduce_sum(losses.jacobian_objective(labels, self._inference(images), "xent"))
        jacobian = tape.gradient(xent, images)
        alignment = tf.stack(
            [
                tf.reduce_sum(losses.jacobian_image_cosine(jacobian, images)),
                tf.reduce_sum(losses.jacobian_alignment(jacobian, images)),
                tf.reduce_sum(losses.saliency_image_cosine(jacobian, images)),
            ]
        )
        if not steps:
            return tf.stack([clean, tf.constant(0, tf.int64)]), alignment
        eps = self.params.eps
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.config.seed, _EVAL_SEED], tf.int64), index
        )
        x, y = images[:attacked], labels[:attacked]
        adv = attacks.pgd(self._inference, x, y, eps, eps / 4, steps, random_start=True, seed=seed)
        return tf.stack([clean, correct(adv, y)]), alignment

    def export(
        self, export_dir: str, metadata: Mapping[str, Any], evaluation: Mapping[str, float], num_examples: int
    ) -> None:
        """Exports the classifier (SavedModel, .keras, metadata.json)."""
        metadata = classifier_export_metadata(
            metadata, evaluation, num_examples, self.params.eps, self.config.runtime
        )
        export.export_classifier(self.classifier, export_dir, self.info.image_shape, metadata)

    # -- pieces of the step ---------------------------------------------------
    def _inner_scale(self) -> tf.Tensor:
        """Scale for the inner (input-gradient) tape under float16.

        J would underflow in float16 like any gradient; the classifier
        optimizer's current loss scale keeps it representable, and J is
        divided by it again (exactly: the scale is a power of two).
        """
        if self.loss_scaling:
            return tf.cast(self.optimizers["classifier"].scale_loss(tf.constant(1.0)), tf.float32)
        return tf.constant(1.0)

    def _inference(self, x: tf.Tensor) -> tf.Tensor:
        return self.classifier(x, training=False)

    def _classifier_logits(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """The classifier's logits in a training step.

        Under ``--jarn_variant=release`` the release's feed is reproduced: its
        training feed dict fed the raw pixels (0..255) to the tensor that is
        both the discriminator's image input and the classifier's
        standardised input, so every layer after the standardisation trained
        on raw pixels, while gradients with respect to the input (J) still
        went through the standardisation evaluated at x (TF1's feeding
        replaces a tensor's value, not the graph under it). Here the forward
        value is 255 x and the gradient is the standardisation's, exactly
        that. Evaluation and export use the classifier as built
        (standardised inputs), as the release's tests did.
        """
        if self._body is None:
            return self.classifier(x, training=training)
        standardized = self.classifier.get_layer("standardize")(x)
        fed = standardized + tf.stop_gradient(255.0 * x - standardized)
        return self._body(fed, training=training)

    def _inputs(self, images: tf.Tensor, labels: tf.Tensor, jarn: bool) -> tf.Tensor:
        """Training inputs: uniform noise and/or adversarial examples."""
        t = self.params
        x = images
        # JARN adds uniform noise (Algorithm 1, line 4) unless adversarial
        # training already perturbs the inputs around the image; the release
        # (--img_random_pert) adds it on every step of the run.
        release_noise = t.jarn and t.jarn_variant in ("release", "release_intended")
        if t.noise_eps > 0 and (t.uniform_noise or release_noise or (jarn and t.at_steps == 0)):
            noise = tf.random.stateless_uniform(
                tf.shape(x), seed=self._seed(_NOISE_SEED), minval=-t.noise_eps, maxval=t.noise_eps
            )
            x = tf.clip_by_value(x + noise, 0.0, 1.0)
        if t.at_steps > 0:
            eps, step_size = t.eps, t.step_size
            if t.at_eps_warmup > 0:
                ramp = self.at_eps_fraction()
                eps, step_size = eps * ramp, step_size * ramp
            x = attacks.pgd(
                self._inference,
                x,
                labels,
                eps=eps,
                step_size=step_size,
                num_steps=t.at_steps,
                random_start=t.at_random_start,
                seed=self._seed(_ATTACK_SEED),
            )
        return x

    def at_eps_fraction(self) -> tf.Tensor:
        """Fraction of --eps the training attack uses at this step (--at_eps_warmup's linear ramp)."""
        warmup_steps = self.params.at_eps_warmup * self.config.optimizer.train_steps
        if warmup_steps <= 0:
            return tf.constant(1.0)
        return tf.minimum(1.0, tf.cast(self.step, tf.float32) / warmup_steps)

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
            logits = self._classifier_logits(x, training=training)
            objective = tf.reduce_sum(losses.jacobian_objective(labels, logits, kind))
            objective = objective * scale
        return logits, inner.gradient(objective, x) / scale

    def _discriminate(self, jacobian: tf.Tensor, images: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Adapted Jacobians and discriminator logits on (J', images).

        ``images`` are the classifier's inputs x (noisy, or adversarial with
        AT): Algorithm 1 lines 4 and 8 and the release use the same x.
        """
        adapted = self.networks["adaptor"](losses.standardize_per_example(jacobian), training=True)
        adapted = tf.cast(adapted, tf.float32)  # compute dtype under mixed precision
        real = losses.standardize_per_example(images)
        if self.params.disc_reg == "instance_noise" and self.params.noise_sigma > 0:
            adapted = gan_regularizers.instance_noise(
                adapted, self.params.noise_sigma, self._seed(_DISC_NOISE_SEED)
            )
            real = gan_regularizers.instance_noise(
                real, self.params.noise_sigma, self._seed(_DISC_NOISE_SEED + 100)
            )
        # One batch of fakes then reals, as the reference: batch norm sees both.
        logits = self.networks["discriminator"](tf.concat([adapted, real], axis=0), training=True)
        fake_logits, real_logits = tf.split(logits, 2, axis=0)
        return adapted, fake_logits, real_logits

    def _disc_score(self, x: tf.Tensor) -> tf.Tensor:
        """JARN's discriminator score in the gan mode's convention (high = generated):
        logit_fake - logit_real."""
        logits = tf.cast(self.networks["discriminator"](x, training=True), tf.float32)
        return logits[:, 0] - logits[:, 1]

    def _disc_phi(self, x: tf.Tensor) -> tf.Tensor:
        _, features = self._disc_features(x, training=True)
        return tf.cast(features, tf.float32)

    def _disc_regularizer(self, adapted: tf.Tensor, images: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """--disc_reg on JARN's discriminator: (per-example value, weighted term of the discriminator's loss).

        Generated = the adapted Jacobians J' (held constant), real = the
        discriminator's real inputs (standardised x).
        """
        t = self.params
        fake = tf.stop_gradient(adapted)
        real = tf.stop_gradient(losses.standardize_per_example(images))
        reg_i, weight = gan_regularizers.configured_regularizer(
            t,
            self._disc_score,
            self._disc_phi,
            real,
            fake,
            self._seed(_PENALTY_SEED),
            loss="gan",
            w=getattr(self, "_disc_w", None),
        )
        return reg_i, weight * losses.scale_loss(reg_i, self.global_batch_size)

    # -- the step -------------------------------------------------------------
    def replica_step(
        self, batch: Tuple[tf.Tensor, tf.Tensor], variant: ClassifierVariant
    ) -> Dict[str, tf.Tensor]:
        """One step; returns the classifier's (and with JARN the adaptor's and
        discriminator's) loss on this replica."""
        t = self.params
        images, labels = batch
        x = self._inputs(images, labels, variant.jarn)
        batch_size = self.global_batch_size
        need_jacobian = variant.jarn or t.double_backprop > 0
        kind = t.jacobian if variant.jarn else "xent"
        values: Dict[str, tf.Tensor] = {}

        # The release updates the discriminator in a second pass, after the
        # classifier and adaptor updates (its own sess.run).
        second_pass = variant.update_discriminator and t.jarn_variant != "paper"

        with tf.GradientTape(persistent=True) as tape:
            if need_jacobian:
                logits, jacobian = self.input_jacobian(x, labels, kind, training=True)
            else:
                logits = self._classifier_logits(x, training=True)
            xent = losses.cross_entropy(labels, logits)
            classifier_loss = losses.scale_loss(xent, batch_size) + self._weight_decay(self.classifier)
            if t.double_backprop > 0:
                penalty = losses.input_gradient_penalty(jacobian)
                classifier_loss += t.double_backprop * losses.scale_loss(penalty, batch_size)
                values["train/double_backprop_penalty"] = penalty
            if variant.jarn:
                adapted, fake_logits, real_logits = self._discriminate(jacobian, x)
                adv = losses.jarn_adversarial_loss(fake_logits, real_logits)
                adv_loss = losses.scale_loss(adv, batch_size)
                if t.jarn_generator_loss == "minimax":
                    generator_loss = adv_loss
                else:
                    generator_loss = losses.scale_loss(
                        losses.jarn_generator_loss(fake_logits, real_logits, t.jarn_generator_loss),
                        batch_size,
                    )
                classifier_loss += t.lambda_adv * generator_loss
                adaptor_loss = t.adaptor_gamma * generator_loss + self._weight_decay(self.networks["adaptor"])
                disc_loss = -adv_loss + self._weight_decay(self.networks["discriminator"])
                disc_xent = losses.discriminator_cross_entropy(fake_logits, real_logits)

            # What each optimizer minimises (loss-scaled under float16).
            objectives = {"classifier": self._scaled("classifier", classifier_loss)}
            if variant.jarn:
                objectives["adaptor"] = self._scaled("adaptor", adaptor_loss)
                if variant.update_discriminator and not second_pass:
                    if t.disc_reg != "none":
                        reg_i, reg_term = self._disc_regularizer(adapted, x)
                        disc_loss += reg_term
                        values["train/disc_regularizer"] = reg_i
                    objectives["discriminator"] = self._scaled("discriminator", disc_loss)

        # All gradients come from the same forward pass; then all updates.
        grads = {
            name: tape.gradient(loss, self.networks[name].trainable_variables)
            for name, loss in objectives.items()
        }
        del tape
        for name, g in grads.items():
            self.optimizers[name].apply_gradients(zip(g, self.networks[name].trainable_variables))
        if second_pass:
            disc_loss, reg_i = self._discriminator_pass(x, labels, kind)
            if reg_i is not None:
                values["train/disc_regularizer"] = reg_i

        correct = tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.cast(labels, tf.int64)), tf.float32
        )
        values.update({"train/xent": xent, "train/accuracy": correct})
        if variant.jarn:
            # How image-like J' (what the discriminator judges) and |J| are.
            values["train/adapted_cosine"] = losses.cosine_similarity(adapted, x)
            values["train/saliency_cosine"] = losses.saliency_image_cosine(jacobian, x)
        # Per-replica totals are already scaled by 1/global batch; the metric
        # mean over replicas therefore times R gives the global value.
        values["train/loss"] = tf.fill([1], classifier_loss * self.num_replicas)
        if variant.jarn:
            values["train/adv_loss"] = tf.fill([1], t.lambda_adv * generator_loss * self.num_replicas)
            values["train/disc_xent"] = disc_xent
            values["train/disc_accuracy"] = losses.discriminator_accuracy(fake_logits, real_logits)
            values["train/disc_loss"] = tf.fill([1], disc_loss * self.num_replicas)
            values["train/adaptor_loss"] = tf.fill([1], adaptor_loss * self.num_replicas)
        self.metrics.update(values)
        if variant.jarn:
            return {"classifier": classifier_loss, "adaptor": adaptor_loss, "discriminator": disc_loss}
        return {"classifier": classifier_loss}

    def _discriminator_pass(self, x: tf.Tensor, labels: tf.Tensor, kind: str) -> tf.Tensor:
        """The release's discriminator update: a fresh forward pass (J with the
        classifier and adaptor just updated), then one discriminator step.

        Returns:
          The discriminator's loss in that pass (this replica's share) and the
          per-example --disc_reg value (None without one).
        """
        with tf.GradientTape() as tape:
            _, jacobian = self.input_jacobian(x, labels, kind, training=True)
            adapted, fake_logits, real_logits = self._discriminate(tf.stop_gradient(jacobian), x)
            adv_loss = losses.scale_loss(
                losses.jarn_adversarial_loss(fake_logits, real_logits), self.global_batch_size
            )
            disc_loss = -adv_loss + self._weight_decay(self.networks["discriminator"])
            reg_i = None
            if self.params.disc_reg != "none":
                reg_i, reg_term = self._disc_regularizer(adapted, x)
                disc_loss += reg_term
            scaled = self._scaled("discriminator", disc_loss)
        variables = self.networks["discriminator"].trainable_variables
        self.optimizers["discriminator"].apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return disc_loss, reg_i

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """x, its Jacobian J and (with JARN) the adapted Jacobian J'."""
        kind = self.params.jacobian
        _, jacobian = self.input_jacobian(images, labels, kind, training=False)
        out = {"images/x": images, "images/jacobian": losses.standardize_per_example(jacobian)}
        if "adaptor" in self.networks:
            out["images/adapted_jacobian"] = self.networks["adaptor"](
                losses.standardize_per_example(jacobian), training=False
            )
        return out
