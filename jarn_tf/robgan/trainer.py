"""The ``advgan`` modes: Rob-GAN ("From Adversarial Training to GANs").

``AdvGANTrainer`` (``--mode=advgan``, alias ``robgan``) co-trains the
class-conditional generator and the two-head discriminator of
``jarn_tf.robgan.models`` (``--advgan_discriminator``): every step adds
``--dequantize_noise`` U(0, noise) to the real batch
(``advgan_losses.dequantize``), attacks it with PGD
(``advgan_losses.cotraining_attack``: maximise -log P(real | x) - log P(y |
x), ``--attack_steps`` sign steps of ``--attack_step_size`` within
``--eps``), then updates the discriminator on eq. 9 (or eq. 8 with
``--class_loss=acgan``), its terms weighted by ``--advgan_loss_weights``;
the generator is updated after every ``--advgan_disc_steps``-th
discriminator update (a step variant, as in the ``gan`` mode). Both networks
use Adam with betas ``--adam_beta1/2``. The export is the conditional
generator (``advgan_export``) and, in ``export/class_head/``, the
discriminator's class head as a classifier (before fine-tuning).

``train/attack_gain`` is what the attack won, with ONE discriminator: the
attack objective (``advgan_losses.attack_objective``) of the attacked real
images minus that of the real images it started from, both under the
weights the attack saw (before this step's update) and in inference mode,
as the attack ran.

``--disc_reg`` puts the ``gan`` mode's robust-discriminator regularisers
(``gan_regularizers.regularizer_value``) on the real/fake (source) head, their
weighted value ADDED to the discriminator's minimised loss only (logged as
``train/regularizer``). The score they see is D = -s(x), minus the source
logit: ``gan_losses``' convention (high = generated), in which its ``gan``
loss, softplus(D(x_adv)) + softplus(-D(G)), is exactly eq. 9's source term
-L_S. With G = G(z, y) the generated and x_adv the attacked real images:

  ar                (D(G) - D(G + v))^2 = (s(G) - s(G + v))^2, v the attack
                    of ``--reg_attack`` on G (held constant)
  rfm               ||phi(G) - phi(G + v)||^2 + alpha ||w||^2, phi the pooled
                    features of the shared trunk (layer ``features``), w the
                    kernel of the source head (layer ``source``); the trunk
                    also feeds the class head, so RFM regularises both
  gradient_penalty  (||grad_x D(x_hat)|| / target - 1)^2 at interpolates
                    x_hat = a x_adv + (1 - a) G
  instance_noise    Gaussian noise on both of D's inputs (x_adv after the
                    attack, which sees clean images, and G) in D's step, and
                    on G in the generator's step; the training metrics of D
                    (``p_real_*``, accuracies) then see noisy inputs
                    (``attack_gain`` does not: it is the attack's own view)

``--reg_target=loss`` (ar, gradient_penalty) regularises f(D) = log P(S =
fake | x) instead of D. The class head's losses are not regularised.

``AdvGANFinetuneTrainer`` (``--mode=advgan_finetune``) starts from the
newest checkpoint of the ``--init_from`` co-training run (its network:
the run's ``--advgan_discriminator``, sngan's kernels renormalised once per
step as in co-training; no dequantisation noise, as the authors'
finetune.py) and trains the discriminator's trunk and class head on eq. 10:
xent on PGD-attacked real images plus ``--lambda_fake`` times xent on
PGD-attacked generated images (the generator frozen, in inference mode). The export is the class head as
a classifier (``export.export_classifier``), which ``jarn_tf.evaluate``
attacks like any other.

``AdvGANPGDATTrainer`` (``--mode=advgan_pgd_at``) is the paper's baseline:
PGD adversarial training (Madry et al.) of the same network's trunk and
class head from a random initialisation, with the fine-tuning's attack,
optimizer, evaluation and export (eq. 10 with lambda 0, no co-training).

Both classifier modes' periodic evaluation measures the first test AND
training images (clean and PGD accuracy, and the local Lipschitz value
||d xent / d x||_2): the generalisation gap of the paper's Figures 1 and 8.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf.core import checkpoints, data, export
from jarn_tf.gan import models as gan_models, regularizers as gan_regularizers
from jarn_tf.robgan import export as advgan_export, losses as advgan_losses, models as advgan_models
from jarn_tf.robustness import attacks
from jarn_tf.config import AdvGANConfig, AdvGANFinetuneConfig, AdvGANPGDATConfig, ExperimentConfig
from jarn_tf.core.data import DatasetInfo
from jarn_tf.core.trainer import Trainer, classifier_export_metadata, learning_rate_schedule, register_trainer
from jarn_tf.gan.trainer import GANNetworks, GANVariant, image_grid, png_bytes

_LATENT_SEED = 21
_LABEL_SEED = 22
_GEN_LATENT_SEED = 23
_GEN_LABEL_SEED = 24
_ATTACK_SEED = 25
_FAKE_ATTACK_SEED = 26
_FIXED_LATENT_SEED = 27
_EVAL_SEED = 28
_NOISE_SEED = 29
_PENALTY_SEED = 30
_DEQUANTIZE_SEED = 31
GRID_COLUMNS = 8


def _accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)


class _ConditionalSampling:
    """Fixed-latent sample grids (one row per class) of a conditional generator."""

    def _init_sampling(self, latent_dim: int, seed: int) -> None:
        k = self.info.num_classes
        self._fixed_labels = tf.constant(np.repeat(np.arange(k), GRID_COLUMNS), tf.int32)
        self._fixed_latent = tf.random.stateless_normal(
            [k * GRID_COLUMNS, latent_dim], tf.constant([seed, _FIXED_LATENT_SEED], tf.int64)
        )

    def sample(self, latent: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Images of the generator in inference mode (batch norm's moving statistics)."""
        return self.networks["generator"]([latent, labels], training=False)

    def samples_png(self) -> bytes:
        """A PNG grid of the fixed latents' samples, one row per class."""
        return png_bytes(self.sample(self._fixed_latent, self._fixed_labels).numpy(), GRID_COLUMNS)

    def _sample_grid_images(self) -> Dict[str, tf.Tensor]:
        samples = self.sample(self._fixed_latent, self._fixed_labels)
        grid = tf.numpy_function(lambda x: image_grid(x, GRID_COLUMNS), [samples], tf.float32)
        return {"images/samples": samples, "images/sample_grid": grid[None]}


@register_trainer("advgan", "robgan")
class AdvGANTrainer(_ConditionalSampling, GANNetworks, Trainer):
    """Co-training of generator, two-head discriminator and PGD attacker."""

    metric_names = (
        "train/d_loss",
        "train/g_loss",
        "train/source_loss",
        "train/class_loss_real",
        "train/class_loss_fake",
        "train/real_accuracy",
        "train/fake_accuracy",
        "train/p_real_real",
        "train/p_real_fake",
        "train/attack_gain",
        "train/regularizer",  # only with --disc_reg
    )
    progress_metrics = ("train/d_loss", "train/g_loss", "train/real_accuracy")

    @classmethod
    def check_image_shape(cls, config: ExperimentConfig, image_shape: Tuple[int, int, int]) -> None:
        """The conditional generator and the two-head discriminator (``advgan_models``) take the images."""
        gan_models.gan_stages(image_shape)
        advgan_models.discriminator_sides(image_shape)

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        self.params: AdvGANConfig = config.mode_config
        p, o = self.params, config.optimizer
        generators = advgan_models.build_generators(
            p.latent_dim, info.image_shape, info.num_classes, p.gan_channels
        )
        self.networks["generator"] = generators["conditional"]
        self.marginal_generator = generators["marginal"]  # the same weights
        self.networks["discriminator"] = advgan_models.build_discriminator(
            info.image_shape, info.num_classes, p.gan_channels, kind=p.advgan_discriminator
        )
        # sngan: renormalised once before each update (advgan_models.spectral_normalize), not per call.
        self._spectral = advgan_models.spectral_layers(self.discriminator)
        self._with_features, self._w = None, None
        if p.disc_reg == "rfm":
            # The trunk's pooled features beside both heads (same layers and variables), and w of RFM's
            # alpha ||w||^2 (eq. 5): the source head's kernel.
            d = self.discriminator
            self._with_features = keras.Model(d.inputs, [*d.outputs, d.get_layer("features").output])
            self._w = d.get_layer("source").kernel
        if p.disc_reg != "none":
            self.progress_metrics = (*type(self).progress_metrics, "train/regularizer")
        self._init_gan_optimizers(p, o)
        self._init_sampling(p.latent_dim, config.seed)
        self._init_training_fcd(p)
        self._marginal_fn = None
        self._eval_fn = None

    def variant(self, step: int) -> GANVariant:
        return GANVariant(update_generator=(step + 1) % self.params.advgan_disc_steps == 0)

    def _training(self, training: bool) -> bool:
        """Keras' training flag of a discriminator pass: sngan's passes run in inference mode (its only
        training-mode behaviour, renormalising, is done once per update by ``_renormalize``)."""
        return training and not self._spectral

    def _renormalize(self) -> None:
        """sngan: one power iteration and kernel / sigma, before an update that uses the discriminator."""
        advgan_models.spectral_normalize(self._spectral)

    def heads(self, x: tf.Tensor, training: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
        """(source logits [N], class logits [N, K]) of the discriminator.

        ``training``: batch norm's batch statistics (authors); sngan ignores it (``_training``).
        """
        source, logits = self.discriminator(x, training=self._training(training))
        return tf.reshape(tf.cast(source, tf.float32), [-1]), tf.cast(logits, tf.float32)

    def attack(self, images: tf.Tensor, labels: tf.Tensor, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The co-training attack on real images (the discriminator in inference mode)."""
        p = self.params
        return advgan_losses.cotraining_attack(
            lambda x: self.heads(x, training=False),
            images,
            labels,
            eps=p.eps,
            step_size=p.attack_step_size,
            num_steps=p.attack_steps,
            random_start=p.attack_random_start,
            seed=seed,
        )

    def attack_gain(self, real: tf.Tensor, real_adv: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Per example: attack objective at ``real_adv`` minus at ``real``, one discriminator, inference mode."""
        n = tf.shape(real)[0]
        source, logits = self.heads(tf.concat([real, real_adv], 0), training=False)
        objective = advgan_losses.attack_objective(source, logits, tf.concat([labels, labels], 0))
        return objective[n:] - objective[:n]

    def _score(self, x: tf.Tensor) -> tf.Tensor:
        """D = -s(x), the source logit in ``gan_losses``' convention (high = generated), per example."""
        return -self.heads(x, training=True)[0]

    def _phi(self, x: tf.Tensor) -> tf.Tensor:
        """The trunk's pooled features (the input of both heads), for --disc_reg=rfm."""
        return tf.cast(self._with_features(x, training=self._training(True))[2], tf.float32)

    def _noisy(self, x: tf.Tensor, purpose: int) -> tf.Tensor:
        p = self.params
        if p.disc_reg == "instance_noise" and p.noise_sigma > 0:
            return gan_regularizers.instance_noise(x, p.noise_sigma, self._seed(purpose))
        return x

    def _fake_pass(self, fake: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
        """(source logits, class logits, trunk features or None without rfm) of generated images."""
        if self._with_features is None:
            return (*self.heads(fake, training=True), None)
        source, logits, features = self._with_features(fake, training=self._training(True))
        source = tf.reshape(tf.cast(source, tf.float32), [-1])
        return source, tf.cast(logits, tf.float32), tf.cast(features, tf.float32)

    def source_regularizer(
        self,
        real_adv: tf.Tensor,
        fake: tf.Tensor,
        fake_source: Optional[tf.Tensor] = None,
        fake_features: Optional[tf.Tensor] = None,
    ) -> Tuple[tf.Tensor, float]:
        """--disc_reg on the source head: (per-example value, its weight in the discriminator's loss).

        Call it inside the discriminator's tape (the gradient penalty and AR
        differentiate through D). ``fake_source`` / ``fake_features``: the
        tape's pass on ``fake`` (unperturbed), which ar / rfm then reuse.
        """
        p = self.params
        return gan_regularizers.configured_regularizer(
            p,
            self._score,
            self._phi,
            real_adv,
            fake,
            self._seed(_PENALTY_SEED),
            loss="gan",  # eq. 9's source term is the gan loss of D = -s
            w=self._w,
            fake_score=None if fake_source is None else -fake_source,
            fake_features=fake_features,
        )

    def _labels(self, n: tf.Tensor, purpose: int) -> tf.Tensor:
        return tf.random.stateless_uniform(
            tf.reshape(n, [1]), self._seed(purpose), minval=0, maxval=self.info.num_classes, dtype=tf.int32
        )

    def _latent(self, n: tf.Tensor, purpose: int) -> tf.Tensor:
        return tf.random.stateless_normal(tf.stack([n, self.params.latent_dim]), self._seed(purpose))

    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant: GANVariant) -> Dict[str, tf.Tensor]:
        p = self.params
        real, labels = batch
        real = tf.cast(real, tf.float32)
        labels = tf.cast(labels, tf.int32)
        n = tf.shape(real)[0]
        scale = 1.0 / self.global_batch_size
        self._renormalize()  # sngan: the network this step's attack, losses and attack_gain see
        real = advgan_losses.dequantize(real, p.dequantize_noise, self._seed(_DEQUANTIZE_SEED))
        real_adv = self.attack(real, labels, self._seed(_ATTACK_SEED))
        # Before the update, under the weights (and mode) the attack saw.
        attack_gain = self.attack_gain(real, real_adv, labels)
        fake_labels = self._labels(n, _LABEL_SEED)
        fake = tf.stop_gradient(self.generator([self._latent(n, _LATENT_SEED), fake_labels], training=True))
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            real_source, real_logits = self.heads(self._noisy(real_adv, _NOISE_SEED), training=True)
            fake_source, fake_logits, fake_features = self._fake_pass(self._noisy(fake, _NOISE_SEED + 100))
            parts = advgan_losses.discriminator_losses(
                real_source,
                real_logits,
                labels,
                fake_source,
                fake_logits,
                fake_labels,
                p.class_loss,
                p.advgan_loss_weights,
            )
            d_loss = tf.reduce_sum(parts["total"]) * scale
            d_total = d_loss + self._weight_decay(self.discriminator)
            if p.disc_reg != "none":
                # ar and rfm reuse the pass on generated images (noise-free: instance noise is another
                # --disc_reg). The penalty is >= 0 and added to the loss D minimises.
                reg_i, weight = self.source_regularizer(real_adv, fake, fake_source, fake_features)
                reg = tf.reduce_sum(reg_i) * scale
                d_total = d_total + weight * reg
        grads = tape.gradient(d_total, d_vars)
        self.optimizers["discriminator"].apply_gradients(zip(grads, d_vars))
        values = {
            "train/d_loss": parts["total"],
            "train/source_loss": parts["source"],
            "train/class_loss_real": parts["class_real"],
            "train/class_loss_fake": parts["class_fake"],
            "train/real_accuracy": _accuracy(real_logits, labels),
            "train/fake_accuracy": _accuracy(fake_logits, fake_labels),
            "train/p_real_real": tf.sigmoid(real_source),
            "train/p_real_fake": tf.sigmoid(fake_source),
            "train/attack_gain": attack_gain,
        }
        out = {"d_loss": d_loss}
        if p.disc_reg != "none":
            values["train/regularizer"] = reg_i
            out["regularizer"] = reg
        if variant.update_generator:
            self._renormalize()  # sngan: the updated discriminator, normalised (SN-GAN's training-mode pass)
            g_vars = self.generator.trainable_variables
            gen_labels = self._labels(n, _GEN_LABEL_SEED)
            with tf.GradientTape() as tape:
                generated = self.generator([self._latent(n, _GEN_LATENT_SEED), gen_labels], training=True)
                gen_source, gen_logits = self.heads(self._noisy(generated, _NOISE_SEED + 200), training=True)
                g_parts = advgan_losses.generator_losses(
                    gen_source, gen_logits, gen_labels, p.gan_generator_loss, p.advgan_loss_weights
                )
                g_loss = tf.reduce_sum(g_parts["total"]) * scale
                g_total = g_loss + self._weight_decay(self.generator)
            grads = tape.gradient(g_total, g_vars)
            self.optimizers["generator"].apply_gradients(zip(grads, g_vars))
            values["train/g_loss"] = g_parts["total"]
            out["g_loss"] = g_loss
        self.metrics.update(values)
        return out

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        adv = self.attack(images, labels)
        return {"images/real": images, "images/real_attacked": adv, **self._sample_grid_images()}

    # -- evaluation and export ---------------------------------------------------
    def _generate_marginal(self, num: int, seed: int, batch_size: int = 500) -> np.ndarray:
        """Samples of the class-marginal generator (uniform classes), as the export gives them."""
        if self._marginal_fn is None:
            self._marginal_fn = tf.function(lambda z: self.marginal_generator(z, training=False))
        key = tf.constant([seed, _EVAL_SEED], tf.int64)
        out = []
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            z = tf.random.stateless_normal(
                [n, self.params.latent_dim + 1], tf.random.experimental.stateless_fold_in(key, start)
            )
            out.append(self._marginal_fn(z).numpy())
        return np.concatenate(out)

    def _eval_batch(self, images, labels, attacked: bool, seed):
        source, logits = self.heads(images)
        correct = tf.reduce_sum(_accuracy(logits, labels))
        p_real = tf.reduce_sum(tf.sigmoid(source))
        if not attacked:
            return tf.stack([correct, p_real, 0.0])
        r, eps = self.config.runtime, self.params.eps
        adv = attacks.pgd(
            lambda x: self.heads(x)[1],
            images,
            labels,
            eps,
            eps / 4,
            r.eval_pgd_steps,
            random_start=True,
            seed=seed,
        )
        return tf.stack([correct, p_real, tf.reduce_sum(_accuracy(self.heads(adv)[1], labels))])

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        """The class head's clean and PGD accuracy on test images, P(real) on test and generated images, FCD.

        PGD: ``--eval_pgd_steps`` sign steps of eps/4 from a seeded random
        start on the first ``--eval_pgd_examples`` images (as the classifier
        mode). FCD and the classifier score with ``--fcd_network``, on the
        class-marginal samples (uniform classes).
        """
        p, r = self.params, self.config.runtime
        images, labels = data.load_arrays(self.config.data, "test")
        n = min(num_examples, len(images)) if num_examples else 0
        out: Dict[str, float] = {}
        if n:
            if self._eval_fn is None:
                self._eval_fn = tf.function(self._eval_batch)
            attack = r.eval_pgd_steps > 0 and p.eps > 0
            sums = np.zeros(3)
            pgd_count = 0
            key = tf.constant([self.config.seed, _EVAL_SEED], tf.int64)
            for i, start in enumerate(range(0, n, 256)):
                x = tf.constant(images[start : min(n, start + 256)].astype(np.float32) / 255.0)
                y = tf.constant(labels[start : min(n, start + 256)].astype(np.int32))
                k = min(int(y.shape[0]), max(0, r.eval_pgd_examples - start)) if attack else 0
                if k == int(y.shape[0]):
                    sums += self._eval_fn(
                        x, y, True, tf.random.experimental.stateless_fold_in(key, i)
                    ).numpy()
                else:
                    sums += self._eval_fn(x, y, False, key).numpy()
                    if k:
                        part = self._eval_fn(
                            x[:k], y[:k], True, tf.random.experimental.stateless_fold_in(key, i)
                        )
                        sums[2] += part.numpy()[2]
                pgd_count += k
            out["eval/clean_accuracy"] = sums[0] / n
            out["eval/p_real_test"] = sums[1] / n
            if pgd_count:
                out[f"eval/pgd{r.eval_pgd_steps}_accuracy"] = sums[2] / pgd_count
            fake = self._generate_marginal(n, self.config.seed)
            p_fake = [tf.sigmoid(self.heads(b)[0]).numpy() for b in np.array_split(fake, -(-n // 256))]
            out["eval/p_real_generated"] = float(np.mean(np.concatenate(p_fake)))
        if p.fcd_network:
            out.update(self._fcd.measure(images, lambda k: self._generate_marginal(k, self.config.seed + 1)))
        return {k: float(v) for k, v in out.items()}

    def export(
        self, export_dir: str, metadata: Mapping[str, Any], evaluation: Mapping[str, float], num_examples: int
    ) -> None:
        """Exports the conditional generator (``advgan_export``) with the evaluation in its metadata."""
        metadata = dict(metadata)
        if "eval/clean_accuracy" in evaluation:
            metadata["class_head"] = {
                k.split("/", 1)[1]: v for k, v in evaluation.items() if k.endswith("accuracy")
            }
            metadata["class_head"]["num_test_examples"] = num_examples
        if "eval/fcd" in evaluation:
            metadata["fcd"] = {
                "value": evaluation["eval/fcd"],
                "classifier_score": evaluation.get("eval/classifier_score"),
                "classifier_score_splits": self._fcd.score_splits if self._fcd is not None else None,
                "feature_network": self.params.fcd_network,
                "num_samples": self.params.fcd_samples,
                "reference": f"first {self.params.fcd_samples} test images",
            }
        # The class head before fine-tuning (Rob-GAN's Figure 5), a classifier export of its own.
        head_metadata = {
            k: v for k, v in metadata.items() if k not in ("class_head", "fcd", "kind", "latent_dim")
        }
        head_metadata["class_head_of"] = "the co-trained discriminator (--mode=advgan), before fine-tuning"
        if "eval/clean_accuracy" in evaluation:
            head_metadata["clean_accuracy"] = {
                "value": evaluation["eval/clean_accuracy"],
                "num_test_examples": num_examples,
            }
        advgan_export.export_conditional_generator(
            self.generator,
            self.marginal_generator,
            export_dir,
            self.params.latent_dim,
            self.info.num_classes,
            self.info.image_shape,
            metadata,
            samples_png=self.samples_png(),
            class_head=advgan_models.classifier_from_discriminator(self.discriminator),
            class_head_metadata=head_metadata,
        )


def restore_cotraining(init_from: str, generator: keras.Model, discriminator: keras.Model) -> str:
    """Restores the generator and discriminator of the newest readable checkpoint of an ``advgan`` run.

    Returns:
      The checkpoint restored.

    Raises:
      ValueError: no checkpoint there can be read, or it does not hold these networks.
    """
    directory = os.path.join(init_from, checkpoints.CHECKPOINT_DIR)
    checkpoint = tf.train.Checkpoint(generator=generator, discriminator=discriminator)
    try:
        path = checkpoints.restore_newest_readable(checkpoint, directory, expect_partial=True)
    except checkpoints.CheckpointRestoreError as e:
        raise ValueError(
            f"--init_from={init_from}: {e} Was it written by --mode=advgan of this version?"
        ) from e
    if path is None:
        raise ValueError(f"--init_from={init_from}: no checkpoint can be read in {directory}")
    return path


class _ClassHeadTrainer(Trainer):
    """PGD training of a two-head discriminator's trunk and class head, exported as a classifier.

    What ``advgan_finetune`` and ``advgan_pgd_at`` share: the classifier
    (``advgan_models.classifier_from_discriminator``: images -> class
    logits), its trainable variables (trunk and class head, not the source
    head), Adam on them, the training attack (``--attack_*``), the update
    step (``replica_step``; the fine-tuning adds generated images through
    ``_generated_batch``), the periodic evaluation and the classifier export. Subclasses build
    ``self.networks["discriminator"]`` and call ``_init_class_head``.

    The evaluation (``evaluate``) measures, on the first test images AND the
    first training images (the paper's Figure 1 and 8: the generalisation
    gap of adversarial training), clean accuracy, PGD accuracy and the local
    Lipschitz value ``llv`` = mean_i ||d xent(f(x_i), y_i) / d x_i||_2 at the
    clean images (the paper's LLV, Figure 1 right).
    """

    metric_names = ("train/loss", "train/xent_real", "train/accuracy_real")
    progress_metrics = ("train/xent_real", "train/accuracy_real")

    @classmethod
    def check_image_shape(cls, config: ExperimentConfig, image_shape: Tuple[int, int, int]) -> None:
        """The two-head discriminator (``advgan_models``) takes the images."""
        advgan_models.discriminator_sides(image_shape)

    def _init_class_head(self) -> None:
        o = self.config.optimizer
        self.classifier = advgan_models.classifier_from_discriminator(self.discriminator)
        self._train_vars = advgan_models.class_head_variables(self.discriminator)
        # sngan: the trunk's and class head's wrappers, renormalised once per step (as co-training).
        self._spectral = advgan_models.spectral_layers(self.classifier)
        self.schedule = learning_rate_schedule(o.learning_rate, o.lr_boundaries, o.lr_decay, o.train_steps)
        # [authors' code] finetune.py: Adam at 1e-3 with PyTorch's default betas (0.9, 0.999).
        self.optimizers["discriminator"] = keras.optimizers.Adam(
            learning_rate=lambda: self.schedule(self.step), name="discriminator_adam"
        )
        self.optimizers["discriminator"].build(self._train_vars)
        self._eval_fn = None
        self._eval_order = {}

    @property
    def discriminator(self) -> keras.Model:
        return self.networks["discriminator"]

    def learning_rates(self) -> Dict[str, float]:
        return {"train/learning_rate": float(self.schedule(self.step))}

    def _logits(self, x: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.classifier(x, training=False), tf.float32)

    def _attack(self, images: tf.Tensor, labels: tf.Tensor, purpose: int) -> tf.Tensor:
        p = self.params
        return attacks.pgd(
            self._logits,
            images,
            labels,
            eps=p.eps,
            step_size=p.attack_step_size,
            num_steps=p.attack_steps,
            random_start=p.attack_random_start,
            seed=self._seed(purpose),
        )

    def _train_logits(self, x: tf.Tensor) -> tf.Tensor:
        """Logits in the update's mode: batch norm's batch statistics (authors); sngan: inference mode."""
        return tf.cast(self.classifier(x, training=not self._spectral), tf.float32)

    def _generated_batch(self, n: tf.Tensor) -> Optional[Tuple[tf.Tensor, tf.Tensor]]:
        """(attacked generated images, their labels) for eq. 10's second term, or None (PGD-AT)."""
        del n
        return None

    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant) -> Dict[str, tf.Tensor]:
        """One update of the trunk and class head on PGD-attacked real images (and generated ones).

        Without generated images (``_generated_batch`` None: ``advgan_pgd_at``)
        the loss is xent(f(x_adv), y); with them (``advgan_finetune``) eq. 10,
        ``advgan_losses.finetune_loss`` with ``--lambda_fake``.
        """
        del variant
        real, labels = batch
        real = tf.cast(real, tf.float32)
        labels = tf.cast(labels, tf.int32)
        scale = 1.0 / self.global_batch_size
        advgan_models.spectral_normalize(self._spectral)
        real_adv = self._attack(real, labels, _ATTACK_SEED)
        generated = self._generated_batch(tf.shape(real)[0])
        with tf.GradientTape() as tape:
            real_logits = self._train_logits(real_adv)
            if generated is None:
                xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=real_logits)
                parts = {"total": xent, "real": xent}
            else:
                fake_adv, fake_labels = generated
                fake_logits = self._train_logits(fake_adv)
                parts = advgan_losses.finetune_loss(
                    real_logits, labels, fake_logits, fake_labels, self.params.lambda_fake
                )
            loss = tf.reduce_sum(parts["total"]) * scale
            total = loss + self._weight_decay(self.classifier)
        grads = tape.gradient(total, self._train_vars)
        self.optimizers["discriminator"].apply_gradients(zip(grads, self._train_vars))
        metrics = {
            "train/loss": parts["total"],
            "train/xent_real": parts["real"],
            "train/accuracy_real": _accuracy(real_logits, labels),
        }
        if generated is not None:
            metrics["train/xent_fake"] = parts["fake"]
            metrics["train/accuracy_fake"] = _accuracy(fake_logits, fake_labels)
        self.metrics.update(metrics)
        return {"loss": loss}

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        adv = attacks.pgd(
            self._logits,
            images,
            labels,
            self.params.eps,
            self.params.attack_step_size,
            self.params.attack_steps,
            random_start=False,
        )
        return {"images/x": images, "images/x_attacked": adv}

    def _llv(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Per image ||d xent(f(x), y) / d x||_2 at x (the paper's local Lipschitz value)."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=self._logits(images))
        grad = tape.gradient(xent, images)
        return tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(grad, [tf.shape(grad)[0], -1])), axis=1))

    def _eval_batch(self, images, labels, index, steps: int, attacked: int):
        """[clean correct, LLV sum, PGD correct (first ``attacked`` images)] of one batch."""
        labels = tf.cast(labels, tf.int32)
        clean = tf.reduce_sum(_accuracy(self._logits(images), labels))
        llv = tf.reduce_sum(self._llv(images, labels))
        if not steps:
            return tf.stack([clean, llv, 0.0])
        eps = self.params.eps
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.config.seed, _EVAL_SEED], tf.int64), index
        )
        x, y = images[:attacked], labels[:attacked]
        adv = attacks.pgd(self._logits, x, y, eps, eps / 4, steps, random_start=True, seed=seed)
        return tf.stack([clean, llv, tf.reduce_sum(_accuracy(self._logits(adv), y))])

    def _evaluate_split(self, split: str, num_examples: int) -> Dict[str, float]:
        r = self.config.runtime
        steps = r.eval_pgd_steps if self.params.eps > 0 else 0
        attacked = min(num_examples, r.eval_pgd_examples) if steps else 0
        if self._eval_fn is None:
            self._eval_fn = tf.function(self._eval_batch)
        if split not in self._eval_order:
            self._eval_order[split] = data.resolve_example_order(self.config.data, split, "auto").name
        sums = np.zeros(3)
        total = 0
        batches = data.make_eval_dataset(
            self.config.data, batch_size=256, num_examples=num_examples, split=split, order=self._eval_order[split]
        )
        for i, (images, labels) in enumerate(batches):
            n = int(labels.shape[0])
            k = max(0, min(n, attacked - total))
            sums += self._eval_fn(images, labels, tf.constant(i, tf.int64), steps if k else 0, k).numpy()
            total += n
        suffix = "" if split == "test" else f"_{split}"
        out = {
            f"eval/clean_accuracy{suffix}": sums[0] / max(total, 1),
            f"eval/llv{'_test' if split == 'test' else suffix}": sums[1] / max(total, 1),
        }
        if attacked:
            out[f"eval/pgd{steps}_accuracy{suffix}"] = sums[2] / min(attacked, max(total, 1))
        return out

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        """Clean accuracy, PGD accuracy and LLV of the class head on the first test and training images.

        PGD: ``--eval_pgd_steps`` sign steps of eps/4 from a seeded random
        start, on the first ``--eval_pgd_examples`` of them (as the classifier
        mode). Test: ``eval/clean_accuracy``, ``eval/pgd<k>_accuracy``,
        ``eval/llv_test``; training images (the first ``num_examples`` of the
        training split, unaugmented): the same names with ``_train``.
        """
        out = self._evaluate_split("test", num_examples)
        if num_examples:
            out.update(self._evaluate_split("train", num_examples))
        return {k: float(v) for k, v in out.items()}

    def _export_metadata(self, metadata: Mapping[str, Any]) -> Dict[str, Any]:
        return dict(metadata)

    def export(
        self, export_dir: str, metadata: Mapping[str, Any], evaluation: Mapping[str, float], num_examples: int
    ) -> None:
        """Exports the class head as a classifier (SavedModel, classifier.keras, metadata.json)."""
        metadata = self._export_metadata(metadata)
        test_only = {k: v for k, v in evaluation.items() if not k.endswith("_train")}
        metadata = classifier_export_metadata(
            metadata, test_only, num_examples, self.params.eps, self.config.runtime
        )
        train = {k.split("/", 1)[1]: v for k, v in evaluation.items() if k.endswith("_train")}
        if train:
            metadata["train_split"] = {**train, "num_train_examples": num_examples}
        if "eval/llv_test" in evaluation:
            metadata["llv_test"] = evaluation["eval/llv_test"]
        export.export_classifier(self.classifier, export_dir, self.info.image_shape, metadata)


@register_trainer("advgan_finetune")
class AdvGANFinetuneTrainer(_ConditionalSampling, _ClassHeadTrainer):
    """Eq. 10: the co-trained discriminator's class head on attacked real and generated images."""

    metric_names = (
        "train/loss",
        "train/xent_real",
        "train/xent_fake",
        "train/accuracy_real",
        "train/accuracy_fake",
    )
    progress_metrics = ("train/xent_real", "train/accuracy_real", "train/accuracy_fake")

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        self.params: AdvGANFinetuneConfig = config.mode_config
        p = self.params
        self.init_config = p.init_run_config()
        # The co-training run's networks (a config.json without --advgan_discriminator: legacy).
        cotraining = p.cotraining_section()
        self.latent_dim = cotraining.latent_dim
        channels = cotraining.gan_channels
        generators = advgan_models.build_generators(
            self.latent_dim, info.image_shape, info.num_classes, channels
        )
        self.networks["discriminator"] = advgan_models.build_discriminator(
            info.image_shape, info.num_classes, channels, kind=cotraining.advgan_discriminator
        )
        self.networks["generator"] = generators["conditional"]  # frozen: no optimizer
        self._init_class_head()
        # The co-training weights; the loop then restores this run's own
        # checkpoint over them when it resumes.
        self.init_checkpoint = restore_cotraining(p.init_from, self.generator, self.discriminator)
        self._init_sampling(self.latent_dim, config.seed)

    @property
    def generator(self) -> keras.Model:
        return self.networks["generator"]

    def _generated_batch(self, n: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Class-conditional samples of the frozen generator (inference mode), PGD-attacked."""
        fake_labels = tf.random.stateless_uniform(
            tf.reshape(n, [1]),
            self._seed(_LABEL_SEED),
            minval=0,
            maxval=self.info.num_classes,
            dtype=tf.int32,
        )
        z = tf.random.stateless_normal(tf.stack([n, self.latent_dim]), self._seed(_LATENT_SEED))
        fake = tf.stop_gradient(self.generator([z, fake_labels], training=False))
        # lambda 0 (plain PGD-AT of the class head): the generated images weigh nothing; skip their attack.
        if self.params.lambda_fake > 0:
            fake = self._attack(fake, fake_labels, _FAKE_ATTACK_SEED)
        return fake, fake_labels

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {**super().summary_images(images, labels), **self._sample_grid_images()}

    def _export_metadata(self, metadata: Mapping[str, Any]) -> Dict[str, Any]:
        out = dict(metadata)
        out["init_from"] = {"model_dir": self.params.init_from, "checkpoint": self.init_checkpoint}
        return out


@register_trainer("advgan_pgd_at")
class AdvGANPGDATTrainer(_ClassHeadTrainer):
    """The paper's baseline: PGD adversarial training of the discriminator's trunk and class head.

    Rob-GAN compares with Madry et al.'s adversarial training "keeping
    hyperparameters and network structure unchanged" [paper]. This trains,
    from a random initialisation, the same network ``--mode=advgan_finetune``
    exports (``--advgan_discriminator`` and ``--gan_channels``: the trunk and
    the class head; the source head is built but neither trained nor used)
    on xent(f(x_adv), y), x_adv the PGD attack of ``--attack_*`` on the real
    batch: eq. 10 with lambda = 0 and no co-training. Same optimizer,
    attack, evaluation and export as the fine-tuning.
    """

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        self.params: AdvGANPGDATConfig = config.mode_config
        p = self.params
        self.networks["discriminator"] = advgan_models.build_discriminator(
            info.image_shape, info.num_classes, p.gan_channels, kind=p.advgan_discriminator
        )
        self._init_class_head()
