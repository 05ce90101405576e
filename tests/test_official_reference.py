"""Our AutoAttack against the official implementation's recorded outputs on the same model and inputs.

``tests/data/official_autoattack_reference.npz`` holds what the official AutoAttack (pyautoattack
0.2.0 on PyTorch) computed on the MLP in ``official_autoattack_reference.keras``; the script beside
them (``make_official_autoattack_reference.py``) wrote both. Where the official attacks are
deterministic given their starting point (APGD-CE and APGD-T from the same start, FAB-T) ours must give
the same results; the ensemble, whose random starts and Square differ, within a point.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.robustness import autoattack

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(scope="module")
def reference():
    import keras

    model = keras.saving.load_model(os.path.join(DATA, "official_autoattack_reference.keras"), compile=False)
    with np.load(os.path.join(DATA, "official_autoattack_reference.npz")) as f:
        ref = {k: f[k] for k in f.files}
    model_fn = lambda images: model(images, training=False)  # noqa: E731
    # The same network under both backends: the recorded clean logits are reproduced.
    np.testing.assert_allclose(model_fn(ref["x"]), ref["clean_logits"], atol=1e-5)
    return model_fn, ref


def _predict(model_fn, x):
    return np.argmax(np.asarray(model_fn(tf.convert_to_tensor(x))), axis=-1)


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_from_the_same_start_matches_the_official(reference, loss):
    model_fn, ref = reference
    x, y, eps = ref["x"], ref["y"], float(ref["eps"])
    key = "ce" if loss == "ce" else "t"
    target = ref["t_target"] if loss == "dlr-targeted" else None
    adv = np.asarray(autoattack.apgd(model_fn, x, y, eps, loss=loss, target=target, x_init=ref["start"]))
    broken = _predict(model_fn, adv) != y
    official_broken = ~ref[f"{key}_robust"]
    assert 0.2 < official_broken.mean() < 0.8  # a test of something: some break, some do not
    np.testing.assert_array_equal(broken, official_broken)
    # Where no misclassified point was found, both return the point of highest loss after the same
    # 100 iterations: the same point.
    robust = ~official_broken
    np.testing.assert_allclose(adv[robust], ref[f"{key}_x_best"][robust], atol=1e-5)


def test_fab_t_matches_the_official_minimal_perturbations(reference):
    model_fn, ref = reference
    x, y = ref["x"], ref["y"]
    order = np.argsort(-ref["clean_logits"], axis=-1, kind="stable")
    for rank in (2, 3):
        correct = order[:, 0] == y
        _, norms = autoattack.fab_minimal_perturbation(
            model_fn, x[correct], y[correct], order[correct, rank - 1], num_steps=100
        )
        norms = np.asarray(norms)
        found = norms < 1e10
        np.testing.assert_array_equal(found, ref[f"fab{rank}_found"][correct])
        assert found.mean() > 0.5
        np.testing.assert_allclose(norms[found], ref[f"fab{rank}_norm"][correct][found], rtol=1e-4)


def test_standard_ensemble_within_a_point_of_the_official(reference):
    model_fn, ref = reference
    x, y, eps = ref["x"], ref["y"], float(ref["eps"])
    result = autoattack.run_autoattack(model_fn, x, y, eps, seed=0)
    ours = [float(np.mean(result["per_attack"][name])) for name in autoattack.ATTACKS]
    np.testing.assert_allclose(ours, ref["ensemble_robust_after"], atol=0.01 + 1e-9)
    assert np.sum(result["robust"] != ref["ensemble_robust"]) <= 1


# ------------------------------------------------------------------------------------------------
# The side-by-side benchmark (jarn_tf.bench.attacks --compare_official).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_official_log_lines_give_robust_accuracy_and_time():
    import logging

    from jarn_tf.robustness import official_autoattack

    recorder = official_autoattack._LogRecorder()
    for line in ("running apgd-t", "robust accuracy after APGD-T: 52.20% (total time 310.5 s)"):
        recorder.emit(logging.LogRecord("auto-attack", logging.DEBUG, "", 0, line, None, None))
    assert recorder.after == {"apgd-t": (0.522, 310.5)}
    assert len(recorder.lines) == 2


def _bench(tmp_path, tiny_keras_file, tiny_data_dir, *extra):
    import json
    import subprocess
    import sys

    output = tmp_path / "compare.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jarn_tf.bench.attacks",
            "--compare_official",
            f"--model_path={tiny_keras_file}",
            f"--data_dir={tiny_data_dir}",
            "--num_examples=16",
            "--eps=0.02",
            f"--output={output}",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(output.read_text())


def test_compare_official_times_ours(tmp_path, tiny_keras_file, tiny_data_dir):
    stdout, summary = _bench(
        tmp_path, tiny_keras_file, tiny_data_dir, "--skip_official", "--members=apgd-ce", "--rounds=2"
    )
    assert "| ours: jarn_tf, TensorFlow" in stdout and "round 2 |" in stdout and "images / s" in stdout
    assert [set(r) for r in summary["rounds"]] == [{"first", "ours_total"}] * 2
    assert all(r["ours_total"] > 0 for r in summary["rounds"]) and "speedup_median" not in summary
    assert summary["num_examples"] == 16 and summary["members"] == ["apgd-ce"]
    assert summary["ours"]["total"] > 0 and set(summary["ours"]["seconds"]) == {"apgd-ce"}
    assert summary["tf_enable_onednn_opts"] == "1"  # the command turns oneDNN on
    # Per-pass figures (their order is not asserted: on a tiny model both are timing noise).
    assert "| ours | " in stdout and "forward + input gradient" in stdout
    ms = summary["ours"]["pass_ms"]
    assert ms["forward"] > 0 and ms["forward_grad"] > 0


def test_compare_official_runs_both(tmp_path, tiny_keras_file, tiny_data_dir):
    """Needs the optional benchmark dependencies (torch, pyautoattack): skipped without them."""
    pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    stdout, summary = _bench(tmp_path, tiny_keras_file, tiny_data_dir, "--members=apgd-ce", "--rounds=2")
    assert "| official: pyautoattack" in stdout and "throughput ours / official" in stdout
    # Two rounds, the order alternating; the median of their ratios.
    assert [r["first"] for r in summary["rounds"]] == ["official", "ours"]
    ratios = [r["official_total"] / r["ours_total"] for r in summary["rounds"]]
    assert summary["speedup_median"] == pytest.approx(np.median(ratios))
    assert all(r["same_verdict"] >= 15 for r in summary["rounds"])
    assert summary["official"]["total"] > 0 and summary["same_verdict"] >= 15
    ms = summary["official"]["pass_ms"]
    assert ms["forward"] > 0 and ms["forward_grad"] > 0
    assert "| official / ours |" in stdout
