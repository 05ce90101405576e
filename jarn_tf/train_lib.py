"""The training loop: strategy, data, checkpoints, summaries and export.

Three layers (as in SimCLR's tf2/run.py and orbit): ``Trainer.replica_step``
runs on each replica; ``strategy.run`` runs it on all replicas; a
``tf.function`` loop runs a chunk of steps. Checkpoints, summaries, the
progress bar and exports stay on the host between chunks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Callable, Dict, Hashable, Optional, Tuple

import keras
import tensorflow as tf

from jarn_tf import config as config_lib
from jarn_tf import data, distribute, export, models
from jarn_tf.summaries import SummaryWriter
from jarn_tf.train_step import Trainer, build_trainer

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
_NUM_SUMMARY_IMAGES = 8


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or Inf; no checkpoint is written after it."""


@dataclasses.dataclass
class TrainResult:
    """What a call of ``train`` did.

    Attributes:
      start_step: the step it started from (> 0 when it resumed).
      step: the step it stopped at.
      metrics: the last scalar summaries written.
      export_dir: where the classifier was exported, if it was.
      seconds: wall time of the training loop.
      trainer: the live trainer (networks, optimizers), for inspection.
      preempted: it stopped early on SIGTERM, after saving a checkpoint.
      chief: this process wrote the run's files (always, except on the
        non-chief workers of ``--strategy=multi_worker``).
    """

    start_step: int
    step: int
    metrics: Dict[str, float]
    export_dir: Optional[str]
    seconds: float
    trainer: Trainer
    preempted: bool = False
    chief: bool = True


class _PreemptionWatch:
    """Turns SIGTERM into a flag the loop checks between chunks.

    The loop then saves a checkpoint at the current step and returns, so a
    preempted job loses nothing and resumes where it stopped. With several
    workers the flags are all-reduced at each check, so a signal to any one
    worker stops every worker at the same step. Only the main thread can
    install signal handlers; elsewhere this watches nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: checkpointing at the end of the current chunk.")
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: config_lib.ExperimentConfig) -> None:
    """Rejects impossible or inconsistent settings, naming the flag.

    Raises:
      ValueError: with the offending flag in its message.
    """
    t = config.train
    info = data.dataset_info(config.data.dataset)
    models.validate_model_config(config.model, info.image_shape)
    checks = [
        (t.train_steps > 0, f"--train_steps must be positive, got {t.train_steps}"),
        (t.batch_size > 0, f"--batch_size must be positive, got {t.batch_size}"),
        (t.at_steps >= 0, f"--at_steps must be >= 0, got {t.at_steps}"),
        (0.0 <= t.eps <= 1.0, f"--eps must be in [0, 1] (pixel units of [0, 1] images), got {t.eps}"),
        (0.0 <= t.step_size <= 1.0, f"--step_size must be in [0, 1], got {t.step_size}"),
        (0.0 <= t.noise_eps <= 1.0, f"--noise_eps must be in [0, 1], got {t.noise_eps}"),
        (0.0 <= t.jarn_start < 1.0, f"--jarn_start must be in [0, 1), got {t.jarn_start}"),
        (t.disc_update_every >= 1, f"--disc_update_every must be >= 1, got {t.disc_update_every}"),
        (t.double_backprop >= 0, f"--double_backprop must be >= 0, got {t.double_backprop}"),
        (t.lambda_adv >= 0, f"--lambda_adv must be >= 0, got {t.lambda_adv}"),
        (t.learning_rate > 0, f"--learning_rate must be positive, got {t.learning_rate}"),
        (t.weight_decay >= 0, f"--weight_decay must be >= 0, got {t.weight_decay}"),
        (t.jacobian in ("xent", "prob"), f"--jacobian must be xent or prob, got {t.jacobian!r}"),
        (
            t.disc_optimizer in ("sgd", "adam"),
            f"--disc_optimizer must be sgd or adam, got {t.disc_optimizer!r}",
        ),
        (
            t.strategy in distribute.STRATEGIES,
            f"--strategy must be one of {distribute.STRATEGIES}, got {t.strategy!r}",
        ),
        (
            all(0.0 < b < 1.0 for b in t.lr_boundaries) and list(t.lr_boundaries) == sorted(t.lr_boundaries),
            f"--lr_boundaries must be increasing fractions in (0, 1), got {t.lr_boundaries}",
        ),
        (
            not (t.jarn and t.double_backprop > 0),
            "--jarn and --double_backprop are separate regularisers of the paper; use one of them",
        ),
        (t.steps_per_loop >= 1, f"--steps_per_loop must be >= 1, got {t.steps_per_loop}"),
        (
            t.mixed_precision in config_lib.MIXED_PRECISION,
            f"--mixed_precision_dtype must be one of {config_lib.MIXED_PRECISION}, got {t.mixed_precision!r}",
        ),
        (t.checkpoint_every >= 1, f"--checkpoint_every must be >= 1, got {t.checkpoint_every}"),
        (t.summary_every >= 1, f"--summary_every must be >= 1, got {t.summary_every}"),
        (t.export_every >= 0, f"--export_every must be >= 0, got {t.export_every}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if t.jarn and t.jarn_start_step >= t.train_steps:
        raise ValueError(f"--jarn_start={t.jarn_start} leaves no JARN step in --train_steps={t.train_steps}")


def mixed_precision_policy(setting: str) -> Optional[str]:
    """The Keras dtype policy for ``--mixed_precision``, or None when off.

    ``auto`` picks mixed_float16 on a GPU (tensor cores; needs loss scaling)
    and mixed_bfloat16 elsewhere (CPU, TPU).
    """
    if setting == "none":
        return None
    if setting == "auto":
        setting = "float16" if tf.config.list_logical_devices("GPU") else "bfloat16"
    return f"mixed_{setting}"


@contextlib.contextmanager
def mixed_precision_scope(setting: str):
    """Builds models under the mixed policy without leaking it globally."""
    policy = mixed_precision_policy(setting)
    previous = keras.mixed_precision.dtype_policy()
    if policy:
        keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def check_model_dir(config: config_lib.ExperimentConfig, model_dir: str) -> None:
    """Refuses to resume a model_dir trained with a different configuration."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    diffs = config_lib.config_differences(config_lib.read_config(path), config.to_dict())
    if diffs:
        raise ValueError(
            f"--model_dir={model_dir} holds a run with a different configuration "
            f"({'; '.join(diffs)}). Use a new --model_dir, or the same flags to resume."
        )


def _chunks(trainer: Trainer, start: int, end: int, max_len: int):
    """Splits [start, end) into chunks whose steps after the first share a variant.

    Yields (first_step, num_steps, first_variant, rest_variant).
    """
    step = start
    while step < end:
        first = trainer.variant(step)
        rest = trainer.variant(step + 1) if step + 1 < end else first
        n = 1
        while n < max_len and step + n < end and trainer.variant(step + n) == rest:
            n += 1
        yield step, n, first, rest
        step += n


def _next_stop(step: int, end: int, intervals) -> int:
    """The first step after ``step`` that is a multiple of an interval, or end."""
    return min([end] + [(step // i + 1) * i for i in intervals if i])


class _LoopFunctions:
    """Compiled ``tf.function`` loops, one per (first, rest) variant pair."""

    def __init__(self, trainer: Trainer, strategy: tf.distribute.Strategy):
        self.trainer = trainer
        self.strategy = strategy
        self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="nonfinite_step")
        self._fns: Dict[Tuple[Hashable, Hashable], Callable] = {}
        # XLA compiles the replica step only: the input iterator stays outside.
        jit = trainer.config.train.jit_compile
        self._step_fn = tf.function(trainer.replica_step, jit_compile=True) if jit else trainer.replica_step

    def _one_step(self, iterator, variant) -> None:
        per_replica = self.strategy.run(self._step_fn, args=(next(iterator), variant))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        # Remember the first step whose loss was not finite.
        first_bad = tf.logical_and(self.bad_step < 0, tf.logical_not(tf.math.is_finite(loss)))
        self.bad_step.assign(tf.where(first_bad, self.trainer.step, self.bad_step))
        self.trainer.step.assign_add(1)

    def get(self, first: Hashable, rest: Hashable) -> Callable:
        key = (first, rest)
        if key not in self._fns:

            @tf.function
            def loop(iterator, num_steps):
                self._one_step(iterator, first)
                for _ in tf.range(num_steps - 1):
                    self._one_step(iterator, rest)

            self._fns[key] = loop
        return self._fns[key]


def _fixed_summary_batch(config: config_lib.ExperimentConfig) -> Tuple[tf.Tensor, tf.Tensor]:
    ds = data.make_eval_dataset(config.data, batch_size=_NUM_SUMMARY_IMAGES, num_examples=_NUM_SUMMARY_IMAGES)
    return next(iter(ds))


def _evaluate_clean(classifier: keras.Model, config: config_lib.ExperimentConfig, num_examples: int) -> float:
    """Clean accuracy on the first ``num_examples`` test images."""
    correct, total = 0, 0
    predict = tf.function(lambda x: tf.argmax(classifier(x, training=False), axis=-1))
    for images, labels in data.make_eval_dataset(config.data, batch_size=256, num_examples=num_examples):
        correct += int(tf.reduce_sum(tf.cast(predict(images) == labels, tf.int32)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def train(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    eval_examples: int = 1000,
    stop_after: Optional[int] = None,
    verbose: int = 1,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> TrainResult:
    """Trains (or resumes) the run in ``model_dir`` and exports it.

    Args:
      config: the resolved experiment configuration.
      model_dir: holds config.json, checkpoints/, train/ summaries, export/.
      eval_examples: test images for the clean accuracy logged at each
        export (0 to skip).
      stop_after: stop (checkpointed, not exported) once this step is
        reached; for tests that simulate an interrupted run.
      verbose: 1 shows a progress bar, 0 is silent (non-chief workers are
        always silent).
      strategy: the strategy of ``config.train.strategy``, when the caller
        had to build it first (``multi_worker`` and ``tpu`` must exist before
        any other TensorFlow op); None builds it here.

    Returns:
      The final step, the last metrics, the export directory and wall time.

    Raises:
      ValueError: invalid configuration or a model_dir of another run.
      data.DatasetNotFoundError: the data cannot be found (before any work).
      NonFiniteLossError: a loss became NaN/Inf; the last good checkpoint is
        left in place.
    """
    validate_config(config)
    data.describe_source(config.data)  # fail fast when the data is missing
    check_model_dir(config, model_dir)
    t = config.train

    if strategy is None:
        strategy = distribute.get_strategy(t.strategy, t.num_gpus)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"--batch_size={t.batch_size} must be divisible by the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={t.strategy}"
        )
    if t.jit_compile and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        # TensorFlow: "Collectives are not yet implemented for CPU devices
        # when compiling with XLA"; the step's gradient all-reduce is one.
        raise ValueError(
            f"--jit_compile cannot compile the cross-replica gradient sum on CPU devices "
            f"({strategy.num_replicas_in_sync} replicas of --strategy={t.strategy}); drop --jit_compile, "
            "or use GPUs"
        )
    os.makedirs(model_dir, exist_ok=True)
    chief = distribute.is_chief(strategy)
    # Every worker takes part in every save (a save can run collectives);
    # only the chief's files land in model_dir, the others go to a scratch
    # directory that is removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix="jarn_tf-%s%d-" % distribute.task(strategy))
    try:
        return _train(config, model_dir, strategy, chief, scratch or model_dir, eval_examples, stop_after, verbose)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _train(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    strategy: tf.distribute.Strategy,
    chief: bool,
    write_dir: str,
    eval_examples: int,
    stop_after: Optional[int],
    verbose: int,
) -> TrainResult:
    """``train`` once the strategy is known; this process writes to ``write_dir``."""
    t = config.train
    info = data.dataset_info(config.data.dataset)
    verbose = verbose if chief else 0
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(t.seed)

    with mixed_precision_scope(t.mixed_precision):
        trainer = build_trainer(config, info, strategy)
    with strategy.scope():
        checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items())
        manager = tf.train.CheckpointManager(
            checkpoint,
            os.path.join(write_dir, CHECKPOINT_DIR),
            max_to_keep=t.keep_checkpoints if chief else 1,
            step_counter=trainer.step,
        )
    # Every worker restores the chief's latest checkpoint, so a restarted
    # multi-worker job resumes from one step on all workers.
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    start = int(trainer.step.numpy())
    if latest:
        logging.info("Restored %s at step %d.", latest, start)
    if chief:
        config_lib.write_config(config, os.path.join(model_dir, CONFIG_FILE))

    end = t.train_steps if stop_after is None else min(t.train_steps, stop_after)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(
            config.data, t.batch_size, t.seed, start_step=start, input_context=ctx
        )
    )
    iterator = iter(dataset)
    loops = _LoopFunctions(trainer, strategy)
    writer = SummaryWriter(model_dir, "train", enabled=chief)
    eval_writer = SummaryWriter(model_dir, "eval", enabled=chief)
    summary_images = tf.function(trainer.summary_images)
    fixed_images, fixed_labels = _fixed_summary_batch(config)

    def do_export(step: int) -> str:
        export_dir = os.path.join(write_dir, EXPORT_DIR)
        classifier = trainer.export_model()
        metadata = {
            "dataset": config.data.dataset,
            "num_classes": info.num_classes,
            "step": step,
            "mode": t.mode,
            "config": config.to_dict(),
        }
        if eval_examples and chief:  # the other workers' exports are thrown away
            acc = _evaluate_clean(classifier, config, eval_examples)
            metadata["clean_accuracy"] = {"value": acc, "num_test_examples": eval_examples}
            eval_writer.scalars(step, {"eval/clean_accuracy": acc})
        export.export_classifier(classifier, export_dir, info.image_shape, metadata)
        return export_dir

    shown = ("train/xent", "train/accuracy", "train/adv_loss", "train/disc_accuracy")
    # The values shown are already means over the current summary window.
    progbar = keras.utils.Progbar(
        t.train_steps, verbose=verbose, stateful_metrics=[k.split("/")[-1] for k in shown]
    )
    if verbose and start:
        progbar.update(start)
    # Steps after which the host has work: summaries, checkpoints, exports,
    # images, and a progress update every steps_per_loop steps.
    intervals = [t.summary_every, t.checkpoint_every, t.steps_per_loop, t.export_every, t.image_summary_every]
    tic = time.time()
    window_start, window_steps = time.time(), 0
    step = start
    last: Dict[str, float] = {}
    export_dir = None
    preempted = False
    last_saved = start if latest else None
    any_worker = distribute.AnyWorker(strategy)

    def save(step: int) -> None:
        nonlocal last_saved
        manager.save(checkpoint_number=step, check_interval=False)
        last_saved = step
    with _PreemptionWatch() as watch:
        while step < end:
            # Run up to the next step where the host has work to do.
            stop = _next_stop(step, end, intervals)
            for _, n, first, rest in _chunks(trainer, step, stop, t.steps_per_loop):
                loops.get(first, rest)(iterator, tf.constant(n, tf.int64))
            window_steps += stop - step
            step = int(trainer.step.numpy())
            bad = int(loops.bad_step.numpy())
            if bad >= 0:
                kept = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
                raise NonFiniteLossError(
                    f"Non-finite loss at step {bad}; stopped at step {step}. The last good checkpoint "
                    f"({kept or 'none'}) was left untouched."
                )
            values = trainer.metrics.result()
            if verbose:
                progbar.update(step, [(k.split("/")[-1], v) for k, v in values.items() if k in shown])
            if step % t.summary_every == 0 or step == end:
                elapsed = time.time() - window_start
                values["train/examples_per_second"] = window_steps * t.batch_size / max(elapsed, 1e-9)
                values.update(trainer.learning_rates())
                writer.scalars(step, values)
                last = values
                trainer.metrics.reset()
                window_start, window_steps = time.time(), 0
            if t.image_summary_every and (step % t.image_summary_every == 0 or step == end):
                writer.images(step, summary_images(fixed_images, fixed_labels), _NUM_SUMMARY_IMAGES)
            if step % t.checkpoint_every == 0:
                save(step)
            if t.export_every and step % t.export_every == 0 and step < t.train_steps:
                export_dir = do_export(step)
            if any_worker(watch.requested):
                preempted = True
                break

    if last_saved != step:
        save(step)
    if step >= t.train_steps:
        export_dir = do_export(step)
    if preempted:
        logging.warning("Preempted: checkpoint saved at step %d; run again to resume.", step)
    writer.close()
    eval_writer.close()
    any_worker(False)  # a barrier: the workers finish together
    return TrainResult(
        start_step=start,
        step=step,
        metrics=last,
        export_dir=export_dir if chief else None,
        seconds=time.time() - tic,
        trainer=trainer,
        preempted=preempted,
        chief=chief,
    )
