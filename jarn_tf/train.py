r"""Trains a classifier with JARN, adversarial training or a baseline.

  python -m jarn_tf.train --dataset=cifar10 --jarn --at_steps=1 \
      --model_dir=runs/jarn_at1

Flags left unset take the paper's setting for the dataset (see
``jarn_tf.config.PAPER_DEFAULTS``). Writes ``model_dir/config.json``, checkpoints,
TensorBoard logs (``train/``, ``eval/``) and ``model_dir/export/``.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from absl import app, flags, logging

from jarn_tf import config as config_lib
from jarn_tf.core import flag_utils

FLAGS = flags.FLAGS


def define_train_flags() -> None:
    """Defines every flag of ``jarn_tf.train`` (all optional but --model_dir).

    The configuration's flags come from its sections (``jarn_tf.config``,
    via ``flag_utils.define_config_flags``); the rest say where and how this
    process runs.
    """
    flag_utils.define_config_flags()
    flags.DEFINE_string("model_dir", None, "Directory of the run: checkpoints, logs, export. Required.")
    flags.DEFINE_string(
        "tpu",
        None,
        "TPU name or grpc:// address for --strategy=tpu ('local' on a TPU VM). Default: TPU_NAME.",
    )
    flags.DEFINE_integer(
        "cpu_devices",
        0,
        "Split the CPU into this many logical devices (try --strategy=mirrored without GPUs).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "eval_examples",
        1000,
        "Test images (the first of the test split) of the evaluations (--eval_every) and the export's.",
        lower_bound=0,
    )
    flags.DEFINE_integer("verbose", 1, "1: progress bar; 0: quiet.", lower_bound=0)
    flags.mark_flag_as_required("model_dir")
    # --help lists the generated flags too, not only those defined here.
    flags.adopt_module_key_flags(flag_utils)


def config_from_flags(fv: flags.FlagValues = FLAGS) -> config_lib.ExperimentConfig:
    """Resolves flags and the paper's per-dataset defaults into a config."""
    return flag_utils.config_from_flags(fv)


def main(argv) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Logical CPU devices must exist before TensorFlow initialises.
    from jarn_tf.core import distribute

    distribute.configure_cpu_devices(FLAGS.cpu_devices)
    from jarn_tf.core import data, loop as train_lib

    # TensorFlow's own INFO lines (saver sharding, SavedModel assets, the
    # strategy's setup) drown the progress bar; --verbosity=0 brings them back.
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
        train_lib.validate_config(config)
        data.describe_source(config.data)
        train_lib.check_model_dir(config, os.path.abspath(FLAGS.model_dir))
        strategy = None
        if config.runtime.strategy in config_lib.CLUSTER_STRATEGIES:
            # These configure the runtime, so they come before any other op;
            # a bad TF_CONFIG fails here, before any worker waits for others.
            strategy = distribute.get_strategy(config.runtime.strategy, tpu=FLAGS.tpu)
    except (ValueError, data.DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.info("Configuration: %s", config.to_dict())
    model_dir = os.path.abspath(FLAGS.model_dir)
    print(f"Training {config.mode} on {config.data.dataset} in {model_dir}")
    print(f"TensorBoard: tensorboard --logdir {model_dir}")
    try:
        result = train_lib.train(
            config, model_dir, eval_examples=FLAGS.eval_examples, verbose=FLAGS.verbose, strategy=strategy
        )
    except (ValueError, data.DatasetNotFoundError) as e:  # a CheckpointRestoreError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train_lib.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.preempted:
        print(f"Preempted (SIGTERM): checkpoint saved at step {result.step}. Run the same command to resume.")
        return 0
    resumed = f" (resumed from step {result.start_step})" if result.start_step else ""
    evaluations = f", evaluations {result.eval_seconds:.0f} s of it" if result.eval_seconds >= 0.5 else ""
    print(f"Finished at step {result.step} in {result.seconds:.0f} s{resumed}{evaluations}.")
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
    flag_utils.help_for_console_script(__name__, __doc__)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
