"""The networks of the ``advgan`` modes (Rob-GAN: "From Adversarial Training to GANs").

Generator (SN-GAN's conditional ResNet generator, as the paper says; the
authors' code has no spectral norm in either network):
  latent z -> linear -> base x base x C -> k x [residual up-block with
  class-conditional batch norm] -> batch norm + ReLU -> 3x3 conv -> sigmoid,
  so images are in [0, 1] (the paper's tanh images in [-1, 1] are the same
  up to the affine map x -> (x + 1) / 2). An up-block is
  ``CBN, ReLU, upsample x2, conv3x3, CBN, ReLU, conv3x3`` plus the shortcut
  ``upsample x2, conv1x1``. Class-conditional batch norm is
  ``BatchNormalization(center=False, scale=False)`` followed by a per-class
  gain and bias, each an ``Embedding`` of the label (gain initialised to 1,
  bias to 0).
Discriminator (the authors' code: a pre-activation ResNet with leaky ReLU
  0.2 and two heads on one trunk, no normalisation):
  image -> 3x3 conv -> k x [residual down-block] -> 2 residual blocks ->
  leaky ReLU -> global average pooling (features) -> ``source`` (1 logit:
  real/fake, sigmoid = P(real)) and ``classes`` (K logits). A down-block is
  ``LReLU, conv3x3, LReLU, conv3x3, avgpool /2`` plus the shortcut
  ``conv1x1, avgpool /2``.

The stage count k and the base side follow the image size exactly as in the
``gan`` mode (``gan_models.gan_stages``): 32 -> 4 (k = 3, SN-GAN's CIFAR-10
generator), 28 -> 7 (k = 2).

Every layer is a stock Keras layer, so the exported generators and the
fine-tuned classifier load without this package under any Keras backend.
"""

from __future__ import annotations

from typing import Dict, Sequence

import keras
import numpy as np

from jarn_tf.gan_models import LEAKY_SLOPE, gan_stages


def _conv(channels: int, kernel: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(channels, kernel, padding="same", kernel_initializer="he_uniform", name=name)


class _ConditionalGenerator:
    """The generator's layers, created once and applicable to several inputs.

    The conditional model (latent, labels) and the class-marginal model
    (latent with one extra coordinate that picks the class) share every
    layer, so they are one set of weights.
    """

    def __init__(self, latent_dim: int, image_shape: Sequence[int], num_classes: int, channels: int):
        self.latent_dim, self.num_classes, self.channels = latent_dim, num_classes, channels
        self.base, self.stages = gan_stages(image_shape)
        self.image_shape = tuple(image_shape)
        b, c = self.base, channels
        self.layers: Dict[str, keras.layers.Layer] = {
            "linear": keras.layers.Dense(b * b * c, kernel_initializer="he_uniform", name="linear"),
            "reshape": keras.layers.Reshape((b, b, c), name="reshape"),
            "final_bn": keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="final_bn"),
            "final_relu": keras.layers.ReLU(name="final_relu"),
            "to_image": keras.layers.Conv2D(
                image_shape[-1], 3, padding="same", kernel_initializer="glorot_uniform", name="to_image"
            ),
            "images": keras.layers.Activation("sigmoid", dtype="float32", name="images"),
        }
        for s in range(self.stages):
            n = f"up{s}"
            self.layers.update(
                {
                    f"{n}_conv1": _conv(c, 3, f"{n}_conv1"),
                    f"{n}_conv2": _conv(c, 3, f"{n}_conv2"),
                    f"{n}_shortcut": _conv(c, 1, f"{n}_shortcut"),
                    f"{n}_up": keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{n}_up"),
                    f"{n}_up_shortcut": keras.layers.UpSampling2D(
                        2, interpolation="nearest", name=f"{n}_up_shortcut"
                    ),
                    f"{n}_add": keras.layers.Add(name=f"{n}_add"),
                }
            )
            for i in (1, 2):
                self.layers.update(self._cbn_layers(f"{n}_cbn{i}"))
                self.layers[f"{n}_relu{i}"] = keras.layers.ReLU(name=f"{n}_relu{i}")

    def _cbn_layers(self, name: str) -> Dict[str, keras.layers.Layer]:
        c, k = self.channels, self.num_classes
        return {
            f"{name}_bn": keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, center=False, scale=False, name=f"{name}_bn"
            ),
            f"{name}_gain": keras.layers.Embedding(k, c, embeddings_initializer="ones", name=f"{name}_gain"),
            f"{name}_bias": keras.layers.Embedding(k, c, embeddings_initializer="zeros", name=f"{name}_bias"),
            f"{name}_gain_4d": keras.layers.Reshape((1, 1, c), name=f"{name}_gain_4d"),
            f"{name}_bias_4d": keras.layers.Reshape((1, 1, c), name=f"{name}_bias_4d"),
            f"{name}_scale": keras.layers.Multiply(name=f"{name}_scale"),
            f"{name}_shift": keras.layers.Add(name=f"{name}_shift"),
        }

    def _cbn(self, x, labels, name: str):
        """Class-conditional batch norm: BN(x) * gain[y] + bias[y]."""
        L = self.layers
        h = L[f"{name}_bn"](x)
        gain = L[f"{name}_gain_4d"](L[f"{name}_gain"](labels))
        bias = L[f"{name}_bias_4d"](L[f"{name}_bias"](labels))
        return L[f"{name}_shift"]([L[f"{name}_scale"]([h, gain]), bias])

    def __call__(self, z, labels):
        L = self.layers
        x = L["reshape"](L["linear"](z))
        for s in range(self.stages):
            n = f"up{s}"
            h = L[f"{n}_relu1"](self._cbn(x, labels, f"{n}_cbn1"))
            h = L[f"{n}_conv1"](L[f"{n}_up"](h))
            h = L[f"{n}_relu2"](self._cbn(h, labels, f"{n}_cbn2"))
            h = L[f"{n}_conv2"](h)
            x = L[f"{n}_add"]([L[f"{n}_shortcut"](L[f"{n}_up_shortcut"](x)), h])
        x = L["final_relu"](L["final_bn"](x))
        return L["images"](L["to_image"](x))


def normal_quantiles(num_classes: int) -> list:
    """Phi^-1(k / K) for k = 1..K-1: bins of equal standard-normal mass."""
    from statistics import NormalDist

    return [float(NormalDist().inv_cdf(k / num_classes)) for k in range(1, num_classes)]


def build_generators(
    latent_dim: int, image_shape: Sequence[int], num_classes: int, channels: int = 128
) -> Dict[str, keras.Model]:
    """The class-conditional generator and its class-marginal view (shared weights).

    Returns:
      ``conditional``: (``latent`` [N, latent_dim], ``labels`` int32 [N]) ->
      images [N, H, W, C] in [0, 1]. ``marginal``: ``latent`` [N,
      latent_dim + 1] ~ N(0, I) -> images, whose first coordinate z_0 picks
      the class floor(K * Phi(z_0)) (uniform over the K classes: a stock
      ``Discretization`` at the normal quantiles) and whose other coordinates
      are the conditional generator's latent. The marginal view is what
      class-unaware tools (``jarn_tf.evaluate_gan``) sample from.
    """
    body = _ConditionalGenerator(latent_dim, image_shape, num_classes, channels)
    z = keras.Input(shape=(latent_dim,), dtype="float32", name="latent")
    labels = keras.Input(shape=(), dtype="int32", name="labels")
    conditional = keras.Model([z, labels], body(z, labels), name="conditional_generator")

    full = keras.Input(shape=(latent_dim + 1,), dtype="float32", name="latent")
    column = keras.layers.Reshape((latent_dim + 1, 1), name="latent_column")(full)
    z0 = keras.layers.Reshape((1,), name="class_coordinate")(
        keras.layers.Cropping1D((0, latent_dim), name="take_class_coordinate")(column)
    )
    rest = keras.layers.Reshape((latent_dim,), name="class_latent")(
        keras.layers.Cropping1D((1, 0), name="take_latent")(column)
    )
    classes = keras.layers.Discretization(
        bin_boundaries=normal_quantiles(num_classes), output_mode="int", name="class_from_latent"
    )(z0)
    marginal = keras.Model(full, body(rest, classes), name="generator")
    return {"conditional": conditional, "marginal": marginal}


def _residual_block(x, channels: int, name: str, down: bool):
    """Pre-activation block: (LReLU, conv3x3) x 2 [+ avgpool] plus the (1x1 conv [+ avgpool]) shortcut."""
    h = x
    for i in (1, 2):
        h = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_lrelu{i}")(h)
        h = _conv(channels, 3, f"{name}_conv{i}")(h)
    shortcut = x
    if down or x.shape[-1] != channels:
        shortcut = _conv(channels, 1, f"{name}_shortcut")(x)
    if down:
        h = keras.layers.AveragePooling2D(2, name=f"{name}_pool")(h)
        shortcut = keras.layers.AveragePooling2D(2, name=f"{name}_pool_shortcut")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def build_discriminator(
    image_shape: Sequence[int], num_classes: int, channels: int = 128, name: str = "advgan_discriminator"
) -> keras.Model:
    """The two-head discriminator: images -> (source logit [N, 1], class logits [N, K]).

    ``source`` is the real/fake logit (sigmoid(source) = P(S = real | x));
    ``classes`` the auxiliary classifier's logits. Both are linear heads on
    the same pooled features.
    """
    _, stages = gan_stages(image_shape)
    images = keras.Input(shape=tuple(image_shape), dtype="float32", name="images")
    x = _conv(channels, 3, "conv_in")(images)
    for s in range(stages):
        x = _residual_block(x, channels, f"down{s}", down=True)
    for i in range(2):
        x = _residual_block(x, channels, f"block{i}", down=False)
    x = keras.layers.LeakyReLU(LEAKY_SLOPE, name="final_lrelu")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    source = keras.layers.Dense(1, kernel_initializer="glorot_uniform", dtype="float32", name="source")(
        features
    )
    logits = keras.layers.Dense(
        num_classes, kernel_initializer="glorot_uniform", dtype="float32", name="classes"
    )(features)
    return keras.Model(images, [source, logits], name=name)


def classifier_from_discriminator(discriminator: keras.Model, name: str = "classifier") -> keras.Model:
    """images -> class logits: the discriminator's trunk and class head (shared weights)."""
    return keras.Model(discriminator.inputs, discriminator.get_layer("classes").output, name=name)


def class_head_variables(discriminator: keras.Model) -> list:
    """Trainable variables of the trunk and the class head (not the source head)."""
    source = {id(v) for v in discriminator.get_layer("source").trainable_variables}
    return [v for v in discriminator.trainable_variables if id(v) not in source]


def uniform_class_check(num_classes: int, num: int = 100000, seed: int = 0) -> np.ndarray:
    """Class frequencies of the marginal generator's z_0 -> class map on ``num`` normal draws."""
    z0 = np.random.default_rng(seed).standard_normal(num)
    classes = np.searchsorted(np.array(normal_quantiles(num_classes)), z0, side="right")
    return np.bincount(classes, minlength=num_classes) / num
