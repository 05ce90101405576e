"""jarn_tf.bench.flops: the HLO FLOP count against hand counts, and the command on a CPU flagfile.

Hand counts are exact (tolerance 1e-9 relative) for the convolutions and dots: every network
here has no bias and the loss is a plain sum, so the matrix work is known to the multiply.
"""

from __future__ import annotations

import json

import keras
import pytest
import tensorflow as tf

from jarn_tf.bench import flops as bench_flops
from jarn_tf.robustness import attacks

B, D, K = 4, 12, 5  # batch, inputs, outputs of the dense layer


def _hlo(fn, *args) -> str:
    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


def _weight_grads(model):
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        # The loss is returned, as a training step's is: else its forward pass is dead code.
        return loss, tape.gradient(loss, model.trainable_variables)

    return step


def test_dense_layer_training_step_is_two_matmuls_of_2bdk():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False)])
    flops = bench_flops.hlo_flops(_hlo(_weight_grads(model), tf.zeros([B, D])))
    # forward x W (2BDK) and the kernel's gradient x^T dy (2BDK); the input gradient, which the
    # HLO before optimisation still holds, is dead code and not counted.
    assert flops.dot == pytest.approx(4 * B * D * K, rel=1e-9)
    assert flops.conv == 0 and flops.notes == []


@pytest.mark.parametrize("size", [6, 9])
def test_valid_convolution_counts_every_multiply_add(size):
    f, c, k = 3, 2, 3
    model = keras.Sequential(
        [keras.Input((size, size, c)), keras.layers.Conv2D(f, k, padding="valid", use_bias=False)]
    )
    flops = bench_flops.hlo_flops(_hlo(_weight_grads(model), tf.zeros([B, size, size, c])))
    out = size - k + 1
    # forward and the kernel's gradient: B * out^2 * F * k^2 * C multiply-adds each.
    assert flops.conv == pytest.approx(2 * 2 * B * out * out * f * k * k * c, rel=1e-9)


def test_strided_same_convolution_skips_padding_and_dilation_holes():
    size, f, c, k = 8, 3, 2, 3
    model = keras.Sequential(
        [keras.Input((size, size, c)), keras.layers.Conv2D(f, k, strides=2, padding="same", use_bias=False)]
    )

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x))
        return loss, tape.gradient(loss, [x] + model.trainable_variables)

    flops = bench_flops.hlo_flops(_hlo(step, tf.zeros([B, size, size, c])))
    out = size // 2
    # Per dimension 3 * out - 1 (output, kernel) pairs read the image: the last output's last tap
    # is padding. The input gradient (a convolution over the 2x-dilated gradient) and the kernel's
    # gradient do exactly the forward's multiply-adds: 3 x 2 x B F C (3 out - 1)^2.
    pairs = (3 * out - 1) ** 2
    assert flops.conv == pytest.approx(3 * 2 * B * f * c * pairs, rel=1e-9)


def test_pgd_while_loop_counts_its_steps():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False)])
    steps = 3

    def step(x, y):
        adv = attacks.pgd(lambda z: model(z), x, y, 0.1, 0.02, steps, random_start=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(adv))
        return loss, tape.gradient(loss, model.trainable_variables)

    hlo = _hlo(step, tf.zeros([B, D]), tf.zeros([B], tf.int64))
    assert " while(" in hlo
    flops = bench_flops.hlo_flops(hlo)
    # Each PGD step: forward and the input gradient (2BDK each); then the training step's two.
    assert flops.dot == pytest.approx((steps + 1) * 4 * B * D * K, rel=1e-9)
    assert flops.notes == []


def test_count_variants_weights_the_schedule():
    counts = bench_flops.count_variants(lambda s: ("d", (s + 1) % 5 == 0), 20)
    assert dict(counts) == {("d", False): 16, ("d", True): 4}


def test_step_flags_keep_what_changes_the_step():
    args = ["-m", "jarn_tf.train", "--flagfile=flags/cifar10_jarn.cfg", "--seed=1", "--model_dir=x"]
    args += ["--nodownload", "--verbose=0", "--batch_size=32", "--fcd_samples=10"]
    assert bench_flops.step_flags(args) == ("flags/cifar10_jarn.cfg", ("--batch_size=32",))


def test_command_prints_a_row_and_writes_json(tmp_path):
    lines = []
    path = tmp_path / "flops.json"
    argv = ["--flagfile=flags/cpu_standard.cfg", "--extra_flags=--train_steps=20", f"--output={path}"]
    assert bench_flops.main(argv, out=lines.append) == 0
    rows = [line for line in lines if line.startswith("cpu_standard --train_steps=20 ")]
    assert len(rows) == 1 and rows[0].split()[2] == "20", lines  # steps
    record = json.loads(path.read_text())
    (run,) = record["runs"]
    assert (run["train_steps"], run["batch_size"], run["images_per_step"]) == (20, 64, 64)
    assert run["dataset"] == "fashion_mnist" and len(run["variants"]) == 1
    assert run["flops_per_step"] > run["matmul_flops_per_step"] > 0
    assert run["total_flops"] == pytest.approx(20 * run["flops_per_step"])
    assert run["notes"] == [] and record["assumptions"]["peak_tflops"] == 156.0
