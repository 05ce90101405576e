"""The networks of the ``gan`` mode: Table 3 of Zhou & Kraehenbuehl (ICLR 2019).

Generator (Appendix C, Table 3a; pre-activation batch norm + ReLU):
  latent z (128) -> linear -> reshape to base x base x C -> 2 residual blocks
  -> k x [nearest-neighbour upsample x2, residual block] -> batch norm + ReLU
  -> 1x1 conv -> sigmoid, so images are in [0, 1].
Discriminator (Table 3b; pre-activation instance norm + leaky ReLU 0.2):
  image -> 3x3 conv -> residual block -> k x [average-pool /2, residual
  block] -> 3 more residual blocks -> instance norm + leaky ReLU -> global
  average pooling (the penultimate features phi) -> linear to 1 (w).

The paper's CIFAR-10 networks (32 x 32) have base 4 and k = 3. The stage
count is derived from the image size: the image side is halved while it is
even and larger than 4, so 32 -> 4 (k = 3, the paper's), 64 -> 4 (k = 4:
"a few more up-sampling blocks" for CelebA), and 28 -> 14 -> 7 (k = 2) for
(Fashion-)MNIST: one stage fewer than CIFAR-10, at base 7.

The final batch norm + ReLU before the generator's 1x1 conv, and the final
instance norm + leaky ReLU before the pooling, are not rows of Table 3; a
pre-activation residual stack needs them (the sum leaves each block
un-normalised), as in the WGAN-GP networks the paper builds on.

Every layer is a stock Keras layer (instance norm is
``GroupNormalization(groups=-1)``), so an exported generator loads without
this package under any Keras backend.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import keras

LEAKY_SLOPE = 0.2


def gan_stages(image_shape: Sequence[int]) -> Tuple[int, int]:
    """(base side, number of up/down-sampling stages) for square images.

    Raises:
      ValueError: for non-square images or a side that cannot be halved once.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, _ = image_shape
    if h != w:
        raise ValueError(f"--mode=gan needs square images, got {h}x{w}")
    base, stages = h, 0
    while base % 2 == 0 and base > 4:
        base //= 2
        stages += 1
    if stages == 0:
        raise ValueError(f"--mode=gan needs an image side that halves at least once to >= 3, got {h}")
    return base, stages


def _conv(channels: int, kernel: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(channels, kernel, padding="same", kernel_initializer="he_uniform", name=name)


def _residual_block(x, channels: int, norm: str, name: str):
    """Pre-activation residual block: (norm, act, conv3x3) x 2 plus the identity."""
    h = x
    for i in (1, 2):
        if norm == "batch":
            h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn{i}")(h)
            h = keras.layers.ReLU(name=f"{name}_relu{i}")(h)
        else:
            h = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=f"{name}_in{i}")(h)
            h = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_lrelu{i}")(h)
        h = _conv(channels, 3, f"{name}_conv{i}")(h)
    return keras.layers.Add(name=f"{name}_add")([x, h])


def build_generator(
    latent_dim: int, image_shape: Sequence[int], channels: int = 128, name: str = "generator"
) -> keras.Model:
    """The residual generator: ``latent`` [N, latent_dim] -> images [N, H, W, C] in [0, 1].

    Args:
      latent_dim: dimension of z (paper: 128).
      image_shape: (H, W, C) of the images, square.
      channels: channels of every layer (paper: 128).
      name: model name.
    """
    base, stages = gan_stages(image_shape)
    z = keras.Input(shape=(latent_dim,), dtype="float32", name="latent")
    x = keras.layers.Dense(base * base * channels, kernel_initializer="he_uniform", name="linear")(z)
    x = keras.layers.Reshape((base, base, channels), name="reshape")(x)
    x = _residual_block(x, channels, "batch", "block0")
    x = _residual_block(x, channels, "batch", "block1")
    for s in range(stages):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{s}")(x)
        x = _residual_block(x, channels, "batch", f"up{s}_block")
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.Conv2D(image_shape[-1], 1, kernel_initializer="glorot_uniform", name="to_image")(x)
    images = keras.layers.Activation("sigmoid", dtype="float32", name="images")(x)
    return keras.Model(z, images, name=name)


def build_gan_discriminator(
    image_shape: Sequence[int], channels: int = 128, name: str = "gan_discriminator"
) -> keras.Model:
    """The residual discriminator: images -> (score [N, 1], features phi [N, channels]).

    ``score = w . phi + b`` (the layer named ``score``); ``phi`` is the
    global average pooling of the last block (the penultimate features of
    robust feature matching).
    """
    _, stages = gan_stages(image_shape)
    images = keras.Input(shape=tuple(image_shape), dtype="float32", name="images")
    x = _conv(channels, 3, "conv_in")(images)
    x = _residual_block(x, channels, "instance", "block0")
    for s in range(stages):
        x = keras.layers.AveragePooling2D(2, name=f"down{s}")(x)
        x = _residual_block(x, channels, "instance", f"down{s}_block")
    for i in range(3):
        x = _residual_block(x, channels, "instance", f"extra{i}")
    x = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name="final_in")(x)
    x = keras.layers.LeakyReLU(LEAKY_SLOPE, name="final_lrelu")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    score = keras.layers.Dense(1, kernel_initializer="glorot_uniform", dtype="float32", name="score")(
        features
    )
    return keras.Model(images, [score, features], name=name)


def last_linear_kernel(discriminator: keras.Model):
    """w of ``D(x) = w . phi(x)``: the kernel of the layer named ``score``.

    Raises:
      ValueError: when the discriminator has no such layer (robust feature
        matching needs a penultimate layer and a last linear layer).
    """
    try:
        return discriminator.get_layer("score").kernel
    except ValueError:
        raise ValueError(
            f"--disc_reg=rfm needs a discriminator with penultimate features and a last linear layer "
            f"named 'score'; {discriminator.name} has none"
        ) from None
