"""Choosing a tf.distribute strategy from a name, and multi-worker helpers.

``multi_worker`` reads the standard ``TF_CONFIG`` environment variable
(``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
"index": i}}``); every worker runs the same command. Worker 0 (or the
``chief`` task, when the cluster names one) writes the checkpoints,
summaries and exports; the other workers take part in every collective
(saving included) but write to throw-away directories.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import tensorflow as tf

from jarn_tf.config import STRATEGIES


def configure_cpu_devices(num_devices: int) -> None:
    """Splits the host CPU into ``num_devices`` logical devices.

    Lets ``mirrored`` run over several replicas on a machine without GPUs
    (for trying distribution out and for tests). Must run before TensorFlow
    initialises its devices.

    Args:
      num_devices: number of logical CPU devices; <= 1 leaves the CPU alone.
    """
    if num_devices <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    if existing and len(existing) == num_devices:
        return
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )


def read_tf_config(environ: Optional[dict] = None) -> dict:
    """Parses and checks ``TF_CONFIG`` for ``--strategy=multi_worker``.

    Pure Python: runs before TensorFlow is initialised, so a bad cluster
    description fails before any worker waits for the others.

    Args:
      environ: the environment (default ``os.environ``).

    Returns:
      The parsed TF_CONFIG.

    Raises:
      ValueError: TF_CONFIG missing, not JSON, or inconsistent.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    hint = (
        "Set it on every worker, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:2222\", "
        "\"host2:2222\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}', or try several workers "
        "on this machine with run_scripts/multi_worker_local.sh N <train flags>. For the GPUs of one "
        "machine use --strategy=mirrored."
    )
    if not raw:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment variable. {hint}")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}). {hint}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no \"cluster\". {hint}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no \"task\" with \"type\" and \"index\". {hint}")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise ValueError(
            f"TF_CONFIG's cluster has {sorted(unknown)} jobs; MultiWorkerMirroredStrategy takes only "
            "\"chief\" and \"worker\" (no parameter servers or evaluators)."
        )
    task_type, index = task["type"], task["index"]
    addresses = cluster.get(task_type)
    if not isinstance(addresses, list) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise ValueError(
            f"TF_CONFIG's task {task_type!r} #{index} is not in its cluster {json.dumps(cluster)}."
        )
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG's cluster may have at most one \"chief\".")
    return tf_config


def get_strategy(name: str, num_gpus: int = 0, tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """Builds the strategy called ``name``.

    ``multi_worker`` and ``tpu`` must be built before any other TensorFlow
    op runs (they configure the runtime); the training entry point does so.

    Args:
      name: ``default`` (no distribution), ``one_device`` (the first GPU, else
        the CPU), ``mirrored`` (synchronous data parallelism over the local
        GPUs, or over the logical CPU devices when there is no GPU),
        ``multi_worker`` (MultiWorkerMirroredStrategy over the workers of
        ``TF_CONFIG``, each with its local GPUs or its CPU) or ``tpu``
        (TPUStrategy).
      num_gpus: for ``mirrored``, how many GPUs to use; 0 means all.
      tpu: for ``tpu``, the TPU's name or ``grpc://`` address; None finds it
        from the environment (a TPU VM, or ``TPU_NAME``).

    Returns:
      The strategy.

    Raises:
      ValueError: unknown name, a bad TF_CONFIG, or no TPU to be found.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            devices = [d.name for d in gpus[: num_gpus or len(gpus)]]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"Unknown --strategy={name!r}; expected one of {STRATEGIES}.")


def _tpu_strategy(tpu: Optional[str]) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        where = f"at --tpu={tpu}" if tpu else "on this machine (no --tpu given, no TPU_NAME)"
        reason = (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
        raise ValueError(
            f"--strategy=tpu found no TPU {where}: {reason}. "
            "Run on a Cloud TPU VM (--tpu=local) or name the TPU (--tpu=NAME or grpc://ADDRESS)."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker_resolver(strategy: tf.distribute.Strategy):
    """The cluster resolver of a MultiWorkerMirroredStrategy, else None.

    A TPUStrategy has a resolver too, but one client process drives all of
    its hosts: for writing files it is a single process.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    return resolver if resolver is not None and resolver.task_type else None


def task(strategy: tf.distribute.Strategy) -> Tuple[str, int]:
    """(task type, task index) of this process; ("worker", 0) outside a cluster."""
    resolver = _multi_worker_resolver(strategy)
    if resolver is None:
        return "worker", 0
    return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of processes taking part in the strategy's collectives."""
    resolver = _multi_worker_resolver(strategy)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, [])) for job in ("chief", "worker"))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes checkpoints, summaries and exports.

    That is the ``chief`` task if the cluster has one, else worker 0, and the
    only process of any single-process strategy (TPUStrategy included: its
    host is the one process).
    """
    task_type, index = task(strategy)
    if task_type == "chief":
        return True
    if num_workers(strategy) == 1:
        return True
    jobs = _multi_worker_resolver(strategy).cluster_spec().as_dict()
    return task_type == "worker" and index == 0 and "chief" not in jobs


class AnyWorker:
    """Tells every worker whether a flag is set on any of them.

    One small all-reduce across workers, compiled once; every worker must
    call it at the same point of the loop. With a single process it is a
    plain read and runs nothing.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self._reduce = None
        if num_workers(strategy) > 1:

            @tf.function
            def reduce(flag: tf.Tensor) -> tf.Tensor:
                value = strategy.run(lambda f: tf.cast(f, tf.float32), args=(flag,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

            self._reduce = reduce

    def __call__(self, flag: bool) -> bool:
        if self._reduce is None:
            return bool(flag)
        return float(self._reduce(tf.constant(bool(flag)))) > 0
