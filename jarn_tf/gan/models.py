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

Options for the random setups of the paper's Table 2 ("network blocks
(vanilla convolution, ResNet) ... nonlinearities (ReLU, Leaky ReLU, Tanh)
and normalizations (BatchNorm, InstanceNorm, none)"), the keyword arguments
of both builders (flags ``--gan_block``, ``--gan_activation``, ``--gan_norm``):
  block       ``resnet`` (default): the pre-activation residual block above;
              ``vanilla``: the same two (norm, nonlinearity, conv3x3) layers
              without the identity shortcut. [ours] The paper names
              "vanilla convolution" blocks without defining them.
  activation  None (default): the paper's, ReLU in G and leaky ReLU 0.2 in D;
              or ``relu``, ``leaky_relu`` (slope 0.2) or ``tanh`` in every
              block and in the last nonlinearity of that network.
  norm        None (default): the paper's, batch norm in G and instance norm
              in D; or ``batch``, ``instance`` or ``none`` (no normalisation
              layer) in every block and in the last normalisation.
The defaults build exactly the networks above (same layers, names and
initial weights for a seed). The names of the options are in
``jarn_tf.config`` (which must not import Keras) and re-exported here:
``GAN_BLOCKS``, ``GAN_ACTIVATIONS``, ``GAN_NORMS``.

Every layer is a stock Keras layer (instance norm is
``GroupNormalization(groups=-1)``), so an exported generator loads without
this package under any Keras backend.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import keras

from jarn_tf.config import GAN_ACTIVATIONS, GAN_BLOCKS, GAN_NORMS, GAN_PAPER_OPTION

LEAKY_SLOPE = 0.2
# The paper's choices (Appendix C): (activation, norm) of each network.
GENERATOR_DEFAULTS = ("relu", "batch")
DISCRIMINATOR_DEFAULTS = ("leaky_relu", "instance")
# Layer-name suffix of each normalisation and nonlinearity (the paper's
# networks' names: ``block0_bn1``, ``block0_relu1``, ``block0_in1``, ...).
_NORM_TAGS = {"batch": "bn", "instance": "in"}
_ACTIVATION_TAGS = {"relu": "relu", "leaky_relu": "lrelu", "tanh": "tanh"}


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


def _check_option(option: str, value: Optional[str], allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"Unknown GAN network option {option}={value!r}; choose one of {tuple(allowed)}")


def _options(
    block: str, activation: Optional[str], norm: Optional[str], defaults: Tuple[str, str]
) -> Tuple[str, str, str]:
    """Checks the options and resolves None to the network's paper choice: (block, activation, norm)."""
    _check_option("block", block, GAN_BLOCKS)
    _check_option("activation", activation, GAN_ACTIVATIONS)
    _check_option("norm", norm, GAN_NORMS)
    return block, activation or defaults[0], norm or defaults[1]


def network_options(
    block: str = "resnet", activation: str = GAN_PAPER_OPTION, norm: str = GAN_PAPER_OPTION
) -> Dict[str, str]:
    """Keyword arguments of both builders for the flags ``--gan_block/activation/norm``.

    ``paper`` maps to None (each network's own paper choice). Options at
    their default are left out, so the paper's networks are built by a call
    without options (which drop-in builders of the same positional interface,
    such as the tests' small networks, also accept).
    """
    out: Dict[str, str] = {}
    if block != "resnet":
        out["block"] = block
    if activation != GAN_PAPER_OPTION:
        out["activation"] = activation
    if norm != GAN_PAPER_OPTION:
        out["norm"] = norm
    return out


def _norm_act(x, norm: str, activation: str, name: str, suffix: str = ""):
    """Normalisation (``none``: no layer) then nonlinearity, named ``{name}_{tag}{suffix}``."""
    if norm != "none":
        norm_name = f"{name}_{_NORM_TAGS[norm]}{suffix}"
        if norm == "batch":
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=norm_name)(x)
        else:
            x = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=norm_name)(x)
    act_name = f"{name}_{_ACTIVATION_TAGS[activation]}{suffix}"
    if activation == "relu":
        return keras.layers.ReLU(name=act_name)(x)
    if activation == "leaky_relu":
        return keras.layers.LeakyReLU(LEAKY_SLOPE, name=act_name)(x)
    return keras.layers.Activation("tanh", name=act_name)(x)


def _residual_block(x, channels: int, norm: str, activation: str, name: str, block: str = "resnet"):
    """Pre-activation residual block: (norm, act, conv3x3) x 2 plus the identity.

    ``block="vanilla"``: the same layers without the identity ([ours]);
    ``norm="none"``: no normalisation layers.
    """
    h = x
    for i in (1, 2):
        h = _norm_act(h, norm, activation, name, str(i))
        h = _conv(channels, 3, f"{name}_conv{i}")(h)
    if block == "vanilla":
        return h
    return keras.layers.Add(name=f"{name}_add")([x, h])


def build_generator(
    latent_dim: int,
    image_shape: Sequence[int],
    channels: int = 128,
    name: str = "generator",
    *,
    block: str = "resnet",
    activation: Optional[str] = None,
    norm: Optional[str] = None,
) -> keras.Model:
    """The residual generator: ``latent`` [N, latent_dim] -> images [N, H, W, C] in [0, 1].

    Args:
      latent_dim: dimension of z (paper: 128).
      image_shape: (H, W, C) of the images, square.
      channels: channels of every layer (paper: 128).
      name: model name.
      block: ``resnet`` (the paper's) or ``vanilla`` (no identity shortcut; [ours]:
        the paper's Table 2 names "vanilla convolution" blocks without defining them).
      activation: None (the paper's ReLU) or one of ``GAN_ACTIVATIONS``, in every
        block and before the 1x1 conv.
      norm: None (the paper's batch norm) or one of ``GAN_NORMS``, in every block
        and before the 1x1 conv.

    Raises:
      ValueError: for an unknown option, naming it and the allowed values.
    """
    block, activation, norm = _options(block, activation, norm, GENERATOR_DEFAULTS)
    base, stages = gan_stages(image_shape)
    z = keras.Input(shape=(latent_dim,), dtype="float32", name="latent")
    x = keras.layers.Dense(base * base * channels, kernel_initializer="he_uniform", name="linear")(z)
    x = keras.layers.Reshape((base, base, channels), name="reshape")(x)
    x = _residual_block(x, channels, norm, activation, "block0", block)
    x = _residual_block(x, channels, norm, activation, "block1", block)
    for s in range(stages):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{s}")(x)
        x = _residual_block(x, channels, norm, activation, f"up{s}_block", block)
    x = _norm_act(x, norm, activation, "final")
    x = keras.layers.Conv2D(image_shape[-1], 1, kernel_initializer="glorot_uniform", name="to_image")(x)
    images = keras.layers.Activation("sigmoid", dtype="float32", name="images")(x)
    return keras.Model(z, images, name=name)


def build_gan_discriminator(
    image_shape: Sequence[int],
    channels: int = 128,
    name: str = "gan_discriminator",
    *,
    block: str = "resnet",
    activation: Optional[str] = None,
    norm: Optional[str] = None,
) -> keras.Model:
    """The residual discriminator: images -> (score [N, 1], features phi [N, channels]).

    ``score = w . phi + b`` (the layer named ``score``); ``phi`` is the
    global average pooling of the last block (the penultimate features of
    robust feature matching).

    Args:
      image_shape: (H, W, C) of the images, square.
      channels: channels of every layer (paper: 128).
      name: model name.
      block: ``resnet`` (the paper's) or ``vanilla`` (no identity shortcut; [ours]:
        the paper's Table 2 names "vanilla convolution" blocks without defining them).
      activation: None (the paper's leaky ReLU 0.2) or one of ``GAN_ACTIVATIONS``,
        in every block and before the pooling.
      norm: None (the paper's instance norm) or one of ``GAN_NORMS``, in every
        block and before the pooling.

    Raises:
      ValueError: for an unknown option, naming it and the allowed values.
    """
    block, activation, norm = _options(block, activation, norm, DISCRIMINATOR_DEFAULTS)
    _, stages = gan_stages(image_shape)
    images = keras.Input(shape=tuple(image_shape), dtype="float32", name="images")
    x = _conv(channels, 3, "conv_in")(images)
    x = _residual_block(x, channels, norm, activation, "block0", block)
    for s in range(stages):
        x = keras.layers.AveragePooling2D(2, name=f"down{s}")(x)
        x = _residual_block(x, channels, norm, activation, f"down{s}_block", block)
    for i in range(3):
        x = _residual_block(x, channels, norm, activation, f"extra{i}", block)
    x = _norm_act(x, norm, activation, "final")
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
