"""The ``gan`` mode: GANs with robust discriminators (Zhou & Kraehenbuehl, ICLR 2019).

``GANTrainer`` trains the residual generator and discriminator of
``jarn_tf.gan.models`` on the objective of ``jarn_tf.gan.losses`` (gan,
lsgan or wgan) with one of the discriminator regularisers (none, instance
noise, gradient penalty, AR, RFM), on the settings of ``config.GANConfig``.

One training step is one discriminator update on one batch of real images;
the generator is updated after every ``disc_steps``-th discriminator update
(a step variant, so the schedule needs no control flow). Both networks use
Adam (paper: 2e-4, betas (0, 0.9)) at ``--learning_rate`` with the usual
``--lr_boundaries`` schedule (none by default in this mode) and weight decay
``--weight_decay`` on their kernels. The export is the generator.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Dict, Mapping, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf.core import data, export
from jarn_tf.gan import losses as gan_losses, models as gan_models, regularizers as gan_regularizers
from jarn_tf.config import ExperimentConfig, GANConfig
from jarn_tf.core.data import DatasetInfo
from jarn_tf.core.trainer import Trainer, learning_rate_schedule, register_trainer

_LATENT_SEED = 11
_GEN_LATENT_SEED = 12
_NOISE_SEED = 13
_PENALTY_SEED = 14
_FIXED_LATENT_SEED = 15
_EVAL_LATENT_SEED = 16
NUM_GRID = 64


@dataclasses.dataclass(frozen=True)
class GANVariant:
    """Static flavour of a GAN step: whether the generator is updated after D."""

    update_generator: bool = True


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles [N, H, W, C] images into one [rows*H, columns*W, C] image (1-pixel white gaps)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), images.dtype)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = images[i]
    return grid


def png_bytes(images: np.ndarray, columns: int = 8) -> bytes:
    """A PNG of the grid of [0, 1] images."""
    grid = np.clip(image_grid(np.asarray(images, np.float32), columns), 0.0, 1.0)
    return tf.io.encode_png(tf.constant(np.round(grid * 255).astype(np.uint8))).numpy()


class GANNetworks:
    """What the ``gan`` and ``advgan`` trainers share: the generator and discriminator in
    ``self.networks``, one Adam each on the common learning-rate schedule, and the training-time
    FCD network (loaded and checked at construction, before any training)."""

    @property
    def generator(self) -> keras.Model:
        return self.networks["generator"]

    @property
    def discriminator(self) -> keras.Model:
        return self.networks["discriminator"]

    def _init_gan_optimizers(self, p: Any, o: Any) -> None:
        """Adam for each network; ``p``: the mode's config (``adam_beta1/2``), ``o``: the optimizer's."""
        self.schedule = learning_rate_schedule(o.learning_rate, o.lr_boundaries, o.lr_decay, o.train_steps)
        for name in ("generator", "discriminator"):
            self.optimizers[name] = keras.optimizers.Adam(
                learning_rate=lambda: self.schedule(self.step),
                beta_1=p.adam_beta1,
                beta_2=p.adam_beta2,
                name=f"{name}_adam",
            )
        self._build_optimizers()

    def _init_training_fcd(self, p: Any) -> None:
        self._fcd = None  # gan_metrics.TrainingFCD: its network is loaded and checked now, before training
        if p.fcd_network:
            from jarn_tf.gan import metrics as gan_metrics

            self._fcd = gan_metrics.TrainingFCD(p.fcd_network, p.fcd_samples)
            self._fcd.check()

    def learning_rates(self) -> Dict[str, float]:
        return {"train/learning_rate": float(self.schedule(self.step))}


@register_trainer("gan")
class GANTrainer(GANNetworks, Trainer):
    """Generator and (optionally robust) discriminator of the ``gan`` mode."""

    metric_names = (
        "train/d_loss",
        "train/g_loss",
        "train/objective",
        "train/regularizer",
        "train/d_real",
        "train/d_fake",
    )
    progress_metrics = ("train/d_loss", "train/g_loss", "train/regularizer")

    @classmethod
    def check_image_shape(cls, config: ExperimentConfig, image_shape: Tuple[int, int, int]) -> None:
        """The gan mode builds its own networks (``gan_models``); the classifier's fields are unused."""
        gan_models.gan_stages(image_shape)

    def __init__(self, config: ExperimentConfig, info: DatasetInfo, strategy: tf.distribute.Strategy):
        super().__init__(config, info, strategy)
        self.params: GANConfig = config.mode_config
        p, o = self.params, config.optimizer
        self.networks["generator"] = gan_models.build_generator(
            p.latent_dim,
            info.image_shape,
            p.gan_channels,
            **gan_models.network_options(p.gan_block, p.gan_activation, p.gan_norm),
        )
        self.networks["discriminator"] = gan_models.build_gan_discriminator(
            info.image_shape,
            p.gan_channels,
            **gan_models.network_options(p.gan_block, p.gan_activation, p.gan_norm),
        )
        # w of RFM's alpha ||w||^2 (eq. 5).
        self._w = gan_models.last_linear_kernel(self.discriminator) if p.disc_reg == "rfm" else None
        self._init_gan_optimizers(p, o)
        self._fixed_latent = tf.random.stateless_normal(
            [NUM_GRID, p.latent_dim], tf.constant([config.seed, _FIXED_LATENT_SEED], tf.int64)
        )
        self._init_training_fcd(p)
        self._sample_fn = None

    # -- the step --------------------------------------------------------------
    def variant(self, step: int) -> GANVariant:
        k = self.params.disc_steps
        return GANVariant(update_generator=(step + 1) % k == 0)

    def _score(self, x: tf.Tensor) -> tf.Tensor:
        score, _ = self.discriminator(x, training=True)
        return tf.cast(tf.reshape(score, [-1]), tf.float32)

    def _phi(self, x: tf.Tensor) -> tf.Tensor:
        _, features = self.discriminator(x, training=True)
        return tf.cast(features, tf.float32)

    def _noisy(self, x: tf.Tensor, purpose: int) -> tf.Tensor:
        p = self.params
        if p.disc_reg == "instance_noise" and p.noise_sigma > 0:
            return gan_regularizers.instance_noise(x, p.noise_sigma, self._seed(purpose))
        return x

    def _latent(self, n: tf.Tensor, purpose: int) -> tf.Tensor:
        return tf.random.stateless_normal(tf.stack([n, self.params.latent_dim]), self._seed(purpose))

    def replica_step(self, batch: Tuple[tf.Tensor, tf.Tensor], variant: GANVariant) -> Dict[str, tf.Tensor]:
        p = self.params
        real, _ = batch
        real = tf.cast(real, tf.float32)
        n = tf.shape(real)[0]
        scale = 1.0 / self.global_batch_size
        fake = tf.stop_gradient(self.generator(self._latent(n, _LATENT_SEED), training=True))
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            d_real = self._score(self._noisy(real, _NOISE_SEED))
            fake_in = self._noisy(fake, _NOISE_SEED + 100)
            d_fake, phi_fake = self.discriminator(fake_in, training=True)
            d_fake = tf.cast(tf.reshape(d_fake, [-1]), tf.float32)
            phi_fake = tf.cast(phi_fake, tf.float32)
            # ar and rfm reuse this pass (their inputs are noise-free: instance noise is another --disc_reg).
            d_loss_i = gan_losses.discriminator_loss(p.gan_loss, d_real, d_fake)
            reg_i, weight = gan_regularizers.configured_regularizer(
                p,
                self._score,
                self._phi,
                real,
                fake,
                self._seed(_PENALTY_SEED),
                loss=p.gan_loss,
                w=self._w,
                fake_score=d_fake,
                fake_features=phi_fake,
            )
            d_loss = tf.reduce_sum(d_loss_i) * scale
            reg = tf.reduce_sum(reg_i) * scale
            total = d_loss + weight * reg + self._weight_decay(self.discriminator)
        grads = tape.gradient(total, d_vars)
        self.optimizers["discriminator"].apply_gradients(zip(grads, d_vars))
        values = {
            "train/d_loss": d_loss_i,
            "train/objective": -d_loss_i,
            "train/regularizer": reg_i,
            "train/d_real": d_real,
            "train/d_fake": d_fake,
        }
        out = {"d_loss": d_loss, "regularizer": reg}
        if variant.update_generator:
            g_vars = self.generator.trainable_variables
            with tf.GradientTape() as tape:
                generated = self.generator(self._latent(n, _GEN_LATENT_SEED), training=True)
                score = self._score(self._noisy(generated, _NOISE_SEED + 200))
                g_loss_i = gan_losses.generator_loss(p.gan_loss, score, p.gan_generator_loss)
                g_loss = tf.reduce_sum(g_loss_i) * scale
                g_total = g_loss + self._weight_decay(self.generator)
            grads = tape.gradient(g_total, g_vars)
            self.optimizers["generator"].apply_gradients(zip(grads, g_vars))
            values["train/g_loss"] = g_loss_i
            out["g_loss"] = g_loss
        self.metrics.update(values)
        return out

    # -- images, evaluation, export -------------------------------------------
    def sample(self, latent: tf.Tensor) -> tf.Tensor:
        """Images of the generator in inference mode (batch norm's moving statistics)."""
        return self.generator(latent, training=False)

    def summary_images(self, images: tf.Tensor, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        del labels
        samples = self.sample(self._fixed_latent)
        grid = tf.numpy_function(lambda x: image_grid(x), [samples], tf.float32)
        return {"images/real": images, "images/samples": samples, "images/sample_grid": grid[None]}

    def samples_png(self) -> bytes:
        """A PNG grid of the generator's samples of the fixed latents."""
        return png_bytes(self.sample(self._fixed_latent).numpy())

    def _generate(self, num: int, seed: int, batch_size: int = 500) -> np.ndarray:
        if self._sample_fn is None:
            self._sample_fn = tf.function(self.sample)
        out = []
        key = tf.constant([seed, _EVAL_LATENT_SEED], tf.int64)
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            z = tf.random.stateless_normal(
                [n, self.params.latent_dim], tf.random.experimental.stateless_fold_in(key, start)
            )
            out.append(self._sample_fn(z).numpy())
        return np.concatenate(out)

    def evaluate(self, num_examples: int) -> Dict[str, float]:
        """The discriminator's mean scores on test and generated images, and FCD.

        FCD (Frechet classifier distance) and the classifier score are measured
        when ``--fcd_network`` names a classifier export: ``fcd_samples``
        generated images (the same latents at every evaluation) against the
        first ``fcd_samples`` test images, features from that classifier's
        penultimate layer. Not FID: see ``jarn_tf.evaluate_gan``.
        """
        p = self.params
        images, _ = data.load_arrays(self.config.data, "test")
        n = min(num_examples, len(images)) if num_examples else 0
        out: Dict[str, float] = {}
        if n:
            real = images[:n].astype(np.float32) / 255.0
            fake = self._generate(n, self.config.seed)
            score = lambda x: self.discriminator(x, training=False)[0]  # noqa: E731
            out["eval/d_real"] = float(
                np.mean(np.concatenate([score(b) for b in np.array_split(real, -(-n // 256))]))
            )
            out["eval/d_fake"] = float(
                np.mean(np.concatenate([score(b) for b in np.array_split(fake, -(-n // 256))]))
            )
        if p.fcd_network:
            out.update(self._fcd.measure(images, lambda k: self._generate(k, self.config.seed + 1)))
        return out

    def export(
        self, export_dir: str, metadata: Mapping[str, Any], evaluation: Mapping[str, float], num_examples: int
    ) -> None:
        """Exports the generator (SavedModel latent -> images, generator.keras, metadata, samples.png)."""
        metadata = dict(metadata)
        if "eval/fcd" in evaluation:
            metadata["fcd"] = {
                "value": evaluation["eval/fcd"],
                "classifier_score": evaluation.get("eval/classifier_score"),
                "classifier_score_splits": self._fcd.score_splits if self._fcd is not None else None,
                "feature_network": self.params.fcd_network,
                "num_samples": self.params.fcd_samples,
                "reference": f"first {self.params.fcd_samples} test images",
            }
        export.export_generator(
            self.generator,
            export_dir,
            self.params.latent_dim,
            self.info.image_shape,
            metadata,
            samples_png=self.samples_png(),
            discriminator=self.discriminator,
        )
