"""The public Python API (jarn_tf.api, re-exported lazily by jarn_tf) and its examples.

Kept tiny: a Dense classifier fitted for a few steps on the session's tiny IDX dataset, tens of
images. TensorFlow is not imported at the top: the API asks for oneDNN before its first import, as
the commands do, so that the in-process numbers and the command's come from the same kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import jarn_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    if "tensorflow" in sys.modules:
        # The command's kernels must be this process's: TF_ENABLE_ONEDNN_OPTS as this TensorFlow read it.
        try:
            from tensorflow.python.util import _pywrap_util_port

            env["TF_ENABLE_ONEDNN_OPTS"] = "1" if _pywrap_util_port.IsMklEnabled() else "0"
        except (ImportError, AttributeError):
            pass
    return env


def _start(args: list) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable] + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return out, err


@pytest.fixture(scope="module", autouse=True)
def examples(tiny_data_dir):
    """Both examples, started with the first test in their own processes (tiny settings)."""
    procs = {
        "evaluate": _start(
            [os.path.join(EXAMPLES, "evaluate_keras_model.py"), f"--data_dir={tiny_data_dir}"]
            + ["--num_examples=24", "--train_examples=128", "--epochs=1"]
        ),
        "generator": _start(
            [os.path.join(EXAMPLES, "measure_generator.py"), f"--data_dir={tiny_data_dir}"]
            + ["--num_samples=40", "--num_real=40"]
        ),
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def test_set(tiny_data_dir):
    return jarn_tf.load_dataset("fashion_mnist", "test", data_dir=tiny_data_dir, download=False)


def _dense_model(softmax: bool = False):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax" if softmax else None)(
        keras.layers.Flatten()(inputs)
    )
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_file(tiny_data_dir, tmp_path_factory):
    """A Dense classifier fitted briefly on the tiny training set, saved as .keras."""
    import keras

    images, labels = jarn_tf.load_dataset("fashion_mnist", "train", data_dir=tiny_data_dir, download=False)
    model = _dense_model()
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=32, epochs=2, verbose=0)
    path = str(tmp_path_factory.mktemp("api_model") / "tiny.keras")
    model.save(path)
    return path


# ---------------------------------------------------------------------------
# Importing.


def test_import_jarn_tf_stays_cheap():
    code = (
        "import sys, jarn_tf\n"
        "assert 'tensorflow' not in sys.modules and 'jarn_tf.api' not in sys.modules\n"
        "f = jarn_tf.evaluate_robustness\n"
        "from jarn_tf import load_classifier, measure_generator, RobustnessReport\n"
        "assert f is jarn_tf.api.evaluate_robustness and 'evaluate_robustness' in dir(jarn_tf)\n"
        "assert jarn_tf.api.__all__ == list(jarn_tf.API_NAMES)\n"
        "assert all(getattr(jarn_tf, n) is getattr(jarn_tf.api, n) for n in jarn_tf.API_NAMES)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "import numpy as np\n"
        "try:\n"
        "    f(None, np.zeros((2, 1, 28, 28), np.float32), [0, 1], 0.1)\n"
        "except ValueError as e:\n"
        "    assert 'channels-first' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error for channels-first images')\n"
        "assert 'tensorflow' not in sys.modules\n"
        "try:\n"
        "    jarn_tf.no_such_name\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# Bad inputs: one clear error each, before any attack.


def _forbid_attacks(monkeypatch):
    from jarn_tf.robustness import autoattack, evaluation as eval_lib, checks as masking

    def forbidden(*args, **kwargs):
        raise AssertionError("an attack ran before the input check")

    for module, name in (
        (eval_lib, "evaluate"),
        (autoattack, "run_autoattack"),
        (masking, "model_checks"),
        (masking, "square_check"),
    ):
        monkeypatch.setattr(module, name, forbidden)


def test_bad_inputs_fail_before_any_attack(monkeypatch, test_set):
    images, labels = test_set[0][:8], test_set[1][:8]
    keras_model = _dense_model()
    logits_fn = jarn_tf.load_classifier(keras_model).model_fn
    calls = []

    def model_fn(x):
        calls.append(len(x))
        return logits_fn(x)

    _forbid_attacks(monkeypatch)
    cases = [
        (dict(images=images[0]), r"4-D array \[N, H, W, C\].*images\[None\]"),
        (dict(images=images.transpose(0, 3, 1, 2)), r"channels-first.*transpose\(0, 2, 3, 1\)"),
        (dict(images=images * 255.0), r"\[0, 255\] pixels.*images / 255"),
        (dict(images=(images * 255).astype(np.uint8)), r"integer dtype uint8.*/ 255"),
        (dict(images=images * 2.0 - 1.0), r"normalised.*inside the model"),
        (dict(labels=labels[:7]), r"7 labels for 8 images"),
        (dict(labels=np.eye(10)[labels]), r"one-hot.*argmax"),
        (dict(labels=labels.astype(np.float32)), r"labels must be integers"),
        (dict(eps=8), r"eps must be in \[0, 1\].*8/255"),
        (dict(eps=-0.1), r"eps must be in \[0, 1\]"),
        (dict(attacks=("pgd",)), r"Unknown attack 'pgd'"),
        (dict(labels=labels + 10), r"labels go up to .* 10 outputs"),
        (
            dict(model=keras_model, images=np.zeros((8, 32, 32, 3), np.float32)),
            r"takes images of shape \[28, 28, 1\]",
        ),
    ]
    for change, message in cases:
        args = dict(model=model_fn, images=images, labels=labels, eps=0.1, verbose=0)
        args.update(change)
        calls.clear()
        with pytest.raises(ValueError, match=message):
            jarn_tf.evaluate_robustness(**args)
        # Only the label check needs the model's outputs: one forward pass of the first batch, no attack.
        assert calls == ([8] if "labels go up" in message else []), message


# ---------------------------------------------------------------------------
# The numbers of the command.


def test_clean_and_pgd_and_checks_match_the_command(model_file, tiny_data_dir, test_set, tmp_path):
    n, settings = 40, dict(eps=0.05, batch_size=16, square_check_queries=50)
    out_dir = tmp_path / "cli"
    cli = _start(
        ["-m", "jarn_tf.evaluate", f"--model={model_file}", "--dataset=fashion_mnist", "--nodownload"]
        + [f"--data_dir={tiny_data_dir}", f"--num_examples={n}", "--attacks=clean,fgsm,pgd5", "--verbose=0"]
        + ["--eps=0.05", "--batch_size=16", "--square_check_queries=50", f"--output_dir={out_dir}"]
    )
    images, labels = test_set
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = jarn_tf.evaluate_robustness(
            model_file, images, labels, attacks=("fgsm", "pgd5"), num_examples=n, verbose=0, **settings
        )
    # One warning per failed check, as the command logs them.
    assert sorted(str(w.message).split("(")[1].split(")")[0] for w in caught) == sorted(
        c.name for c in report.failed_checks
    )
    _finish(cli)
    expected = json.load(open(out_dir / "results.json"))
    assert report.accuracy == expected["accuracy"]
    assert 0 < report.accuracy["pgd5"] < report.clean_accuracy  # numbers that can differ
    for name, attack in expected["attacks"].items():
        assert report.results["attacks"][name]["num_correct"] == attack["num_correct"], name
    # The same checks, with the same verdicts and numbers (the eps checks' PGD runs, the Square check).
    assert [(c.name, c.passed, c.detail) for c in report.checks] == [
        (c["name"], c["passed"], c["detail"]) for c in expected["checks"]
    ]
    assert report.check("outputs_are_logits").passed and report.checks_passed == expected["checks_passed"]
    assert "| pgd5 " in str(report) and "PASS attacks_not_above_clean" in str(report)


# ---------------------------------------------------------------------------
# AutoAttack.


def test_autoattack_runs_and_reports(monkeypatch, model_file, test_set):
    images, labels = test_set[0][:12], test_set[1][:12]
    model = jarn_tf.load_classifier(model_file)
    # The standard version, as the command runs it (eval_lib.evaluate); a linear model falls to APGD-CE.
    report = jarn_tf.evaluate_robustness(
        model, images, labels, eps=0.3, attacks=("pgd5", "autoattack"), verbose=0
    )
    attack = report.results["attacks"]["autoattack"]
    assert attack["budget"] == "standard" and attack["parts"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(attack["accuracy_after_each_part"]) == set(attack["parts"])
    assert report.accuracy["autoattack"] <= report.clean_accuracy and attack["max_perturbation"] <= 0.3 + 1e-6
    assert report.robust_accuracy == min(report.accuracy[k] for k in ("clean", "pgd5", "autoattack"))
    assert report.check("blackbox_not_below_whitebox").passed is not None  # AutoAttack's Square ran
    assert "| autoattack " in str(report)
    # A budget goes to run_autoattack; with the standard values it is the command's run, example for example.
    from jarn_tf.robustness import autoattack

    budget, budgets_seen, run_autoattack = {"num_steps": 100}, [], autoattack.run_autoattack

    def spy(*args, **kwargs):
        budgets_seen.append({k: v for k, v in kwargs.items() if k in budget})
        return run_autoattack(*args, **kwargs)

    monkeypatch.setattr(autoattack, "run_autoattack", spy)
    runs = {
        str(b): jarn_tf.evaluate_robustness(
            model, images, labels, eps=0.05, attacks=("pgd3", "apgd-ce"), autoattack_budget=b,
            masking_checks=False, verbose=0,
        )  # fmt: skip
        for b in (None, budget)
    }
    assert budgets_seen == [{}, budget]  # one batch each: the command's call, then the budget's
    for name in ("clean", "pgd3", "apgd-ce"):
        np.testing.assert_array_equal(
            runs["None"].output.correct[name], runs[str(budget)].output.correct[name]
        )
    assert list(runs[str(budget)].accuracy) == ["clean", "pgd3", "apgd-ce", "worst_case"]
    assert runs[str(budget)].results["attacks"]["apgd-ce"]["budget"] == budget
    assert 0 < runs["None"].accuracy["apgd-ce"] < runs["None"].accuracy["clean"]  # something to compare
    assert "reduced budget" in str(runs[str(budget)]) and runs["None"].checks == []
    with pytest.raises(ValueError, match="unknown keys \\['steps'\\]"):
        jarn_tf.evaluate_robustness(model, images, labels, 0.1, autoattack_budget={"steps": 5})


# ---------------------------------------------------------------------------
# Masking checks that fire.


def test_softmax_outputs_fail_outputs_are_logits(test_set):
    images, labels = test_set[0][:16], test_set[1][:16]
    with pytest.warns(UserWarning, match="outputs_are_logits"):
        report = jarn_tf.evaluate_robustness(
            _dense_model(softmax=True), images, labels, eps=0.1, attacks=("pgd3",), square_check_queries=0,
            eps_checks=False, verbose=0,
        )  # fmt: skip
    assert report.check("outputs_are_logits").passed is False and not report.checks_passed
    assert report.check("deterministic_outputs").passed is True
    assert "FAIL outputs_are_logits" in str(report) and "log(probabilities)" in str(report)


def _wrong_unless_perturbed(images):
    """tests/test_evaluate.py's model: wrong on clean images, right once any pixel but (0, 0) moves."""
    import tensorflow as tf

    code = tf.round((images[:, 0, 0, 0] - 0.05) * 10.0)
    rest = tf.reshape(images, [tf.shape(images)[0], -1])[:, 1:]
    moved = tf.reduce_any(tf.abs(rest - 0.5) > 1e-4, axis=1)
    label = tf.cast(tf.where(moved, code, tf.math.floormod(code + 1.0, 10.0)), tf.int32)
    return 10.0 * tf.one_hot(label, 10) + 0.0 * tf.reduce_sum(images, axis=[1, 2, 3])[:, None]


def test_attack_above_clean_fails_its_check():
    n = 30
    labels = np.arange(n) % 10
    images = np.full((n, 28, 28, 1), 0.5, np.float32)
    images[:, 0, 0, 0] = 0.05 + labels / 10.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = jarn_tf.evaluate_robustness(
            _wrong_unless_perturbed, images, labels, eps=0.02, attacks=("fgsm", "pgd5"), verbose=0
        )
    assert any("Possible gradient masking (attacks_not_above_clean)" in str(w.message) for w in caught)
    assert report.accuracy["clean"] == 0.0 and report.accuracy["pgd5"] == 1.0
    check = report.check("attacks_not_above_clean")
    assert check.passed is False and check.detail["failed"] == ["pgd5"]
    assert report.check("outputs_are_logits").passed and "FAIL attacks_not_above_clean" in str(report)


# ---------------------------------------------------------------------------
# Generators.


def test_measure_generator_checks_its_inputs(test_set, tmp_path):
    import keras

    latent = keras.Input((8,))
    generator = keras.Model(
        latent, keras.layers.Reshape((28, 28, 1))(keras.layers.Dense(784, "sigmoid")(latent))
    )
    path = str(tmp_path / "classifier.keras")
    _dense_model().save(path)
    real = test_set[0][:30]
    report = jarn_tf.measure_generator(
        generator, real, path, num_samples=20, feature_layer="logits", score_splits=2
    )
    assert set(report.values) == {"fcd", "classifier_score"} and report.metrics["fcd"]["name"] == "FCD"
    assert report.values["fcd"] > 0 and 1.0 <= report.values["classifier_score"] <= 10.0
    assert "FID" not in str(report) and "FCD" in str(report)
    with pytest.raises(ValueError, match="at least 11"):
        jarn_tf.measure_generator(generator, real, path, num_samples=10, feature_layer="logits")
    with pytest.raises(ValueError, match="Inception graph"):
        jarn_tf.measure_generator(generator, real, path, metrics=("fid",))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        jarn_tf.measure_generator(generator, real * 255, path)


# ---------------------------------------------------------------------------
# The examples.


def test_evaluate_keras_model_example_runs(examples):
    out, _ = _finish(examples["evaluate"])
    for text in ("| clean ", "| pgd20 ", "| autoattack ", "| worst_case ", "PASS outputs_are_logits"):
        assert text in out, out
    assert "reduced budget" in out


def test_measure_generator_example_runs(examples):
    out, _ = _finish(examples["generator"])
    assert "FCD (Fréchet classifier distance): " in out and "classifier score: " in out, out
    assert "not comparable with published Inception-based values" in out
