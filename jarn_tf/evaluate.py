r"""Evaluates a classifier's robustness to L-inf attacks.

  python -m jarn_tf.evaluate --model=runs/jarn_at1 --dataset=cifar10 \
      --attacks=clean,fgsm,pgd5,pgd10,pgd20 --eps=8/255 \
      --output_dir=runs/jarn_at1/eval

Prints a table of accuracies (per attack and the per-example worst case over
all of them), runs AutoAttack's checks of the model (logits, not probabilities;
deterministic outputs) and gradient-masking checks (Square among them), and
writes results.json, results.md and results.csv to --output_dir. --eps_sweep,
--loss_surface and --jacobian_figure add the analyses of ``jarn_tf.robustness.analysis``
(--jacobian_figure also measures how well the input Jacobians align with the
images). --batchnorm=train measures as the authors' release did, with the
model in Keras's training mode (batch norm with batch statistics). Bad inputs
(unknown attack, eps outside [0, 1], a model that does not take the
dataset's images, no data) fail before any attack runs.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time
from typing import List, Optional

from absl import app, flags, logging

from jarn_tf import config
from jarn_tf.core import flag_utils
from jarn_tf.core.flag_utils import define_fraction, parse_fraction

FLAGS = flags.FLAGS


def define_evaluate_flags() -> None:
    """Defines every flag of ``jarn_tf.evaluate`` (all optional but --model)."""
    flags.DEFINE_string(
        "model",
        None,
        "What to evaluate: a training run's model_dir (uses export/classifier.keras, else "
        "export/saved_model), an export directory, a SavedModel directory or a .keras file. Required.",
    )
    flags.DEFINE_enum(
        "dataset", None, config.DATASETS, "Dataset. Default: the one in the export's metadata.json."
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory, or a directory with MNIST-format IDX files. Default: TFDS's."
    )
    flags.DEFINE_bool("download", True, "Let TFDS download the data when it has no copy.")
    flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate on.")
    flags.DEFINE_integer(
        "num_examples",
        None,
        "Evaluate the first N examples of the split, in --example_order. Default: all.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "example_order",
        "auto",
        ["auto", "original", "stored"],
        "Order of the split, so which images --num_examples takes. original: the original release's "
        "(MNIST's IDX files, CIFAR-10's test_batch), the images RobustBench and PyTorch loaders take first; "
        "stored: the order of the copy read (TFDS shuffled its copy when preparing it); auto: original "
        "where the data allow it, else stored, saying why. Recorded in results.json.",
    )
    flags.DEFINE_integer(
        "batch_size", 100, "Examples per attack batch (global, over all replicas).", lower_bound=1
    )
    flags.DEFINE_integer("seed", 0, "Seed of the random starts.")
    flags.DEFINE_enum(
        "batchnorm",
        "inference",
        ["inference", "train"],
        "How every model is called. inference: Keras's training=False (batch norm with its moving "
        "averages). train: Keras's training=True in every forward pass (clean accuracy, the attacks' "
        "gradients, the predictions on adversarial batches, the checks and analyses), as the authors' "
        "release built its attack graph: batch norm normalises with the statistics of the batch being "
        "evaluated, so the numbers depend on --batch_size, and any other layer with a training mode "
        "(dropout) runs in it too. Nothing is updated or saved (moving averages stay as loaded). Needs "
        "the .keras model (a SavedModel's signature is inference-only). Changes nothing for a model "
        "without batch norm (mnist_cnn). Recorded in results.json.",
    )
    flags.DEFINE_string(
        "output_dir", None, "Where results go. Default: <model_dir>/eval (next to the model)."
    )
    flags.DEFINE_integer("verbose", 1, "1: progress bars; 0: quiet.", lower_bound=0)

    # Attacks.
    flags.DEFINE_list(
        "attacks",
        ["clean", "fgsm", "pgd20"],
        "Comma-separated attacks: clean, fgsm, pgdK (K steps, random start), pgdK_margin, pgdK_xent; "
        "autoattack, apgd-ce, apgd-t, fab-t, square when jarn_tf.robustness.autoattack exists.",
    )
    define_fraction(
        "eps",
        None,
        "L-inf radius in [0, 1] pixel units, e.g. 8/255. Default: the eps the model was trained with "
        "(metadata), else the paper's for the dataset (0.3 MNIST, 0.1 Fashion-MNIST, 8/255 otherwise).",
        0.0,
        1.0,
    )
    define_fraction("pgd_step_size", None, "PGD step size, e.g. 2/255. Default: eps/4.", 0.0, 1.0)
    flags.DEFINE_integer(
        "pgd_restarts", 1, "PGD random restarts; an example is robust only if it survives all.", lower_bound=1
    )
    flags.DEFINE_enum(
        "pgd_loss", "xent", ["xent", "margin", "both"], "PGD loss; 'both' runs every pgdK with each."
    )
    flags.DEFINE_bool("pgd_random_start", True, "Start PGD from a uniform point of the eps-ball.")
    flags.DEFINE_string(
        "source_model",
        None,
        "Also run every PGD attack as a transfer attack crafted on this model (same forms as --model), "
        "reported as transfer_pgdK.",
    )
    flags.DEFINE_float(
        "masking_tolerance",
        0.02,
        "Accuracy difference the gradient-masking checks tolerate.",
        lower_bound=0.0,
    )
    flags.DEFINE_bool(
        "eps_checks",
        True,
        "Also check that accuracy does not rise as eps shrinks and reaches chance at eps 0.5 "
        "(two extra PGD runs).",
    )
    flags.DEFINE_float(
        "pgd_fgsm_tolerance",
        0.0,
        "Fraction of examples that may resist every PGD attack yet fall to FGSM (check pgd_beats_fgsm).",
        lower_bound=0.0,
    )
    flags.DEFINE_integer(
        "square_check_queries",
        200,
        "Queries of the Square attack run on the examples every white-box attack left standing, for the "
        "check blackbox_not_below_whitebox, when --attacks has no square or autoattack; 0 skips it. "
        "Costs about as much as PGD-20 with both losses; more queries make a stronger check.",
        lower_bound=0,
    )
    flags.DEFINE_float(
        "square_tolerance",
        0.01,
        "Fraction of examples Square may break beyond the white-box attacks (check "
        "blackbox_not_below_whitebox; a single example never fails it).",
        lower_bound=0.0,
    )

    # Running.
    flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored"], "tf.distribute strategy.")
    flags.DEFINE_integer("num_gpus", 0, "GPUs for --strategy=mirrored; 0 = all.", lower_bound=0)
    flags.DEFINE_integer(
        "cpu_devices",
        0,
        "Split the CPU into this many logical devices (--strategy=mirrored without GPUs).",
        lower_bound=0,
    )

    flags.DEFINE_bool(
        "jit_compile", False, "Compile FGSM and PGD with XLA (AutoAttack stays a plain tf.function)."
    )

    # Analyses.
    flags.DEFINE_bool(
        "eps_sweep", False, "Plot accuracy against eps (paper Fig. 2): eps_sweep.png/.json/.csv."
    )
    flags.DEFINE_list(
        "sweep_eps",
        None,
        "Eps grid of the sweep (fractions allowed); it then doubles eps until accuracy is 0 or eps is 1. "
        "Default: eps times 0, 1/4, 1/2, 1, 2.",
    )
    flags.DEFINE_list(
        "sweep_attacks", ["fgsm", "pgd10", "pgd20"], "Attacks of the sweep (fgsm, pgdK, pgdK_margin)."
    )
    flags.DEFINE_list("compare_models", [], "More models (same forms as --model) drawn on the sweep's plot.")
    flags.DEFINE_integer(
        "sweep_examples", None, "Examples of the sweep. Default: --num_examples.", lower_bound=1
    )
    flags.DEFINE_bool(
        "loss_surface", False, "Plot the loss surface (paper Fig. 3): loss_surface.png/.npy/.json."
    )
    flags.DEFINE_integer("loss_surface_examples", 3, "Examples whose loss surface is drawn.", lower_bound=1)
    flags.DEFINE_integer("loss_surface_points", 21, "Grid points per direction.", lower_bound=3)
    define_fraction(
        "loss_surface_radius",
        None,
        "Half-width of the loss-surface grid. Default: min(1, 4 * eps).",
        0.0,
        1.0,
    )
    flags.DEFINE_bool(
        "jacobian_figure", False, "Draw input Jacobians next to their images, one per class (paper Fig. 4)."
    )

    flags.mark_flag_as_required("model")
    flags.register_validator(
        "sweep_eps",
        lambda v: v is None or all(_is_fraction_in_unit(e) for e in v),
        message="--sweep_eps must be numbers or fractions in [0, 1], e.g. 0,2/255,4/255,8/255.",
    )


def _is_fraction_in_unit(text: str) -> bool:
    try:
        return 0.0 <= parse_fraction(text) <= 1.0
    except ValueError:
        return False


def _default_output_dir(model) -> str:
    if model.model_dir:
        return os.path.join(model.model_dir, "eval")
    parent = os.path.dirname(model.path)
    # An export directory's parent is the run's model_dir (export.old: after a
    # kill inside the export swap, which the next export deletes).
    if os.path.basename(parent) in ("export", "export.old"):
        parent = os.path.dirname(parent)
    return os.path.join(parent, "eval")


def _model_name(path: str, taken: List[str]) -> str:
    name = os.path.basename(os.path.normpath(path)) or path
    if name in ("export", "saved_model") or name.endswith(".keras"):
        name = os.path.basename(os.path.dirname(os.path.normpath(path))) + "/" + name
    while name in taken:
        name += "'"
    taken.append(name)
    return name


def main(argv) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from jarn_tf.core import distribute

    distribute.configure_cpu_devices(FLAGS.cpu_devices)
    from jarn_tf.core import data, export
    from jarn_tf.robustness import analysis, evaluation as eval_lib, checks as masking
    from jarn_tf.robustness import reports as results_lib

    # TensorFlow's INFO lines and retracing notes drown the progress bar.
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)

    # Everything that can be wrong with the inputs is checked here, before
    # any data is read or any attack runs.
    try:
        source = None
        specs = eval_lib.parse_attacks(FLAGS.attacks, FLAGS.pgd_loss, transfer=FLAGS.source_model is not None)
        sweep_specs = eval_lib.parse_attacks(FLAGS.sweep_attacks) if FLAGS.eps_sweep else []
        if any(not s.gradient_based for s in sweep_specs):
            raise ValueError(f"--sweep_attacks takes fgsm and pgdK attacks, got {FLAGS.sweep_attacks}.")
        training = FLAGS.batchnorm == "train"
        model = export.load_model(FLAGS.model, training=training)
        dataset_name = FLAGS.dataset or model.dataset
        if dataset_name is None:
            raise ValueError(f"{model.path} has no metadata.json naming its dataset; pass --dataset.")
        info = data.dataset_info(dataset_name)
        export.check_model_matches_dataset(model, info.name, info.image_shape)
        if FLAGS.source_model:
            source = export.load_model(FLAGS.source_model, training=training)
            export.check_model_matches_dataset(source, info.name, info.image_shape)
        compare = (
            [export.load_model(p, training=training) for p in FLAGS.compare_models] if FLAGS.eps_sweep else []
        )
        for other in compare:
            export.check_model_matches_dataset(other, info.name, info.image_shape)
        eps = FLAGS.eps
        if eps is None:
            eps = model.train_eps if model.train_eps is not None else config.PAPER_DEFAULTS[info.name]["eps"]
        params = eval_lib.AttackParams(
            eps=float(eps),
            pgd_step_size=FLAGS.pgd_step_size,
            pgd_restarts=FLAGS.pgd_restarts,
            pgd_random_start=FLAGS.pgd_random_start,
            seed=FLAGS.seed,
            jit_compile=FLAGS.jit_compile,
        )
        params.validate()
        strategy = distribute.get_strategy(FLAGS.strategy, FLAGS.num_gpus)
        data_config = config.DataConfig(dataset=info.name, data_dir=FLAGS.data_dir, download=FLAGS.download)
        data.describe_source(data_config)
        order = data.resolve_example_order(data_config, FLAGS.split, FLAGS.example_order)
        dataset = data.make_eval_dataset(
            data_config, FLAGS.batch_size, FLAGS.num_examples, FLAGS.split, order.name
        )
        available = len(data.load_arrays(data_config, FLAGS.split, order.name)[1])
    except (ValueError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    num_examples = min(available, FLAGS.num_examples or available)
    output_dir = os.path.abspath(FLAGS.output_dir or _default_output_dir(model))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        print(
            f"error: --output_dir={output_dir} is a file; pass a directory for the results.", file=sys.stderr
        )
        return 2

    print(
        f"Evaluating {model.path} ({model.format}) on the first {num_examples} {info.name} {FLAGS.split} "
        f"examples, eps={params.eps:.6g}, attacks: {', '.join(s.name for s in specs)}"
    )
    print(f"Example order: {order.name}: {order.detail}.")
    print(
        "Batch norm: train mode (Keras training=True): the statistics of each batch of "
        f"{FLAGS.batch_size} examples, as the authors' release measured."
        if training
        else "Batch norm: inference mode (moving averages)."
    )
    start = time.time()
    # AutoAttack's checks of the models themselves, on the first batch, before any attack.
    sample_images = next(iter(dataset))[0]
    model_checks = masking.model_checks(model.model_fn, sample_images)
    if source:
        model_checks += masking.model_checks(source.model_fn, sample_images, "source_model/")
    for i, other in enumerate(compare):
        model_checks += masking.model_checks(other.model_fn, sample_images, f"compare_model_{i + 1}/")
    for c in model_checks:
        if c.passed is False:
            logging.warning("Model check failed (%s): %s", c.name, c.message)
    with strategy.scope():
        output = eval_lib.evaluate(
            model.model_fn,
            dataset,
            specs,
            params,
            source_fn=source.model_fn if source else None,
            strategy=strategy,
            num_examples=num_examples,
            verbose=FLAGS.verbose,
        )
    checks = model_checks + masking.checks_after_attacks(
        model.model_fn,
        dataset,
        output,
        specs,
        params,
        info.num_classes,
        square_check_queries=FLAGS.square_check_queries,
        masking_tolerance=FLAGS.masking_tolerance,
        pgd_fgsm_tolerance=FLAGS.pgd_fgsm_tolerance,
        square_tolerance=FLAGS.square_tolerance,
        run_eps_checks=FLAGS.eps_checks,
        eps_checks_needs="--eps_checks, eps > 0 and an attack other than clean",
        strategy=strategy,
        verbose=FLAGS.verbose,
    )
    jacobian_stats, jacobian_kept = None, None
    if FLAGS.jacobian_figure:
        if FLAGS.verbose:
            print(f"Input Jacobians of the {num_examples} examples: alignment with the images...")
        # Keeps the first examples' Jacobians for the figure (one example per class among them).
        # In train mode examples interact through the batch statistics: one gradient scale per batch.
        jacobian_stats, jacobian_kept = analysis.jacobian_stats(
            model.model_fn, dataset, keep=10 * info.num_classes, per_example_scale=not training
        )
        jacobian_stats.update(batchnorm=FLAGS.batchnorm, batch_size=FLAGS.batch_size)
    run_info = {
        "model": model.path,
        "model_format": model.format,
        "source_model": source.path if source else None,
        "dataset": info.name,
        "split": FLAGS.split,
        "example_order": order.name,
        "example_order_detail": order.detail,
        "batch_size": FLAGS.batch_size,
        "batchnorm": FLAGS.batchnorm,
        # Train mode's statistics are those of batches of this many examples (the last one may be smaller),
        # split over the replicas unless the model's batch norm is synchronized.
        "batchnorm_batch_size": FLAGS.batch_size if training else None,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": FLAGS.strategy,
        "eps_source": (
            "flag" if FLAGS.eps is not None else ("metadata" if model.train_eps is not None else "paper")
        ),
    }
    results = results_lib.build_results(
        output, specs, params, checks, run_info, time.time() - start, jacobian_stats=jacobian_stats
    )
    paths = results_lib.write_results(results, output_dir)
    print()
    print(results_lib.format_table(results))
    print("\nModel and gradient-masking checks:")
    print(results_lib.format_checks(results["checks"]))
    if jacobian_stats:
        print("\nInput Jacobians: " + results_lib.format_jacobian_stats(jacobian_stats))
    for c in checks[len(model_checks) :]:
        if c.passed is False:
            logging.warning("Possible gradient masking (%s): %s", c.name, c.message)

    if FLAGS.eps_sweep:
        models = {}
        taken: List[str] = []
        for m in [model] + compare:
            models[_model_name(m.path if m.model_dir is None else m.model_dir, taken)] = m.model_fn
        grid = (
            [parse_fraction(e) for e in FLAGS.sweep_eps]
            if FLAGS.sweep_eps
            else sorted({min(1.0, params.eps * k) for k in (0.0, 0.25, 0.5, 1.0, 2.0)})
        )
        sweep_n = FLAGS.sweep_examples or num_examples
        sweep_ds = data.make_eval_dataset(data_config, FLAGS.batch_size, sweep_n, FLAGS.split, order.name)
        if FLAGS.verbose:
            print(
                f"\nEps sweep: {', '.join(FLAGS.sweep_attacks)} on {min(sweep_n, available)} examples of "
                f"{len(models)} model(s), eps from {grid}, doubling until accuracy is 0"
            )
        with strategy.scope():
            sweep = analysis.eps_sweep(
                models,
                sweep_ds,
                FLAGS.sweep_attacks,
                grid,
                step_fraction=params.step_size / params.eps if params.eps > 0 else 0.25,
                restarts=FLAGS.pgd_restarts,
                seed=FLAGS.seed,
                strategy=strategy,
                verbose=FLAGS.verbose,
                jit_compile=FLAGS.jit_compile,
            )
        sweep["num_examples"] = min(sweep_n, available)
        sweep["dataset"] = info.name
        written = analysis.write_eps_sweep(sweep, output_dir, title=f"{info.name}: accuracy against eps")
        print(f"\nEps sweep over {sweep['eps']}: {written['png']}")
        paths.update({f"eps_sweep_{k}": v for k, v in written.items()})

    if FLAGS.loss_surface:
        images, labels = analysis.take_examples(dataset, FLAGS.loss_surface_examples)
        radius = (
            FLAGS.loss_surface_radius if FLAGS.loss_surface_radius is not None else min(1.0, 4 * params.eps)
        )
        if FLAGS.verbose:
            print(
                f"Loss surface of {len(images[: FLAGS.loss_surface_examples])} examples, "
                f"{FLAGS.loss_surface_points}x{FLAGS.loss_surface_points} points..."
            )
        surface = analysis.loss_surface(
            model.model_fn,
            images[: FLAGS.loss_surface_examples],
            labels[: FLAGS.loss_surface_examples],
            radius,
            FLAGS.loss_surface_points,
            FLAGS.seed,
        )
        written = analysis.write_loss_surface(surface, output_dir)
        print(f"Loss surface: {written['png']}")
        paths.update({f"loss_surface_{k}": v for k, v in written.items()})
    if FLAGS.jacobian_figure:
        if FLAGS.verbose:
            print("Input Jacobians, one example per class...")
        # The Jacobians of the alignment pass, computed batch by batch like the attacks'.
        figure = analysis.jacobian_figure(
            model.model_fn,
            jacobian_kept["images"],
            jacobian_kept["labels"],
            info.num_classes,
            output_dir,
            jacobians=jacobian_kept["jacobians"],
            stats=jacobian_stats,
        )
        print(
            f"Jacobians: {figure['png']}, {figure['stats_json']} "
            f"(TensorBoard: tensorboard --logdir {figure['tensorboard']})"
        )

    print(f"\nResults: {paths['json']}, {paths['md']}, {paths['csv']}")
    return 0


def run() -> None:
    """Console-script entry point (proposed name ``jarn-evaluate``)."""
    define_evaluate_flags()
    flag_utils.help_for_console_script(__name__, __doc__)
    from jarn_tf.core import startup

    startup.prefer_onednn()  # before TensorFlow is imported: see its docstring
    app.run(main)


if __name__ == "__main__":
    run()
