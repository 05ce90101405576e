"""What the AutoAttack algorithms share: the model type, the cache of compiled functions,
per-example broadcasting, seeds, the reference's random start and targets, and the "rows" that
let a loop retire a row (an image and a target) as soon as its example is settled."""

from __future__ import annotations

import weakref
from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

ModelFn = Callable[[tf.Tensor], tf.Tensor]

# model_fn -> {settings key: compiled function}. Weak keys, and the compiled functions only hold
# a weak reference to model_fn, so a cache entry dies with its model_fn.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_for(model_fn: ModelFn, key: tuple, builder: Callable[[Callable[[], ModelFn]], Callable]):
    """Returns builder(get_model_fn), cached per model_fn and key where model_fn allows weakrefs."""
    try:
        ref = weakref.ref(model_fn)
        per_model = _COMPILED.setdefault(model_fn, {})
    except TypeError:
        return builder(lambda: model_fn)
    if key not in per_model:
        per_model[key] = builder(ref)
    return per_model[key]


def broadcast_per_example(mask: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1], to broadcast a per-example value over NHWC images."""
    return tf.reshape(mask, [-1, 1, 1, 1])


def stream_seed(seed: int, stream: int = 0) -> tf.Tensor:
    return tf.constant([int(seed), int(stream)], tf.int64)


def as_inputs(images, labels):
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected images [N, H, W, C] and labels [N]; got {images.shape}, {labels.shape}.")
    return images, labels


def batched_logits(model_fn: ModelFn, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    out = [
        np.asarray(model_fn(tf.convert_to_tensor(images[i : i + batch_size])), np.float32)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0) if out else np.zeros([0, 0], np.float32)


def ranked_targets(logits: np.ndarray, num_target_classes: int) -> list:
    """Targets of the reference: the 2nd, 3rd, ... largest clean logit of each example."""
    num_classes = logits.shape[-1]
    order = np.argsort(-logits, axis=-1, kind="stable")
    return [order[:, rank - 1] for rank in range(2, min(num_target_classes + 2, num_classes + 1))]


def random_start(images: np.ndarray, eps: float, seed: tf.Tensor) -> tf.Tensor:
    """The reference's L-inf random start: x + eps t / (max |t| + 1e-12), t ~ U(-1, 1), in [0, 1]."""
    t = tf.random.stateless_uniform(images.shape, seed=seed, minval=-1.0, maxval=1.0)
    t_max = tf.reduce_max(tf.abs(t), axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(images + eps * t / (t_max + 1e-12), 0.0, 1.0)


def shrinking_invariants(structure):
    """Shape invariants of while-loop state whose per-row tensors shrink: [None, ...] for rank >= 1."""
    return tf.nest.map_structure(
        lambda t: tf.TensorShape([None] + t.shape.as_list()[1:]) if t.shape.rank else t.shape, structure
    )


def retire_rows(rows: Dict[str, tf.Tensor], out: Dict[str, tf.Tensor], done: tf.Tensor, result) -> tuple:
    """Stops work on finished rows: writes their results into ``out``, keeps the others.

    The attacks below work on "rows" (an image, and for the targeted attacks one target class) and
    drop every row whose example is settled, so no forward or backward pass is spent on it again;
    official AutoAttack (whose verdicts do not change after that point) keeps computing on it.

    Args:
      rows: per-row tensors of the rows still worked on, with ``row``, their index in ``out``.
      out: full-size result tensors, one entry per row of the call.
      done: bool [active rows], the rows to retire.
      result: rows -> {name of an ``out`` entry: the retired rows' value}.

    Returns:
      (the rows still worked on, ``out`` with the retired rows' results written).
    """

    def retire():
        finished = tf.where(done)[:, 0]
        indices = tf.gather(rows["row"], finished)[:, None]
        values = result({k: tf.gather(v, finished) for k, v in rows.items()})
        written = dict(out)
        for name, value in values.items():
            written[name] = tf.tensor_scatter_nd_update(out[name], indices, value)
        kept = tf.where(tf.logical_not(done))[:, 0]
        return {k: tf.gather(v, kept) for k, v in rows.items()}, written

    return tf.cond(tf.reduce_any(done), retire, lambda: (dict(rows), dict(out)))


def new_rows(images: tf.Tensor, labels: tf.Tensor, **per_row: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The per-row state of a call: its index, image and label, and ``per_row``."""
    return dict(row=tf.range(tf.shape(images)[0]), images=images, labels=labels, **per_row)


def group_done(flags: tf.Tensor, group: tf.Tensor, num_groups: tf.Tensor) -> tf.Tensor:
    """Per row: whether any row of its group (its example) has ``flags`` set."""
    per_group = tf.math.unsorted_segment_max(tf.cast(flags, tf.int32), group, num_groups) > 0
    return tf.gather(per_group, group)


def target_rows(images: np.ndarray, labels: np.ndarray, targets: Sequence[np.ndarray]) -> tuple:
    """Rows (image, label, target, group) for every example and target, target-major."""
    n = len(labels)
    return (
        np.concatenate([images] * len(targets)),
        np.concatenate([labels] * len(targets)),
        np.concatenate([np.asarray(t, np.int32) for t in targets]).astype(np.int32),
        np.tile(np.arange(n, dtype=np.int32), len(targets)),
    )


def first_success(found: np.ndarray, values: np.ndarray, num_targets: int) -> tuple:
    """Per example: whether any target's row succeeded, and the row of the first target that did."""
    found = found.reshape(num_targets, -1)
    any_found = found.any(axis=0)
    first = np.argmax(found, axis=0)  # the first True (0 where none)
    n = found.shape[1]
    return any_found, values.reshape(num_targets, n, *values.shape[1:])[first, np.arange(n)], first
