"""Choosing a tf.distribute strategy from a name."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored")


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


def get_strategy(name: str, num_gpus: int = 0) -> tf.distribute.Strategy:
    """Builds the strategy called ``name``.

    Args:
      name: ``default`` (no distribution), ``one_device`` (the first GPU, else
        the CPU) or ``mirrored`` (synchronous data parallelism over the local
        GPUs, or over the logical CPU devices when there is no GPU).
      num_gpus: for ``mirrored``, how many GPUs to use; 0 means all.

    Returns:
      The strategy.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            devices = [d.name for d in gpus[: num_gpus or len(gpus)]]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"Unknown --strategy={name!r}; expected one of {STRATEGIES}.")
