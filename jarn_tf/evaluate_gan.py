r"""Measures the image quality of a GAN's generator, naming the network that measures it.

  python -m jarn_tf.evaluate_gan --model=runs/wgan_rfm --metrics=fcd,classifier_score \
      --feature_network=runs/fashion_mnist_standard --num_samples=10000

Draws --num_samples images from the generator (latents from --seed) and
compares them with the real images of --reference_split through a feature
network:

* --feature_network: a classifier of this project trained on the same
  dataset (run dir, export dir or .keras file). Its metrics are the FCD
  (Fréchet classifier distance, on the input of its last Dense layer, or
  its logits with --feature_layer=logits) and the classifier score
  (exp E KL(p(y|x) || p(y)) of its softmax). They are not FID and IS, and
  not comparable with published FID/IS values.
* --inception_graph: the 2015 TensorFlow Inception graph as a GraphDef
  (inception-2015-12-05/classify_image_graph_def.pb; checked: pool_3 of
  2048 features, 1008 logits). Only its metrics are called FID and IS.

With --reference_floor (default), it also measures --num_samples real
training images against the reference split: the distance a perfect
generator would get at this sample count (Fréchet distances of finite
samples are biased upwards), and the score of real images. Writes
results.json and results.md (every value, the network's path and SHA-256,
its feature layer, the sample counts, the reference split, the generator's
step, the seed, library versions) and samples.png to --output_dir. Bad
inputs (unknown metric, a metric without its network, a network of another
dataset or image shape, too few samples for the covariance, no data) fail
before any image is generated.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
from absl import app, flags

from jarn_tf import config
from jarn_tf.core import flag_utils

FLAGS = flags.FLAGS

METRICS = ("fcd", "classifier_score", "fid", "is")
_DISTANCES = {"fcd": "classifier", "fid": "inception"}
_SCORES = {"classifier_score": "classifier", "is": "inception"}
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SAMPLES_PNG = "samples.png"
_GRID = 8


def define_evaluate_gan_flags() -> None:
    """Defines every flag of ``jarn_tf.evaluate_gan`` (all optional but --model)."""
    flags.DEFINE_string(
        "model",
        None,
        "The generator: a GAN run's model_dir (uses export/generator.keras, else export/saved_model), "
        "its export directory, generator.keras or the saved_model directory. Required.",
    )
    flags.DEFINE_list(
        "metrics",
        None,
        "Comma-separated metrics: fcd, classifier_score (need --feature_network), fid, is (need "
        "--inception_graph). Default: those of the networks given.",
    )
    flags.DEFINE_string(
        "feature_network",
        None,
        "Classifier of this project trained on the generator's dataset (run dir, export dir or .keras file) "
        "for fcd and classifier_score.",
    )
    flags.DEFINE_enum(
        "feature_layer",
        "penultimate",
        ["penultimate", "logits"],
        "Features of --feature_network for the FCD: the input of its last Dense layer, or its logits "
        "(fewer features, so fewer samples needed).",
    )
    flags.DEFINE_string(
        "inception_graph",
        None,
        "GraphDef .pb of the 2015 TensorFlow Inception graph (inception-2015-12-05/"
        "classify_image_graph_def.pb) for fid and is. Nothing is downloaded.",
    )
    flags.DEFINE_integer("num_samples", 10000, "Generated images to measure.", lower_bound=1)
    flags.DEFINE_enum("reference_split", "test", ["test", "train"], "Split of the real images compared with.")
    flags.DEFINE_integer(
        "num_reference",
        None,
        "Real images of the reference split to use (the first ones). Default: all.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "dataset", None, config.DATASETS, "Dataset, when the generator's metadata.json does not name it."
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory, or a directory with MNIST-format IDX files. Default: TFDS's."
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of the latent vectors (and of the floor's choice of training images)."
    )
    flags.DEFINE_integer("batch_size", 100, "Images per forward pass.", lower_bound=1)
    flags.DEFINE_integer(
        "score_splits",
        config.CLASSIFIER_SCORE_SPLITS,
        "Splits of the samples for the classifier score / IS (mean and std); the training-time "
        "eval/classifier_score uses the same default.",
        lower_bound=1,
    )
    flags.DEFINE_bool(
        "reference_floor",
        True,
        "Also measure --num_samples real training images (test images with --reference_split=train) against "
        "the reference: the distance of a perfect generator at this sample count.",
    )
    flags.DEFINE_bool("samples_png", True, f"Write a grid of {_GRID * _GRID} samples to {SAMPLES_PNG}.")
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where results go. Default: <model_dir>/eval_gan (<model_dir>/disc_robustness with "
        "--discriminator_robustness).",
    )
    flags.DEFINE_bool(
        "discriminator_robustness",
        False,
        "Instead of image quality, measure the exported discriminator's robustness (Definition 3.2 of Zhou & "
        "Kraehenbuehl): the largest |D(x) - D(x + u)|, ||u||_2 <= delta, that --attacks find on --num_samples "
        "generated and as many real --reference_split images (jarn_tf.gan.disc_robustness).",
    )
    flags.DEFINE_list(
        "attacks", ["fgm", "pgd"], "With --discriminator_robustness: fgm (the paper's fast normalised gradient, "
        "both signs) and/or pgd (L2 PGD of --attack_steps steps)."
    )
    flags.DEFINE_list(
        "deltas",
        ["0.05"],
        "With --discriminator_robustness: L2 radii in [0, 1] image units (the paper trains AR/RFM at 0.05).",
    )
    flags.DEFINE_integer("attack_steps", 10, "PGD steps of --discriminator_robustness.", lower_bound=1)
    flags.DEFINE_integer("verbose", 1, "1: progress lines; 0: quiet.", lower_bound=0)
    flags.mark_flag_as_required("model")


def parse_metrics(
    metrics: Optional[List[str]], feature_network: Optional[str], inception_graph: Optional[str]
) -> List[str]:
    """The metrics to compute, checked against the networks given.

    Raises:
      ValueError: unknown metric, a metric whose network is missing, or no
        network at all; the message names the flags.
    """
    if not metrics:
        metrics = (["fcd", "classifier_score"] if feature_network else []) + (
            ["fid", "is"] if inception_graph else []
        )
        if not metrics:
            raise ValueError(
                "No feature network: pass --feature_network (a classifier of this project trained on the same "
                "dataset: FCD, classifier score) and/or --inception_graph (the 2015 Inception GraphDef .pb: "
                "FID, IS)."
            )
    out = []
    for m in metrics:
        name = m.strip().lower()
        if name not in METRICS:
            raise ValueError(f"Unknown metric {m!r}; valid metrics: {', '.join(METRICS)}.")
        if name not in out:
            out.append(name)
    needs_inception = [m for m in out if m in ("fid", "is")]
    if needs_inception and not inception_graph:
        raise ValueError(
            f"--metrics={','.join(needs_inception)} needs --inception_graph=PATH, the 2015 TensorFlow Inception "
            "graph (inception-2015-12-05/classify_image_graph_def.pb); no other network gives FID or IS, and "
            "nothing is downloaded. Without it, measure fcd and classifier_score with --feature_network (a "
            "classifier trained on the same dataset)."
        )
    needs_classifier = [m for m in out if m in ("fcd", "classifier_score")]
    if needs_classifier and not feature_network:
        raise ValueError(
            f"--metrics={','.join(needs_classifier)} needs --feature_network=PATH, a classifier of this project "
            "trained on the generator's dataset (run dir, export dir or .keras file)."
        )
    return out


def _default_output_dir(generator) -> str:
    if generator.model_dir:
        return os.path.join(generator.model_dir, "eval_gan")
    parent = os.path.dirname(generator.path)
    if os.path.basename(parent) in ("export", "export.old"):
        parent = os.path.dirname(parent)
    return os.path.join(parent, "eval_gan")


def _sample_grid(images, grid: int = _GRID):
    import numpy as np

    n = min(len(images), grid * grid)
    h, w, c = images.shape[1:]
    canvas = np.zeros((grid * h, grid * w, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, grid)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = np.round(np.clip(images[i], 0, 1) * 255)
    return canvas


def write_samples_png(images, path: str) -> str:
    """Writes the first 64 images as an 8x8 grid PNG."""
    import tensorflow as tf

    tf.io.write_file(path, tf.io.encode_png(_sample_grid(images)))
    return path


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def format_markdown(results: Dict[str, Any]) -> str:
    """The content of results.md."""
    gen = results["generator"]
    ref = results["reference"]
    lines = [
        f"# Image quality of {gen['path']}",
        "",
        f"{results['num_samples']} generated images (latent seed {results['seed']}, generator step "
        f"{gen.get('step')}), against {ref['num_images']} real {ref['dataset']} {ref['split']} images "
        f"({ref['selection']} of {ref['split_size']}; source {ref['source']}).",
        "",
        "| metric | value | std over splits | real-data floor | network | feature layer (dim) | samples | "
        "reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, m in results["metrics"].items():
        floor = m.get("floor") or {}
        lines.append(
            f"| {m['name']} | {_fmt(m['value'])} | {_fmt(m.get('std'))} | {_fmt(floor.get('value'))} | "
            f"{m['network']} | {m['feature_layer']} ({m['feature_dim']}) | {m['num_samples']} | "
            f"{m['reference_split']} ({m['reference_size']}) |"
        )
    lines += ["", "## Networks", ""]
    for key, net in results["networks"].items():
        lines.append(
            f"- **{net['distance_name']} / {net['score_name']}**: `{net['path']}` (sha256 `{net['sha256']}`), "
            f"{net['kind']}, features: {net['feature_layer']}, {net['feature_dim']} dims, {net['num_classes']} "
            f"classes; trained on {net['dataset'] or 'n/a'}; input: {net['preprocessing']}."
        )
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        f"Wall time {results['wall_seconds']:.1f} s. Libraries: "
        + ", ".join(f"{k} {v}" for k, v in results["library_versions"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    from jarn_tf.core import data
    from jarn_tf.gan import metrics as gm

    if FLAGS.discriminator_robustness:
        return discriminator_robustness_main()
    start = time.time()
    verbose = FLAGS.verbose

    def say(text: str) -> None:
        if verbose:
            print(text, flush=True)

    # Everything that can be wrong with the inputs is checked here, before any image is generated.
    try:
        metrics = parse_metrics(FLAGS.metrics, FLAGS.feature_network, FLAGS.inception_graph)
        for flag in ("model", "feature_network", "inception_graph"):
            value = FLAGS[flag].value
            if value and not os.path.exists(value):
                raise ValueError(f"--{flag}={value}: no such file or directory.")
        if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
            raise ValueError(f"--data_dir={FLAGS.data_dir}: no such directory.")
        generator = gm.load_generator(FLAGS.model)
        dataset = generator.dataset
        if FLAGS.dataset and dataset and FLAGS.dataset != dataset:
            raise ValueError(
                f"--dataset={FLAGS.dataset} but the generator {generator.path} was trained on {dataset} "
                "(metadata.json)."
            )
        dataset = dataset or FLAGS.dataset
        if dataset is None:
            raise ValueError(f"{generator.path} has no metadata.json naming its dataset; pass --dataset.")
        info = data.dataset_info(dataset)
        data_dir, data_dir_origin = FLAGS.data_dir, "--data_dir" if FLAGS.data_dir else "default"
        run_data_dir = ((generator.metadata.get("config") or {}).get("data") or {}).get("data_dir")
        if data_dir is None and run_data_dir and os.path.isdir(run_data_dir):
            data_dir, data_dir_origin = run_data_dir, "the generator's training config"
        if tuple(generator.image_shape) != tuple(info.image_shape):
            raise ValueError(
                f"The generator {generator.path} makes images of shape {list(generator.image_shape)} but "
                f"{dataset} images are {list(info.image_shape)}."
            )
        networks: Dict[str, Any] = {}
        if any(_DISTANCES.get(m) == "classifier" or _SCORES.get(m) == "classifier" for m in metrics):
            net = gm.load_classifier_network(FLAGS.feature_network, FLAGS.feature_layer)
            if net.dataset is None:
                raise ValueError(
                    f"--feature_network={FLAGS.feature_network}: {net.path} has no metadata.json naming the "
                    f"dataset it was trained on; pass a classifier export of this project trained on {dataset}."
                )
            if net.dataset != dataset:
                raise ValueError(
                    f"--feature_network={FLAGS.feature_network} was trained on {net.dataset} but the generator "
                    f"on {dataset}: its features say nothing about {dataset} images. Pass a classifier trained "
                    f"on {dataset}."
                )
            net.check_image_shape(generator.image_shape, "the generated images")
            networks["classifier"] = net
        if any(_DISTANCES.get(m) == "inception" or _SCORES.get(m) == "inception" for m in metrics):
            net = gm.load_inception_network(FLAGS.inception_graph)
            net.check_image_shape(generator.image_shape, "the generated images")
            networks["inception"] = net
        distance_networks = {_DISTANCES[m] for m in metrics if m in _DISTANCES}
        for key in distance_networks:
            dim = networks[key].feature_dim
            if FLAGS.num_samples <= dim:
                raise ValueError(
                    f"--num_samples={FLAGS.num_samples}: the {networks[key].distance_name} fits a full "
                    f"covariance of {dim} features ({networks[key].feature_layer}), which needs more samples "
                    f"than features: at least {dim + 1}, better many more."
                    + (" Or pass --feature_layer=logits." if key == "classifier" else "")
                )
        if any(m in _SCORES for m in metrics) and FLAGS.score_splits > FLAGS.num_samples:
            raise ValueError(
                f"--score_splits={FLAGS.score_splits} exceeds --num_samples={FLAGS.num_samples}."
            )
        # The real images (read before any generation, so missing data fails here).
        reference_images, reference_info = gm.load_real_images(
            dataset, FLAGS.reference_split, data_dir, FLAGS.num_reference
        )
        floor_split = "train" if FLAGS.reference_split == "test" else "test"
        floor_images, floor_info = None, None
        if FLAGS.reference_floor:
            floor_images, floor_info = gm.load_real_images(
                dataset, floor_split, data_dir, FLAGS.num_samples, shuffle_seed=FLAGS.seed
            )
        for key in distance_networks:
            dim = networks[key].feature_dim
            for what, count in (
                (f"the reference split ({FLAGS.reference_split})", len(reference_images)),
                (
                    f"the floor's real {floor_split} images",
                    len(floor_images) if floor_images is not None else None,
                ),
            ):
                if count is not None and count <= dim:
                    raise ValueError(
                        f"{what}: {count} images of {dataset}, but the {networks[key].distance_name}'s covariance of "
                        f"{dim} features needs at least {dim + 1}."
                        + (" Pass --noreference_floor to skip the floor." if "floor" in what else "")
                    )
        output_dir = os.path.abspath(FLAGS.output_dir or _default_output_dir(generator))
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise ValueError(f"--output_dir={output_dir} is a file; pass a directory for the results.")
    except (ValueError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    notes: List[str] = []
    if generator.fallback_reason:
        notes.append(f"Read the SavedModel because the .keras generator failed: {generator.fallback_reason}")
    if "classifier" in networks:
        notes.append(
            "FCD and classifier score are computed with a classifier of this project, not the 2015 Inception "
            "graph: they are not comparable with published Inception-based values, only with values of the "
            "same classifier file (sha256), feature layer, sample count and reference."
        )
    if floor_info is not None and floor_info["num_images"] < FLAGS.num_samples:
        notes.append(
            f"The floor uses {floor_info['num_images']} real {floor_split} images (all there are), fewer than the "
            f"{FLAGS.num_samples} generated: its bias is larger than at the generated sample count."
        )

    say(
        f"Generating {FLAGS.num_samples} images with {generator.path} ({generator.format}, step {generator.step}), "
        f"seed {FLAGS.seed}; metrics: {', '.join(metrics)}."
    )
    try:
        generated, pixel_range, clip_note = gm.clip_generated(
            generator.generate(FLAGS.num_samples, FLAGS.seed, FLAGS.batch_size), generator.path
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if clip_note:
        notes.append(clip_note)

    results_metrics: Dict[str, Any] = {}
    for key, net in networks.items():
        say(f"{net.distance_name} / {net.score_name} network: {net.path} ({net.feature_layer}).")
        distance_key = [m for m in metrics if _DISTANCES.get(m) == key]
        score_key = [m for m in metrics if _SCORES.get(m) == key]
        entries = gm.measure_images(
            net,
            generated,
            reference_images,
            floor_images,
            distance=bool(distance_key),
            score=bool(score_key),
            batch_size=FLAGS.batch_size,
            score_splits=FLAGS.score_splits,
            reference_info={
                "reference_split": reference_info["split"],
                "reference_size": reference_info["num_images"],
            },
            floor_info=None if floor_info is None else {"split": floor_split, "selection": floor_info["selection"]},
        )
        if distance_key:
            results_metrics[distance_key[0]] = entries["distance"]
        if score_key:
            results_metrics[score_key[0]] = entries["score"]
        for m in distance_key + score_key:
            e = results_metrics[m]
            floor = e.get("floor")
            say(
                f"  {e['name']}: {e['value']:.6g}"
                + (f" (std {e['std']:.3g} over {e['splits']} splits)" if "std" in e else "")
                + (
                    f"; real-data floor {floor['value']:.6g} ({floor['num_real']} {floor['split']} images)"
                    if floor
                    else ""
                )
            )

    from jarn_tf.robustness import reports as results_lib

    paths = {}
    os.makedirs(output_dir, exist_ok=True)
    if FLAGS.samples_png:
        paths["samples_png"] = write_samples_png(generated, os.path.join(output_dir, SAMPLES_PNG))
    results = {
        "kind": "gan_image_quality",
        "metrics": results_metrics,
        "generator": {
            "path": generator.path,
            "format": generator.format,
            "sha256": generator.sha256,
            "model_dir": generator.model_dir,
            "step": generator.step,
            "dataset": dataset,
            "mode": generator.metadata.get("mode"),
            "latent_dim": generator.latent_dim,
            "latent_distribution": generator.latent_distribution,
            "image_shape": list(generator.image_shape),
            "pixel_range": pixel_range,
        },
        "networks": {key: net.describe() for key, net in networks.items()},
        "reference": {**reference_info, "data_dir": data_dir, "data_dir_from": data_dir_origin},
        "reference_floor": floor_info,
        "num_samples": len(generated),
        "seed": FLAGS.seed,
        "batch_size": FLAGS.batch_size,
        "notes": notes,
        "command": list(sys.argv),
        "wall_seconds": time.time() - start,
        "library_versions": results_lib.library_versions(),
    }
    paths["json"] = os.path.join(output_dir, RESULTS_JSON)
    paths["md"] = os.path.join(output_dir, RESULTS_MD)
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(format_markdown(results))
    say(f"Results: {', '.join(paths.values())}")
    return 0


def _discriminator_file(generator) -> str:
    from jarn_tf.core import export

    directory = generator.path
    if directory.endswith(".keras") or os.path.isfile(os.path.join(directory, "saved_model.pb")):
        directory = os.path.dirname(directory)
    path = os.path.join(directory, export.DISCRIMINATOR_KERAS_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{directory} holds no {export.DISCRIMINATOR_KERAS_FILE}: the export predates discriminator "
            "exports, or was not made by --mode=gan. Export it again (python -m jarn_tf.train with the run's "
            "flags and --model_dir resumes from its last checkpoint and re-exports) or retrain."
        )
    return path


def _parse_deltas(values: List[str]) -> List[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            raise ValueError(f"--deltas: {v!r} is not a number") from None
        if not out[-1] > 0:
            raise ValueError(f"--deltas: every radius must be > 0, got {v}")
    return out


def format_robustness_markdown(results: Dict[str, Any]) -> str:
    """One table row per (image set, attack, delta) of a --discriminator_robustness result."""
    d = results["discriminator"]
    lines = [
        f"Discriminator robustness of {d['path']} (step {d.get('step')}, loss {d.get('gan_loss')}, "
        f"regulariser {d.get('disc_reg')}); seed {results['seed']}, {results['num_samples']} generated and "
        f"{results['num_real']} real {results['real_split']} images. Separation |E D(gen) - E D(real)| = "
        f"{results['separation']:.4g}.",
        "",
        "| images | attack | delta | mean abs change | median | max | mean / separation | mean abs change of "
        "the loss term | mean grad norm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("generated", "real"):
        m = results[name]
        for key, a in m["attacks"].items():
            lines.append(
                f"| {name} | {a['attack']}{'-' + str(a['steps']) if a['attack'] == 'pgd' else ''} | {a['delta']:g} "
                f"| {a['mean_abs_change']:.4g} | {a['median_abs_change']:.4g} | {a['max_abs_change']:.4g} | "
                f"{a['relative_to_separation']:.4g} | {a['mean_abs_loss_change']:.4g} | {m['grad_norm_mean']:.4g} |"
            )
    return "\n".join(lines) + "\n"


def discriminator_robustness_main() -> int:
    """``--discriminator_robustness``: attacks the exported discriminator, writes results.json / .md."""
    from jarn_tf.core import data
    from jarn_tf.gan import disc_robustness
    from jarn_tf.gan import metrics as gm
    from jarn_tf.robustness import reports as results_lib

    start = time.time()
    try:
        attacks = [a.strip() for a in FLAGS.attacks]
        unknown = [a for a in attacks if a not in disc_robustness.ATTACKS]
        if unknown or not attacks:
            raise ValueError(f"--attacks: {unknown or attacks} not among {list(disc_robustness.ATTACKS)}")
        deltas = _parse_deltas(FLAGS.deltas)
        if not os.path.exists(FLAGS.model):
            raise ValueError(f"--model={FLAGS.model}: no such file or directory.")
        generator = gm.load_generator(FLAGS.model)
        disc_path = _discriminator_file(generator)
        dataset = generator.dataset or FLAGS.dataset
        if dataset is None:
            raise ValueError(f"{generator.path} has no metadata.json naming its dataset; pass --dataset.")
        run_config = generator.metadata.get("config") or {}
        data_dir = FLAGS.data_dir or (run_config.get("data") or {}).get("data_dir")
        if data_dir and not os.path.isdir(data_dir):
            data_dir = None
        real, real_info = gm.load_real_images(dataset, FLAGS.reference_split, data_dir, FLAGS.num_samples)
        output_dir = os.path.abspath(
            FLAGS.output_dir or os.path.join(generator.model_dir or os.path.dirname(disc_path), "disc_robustness")
        )
    except (ValueError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import keras
    import tensorflow as tf

    discriminator = keras.saving.load_model(disc_path, compile=False)
    section = run_config.get("gan") or {}
    loss = section.get("gan_loss", "gan")

    @tf.function(reduce_retracing=True)
    def score_fn(x):
        return tf.cast(tf.reshape(discriminator(x, training=False)[0], [-1]), tf.float32)

    generated = np.clip(generator.generate(FLAGS.num_samples, FLAGS.seed, FLAGS.batch_size), 0.0, 1.0)
    if FLAGS.verbose:
        print(
            f"Attacking {disc_path} ({', '.join(attacks)} at L2 radii {deltas}) on {len(generated)} generated and "
            f"{len(real)} real images.",
            flush=True,
        )
    measured = {
        name: disc_robustness.measure(
            score_fn, images, attacks, deltas, FLAGS.attack_steps, 250, loss, real=(name == "real")
        )
        for name, images in (("generated", generated), ("real", real))
    }
    separation = abs(measured["generated"]["score_mean"] - measured["real"]["score_mean"])
    for m in measured.values():
        for a in m["attacks"].values():
            a["relative_to_separation"] = a["mean_abs_change"] / separation if separation > 0 else float("inf")
    results = {
        "kind": "discriminator_robustness",
        "definition": "E |D(x) - D(x + u)| over images x, ||u||_2 <= delta (Zhou & Kraehenbuehl, Definition 3.2); "
        "u not clipped to [0, 1]",
        "discriminator": {
            "path": disc_path,
            "sha256": gm.sha256_of_file(disc_path),
            "step": generator.step,
            "gan_loss": loss,
            "disc_reg": section.get("disc_reg"),
            "reg_target": section.get("reg_target"),
        },
        "generator": {"path": generator.path, "model_dir": generator.model_dir},
        "dataset": dataset,
        "real_split": FLAGS.reference_split,
        "real_selection": real_info.get("selection"),
        "num_samples": len(generated),
        "num_real": len(real),
        "seed": FLAGS.seed,
        "separation": separation,
        "generated": measured["generated"],
        "real": measured["real"],
        "command": list(sys.argv),
        "wall_seconds": time.time() - start,
        "library_versions": results_lib.library_versions(),
    }
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RESULTS_JSON), "w") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    markdown = format_robustness_markdown(results)
    with open(os.path.join(output_dir, RESULTS_MD), "w") as f:
        f.write(markdown)
    if FLAGS.verbose:
        print(markdown + f"Results: {output_dir}", flush=True)
    return 0


def run() -> None:
    """Console-script entry point ``jarn-evaluate-gan``."""
    define_evaluate_gan_flags()
    flag_utils.help_for_console_script(__name__, __doc__)
    app.run(main)


if __name__ == "__main__":
    run()
