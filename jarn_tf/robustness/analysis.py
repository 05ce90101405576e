"""Analyses of a classifier's robustness, each written as a figure + numbers.

- ``eps_sweep``: accuracy against eps for several attacks and models (the
  JARN paper's Fig. 2). The sweep goes on past the given grid, doubling eps,
  until every model's accuracy under its strongest attack reaches 0 or eps
  reaches 1, so that each curve shows where the model breaks completely (an
  evaluation whose accuracy never reaches 0 at eps = 1 is broken).
- ``loss_surface``: cross-entropy on a grid spanned by the adversarial
  (sign-gradient) direction and a random direction orthogonal to it (Fig. 3).
- ``jacobian_figure``: input Jacobians next to their images, one per class
  (Fig. 4), also written to TensorBoard.
- ``jacobian_stats``: how much the input Jacobians look like the images, over
  every evaluated example: JARN's |cos| between the standardised Jacobian and
  image, Etmann et al.'s (2019) alignment |<x, J>| / ||J||_2, and the cosine
  of |J| (a saliency map) with the image.

Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from jarn_tf.core import export  # noqa: E402
from jarn_tf.jarn import losses
from jarn_tf.robustness import attacks, evaluation as eval_lib

EPS_SWEEP_FILES = ("eps_sweep.png", "eps_sweep.json", "eps_sweep.csv")
LOSS_SURFACE_FILES = ("loss_surface.png", "loss_surface.npy", "loss_surface.json")
JACOBIAN_FILES = ("jacobians.png", "jacobians.npy")
JACOBIAN_STATS_FILE = "jacobian_stats.json"
TENSORBOARD_DIR = "tensorboard"

# First eps tried after 0 when a sweep must extend a grid that ends at 0.
_FIRST_EPS = 1 / 255


def _next_eps(eps: float, max_eps: float) -> float:
    return min(max_eps, 2 * eps if eps > 0 else _FIRST_EPS)


def eps_sweep(
    models: Mapping[str, export.ModelFn],
    dataset: tf.data.Dataset,
    attack_names: Sequence[str],
    eps_grid: Sequence[float],
    step_fraction: float = 0.25,
    restarts: int = 1,
    seed: int = 0,
    max_eps: float = 1.0,
    strategy: Optional[tf.distribute.Strategy] = None,
    verbose: int = 0,
    jit_compile: bool = False,
) -> Dict[str, Any]:
    """Accuracy against eps for every (model, attack).

    Args:
      models: name -> images-to-logits function.
      dataset: finite dataset of (images, labels).
      attack_names: gradient attacks, e.g. ``["fgsm", "pgd10", "pgd20"]``.
      eps_grid: the eps values to try first (sorted, in [0, max_eps]).
      step_fraction: PGD step size as a fraction of eps.
      restarts: PGD random restarts.
      seed: seed of the random starts.
      max_eps: the largest eps the sweep extends to.
      strategy: tf.distribute strategy for the attacks.
      verbose: 1 prints each run (model, eps) and its progress bar.
      jit_compile: compile the attacks with XLA.

    Returns:
      ``{"eps": [...], "extended_from": last grid eps, "curves": [{"model",
      "attack", "eps": [...], "accuracy": [...]}], "parameters": {...}}``.

    Raises:
      ValueError: an empty or out-of-range grid, or a non-gradient attack.
    """
    grid = sorted(float(e) for e in eps_grid)
    if not grid:
        raise ValueError("The eps grid of the sweep is empty.")
    if grid[0] < 0 or grid[-1] > max_eps:
        raise ValueError(f"Sweep eps values must be in [0, {max_eps}], got {grid}.")
    specs = eval_lib.parse_attacks(attack_names)
    if any(not s.gradient_based for s in specs):
        raise ValueError(f"The sweep runs gradient attacks (fgsm, pgdK), got {list(attack_names)}.")
    curves = {(m, s.name): [] for m in models for s in specs}
    tried: List[float] = []

    def run(eps: float) -> float:
        worst = 0.0
        params = eval_lib.AttackParams(
            eps=eps,
            pgd_step_size=step_fraction * eps if eps > 0 else None,
            pgd_restarts=restarts,
            seed=seed,
            jit_compile=jit_compile,
        )
        for name, model_fn in models.items():
            if verbose:
                print(f"eps sweep: {name} at eps {eps:.4g}")
            out = eval_lib.evaluate(model_fn, dataset, specs, params, strategy=strategy, verbose=verbose)
            acc = out.accuracies()
            for s in specs:
                curves[(name, s.name)].append(acc[s.name])
            worst = max(worst, acc[eval_lib.WORST_CASE])
        tried.append(eps)
        return worst

    worst = 1.0
    for eps in grid:
        worst = run(eps)
    eps = grid[-1]
    while worst > 0 and eps < max_eps:
        eps = _next_eps(eps, max_eps)
        worst = run(eps)
    return {
        "eps": tried,
        "extended_from": grid[-1],
        "curves": [{"model": m, "attack": a, "eps": tried, "accuracy": v} for (m, a), v in curves.items()],
        "parameters": {
            "step_fraction": step_fraction,
            "restarts": restarts,
            "seed": seed,
            "max_eps": max_eps,
        },
    }


def write_eps_sweep(sweep: Mapping[str, Any], output_dir: str, title: str = "") -> Dict[str, str]:
    """Writes eps_sweep.png, eps_sweep.json and eps_sweep.csv.

    Returns:
      kind (png, json, csv) -> path.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = dict(zip(("png", "json", "csv"), (os.path.join(output_dir, f) for f in EPS_SWEEP_FILES)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in sweep["curves"]:
        ax.plot(c["eps"], c["accuracy"], marker="o", label=f"{c['model']} {c['attack']}")
    ax.axvline(sweep["extended_from"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("eps (L-inf, [0, 1] pixel units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "Accuracy against eps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    with open(paths["json"], "w") as f:
        json.dump(sweep, f, indent=2)
        f.write("\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "attack", "eps", "accuracy"])
        for c in sweep["curves"]:
            for e, a in zip(c["eps"], c["accuracy"]):
                writer.writerow([c["model"], c["attack"], e, a])
    return paths


def _xent_gradient(model_fn: export.ModelFn, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    _, grad = attacks.loss_gradient(model_fn, images, labels, "xent")
    return grad


def loss_surface(
    model_fn: export.ModelFn,
    images: np.ndarray,
    labels: np.ndarray,
    radius: float,
    num_points: int = 21,
    seed: int = 0,
) -> Dict[str, Any]:
    """Cross-entropy around each image along two directions (Fig. 3).

    ``d1 = sign(d xent / dx)`` (the FGSM direction; the margin loss's
    gradient for examples whose cross-entropy gradient underflows to 0) and ``d2`` a random sign
    vector made orthogonal to ``d1`` (Gram-Schmidt) and rescaled to the same
    L2 norm. The loss is evaluated at ``clip(x + a d1 + b d2, 0, 1)`` for
    ``a, b`` on a ``num_points`` x ``num_points`` grid over
    ``[-radius, radius]``.

    Args:
      model_fn: images -> logits.
      images: float32 [E, H, W, C] in [0, 1].
      labels: int [E].
      radius: half-width of the grid along each direction.
      num_points: grid points per direction.
      seed: seed of the random direction.

    Returns:
      ``{"alphas": [n] (adversarial direction), "betas": [n] (random
      direction), "xent": [E, n, n] array indexed [example, alpha, beta],
      "labels": [E], "margin_direction": [E] bools}``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    labels = tf.convert_to_tensor(labels, tf.int64)
    grad = _xent_gradient(model_fn, images, labels)
    # A saturated softmax makes the cross-entropy gradient exactly 0 in
    # float32; the margin loss's gradient still gives the attack direction.
    _, margin_grad = attacks.loss_gradient(model_fn, images, labels, "margin")
    axes = list(range(1, len(images.shape)))
    vanished = tf.reduce_all(tf.equal(grad, 0.0), axis=axes, keepdims=True)
    d1 = tf.sign(tf.where(vanished, margin_grad, grad))
    rng = np.random.default_rng(seed)
    r = tf.constant(rng.choice([-1.0, 1.0], size=images.shape).astype(np.float32))
    denom = tf.maximum(tf.reduce_sum(d1 * d1, axis=axes, keepdims=True), 1e-12)
    d2 = r - tf.reduce_sum(r * d1, axis=axes, keepdims=True) / denom * d1
    d2 = d2 * tf.sqrt(denom / tf.maximum(tf.reduce_sum(d2 * d2, axis=axes, keepdims=True), 1e-12))
    grid = np.linspace(-radius, radius, num_points).astype(np.float32)

    @tf.function(reduce_retracing=True)
    def row(a: tf.Tensor) -> tf.Tensor:
        # All betas at once for one alpha: [n, E, ...] flattened to a batch.
        b = tf.constant(grid)[:, None, None, None, None]
        x = tf.clip_by_value(images[None] + a * d1[None] + b * d2[None], 0.0, 1.0)
        flat = tf.reshape(x, [-1, *images.shape[1:]])
        tiled = tf.tile(labels, [num_points])
        return tf.reshape(losses.cross_entropy(tiled, model_fn(flat)), [num_points, -1])

    values = np.stack([row(tf.constant(a)).numpy() for a in grid], axis=0)  # [alpha, beta, E]
    return {
        "alphas": grid.tolist(),
        "betas": grid.tolist(),
        "xent": np.transpose(values, (2, 0, 1)),
        "labels": np.asarray(labels).tolist(),
        "margin_direction": np.asarray(vanished).reshape(-1).tolist(),
    }


def write_loss_surface(surface: Mapping[str, Any], output_dir: str) -> Dict[str, str]:
    """Writes loss_surface.png (3-D surface per example), .npy and .json."""
    os.makedirs(output_dir, exist_ok=True)
    paths = dict(zip(("png", "npy", "json"), (os.path.join(output_dir, f) for f in LOSS_SURFACE_FILES)))
    values = np.asarray(surface["xent"])
    num = values.shape[0]
    a, b = np.meshgrid(surface["alphas"], surface["betas"], indexing="ij")
    fig = plt.figure(figsize=(4 * num, 4))
    for i in range(num):
        ax = fig.add_subplot(1, num, i + 1, projection="3d")
        ax.plot_surface(a, b, values[i], cmap="viridis")
        ax.set_xlabel("adversarial")
        ax.set_ylabel("random")
        ax.set_zlabel("xent")
        ax.set_title(f"example {i} (label {surface['labels'][i]})", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    np.save(paths["npy"], values)
    with open(paths["json"], "w") as f:
        json.dump({**{k: v for k, v in surface.items() if k != "xent"}, "xent": values.tolist()}, f)
        f.write("\n")
    return paths


def first_of_each_class(labels: np.ndarray, num_classes: int) -> List[int]:
    """Index of the first example of each class present, by class."""
    out = []
    for c in range(num_classes):
        hits = np.flatnonzero(labels == c)
        if hits.size:
            out.append(int(hits[0]))
    return out


def _to_unit_range(x: np.ndarray) -> np.ndarray:
    """Per image, maps values linearly to [0, 1] (for display)."""
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return (x - lo) / np.maximum(hi - lo, 1e-12)


def jacobian_figure(
    model_fn: export.ModelFn,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    output_dir: str,
    max_classes: int = 10,
    jacobians: Optional[np.ndarray] = None,
    stats: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Input Jacobians ``d xent / dx`` next to their images, one per class.

    Writes jacobians.png (images on top, Jacobians rescaled to [0, 1] per
    image below), jacobians.npy (the raw Jacobians) and TensorBoard images
    ``jacobians/images`` and ``jacobians/jacobians`` under
    ``output_dir/tensorboard``; with ``stats``, also jacobian_stats.json and
    the mean cosine and alignment in the figure's title.

    Args:
      model_fn: images -> logits.
      images: float32 [N, H, W, C] in [0, 1] to pick from.
      labels: int [N].
      num_classes: number of classes.
      output_dir: where to write.
      max_classes: at most this many classes (columns).
      jacobians: the Jacobians of ``images``, already computed (as
        ``jacobian_stats`` keeps them, with the batches' statistics when batch
        norm runs in training mode); None computes those of the chosen images.
      stats: ``jacobian_stats``'s summary, written to jacobian_stats.json.

    Returns:
      ``{"png", "npy", "tensorboard": paths, "indices": chosen examples,
      "labels": their labels}``, and ``"stats_json"`` with ``stats``.
    """
    os.makedirs(output_dir, exist_ok=True)
    idx = first_of_each_class(np.asarray(labels), num_classes)[:max_classes]
    if not idx:
        raise ValueError("No examples to draw Jacobians of.")
    x = tf.constant(np.asarray(images)[idx], tf.float32)
    y = tf.constant(np.asarray(labels)[idx], tf.int64)
    if jacobians is None:
        jac = _xent_gradient(model_fn, x, y).numpy()
    else:
        jac = np.asarray(jacobians, np.float32)[idx]
    shown = _to_unit_range(jac)
    imgs = np.asarray(x)
    cmap = "gray" if imgs.shape[-1] == 1 else None

    def show(a):
        return a[..., 0] if a.shape[-1] == 1 else a

    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.4), squeeze=False)
    for j in range(len(idx)):
        axes[0, j].imshow(show(imgs[j]), cmap=cmap, vmin=0, vmax=1)
        axes[0, j].set_title(f"class {int(y[j])}", fontsize=8)
        axes[1, j].imshow(show(shown[j]), cmap=cmap, vmin=0, vmax=1)
        for ax in axes[:, j]:
            ax.axis("off")
    axes[0, 0].text(-0.3, 0.5, "image", transform=axes[0, 0].transAxes, rotation=90, va="center", fontsize=8)
    axes[1, 0].text(
        -0.3, 0.5, "Jacobian", transform=axes[1, 0].transAxes, rotation=90, va="center", fontsize=8
    )
    if stats:
        fig.suptitle(_stats_title(stats), fontsize=7)
    fig.tight_layout()
    png = os.path.join(output_dir, JACOBIAN_FILES[0])
    fig.savefig(png, dpi=120)
    plt.close(fig)
    npy = os.path.join(output_dir, JACOBIAN_FILES[1])
    np.save(npy, jac)
    tb_dir = os.path.join(output_dir, TENSORBOARD_DIR)
    writer = tf.summary.create_file_writer(tb_dir)
    with writer.as_default():
        tf.summary.image("jacobians/images", imgs, step=0, max_outputs=len(idx))
        tf.summary.image("jacobians/jacobians", shown, step=0, max_outputs=len(idx))
    writer.close()
    out = {"png": png, "npy": npy, "tensorboard": tb_dir, "indices": idx, "labels": [int(v) for v in y]}
    if stats:
        out["stats_json"] = os.path.join(output_dir, JACOBIAN_STATS_FILE)
        with open(out["stats_json"], "w") as f:
            json.dump(dict(stats), f, indent=2)
            f.write("\n")
    return out


def _summary(values: np.ndarray) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation and standard error of the mean (None for no values)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "stderr": None}
    std = float(np.std(values, ddof=1)) if n > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "stderr": std / float(np.sqrt(n))}


def jacobian_stats(
    model_fn: export.ModelFn, dataset: tf.data.Dataset, keep: int = 0, per_example_scale: bool = True
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """How much the input Jacobians ``J = d xent / dx`` look like the images.

    For every example of ``dataset``, batch by batch (the batches matter only
    to a model whose batch norm runs in training mode, where J carries the
    batch's statistics):
      - ``jacobian_cosine``: |cos| between the per-example standardised J and
        image (``losses.jacobian_image_cosine``), what JARN's discriminator
        compares; in [0, 1].
      - ``jacobian_alignment``: |<x, J>| / ||J||_2 (``losses.jacobian_alignment``,
        Etmann et al. 2019), in [0, 1] pixel units, at most ||x||_2;
      - ``image_l2_norm``: ||x||_2, the alignment's scale;
      - ``saliency_cosine``: the cosine between the standardised |J| and
        image (``losses.saliency_image_cosine``), in [-1, 1].
    A classifier that standardises each image first (both of this package's,
    unless trained with --nostandardize_input) is invariant to x -> a x + b,
    so its J is orthogonal to x and to the constant image: the first two are
    then 0 up to rounding whatever it learnt, and only ``saliency_cosine``
    can tell models apart.
    Every measure ignores J's scale, and a confidently classified example's
    float32 cross-entropy gradient is often exactly 0 (softmax - onehot
    underflows once the logit gap passes about 100). So J is backpropagated
    from d xent / d logits computed in float64 (the true class's entry as
    minus the sum of the others') and divided by its largest entry: per
    example, or, with ``per_example_scale=False`` (batch norm in training
    mode, where examples interact), by one factor per batch, which keeps
    each J exact up to that factor; each J is then divided by its own
    largest entry before it is measured. An example whose J is still
    exactly 0 has no direction to compare; it is left out of the means and
    counted as ``zero_jacobian_examples``.

    Args:
      model_fn: images -> logits.
      dataset: finite dataset of (images [B, H, W, C] in [0, 1], labels [B]).
      keep: also return the first ``keep`` examples and their Jacobians
        (d xent / dx at their own scale, as float32, so 0 where it
        underflows).
      per_example_scale: rescale each example's d xent / d logits on its own
        (exact when examples do not interact); False: one factor per batch.

    Returns:
      (summary, kept): summary maps each quantity above to its ``mean``,
      ``std`` (sample) and ``stderr`` over the examples with a non-zero J
      (None when there are none), plus ``num_examples`` (all of them),
      ``zero_jacobian_examples`` and ``jacobian``; kept holds ``images``,
      ``labels``, ``jacobians`` (the first ``keep``) and the per-example
      ``cosine``, ``alignment``, ``image_l2_norm``, ``saliency_cosine`` (of
      every example) and ``nonzero`` (whether J is not 0).

    Raises:
      ValueError: an empty dataset.
    """

    @tf.function(reduce_retracing=True)
    def batch(images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.cast(model_fn(images), tf.float32)
        # d xent / d logits = softmax - onehot, in float64; the true class's entry is minus the sum of
        # the others' (1 - p_y loses them to rounding when the softmax is saturated).
        others = tf.nn.softmax(tf.cast(logits, tf.float64)) * (
            1.0 - tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float64)
        )
        dlogits = others - tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float64) * tf.reduce_sum(
            others, axis=1, keepdims=True
        )
        scale = tf.reduce_max(tf.abs(dlogits), axis=1, keepdims=True)
        if not per_example_scale:
            scale = tf.reduce_max(scale, keepdims=True) * tf.ones_like(scale)
        scale = tf.where(scale > 0.0, scale, tf.ones_like(scale))
        jac = tape.gradient(logits, images, output_gradients=tf.cast(dlogits / scale, tf.float32))
        raw = tf.cast(tf.cast(jac, tf.float64) * scale[:, :, None, None], tf.float32)
        # Each J divided by its largest entry: the measures ignore the scale, and standardising a tiny J
        # (a gradient far below the batch's largest) would lose it to the standardisation's epsilon.
        peak = tf.reduce_max(tf.abs(jac), axis=[1, 2, 3], keepdims=True)
        jac = jac / tf.where(peak > 0.0, peak, tf.ones_like(peak))
        norm = tf.sqrt(tf.reduce_sum(tf.square(images), axis=[1, 2, 3]))
        nonzero = tf.reshape(peak > 0.0, [-1])
        cos, align = losses.jacobian_image_cosine(jac, images), losses.jacobian_alignment(jac, images)
        return raw, cos, align, norm, losses.saliency_image_cosine(jac, images), nonzero

    names = ("cosine", "alignment", "image_l2_norm", "saliency_cosine", "nonzero")
    values: Dict[str, List[np.ndarray]] = {k: [] for k in names}
    kept: Dict[str, List[np.ndarray]] = {"images": [], "labels": [], "jacobians": []}
    have = 0
    for images, labels in dataset:
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.int64)
        jac, *per_example = batch(images, labels)
        for k, v in zip(values, per_example):
            values[k].append(v.numpy())
        if have < keep:
            take = keep - have
            kept["images"].append(images.numpy()[:take])
            kept["labels"].append(labels.numpy()[:take])
            kept["jacobians"].append(jac.numpy()[:take])
            have += len(kept["labels"][-1])
    if not values["cosine"]:
        raise ValueError("No examples to compute Jacobians of.")
    per_example = {k: np.concatenate(v) for k, v in values.items()}
    nonzero = per_example["nonzero"]
    summary = {
        "jacobian": "d xent / dx (true class)",
        "num_examples": int(len(nonzero)),
        "zero_jacobian_examples": int(np.sum(~nonzero)),
        "jacobian_cosine": _summary(per_example["cosine"][nonzero]),
        "jacobian_alignment": _summary(per_example["alignment"][nonzero]),
        "image_l2_norm": _summary(per_example["image_l2_norm"][nonzero]),
        "saliency_cosine": _summary(per_example["saliency_cosine"][nonzero]),
    }
    out = {k: (np.concatenate(v) if v else np.zeros([0])) for k, v in kept.items()}
    out.update(per_example)
    return summary, out


def _stats_title(stats: Mapping[str, Any]) -> str:
    cos, align, norm = stats["jacobian_cosine"], stats["jacobian_alignment"], stats["image_l2_norm"]
    if cos["mean"] is None:
        return f"every one of the {stats['num_examples']} Jacobians is 0 (saturated softmax)"
    return (
        f"mean over {stats['num_examples'] - stats['zero_jacobian_examples']} examples: "
        f"|cos(J, x)| = {cos['mean']:.3f}, "
        f"|<x, J>| / ||J|| = {align['mean']:.3f} (||x|| = {norm['mean']:.2f}), "
        f"cos(|J|, x) = {stats['saliency_cosine']['mean']:.3f}"
    )


def take_examples(dataset: tf.data.Dataset, num: int) -> Tuple[np.ndarray, np.ndarray]:
    """The first ``num`` examples of a batched dataset as numpy arrays."""
    images, labels, have = [], [], 0
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
        have += len(y)
        if have >= num:
            break
    return np.concatenate(images)[:num], np.concatenate(labels)[:num]
