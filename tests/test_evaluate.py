"""Evaluation: attacks, results files, gradient-masking checks and analyses."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.robustness import analysis, attacks, autoattack
from jarn_tf.robustness.autoattack import ensemble as autoattack_ensemble
from jarn_tf import config as config_lib
from jarn_tf.core import data, export
from jarn_tf.jarn import losses
from jarn_tf.robustness import evaluation as eval_lib, checks as masking
from jarn_tf.robustness import reports as results_lib
from jarn_tf.core import loop as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tiny_config, **fields) -> config_lib.ExperimentConfig:
    """The tiny config, trained longer (60 steps of 32) for the evaluated models."""
    settings = dict(
        train_steps=60,
        batch_size=32,
        learning_rate=0.1,
        steps_per_loop=20,
        checkpoint_every=60,
        summary_every=60,
    )
    settings.update(fields)
    return tiny_config(**settings)


@pytest.fixture(scope="module")
def runs(tiny_config, tmp_path_factory):
    """Two undefended tiny CNNs trained by train_lib (different seeds)."""
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        model_dir = str(tmp_path_factory.mktemp(f"run_{name}"))
        train_lib.train(_config(tiny_config, seed=seed), model_dir, eval_examples=0, verbose=0)
        out[name] = model_dir
    return out


@pytest.fixture(scope="module")
def model_a(runs):
    return export.load_model(runs["a"])


def _dataset(data_dir: str, n: int = 48, batch_size: int = 20) -> tf.data.Dataset:
    # 48 = 2 full batches + a partial one.
    cfg = config_lib.DataConfig(dataset="fashion_mnist", data_dir=data_dir, download=False)
    return data.make_eval_dataset(cfg, batch_size, n)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "jarn_tf.evaluate", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


# ---------------------------------------------------------------------------
# Loading.


def test_load_model_forms_agree(runs, model_a, tiny_data_dir):
    export_dir = os.path.join(runs["a"], "export")
    images, _ = next(iter(_dataset(tiny_data_dir, 8, 8)))
    expected = model_a.model_fn(images).numpy()
    assert model_a.format == "keras" and model_a.dataset == "fashion_mnist"
    assert model_a.image_shape == (28, 28, 1) and model_a.model_dir == runs["a"]
    for path, fmt in (
        (export_dir, "keras"),
        (os.path.join(export_dir, "saved_model"), "saved_model"),
        (os.path.join(export_dir, "classifier.keras"), "keras"),
    ):
        m = export.load_model(path)
        assert m.format == fmt and m.image_shape == (28, 28, 1) and m.dataset == "fashion_mnist", path
        np.testing.assert_allclose(m.model_fn(images).numpy(), expected, rtol=1e-4, atol=1e-4)
    # The SavedModel is differentiable too.
    sm = export.load_model(os.path.join(export_dir, "saved_model"))
    labels = tf.zeros([8], tf.int64)
    _, g_sm = attacks.loss_gradient(sm.model_fn, images, labels, "margin")
    _, g_k = attacks.loss_gradient(model_a.model_fn, images, labels, "margin")
    np.testing.assert_allclose(g_sm.numpy(), g_k.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="not a model"):
        export.load_model(os.path.join(runs["a"], "checkpoints"))


@pytest.mark.parametrize(
    "metadata, eps",
    [
        ({"config": {"classifier": {"eps": 0.1}, "train": {"train_steps": 60}}}, 0.1),
        ({"config": {"train": {"eps": 0.3}}}, 0.3),  # exports written before the config was re-sectioned
        ({"config": {"classifier": {"eps": 0.1}, "train": {"eps": 0.3}}}, 0.1),
        ({"config": {}}, None),
        ({}, None),
    ],
)
def test_train_eps_read_from_new_and_old_config_layouts(metadata, eps):
    model = export.LoadedModel(
        model_fn=lambda x: x,
        path="classifier.keras",
        format="keras",
        image_shape=None,
        input_range=(0.0, 1.0),
        metadata=metadata,
    )
    assert model.train_eps == eps


def test_model_dataset_mismatch_is_an_error(model_a):
    export.check_model_matches_dataset(model_a, "fashion_mnist", (28, 28, 1))
    with pytest.raises(ValueError, match=r"shape \[28, 28, 1\].*cifar10"):
        export.check_model_matches_dataset(model_a, "cifar10", (32, 32, 3))


# ---------------------------------------------------------------------------
# Attacks.


def test_parse_attacks():
    names = [s.name for s in eval_lib.parse_attacks(["clean", "fgsm", "pgd5", "PGD20", "pgd5"], "both")]
    assert names == ["clean", "fgsm", "pgd5", "pgd5_margin", "pgd20", "pgd20_margin"]
    specs = eval_lib.parse_attacks(["pgd7_margin", "pgd3"], "xent", transfer=True)
    assert [(s.name, s.steps, s.loss, s.transfer) for s in specs] == [
        ("pgd7_margin", 7, "margin", False),
        ("transfer_pgd7_margin", 7, "margin", True),
        ("pgd3", 3, "xent", False),
        ("transfer_pgd3", 3, "xent", True),
    ]
    for bad in (["foo"], ["pgd0"], ["pgd"], [""], ["transfer_pgd5"]):
        with pytest.raises(ValueError):
            eval_lib.parse_attacks(bad)


ATTACKS = ["fgsm", "pgd5", "pgd5_margin", "transfer_pgd5"]


@pytest.mark.parametrize("name", ATTACKS)
def test_adversarial_examples_stay_in_the_eps_ball_and_in_range(name, runs, model_a, tiny_data_dir):
    eps = 0.15
    source = export.load_model(runs["b"]).model_fn
    spec = next(s for s in eval_lib.parse_attacks([name], transfer=True) if s.name == name)
    params = eval_lib.AttackParams(eps=eps, pgd_step_size=0.1, seed=3)
    for images, labels in _dataset(tiny_data_dir, 40, 20):
        adv, correct = eval_lib.craft_adversarial(
            spec, params, model_a.model_fn, images, labels, source_fn=source
        )
        adv, images = adv.numpy(), images.numpy()
        assert np.max(np.abs(adv - images)) <= eps + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert np.max(np.abs(adv - images)) > eps / 2  # it did move
        assert correct.shape == labels.shape
    # The same bound holds for what evaluate() records over all restarts.
    params = eval_lib.AttackParams(eps=eps, pgd_restarts=2, seed=3)
    out = eval_lib.evaluate(
        model_a.model_fn, _dataset(tiny_data_dir), [spec], params, source_fn=source, verbose=0
    )
    assert out.max_perturbation[name] <= eps + 1e-6
    lo, hi = out.pixel_range[name]
    assert 0.0 <= lo and hi <= 1.0


def _reference_pgd_linear(w, b, x, y, eps, step, steps):
    """Independent PGD (no random start) on logits = flatten(x) @ w + b, float64."""
    x0 = x.reshape(len(x), -1).astype(np.float64)
    adv = x0.copy()
    onehot = np.eye(w.shape[1])[y]
    for _ in range(steps):
        z = adv @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) @ w.T  # d xent / d x
        adv = np.clip(np.clip(adv + step * np.sign(grad), x0 - eps, x0 + eps), 0.0, 1.0)
    return adv.reshape(x.shape)


def test_pgd_without_random_start_matches_independent_implementation(tiny_data_dir):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    w, b = (v.numpy().astype(np.float64) for v in model.weights)
    images, labels = next(iter(_dataset(tiny_data_dir, 16, 16)))
    spec = eval_lib.parse_attacks(["pgd10"])[0]
    params = eval_lib.AttackParams(eps=0.1, pgd_step_size=0.02, pgd_random_start=False)
    adv, _ = eval_lib.craft_adversarial(spec, params, lambda x: model(x, training=False), images, labels)
    ref = _reference_pgd_linear(w, b, images.numpy(), labels.numpy(), 0.1, 0.02, 10)
    assert np.max(np.abs(ref - images.numpy())) > 0.05
    np.testing.assert_allclose(adv.numpy(), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------
# Gradient-masking checks.


def test_gradient_masking_is_detected(model_a, tiny_data_dir, tmp_path):
    eps = 0.3
    specs = eval_lib.parse_attacks(["clean", "fgsm", "pgd10"], "both")
    params = eval_lib.AttackParams(eps=eps, seed=0)
    ds = _dataset(tiny_data_dir)

    def masked(x):
        # Saturates the softmax: cross-entropy gradients underflow to 0.
        return 1e6 * model_a.model_fn(x)

    results = {}
    for name, fn in (("plain", model_a.model_fn), ("masked", masked)):
        out = eval_lib.evaluate(fn, ds, specs, params, verbose=0)
        checks = masking.masking_checks(out, specs, tolerance=0.05)
        res = results_lib.build_results(out, specs, params, checks, {"model": name}, 1.0)
        results_lib.write_results(res, str(tmp_path / name))
        results[name] = json.load(open(tmp_path / name / "results.json"))

    masked_res = results["masked"]
    acc = masked_res["accuracy"]
    assert acc["pgd10"] >= 0.9 and acc["fgsm"] >= 0.9
    assert acc["pgd10_margin"] <= 0.2
    assert acc["worst_case"] == min(v for k, v in acc.items() if k != "worst_case")
    check = {c["name"]: c for c in masked_res["checks"]}["xent_margin_agree"]
    assert not check["passed"] and check["detail"]["xent_minus_margin_accuracy"]["10"] > 0.5
    assert not masked_res["checks_passed"]
    assert "FAIL xent_margin_agree" in open(tmp_path / "masked" / "results.md").read()
    # The same attacks on the unmasked model reach lower xent accuracy.
    assert results["plain"]["accuracy"]["pgd10"] < acc["pgd10"]


def _fake_output(correct: dict) -> eval_lib.EvalOutput:
    n = len(next(iter(correct.values())))
    return eval_lib.EvalOutput(
        correct={k: np.asarray(v, bool) for k, v in correct.items()},
        labels=np.zeros(n, np.int64),
        max_perturbation={k: 0.0 for k in correct},
        pixel_range={k: (0.0, 1.0) for k in correct},
        seconds={k: 0.0 for k in correct},
    )


def test_each_masking_check_can_fail():
    specs = eval_lib.parse_attacks(["fgsm", "pgd5", "pgd20"], "xent", transfer=True)
    n = 10
    ok = [True] * 5 + [False] * 5
    # PGD robust where FGSM broke, more steps better, transfer stronger than white-box.
    out = _fake_output(
        {
            "fgsm": [False] * 10,
            "pgd5": ok,
            "transfer_pgd5": [False] * 10,
            "pgd20": [True] * 10,
            "transfer_pgd20": [True] * 10,
        }
    )
    checks = {c.name: c for c in masking.masking_checks(out, specs, tolerance=0.0)}
    assert not checks["pgd_beats_fgsm"].passed
    assert checks["pgd_beats_fgsm"].detail["robust_to_pgd_but_not_fgsm"] == {"pgd5": 5, "pgd20": n}
    assert not checks["more_steps_not_better_xent"].passed
    assert not checks["whitebox_beats_transfer"].passed
    assert checks["whitebox_beats_transfer"].detail["failed"] == ["pgd5"]
    # A consistent evaluation passes them all.
    good = _fake_output(
        {"fgsm": ok, "pgd5": ok, "transfer_pgd5": [True] * 10, "pgd20": ok, "transfer_pgd20": ok}
    )
    assert all(c.passed is not False for c in masking.masking_checks(good, specs, tolerance=0.0))


def test_blackbox_check_of_evaluate_with_a_stub_run_autoattack(monkeypatch, model_a, tiny_data_dir):
    # The check's plumbing when Square breaks what every white-box attack left, which the real
    # attacks do not do on these models; the real ensemble runs in the next test.
    calls = []

    def run_autoattack(model_fn, images, labels, eps, attacks=eval_lib.AUTOATTACK_PARTS, seed=0, **kwargs):
        # The white-box parts leave every other example standing; Square breaks them all.
        calls.append((tuple(attacks), eps, seed, len(labels)))
        n = len(labels)
        half = np.arange(n) % 2 == 0
        per_attack = {a: (np.zeros(n, bool) if a == "square" else half) for a in attacks}
        return {
            "robust": per_attack[attacks[-1]],
            "per_attack": per_attack,
            "adversarial": np.asarray(images),
            "seconds": {a: 0.0 for a in attacks},
        }

    monkeypatch.setattr(autoattack, "run_autoattack", run_autoattack)
    specs = eval_lib.parse_attacks(["clean", "pgd5", "autoattack", "square"])
    assert [s.parts for s in specs[2:]] == [eval_lib.AUTOATTACK_PARTS, ("square",)]
    params = eval_lib.AttackParams(eps=0.05, seed=7)
    out = eval_lib.evaluate(model_a.model_fn, _dataset(tiny_data_dir), specs, params, verbose=0)
    assert out.accuracies()["autoattack"] == 0.0 and out.accuracies()["worst_case"] == 0.0
    assert calls[0] == (eval_lib.AUTOATTACK_PARTS, 0.05, 7, 20) and len(calls) == 6
    # Square breaks what the white-box attacks left, and alone it is far below them.
    check = {c.name: c for c in masking.masking_checks(out, specs)}["blackbox_not_below_whitebox"]
    assert check.passed is False
    assert check.detail["square_runs"] == ["autoattack", "square"]
    assert check.detail["square_alone_accuracy"] == {"square": 0.0}
    assert check.detail["square_breaks_beyond_whitebox"] > 0.3 * 48


# Small budgets for the real ensemble: every part still runs, in a few seconds.
AA_BUDGET = dict(num_steps=10, num_target_classes=3, fab_steps=10, num_queries=50)


def test_real_autoattack_ensemble_runs_through_evaluate(monkeypatch, model_a, tiny_data_dir):
    # The real ensemble, all four attacks in AutoAttack's order, through eval_lib.evaluate: nothing is
    # replaced but the budgets. At eps 0.14 the first attacks break some examples and leave others, so
    # every later attack runs on a non-empty set.
    eps, seed = 0.14, 3
    real = autoattack.run_autoattack
    calls = []

    def small_budget(model_fn, images, labels, eps, **kwargs):
        result = real(model_fn, images, labels, eps, **kwargs, **AA_BUDGET)
        calls.append((kwargs["attacks"], np.asarray(images), np.asarray(labels), result))
        return result

    given = {part: 0 for part in eval_lib.AUTOATTACK_PARTS}  # examples each attack was given

    def counting(name, fn):
        def run(model_fn, images, labels, *args, **kwargs):
            part = {"apgd": "apgd-ce", "apgd_targeted": "apgd-t", "fab_targeted": "fab-t"}.get(name, name)
            given[part] += len(labels)
            return fn(model_fn, images, labels, *args, **kwargs)

        return run

    for name in ("apgd", "apgd_targeted", "fab_targeted", "square"):
        counted = counting(name, getattr(autoattack, name))
        # The single attacks (evaluation's "apgd-ce", ...) and the ensemble's members.
        monkeypatch.setattr(autoattack, name, counted)
        monkeypatch.setattr(autoattack_ensemble, name, counted)
    monkeypatch.setattr(autoattack, "run_autoattack", small_budget)

    specs = eval_lib.parse_attacks(["clean", "pgd10_margin", "autoattack", "apgd-ce", "square"])
    params = eval_lib.AttackParams(eps=eps, seed=seed)
    dataset = _dataset(tiny_data_dir, 24, 16)  # two batches: 16 and 8
    out = eval_lib.evaluate(model_a.model_fn, dataset, specs, params, verbose=0)
    acc = out.accuracies()

    # The ensemble ran once per batch with evaluate's eps and seed, every part on some examples.
    ensemble = [c for c in calls if c[0] == eval_lib.AUTOATTACK_PARTS]
    assert [len(c[2]) for c in ensemble] == [16, 8]
    assert all(given[part] > 0 for part in eval_lib.AUTOATTACK_PARTS), given
    # What it reports holds: each example it calls broken is misclassified at its adversarial
    # example, within eps and [0, 1]; the rest are the examples still classified correctly.
    robust = []
    for _, images, labels, result in ensemble:
        adv = result["adversarial"]
        assert np.abs(adv - images).max() <= eps + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0
        predicted = np.argmax(model_a.model_fn(tf.constant(adv)).numpy(), axis=-1)
        np.testing.assert_array_equal(result["robust"], predicted == labels)
        robust.append(result["robust"])
    robust = np.concatenate(robust)
    # evaluate records exactly that, and each part's running robustness, which only falls.
    np.testing.assert_array_equal(out.correct["autoattack"], robust)
    parts = out.extra["autoattack"]
    assert list(parts) == list(eval_lib.AUTOATTACK_PARTS)
    np.testing.assert_array_equal(parts["square"], robust)
    for earlier, later in zip(eval_lib.AUTOATTACK_PARTS, eval_lib.AUTOATTACK_PARTS[1:]):
        assert not np.any(parts[later] & ~parts[earlier]), (earlier, later)
    # The ensemble breaks examples, more than its first member alone (same seed, same examples).
    assert 0.0 < acc["autoattack"] < acc["clean"]
    np.testing.assert_array_equal(parts["apgd-ce"], out.correct["apgd-ce"])
    assert acc["autoattack"] < acc["apgd-ce"]
    for name in ("autoattack", "apgd-ce", "square"):
        assert out.max_perturbation[name] <= eps + 1e-6 and acc[name] <= acc["clean"], name
        assert 0.0 <= out.pixel_range[name][0] and out.pixel_range[name][1] <= 1.0
    assert acc["worst_case"] <= min(acc["autoattack"], acc["square"], acc["pgd10_margin"])
    check = {c.name: c for c in masking.masking_checks(out, specs)}["blackbox_not_below_whitebox"]
    assert check.passed is True and check.detail["square_runs"] == ["autoattack", "square"]


# ---------------------------------------------------------------------------
# Analyses.


def test_eps_sweep_falls_monotonically_to_zero(model_a, runs, tiny_data_dir, tmp_path):
    model_b = export.load_model(runs["b"])
    grid = [0.0, 0.05, 0.1]
    sweep = analysis.eps_sweep(
        {"a": model_a.model_fn, "b": model_b.model_fn}, _dataset(tiny_data_dir), ["fgsm", "pgd10"], grid
    )
    assert sweep["eps"][: len(grid)] == grid
    # Extended by doubling, at most to eps = 1, and stopped once at 0.
    assert len(sweep["eps"]) > len(grid) and sweep["eps"][-1] <= 1.0
    for prev, nxt in zip(sweep["eps"][len(grid) - 1 :], sweep["eps"][len(grid) :]):
        assert nxt == pytest.approx(min(1.0, 2 * prev))
    for c in sweep["curves"]:
        assert c["accuracy"][0] > 0.5, c  # eps = 0: clean accuracy
        if c["attack"] == "pgd10":
            assert all(b <= a for a, b in zip(c["accuracy"], c["accuracy"][1:])), c
            assert c["accuracy"][-1] == 0.0, c
    paths = analysis.write_eps_sweep(sweep, str(tmp_path))
    assert os.path.getsize(paths["png"]) > 1000
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 4 * len(sweep["eps"]) and {r["model"] for r in rows} == {"a", "b"}
    assert json.load(open(paths["json"]))["curves"][0]["eps"] == sweep["eps"]


def test_loss_surface_and_jacobian_figure(model_a, tiny_data_dir, tmp_path):
    images, labels = analysis.take_examples(_dataset(tiny_data_dir, 64, 32), 64)
    surface = analysis.loss_surface(model_a.model_fn, images[:2], labels[:2], 0.4, num_points=7)
    xent = surface["xent"]
    assert xent.shape == (2, 7, 7) and np.all(np.isfinite(xent))
    # The centre is the clean loss, and the adversarial direction raises it
    # more than the random one.
    clean = losses.cross_entropy(labels[:2], model_a.model_fn(images[:2])).numpy()
    np.testing.assert_allclose(xent[:, 3, 3], clean, rtol=1e-4, atol=1e-5)
    assert np.all(xent[:, -1, 3] > xent[:, 3, -1])
    paths = analysis.write_loss_surface(surface, str(tmp_path))
    assert os.path.getsize(paths["png"]) > 1000
    np.testing.assert_array_equal(np.load(paths["npy"]), xent)
    assert len(json.load(open(paths["json"]))["xent"][0]) == 7

    fig = analysis.jacobian_figure(model_a.model_fn, images, labels, 10, str(tmp_path))
    assert fig["labels"] == sorted(set(labels.tolist()))
    assert [int(labels[i]) for i in fig["indices"]] == fig["labels"]
    assert os.path.getsize(fig["png"]) > 1000 and np.load(fig["npy"]).shape == (
        len(fig["indices"]),
        28,
        28,
        1,
    )
    events = [f for f in os.listdir(fig["tensorboard"]) if f.startswith("events.out.tfevents")]
    tags = {
        v.tag
        for e in tf.compat.v1.train.summary_iterator(os.path.join(fig["tensorboard"], events[0]))
        for v in e.summary.value
    }
    assert {"jacobians/images", "jacobians/jacobians"} <= tags


def _reference_jacobian_numbers(jacobians: np.ndarray, images: np.ndarray) -> dict:
    """Per-example |cos| of the standardised J and x, |<x, J>| / ||J||_2, ||x||_2 and the cosine of the
    standardised |J| and x, in float64 numpy."""
    j = jacobians.reshape(len(jacobians), -1).astype(np.float64)
    x = images.reshape(len(images), -1).astype(np.float64)

    def standardise(a):
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return {
        "cosine": np.abs(np.sum(standardise(j) * standardise(x), axis=1)),
        "alignment": np.abs(np.sum(j * x, axis=1)) / np.linalg.norm(j, axis=1),
        "image_l2_norm": np.linalg.norm(x, axis=1),
        "saliency_cosine": np.sum(standardise(np.abs(j)) * standardise(x), axis=1),
    }


def _per_example_jacobians(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d xent / dx of each example alone, inference mode."""
    out = []
    for x, y in zip(images, labels):
        x = tf.constant(x[None], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.constant([int(y)]), logits=model(x, training=False)
            )
        out.append(tape.gradient(loss, x).numpy()[0])
    return np.stack(out)


def test_jacobian_stats_match_per_example_gradients(tiny_data_dir):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 5, strides=2, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    images, labels = analysis.take_examples(_dataset(tiny_data_dir), 48)
    stats, kept = analysis.jacobian_stats(
        lambda x: model(x, training=False), _dataset(tiny_data_dir), keep=25
    )
    ref = _reference_jacobian_numbers(_per_example_jacobians(model, images, labels), images)
    assert stats["num_examples"] == 48
    for key in ("cosine", "alignment", "image_l2_norm", "saliency_cosine"):
        np.testing.assert_allclose(kept[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for key, name in (
        ("cosine", "jacobian_cosine"),
        ("alignment", "jacobian_alignment"),
        ("image_l2_norm", "image_l2_norm"),
        ("saliency_cosine", "saliency_cosine"),
    ):
        assert stats[name]["mean"] == pytest.approx(np.mean(ref[key]), rel=1e-4), name
        assert stats[name]["std"] == pytest.approx(np.std(ref[key], ddof=1), rel=1e-3), name
        assert stats[name]["stderr"] == pytest.approx(np.std(ref[key], ddof=1) / np.sqrt(48), rel=1e-3)
    # The numbers are not trivial: the quantities differ from one another and between examples.
    assert 0.0 < stats["jacobian_cosine"]["mean"] < 1.0 and stats["jacobian_cosine"]["std"] > 0
    assert stats["jacobian_alignment"]["mean"] < stats["image_l2_norm"]["mean"]
    assert stats["zero_jacobian_examples"] == 0
    np.testing.assert_array_equal(kept["images"], images[:25])
    np.testing.assert_array_equal(kept["labels"], labels[:25])
    assert kept["jacobians"].shape == (25, 28, 28, 1)
    # The kept Jacobians are d xent / dx itself.
    np.testing.assert_allclose(
        kept["jacobians"], _per_example_jacobians(model, images, labels)[:25], rtol=1e-3, atol=1e-7
    )


def test_jacobian_stats_of_a_saturated_softmax(tiny_data_dir):
    # Logits scaled up until float32's d xent / dx is exactly 0 for some examples: the stats still see
    # J's direction, sum_k (p_k - [k = y]) grad z_k with p in float64 (independently: numpy).
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5, strides=2, activation="tanh")]
        + [keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    images, _ = analysis.take_examples(_dataset(tiny_data_dir, 20, 20), 20)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
    grads = tape.batch_jacobian(logits, x).numpy().reshape(20, 10, -1).astype(np.float64)  # [B, K, D]
    z = logits.numpy().astype(np.float64)
    labels = np.argmax(z, axis=1)  # classified correctly: the softmax saturates on the true class
    gap = np.max(z, axis=1) - np.sort(z, axis=1)[:, -2]
    factor = 110.0 / float(np.max(gap))  # the largest gap becomes 110: exp(-110) underflows in float32
    assert factor * float(np.max(z) - np.min(z)) < 700  # but not in float64
    scaled = factor * z
    p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[np.arange(20), labels] = 0.0
    dz[np.arange(20), labels] = -dz.sum(axis=1)
    reference = np.einsum("bk,bkd->bd", dz, factor * grads).reshape(images.shape)
    float32 = _per_example_jacobians(lambda v, training: factor * model(v, training=training), images, labels)
    assert np.sum(np.all(float32.reshape(20, -1) == 0, axis=1)) >= 1  # float32's gradient vanishes
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    stats, kept = analysis.jacobian_stats(lambda v: factor * model(v, training=False), dataset)
    assert stats["zero_jacobian_examples"] == 0
    ref = _reference_jacobian_numbers(reference, images)
    for key in ("cosine", "alignment", "saliency_cosine"):
        np.testing.assert_allclose(kept[key], ref[key], rtol=1e-3, atol=1e-5, err_msg=key)
    # One scale per batch (--batchnorm=train, where examples interact) gives the same directions wherever
    # an example's gradient does not underflow below the batch's largest.
    batch_stats, batch_kept = analysis.jacobian_stats(
        lambda v: factor * model(v, training=False), dataset, per_example_scale=False
    )
    kept_nonzero = batch_kept["nonzero"]
    assert batch_stats["num_examples"] == 20 and np.sum(kept_nonzero) >= 10
    for key in ("cosine", "alignment", "saliency_cosine"):
        np.testing.assert_allclose(
            batch_kept[key][kept_nonzero], ref[key][kept_nonzero], rtol=1e-3, atol=1e-5, err_msg=key
        )


def test_jacobian_stats_of_a_model_whose_jacobian_is_a_known_image(tiny_data_dir):
    # One logit linear in x with weights w (the others 0): d xent / dx = (p_0 - [y = 0]) w for every
    # example, so |cos| = |<s(w), s(x)>| and the alignment is |<x, w>| / ||w||_2 in closed form; for the
    # image w itself they are 1 and ||w||_2.
    images, labels = analysis.take_examples(_dataset(tiny_data_dir, 30, 16), 30)
    w = images[0].reshape(-1).astype(np.float64)
    dense = keras.layers.Dense(10, use_bias=False)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), dense])
    kernel = np.zeros((784, 10), np.float32)
    kernel[:, 0] = 0.01 * w
    dense.set_weights([kernel])
    stats, kept = analysis.jacobian_stats(lambda x: model(x, training=False), _dataset(tiny_data_dir, 30, 16))
    x = images.reshape(30, -1).astype(np.float64)
    centred_w = (w - w.mean()) / np.linalg.norm(w - w.mean())
    centred_x = x - x.mean(axis=1, keepdims=True)
    cosine = np.abs(centred_x @ centred_w) / np.linalg.norm(centred_x, axis=1)
    alignment = np.abs(x @ w) / np.linalg.norm(w)
    assert kept["cosine"][0] == pytest.approx(1.0, abs=1e-5)
    assert kept["alignment"][0] == pytest.approx(np.linalg.norm(w), rel=1e-5)
    # |J| is a multiple of w >= 0 too: the saliency cosine is the signed cosine of w and x.
    np.testing.assert_allclose(
        kept["saliency_cosine"],
        centred_x @ centred_w / np.linalg.norm(centred_x, axis=1),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(kept["cosine"], cosine, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kept["alignment"], alignment, rtol=1e-4)
    assert stats["jacobian_cosine"]["mean"] == pytest.approx(np.mean(cosine), rel=1e-4)
    assert stats["jacobian_alignment"]["mean"] == pytest.approx(np.mean(alignment), rel=1e-4)
    assert stats["image_l2_norm"]["mean"] == pytest.approx(np.mean(np.linalg.norm(x, axis=1)), rel=1e-5)
    # The two measures differ here: reporting one for the other would fail.
    assert abs(np.mean(cosine) - np.mean(alignment)) > 0.1


# ---------------------------------------------------------------------------
# Batch norm in training mode (--batchnorm=train, the authors' release's protocol).


def _bn_model_file(directory) -> str:
    """A classifier of the pattern images (class c: a bright block at position c) with batch norm, saved
    as .keras with a metadata.json (fashion_mnist).

    Flatten -> BatchNormalization -> Dense(10): logit c sums (scaled) the normalised pixels of block c.
    With the statistics of a batch, block c stands out in the images of class c (accuracy near 1); the
    moving averages are set so that block 0 stands out in every image (inference mode predicts class 0).
    """
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    dense = keras.layers.Dense(10, use_bias=False)
    model = keras.Model(inputs, dense(x))
    blocks = np.zeros((28, 28, 10), np.float32)
    for c in range(10):
        r, col = divmod(c, 4)
        blocks[2 + 8 * r : 9 + 8 * r, 1 + 7 * col : 7 + 7 * col, c] = 1.0
    dense.set_weights([0.02 * blocks.reshape(784, 10)])  # small logits: no saturated softmax
    bn = model.get_layer("bn")
    bn.moving_mean.assign(-5.0 * blocks[..., 0].reshape(784))
    bn.moving_variance.assign(np.ones(784, np.float32))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), "classifier.keras")
    model.save(path)
    with open(os.path.join(str(directory), "metadata.json"), "w") as f:
        json.dump({"dataset": "fashion_mnist", "image_shape": [28, 28, 1]}, f)
    return path


def test_batchnorm_train_mode_uses_batch_statistics_and_changes_nothing(tiny_data_dir, tmp_path):
    path = _bn_model_file(tmp_path / "bn")
    train = export.load_model(path, training=True)
    inference = export.load_model(path)
    assert train.training and not inference.training
    reference = keras.saving.load_model(path)
    moving = [v.numpy().copy() for v in reference.get_layer("bn").non_trainable_weights]
    images, labels = next(iter(_dataset(tiny_data_dir, 16, 16)))
    expected = {"inference": reference(images, training=False).numpy()}
    expected["train"] = reference(images, training=True).numpy()  # (updates reference's moving averages)
    assert np.max(np.abs(expected["train"] - expected["inference"])) > 0.1
    np.testing.assert_allclose(train.model_fn(images).numpy(), expected["train"], rtol=1e-5, atol=1e-5)
    spec = eval_lib.parse_attacks(["clean", "pgd3"])
    params = eval_lib.AttackParams(eps=0.1, pgd_random_start=False)
    eval_lib.evaluate(train.model_fn, _dataset(tiny_data_dir), spec, params, verbose=0)
    # The train-mode model's moving averages are as loaded, and a separate inference-mode load is unaffected.
    for v, before in zip(train.model_fn.keras_model.get_layer("bn").non_trainable_weights, moving):
        np.testing.assert_array_equal(v.numpy(), before)
    np.testing.assert_allclose(
        inference.model_fn(images).numpy(), expected["inference"], rtol=1e-5, atol=1e-5
    )


def test_batchnorm_train_changes_nothing_without_batch_norm(runs, model_a, tiny_data_dir):
    train = export.load_model(runs["a"], training=True)
    specs = eval_lib.parse_attacks(["clean", "fgsm", "pgd3_margin"])
    params = eval_lib.AttackParams(eps=0.1, pgd_random_start=False)
    out = {}
    for name, m in (("inference", model_a), ("train", train)):
        out[name] = eval_lib.evaluate(m.model_fn, _dataset(tiny_data_dir), specs, params, verbose=0)
    for spec in specs:
        np.testing.assert_array_equal(out["train"].correct[spec.name], out["inference"].correct[spec.name])
    stats = {
        name: analysis.jacobian_stats(m.model_fn, _dataset(tiny_data_dir))[0]
        for name, m in (("inference", model_a), ("train", train))
    }
    assert stats["train"]["jacobian_cosine"]["mean"] == pytest.approx(
        stats["inference"]["jacobian_cosine"]["mean"]
    )


def test_batchnorm_train_needs_the_keras_model(runs, tmp_path):
    export_dir = tmp_path / "export"
    os.makedirs(export_dir)
    shutil.copytree(os.path.join(runs["a"], "export", "saved_model"), export_dir / "saved_model")
    shutil.copy(os.path.join(runs["a"], "export", "metadata.json"), export_dir / "metadata.json")
    for path in (str(export_dir), str(export_dir / "saved_model")):
        assert export.load_model(path).format == "saved_model"
        with pytest.raises(ValueError, match=r"--batchnorm=train .* Pass the \.keras file, or a model_dir"):
            export.load_model(path, training=True)


def test_command_batchnorm_train_measures_with_batch_statistics(tiny_data_dir, tmp_path):
    path = _bn_model_file(tmp_path / "bn")
    out_dir = tmp_path / "eval"
    proc = _run_cli(
        f"--model={path}",
        f"--data_dir={tiny_data_dir}",
        "--nodownload",
        "--num_examples=30",
        "--batch_size=16",
        "--attacks=clean,fgsm",
        "--eps=0.1",
        "--noeps_checks",
        "--square_check_queries=0",
        "--batchnorm=train",
        "--jacobian_figure",
        "--verbose=0",
        f"--output_dir={out_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(out_dir / "results.json"))
    assert res["batchnorm"] == "train" and res["batchnorm_batch_size"] == 16
    # Independently: the model called with training=True on each batch (16 + 14 examples).
    model = keras.saving.load_model(path)
    correct = {"train": [], "inference": []}
    jacobians, images_all = [], []
    for images, labels in _dataset(tiny_data_dir, 30, 16):
        for mode in correct:
            logits = model(images, training=mode == "train")
            correct[mode].append(np.argmax(logits.numpy(), axis=1) == labels.numpy())
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(losses.cross_entropy(labels, model(images, training=True)))
        jacobians.append(tape.gradient(loss, images).numpy())
        images_all.append(images.numpy())
    accuracy = {mode: float(np.mean(np.concatenate(c))) for mode, c in correct.items()}
    assert res["accuracy"]["clean"] == pytest.approx(accuracy["train"])
    assert accuracy["train"] > 0.9 and accuracy["inference"] < 0.3, accuracy
    ref = _reference_jacobian_numbers(np.concatenate(jacobians), np.concatenate(images_all))
    assert res["jacobian_cosine"] == pytest.approx(np.mean(ref["cosine"]), rel=1e-4)
    assert res["jacobian_alignment"] == pytest.approx(np.mean(ref["alignment"]), rel=1e-4)
    assert res["image_l2_norm"] == pytest.approx(np.mean(ref["image_l2_norm"]), rel=1e-5)
    assert res["saliency_cosine"] == pytest.approx(np.mean(ref["saliency_cosine"]), rel=1e-4, abs=1e-6)
    assert res["jacobian_stats"]["num_examples"] == 30 and res["jacobian_stats"]["batchnorm"] == "train"
    md = open(out_dir / "results.md").read()
    assert "Batch norm: train (training=True, statistics of each batch of 16 examples)." in md
    assert "## Input Jacobians" in md and f"{res['jacobian_alignment']:.4f}" in md
    assert "Input Jacobians: Jacobian-image |cos|" in proc.stdout and "Batch norm: train mode" in proc.stdout
    saved = json.load(open(out_dir / analysis.JACOBIAN_STATS_FILE))
    assert saved["jacobian_cosine"]["mean"] == res["jacobian_cosine"]


# ---------------------------------------------------------------------------
# The command.


def test_command_end_to_end(runs, tiny_data_dir, tmp_path):
    out_dir = tmp_path / "eval"
    proc = _run_cli(
        f"--model={runs['a']}",
        f"--source_model={os.path.join(runs['b'], 'export', 'saved_model')}",
        f"--data_dir={tiny_data_dir}",
        "--nodownload",
        "--num_examples=30",
        "--batch_size=16",
        "--attacks=clean,fgsm,pgd3,pgd6",
        "--pgd_loss=both",
        "--eps=16/255",
        "--verbose=0",
        "--eps_sweep",
        "--sweep_attacks=pgd5",
        "--sweep_eps=0,0.2",
        f"--compare_models={runs['b']}",
        "--loss_surface",
        "--loss_surface_examples=2",
        "--loss_surface_points=5",
        "--jacobian_figure",
        f"--output_dir={out_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worst_case" in proc.stdout and "gradient-masking checks" in proc.stdout
    res = json.load(open(out_dir / "results.json"))
    names = ["clean", "fgsm", "pgd3", "transfer_pgd3", "pgd3_margin", "transfer_pgd3_margin"]
    names += ["pgd6", "transfer_pgd6", "pgd6_margin", "transfer_pgd6_margin"]
    assert list(res["attacks"]) == names
    assert set(res["accuracy"]) == set(names) | {"worst_case"}
    assert all(0.0 <= v <= 1.0 for v in res["accuracy"].values())
    assert res["num_examples"] == 30 and res["seed"] == 0 and res["dataset"] == "fashion_mnist"
    assert res["eps"] == pytest.approx(16 / 255) and res["eps_source"] == "flag"
    pgd = res["attacks"]["pgd6_margin"]
    assert pgd["steps"] == 6 and pgd["step_size"] == pytest.approx(4 / 255) and pgd["loss"] == "margin"
    assert pgd["restarts"] == 1 and pgd["random_start"] and pgd["max_perturbation"] <= 16 / 255 + 1e-6
    assert {"tensorflow", "keras", "numpy", "jarn_tf"} <= set(res["versions"])
    assert res["wall_time_seconds"] > 0
    assert {c["name"] for c in res["checks"]} >= {
        "pgd_beats_fgsm",
        "more_steps_not_better_xent",
        "xent_margin_agree",
        "whitebox_beats_transfer",
    }
    for c in res["checks"]:
        assert set(c) == {"name", "passed", "detail", "message"}
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert [r["attack"] for r in rows] == names + ["worst_case"]
    assert float(rows[-1]["accuracy"]) == res["accuracy"]["worst_case"]
    md = open(out_dir / "results.md").read()
    assert "| worst_case" in md and "Batch norm: inference (moving averages)." in md
    assert res["batchnorm"] == "inference" and res["batchnorm_batch_size"] is None
    stats = json.load(open(out_dir / analysis.JACOBIAN_STATS_FILE))
    assert stats["num_examples"] == 30 and res["jacobian_stats"] == stats
    assert res["jacobian_cosine"] == stats["jacobian_cosine"]["mean"] and "## Input Jacobians" in md
    # The model standardises each image, so J is orthogonal to x (and to 1): both measures are 0 up to
    # rounding; the saliency cosine is not.
    assert res["jacobian_cosine"] < 1e-3 and res["jacobian_alignment"] < 1e-3 * res["image_l2_norm"]
    assert abs(res["saliency_cosine"]) > 0.01
    for f in analysis.EPS_SWEEP_FILES + analysis.LOSS_SURFACE_FILES + analysis.JACOBIAN_FILES:
        assert os.path.getsize(out_dir / f) > 0, f
    sweep = json.load(open(out_dir / "eps_sweep.json"))
    assert len({c["model"] for c in sweep["curves"]}) == 2 and sweep["eps"][:2] == [0.0, 0.2]


BAD_INPUTS = {
    "eps_out_of_range": (["--eps=2"], "--eps"),
    "unknown_attack": (["--attacks=clean,foo"], "Unknown attack 'foo'"),
    "wrong_dataset_shape": (["--dataset=cifar10"], "cifar10 images are [32, 32, 3]"),
    "no_examples": (["--num_examples=0"], "--num_examples"),
    "not_a_model": (["--model=/nonexistent"], "is not a model"),
    "batchnorm_train_saved_model": (
        ["--model={run_a}/export/saved_model", "--batchnorm=train"],
        "--batchnorm=train calls the model with training=True, which needs its .keras file",
    ),
}


def test_bad_inputs_fail_before_attacking(runs, tiny_data_dir, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    procs = {}
    # Started together: each spends most of its time importing TensorFlow.
    for name, (args, _) in BAD_INPUTS.items():
        out_dir = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "jarn_tf.evaluate",
            f"--model={runs['a']}",
            f"--data_dir={tiny_data_dir}",
        ]
        cmd += ["--nodownload", f"--output_dir={out_dir}", *(a.format(run_a=runs["a"]) for a in args)]
        procs[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0, name
        assert BAD_INPUTS[name][1] in stderr, (name, stderr[-2000:])
        assert "Evaluating" not in stdout, name
        assert not (tmp_path / name).exists(), name


def test_mirrored_strategy_matches_default(runs, tiny_data_dir, tmp_path):
    # Deterministic attacks give the same numbers over 2 replicas as over 1,
    # including the uneven last batch (30 = 16 + 14 examples).
    args = [f"--model={runs['a']}", f"--data_dir={tiny_data_dir}", "--nodownload", "--num_examples=30"]
    args += [
        "--batch_size=16",
        "--attacks=clean,fgsm,pgd4",
        "--nopgd_random_start",
        "--eps=0.2",
        "--verbose=0",
    ]
    results = {}
    for name, extra in (("default", []), ("mirrored", ["--strategy=mirrored", "--cpu_devices=2"])):
        proc = _run_cli(*args, *extra, f"--output_dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.load(open(tmp_path / name / "results.json"))
    # Two replicas really ran (a mirrored strategy over one device would pass the comparison below).
    assert (results["default"]["replicas"], results["mirrored"]["replicas"]) == (1, 2)
    assert results["mirrored"]["strategy"] == "mirrored"
    for attack in ("clean", "fgsm", "pgd4", "worst_case"):
        assert results["mirrored"]["accuracy"][attack] == pytest.approx(
            results["default"]["accuracy"][attack]
        )


def test_command_takes_dataset_and_eps_from_metadata(runs, tiny_data_dir, tmp_path):
    # Without --dataset and --eps, evaluate uses the export's metadata.json: here a dataset and a
    # training eps that are no default (mnist, which the tiny IDX files also serve, and 0.0625).
    export_dir = tmp_path / "export"
    shutil.copytree(os.path.join(runs["a"], "export"), export_dir)
    metadata = json.load(open(export_dir / "metadata.json"))
    assert metadata["dataset"] == "fashion_mnist"
    metadata["dataset"] = "mnist"
    metadata["config"]["classifier"]["eps"] = 0.0625
    (export_dir / "metadata.json").write_text(json.dumps(metadata))
    out_dir = tmp_path / "eval"
    proc = _run_cli(
        f"--model={export_dir}",
        f"--data_dir={tiny_data_dir}",
        "--nodownload",
        "--num_examples=16",
        "--attacks=clean,fgsm",
        "--noeps_checks",
        "--square_check_queries=0",
        "--verbose=0",
        f"--output_dir={out_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(out_dir / "results.json"))
    assert res["dataset"] == "mnist"
    assert res["eps"] == pytest.approx(0.0625) and res["eps_source"] == "metadata"
    assert res["attacks"]["fgsm"]["max_perturbation"] == pytest.approx(0.0625, abs=1e-6)


def test_eps_checks_pass_on_plain_and_fail_on_masked_model(model_a, tiny_data_dir):
    dataset = _dataset(tiny_data_dir)
    params = eval_lib.AttackParams(eps=0.1)
    specs = eval_lib.parse_attacks(["clean", "pgd10"])

    def masked(x):
        # Saturated softmax: cross-entropy gradients underflow to zero.
        return 1e6 * model_a.model_fn(x)

    verdicts = {}
    for name, fn in (("plain", model_a.model_fn), ("masked", masked)):
        output = eval_lib.evaluate(fn, dataset, specs, params, verbose=0)
        checks = masking.eps_checks(fn, dataset, specs, output, params, num_classes=10)
        verdicts[name] = {c.name: c for c in checks}
    assert set(verdicts["plain"]) == {"accuracy_not_rising_with_eps", "large_eps_reaches_chance"}
    assert verdicts["plain"]["large_eps_reaches_chance"].passed, verdicts["plain"]["large_eps_reaches_chance"]
    assert verdicts["plain"]["accuracy_not_rising_with_eps"].passed
    assert not verdicts["masked"]["large_eps_reaches_chance"].passed
    assert verdicts["masked"]["large_eps_reaches_chance"].detail["accuracy"] > 0.5


@pytest.mark.parametrize("form", ["keras", "saved_model"])
def test_xla_compiled_attacks_match_plain_graphs(form, runs, model_a, tiny_data_dir):
    model = (
        model_a if form == "keras" else export.load_model(os.path.join(runs["a"], "export", "saved_model"))
    )
    specs = eval_lib.parse_attacks(["clean", "fgsm", "pgd5", "pgd5_margin"])
    out = {}
    for jit in (False, True):
        params = eval_lib.AttackParams(eps=0.2, pgd_random_start=False, jit_compile=jit)
        out[jit] = eval_lib.evaluate(model.model_fn, _dataset(tiny_data_dir), specs, params, verbose=0)
    plain, xla = out[False].accuracies(), out[True].accuracies()
    assert plain["clean"] > plain["pgd5_margin"] + 0.5, plain  # the attacks do something
    for name in plain:
        assert abs(plain[name] - xla[name]) <= 1 / 48 + 1e-9, (name, plain, xla)
    # The adversarial images themselves agree (same path, same steps).
    images, labels = next(iter(_dataset(tiny_data_dir, 20, 20)))
    for spec in specs[1:]:
        a, _ = eval_lib.craft_adversarial(
            spec, eval_lib.AttackParams(eps=0.2, pgd_random_start=False), model.model_fn, images, labels
        )
        b, _ = eval_lib.craft_adversarial(
            spec,
            eval_lib.AttackParams(eps=0.2, pgd_random_start=False, jit_compile=True),
            model.model_fn,
            images,
            labels,
        )
        assert float(np.mean(np.abs(a.numpy() - b.numpy()) > 1e-4)) < 0.01, spec.name


# ---------------------------------------------------------------------------
# AutoAttack's model checks, the Square check, checks that cannot run, progress.


@keras.saving.register_keras_serializable(package="test_evaluate")
class AlwaysDropout(keras.layers.Dropout):
    """Dropout called with training=True whatever the model is called with (Monte-Carlo dropout).

    Keras passes a model's ``training`` argument on to its layers, so ``Dropout()(x, training=True)``
    in a functional model is off under ``model(x, training=False)``; this layer is not.
    """

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


def _tiny_keras_model(kind: str) -> keras.Model:
    """Flatten -> Dense(10): logits; ``softmax`` returns probabilities; ``dropout`` keeps dropout on."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    if kind == "dropout":
        x = AlwaysDropout(0.5)(x)
    outputs = keras.layers.Dense(10, activation="softmax" if kind == "softmax" else None)(x)
    return keras.Model(inputs, outputs)


def test_model_checks_flag_softmax_outputs_and_dropout_at_inference(tiny_data_dir, tmp_path):
    images, _ = next(iter(_dataset(tiny_data_dir, 20, 20)))
    verdicts = {}
    for kind in ("logits", "softmax", "dropout"):
        path = str(tmp_path / f"{kind}.keras")
        _tiny_keras_model(kind).save(path)
        checks = masking.model_checks(export.load_model(path).model_fn, images)
        verdicts[kind] = {c.name: c.passed for c in checks}
    assert verdicts["logits"] == {"outputs_are_logits": True, "deterministic_outputs": True}
    assert verdicts["softmax"] == {"outputs_are_logits": False, "deterministic_outputs": True}
    assert verdicts["dropout"] == {"outputs_are_logits": True, "deterministic_outputs": False}


def test_square_check_catches_a_saturated_input_layer(model_a, tiny_data_dir):
    # A saturated input layer (a hard threshold at 0.5) has exactly zero gradients: the white-box
    # attacks stand still while Square, which needs no gradient, flips pixels across the threshold.
    def saturated(x):
        return model_a.model_fn(tf.sigmoid(1e4 * (x - 0.5)))

    dataset = _dataset(tiny_data_dir)
    specs = eval_lib.parse_attacks(["clean", "fgsm", "pgd10"], "both")
    params = eval_lib.AttackParams(eps=0.3)
    verdicts = {}
    for name, fn in (("plain", model_a.model_fn), ("saturated", saturated)):
        out = eval_lib.evaluate(fn, dataset, specs, params, verbose=0)
        square = masking.square_check(fn, dataset, out, specs, params, num_queries=100)
        checks = masking.masking_checks(out, specs, square_check_correct=square)
        verdicts[name] = {c.name: c for c in checks}["blackbox_not_below_whitebox"]
    assert verdicts["plain"].passed, verdicts["plain"]
    assert verdicts["saturated"].passed is False
    assert verdicts["saturated"].detail["square_breaks_beyond_whitebox"] >= 10
    assert verdicts["saturated"].detail["square_runs"] == ["square_check"]


def _autoattack_output(n_square: int) -> tuple:
    """100 examples: 80 clean, PGD-20 leaves 50, AutoAttack's white-box parts 45, Square n_square."""
    index = np.arange(100)
    parts = {"apgd-ce": index < 47, "apgd-t": index < 45, "fab-t": index < 45, "square": index < n_square}
    out = _fake_output({"clean": index < 80, "pgd20": index < 50, "autoattack": parts["square"]})
    out.extra = {"autoattack": parts}
    return out, eval_lib.parse_attacks(["clean", "pgd20", "autoattack"])


def test_blackbox_check_compares_square_not_the_whole_ensemble():
    # AutoAttack 5 points under PGD-20, all of it from its white-box parts: a healthy model.
    out, specs = _autoattack_output(n_square=45)
    check = {c.name: c for c in masking.masking_checks(out, specs)}["blackbox_not_below_whitebox"]
    assert check.passed is True, check
    # Square breaking 5 examples every white-box attack left standing is what fails it.
    out, specs = _autoattack_output(n_square=40)
    check = {c.name: c for c in masking.masking_checks(out, specs)}["blackbox_not_below_whitebox"]
    assert check.passed is False and check.detail["square_breaks_beyond_whitebox"] == 5
    # So does Square alone below the best white-box attack (here by 4 points), with no extra break.
    index = np.arange(100)
    pgd = (index >= 4) & (index < 50)  # 46 robust; the margin loss breaks 4 others
    out = _fake_output({"pgd20": pgd, "pgd20_margin": index < 46, "square": (index >= 4) & (index < 46)})
    specs = eval_lib.parse_attacks(["pgd20", "square"], "both")
    check = {c.name: c for c in masking.masking_checks(out, specs)}["blackbox_not_below_whitebox"]
    assert check.passed is False and check.detail["square_breaks_beyond_whitebox"] == 0
    assert check.detail["best_whitebox_accuracy"] == 0.46
    assert check.detail["square_alone_accuracy"] == {"square": 0.42}


def test_pgd_fgsm_tolerance_and_slow_rise_with_steps():
    index = np.arange(200)
    # One example of 200 (index 99) resists every PGD attack but not FGSM.
    fgsm = (index < 99) | ((index >= 100) & (index < 106))
    out = _fake_output({"fgsm": fgsm, "pgd5": index < 100, "pgd10": index < 103, "pgd20": index < 106})
    specs = eval_lib.parse_attacks(["fgsm", "pgd5", "pgd10", "pgd20"])
    checks = {c.name: c for c in masking.masking_checks(out, specs)}
    assert checks["pgd_beats_fgsm"].passed is False  # the README's "should be 0" is the default
    assert checks["pgd_beats_fgsm"].detail["robust_to_every_pgd_but_not_fgsm"] == 1
    # PGD accuracy 50% -> 51.5% -> 53%: each step within the 2% tolerance, the whole rise not.
    assert checks["more_steps_not_better_xent"].passed is False
    assert checks["more_steps_not_better_xent"].detail["rises"][0]["to_steps"] == 20
    # FGSM breaks 10 examples that pgd5, pgd10 and pgd20 all leave standing; 5% of 200 allows them.
    out.correct["fgsm"] = (index < 90) | ((index >= 100) & (index < 106))
    checks = {c.name: c for c in masking.masking_checks(out, specs)}
    assert checks["pgd_beats_fgsm"].detail["robust_to_every_pgd_but_not_fgsm"] == 10
    assert checks["pgd_beats_fgsm"].passed is False
    loose = masking.masking_checks(out, specs, pgd_fgsm_tolerance=0.05)
    assert {c.name: c for c in loose}["pgd_beats_fgsm"].passed is True


def _wrong_unless_perturbed(images):
    """A model built to be more accurate under attack than clean (issue 27).

    Pixel (0, 0) encodes the label as 0.05 + y / 10 and every other pixel of a clean image is 0.5.
    On a clean image the model predicts y + 1 (wrong); once any other pixel moves off 0.5 it
    predicts y (right). Its gradient is zero everywhere, so FGSM leaves the images clean, while
    PGD's random start moves them.
    """
    code = tf.round((images[:, 0, 0, 0] - 0.05) * 10.0)
    rest = tf.reshape(images, [tf.shape(images)[0], -1])[:, 1:]
    moved = tf.reduce_any(tf.abs(rest - 0.5) > 1e-4, axis=1)
    label = tf.cast(tf.where(moved, code, tf.math.floormod(code + 1.0, 10.0)), tf.int32)
    return 10.0 * tf.one_hot(label, 10) + 0.0 * tf.reduce_sum(images, axis=[1, 2, 3])[:, None]


def test_attacks_that_raise_accuracy_above_clean_are_flagged():
    n = 40
    labels = np.arange(n) % 10
    images = np.full((n, 28, 28, 1), 0.5, np.float32)
    images[:, 0, 0, 0] = 0.05 + labels / 10.0
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64))).batch(20)
    specs = eval_lib.parse_attacks(["clean", "fgsm", "pgd5"])
    # eps 0.02 < half the code's spacing: the label survives the random start.
    out = eval_lib.evaluate(_wrong_unless_perturbed, dataset, specs, eval_lib.AttackParams(eps=0.02), verbose=0)
    acc = out.accuracies()
    assert acc["clean"] == 0.0 and acc["fgsm"] == 0.0 and acc["pgd5"] == 1.0
    check = {c.name: c for c in masking.masking_checks(out, specs)}["attacks_not_above_clean"]
    assert check.passed is False and check.detail["failed"] == ["pgd5"]
    assert check.detail["attacks"]["pgd5"]["gained"] == n and check.detail["attacks"]["pgd5"]["lost"] == 0
    assert check.detail["attacks"]["pgd5"]["p_value"] == pytest.approx(0.5**n)
    assert "above clean accuracy" in check.message
    # Within sampling error it passes: 3 gained and 1 lost of 10 (p = 5/16).
    small = _fake_output({"clean": [False] * 3 + [True] * 7, "pgd5": [True] * 6 + [False] + [True] * 3})
    check = {c.name: c for c in masking.masking_checks(small, specs[2:])}["attacks_not_above_clean"]
    assert check.passed is True and check.detail["attacks"]["pgd5"]["p_value"] == pytest.approx(5 / 16)


def test_checks_that_cannot_run_say_so():
    out = _fake_output({"autoattack": np.arange(10) < 5})
    specs = eval_lib.parse_attacks(["autoattack"])
    checks = masking.masking_checks(out, specs)
    not_run = {c.name for c in checks if c.passed is None}
    assert not_run == {
        "pgd_beats_fgsm",
        "more_steps_not_better",
        "xent_margin_agree",
        "whitebox_beats_transfer",
        "blackbox_not_below_whitebox",
        "attacks_not_above_clean",
    }
    params = eval_lib.AttackParams(eps=0.1)
    results = results_lib.build_results(out, specs, params, checks, {}, 1.0)
    assert results["checks_passed"] and set(results["checks_not_run"]) == not_run
    text = results_lib.format_checks(results["checks"])
    assert "- NOT RUN pgd_beats_fgsm: needs fgsm and a white-box pgdK attack" in text


def _last_bar_values(text: str) -> dict:
    """name -> value on the last line of the progress bar that shows clean accuracy."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if "/example - clean: " in line]
    values = lines[-1].split("/example - ", 1)[1]
    return {k: float(v) for k, v in (item.split(": ") for item in values.strip().split(" - "))}


def test_progress_bar_ends_with_the_final_accuracies(tiny_data_dir, capsys):
    model = _tiny_keras_model("logits")  # untrained: accuracy differs from batch to batch
    specs = eval_lib.parse_attacks(["clean", "fgsm"])
    out = eval_lib.evaluate(
        lambda x: model(x, training=False),
        _dataset(tiny_data_dir),
        specs,
        eval_lib.AttackParams(eps=0.05),
        num_examples=48,
        verbose=1,
    )
    bar = _last_bar_values(capsys.readouterr().out)
    assert bar == pytest.approx(out.accuracies(), abs=5e-5)
    # The last batch (8 examples) alone has other accuracies: the test can tell them apart.
    assert float(np.mean(out.correct["clean"][40:])) != out.accuracies()["clean"]


def test_autoattack_progress_within_each_batch(monkeypatch, model_a, tiny_data_dir, capsys):
    real = autoattack.run_autoattack

    def small_budget(*args, **kwargs):
        return real(*args, **kwargs, num_steps=2, num_target_classes=2, fab_steps=2, num_queries=5)

    monkeypatch.setattr(autoattack, "run_autoattack", small_budget)
    specs = eval_lib.parse_attacks(["autoattack"])
    params = eval_lib.AttackParams(eps=0.1)
    eval_lib.evaluate(model_a.model_fn, _dataset(tiny_data_dir, 30, 20), specs, params, num_examples=30)
    text = capsys.readouterr().out
    for part in eval_lib.AUTOATTACK_PARTS:
        assert f"autoattack [examples 1-20 of 30] robust accuracy after {part.upper()}: " in text
        assert f"autoattack [examples 21-30 of 30] robust accuracy after {part.upper()}: " in text


def test_command_runs_model_checks_and_its_bar_ends_with_the_table(tiny_data_dir, tmp_path):
    path = str(tmp_path / "softmax.keras")
    _tiny_keras_model("softmax").save(path)
    out_dir = tmp_path / "eval"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "jarn_tf.evaluate", f"--model={path}", "--dataset=fashion_mnist"]
        + [f"--data_dir={tiny_data_dir}", "--nodownload", "--num_examples=30", "--batch_size=16"]
        + ["--attacks=clean,fgsm,pgd3", "--eps=0.1", f"--output_dir={out_dir}"],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=REPO),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(out_dir / "results.json"))
    checks = {c["name"]: c for c in res["checks"]}
    assert checks["outputs_are_logits"]["passed"] is False and checks["deterministic_outputs"]["passed"]
    assert checks["blackbox_not_below_whitebox"]["passed"] is not None
    assert checks["xent_margin_agree"]["passed"] is None and "xent_margin_agree" in res["checks_not_run"]
    assert "FAIL outputs_are_logits" in proc.stdout and "log(probabilities)" in proc.stdout
    assert "NOT RUN xent_margin_agree" in proc.stdout
    assert "Square check: " in proc.stdout and "Eps check 2/2: " in proc.stdout
    # The bar's last line holds the table's numbers.
    bar = _last_bar_values(proc.stdout)
    assert bar == pytest.approx(res["accuracy"], abs=5e-5)
    for name, value in res["accuracy"].items():
        assert f"| {name} " in proc.stdout and f" {100 * value:.2f} " in proc.stdout
    assert "port.cc" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr
