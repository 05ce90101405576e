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
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from jarn_tf import config as config_lib
from jarn_tf.core import checkpoints, data, distribute
from jarn_tf.core.checkpoints import (  # noqa: F401 (CheckpointRestoreError, checkpoint_candidates: this module's API too)
    CHECKPOINT_DIR,
    CheckpointRestoreError,
    checkpoint_candidates,
    restore_newest_readable,
)
from jarn_tf.core.summaries import SummaryWriter
from jarn_tf.core.trainer import Trainer, build_trainer, trainer_class

CONFIG_FILE = "config.json"
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
      export_dir: where the run was exported, if it was.
      seconds: wall time of the training loop.
      trainer: the live trainer (networks, optimizers), for inspection.
      preempted: it stopped early on SIGTERM, after saving a checkpoint.
      chief: this process wrote the run's files (always, except on the
        non-chief workers of ``--strategy=multi_worker``).
      eval_seconds: wall time of the evaluations (``--eval_every`` and the
        export's), included in ``seconds``.
    """

    start_step: int
    step: int
    metrics: Dict[str, float]
    export_dir: Optional[str]
    seconds: float
    trainer: Trainer
    preempted: bool = False
    chief: bool = True
    eval_seconds: float = 0.0


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

    Each config section checks its own fields (``ExperimentConfig.validate``);
    the mode's trainer checks its networks against the dataset's image shape
    (``Trainer.check_image_shape``).

    Raises:
      ValueError: with the offending flag in its message.
    """
    config.validate()
    image_shape = data.dataset_info(config.data.dataset).image_shape
    trainer_class(config.mode).check_image_shape(config, image_shape)


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
    """Refuses a model_dir that is not a directory or holds a run of another configuration.

    Args:
      config: the configuration asked for.
      model_dir: the run's directory (it need not exist yet).

    Raises:
      ValueError: ``model_dir`` is a file, its config.json cannot be read, or
        it holds a run with a different configuration; the message says what
        to do.
    """
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(
            f"--model_dir={model_dir} is a file, not a directory. Pass a new directory, or the directory "
            "of the run to resume."
        )
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        stored = config_lib.read_config(path)
        if not isinstance(stored, dict):
            raise ValueError("it holds no JSON object")
    except (OSError, ValueError) as e:  # a JSONDecodeError is a ValueError
        raise ValueError(
            f"{path} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}), so this run "
            "cannot be resumed safely. Restore the file, or use a new --model_dir."
        ) from e
    diffs = config_lib.config_differences(stored, config.to_dict())
    if diffs:
        raise ValueError(
            f"--model_dir={model_dir} holds a run with a different configuration "
            f"({'; '.join(diffs)}). Use a new --model_dir, or the same flags to resume."
        )


def next_stop(step: int, end: int, intervals: Sequence[int]) -> int:
    """The first step after ``step`` that is a multiple of an interval, or ``end``."""
    return min([end] + [(step // i + 1) * i for i in intervals if i])


class StepRunner:
    """Runs a trainer's steps in compiled chunks: the public runner API.

    ``strategy.run`` runs ``trainer.replica_step`` on every replica; a
    ``tf.function`` loop runs a chunk of up to ``steps_per_loop`` steps whose
    steps after the first share a variant, one compiled loop per (first,
    rest) variant pair. Every named loss of every step is summed over the
    replicas and checked: the first step with a NaN/Inf loss and the names of
    those losses are kept (``nonfinite``), and the caller decides what to do
    (``train`` stops before writing another checkpoint).

    Args:
      trainer: the mode's trainer (built in ``strategy``'s scope).
      strategy: the distribution strategy.
      steps_per_loop: most steps in one compiled loop.
      jit_compile: compile the replica step with XLA (the input iterator
        stays outside the compiled function).
    """

    def __init__(
        self,
        trainer: Trainer,
        strategy: tf.distribute.Strategy,
        steps_per_loop: int,
        jit_compile: bool = False,
    ):
        self.trainer = trainer
        self.strategy = strategy
        self.steps_per_loop = steps_per_loop
        self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="nonfinite_step")
        self.bad_losses = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_losses")
        self.loss_names: List[str] = []  # bit i of bad_losses is loss_names[i]
        self.variants_run: List[Tuple[Hashable, Hashable]] = []
        self._fns: Dict[Tuple[Hashable, Hashable], Callable] = {}
        self._step_fn = (
            tf.function(trainer.replica_step, jit_compile=True) if jit_compile else trainer.replica_step
        )

    def _loss_bit(self, name: str) -> int:
        if name not in self.loss_names:
            self.loss_names.append(name)
        return 1 << self.loss_names.index(name)

    def _one_step(self, iterator, variant) -> None:
        per_replica = self.strategy.run(self._step_fn, args=(next(iterator), variant))
        bad = tf.constant(0, tf.int64)
        for name, value in per_replica.items():
            total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            bit = tf.constant(self._loss_bit(name), tf.int64)
            bad = tf.bitwise.bitwise_or(bad, tf.where(tf.math.is_finite(total), tf.zeros_like(bit), bit))
        # Remember the first step with a non-finite loss, and which ones.
        first_bad = tf.logical_and(self.bad_step < 0, bad != 0)
        self.bad_step.assign(tf.where(first_bad, self.trainer.step, self.bad_step))
        self.bad_losses.assign(tf.where(first_bad, bad, self.bad_losses))
        self.trainer.step.assign_add(1)

    def _loop(self, first: Hashable, rest: Hashable) -> Callable:
        key = (first, rest)
        if key not in self._fns:

            @tf.function
            def loop(iterator, num_steps):
                self._one_step(iterator, first)
                for _ in tf.range(num_steps - 1):
                    self._one_step(iterator, rest)

            self._fns[key] = loop
        return self._fns[key]

    def run(self, iterator, end: int) -> int:
        """Runs from the trainer's current step up to step ``end``.

        Args:
          iterator: a (distributed) iterator of training batches.
          end: the step to stop at.

        Returns:
          The trainer's step afterwards (reading it waits for the device).
        """
        step = int(self.trainer.step.numpy())
        while step < end:
            first = self.trainer.variant(step)
            rest = self.trainer.variant(step + 1) if step + 1 < end else first
            n = 1
            while n < self.steps_per_loop and step + n < end and self.trainer.variant(step + n) == rest:
                n += 1
            self._loop(first, rest)(iterator, tf.constant(n, tf.int64))
            self.variants_run.append((first, rest))
            step += n
        return int(self.trainer.step.numpy())

    def nonfinite(self) -> Optional[Tuple[int, List[str]]]:
        """The first step with a NaN/Inf loss and the names of those losses, or None."""
        bad = int(self.bad_step.numpy())
        if bad < 0:
            return None
        mask = int(self.bad_losses.numpy())
        return bad, [name for i, name in enumerate(self.loss_names) if mask >> i & 1]


def _fixed_summary_batch(config: config_lib.ExperimentConfig) -> Tuple[tf.Tensor, tf.Tensor]:
    ds = data.make_eval_dataset(config.data, batch_size=_NUM_SUMMARY_IMAGES, num_examples=_NUM_SUMMARY_IMAGES)
    return next(iter(ds))


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
      eval_examples: test images of the evaluations (``trainer.evaluate``)
        every ``config.runtime.eval_interval`` steps and at each export,
        logged under ``eval/`` (0 to skip them).
      stop_after: stop (checkpointed, not exported) once this step is
        reached; for tests that simulate an interrupted run.
      verbose: 1 shows a progress bar, 0 is silent (non-chief workers are
        always silent).
      strategy: the strategy of ``config.runtime.strategy``, when the caller
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
    r, o = config.runtime, config.optimizer

    if strategy is None:
        strategy = distribute.get_strategy(r.strategy, r.num_gpus)
    if o.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"--batch_size={o.batch_size} must be divisible by the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={r.strategy}"
        )
    if r.jit_compile and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        # TensorFlow: "Collectives are not yet implemented for CPU devices
        # when compiling with XLA"; the step's gradient all-reduce is one.
        raise ValueError(
            f"--jit_compile cannot compile the cross-replica gradient sum on CPU devices "
            f"({strategy.num_replicas_in_sync} replicas of --strategy={r.strategy}); drop --jit_compile, "
            "or use GPUs"
        )
    # Both splits are read (and kept) now, so a damaged data file fails
    # before model_dir is touched.
    for split in data.SPLITS:
        data.load_arrays(config.data, split)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--model_dir={model_dir} cannot be created ({checkpoints.one_line(e)}).") from e
    chief = distribute.is_chief(strategy)
    # Every worker takes part in every save (a save can run collectives);
    # only the chief's files land in model_dir, the others go to a scratch
    # directory that is removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix="jarn_tf-%s%d-" % distribute.task(strategy))
    try:
        return _train(
            config, model_dir, strategy, chief, scratch or model_dir, eval_examples, stop_after, verbose
        )
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
    r, o = config.runtime, config.optimizer
    info = data.dataset_info(config.data.dataset)
    verbose = verbose if chief else 0
    if r.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    with mixed_precision_scope(config.model.mixed_precision):
        trainer = build_trainer(config, info, strategy)
    with strategy.scope():
        checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items())
        manager = tf.train.CheckpointManager(
            checkpoint,
            os.path.join(write_dir, CHECKPOINT_DIR),
            max_to_keep=r.keep_checkpoints if chief else 1,
            step_counter=trainer.step,
        )
    # Every worker restores the chief's newest readable checkpoint (all read
    # the same files, so they skip the same damaged ones), so a restarted
    # multi-worker job resumes from one step on all workers.
    latest = restore_newest_readable(checkpoint, os.path.join(model_dir, CHECKPOINT_DIR))
    start = int(trainer.step.numpy())
    if latest:
        logging.info("Restored %s at step %d.", latest, start)
    if chief:
        config_lib.write_config(config, os.path.join(model_dir, CONFIG_FILE))

    end = o.train_steps if stop_after is None else min(o.train_steps, stop_after)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(
            config.data, o.batch_size, config.seed, start_step=start, input_context=ctx
        )
    )
    iterator = iter(dataset)
    runner = StepRunner(trainer, strategy, r.steps_per_loop, r.jit_compile)
    writer = SummaryWriter(model_dir, "train", enabled=chief)
    eval_writer = SummaryWriter(model_dir, "eval", enabled=chief)
    summary_images = tf.function(trainer.summary_images)
    fixed_images, fixed_labels = _fixed_summary_batch(config)

    eval_seconds = 0.0

    def evaluate(step: int) -> Dict[str, float]:
        """The trainer's evaluation, logged under eval/ with its cost (eval/seconds)."""
        nonlocal eval_seconds
        tic = time.time()
        evaluation = trainer.evaluate(eval_examples)
        seconds = time.time() - tic
        eval_seconds += seconds
        eval_writer.scalars(step, {**evaluation, "eval/seconds": seconds})
        return evaluation

    def do_export(step: int) -> str:
        export_dir = os.path.join(write_dir, EXPORT_DIR)
        metadata = {
            "dataset": config.data.dataset,
            "num_classes": info.num_classes,
            "step": step,
            "mode": config.mode,
            "config": config.to_dict(),
        }
        evaluation: Dict[str, float] = {}
        if eval_examples and chief:  # the other workers' exports are thrown away
            evaluation = evaluate(step)
        trainer.export(export_dir, metadata, evaluation, eval_examples)
        return export_dir

    shown = trainer.progress_metrics
    # The values shown are already means over the current summary window.
    progbar = keras.utils.Progbar(
        o.train_steps, verbose=verbose, stateful_metrics=[k.split("/")[-1] for k in shown]
    )
    if verbose and start:
        progbar.update(start)
    # Steps after which the host has work: summaries, checkpoints, exports,
    # images, and a progress update every steps_per_loop steps.
    eval_every = r.eval_interval(o.train_steps) if eval_examples else 0
    intervals = [
        r.summary_every,
        r.checkpoint_every,
        r.steps_per_loop,
        r.export_every,
        r.image_summary_every,
        eval_every,
    ]
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
            stop = next_stop(step, end, intervals)
            window_steps += stop - step
            step = runner.run(iterator, stop)
            bad = runner.nonfinite()
            if bad is not None:
                kept = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
                raise NonFiniteLossError(
                    f"Non-finite loss at step {bad[0]}; stopped at step {step}. Not finite: "
                    f"{', '.join(bad[1])}. The last good checkpoint ({kept or 'none'}) was left untouched."
                )
            values = trainer.metrics.result()
            if verbose:
                progbar.update(step, [(k.split("/")[-1], v) for k, v in values.items() if k in shown])
            if step % r.summary_every == 0 or step == end:
                elapsed = time.time() - window_start
                values["train/examples_per_second"] = window_steps * o.batch_size / max(elapsed, 1e-9)
                values.update(trainer.learning_rates())
                writer.scalars(step, values)
                last = values
                trainer.metrics.reset()
                window_start, window_steps = time.time(), 0
            if r.image_summary_every and (step % r.image_summary_every == 0 or step == end):
                writer.images(step, summary_images(fixed_images, fixed_labels), _NUM_SUMMARY_IMAGES)
            if step % r.checkpoint_every == 0:
                save(step)
            exporting = r.export_every and step % r.export_every == 0 and step < o.train_steps
            if exporting:
                export_dir = do_export(step)  # evaluates too
            elif eval_every and step % eval_every == 0 and step < o.train_steps and chief:
                evaluate(step)
            if any_worker(watch.requested):
                preempted = True
                break

    if last_saved != step:
        save(step)
    if step >= o.train_steps:
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
        eval_seconds=eval_seconds,
    )
