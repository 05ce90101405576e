r"""Trains a classifier with JARN, adversarial training or a baseline.

  python -m jarn_tf.train --dataset=cifar10 --jarn --at_steps=1 \
      --model_dir=runs/jarn_at1

Flags left unset take the paper's setting for the dataset (see
``PAPER_DEFAULTS``). Writes ``model_dir/config.json``, checkpoints,
TensorBoard logs (``train/``, ``eval/``) and ``model_dir/export/``.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from absl import app, flags, logging

from jarn_tf import config as config_lib
from jarn_tf.flag_utils import define_fraction

FLAGS = flags.FLAGS

DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10")

# The paper's settings per dataset (section 4), used for flags left unset.
PAPER_DEFAULTS = {
    "mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.3
    ),
    "fashion_mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.1
    ),
    "svhn": dict(
        model="wrn", disc_layers=5, disc_base_channels=16, disc_update_every=20, lambda_adv=5.0, eps=8 / 255
    ),
    "cifar10": dict(
        model="wrn", disc_layers=5, disc_base_channels=32, disc_update_every=20, lambda_adv=1.0, eps=8 / 255
    ),
}


def define_train_flags() -> None:
    """Defines every flag of ``jarn_tf.train`` (all optional but --model_dir)."""
    # Data.
    flags.DEFINE_enum("dataset", "cifar10", DATASETS, "Dataset to train on.")
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory, or a directory with MNIST-format IDX files. Default: TFDS's."
    )
    flags.DEFINE_bool("download", True, "Let TFDS download the data when it has no copy.")
    flags.DEFINE_bool("augment", None, "Pad-crop-flip augmentation. Default: on for cifar10 only.")
    flags.DEFINE_string("model_dir", None, "Directory of the run: checkpoints, logs, export. Required.")

    # Models.
    flags.DEFINE_enum(
        "model",
        None,
        ["wrn", "mnist_cnn"],
        "Classifier. Default: mnist_cnn for (fashion_)mnist, wrn otherwise.",
    )
    flags.DEFINE_integer(
        "wrn_depth", 34, "Wide-ResNet depth, 6n+4 (34: 5 units per stage, the paper's).", lower_bound=10
    )
    flags.DEFINE_integer(
        "wrn_width", 10, "Wide-ResNet widening factor (10: widths 160, 320, 640).", lower_bound=1
    )
    flags.DEFINE_list("cnn_channels", ["64", "128", "256"], "Channels of the MNIST CNN's conv layers.")
    flags.DEFINE_integer(
        "disc_layers",
        None,
        "Discriminator conv layers. Default: 2 (MNIST), 5 (SVHN, CIFAR-10).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "disc_base_channels",
        None,
        "Discriminator's first-layer channels. Default: 64 MNIST, 16 SVHN, 32 CIFAR-10.",
        lower_bound=1,
    )
    flags.DEFINE_bool("sync_batchnorm", False, "Batch-norm statistics over all replicas.")

    # JARN.
    flags.DEFINE_bool("jarn", False, "Train with the JARN regulariser.")
    flags.DEFINE_float("jarn_start", 0.75, "Fraction of training after which JARN is on (0 = always).")
    flags.DEFINE_float(
        "lambda_adv", None, "Weight of JARN's adversarial loss. Default: 1 (MNIST, CIFAR-10), 5 (SVHN)."
    )
    flags.DEFINE_float("adaptor_gamma", 1.0, "Weight of the adversarial loss in the adaptor's objective.")
    flags.DEFINE_integer(
        "disc_update_every",
        None,
        "Update the discriminator every k steps. Default: 10 MNIST, 20 otherwise.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "jacobian",
        "xent",
        ["xent", "prob"],
        "J = d xent/dx (paper, default) or d softmax_y/dx (authors' release).",
    )
    flags.DEFINE_enum("disc_optimizer", "sgd", ["sgd", "adam"], "Discriminator optimizer.")
    flags.DEFINE_float("disc_learning_rate", 1e-3, "Discriminator learning rate with --disc_optimizer=adam.")

    # Adversarial training and baselines.
    flags.DEFINE_integer(
        "at_steps", 0, "PGD steps of adversarial training; 0 off, 1 FGSM-AT, 7 PGD-AT7.", lower_bound=0
    )
    define_fraction(
        "eps",
        None,
        "L-inf radius in [0, 1] units, e.g. 8/255. Default: 0.3 MNIST, 0.1 Fashion-MNIST, 8/255 otherwise.",
        0.0,
        1.0,
    )
    define_fraction(
        "step_size", None, "PGD step size. Default: eps for --at_steps=1, eps/4 otherwise.", 0.0, 1.0
    )
    flags.DEFINE_bool(
        "at_random_start", None, "Random start for training PGD. Default: on unless --at_steps=1."
    )
    flags.DEFINE_bool("uniform_noise", False, "Uniform-noise augmentation baseline.")
    define_fraction(
        "noise_eps",
        None,
        "Half-width of the uniform input noise (JARN, --uniform_noise). Default: --eps.",
        0.0,
        1.0,
    )
    flags.DEFINE_float(
        "double_backprop", 0.0, "Weight of the input-gradient Frobenius penalty; 0 = off.", lower_bound=0.0
    )

    # Optimisation.
    flags.DEFINE_enum("mode", "classifier", ["classifier"], "Training mode.")
    flags.DEFINE_integer(
        "train_steps", None, "Training steps. Default: 160000 (the paper's CIFAR-10 run).", lower_bound=1
    )
    flags.DEFINE_float(
        "epochs", None, "Train for this many epochs instead of --train_steps.", lower_bound=0.0
    )
    flags.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order, noise and attacks.")
    flags.DEFINE_float("learning_rate", 0.1, "Base learning rate (SGD, every network).")
    flags.DEFINE_list(
        "lr_boundaries", ["0.5", "0.75"], "Fractions of training where the learning rate decays."
    )
    flags.DEFINE_float("lr_decay", 0.1, "Learning-rate multiplier at each boundary.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 2e-4, "Coefficient of sum(w^2)/2 over kernels.", lower_bound=0.0)

    # Running.
    flags.DEFINE_enum(
        "strategy",
        "default",
        ["default", "one_device", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: mirrored = the GPUs of this machine; multi_worker = "
        "MultiWorkerMirroredStrategy over the workers of TF_CONFIG; tpu = TPUStrategy.",
    )
    flags.DEFINE_integer("num_gpus", 0, "GPUs for --strategy=mirrored; 0 = all.", lower_bound=0)
    flags.DEFINE_string(
        "tpu", None, "TPU name or grpc:// address for --strategy=tpu ('local' on a TPU VM). Default: TPU_NAME."
    )
    flags.DEFINE_integer(
        "cpu_devices",
        0,
        "Split the CPU into this many logical devices (try --strategy=mirrored without GPUs).",
        lower_bound=0,
    )
    flags.DEFINE_integer("steps_per_loop", 50, "Steps per compiled loop between host work.", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.", lower_bound=1)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", lower_bound=1)
    flags.DEFINE_integer("summary_every", 100, "Steps between scalar summaries.", lower_bound=1)
    flags.DEFINE_integer(
        "image_summary_every", 1000, "Steps between image summaries (x, J, J'); 0 = off.", lower_bound=0
    )
    flags.DEFINE_integer("export_every", 0, "Steps between exports; 0 = only at the end.", lower_bound=0)
    flags.DEFINE_integer(
        "eval_examples", 1000, "Test images for the clean accuracy logged at export.", lower_bound=0
    )
    flags.DEFINE_integer("verbose", 1, "1: progress bar; 0: quiet.", lower_bound=0)
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
    flags.DEFINE_bool(
        "mixed_precision", False, "Mixed precision (see --mixed_precision_dtype); float32 weights and logits."
    )
    flags.DEFINE_enum(
        "mixed_precision_dtype",
        "auto",
        ["auto", "float16", "bfloat16"],
        "auto: float16 with loss scaling on GPU, bfloat16 on CPU/TPU.",
    )
    flags.DEFINE_bool(
        "deterministic",
        False,
        "Op determinism: two runs with the same flags give bit-identical weights (CPU).",
    )

    flags.mark_flag_as_required("model_dir")
    flags.register_multi_flags_validator(
        ["train_steps", "epochs"],
        lambda f: f["train_steps"] is None or f["epochs"] is None,
        message="Give --train_steps or --epochs, not both.",
    )
    flags.register_multi_flags_validator(
        ["jarn", "double_backprop"],
        lambda f: not (f["jarn"] and f["double_backprop"] > 0),
        message="--jarn and --double_backprop are separate regularisers; use one.",
    )
    flags.register_validator(
        "jarn_start", lambda v: 0.0 <= v < 1.0, message="--jarn_start must be in [0, 1)."
    )
    flags.register_validator(
        "cnn_channels",
        lambda v: all(c.strip().isdigit() and int(c) > 0 for c in v),
        message="--cnn_channels must be positive integers, e.g. 64,128,256.",
    )
    flags.register_validator(
        "lr_boundaries",
        lambda v: all(0 < float(b) < 1 for b in v) and [float(b) for b in v] == sorted(float(b) for b in v),
        message="--lr_boundaries must be increasing fractions in (0, 1), e.g. 0.5,0.75.",
    )


def config_from_flags(fv: flags.FlagValues = FLAGS) -> config_lib.ExperimentConfig:
    """Resolves flags and the paper's per-dataset defaults into a config."""
    preset = PAPER_DEFAULTS[fv.dataset]

    def pick(name):
        value = getattr(fv, name)
        return preset[name] if value is None else value

    eps = pick("eps")
    at_steps = fv.at_steps
    step_size = fv.step_size
    if step_size is None:
        step_size = eps if at_steps == 1 else eps / 4
    random_start = fv.at_random_start
    if random_start is None:
        random_start = at_steps != 1

    data_cfg = config_lib.DataConfig(
        dataset=fv.dataset, data_dir=fv.data_dir, download=fv.download, augment=fv.augment
    )
    train_steps = fv.train_steps
    if fv.epochs is not None:
        from jarn_tf import data  # loads the training split to count it

        train_steps = max(1, int(round(fv.epochs * data.steps_per_epoch(data_cfg, fv.batch_size))))
    if train_steps is None:
        train_steps = 160000

    return config_lib.ExperimentConfig(
        data=data_cfg,
        model=config_lib.ModelConfig(
            model=pick("model"),
            wrn_depth=fv.wrn_depth,
            wrn_width=fv.wrn_width,
            cnn_channels=tuple(int(c) for c in fv.cnn_channels),
            disc_layers=pick("disc_layers"),
            disc_base_channels=pick("disc_base_channels"),
            sync_batchnorm=fv.sync_batchnorm,
        ),
        train=config_lib.TrainConfig(
            mode=fv.mode,
            train_steps=train_steps,
            batch_size=fv.batch_size,
            seed=fv.seed,
            learning_rate=fv.learning_rate,
            lr_boundaries=tuple(float(b) for b in fv.lr_boundaries),
            lr_decay=fv.lr_decay,
            momentum=fv.momentum,
            weight_decay=fv.weight_decay,
            disc_optimizer=fv.disc_optimizer,
            disc_learning_rate=fv.disc_learning_rate,
            jarn=fv.jarn,
            jarn_start=fv.jarn_start,
            lambda_adv=pick("lambda_adv"),
            adaptor_gamma=fv.adaptor_gamma,
            disc_update_every=pick("disc_update_every"),
            jacobian=fv.jacobian,
            noise_eps=eps if fv.noise_eps is None else fv.noise_eps,
            uniform_noise=fv.uniform_noise,
            at_steps=at_steps,
            eps=eps,
            step_size=step_size,
            at_random_start=random_start,
            double_backprop=fv.double_backprop,
            steps_per_loop=fv.steps_per_loop,
            checkpoint_every=fv.checkpoint_every,
            summary_every=fv.summary_every,
            image_summary_every=fv.image_summary_every,
            export_every=fv.export_every,
            keep_checkpoints=fv.keep_checkpoints,
            strategy=fv.strategy,
            num_gpus=fv.num_gpus,
            deterministic=fv.deterministic,
            jit_compile=fv.jit_compile,
            mixed_precision=fv.mixed_precision_dtype if fv.mixed_precision else "none",
        ),
    )


def main(argv) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Logical CPU devices must exist before TensorFlow initialises.
    from jarn_tf import distribute

    distribute.configure_cpu_devices(FLAGS.cpu_devices)
    from jarn_tf import data, train_lib

    # TensorFlow's own INFO lines (saver sharding, SavedModel assets, the
    # strategy's setup) drown the progress bar; --verbosity=0 brings them back.
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
        train_lib.validate_config(config)
        data.describe_source(config.data)
        strategy = None
        if config.train.strategy in distribute.CLUSTER_STRATEGIES:
            # These configure the runtime, so they come before any other op;
            # a bad TF_CONFIG fails here, before any worker waits for others.
            strategy = distribute.get_strategy(config.train.strategy, tpu=FLAGS.tpu)
    except (ValueError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.info("Configuration: %s", config.to_dict())
    model_dir = os.path.abspath(FLAGS.model_dir)
    print(f"Training {config.train.mode} on {config.data.dataset} in {model_dir}")
    print(f"TensorBoard: tensorboard --logdir {model_dir}")
    try:
        result = train_lib.train(
            config, model_dir, eval_examples=FLAGS.eval_examples, verbose=FLAGS.verbose, strategy=strategy
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train_lib.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.preempted:
        print(f"Preempted (SIGTERM): checkpoint saved at step {result.step}. Run the same command to resume.")
        return 0
    resumed = f" (resumed from step {result.start_step})" if result.start_step else ""
    print(f"Finished at step {result.step} in {result.seconds:.0f} s{resumed}.")
    if result.export_dir:
        print(f"Exported to {result.export_dir}")
    return 0


# Both set the length of the run. As with any flag given twice, the one given
# last wins, so a flagfile's --epochs can be overridden by a --train_steps
# after it, and the other way round.
_LENGTH_FLAGS = ("train_steps", "epochs")


def keep_last_length_flag(args: Sequence[str]) -> List[str]:
    """Expands flagfiles and drops the earlier of --train_steps / --epochs.

    Args:
      args: command-line arguments without the program name.

    Returns:
      The arguments with every flagfile expanded in place and, when both
      length flags occur, every occurrence of the one given first removed.
    """
    expanded = FLAGS.read_flags_from_files(list(args), force_gnu=False)

    def length_flag(arg: str) -> Optional[str]:
        name = arg.lstrip("-").split("=", 1)[0]
        return name if arg.startswith("-") and name in _LENGTH_FLAGS else None

    end = expanded.index("--") if "--" in expanded else len(expanded)
    last = {length_flag(a): i for i, a in enumerate(expanded[:end]) if length_flag(a)}
    if len(last) < 2:
        return expanded
    dropped = min(last, key=last.get)
    out: List[str] = []
    skip_value = False
    for i, arg in enumerate(expanded):
        if skip_value:
            skip_value = False
        elif i < end and length_flag(arg) == dropped:
            skip_value = "=" not in arg  # "--epochs 4": the value is the next argument
        else:
            out.append(arg)
    return out


def _parse_flags(argv: List[str]) -> List[str]:
    try:
        args = keep_last_length_flag(argv[1:])
    except flags.Error:
        args = argv[1:]  # an unreadable flagfile: absl's parser reports it as usual
    return app.parse_flags_with_usage(argv[:1] + args)


def run() -> None:
    """Console-script entry point (``jarn-train``)."""
    define_train_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
