"""Our PGD against CleverHans 4's PGD (test-only dependency)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.core import data, loop as train_lib
from jarn_tf.robustness import attacks

cleverhans_pgd = pytest.importorskip("cleverhans.tf2.attacks.projected_gradient_descent")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("eps, steps", [(0.05, 10), (0.1, 1)])
def test_pgd_matches_cleverhans_without_random_start(tiny_data_dir, tmp_path, eps, steps, tiny_config):
    config = tiny_config(train_steps=30)
    model = train_lib.train(config, str(tmp_path / "run"), eval_examples=0, verbose=0).trainer.networks[
        "classifier"
    ]
    model_fn = lambda x: model(x, training=False)  # noqa: E731
    images, labels = next(iter(data.make_eval_dataset(config.data, batch_size=64)))
    step = eps / 4 if steps > 1 else eps
    ours = attacks.pgd(model_fn, images, labels, eps, step, steps, random_start=False).numpy()
    theirs = cleverhans_pgd.projected_gradient_descent(
        model_fn,
        images,
        eps,
        step,
        steps,
        np.inf,
        clip_min=0.0,
        clip_max=1.0,
        y=labels,
        rand_init=False,
        sanity_checks=False,
    ).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    # The attack did something: it is not the identity.
    assert np.abs(ours - images.numpy()).max() > eps / 2


def _bench_cli(*args) -> subprocess.CompletedProcess:
    """``python -m jarn_tf.bench_attacks ARGS`` from the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "jarn_tf.bench.attacks", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
    )


def test_benchmark_command_prints_figures():
    proc = _bench_cli("--batch_size=8", "--steps=2", "--repeats=1", "--cnn_channels=4,8,8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jarn_tf pgd (tf.function)" in proc.stdout and "cleverhans pgd (eager)" in proc.stdout
    assert "jarn_tf pgd (XLA, --jit_compile)" in proc.stdout
    assert "images / s" in proc.stdout and "pixels differing" in proc.stdout


def test_conv_flops_counts_every_tap():
    from jarn_tf.bench.attacks import conv_flops

    # The Fashion-MNIST CNN's first convolution: 250 images, 14x14 outputs, 5x5x1 -> 64.
    assert conv_flops(250, (14, 14), (5, 5, 1, 64)) == 2 * 250 * 14 * 14 * 64 * 25


def test_profile_passes_prints_every_convolution(tmp_path):
    import json

    output = tmp_path / "profile.json"
    proc = _bench_cli(
        "--profile_passes", "--pass_batch_size=4", "--repeats=1", "--cnn_channels=4,8,8", f"--output={output}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(output.read_text())
    # The three convolutions of the MNIST CNN, with their shapes (5x5, stride 2, same padding).
    assert [(r["name"], r["input"], r["output"]) for r in summary["layers"]] == [
        ("conv0", [28, 28, 1], [14, 14, 4]),
        ("conv1", [14, 14, 4], [7, 7, 8]),
        ("conv2", [7, 7, 8], [4, 4, 8]),
    ]
    assert summary["layers"][1]["gflop"] == pytest.approx(2 * 4 * 49 * 8 * 25 * 4 / 1e9)
    for row in summary["layers"]:
        for dtype in ("float32", "bfloat16"):
            assert row[dtype]["forward_ms"] > 0 and row[dtype]["input_grad_ms"] > 0
    assert set(summary["model"]) == {"tf.function", "XLA (jit_compile)"}
    assert "| conv2 | 7x7x8 -> 4x4x8 |" in proc.stdout and "forward + input gradient" in proc.stdout


def test_profile_passes_and_compare_official_are_refused_together():
    proc = _bench_cli("--profile_passes", "--compare_official")
    assert proc.returncode == 2 and "separate modes" in proc.stdout
