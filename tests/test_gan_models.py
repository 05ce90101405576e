"""The ``gan`` mode's networks (``jarn_tf.gan.models``): Table 3 of Zhou & Kraehenbuehl (ICLR 2019)
pinned layer by layer, and the architecture options of their Table 2 study (``--gan_block``,
``--gan_activation``, ``--gan_norm``), whose defaults must leave the paper's networks untouched.

Networks are built with 4 or 8 channels: building costs ~1 s each on one CPU core, a forward
pass much less; nothing is trained here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf import config as config_lib
from jarn_tf.core import data, trainer as trainer_lib
from jarn_tf.gan import models as gan_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT_DIM = 8
MNIST_SHAPE = (28, 28, 1)

NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.GroupNormalization)

# ---------------------------------------------------------------------------
# 1. Table 3 (Appendix C) at the default options.

# (layer name, output shape without the batch axis) of the layers that make Table 3's rows: the
# blocks' internals (norm, nonlinearity, conv3x3) are checked separately. C = 8 channels.
C = 8
GENERATOR_ROWS = {
    # Table 3a: linear to 4*4*C, reshape, 2 residual blocks, 3 x [upsample, residual block],
    # (final norm + ReLU), conv 1x1, sigmoid.
    (32, 32, 3): [
        ("linear", (4 * 4 * C,)),
        ("reshape", (4, 4, C)),
        ("block0_add", (4, 4, C)),
        ("block1_add", (4, 4, C)),
        ("up0", (8, 8, C)),
        ("up0_block_add", (8, 8, C)),
        ("up1", (16, 16, C)),
        ("up1_block_add", (16, 16, C)),
        ("up2", (32, 32, C)),
        ("up2_block_add", (32, 32, C)),
        ("to_image", (32, 32, 3)),
        ("images", (32, 32, 3)),
    ],
    # 28 x 28: base 7 and one stage fewer.
    (28, 28, 1): [
        ("linear", (7 * 7 * C,)),
        ("reshape", (7, 7, C)),
        ("block0_add", (7, 7, C)),
        ("block1_add", (7, 7, C)),
        ("up0", (14, 14, C)),
        ("up0_block_add", (14, 14, C)),
        ("up1", (28, 28, C)),
        ("up1_block_add", (28, 28, C)),
        ("to_image", (28, 28, 1)),
        ("images", (28, 28, 1)),
    ],
}
DISCRIMINATOR_ROWS = {
    # Table 3b: conv 3x3, residual block, 3 x [downsample, residual block], 3 more residual
    # blocks (4 at 4 x 4 in all), (final norm + leaky ReLU), global average pooling, linear 1.
    (32, 32, 3): [
        ("conv_in", (32, 32, C)),
        ("block0_add", (32, 32, C)),
        ("down0", (16, 16, C)),
        ("down0_block_add", (16, 16, C)),
        ("down1", (8, 8, C)),
        ("down1_block_add", (8, 8, C)),
        ("down2", (4, 4, C)),
        ("down2_block_add", (4, 4, C)),
        ("extra0_add", (4, 4, C)),
        ("extra1_add", (4, 4, C)),
        ("extra2_add", (4, 4, C)),
        ("features", (C,)),
        ("score", (1,)),
    ],
    (28, 28, 1): [
        ("conv_in", (28, 28, C)),
        ("block0_add", (28, 28, C)),
        ("down0", (14, 14, C)),
        ("down0_block_add", (14, 14, C)),
        ("down1", (7, 7, C)),
        ("down1_block_add", (7, 7, C)),
        ("extra0_add", (7, 7, C)),
        ("extra1_add", (7, 7, C)),
        ("extra2_add", (7, 7, C)),
        ("features", (C,)),
        ("score", (1,)),
    ],
}
_INTERNAL = NORM_LAYERS + (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.InputLayer)


def _rows(model: keras.Model) -> list:
    """(name, output shape) of the layers but the blocks' and final norms, nonlinearities and conv3x3s."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, _INTERNAL) or (
            isinstance(layer, keras.layers.Conv2D) and layer.name.rsplit("_", 1)[-1] in ("conv1", "conv2")
        ):
            continue
        rows.append((layer.name, tuple(layer.output.shape[1:])))
    return rows


def _blocks(model: keras.Model) -> list:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]


def _check_block_internals(model: keras.Model, norm: type, activation: type) -> None:
    """Every residual block is (norm, nonlinearity, conv3x3 with C filters) x 2 plus the identity."""
    for add in _blocks(model):
        prefix = add[: -len("_add")]
        inner = [layer for layer in model.layers if layer.name.startswith(prefix + "_")]
        kinds = [type(layer) for layer in inner]
        assert kinds == [norm, activation, keras.layers.Conv2D] * 2 + [keras.layers.Add], (add, kinds)
        for conv in (inner[2], inner[5]):
            assert conv.filters == C and tuple(conv.kernel_size) == (3, 3), conv.name
            assert conv.padding == "same", conv.name
        # The identity: the block's input (what its first norm reads) is the first summand.
        assert model.get_layer(add).input[0] is inner[0].input, add


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)], ids=["cifar10_32x32x3", "mnist_28x28x1"])
def test_table3_architecture_at_the_default_options(shape):
    stages = 3 if shape[0] == 32 else 2
    gen = gan_models.build_generator(LATENT_DIM, shape, channels=C)
    disc = gan_models.build_gan_discriminator(shape, channels=C)

    assert _rows(gen) == GENERATOR_ROWS[shape]
    assert len(_blocks(gen)) == 2 + stages
    assert gen.get_layer("linear").units == (4 if shape[0] == 32 else 7) ** 2 * C
    to_image = gen.get_layer("to_image")
    assert tuple(to_image.kernel_size) == (1, 1) and to_image.filters == shape[-1]
    assert gen.get_layer("images").activation is keras.activations.sigmoid
    _check_block_internals(gen, keras.layers.BatchNormalization, keras.layers.ReLU)
    # Pre-activation: the last block's sum is normalised and activated before the 1x1 conv.
    assert [type(gen.layers[i]) for i in (-4, -3)] == [keras.layers.BatchNormalization, keras.layers.ReLU]

    assert _rows(disc) == DISCRIMINATOR_ROWS[shape]
    assert len(_blocks(disc)) == 1 + stages + 3
    conv_in = disc.get_layer("conv_in")
    assert conv_in.filters == C and tuple(conv_in.kernel_size) == (3, 3)
    score = disc.get_layer("score")
    assert score.units == 1 and score.activation is keras.activations.linear
    _check_block_internals(disc, keras.layers.GroupNormalization, keras.layers.LeakyReLU)
    for layer in disc.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            assert layer.groups == C, layer.name  # instance norm: one group per channel
        if isinstance(layer, keras.layers.LeakyReLU):
            assert layer.negative_slope == pytest.approx(0.2), layer.name
    last = [type(disc.layers[i]) for i in (-4, -3)]
    assert last == [keras.layers.GroupNormalization, keras.layers.LeakyReLU]
    # Every conv of both networks but the 1x1 output conv has C filters.
    convs = [layer for m in (gen, disc) for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.filters == C for layer in convs if layer.name != "to_image")


# ---------------------------------------------------------------------------
# 2. Defaults unchanged: the layer names the networks had before the options existed
# (recorded from gan_models.py at 2ba8f62, 28 x 28 x 1), and the same weights and outputs.


RECORDED_GENERATOR_NAMES = [
    'latent', 'linear', 'reshape',
    'block0_bn1', 'block0_relu1', 'block0_conv1', 'block0_bn2', 'block0_relu2', 'block0_conv2', 'block0_add',
    'block1_bn1', 'block1_relu1', 'block1_conv1', 'block1_bn2', 'block1_relu2', 'block1_conv2', 'block1_add',
    'up0',
    'up0_block_bn1', 'up0_block_relu1', 'up0_block_conv1', 'up0_block_bn2', 'up0_block_relu2',
    'up0_block_conv2', 'up0_block_add',
    'up1',
    'up1_block_bn1', 'up1_block_relu1', 'up1_block_conv1', 'up1_block_bn2', 'up1_block_relu2',
    'up1_block_conv2', 'up1_block_add',
    'final_bn', 'final_relu', 'to_image', 'images',
]  # fmt: skip
RECORDED_DISCRIMINATOR_NAMES = [
    'images', 'conv_in',
    'block0_in1', 'block0_lrelu1', 'block0_conv1',
    'block0_in2', 'block0_lrelu2', 'block0_conv2', 'block0_add',
    'down0',
    'down0_block_in1', 'down0_block_lrelu1', 'down0_block_conv1', 'down0_block_in2', 'down0_block_lrelu2',
    'down0_block_conv2', 'down0_block_add',
    'down1',
    'down1_block_in1', 'down1_block_lrelu1', 'down1_block_conv1', 'down1_block_in2', 'down1_block_lrelu2',
    'down1_block_conv2', 'down1_block_add',
    'extra0_in1', 'extra0_lrelu1', 'extra0_conv1',
    'extra0_in2', 'extra0_lrelu2', 'extra0_conv2', 'extra0_add',
    'extra1_in1', 'extra1_lrelu1', 'extra1_conv1',
    'extra1_in2', 'extra1_lrelu2', 'extra1_conv2', 'extra1_add',
    'extra2_in1', 'extra2_lrelu1', 'extra2_conv1',
    'extra2_in2', 'extra2_lrelu2', 'extra2_conv2', 'extra2_add',
    'final_in', 'final_lrelu', 'features', 'score',
]  # fmt: skip


def _build_pair(**options):
    """Generator and discriminator at 28 x 28 x 1, 4 channels, seed 0 (``options`` given to both)."""
    keras.utils.set_random_seed(0)
    gen = gan_models.build_generator(LATENT_DIM, MNIST_SHAPE, channels=4, **options.get("g", {}))
    disc = gan_models.build_gan_discriminator(MNIST_SHAPE, channels=4, **options.get("d", {}))
    return gen, disc


def _inputs(n: int = 3):
    z = np.random.default_rng(1).normal(size=(n, LATENT_DIM)).astype(np.float32)
    x = np.random.default_rng(2).random((n, *MNIST_SHAPE), dtype=np.float32)
    return z, x


def _outputs(gen, disc):
    z, x = _inputs()
    score, features = disc(x, training=False)
    return [np.asarray(gen(z, training=False)), np.asarray(score), np.asarray(features)]


def test_default_options_build_the_networks_of_before():
    gen, disc = _build_pair()
    assert [layer.name for layer in gen.layers] == RECORDED_GENERATOR_NAMES
    assert [layer.name for layer in disc.layers] == RECORDED_DISCRIMINATOR_NAMES
    reference = [w.numpy() for w in gen.weights + disc.weights]
    outputs = _outputs(gen, disc)
    explicit_none = dict(block="resnet", activation=None, norm=None)
    for options in (
        dict(g=explicit_none, d=explicit_none),
        # The paper's choices spelled out give the same networks.
        dict(g=dict(activation="relu", norm="batch"), d=dict(activation="leaky_relu", norm="instance")),
        # What the trainer passes for the flags' defaults.
        dict(g=gan_models.network_options("resnet", "paper", "paper"), d=gan_models.network_options()),
    ):
        g2, d2 = _build_pair(**options)
        assert [layer.name for layer in g2.layers] == RECORDED_GENERATOR_NAMES, options
        assert [layer.name for layer in d2.layers] == RECORDED_DISCRIMINATOR_NAMES, options
        weights = [w.numpy() for w in g2.weights + d2.weights]
        assert len(weights) == len(reference)
        assert all(np.array_equal(a, b) for a, b in zip(reference, weights)), options
        assert all(np.array_equal(a, b) for a, b in zip(outputs, _outputs(g2, d2))), options
    # Not vacuous: another seed gives other weights.
    keras.utils.set_random_seed(1)
    other = gan_models.build_gan_discriminator(MNIST_SHAPE, channels=4)
    kernel = disc.get_layer("conv_in").kernel.numpy()
    assert not np.array_equal(other.get_layer("conv_in").kernel.numpy(), kernel)


def test_network_options_leave_the_defaults_out():
    assert gan_models.network_options() == {}
    assert gan_models.network_options("resnet", "paper", "paper") == {}
    options = gan_models.network_options("vanilla", "tanh", "none")
    assert options == dict(block="vanilla", activation="tanh", norm="none")
    assert gan_models.network_options(norm="batch") == dict(norm="batch")


# ---------------------------------------------------------------------------
# 3. Each option builds, runs, and is made of the layers it names.

ACTIVATION_CLASSES = {
    "relu": keras.layers.ReLU,
    "leaky_relu": keras.layers.LeakyReLU,
    "tanh": keras.layers.Activation,
}


def _activation_layers(model: keras.Model) -> list:
    """The nonlinearities of the blocks and the final one (not the generator's sigmoid output)."""
    kinds = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.Activation)
    return [layer for layer in model.layers if isinstance(layer, kinds) and layer.name != "images"]


@pytest.mark.parametrize(
    "option, value",
    [
        ("block", "resnet"),
        ("block", "vanilla"),
        ("activation", "relu"),
        ("activation", "leaky_relu"),
        ("activation", "tanh"),
        ("norm", "batch"),
        ("norm", "instance"),
        ("norm", "none"),
    ],
)
def test_each_option_builds_and_runs(option, value):
    gen, disc = _build_pair(g={option: value}, d={option: value})
    z, x = _inputs()
    images = np.asarray(gen(z, training=True))
    score, features = disc(images, training=True)
    score2, _ = disc(x, training=False)
    assert images.shape == (3, *MNIST_SHAPE) and np.all((images >= 0) & (images <= 1))
    assert score.shape == (3, 1) and features.shape == (3, 4)
    assert np.all(np.isfinite(score)) and np.all(np.isfinite(score2)) and np.all(np.isfinite(features))
    for model, blocks in ((gen, 4), (disc, 6)):
        # Stock Keras layers only: an export loads without this package.
        assert all(type(layer).__module__.startswith("keras.") for layer in model.layers), model.name
        adds = _blocks(model)
        norms = [layer for layer in model.layers if isinstance(layer, NORM_LAYERS)]
        acts = _activation_layers(model)
        # The same trainable convs and dense layers whatever the options.
        assert len([lyr for lyr in model.layers if isinstance(lyr, keras.layers.Conv2D)]) == 2 * blocks + 1
        assert len(acts) == 2 * blocks + 1, [a.name for a in acts]
        if option == "block":
            assert len(adds) == (blocks if value == "resnet" else 0), adds
        else:
            assert len(adds) == blocks, adds
        if option == "norm":
            if value == "none":
                assert norms == [], [n.name for n in norms]
            else:
                kinds = dict(batch=keras.layers.BatchNormalization, instance=keras.layers.GroupNormalization)
                kind = kinds[value]
                assert len(norms) == 2 * blocks + 1 and all(type(n) is kind for n in norms), model.name
                # Instance norm: one group per channel.
                assert all(n.groups == 4 for n in norms if kind is keras.layers.GroupNormalization)
        else:
            assert len(norms) == 2 * blocks + 1
        if option == "activation":
            assert all(type(a) is ACTIVATION_CLASSES[value] for a in acts), [type(a) for a in acts]
            if value == "leaky_relu":
                assert all(a.negative_slope == pytest.approx(0.2) for a in acts)
            if value == "tanh":
                assert all(a.activation is keras.activations.tanh for a in acts)
                assert all(a.name.endswith(("tanh", "tanh1", "tanh2")) for a in acts)


def test_vanilla_blocks_are_the_residual_blocks_without_the_shortcut():
    # Same layers and initial weights; only the identity is gone, so the outputs differ.
    res_g, res_d = _build_pair()
    van_g, van_d = _build_pair(g=dict(block="vanilla"), d=dict(block="vanilla"))
    for res, van in ((res_g, van_g), (res_d, van_d)):
        assert [n for n in (lyr.name for lyr in res.layers) if not n.endswith("_add")] == [
            lyr.name for lyr in van.layers
        ]
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(res.weights, van.weights))
    z, x = _inputs()
    assert not np.allclose(res_g(z, training=False), van_g(z, training=False))
    assert not np.allclose(res_d(x, training=False)[0], van_d(x, training=False)[0])


# ---------------------------------------------------------------------------
# 4. Unknown options and flags.


@pytest.mark.parametrize("builder", ["generator", "discriminator"])
@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("block", "dense", "('resnet', 'vanilla')"),
        ("activation", "paper", "('relu', 'leaky_relu', 'tanh')"),
        ("activation", "elu", "('relu', 'leaky_relu', 'tanh')"),
        ("norm", "layer", "('batch', 'instance', 'none')"),
    ],
)
def test_unknown_option_is_refused_naming_it(builder, option, value, allowed):
    build = (
        (lambda **o: gan_models.build_generator(LATENT_DIM, MNIST_SHAPE, channels=4, **o))
        if builder == "generator"
        else (lambda **o: gan_models.build_gan_discriminator(MNIST_SHAPE, channels=4, **o))
    )
    with pytest.raises(ValueError) as info:
        build(**{option: value})
    message = str(info.value)
    assert f"{option}={value!r}" in message and allowed in message and "\n" not in message, message


def _gan_config(**fields) -> config_lib.ExperimentConfig:
    values = dict(
        mode="gan",
        dataset="fashion_mnist",
        download=False,
        model="mnist_cnn",  # the classifier's model section is validated in every mode
        disc_layers=2,
        latent_dim=LATENT_DIM,
        gan_channels=4,
        batch_size=8,
        train_steps=2,
    )
    values.update(fields)
    return config_lib.with_fields(config_lib.ExperimentConfig(), **values)


def test_config_fields_default_to_the_paper_and_validate():
    section = config_lib.GANConfig()
    assert (section.gan_block, section.gan_activation, section.gan_norm) == ("resnet", "paper", "paper")
    # The option names are one table, shared by the config and the networks.
    assert gan_models.GAN_BLOCKS is config_lib.GAN_BLOCKS == ("resnet", "vanilla")
    assert gan_models.GAN_ACTIVATIONS is config_lib.GAN_ACTIVATIONS == ("relu", "leaky_relu", "tanh")
    assert gan_models.GAN_NORMS is config_lib.GAN_NORMS == ("batch", "instance", "none")
    _gan_config(gan_block="vanilla", gan_activation="tanh", gan_norm="none").validate()
    for field, value in (("gan_block", "dense"), ("gan_activation", "elu"), ("gan_norm", "layer")):
        with pytest.raises(ValueError, match=f"--{field} must be one of .*, got '{value}'"):
            _gan_config(**{field: value}).validate()


def _flags(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m jarn_tf.train`` with these flags only (a flag error stops it before TensorFlow loads)."""
    return subprocess.run(
        [sys.executable, "-m", "jarn_tf.train", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
        cwd=REPO,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flag, allowed",
    [
        ("--gan_block=dense", "<resnet|vanilla>"),
        ("--gan_activation=elu", "<paper|relu|leaky_relu|tanh>"),
        ("--gan_norm=layer", "<paper|batch|instance|none>"),
    ],
)
def test_bad_architecture_flag_fails_before_any_work(flag, allowed, tmp_path):
    # An enum flag: absl refuses the value while parsing, with exit code 1 (README: "exit code 1 for
    # absl flag errors, 2 for the rest"), naming the flag and its values; no model_dir is made.
    model_dir = tmp_path / "bad"
    proc = _flags("--mode=gan", "--dataset=fashion_mnist", flag, f"--model_dir={model_dir}")
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Flags parsing error" in proc.stderr, proc.stderr[-2000:]
    assert flag in proc.stderr and allowed in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not model_dir.exists()


def test_architecture_flags_are_listed_in_help():
    proc = _flags("--helpfull")
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-2000:]
    for flag, choices, words in (
        ("gan_block", "<resnet|vanilla>", "vanilla convolution"),
        ("gan_activation", "<paper|relu|leaky_relu|tanh>", "leaky ReLU (slope 0.2) in the discriminator"),
        ("gan_norm", "<paper|batch|instance|none>", "instance norm in the discriminator"),
    ):
        start = text.index(f"--{flag}:")
        entry = " ".join(text[start : start + 700].split())
        assert choices in entry and words in entry and "Table 2" in entry, entry


def _resolve(args: list) -> config_lib.ExperimentConfig:
    from absl import flags

    from jarn_tf.core import flag_utils

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    fv(["prog"] + list(args))
    return flag_utils.config_from_flags(fv)


def test_flags_reach_the_config_in_gan_mode_only():
    config = _resolve(["--mode=gan", "--gan_block=vanilla", "--gan_activation=tanh", "--gan_norm=none"])
    p = config.mode_config
    assert (p.gan_block, p.gan_activation, p.gan_norm) == ("vanilla", "tanh", "none")
    p = _resolve(["--mode=gan"]).mode_config
    assert (p.gan_block, p.gan_activation, p.gan_norm) == ("resnet", "paper", "paper")
    # Rob-GAN (--mode=advgan) has its own networks: the flags are refused there, not ignored.
    with pytest.raises(ValueError, match=r"--mode=advgan does not use --gan_block \(--mode=gan\)"):
        _resolve(["--mode=advgan", "--gan_block=vanilla"])


# ---------------------------------------------------------------------------
# 5. The config's fields reach the trainer's networks.


@pytest.mark.parametrize("options", ["paper", "vanilla_none_tanh"])
def test_trainer_builds_the_configured_networks(options):
    fields = dict(gan_block="vanilla", gan_norm="none", gan_activation="tanh") if options != "paper" else {}
    config = _gan_config(**fields)
    config.validate()
    keras.utils.set_random_seed(0)
    trainer = trainer_lib.build_trainer(config, data.dataset_info("fashion_mnist"), tf.distribute.get_strategy())
    gen, disc = trainer.networks["generator"], trainer.networks["discriminator"]
    if options == "paper":
        assert [layer.name for layer in gen.layers] == RECORDED_GENERATOR_NAMES
        assert [layer.name for layer in disc.layers] == RECORDED_DISCRIMINATOR_NAMES
        return
    for model in (gen, disc):
        assert _blocks(model) == [], model.name
        assert not any(isinstance(layer, NORM_LAYERS) for layer in model.layers), model.name
        acts = _activation_layers(model)
        assert acts and all(
            type(a) is keras.layers.Activation and a.activation is keras.activations.tanh for a in acts
        ), model.name
    z, _ = _inputs()
    images = gen(z, training=False)
    assert images.shape == (3, *MNIST_SHAPE) and disc(images, training=False)[0].shape == (3, 1)
