"""Tests of the custom layers and the classifier / adaptor / discriminator."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf import layers
from jarn_tf.jarn import models
from jarn_tf.config import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_WRN = ModelConfig(model="wrn", wrn_depth=10, wrn_width=1, disc_layers=3, disc_base_channels=4)
TINY_CNN = ModelConfig(model="mnist_cnn", cnn_channels=(4, 8, 8), disc_layers=3, disc_base_channels=4)
SHAPES = [(28, 28, 1), (32, 32, 3)]


def _images(shape: tuple, n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _np_standardize(x: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    d = x.astype(np.float64) - x.mean(axis=axes, keepdims=True, dtype=np.float64)
    norm = np.sqrt((d**2).sum(axis=axes, keepdims=True))
    return d / np.maximum(norm, 1e-6)  # tf.math.l2_normalize: max(sum d^2, 1e-12)


# -- PerImageStandardization ---------------------------------------------------
def test_standardization_zero_mean_unit_l2_norm_and_numpy_reference():
    rng = np.random.default_rng(1)
    # Examples on very different scales: the output must not depend on them.
    x = (rng.normal(size=(4, 5, 6, 3)) * np.array([1e-6, 1.0, 30.0, 1e4]).reshape(4, 1, 1, 1)).astype(
        np.float32
    )
    y = np.asarray(layers.PerImageStandardization()(x))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-7)
    # Unit L2 norm, i.e. NOT unit standard deviation (which would give norm sqrt(90)).
    np.testing.assert_allclose(np.sqrt((y.astype(np.float64) ** 2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, _np_standardize(x), atol=1e-6)


@pytest.mark.parametrize("a, b", [(0.01, 0.0), (3.0, -0.5), (255.0, 7.0)])
def test_standardization_is_invariant_to_positive_affine_maps(a, b):
    x = _images((6, 6, 2), n=2)
    layer = layers.PerImageStandardization()
    np.testing.assert_allclose(np.asarray(layer(a * x + b)), np.asarray(layer(x)), atol=2e-5)


@pytest.mark.parametrize("value", [0.7, 1 / 3, 0.123])
def test_standardization_constant_image_gives_zero_output_and_finite_gradient(value):
    # Rounding of a constant image's mean must not be blown up to unit norm.
    x = np.stack([np.full((32, 32, 3), value, np.float32), _images((32, 32, 3), n=1)[0]])
    x = tf.constant(x)
    weights = tf.constant(np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layers.PerImageStandardization()(x)
        loss = tf.reduce_sum(y * weights)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(y.numpy()[0], 0.0)
    np.testing.assert_allclose(y.numpy()[1], _np_standardize(x.numpy())[1], atol=1e-6)
    assert np.abs(grad[1]).max() > 0  # the non-constant example still gets a gradient


def test_standardization_floors_the_squared_norm_as_l2_normalize():
    # The release's tf.math.l2_normalize(d, epsilon=1e-12) divides by max(||d||, 1e-6): an input
    # whose centred norm is 1e-8 comes out with norm 1e-2 (not 1), and the slope there is 1e6.
    x = _images((4, 4, 1), n=2)
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x / np.sqrt((x**2).sum(axis=(1, 2, 3), keepdims=True)) * np.array([1e-8, 1.0]).reshape(2, 1, 1, 1)
    x = tf.constant(x.astype(np.float32))
    layer = layers.PerImageStandardization()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    norms = np.sqrt((y.numpy().astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(norms, [1e-2, 1.0], rtol=1e-4)
    np.testing.assert_allclose(
        y.numpy(), tf.math.l2_normalize(x, axis=[1, 2, 3]).numpy(), rtol=1e-4, atol=1e-7
    )
    jac = tape.batch_jacobian(y, x).numpy().reshape(2, 16, 16)
    np.testing.assert_allclose(np.linalg.svd(jac[0], compute_uv=False).max(), 1e6, rtol=1e-3)


def test_standardization_config_round_trip():
    layer = layers.PerImageStandardization(epsilon=1e-8, name="s")
    clone = layers.PerImageStandardization.from_config(layer.get_config())
    assert clone.epsilon == 1e-8 and clone.name == "s"
    with pytest.raises(ValueError):
        layers.PerImageStandardization(epsilon=0.0)


# -- PadChannelsShortcut -------------------------------------------------------
def _np_shortcut(x: np.ndarray, out_channels: int, stride: int) -> np.ndarray:
    n, h, w, c = x.shape
    ho, wo = h // stride, w // stride
    pooled = x[:, : ho * stride, : wo * stride].reshape(n, ho, stride, wo, stride, c).mean(axis=(2, 4))
    pad = (out_channels - c) // 2
    return np.pad(pooled, [(0, 0), (0, 0), (0, 0), (pad, pad)])


@pytest.mark.parametrize(
    "in_shape, out_channels, stride",
    [((6, 6, 4), 8, 2), ((7, 5, 2), 6, 2), ((4, 4, 3), 7, 1), ((6, 6, 16), 160, 1), ((9, 9, 4), 4, 3)],
)
def test_pad_channels_shortcut_matches_numpy(in_shape, out_channels, stride):
    x = np.random.default_rng(3).normal(size=(2, *in_shape)).astype(np.float32)
    layer = layers.PadChannelsShortcut(out_channels, stride)
    y = np.asarray(layer(x))
    expected = _np_shortcut(x, out_channels, stride)
    assert y.shape == expected.shape == layer.compute_output_shape((2, *in_shape))
    np.testing.assert_allclose(y, expected, atol=1e-6)
    pad = (out_channels - in_shape[-1]) // 2
    if pad:
        assert not y[..., :pad].any() and not y[..., -pad:].any()


@pytest.mark.parametrize("in_channels, out_channels", [(4, 7), (4, 9), (8, 4)])
def test_pad_channels_shortcut_rejects_asymmetric_or_negative_padding(in_channels, out_channels):
    with pytest.raises(ValueError, match="symmetrically"):
        layers.PadChannelsShortcut(out_channels, 2)(keras.Input((8, 8, in_channels)))


def test_pad_channels_shortcut_config_round_trip():
    layer = layers.PadChannelsShortcut(32, 2, name="sc")
    clone = layers.PadChannelsShortcut.from_config(layer.get_config())
    assert (clone.out_channels, clone.stride, clone.name) == (32, 2, "sc")
    with pytest.raises(ValueError):
        layers.PadChannelsShortcut(8, 0)


# -- Shapes and architecture ---------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("config", [TINY_WRN, TINY_CNN], ids=["wrn", "mnist_cnn"])
def test_output_shapes(config, shape):
    x = _images(shape)
    classifier = models.build_classifier(config, shape, 10)
    assert classifier.name == "classifier"
    assert tuple(classifier(x, training=False).shape) == (3, 10)
    assert tuple(models.build_classifier(config, shape, 7)(x).shape) == (3, 7)
    adaptor = models.build_adaptor(shape)
    adapted = np.asarray(adaptor(x))
    assert adapted.shape == x.shape and np.abs(adapted).max() < 1.0  # tanh
    disc = models.build_discriminator(config, shape)
    assert tuple(disc(x, training=False).shape) == (3, 2)
    for model in (classifier, adaptor, disc):
        assert isinstance(model.layers[1], layers.PerImageStandardization)


def test_classifier_ignores_input_scale_and_offset():
    # Standardisation first thing: logits of a*x+b equal those of x.
    x = _images((32, 32, 3))
    for config in (TINY_WRN, TINY_CNN):
        model = models.build_classifier(config, (32, 32, 3), 10)
        np.testing.assert_allclose(
            np.asarray(model(0.5 * x + 0.25, training=False)), np.asarray(model(x, training=False)), atol=1e-4
        )


def _layer_names(model: keras.Model, suffix: str) -> list:
    return [layer.name for layer in model.layers if layer.name.endswith(suffix)]


@pytest.mark.parametrize("depth, width", [(10, 1), (16, 1), (22, 2)])
def test_wrn_has_depth_minus_4_over_6_units_per_stage(depth, width):
    model = models.build_classifier(ModelConfig(wrn_depth=depth, wrn_width=width), (32, 32, 3), 10)
    n = (depth - 4) // 6
    convs = _layer_names(model, "_conv1")
    for stage in (1, 2, 3):
        assert sum(name.startswith(f"stage{stage}_") for name in convs) == n
    assert len(convs) == 3 * n
    # init conv + 2 convs per unit + logits; shortcuts have no weights.
    assert len(models.kernel_variables(model)) == 6 * n + 2
    # Widths 16k, 32k, 64k at sizes 32, 16, 8: the last unit of each stage.
    for stage, (size, channels) in enumerate(zip((32, 16, 8), (16 * width, 32 * width, 64 * width)), start=1):
        assert model.get_layer(f"stage{stage}_unit{n - 1}_add").output.shape[1:] == (size, size, channels)
    # Pool-and-pad shortcuts exactly where the width changes (16 -> 16k only if k > 1).
    expected = ["stage2_unit0_shortcut", "stage3_unit0_shortcut"]
    if width > 1:
        expected.insert(0, "stage1_unit0_shortcut")
    assert _layer_names(model, "_shortcut") == expected


def test_wrn_first_unit_activates_before_residual():
    model = models.build_classifier(TINY_WRN, (32, 32, 3), 10)
    # The first unit's shortcut is the activated input; later units add the raw input.
    assert model.get_layer("stage1_unit0_add").input[1] is model.get_layer("stage1_unit0_act1").output
    assert model.get_layer("stage2_unit0_shortcut").input is model.get_layer("stage1_unit0_add").output


def _expected_wrn_params(depth: int, k: int, in_channels: int, num_classes: int) -> tuple:
    """(trainable, non-trainable) parameter counts of Madry's WRN, by hand."""
    n = (depth - 4) // 6
    conv, bn_channels = 9 * in_channels * 16, 0
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            conv += 9 * c_in * width + 9 * width * width  # conv1, conv2 (no bias)
            bn_channels += c_in + width  # bn1 on the unit's input, bn2
            c_in = width
    bn_channels += c_in  # final_bn
    dense = c_in * num_classes + num_classes
    return conv + 2 * bn_channels + dense, 2 * bn_channels


def _param_counts(model: keras.Model) -> tuple:
    count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)  # noqa: E731
    return count(model.trainable_variables), count(model.non_trainable_variables)


@pytest.mark.parametrize("depth, width, shape", [(10, 1, (28, 28, 1)), (16, 2, (32, 32, 3))])
def test_wrn_parameter_count_small(depth, width, shape):
    model = models.build_classifier(ModelConfig(wrn_depth=depth, wrn_width=width), shape, 10)
    assert _param_counts(model) == _expected_wrn_params(depth, width, shape[-1], 10)


def test_wrn_34_10_parameter_count():
    # The paper's CIFAR-10 classifier. Madry's parameter-free shortcuts give
    # 45.90M trainable weights; the often quoted 46.16M is the PyTorch WRN with
    # 1x1-conv shortcuts (+258,560 weights).
    model = models.build_classifier(ModelConfig(), (32, 32, 3), 10)
    assert _param_counts(model) == _expected_wrn_params(34, 10, 3, 10) == (45_901_914, 22_432)
    assert model.count_params() == 45_924_346


def test_mnist_cnn_architecture():
    model = models.build_classifier(ModelConfig(model="mnist_cnn"), (28, 28, 1), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 128, 256]
    assert all(c.kernel_size == (5, 5) and c.strides == (2, 2) and c.use_bias for c in convs)
    assert convs[-1].output.shape[1:] == (4, 4, 256)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert (
        model.count_params()
        == (25 * 64 + 64) + (25 * 64 * 128 + 128) + (25 * 128 * 256 + 256) + 4096 * 10 + 10
    )


def test_discriminator_architecture():
    config = ModelConfig(disc_layers=5, disc_base_channels=32)
    model = models.build_discriminator(config, (32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256, 512]
    assert all(c.kernel_size == (4, 4) and c.strides == (2, 2) and c.use_bias for c in convs)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 5 and all(bn.momentum == 0.9 for bn in bns)
    assert model.output_shape == (None, 2)


def test_adaptor_architecture():
    model = models.build_adaptor((32, 32, 3))
    conv = model.get_layer("conv")
    assert conv.kernel.shape == (1, 1, 3, 3) and conv.use_bias
    assert model.count_params() == 12


def test_initializers_follow_the_reference():
    model = models.build_classifier(ModelConfig(wrn_depth=10, wrn_width=4), (32, 32, 3), 10)
    kernel = model.get_layer("stage3_unit0_conv1").kernel.numpy()  # 3x3x128x256
    std = np.sqrt(2.0 / (9 * 256))  # He normal over fan_OUT = 3 * 3 * out_channels
    np.testing.assert_allclose(kernel.std(), std, rtol=0.03)
    assert np.mean(np.abs(kernel) > 2.5 * std) > 0.008  # untruncated: 1.2% beyond 2.5 sigma
    dense = model.get_layer("logits")
    limit = np.sqrt(3.0 / 256)
    assert np.abs(dense.kernel.numpy()).max() <= limit and np.abs(dense.kernel.numpy()).max() > 0.9 * limit
    assert not dense.bias.numpy().any()
    assert all(not layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


# -- validate_model_config -----------------------------------------------------
@pytest.mark.parametrize(
    "config, shape, flag",
    [
        (ModelConfig(wrn_depth=30), (32, 32, 3), "--wrn_depth"),
        (ModelConfig(wrn_depth=4), (32, 32, 3), "--wrn_depth"),
        (ModelConfig(wrn_width=0), (32, 32, 3), "--wrn_width"),
        (ModelConfig(model="mnist_cnn", disc_layers=5), (28, 28, 1), "--disc_layers=5 is too deep for 28x28"),
        (ModelConfig(disc_layers=6), (32, 32, 3), "--disc_layers=6 is too deep for 32x32 images: at most 5"),
        (ModelConfig(disc_layers=0), (32, 32, 3), "--disc_layers"),
        (ModelConfig(disc_base_channels=0), (32, 32, 3), "--disc_base_channels"),
        (ModelConfig(model="resnet50"), (32, 32, 3), "--model"),
        (ModelConfig(model="mnist_cnn", cnn_channels=(4, 0)), (28, 28, 1), "--cnn_channels"),
        (ModelConfig(model="mnist_cnn", cnn_channels=()), (28, 28, 1), "--cnn_channels"),
        (ModelConfig(), (30, 30, 3), "--model=wrn"),
    ],
)
def test_validate_model_config_names_the_flag(config, shape, flag):
    with pytest.raises(ValueError, match=flag):
        models.validate_model_config(config, shape)


@pytest.mark.parametrize(
    "config, shape",
    [
        (ModelConfig(), (32, 32, 3)),
        (ModelConfig(model="mnist_cnn", disc_layers=2), (28, 28, 1)),
        (ModelConfig(model="mnist_cnn", disc_layers=4), (28, 28, 1)),
        (ModelConfig(wrn_depth=10, wrn_width=1, disc_layers=4), (28, 28, 1)),
    ],
)
def test_validate_model_config_accepts_valid_configs(config, shape):
    models.validate_model_config(config, shape)


def test_builders_validate_their_own_settings():
    with pytest.raises(ValueError, match="--wrn_depth"):
        models.build_classifier(ModelConfig(wrn_depth=30), (32, 32, 3), 10)
    with pytest.raises(ValueError, match="--disc_layers"):
        models.build_discriminator(ModelConfig(disc_layers=5), (28, 28, 1))
    with pytest.raises(ValueError, match="--model"):
        models.build_classifier(ModelConfig(model="vgg"), (32, 32, 3), 10)
    # The classifier does not care about the discriminator's settings.
    models.build_classifier(ModelConfig(model="mnist_cnn", cnn_channels=(4,), disc_layers=9), (28, 28, 1), 10)


# -- kernel_variables ------------------------------------------------------------
def test_kernel_variables_returns_only_conv_and_dense_kernels():
    wrn = models.build_classifier(TINY_WRN, (32, 32, 3), 10)
    kernels = models.kernel_variables(wrn)
    # init conv + 3 stages x 1 unit x 2 convs + logits.
    assert len(kernels) == 8
    assert all(len(k.shape) in (2, 4) for k in kernels)
    expected = [
        layer.kernel for layer in wrn.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert [k.path for k in kernels] == [k.path for k in expected]
    kernel_ids = {id(k) for k in kernels}
    others = [v for v in wrn.trainable_variables if id(v) not in kernel_ids]
    # Everything else is a BN gamma/beta or the logits bias.
    assert others and all(len(v.shape) == 1 for v in others)
    assert (
        len(others) == 2 * sum(isinstance(layer, keras.layers.BatchNormalization) for layer in wrn.layers) + 1
    )

    assert len(models.kernel_variables(models.build_classifier(TINY_CNN, (28, 28, 1), 10))) == 4
    assert len(models.kernel_variables(models.build_adaptor((28, 28, 1)))) == 1
    assert len(models.kernel_variables(models.build_discriminator(TINY_CNN, (28, 28, 1)))) == 4
    # Nested models are searched, each kernel once.
    inputs = keras.Input((32, 32, 3))
    nested = keras.Model(inputs, [wrn(inputs), wrn(inputs)])
    assert [k.path for k in models.kernel_variables(nested)] == [k.path for k in kernels]


# -- Serialisation ---------------------------------------------------------------
def _networks() -> dict:
    keras.utils.set_random_seed(0)
    return {
        "wrn": (models.build_classifier(TINY_WRN, (32, 32, 3), 10), (32, 32, 3)),
        "mnist_cnn": (models.build_classifier(TINY_CNN, (28, 28, 1), 10), (28, 28, 1)),
        "adaptor": (models.build_adaptor((32, 32, 3)), (32, 32, 3)),
        "discriminator": (models.build_discriminator(TINY_WRN, (32, 32, 3)), (32, 32, 3)),
    }


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict:
    """name -> (path of the .keras file, path of inputs .npy, expected outputs)."""
    directory = tmp_path_factory.mktemp("saved_models")
    out = {}
    for name, (model, shape) in _networks().items():
        x = _images(shape, n=4, seed=5)
        # A training-mode pass moves the BN statistics off their initial values,
        # so the round trip must carry the non-trainable weights too.
        model(_images(shape, n=8, seed=6), training=True)
        expected = np.asarray(model(x, training=False))
        path = str(directory / f"{name}.keras")
        model.save(path)
        np.save(directory / f"{name}_x.npy", x)
        np.save(directory / f"{name}_y.npy", expected)
        out[name] = (path, str(directory / f"{name}_x.npy"), expected)
    return out


@pytest.mark.parametrize("name", ["wrn", "mnist_cnn", "adaptor", "discriminator"])
def test_keras_round_trip_gives_identical_outputs(saved_models, name):
    path, x_path, expected = saved_models[name]
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(np.load(x_path), training=False)), expected)


NUMPY_BACKEND_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import jarn_tf.layers  # registers the custom layers
    assert keras.backend.backend() == "numpy", keras.backend.backend()
    result = {"tensorflow_imported": "tensorflow" in sys.modules, "outputs": {}}
    for name, path, x_path in json.loads(sys.argv[1]):
        model = keras.saving.load_model(path)
        result["outputs"][name] = np.asarray(model(np.load(x_path), training=False)).tolist()
    print(json.dumps(result))
""")


def test_models_saved_under_tensorflow_load_under_the_numpy_backend(saved_models):
    # Keras' numpy backend needs jax and scipy (requirements-dev.txt). Only their absence outside CI
    # skips; with them installed, any failure to load is a failure.
    missing = [m for m in ("jax", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"Keras' numpy backend needs {' and '.join(missing)}, not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI (CI={os.environ['CI']}) must run this test, not skip it")
        pytest.skip(reason)
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=REPO)
    args = json.dumps([(name, path, x_path) for name, (path, x_path, _) in saved_models.items()])
    proc = subprocess.run(
        [sys.executable, "-c", NUMPY_BACKEND_SCRIPT, args], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["tensorflow_imported"], "jarn_tf.layers (or jarn_tf/__init__) imported tensorflow"
    assert sorted(result["outputs"]) == sorted(saved_models)
    for name, (_, _, expected) in saved_models.items():
        np.testing.assert_allclose(np.array(result["outputs"][name]), expected, atol=1e-4, err_msg=name)


# -- Synchronised batch norm -----------------------------------------------------
def _batch_norms(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("sync", [False, True])
def test_sync_batchnorm_sets_synchronized(sync):
    config = ModelConfig(wrn_depth=10, wrn_width=1, disc_layers=2, disc_base_channels=4, sync_batchnorm=sync)
    wrn = models.build_classifier(config, (32, 32, 3), 10)
    disc = models.build_discriminator(config, (32, 32, 3))
    assert len(_batch_norms(wrn)) == 7 and len(_batch_norms(disc)) == 2
    for bn in _batch_norms(wrn) + _batch_norms(disc):
        assert bn.synchronized is sync
        assert bn.momentum == 0.9 and bn.epsilon == models.BN_EPSILON
    if sync:  # still runs (and trains) outside any distribution strategy
        x = _images((32, 32, 3), n=2)
        assert np.all(np.isfinite(np.asarray(wrn(x, training=True))))
