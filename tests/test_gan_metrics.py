"""Image-quality metrics of generators (jarn_tf.gan.metrics) and the jarn_tf.evaluate_gan command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg

from jarn_tf.gan import metrics as gm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT_DIM = 8
# mnist_cnn with these channels: 28 -> 14 -> 7 -> 4, so 4 * 4 * 2 = 32 penultimate features.
CNN_CHANNELS = (4, 8, 2)
PENULTIMATE_DIM = 32


# ---------------------------------------------------------------------------
# Fréchet distance.


def _reference_frechet(mu1, s1, mu2, s2):
    """The textbook formula with SciPy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_frechet_distance_of_known_gaussians():
    # N(0, I_4) and N(1, 4 I_4): |mu diff|^2 = 4, traces 4 + 16, tr sqrt(4 I) = 8: 4 + 20 - 16 = 8.
    d = 4
    value = gm.frechet_distance(np.zeros(d), np.eye(d), np.ones(d), 4 * np.eye(d))
    assert value == pytest.approx(8.0, abs=1e-12)


def test_frechet_distance_of_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 8)) * np.arange(1, 9)
    stats = gm.feature_statistics(features)
    assert abs(gm.frechet_distance(*stats, *stats)) < 1e-6
    assert abs(gm.frechet_distance_from_features(features, features)) < 1e-6


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 8))
    b = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 0.5
    mu1, s1 = gm.feature_statistics(a)
    mu2, s2 = gm.feature_statistics(b)
    assert s1.dtype == np.float64 and mu1.shape == (8,) and s1.shape == (8, 8)
    np.testing.assert_allclose(s1, np.cov(a, rowvar=False), rtol=1e-12)
    expected = _reference_frechet(mu1, s1, mu2, s2)
    assert gm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-6)


def _naive_trace_sqrt(s1, s2):
    """tr sqrtm(s1 s2) from the eigenvalues of the non-symmetric product (what not to do)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2)))


def _naive_fails(value) -> bool:
    return not np.isfinite(value) or (np.iscomplexobj(value) and abs(np.imag(value)) > 0)


def test_frechet_distance_stays_finite_on_ill_conditioned_covariances():
    # Covariances of 6 samples of 8 features whose scales span 1e-4..1e4: rank 5, condition ~1e16.
    rng = np.random.default_rng(0)
    scale = np.logspace(-4, 4, 8)
    s1 = np.cov(rng.standard_normal((6, 8)) * scale, rowvar=False)
    s2 = np.cov(rng.standard_normal((6, 8)) * scale, rowvar=False)
    mu = np.zeros(8)
    # The naive trace is NaN (a rounding-negative eigenvalue) or complex: the test can fail.
    assert _naive_fails(_naive_trace_sqrt(s1, s2))
    value = gm.frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(value) and isinstance(value, float)
    scale_of_values = np.trace(s1) + np.trace(s2)
    assert value == pytest.approx(_reference_frechet(mu, s1, mu, s2), abs=1e-6 * scale_of_values)


def test_trace_sqrt_product_exact_on_singular_commuting_covariances():
    # s1 = Q diag(a) Q^T and s2 = Q diag(b) Q^T commute, so tr sqrtm(s1 s2) = sum sqrt(a b) exactly;
    # their zero eigenvalues make the naive eigenvalues of s1 @ s2 come out negative (NaN) or complex.
    a = np.array([4.0, 1.0, 1e-6, 0.0, 0.0])
    b = np.array([1.0, 0.0, 1e-6, 3.0, 0.0])
    exact = float(np.sum(np.sqrt(a * b)))  # 2 + 1e-6
    naive_failures = 0
    for seed in range(5):
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(5, 5)))
        s1, s2 = (q * a) @ q.T, (q * b) @ q.T
        naive_failures += _naive_fails(_naive_trace_sqrt(s1, s2))
        assert gm.trace_sqrt_product(s1, s2) == pytest.approx(exact, abs=1e-6)
        d = gm.frechet_distance(np.zeros(5), s1, np.zeros(5), s2)
        assert d == pytest.approx(a.sum() + b.sum() - 2 * exact, abs=1e-5)
    assert naive_failures > 0


def test_feature_statistics_refuses_too_few_samples():
    with pytest.raises(ValueError, match="at least 9"):
        gm.feature_statistics(np.random.default_rng(0).normal(size=(8, 8)))
    with pytest.raises(ValueError, match="at least 9"):
        gm.feature_statistics(np.ones((3, 8)))
    with pytest.raises(ValueError, match="NaN"):
        gm.feature_statistics(np.full((20, 2), np.nan))
    mu, sigma = gm.feature_statistics(np.random.default_rng(0).normal(size=(9, 8)))
    assert sigma.shape == (8, 8)


# ---------------------------------------------------------------------------
# Classifier score.


def test_classifier_score_of_balanced_one_hot_is_k_and_of_uniform_is_1():
    for k in (2, 5, 10):
        one_hot = np.eye(k)[np.arange(20 * k) % k]
        assert gm.classifier_score(one_hot) == pytest.approx(k, rel=1e-12)
        mean, std = gm.classifier_score_and_std(one_hot, splits=4)  # each split is balanced too
        assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
        assert gm.classifier_score(np.full((30, k), 1.0 / k)) == pytest.approx(1.0, abs=1e-12)
    # All samples in one class: p(y|x) = p(y), score 1, with zeros in the probabilities (safe logs).
    assert gm.classifier_score(np.eye(4)[np.zeros(10, int)]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sums to"):
        gm.classifier_score(np.full((4, 3), 2.0))
    with pytest.raises(ValueError, match="splits"):
        gm.classifier_score(np.eye(3), splits=4)


# ---------------------------------------------------------------------------
# Tiny exports: a classifier and a generator, as the runs write them.


def _write_generator_export(export_dir: str, dataset: str = "fashion_mnist") -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((LATENT_DIM,), name="latent"),
            keras.layers.Dense(28 * 28, activation="sigmoid"),
            keras.layers.Reshape((28, 28, 1)),
        ]
    )
    os.makedirs(export_dir, exist_ok=True)
    model.save(os.path.join(export_dir, gm.GENERATOR_KERAS_FILE))

    class Serving(tf.Module):
        def __init__(self, generator):
            super().__init__()
            self.generator = generator

        @tf.function(input_signature=[tf.TensorSpec([None, LATENT_DIM], tf.float32, name="latent")])
        def serve(self, latent):
            return {"images": self.generator(latent, training=False)}

    module = Serving(model)
    tf.saved_model.save(
        module, os.path.join(export_dir, gm.SAVED_MODEL_DIR), signatures={"serving_default": module.serve}
    )
    metadata = {
        "kind": "generator",
        "latent_dim": LATENT_DIM,
        "latent_distribution": "standard_normal",
        "image_shape": [28, 28, 1],
        "output_range": [0.0, 1.0],
        "dataset": dataset,
        "mode": "gan",
        "step": 7,
        "config": {"data": {"dataset": dataset, "data_dir": None}},
    }
    with open(os.path.join(export_dir, gm.METADATA_FILE), "w") as f:
        json.dump(metadata, f)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    import keras

    from jarn_tf import config as config_lib
    from jarn_tf.core import export
    from jarn_tf.jarn import models

    root = tmp_path_factory.mktemp("gan_exports")
    classifier_run = str(root / "classifier_run")
    keras.utils.set_random_seed(0)
    classifier = models.build_classifier(
        config_lib.ModelConfig(model="mnist_cnn", cnn_channels=CNN_CHANNELS), (28, 28, 1), 10
    )
    export.export_classifier(
        classifier,
        os.path.join(classifier_run, "export"),
        (28, 28, 1),
        {"dataset": "fashion_mnist", "num_classes": 10, "step": 1},
    )
    generator_run = str(root / "gan_run")
    _write_generator_export(os.path.join(generator_run, "export"))
    return {"classifier_run": classifier_run, "generator_run": generator_run, "root": str(root)}


def test_classifier_feature_network(exports):
    run = exports["classifier_run"]
    keras_file = os.path.join(run, "export", "classifier.keras")
    net = gm.load_feature_network(run)
    assert (net.distance_name, net.score_name, net.name) == ("FCD", "classifier score", "FCD")
    assert net.path == keras_file and net.dataset == "fashion_mnist"
    with open(keras_file, "rb") as f:
        assert net.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert net.feature_dim == PENULTIMATE_DIM and "last Dense" in net.feature_layer
    images = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    features, probs = net.features_and_probabilities(images, batch_size=2)
    assert features.shape == (5, PENULTIMATE_DIM) and features.dtype == np.float64
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1.0)
    # The probabilities are the softmax of the classifier's logits.
    from jarn_tf.core import export

    logits = export.load_model(run).model_fn(images).numpy()
    np.testing.assert_allclose(probs, gm.softmax_float64(logits), rtol=1e-5, atol=1e-7)
    # The same network from the export directory and from the .keras file; logits as features.
    for path in (os.path.join(run, "export"), keras_file):
        assert gm.load_feature_network(path).sha256 == net.sha256
    logit_net = gm.load_classifier_network(keras_file, feature_layer="logits")
    np.testing.assert_allclose(logit_net.features_and_probabilities(images)[0], logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[28, 28, 1\].*\[32, 32, 3\]"):
        net.features_and_probabilities(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="generator"):
        gm.load_feature_network(exports["generator_run"])
    with pytest.raises(ValueError, match="not both"):
        gm.load_feature_network(run, inception_graph="x.pb")


def test_training_fcd_refuses_too_few_samples_at_once_and_measures_as_offline(exports):
    """The training-time FCD (--fcd_network) checks its sample count when built (before any training),
    and measures what the offline functions give."""
    run = exports["classifier_run"]
    with pytest.raises(ValueError, match=rf"--fcd_samples={PENULTIMATE_DIM} .* has {PENULTIMATE_DIM} features"):
        gm.TrainingFCD(run, PENULTIMATE_DIM).check()
    n = PENULTIMATE_DIM + 40
    fcd = gm.TrainingFCD(run, n, score_splits=2)
    fcd.check()
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, size=(n + 5, 28, 28, 1), dtype=np.uint8)
    fake = rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
    got = fcd.measure(real, lambda k: fake[:k])
    net = gm.load_feature_network(run)
    real_feats, _ = net.features_and_probabilities(real[:n].astype(np.float32) / 255.0)
    fake_feats, probs = net.features_and_probabilities(fake)
    want = gm.frechet_distance(*gm.feature_statistics(fake_feats), *gm.feature_statistics(real_feats))
    assert got["eval/fcd"] == pytest.approx(want, rel=1e-6)
    assert got["eval/classifier_score"] == pytest.approx(gm.classifier_score(probs, 2), rel=1e-6)


def test_load_generator_forms_agree_and_refuse_a_classifier(exports):
    run = exports["generator_run"]
    export_dir = os.path.join(run, "export")
    gen = gm.load_generator(run)
    assert gen.format == "keras" and gen.model_dir == run and gen.step == 7 and gen.dataset == "fashion_mnist"
    assert gen.latent_dim == LATENT_DIM and gen.image_shape == (28, 28, 1)
    sample, metadata = gm.load_generator(export_dir)  # unpacks as (sample, metadata)
    assert metadata["kind"] == "generator"
    z = gen.latents(4, seed=3)
    expected = gen.sample(z)
    assert expected.shape == (4, 28, 28, 1) and 0 <= expected.min() and expected.max() <= 1
    np.testing.assert_allclose(sample(z), expected, atol=1e-6)
    saved = gm.load_generator(os.path.join(export_dir, "saved_model"))
    assert saved.format == "saved_model"
    np.testing.assert_allclose(saved.sample(z), expected, atol=1e-5)
    keras_only = gm.load_generator(os.path.join(export_dir, "generator.keras"))
    np.testing.assert_allclose(keras_only.generate(4, seed=3, batch_size=3), expected, atol=1e-6)
    for path in (
        exports["classifier_run"],
        os.path.join(exports["classifier_run"], "export", "classifier.keras"),
    ):
        with pytest.raises(ValueError, match="classifier export; evaluate it with jarn_tf.evaluate"):
            gm.load_generator(path)


# ---------------------------------------------------------------------------
# The 2015 Inception graph: structure check and plumbing, on tiny fake GraphDefs with its tensor names.


def _fake_inception_graph(path, pool_name="pool_3", pool_dim=2048, num_logits=1008, raw_input=True):
    """A GraphDef with the 2015 graph's names: [ExpandDims ->] ResizeBilinear -> Sub -> Mul -> ... ->
    pool_3 -> pool_3/_reshape (batch of 1, as in the real graph) -> softmax/logits/MatMul (+ bias)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w_pool = rng.standard_normal((3, pool_dim)).astype(np.float32)
    w_logits = (rng.standard_normal((pool_dim, num_logits)) * 0.01).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        if raw_input:
            contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
            decoded = tf.cast(
                tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg"), tf.float32, name="Cast"
            )
            expand = tf.expand_dims(decoded, 0, name="ExpandDims")
            resized = tf.raw_ops.ResizeBilinear(
                images=expand, size=tf.constant([299, 299], name="ResizeBilinear/size"), name="ResizeBilinear"
            )
            scaled = tf.multiply(
                tf.subtract(resized, tf.constant(128.0), name="Sub"), tf.constant(1 / 128.0), name="Mul"
            )
        else:  # TF-GAN's frozen graph: its input is the preprocessed Mul
            scaled = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3], name="Mul")
        # The mean of the 299x299 input, accumulated in float64 (float32 loses 1e-3 over 89401 pixels).
        mean = tf.cast(tf.nn.avg_pool2d(tf.cast(scaled, tf.float64), 299, 299, "VALID"), tf.float32)
        conv = tf.nn.conv2d(mean, tf.constant(w_pool[None, None]), 1, "VALID", name="mixed_10/conv")
        pool3 = tf.nn.avg_pool2d(conv, 1, 1, "VALID", name=pool_name)
        if raw_input:
            flat = tf.reshape(pool3, tf.constant([1, pool_dim]), name=f"{pool_name}/_reshape")
            matmul = tf.matmul(
                flat, tf.constant(w_logits, name="softmax/weights"), name="softmax/logits/MatMul"
            )
            logits = tf.nn.bias_add(
                matmul, tf.constant(np.ones(num_logits, np.float32)), name="softmax/logits"
            )
            tf.nn.softmax(logits, name="softmax")
        else:
            tf.matmul(tf.reshape(pool3, [-1, pool_dim]), tf.constant(w_logits), name="logits")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())
    return str(path), w_pool, w_logits


@pytest.mark.parametrize("raw_input", [True, False], ids=["expand_dims", "mul"])
def test_inception_graph_plumbing_on_a_fake_graph(tmp_path, raw_input):
    path, w_pool, w_logits = _fake_inception_graph(tmp_path / "graph.pb", raw_input=raw_input)
    net = gm.load_feature_network(None, inception_graph=path)
    assert (net.distance_name, net.score_name, net.kind) == ("FID", "IS", "inception_2015")
    assert net.feature_dim == 2048 and net.num_classes == 1008 and "pool_3" in net.feature_layer
    with open(path, "rb") as f:
        assert net.sha256 == hashlib.sha256(f.read()).hexdigest()
    # Constant grey images c: tiled to RGB, scaled to [0, 255], resized to 299x299 and mapped to
    # (255 c - 128) / 128, the graph's [-1, 1]; the fake's pool_3 is then that value times sum(w_pool).
    levels = np.array([0.0, 0.25, 1.0], np.float32)
    images = np.ones((3, 28, 28, 1), np.float32) * levels[:, None, None, None]
    features, probs = net.features_and_probabilities(images, batch_size=2)
    expected = ((255 * levels - 128) / 128)[:, None] * w_pool.sum(axis=0)[None]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    # Logits from pool_3 and the weights, batch by batch (the graph's own reshape takes one image).
    np.testing.assert_allclose(probs, gm.softmax_float64(features @ w_logits), rtol=1e-4, atol=1e-6)
    net.check_image_shape((32, 32, 3))
    with pytest.raises(ValueError, match="channels"):
        net.check_image_shape((28, 28, 2))


def test_inception_graph_check_refuses_other_graphs(tmp_path):
    path, _, _ = _fake_inception_graph(tmp_path / "no_pool3.pb", pool_name="pool_x")
    with pytest.raises(ValueError, match="no 'pool_3' node"):
        gm.load_inception_network(path)
    path, _, _ = _fake_inception_graph(tmp_path / "small.pb", pool_dim=64, num_logits=10)
    with pytest.raises(ValueError, match="64 pool_3 features and 10 logits, not .* 2048 and 1008"):
        gm.load_inception_network(path)
    with pytest.raises(ValueError, match="directory"):
        gm.load_inception_network(str(tmp_path))


# ---------------------------------------------------------------------------
# The command.


def _evaluate_gan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jarn_tf.evaluate_gan", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=REPO,
        timeout=300,
    )


def test_evaluate_gan_end_to_end(exports, tiny_data_dir, tmp_path):
    out = str(tmp_path / "eval")
    proc = _evaluate_gan(
        f"--model={exports['generator_run']}",
        f"--feature_network={exports['classifier_run']}",
        f"--data_dir={tiny_data_dir}",
        "--num_samples=64",
        "--score_splits=2",
        "--batch_size=32",
        "--seed=1",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert set(results["metrics"]) == {"fcd", "classifier_score"}
    fcd, score = results["metrics"]["fcd"], results["metrics"]["classifier_score"]
    assert fcd["name"] == "FCD" and score["name"] == "classifier score"
    assert all(m["name"] not in ("FID", "IS") for m in results["metrics"].values())
    with open(os.path.join(exports["classifier_run"], "export", "classifier.keras"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert fcd["sha256"] == digest and results["networks"]["classifier"]["sha256"] == digest
    assert fcd["feature_dim"] == PENULTIMATE_DIM and fcd["num_samples"] == 64
    assert (fcd["reference_split"], fcd["reference_size"]) == ("test", 64)
    assert fcd["value"] > 0 and np.isfinite(fcd["value"])
    assert fcd["floor"]["split"] == "train" and fcd["floor"]["num_real"] == 64
    assert 0 <= fcd["floor"]["value"] < fcd["value"]  # real images are closer than an untrained generator's
    assert 1 <= score["value"] <= 10 and score["splits"] == 2
    assert results["generator"]["step"] == 7 and results["seed"] == 1
    assert "tensorflow" in results["library_versions"] and results["wall_seconds"] > 0
    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    assert "FCD" in md and digest in md
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0


@pytest.mark.parametrize("case", ["fid_without_graph", "other_dataset"])
def test_evaluate_gan_refuses_before_generating(exports, tmp_path, case):
    feature_network = exports["classifier_run"]
    if case == "other_dataset":  # the same classifier, said to be trained on MNIST
        feature_network = str(tmp_path / "mnist_classifier")
        shutil.copytree(exports["classifier_run"], feature_network)
        metadata_file = os.path.join(feature_network, "export", "metadata.json")
        with open(metadata_file) as f:
            metadata = json.load(f)
        with open(metadata_file, "w") as f:
            json.dump({**metadata, "dataset": "mnist"}, f)
    args = [f"--model={exports['generator_run']}", f"--feature_network={feature_network}"]
    args += ["--metrics=fcd,fid"] if case == "fid_without_graph" else []
    proc = _evaluate_gan(*args, f"--output_dir={tmp_path / 'eval'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr
    if case == "fid_without_graph":
        assert "--inception_graph" in proc.stderr
    else:
        assert "trained on mnist but the generator on fashion_mnist" in proc.stderr
    assert not os.path.exists(tmp_path / "eval")


def test_parse_metrics_names_the_missing_flags():
    from jarn_tf import evaluate_gan

    assert evaluate_gan.parse_metrics(None, "clf", None) == ["fcd", "classifier_score"]
    assert evaluate_gan.parse_metrics(None, "clf", "g.pb") == ["fcd", "classifier_score", "fid", "is"]
    with pytest.raises(ValueError, match="--inception_graph"):
        evaluate_gan.parse_metrics(["is"], "clf", None)
    with pytest.raises(ValueError, match="--feature_network"):
        evaluate_gan.parse_metrics(["fcd"], None, "g.pb")
    with pytest.raises(ValueError, match="--feature_network.*--inception_graph"):
        evaluate_gan.parse_metrics(None, None, None)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_gan.parse_metrics(["fld"], "clf", None)
