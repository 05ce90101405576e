"""Custom Keras layers of the JARN networks.

This module imports only Keras (never TensorFlow) and writes its layers with
``keras.ops``, so that ``import jarn_tf.layers`` followed by
``keras.saving.load_model("classifier.keras")`` works under any Keras backend
(TensorFlow, JAX, PyTorch, or the inference-only NumPy backend).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="jarn_tf")
class PerImageStandardization(keras.layers.Layer):
    """Per example: subtract the mean, then divide by the L2 norm.

    ``y = d / sqrt(max(sum(d^2), epsilon))`` with ``d = x - mean(x)``, the mean
    and sum taken over all non-batch axes (H, W, C): the JARN release's
    ``tf.math.l2_normalize`` of the zero-mean input, whose ``epsilon`` (1e-12 by
    default) bounds the *squared* norm, so the norm divided by is at least
    ``sqrt(epsilon)`` = 1e-6. This divides by the L2 norm, not by the standard
    deviation, so every output above that floor has unit L2 norm and does not
    depend on the scale or offset of the input. That is what lets the same
    layer standardise both pixel images and Jacobians.

    The floor bounds the gradient as well: below it the layer is linear with
    slope ``1/sqrt(epsilon)``. (An earlier version floored the norm itself at
    ``epsilon``, a slope of 1e12: JARN's chain of three standardisations then
    amplified the gradient of a vanishing Jacobian by up to 1e30, and a
    saturated classifier's first JARN step overflowed.) For a constant input,
    ``d = 0``, the ``max`` passes no gradient to the sum of squares and the
    output is 0 with a finite gradient, where ``sqrt(sum(d^2))`` alone would
    give 0 * inf = NaN.

    The statistics are computed in float32 whatever the layer's dtype policy,
    since ``epsilon`` underflows in float16.
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        """Creates the layer.

        Args:
          epsilon: lower bound of the squared L2 norm the input is divided by (as
            ``tf.math.l2_normalize``'s).
          **kwargs: standard ``keras.layers.Layer`` arguments (name, dtype...).

        Raises:
          ValueError: if ``epsilon`` is not positive.
        """
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        self.epsilon = float(epsilon)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        axes = tuple(range(1, len(x.shape)))
        # Shift by the first value of each example before taking the mean: a
        # constant image then centres to exactly 0, where the rounding error
        # of its mean (~1e-8) would otherwise be blown up to unit norm.
        x = x - x[(slice(None),) + (slice(0, 1),) * len(axes)]
        centered = x - ops.mean(x, axis=axes, keepdims=True)
        sum_sq = ops.sum(ops.square(centered), axis=axes, keepdims=True)
        # 1/max(||d||, sqrt(eps)), with a finite gradient at s = 0.
        inv_norm = 1.0 / ops.sqrt(ops.maximum(sum_sq, self.epsilon))
        return ops.cast(centered * inv_norm, self.compute_dtype)

    def compute_output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="jarn_tf")
class PadChannelsShortcut(keras.layers.Layer):
    """Parameter-free Wide-ResNet shortcut of MadryLab's cifar10_challenge.

    Average-pools NHWC inputs with pool size and stride ``stride`` ('valid'
    padding; no pooling when ``stride`` is 1), then zero-pads the channel axis
    with ``(out_channels - in_channels) // 2`` channels on each side. The
    padding must be symmetric: ``in + 2 * ((out - in) // 2) == out``.
    """

    def __init__(self, out_channels: int, stride: int = 1, **kwargs: Any) -> None:
        """Creates the layer.

        Args:
          out_channels: channels of the output; at least the input's.
          stride: pool size and stride of the spatial average pooling.
          **kwargs: standard ``keras.layers.Layer`` arguments (name, dtype...).

        Raises:
          ValueError: if ``out_channels`` or ``stride`` is not positive.
        """
        super().__init__(**kwargs)
        if int(out_channels) <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if int(stride) <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        self.out_channels = int(out_channels)
        self.stride = int(stride)

    def _pad(self, in_channels: int) -> int:
        diff = self.out_channels - in_channels
        if diff < 0 or diff % 2:
            raise ValueError(
                f"{self.name}: cannot zero-pad {in_channels} channels symmetrically to "
                f"{self.out_channels}; out - in must be even and >= 0"
            )
        return diff // 2

    def build(self, input_shape: Sequence[Optional[int]]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"{self.name} expects NHWC inputs with known channels, got {input_shape}")
        self._pad(int(input_shape[-1]))  # validates before any data flows

    def call(self, inputs: Any) -> Any:
        x = inputs
        if self.stride > 1:
            x = ops.average_pool(x, pool_size=self.stride, strides=self.stride, padding="valid")
        pad = self._pad(int(x.shape[-1]))
        if pad:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
        return x

    def compute_output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        # 'valid' pooling with pool == stride keeps floor(size / stride).
        spatial = [None if d is None else d // self.stride for d in input_shape[1:3]]
        return (input_shape[0], *spatial, self.out_channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"out_channels": self.out_channels, "stride": self.stride})
        return config
