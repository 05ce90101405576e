"""AutoAttack (Croce & Hein, ICML 2020) for L-inf, natively in TensorFlow 2.

The "standard" L-inf ensemble of the reference implementation (fra31/auto-attack):

* APGD-CE: auto-PGD on cross-entropy, 100 iterations, 1 restart.
* APGD-T: auto-PGD on the targeted DLR loss, 9 target classes, 100 iterations, 1 restart each.
* FAB-T: targeted FAB, 9 target classes, 100 iterations, 1 restart each (no random start).
* Square: score-based random search on the margin, 5000 queries, p_init = 0.8, 1 restart.

``run_autoattack`` applies each attack only to the examples that are still robust and reports the
per-example worst case. Images are float32 NHWC in [0, 1], eps is in [0, 1] units and ``model_fn``
maps images to logits (e.g. ``lambda x: model(x, training=False)``). The inner loops are compiled
with ``tf.function`` once per (model_fn, attack settings, image shape) and accept any batch size.

Which examples break is the reference's (``tests/test_official_reference.py`` checks it against the
official code's recorded outputs); the work is less. The attacks run on "rows" (an image and, for
APGD-T and FAB-T, one target class; all targets of an example in one batch) and retire a row from
the loop as soon as its example is settled, so no forward or backward pass is spent on it again,
without retracing (the loops' per-row state shrinks, ``common.retire_rows``), and Square does not query proposals
whose margin is known (the image unchanged, or the same proposal rejected at the same point before).
On CPUs, run with oneDNN (``TF_ENABLE_ONEDNN_OPTS=1``, which the commands set;
``jarn_tf.core.startup.prefer_onednn``): the input gradient of strided convolutions is about 3x faster
with it.

One module per algorithm: ``apgd`` (APGD-CE and APGD-T, and the DLR losses), ``fab`` (FAB-T),
``square`` (Square), ``ensemble`` (``run_autoattack``), and ``common`` (what they share). Every
public name is importable from this package: ``from jarn_tf.robustness.autoattack import
run_autoattack``.
"""

from __future__ import annotations

from jarn_tf.robustness.autoattack.apgd import (  # noqa: F401
    APGD_LOSSES,
    APGD_MOMENTUM,
    APGD_RHO,
    apgd,
    apgd_targeted,
    attack_loss,
    dlr_loss,
    dlr_loss_targeted,
)
from jarn_tf.robustness.autoattack.common import ModelFn  # noqa: F401
from jarn_tf.robustness.autoattack.ensemble import ATTACKS, run_autoattack  # noqa: F401
from jarn_tf.robustness.autoattack.fab import (  # noqa: F401
    FAB_ALPHA_MAX,
    FAB_BETA,
    FAB_ETA,
    fab_minimal_perturbation,
    fab_targeted,
    project_hyperplane_linf,
)
from jarn_tf.robustness.autoattack.square import SQUARE_P_BOUNDARIES, square  # noqa: F401
