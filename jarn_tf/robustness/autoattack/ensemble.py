"""The standard L-inf AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square): ``run_autoattack`` applies
each attack only to the examples that are still robust and reports the per-example worst case."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from jarn_tf.robustness.attacks import project_linf
from jarn_tf.robustness.autoattack.apgd import apgd, apgd_targeted
from jarn_tf.robustness.autoattack.common import ModelFn, as_inputs, batched_logits
from jarn_tf.robustness.autoattack.fab import fab_targeted
from jarn_tf.robustness.autoattack.square import square

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def run_autoattack(
    model_fn: ModelFn,
    images,
    labels,
    eps: float,
    attacks: Sequence[str] = ATTACKS,
    seed: int = 0,
    batch_size: Optional[int] = None,
    num_steps: int = 100,
    num_target_classes: int = 9,
    fab_steps: int = 100,
    num_queries: int = 5000,
    p_init: float = 0.8,
    log: Optional[Callable[[str], None]] = None,
    targets_per_call: Optional[int] = None,
) -> Dict[str, object]:
    """Runs the attacks in order, each only on the examples that are still robust.

    Defaults are AutoAttack's "standard" L-inf version. Clean-misclassified examples count as
    broken (their adversarial example is the clean image). With ``log``, reports progress as the
    reference's log does: the clean accuracy, then after each chunk of ``batch_size`` examples how
    many the attack broke, and after each attack the robust accuracy and the time so far.

    Args:
      model_fn: images -> logits.
      images: float32 [N, H, W, C] in [0, 1].
      labels: int [N].
      eps: L-inf radius.
      attacks: names from ``ATTACKS``, run in the given order.
      seed: seed of the randomised attacks.
      batch_size: examples per attack call (None: all still-robust examples at once). APGD-T and
        FAB-T attack ``targets_per_call`` targets of each example in one batch, so their batches
        have up to batch_size * targets_per_call rows.
      num_steps: APGD iterations.
      num_target_classes: targets of APGD-T and FAB-T.
      fab_steps: FAB-T iterations.
      num_queries: Square queries.
      p_init: Square's initial fraction of changed pixels.
      log: called with one line of progress at a time (e.g. ``print``); None is quiet.
      targets_per_call: target classes of APGD-T and FAB-T attacked in one batch (None: all).

    Returns:
      dict with ``robust`` (bool [N], worst case over the attacks run), ``per_attack`` ({name:
      bool [N] robust after that attack, cumulative}), ``adversarial`` (float32 [N, H, W, C]),
      ``seconds`` ({name: wall time}) and ``clean`` (bool [N], correctly classified).
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attacks {unknown}; expected names from {ATTACKS}.")
    images, labels = as_inputs(images, labels)
    attack_fns = {
        "apgd-ce": lambda x, y: apgd(model_fn, x, y, eps, num_steps=num_steps, loss="ce", seed=seed),
        "apgd-t": lambda x, y: apgd_targeted(
            model_fn,
            x,
            y,
            eps,
            num_steps=num_steps,
            num_target_classes=num_target_classes,
            seed=seed,
            targets_per_call=targets_per_call,
        ),
        "fab-t": lambda x, y: fab_targeted(
            model_fn,
            x,
            y,
            eps,
            num_steps=fab_steps,
            num_target_classes=num_target_classes,
            targets_per_call=targets_per_call,
        ),
        "square": lambda x, y: square(model_fn, x, y, eps, num_queries=num_queries, p_init=p_init, seed=seed),
    }
    log = log or (lambda message: None)
    first = time.perf_counter()
    clean = np.argmax(batched_logits(model_fn, images), axis=-1) == labels
    robust = clean.copy()
    adversarial = images.copy()
    per_attack, seconds = {}, {}
    n = len(labels)
    log(f"clean accuracy: {np.mean(clean) if n else 0.0:.2%} ({int(np.sum(clean))}/{n})")
    for name in attacks:
        start = time.perf_counter()
        todo = np.nonzero(robust)[0]
        step = len(todo) if batch_size is None else int(batch_size)
        chunks = -(-len(todo) // max(step, 1))
        for chunk, begin in enumerate(range(0, len(todo), max(step, 1))):
            idx = todo[begin : begin + step]
            x_adv = np.asarray(attack_fns[name](images[idx], labels[idx]), np.float32)
            x_adv = np.asarray(project_linf(x_adv, images[idx], eps))  # guard the constraint
            broken = np.argmax(batched_logits(model_fn, x_adv), axis=-1) != labels[idx]
            adversarial[idx[broken]] = x_adv[broken]
            robust[idx[broken]] = False
            if chunks > 1:
                log(
                    f"{name} - {chunk + 1}/{chunks} - {int(np.sum(broken))} out of {len(idx)} "
                    f"successfully perturbed ({time.perf_counter() - start:.1f} s)"
                )
        per_attack[name] = robust.copy()
        seconds[name] = time.perf_counter() - start
        log(
            f"robust accuracy after {name.upper()}: {np.mean(robust) if n else 0.0:.2%} "
            f"({int(np.sum(robust))}/{n} still robust; {seconds[name]:.1f} s, total "
            f"{time.perf_counter() - first:.1f} s)"
        )
    return {
        "robust": robust,
        "per_attack": per_attack,
        "adversarial": adversarial,
        "seconds": seconds,
        "clean": clean,
    }
