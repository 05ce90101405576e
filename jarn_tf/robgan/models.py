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
Discriminator: two heads on one trunk, ``source`` (1 logit: real/fake,
  sigmoid = P(real)) and ``classes`` (K logits), both linear on the pooled
  features (layer ``features``). ``--advgan_discriminator`` picks the trunk:

  sngan [paper] ("we copy all the network architectures for generators and
    discriminators from SN-GAN"): SN-GAN's CIFAR-10 ResNet discriminator
    (Miyato et al. 2018; Miyato & Koyama 2018), its projection replaced by
    the auxiliary class head as the paper says. An optimized block
    ``conv3x3, ReLU, conv3x3, avgpool /2`` plus the shortcut ``avgpool /2,
    conv1x1``; pre-activation down-blocks ``ReLU, conv3x3, ReLU, conv3x3,
    avgpool /2`` plus ``conv1x1, avgpool /2`` until the side is <= 8; two
    blocks without down-sampling (identity shortcut); ReLU; global SUM
    pooling; the heads. Convs with biases, no normalisation, spectral
    normalisation (``keras.layers.SpectralNormalization``, 1 power
    iteration) on every conv and on both heads. Keras' wrapper, unlike
    Miyato et al.'s reparametrisation W / sigma(W), divides the wrapped
    kernel by its estimated sigma IN PLACE each time the layer is called
    with ``training=True`` (and runs one power iteration then); the layer
    then uses the stored kernel, so no gradient flows through sigma, and the
    optimizer updates the normalised kernel. With ``training=False``
    the stored kernel is used as it is: the one normalised last, moved by
    the optimizer updates since. A step that called the network several
    times in training mode would renormalise between the calls (and, say,
    see the features of G(z) and G(z) + v from two different networks), so
    the trainers call ``spectral_normalize`` once before each update of the
    network and then run every pass in inference mode (sngan has no other
    training-mode behaviour): the attack, the losses, the regularisers and
    ``attack_gain`` of one step see one normalised network. The evaluations
    and the exported classifier use the stored kernels.
  authors [authors' code] (xuanqing94/RobGAN ``dis_models/resnet_32.py``
    ``ResNetAC(bn=True)``, which train.py builds for CIFAR-10): the same
    blocks with batch norm after every conv (the shortcut's too), convs
    without bias, no spectral norm.
  legacy [ours] (this project's network before ``--advgan_discriminator``,
    kept so that older runs resume and their checkpoints load; a config.json
    without the field is a legacy run): ``3x3 conv -> k x [down-block] -> 2
    residual blocks -> leaky ReLU -> global average pooling``, a down-block
    ``LReLU, conv3x3, LReLU, conv3x3, avgpool /2`` plus ``conv1x1, avgpool
    /2``, leaky ReLU 0.2, no normalisation, k as the generator's.
  sngan and authors down-sample 32 -> 16 -> 8 (CIFAR-10: the optimized
  block and one down-block, as both references), 28 -> 14 -> 7 and 64 ->
  32 -> 16 -> 8 (``discriminator_sides``); the residual convs are
  initialised Xavier-uniform with gain sqrt(2), the shortcuts and heads with
  gain 1, as both references. Global sum pooling is stock global average
  pooling times H * W (``Rescaling``).

The generator's stage count k and base side follow the image size exactly
as in the ``gan`` mode (``gan_models.gan_stages``): 32 -> 4 (k = 3, SN-GAN's
CIFAR-10 generator), 28 -> 7 (k = 2).

Every layer is a stock Keras layer, so the exported generators and the
fine-tuned classifier load without this package under any Keras backend.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import keras
import numpy as np

from jarn_tf.config import ADVGAN_DISCRIMINATORS
from jarn_tf.gan.models import LEAKY_SLOPE, gan_stages


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
    """legacy: (LReLU, conv3x3) x 2 [+ avgpool] plus the (1x1 conv [+ avgpool]) shortcut."""
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


def discriminator_sides(image_shape: Sequence[int]) -> List[int]:
    """Feature-map sides of the sngan / authors trunks: the input's, then after each down-sampling block.

    The optimized block always halves the side; down-blocks follow while the
    side is above 8: 32 -> [32, 16, 8], 28 -> [28, 14, 7], 64 -> [64, 32, 16, 8].

    Raises:
      ValueError: for non-square images or a side below 2.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, _ = image_shape
    if h != w or h < 2:
        raise ValueError(f"the advgan discriminator needs square images of side >= 2, got {h}x{w}")
    sides = [h, h // 2]
    while sides[-1] > 8:
        sides.append(sides[-1] // 2)
    return sides


class _ResNetLayers:
    """Layer factory of the sngan / authors trunks (see the module docstring)."""

    def __init__(self, kind: str):
        self.spectral = kind == "sngan"
        self.batch_norm = kind == "authors"

    def linear_layer(self, layer: keras.layers.Layer, name: str) -> keras.layers.Layer:
        """``layer`` (named ``name``), wrapped in spectral normalisation for sngan."""
        if not self.spectral:
            return layer
        return keras.layers.SpectralNormalization(
            layer, power_iterations=1, dtype=layer.dtype_policy, name=name
        )

    def conv(self, x, channels: int, kernel: int, name: str, gain2: float):
        """conv (Xavier-uniform with gain^2 = ``gain2``), then batch norm for authors."""
        conv = keras.layers.Conv2D(
            channels,
            kernel,
            padding="same",
            use_bias=not self.batch_norm,  # authors' code: bias=False (SN-GAN's convs have one)
            kernel_initializer=keras.initializers.VarianceScaling(gain2, "fan_avg", "uniform"),
            name=f"{name}_inner" if self.spectral else name,
        )
        h = self.linear_layer(conv, name)(x)
        if self.batch_norm:  # PyTorch's BatchNorm2d defaults: momentum 0.1, eps 1e-5
            h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(h)
        return h

    def block(self, x, channels: int, name: str, down: bool, optimized: bool = False):
        """SN-GAN's ``Block`` (pre-activation) or, with ``optimized``, its first ``OptimizedBlock``."""
        h = x if optimized else keras.layers.ReLU(name=f"{name}_relu1")(x)
        h = self.conv(h, channels, 3, f"{name}_conv1", 2.0)
        h = keras.layers.ReLU(name=f"{name}_relu2")(h)
        h = self.conv(h, channels, 3, f"{name}_conv2", 2.0)
        if down:
            h = keras.layers.AveragePooling2D(2, name=f"{name}_pool")(h)
        if optimized:  # pool, then the 1x1 conv
            shortcut = keras.layers.AveragePooling2D(2, name=f"{name}_pool_shortcut")(x)
            shortcut = self.conv(shortcut, channels, 1, f"{name}_shortcut", 1.0)
        elif down or x.shape[-1] != channels:  # the 1x1 conv, then pool
            shortcut = self.conv(x, channels, 1, f"{name}_shortcut", 1.0)
            if down:
                shortcut = keras.layers.AveragePooling2D(2, name=f"{name}_pool_shortcut")(shortcut)
        else:
            shortcut = x
        return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def _legacy_trunk(images, image_shape: Sequence[int], channels: int):
    _, stages = gan_stages(image_shape)
    x = _conv(channels, 3, "conv_in")(images)
    for s in range(stages):
        x = _residual_block(x, channels, f"down{s}", down=True)
    for i in range(2):
        x = _residual_block(x, channels, f"block{i}", down=False)
    x = keras.layers.LeakyReLU(LEAKY_SLOPE, name="final_lrelu")(x)
    return keras.layers.GlobalAveragePooling2D(name="features")(x)


def _resnet_trunk(images, image_shape: Sequence[int], channels: int, factory: _ResNetLayers):
    sides = discriminator_sides(image_shape)
    x = factory.block(images, channels, "down0", down=True, optimized=True)
    for s in range(1, len(sides) - 1):
        x = factory.block(x, channels, f"down{s}", down=True)
    for i in range(2):
        x = factory.block(x, channels, f"block{i}", down=False)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="mean_pool")(x)
    return keras.layers.Rescaling(float(sides[-1] ** 2), name="features")(x)  # sum = mean * H * W


def build_discriminator(
    image_shape: Sequence[int],
    num_classes: int,
    channels: int = 128,
    name: str = "advgan_discriminator",
    kind: str = "sngan",
) -> keras.Model:
    """The two-head discriminator: images -> (source logit [N, 1], class logits [N, K]).

    ``source`` is the real/fake logit (sigmoid(source) = P(S = real | x));
    ``classes`` the auxiliary classifier's logits. Both are linear heads on
    the same pooled features (layer ``features``).

    Args:
      image_shape: (H, W, C) of the images, in [0, 1].
      num_classes: K.
      channels: width of every conv (the paper's and the authors' 128).
      name: the model's name.
      kind: ``sngan`` [paper], ``authors`` [authors' code] or ``legacy``
        [ours] (the module docstring says what each is).

    Raises:
      ValueError: for an unknown kind or an image shape it cannot take.
    """
    if kind not in ADVGAN_DISCRIMINATORS:
        raise ValueError(f"unknown advgan discriminator {kind!r}; expected one of {ADVGAN_DISCRIMINATORS}")
    images = keras.Input(shape=tuple(image_shape), dtype="float32", name="images")
    if kind == "legacy":
        features = _legacy_trunk(images, image_shape, channels)
        factory = _ResNetLayers("legacy")  # heads without spectral norm
    else:
        factory = _ResNetLayers(kind)
        features = _resnet_trunk(images, image_shape, channels, factory)
    heads = []
    for head, units in (("source", 1), ("classes", num_classes)):
        dense = keras.layers.Dense(
            units,
            kernel_initializer="glorot_uniform",
            dtype="float32",
            name=f"{head}_inner" if factory.spectral else head,
        )
        heads.append(factory.linear_layer(dense, head)(features))
    return keras.Model(images, heads, name=name)


def spectral_layers(model: keras.Model) -> list:
    """The ``SpectralNormalization`` wrappers of ``model`` (sngan's), in layer order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.SpectralNormalization)]


def spectral_normalize(layers: Sequence[keras.layers.Layer]) -> None:
    """What a training-mode call of each wrapper does first, once: one power iteration, kernel / sigma in place.

    The same ops as ``SpectralNormalization.call(training=True)`` (a kernel
    of zeros is left alone), without running the layer.
    """
    for layer in layers:
        new_u, new_kernel = keras.ops.cond(
            keras.ops.all(keras.ops.equal(layer.kernel.value, 0)),
            lambda layer=layer: (layer.vector_u.value, layer.kernel.value),
            layer.normalized_weights,
        )
        layer.vector_u.assign(new_u)
        layer.kernel.assign(new_kernel)


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
