"""AutoAttack: known values, constraints, and strength against baselines on a tiny model."""

import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.robustness import attacks, autoattack

NUM_CLASSES = 10


def _pattern_data(n, seed):
    """8x8x1 images: one fixed random template per class, low contrast, plus heavy noise."""
    templates = np.random.default_rng(123).uniform(0, 1, size=(NUM_CLASSES, 8, 8, 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    images = 0.25 + 0.5 * templates[labels] + rng.normal(0, 0.3, (n, 8, 8, 1))
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int32)


@pytest.fixture(scope="session")
def tiny():
    """An undefended MLP (64-64-10) trained briefly; test images it mostly classifies right."""
    import keras

    keras.utils.set_random_seed(0)
    x_train, y_train = _pattern_data(4000, seed=0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=128, epochs=4, verbose=0)
    x, y = _pattern_data(200, seed=1)
    model_fn = lambda images: model(images, training=False)
    return model, model_fn, x, y


def _accuracy(model_fn, x, y):
    return float(np.mean(np.argmax(np.asarray(model_fn(tf.convert_to_tensor(x))), axis=-1) == y))


def _pgd20(model_fn, x, y, eps):
    return attacks.pgd(model_fn, tf.constant(x), tf.constant(y), eps, eps / 4, 20, seed=tf.constant([0, 0]))


def _assert_valid(adv, x, eps):
    adv = np.asarray(adv)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert np.max(np.abs(adv - x)) <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0


# ------------------------------------------------------------------------------------------------
# Known values.


def test_dlr_known_values():
    logits = np.array([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]], np.float32)
    labels = np.array([0, 2, 2])
    # -(z_y - max_{i != y} z_i) / (z_(1) - z_(3)): [-(3 - 1) / 3, -(0 - 3) / 3, -(5 - 2) / (5 - 1)]
    np.testing.assert_allclose(autoattack.dlr_loss(labels, logits), [-2 / 3, 1.0, -0.75], rtol=1e-6)
    # Targeted: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2).
    target = np.array([1, 3, 0])
    expected = [-(3 - 1) / (3 + 0.5), -(0 + 1) / (3 + 0.5), -(5 - 0) / (5 - 0.5)]
    np.testing.assert_allclose(autoattack.dlr_loss_targeted(labels, target, logits), expected, rtol=1e-6)
    # Invariant to shifting and positive scaling of the logits.
    for fn, args in ((autoattack.dlr_loss, (labels,)), (autoattack.dlr_loss_targeted, (labels, target))):
        np.testing.assert_allclose(fn(*args, 7.0 * logits - 3.0), fn(*args, logits), rtol=1e-5)


def test_hyperplane_projection_is_minimal_and_feasible():
    rng = np.random.default_rng(0)
    m, d = 64, 20
    points = rng.uniform(0, 1, (m, d)).astype(np.float32)
    w = rng.normal(size=(m, d)).astype(np.float32)
    w[:, :3] = 0.0  # coordinates that do not matter must not move
    b = (np.sum(w * points, axis=1) + rng.normal(0, 0.5, m)).astype(np.float32)
    delta = autoattack.project_hyperplane_linf(points, w, b).numpy()
    moved = points + delta
    assert np.all(moved >= -1e-6) and np.all(moved <= 1 + 1e-6)
    np.testing.assert_array_equal(delta[:, :3], 0.0)
    needed = b - np.sum(w * points, axis=1)
    sign = np.where(needed < 0, -1.0, 1.0)[:, None]
    room = np.where(w * sign > 0, 1 - points, points)
    reachable = np.sum(np.abs(w) * room, axis=1) >= np.abs(needed)
    assert reachable.sum() > m // 2
    np.testing.assert_allclose(np.sum(w * moved, axis=1)[reachable], b[reachable], atol=1e-4)
    # Minimal L-inf norm: bisection on gain(t) = sum_i |w_i| min(t, room_i) = |needed|.
    lo, hi = np.zeros(m), np.ones(m)
    for _ in range(60):
        mid = (lo + hi) / 2
        enough = np.sum(np.abs(w) * np.minimum(mid[:, None], room), axis=1) >= np.abs(needed)
        hi, lo = np.where(enough, mid, hi), np.where(enough, lo, mid)
    np.testing.assert_allclose(np.abs(delta).max(axis=1)[reachable], hi[reachable], atol=1e-5)
    # Unreachable: move to the best corner of the box.
    np.testing.assert_allclose(np.abs(delta)[~reachable], (room * (w != 0))[~reachable], atol=1e-6)


def test_apgd_step_size_halving_converges_to_an_interior_maximum():
    """With a fixed step the sign iterates oscillate by 2 eps; the halving schedule converges."""
    rng = np.random.default_rng(0)
    eps = 0.1
    x = rng.uniform(0.2, 0.8, (4, 4, 4, 1)).astype(np.float32)
    center = x + rng.uniform(-0.5 * eps, 0.5 * eps, x.shape).astype(np.float32)

    def model_fn(images):  # class 1 always wins; CE of class 1 peaks at ``center``
        distance = tf.reduce_sum(tf.square(images - center), axis=[1, 2, 3])
        return tf.stack([tf.zeros_like(distance), distance + 1.0], axis=-1)

    y = np.ones(4, np.int32)
    adv = np.asarray(autoattack.apgd(model_fn, x, y, eps, num_steps=100))
    _assert_valid(adv, x, eps)
    assert np.max(np.abs(adv - center)) < 0.05 * eps


def test_fab_finds_the_minimal_perturbation_of_a_linear_model():
    """Two classes, z = [0, w . x]: the smallest L-inf flip of every example has norm r = c / |w|_1."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=16).astype(np.float32)
    c = 0.02 * np.abs(w).sum()  # so that r = 0.02
    u = rng.uniform(0.4, 0.6, (32, 16))
    flat = u + (-c - u @ w)[:, None] * w / np.dot(w, w)  # w . x = -c: class 0, margin c
    x = flat.reshape(32, 4, 4, 1).astype(np.float32)
    assert x.min() > 0.05 and x.max() < 0.95  # the box does not bind

    def model_fn(images):
        score = tf.reshape(images, [-1, 16]) @ tf.constant(w[:, None])
        return tf.concat([tf.zeros_like(score), score], axis=-1)

    y = np.zeros(32, np.int32)
    assert _accuracy(model_fn, x, y) == 1.0
    r = 0.02
    adv, norms = autoattack.fab_minimal_perturbation(model_fn, x, y, np.ones(32), num_steps=20)
    assert np.all(np.argmax(np.asarray(model_fn(adv)), axis=-1) == 1)
    np.testing.assert_allclose(np.max(np.abs(np.asarray(adv) - x), axis=(1, 2, 3)), norms, rtol=1e-6)
    assert np.all(norms >= r * (1 - 1e-4)) and np.all(norms <= 1.01 * r), norms / r
    adv = autoattack.fab_targeted(model_fn, x, y, 1.015 * r)
    _assert_valid(adv, x, 1.015 * r)
    assert _accuracy(model_fn, adv, y) == 0.0
    assert _accuracy(model_fn, autoattack.fab_targeted(model_fn, x, y, 0.98 * r), y) == 1.0


# ------------------------------------------------------------------------------------------------
# Constraints.


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"])
def test_adversarial_examples_stay_in_the_eps_ball_and_the_image_range(tiny, attack):
    _, model_fn, x, y = tiny
    x = x[:64].copy()
    x[:8] = 0.0  # pixels at the bounds of [0, 1] exercise the clipping
    x[8:16] = 1.0
    y = y[:64]
    eps = 0.05
    run = {
        "apgd-ce": lambda: autoattack.apgd(model_fn, x, y, eps, num_steps=20),
        "apgd-dlr": lambda: autoattack.apgd(model_fn, x, y, eps, num_steps=20, loss="dlr"),
        "apgd-t": lambda: autoattack.apgd_targeted(model_fn, x, y, eps, num_steps=20, num_target_classes=3),
        "fab-t": lambda: autoattack.fab_targeted(model_fn, x, y, eps, num_steps=20, num_target_classes=3),
        "square": lambda: autoattack.square(model_fn, x, y, eps, num_queries=100),
    }[attack]
    adv = run()
    _assert_valid(adv, x, eps)
    assert np.max(np.abs(np.asarray(adv) - x)) > 0.5 * eps  # it did move


# ------------------------------------------------------------------------------------------------
# Strength.


def test_apgd_ce_at_least_as_strong_as_pgd20(tiny):
    _, model_fn, x, y = tiny
    assert _accuracy(model_fn, x, y) > 0.9
    for eps in (0.04, 0.08):
        apgd_acc = _accuracy(model_fn, autoattack.apgd(model_fn, x, y, eps), y)
        pgd_acc = _accuracy(model_fn, _pgd20(model_fn, x, y, eps), y)
        assert apgd_acc <= pgd_acc + 0.02, (eps, apgd_acc, pgd_acc)
        assert apgd_acc < _accuracy(model_fn, x, y) - 0.1
    eps = 0.3
    assert _accuracy(model_fn, autoattack.apgd(model_fn, x, y, eps), y) <= 0.01
    assert _accuracy(model_fn, _pgd20(model_fn, x, y, eps), y) <= 0.01


def test_apgd_ce_agrees_with_art(tiny):
    pytest.importorskip("art")
    import keras
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    model, model_fn, x, y = tiny
    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=NUM_CLASSES,
        input_shape=(8, 8, 1),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    for eps in (0.04, 0.08):
        art_attack = AutoProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=eps,
            eps_step=2 * eps,
            max_iter=100,
            targeted=False,
            nb_random_init=1,
            batch_size=len(x),
            loss_type="cross_entropy",
            verbose=False,
        )
        art_acc = _accuracy(model_fn, art_attack.generate(x, y=y), y)
        ours = _accuracy(model_fn, autoattack.apgd(model_fn, x, y, eps), y)
        assert abs(ours - art_acc) <= 0.03, (eps, ours, art_acc)


def test_fab_t_and_apgd_t_match_or_beat_apgd_ce(tiny):
    _, model_fn, x, y = tiny
    eps = 0.08
    ce = _accuracy(model_fn, autoattack.apgd(model_fn, x, y, eps), y)
    t = _accuracy(model_fn, autoattack.apgd_targeted(model_fn, x, y, eps), y)
    fab = _accuracy(model_fn, autoattack.fab_targeted(model_fn, x, y, eps), y)
    assert t <= ce + 0.02 and fab <= ce + 0.02, (ce, t, fab)


def test_square_lowers_accuracy_without_gradients(tiny):
    _, model_fn, x, y = tiny
    eps = 0.1
    clean = _accuracy(model_fn, x, y)
    adv = autoattack.square(model_fn, x, y, eps, num_queries=500)
    _assert_valid(adv, x, eps)
    assert _accuracy(model_fn, adv, y) <= clean - 0.3


def test_gradient_masking_is_seen_through(tiny):
    """Saturated softmax: the CE gradient underflows to 0, so PGD-CE fails; DLR and Square do not."""
    _, model_fn, x, y = tiny
    masked = lambda images: 1e4 * model_fn(images)
    xt, yt = tf.constant(x), tf.constant(y)
    _, grad = attacks.loss_gradient(masked, xt, yt)
    correct = np.argmax(np.asarray(masked(xt)), axis=-1) == y
    assert np.mean(np.all(np.asarray(grad)[correct] == 0, axis=(1, 2, 3))) > 0.9  # truly masked
    eps = 0.1
    clean = _accuracy(masked, x, y)
    pgd_acc = _accuracy(masked, _pgd20(masked, x, y, eps), y)
    apgd_t = _accuracy(masked, autoattack.apgd_targeted(masked, x, y, eps, num_target_classes=3), y)
    square_acc = _accuracy(masked, autoattack.square(masked, x, y, eps, num_queries=500), y)
    unmasked = _accuracy(model_fn, autoattack.apgd_targeted(model_fn, x, y, eps, num_target_classes=3), y)
    assert pgd_acc >= clean - 0.1, (clean, pgd_acc)
    assert apgd_t <= pgd_acc - 0.5 and apgd_t <= unmasked + 0.02, (pgd_acc, apgd_t, unmasked)
    assert square_acc <= pgd_acc - 0.3, (pgd_acc, square_acc)


# ------------------------------------------------------------------------------------------------
# The ensemble.


def test_run_autoattack_masks_and_outputs(tiny):
    _, model_fn, x, y = tiny
    x, y = x[:100], y[:100].copy()
    y[:3] = (np.argmax(np.asarray(model_fn(x[:3])), axis=-1) + 1) % NUM_CLASSES  # clean-misclassified
    eps = 0.05
    result = autoattack.run_autoattack(
        model_fn,
        x,
        y,
        eps,
        batch_size=40,
        num_steps=20,
        num_target_classes=3,
        fab_steps=20,
        num_queries=200,
    )
    assert list(result["per_attack"]) == list(autoattack.ATTACKS)
    assert set(result["seconds"]) == set(autoattack.ATTACKS)
    robust, adv = result["robust"], result["adversarial"]
    assert robust.dtype == bool and robust.shape == (100,)
    np.testing.assert_array_equal(robust, result["per_attack"][autoattack.ATTACKS[-1]])
    previous = result["clean"]
    assert not previous[:3].any() and not robust[:3].any()
    for name in autoattack.ATTACKS:
        mask = result["per_attack"][name]
        assert not np.any(mask & ~previous), name  # monotone non-increasing
        previous = mask
    _assert_valid(adv, x, eps)
    predictions = np.argmax(np.asarray(model_fn(adv)), axis=-1)
    np.testing.assert_array_equal(predictions == y, robust)  # broken <=> adversarial misclassified
    np.testing.assert_array_equal(adv[robust], x[robust])
    assert 0 < robust.mean() < result["clean"].mean()  # eps chosen so that some, not all, break
    with pytest.raises(ValueError):
        autoattack.run_autoattack(model_fn, x, y, eps, attacks=("pgd",))


def test_run_autoattack_logs_progress_like_the_reference(tiny):
    _, model_fn, x, y = tiny
    x, y = x[:20], y[:20]
    lines = []
    result = autoattack.run_autoattack(
        model_fn,
        x,
        y,
        0.05,
        batch_size=8,
        num_steps=3,
        num_target_classes=2,
        fab_steps=3,
        num_queries=10,
        log=lines.append,
    )
    n_clean = int(result["clean"].sum())
    assert lines[0] == f"clean accuracy: {n_clean / 20:.2%} ({n_clean}/20)"
    for name in autoattack.ATTACKS:
        left = int(result["per_attack"][name].sum())
        after = [line for line in lines if line.startswith(f"robust accuracy after {name.upper()}: ")]
        assert len(after) == 1 and f"({left}/20 still robust; " in after[0], (name, lines)
    # APGD-CE attacks every clean-correct example, in chunks of 8, one line each.
    chunks = [line for line in lines if line.startswith("apgd-ce - ")]
    assert len(chunks) == -(-n_clean // 8) > 1 and chunks[0].startswith(f"apgd-ce - 1/{len(chunks)} - ")


# ------------------------------------------------------------------------------------------------
# Work stops on settled examples (official AutoAttack keeps computing on them).


def _counting_linear_model(w):
    """z = [0, w . x]: class 1 where w . x > 0. Counts the rows of every forward pass."""
    seen = tf.Variable(0, dtype=tf.int64)

    def model_fn(images):
        seen.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        score = tf.reshape(images, [tf.shape(images)[0], -1]) @ tf.constant(w[:, None])
        return tf.concat([tf.zeros_like(score), score], axis=-1)

    return model_fn, seen


def _half_misclassified(w, n=16):
    """n 4x4 images, the first half of class 1 (misclassified as labels are 0), margins >= 0.2."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, (n, 16))
    sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    x += ((0.2 * sign - x @ w) / (w @ w))[:, None] * w  # w . x = +-0.2
    return x.reshape(n, 4, 4, 1).astype(np.float32), np.zeros(n, np.int32)


def test_settled_rows_get_no_more_forward_passes():
    w = np.random.default_rng(1).normal(size=16).astype(np.float32) * 0.1
    x, y = _half_misclassified(w)
    eps = 1e-4  # far too small to flip anything: the robust half stays robust
    model_fn, seen = _counting_linear_model(w)
    autoattack.apgd(model_fn, x, y, eps, num_steps=10)
    assert int(seen.numpy()) == 16 + 8 * 10  # the start point, then only the 8 robust rows
    model_fn, seen = _counting_linear_model(w)
    autoattack.square(model_fn, x, y, eps, num_queries=10, skip_known=False)
    assert int(seen.numpy()) == 16 + 8 * 10
    # FAB: every row within stop_below after its first step is retired, whatever num_steps is.
    model_fn, seen = _counting_linear_model(w)
    _, norms = autoattack.fab_minimal_perturbation(
        model_fn, x[8:], y[8:], 1 - y[8:], num_steps=10, stop_below=1.0
    )
    assert np.all(np.asarray(norms) <= 1.0)
    assert int(seen.numpy()) == 8 + 8  # one linearisation and one check of the 8 rows


def _counting(model_fn):
    """model_fn that also counts the rows (images) it is called on."""
    seen = tf.Variable(0, dtype=tf.int64)

    def counting(images):
        seen.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return model_fn(images)

    return counting, seen


def test_square_does_not_query_proposals_of_known_margin(tiny):
    """Unchanged and already rejected proposals are not queried; the attack's result is the same."""
    _, model_fn, x, y = tiny
    x, y = x[:64], y[:64]
    eps = 0.05  # some examples break early, the others run all queries
    adv, rows = {}, {}
    for skip in (False, True):
        counting, seen = _counting(model_fn)
        # 1,200 queries reach the 2-pixel (iteration 500) and 1-pixel windows (1,000) of 8x8 images.
        adv[skip] = np.asarray(autoattack.square(counting, x, y, eps, num_queries=1200, skip_known=skip))
        rows[skip] = int(seen.numpy())
    np.testing.assert_array_equal(adv[True], adv[False])
    broken = np.argmax(np.asarray(model_fn(adv[True])), axis=-1) != y
    assert 0 < broken.mean() < 1
    # Queried: 28,499 of 60,183 rows (without skipping the rejected ones: 48,375).
    assert rows[True] < 0.6 * rows[False], (rows[True], rows[False])


def test_square_skipping_keeps_the_result_on_three_channels():
    """The proposal key holds one sign per channel: on RGB images the result is the same too."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, "relu"),
            keras.layers.Dense(4),
        ]
    )
    x = np.random.default_rng(0).uniform(0, 1, (16, 6, 6, 3)).astype(np.float32)
    y = np.argmax(np.asarray(model(x)), axis=-1).astype(np.int32)  # all correctly classified
    model_fn = lambda images: model(images, training=False)  # noqa: E731
    adv = {}
    for skip in (False, True):
        adv[skip] = np.asarray(autoattack.square(model_fn, x, y, 0.01, num_queries=600, skip_known=skip))
    np.testing.assert_array_equal(adv[True], adv[False])
    assert np.abs(adv[True] - x).max() > 0


def test_apgd_t_rows_of_a_broken_example_stop_together(tiny):
    """All targets of an example run in one batch; the verdicts equal running them one at a time."""
    _, model_fn, x, y = tiny
    x, y = x[:48], y[:48]
    eps = 0.05
    batched = autoattack.apgd_targeted(model_fn, x, y, eps, num_steps=20, num_target_classes=3)
    one_by_one = autoattack.apgd_targeted(
        model_fn, x, y, eps, num_steps=20, num_target_classes=3, targets_per_call=1
    )
    broken = lambda adv: np.argmax(np.asarray(model_fn(adv)), axis=-1) != y  # noqa: E731
    assert 0 < broken(batched).mean() < 1
    np.testing.assert_array_equal(broken(batched), broken(one_by_one))
    fab_batched = autoattack.fab_targeted(model_fn, x, y, eps, num_steps=20, num_target_classes=3)
    fab_one = autoattack.fab_targeted(
        model_fn, x, y, eps, num_steps=20, num_target_classes=3, targets_per_call=1
    )
    np.testing.assert_array_equal(broken(fab_batched), broken(fab_one))
