"""The classifier, adaptor and discriminator of JARN as functional Keras models.

All networks take float32 NHWC images in [0, 1] (or Jacobians of the same
shape) and standardise them first (``layers.PerImageStandardization``; the
classifier skips it with ``ModelConfig.standardize_input=False``), as the
JARN release does. They are functional ``keras.Model``s built only from Keras
layers and ``jarn_tf.layers``, so they save to ``.keras`` and load under any
Keras backend after ``import jarn_tf.layers``.

Architectures:

* ``wrn``: the Wide ResNet of MadryLab's cifar10_challenge (pre-activation
  units, parameter-free pool-and-pad shortcuts, leaky ReLU 0.1), which the
  JARN release uses for CIFAR-10 and SVHN.
* ``mnist_cnn``: the paper's MNIST CNN (section 4.1), three 5x5 stride-2 conv
  layers (64-128-256 by default) and a linear layer. The kernel and stride
  are our reading: the paper says "All 3 convolutional layers have a stride
  of 5". Taken literally, stride-5 convolutions (same padding) would leave
  6x6, 2x2 and 1x1 maps of a 28x28 image; we read it as 5x5 kernels with
  stride 2 (28 -> 14 -> 7 -> 4), the usual MNIST CNN. The release has no
  MNIST model.
* adaptor: 1x1 conv + tanh, mapping the standardised Jacobian to image space.
* discriminator: stride-2 4x4 conv + batch norm + leaky ReLU blocks and a
  linear layer with 2 logits (0 = adapted Jacobian / fake, 1 = image / real).
"""

from __future__ import annotations

from typing import Sequence

import keras

from jarn_tf.config import MODELS, ModelConfig
from jarn_tf.layers import PadChannelsShortcut, PerImageStandardization

# Batch norm of the reference: tf.contrib.layers.batch_norm(decay=0.9) with its
# default epsilon of 1e-3 (not 1e-5). Epsilon matters here: the L2-standardised
# input makes the first conv's outputs small (variance ~1e-4 on CIFAR-10).
# Keras' momentum is the same "decay" of the moving statistics.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3
LEAKY_SLOPE = 0.1


def _conv_initializer(mode: str = "fan_out") -> keras.initializers.Initializer:
    # Reference: normal(stddev=sqrt(2 / (k * k * out_channels))), i.e. He/fan_out.
    # The MNIST CNN (not in the release) has no batch norm to undo fan_out's
    # shrinking of activations, so it uses fan_in (variance-preserving forward).
    return keras.initializers.VarianceScaling(2.0, mode, "untruncated_normal")


def _dense_initializer() -> keras.initializers.Initializer:
    # Reference: tf.uniform_unit_scaling_initializer(1.0) == U(+-sqrt(3 / fan_in)).
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


def _conv(
    filters: int, kernel_size: int, strides: int, use_bias: bool, name: str, init_mode: str = "fan_out"
) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=_conv_initializer(init_mode),
        bias_initializer="zeros",
        name=name,
    )


def _dense(units: int, name: str) -> keras.layers.Dense:
    # Logits stay float32 under a mixed-precision policy (softmax and losses
    # need the range); under the default float32 policy this changes nothing.
    return keras.layers.Dense(
        units, kernel_initializer=_dense_initializer(), bias_initializer="zeros", name=name, dtype="float32"
    )


def _batch_norm(synchronized: bool, name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized, name=name
    )


def _leaky_relu(name: str) -> keras.layers.LeakyReLU:
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)


def _check_image_shape(image_shape: Sequence[int]) -> tuple:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(
            f"image_shape must be (height, width, channels) with positive sizes, got {image_shape}"
        )
    return shape


def max_disc_layers(image_shape: Sequence[int]) -> int:
    """Most stride-2 discriminator layers for ``image_shape`` (2^layers <= min(H, W)).

    Args:
      image_shape: (height, width, channels).

    Returns:
      The largest allowed ``--disc_layers``.
    """
    h, w, _ = _check_image_shape(image_shape)
    return min(h, w).bit_length() - 1


def _classifier_errors(config: ModelConfig, image_shape: tuple) -> list:
    errors = []
    if config.model == "wrn":
        depth, width = config.wrn_depth, config.wrn_width
        if depth < 10 or (depth - 4) % 6:
            errors.append(f"--wrn_depth must be 6n+4 with n >= 1 (e.g. 16, 28, 34), got {depth}")
        if width <= 0:
            errors.append(f"--wrn_width must be positive, got {width}")
        h, w, _ = image_shape
        # Stages 2 and 3 halve the size; 'same' conv (ceil) and 'valid' pooling
        # in the shortcut (floor) only agree when each halving is exact.
        if h % 4 or w % 4:
            errors.append(f"--model=wrn needs image height and width divisible by 4, got {h}x{w}")
    elif config.model == "mnist_cnn":
        channels = tuple(config.cnn_channels)
        if not channels or any(int(c) <= 0 for c in channels):
            errors.append(
                f"--cnn_channels must be a non-empty list of positive integers, got {list(channels)}"
            )
    else:
        errors.append(f"--model must be one of {', '.join(MODELS)}, got {config.model!r}")
    return errors


def _discriminator_errors(config: ModelConfig, image_shape: tuple) -> list:
    errors = []
    h, w, _ = image_shape
    limit = max_disc_layers(image_shape)
    if config.disc_layers <= 0:
        errors.append(f"--disc_layers must be positive, got {config.disc_layers}")
    elif config.disc_layers > limit:
        errors.append(
            f"--disc_layers={config.disc_layers} is too deep for {h}x{w} images: at most {limit} "
            "stride-2 layers (2^layers <= min(H, W))"
        )
    if config.disc_base_channels <= 0:
        errors.append(f"--disc_base_channels must be positive, got {config.disc_base_channels}")
    return errors


def _raise(errors: list) -> None:
    if errors:
        raise ValueError("; ".join(errors))


def validate_model_config(config: ModelConfig, image_shape: Sequence[int]) -> None:
    """Rejects architectures that cannot be built for ``image_shape``.

    Checks the classifier and the discriminator settings (whether or not JARN
    is on, so that a config is valid or not independently of the mode).

    Args:
      config: the architecture.
      image_shape: (height, width, channels) of the dataset's images.

    Raises:
      ValueError: naming the offending flag(s), e.g. ``--wrn_depth``.
    """
    shape = _check_image_shape(image_shape)
    _raise(_classifier_errors(config, shape) + _discriminator_errors(config, shape))


def _wrn_unit(
    x: keras.KerasTensor,
    out_channels: int,
    stride: int,
    activate_before_residual: bool,
    synchronized: bool,
    name: str,
) -> keras.KerasTensor:
    """One pre-activation residual unit of Madry et al.'s Wide ResNet."""
    in_channels = x.shape[-1]
    if activate_before_residual:
        # First unit of the network: the shortcut carries the activated input.
        x = _batch_norm(synchronized, f"{name}_bn1")(x)
        x = _leaky_relu(f"{name}_act1")(x)
        shortcut = x
    else:
        shortcut = x
        x = _batch_norm(synchronized, f"{name}_bn1")(x)
        x = _leaky_relu(f"{name}_act1")(x)
    x = _conv(out_channels, 3, stride, False, f"{name}_conv1")(x)
    x = _batch_norm(synchronized, f"{name}_bn2")(x)
    x = _leaky_relu(f"{name}_act2")(x)
    x = _conv(out_channels, 3, 1, False, f"{name}_conv2")(x)
    # The reference pools and pads only when the width changes (which in this
    # architecture is also whenever stride > 1); the stride check is a guard.
    if in_channels != out_channels or stride != 1:
        shortcut = PadChannelsShortcut(out_channels, stride, name=f"{name}_shortcut")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


def _wrn_logits(x: keras.KerasTensor, config: ModelConfig, num_classes: int) -> keras.KerasTensor:
    units_per_stage = (config.wrn_depth - 4) // 6
    k = config.wrn_width
    sync = config.sync_batchnorm
    x = _conv(16, 3, 1, False, "init_conv")(x)
    for stage, (width, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), (1, 2, 2)), start=1):
        for unit in range(units_per_stage):
            x = _wrn_unit(
                x,
                width,
                stride if unit == 0 else 1,
                activate_before_residual=(stage == 1 and unit == 0),
                synchronized=sync,
                name=f"stage{stage}_unit{unit}",
            )
    x = _batch_norm(sync, "final_bn")(x)
    x = _leaky_relu("final_act")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return _dense(num_classes, "logits")(x)


def _mnist_cnn_logits(x: keras.KerasTensor, config: ModelConfig, num_classes: int) -> keras.KerasTensor:
    for i, channels in enumerate(config.cnn_channels):
        x = _conv(int(channels), 5, 2, True, f"conv{i}", init_mode="fan_in")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return _dense(num_classes, "logits")(x)


def build_classifier(
    config: ModelConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    name: str = "classifier",
) -> keras.Model:
    """Builds the classifier named by ``config.model``.

    Args:
      config: the architecture (``wrn`` or ``mnist_cnn`` and their sizes).
      image_shape: (height, width, channels) of the images.
      num_classes: number of output logits.
      name: model name.

    Returns:
      A functional model mapping [0, 1] images (N, H, W, C) to logits
      (N, num_classes).

    Raises:
      ValueError: if the classifier settings are invalid for ``image_shape``.
    """
    shape = _check_image_shape(image_shape)
    _raise(_classifier_errors(config, shape))
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    inputs = keras.Input(shape=shape, dtype="float32", name="images")
    x = PerImageStandardization(name="standardize")(inputs) if config.standardize_input else inputs
    if config.model == "wrn":
        logits = _wrn_logits(x, config, num_classes)
    else:
        logits = _mnist_cnn_logits(x, config, num_classes)
    return keras.Model(inputs, logits, name=name)


def build_adaptor(image_shape: tuple[int, int, int], name: str = "adaptor") -> keras.Model:
    """Builds the adaptor: standardise, 1x1 conv (C -> C, with bias), tanh.

    Args:
      image_shape: (height, width, channels) of the images and Jacobians.
      name: model name.

    Returns:
      A functional model mapping Jacobians (N, H, W, C) to adapted Jacobians
      of the same shape with values in (-1, 1).
    """
    shape = _check_image_shape(image_shape)
    inputs = keras.Input(shape=shape, dtype="float32", name="jacobians")
    x = PerImageStandardization(name="standardize")(inputs)
    x = _conv(shape[-1], 1, 1, True, "conv")(x)
    outputs = keras.layers.Activation("tanh", name="tanh")(x)
    return keras.Model(inputs, outputs, name=name)


def build_discriminator(
    config: ModelConfig, image_shape: tuple[int, int, int], name: str = "discriminator"
) -> keras.Model:
    """Builds the JARN discriminator.

    ``config.disc_layers`` blocks of 4x4 stride-2 conv (with bias,
    ``disc_base_channels * 2**i`` channels) + batch norm + leaky ReLU(0.1),
    then a linear layer with 2 logits.

    Args:
      config: the architecture (``disc_layers``, ``disc_base_channels``,
        ``sync_batchnorm``).
      image_shape: (height, width, channels) of the images.
      name: model name.

    Returns:
      A functional model mapping (N, H, W, C) inputs to (N, 2) logits; class 0
      is the adapted Jacobian (fake), class 1 the image (real).

    Raises:
      ValueError: if the discriminator settings are invalid for ``image_shape``.
    """
    shape = _check_image_shape(image_shape)
    _raise(_discriminator_errors(config, shape))
    inputs = keras.Input(shape=shape, dtype="float32", name="inputs")
    x = PerImageStandardization(name="standardize")(inputs)
    for i in range(config.disc_layers):
        x = _conv(config.disc_base_channels * 2**i, 4, 2, True, f"conv{i}")(x)
        x = _batch_norm(config.sync_batchnorm, f"bn{i}")(x)
        x = _leaky_relu(f"act{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = _dense(2, "logits")(x)
    return keras.Model(inputs, logits, name=name)


def kernel_variables(model: keras.Model) -> list:
    """The kernels of every conv and dense layer of ``model`` (weight decay's set).

    Biases and batch-norm scales/offsets are left out, as in the reference,
    which decays only the variables named ``DW``. Nested models are searched.

    Args:
      model: a Keras model (or layer).

    Returns:
      The kernel variables, in layer order, without duplicates.
    """
    kernels, seen = [], set()

    def visit(layer: keras.layers.Layer) -> None:
        kernel = getattr(layer, "kernel", None)
        if isinstance(kernel, keras.Variable) and id(kernel) not in seen:
            seen.add(id(kernel))
            kernels.append(kernel)
        for sub in getattr(layer, "layers", None) or ():
            visit(sub)

    for layer in model.layers:
        visit(layer)
    return kernels
