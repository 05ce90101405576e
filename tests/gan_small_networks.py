"""Small generator and discriminator with the interface of jarn_tf.gan.models' networks.

Tracing a step of the residual networks costs ~15 s on one CPU core, so the GAN trainer tests
monkeypatch ``gan_models.build_generator`` / ``build_gan_discriminator`` with these: the step,
the regularisers, the checkpoints and the loop are the same code.
"""

from __future__ import annotations

import keras


def small_generator(latent_dim, image_shape, channels=4, name="generator", **options):
    """latent -> [N, 28, 28, C] images in [0, 1]; one batch norm (so training mode matters)."""
    del options  # the block / activation / norm options of the real builder
    z = keras.Input((latent_dim,), name="latent")
    x = keras.layers.Dense(7 * 7 * channels, name="linear")(z)
    x = keras.layers.Reshape((7, 7, channels))(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.UpSampling2D(4)(x)
    x = keras.layers.Conv2D(image_shape[-1], 3, padding="same", activation="sigmoid", name="images")(x)
    return keras.Model(z, x, name=name)


def small_discriminator(image_shape, channels=4, name="gan_discriminator", **options):
    """images -> (score [N, 1], features [N, channels]); non-linear (tanh), no normalisation, so
    D(x) does not depend on the batch; the last layer is named ``score`` as RFM needs."""
    del options
    images = keras.Input(tuple(image_shape))
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="tanh", name="conv")(images)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(images, [keras.layers.Dense(1, name="score")(features), features], name=name)
