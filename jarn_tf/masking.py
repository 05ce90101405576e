"""Gradient-masking checks of an evaluation.

The sanity checks of Carlini et al. (2019), "On Evaluating Adversarial
Robustness", section 5, that flag gradient masking (or a broken attack):

- ``masking_checks`` compares the accuracies of the attacks already run
  (PGD against FGSM, more steps, cross-entropy against margin loss,
  white-box against transfer, PGD against AutoAttack).
- ``eps_checks`` re-runs the strongest PGD attack at eps / 2 and at a large
  eps (``LARGE_EPS``) and checks accuracy against eps.

Each check is a ``Check``: its name, whether it passed, the numbers behind
the verdict and the warning printed when it fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from jarn_tf.eval_lib import AttackParams, AttackSpec, EvalOutput, evaluate
from jarn_tf.export import ModelFn


@dataclasses.dataclass
class Check:
    """One sanity check of the evaluation.

    Attributes:
      name: what is checked.
      passed: False suggests gradient masking (or a broken attack).
      detail: the numbers behind the verdict.
      message: one line for the warning printed when it fails.
    """

    name: str
    passed: bool
    detail: Dict[str, Any]
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def masking_checks(output: EvalOutput, specs: Sequence[AttackSpec], tolerance: float = 0.02) -> List[Check]:
    """Checks that warn of gradient masking.

    Each runs only when the attacks it compares were run:

    - ``pgd_beats_fgsm``: no example is robust to a PGD attack but broken by
      FGSM (iterative attacks must be at least as strong as one step);
      counted per PGD attack.
    - ``more_steps_not_better``: PGD accuracy does not rise with more steps
      (same loss).
    - ``xent_margin_agree``: PGD with the cross-entropy and with the margin
      loss reach accuracies within ``tolerance`` (saturated softmaxes make
      cross-entropy gradients vanish while margin gradients do not).
    - ``whitebox_beats_transfer``: a white-box PGD attack is at least as
      strong as the same attack transferred from another model.
    - ``blackbox_not_below_whitebox`` (with AutoAttack): AutoAttack and its
      parts run alone (``square`` is gradient-free) are not far below the best
      PGD accuracy.

    Args:
      output: per-example outcomes.
      specs: the attacks run.
      tolerance: allowed accuracy difference (fraction of examples).

    Returns:
      The checks run.
    """
    acc = output.accuracies()
    n = max(output.num_examples, 1)
    by_name = {s.name: s for s in specs}
    checks: List[Check] = []
    white_pgd = [s for s in specs if s.kind == "pgd" and not s.transfer]

    if "fgsm" in by_name and white_pgd:
        fgsm_wrong = ~output.correct["fgsm"]
        counts = {s.name: int(np.sum(output.correct[s.name] & fgsm_wrong)) for s in white_pgd}
        worst = max(counts.values())
        checks.append(
            Check(
                "pgd_beats_fgsm",
                worst <= tolerance * n,
                {"robust_to_pgd_but_not_fgsm": counts, "num_examples": n},
                f"{worst} examples resist PGD but not FGSM: PGD is weaker than one step, a sign of "
                f"gradient masking or a too-small step size.",
            )
        )

    for loss in ("xent", "margin"):
        runs = sorted((s.steps, acc[s.name]) for s in white_pgd if s.loss == loss)
        if len(runs) >= 2:
            rises = [
                {"from_steps": a[0], "to_steps": b[0], "from_accuracy": a[1], "to_accuracy": b[1]}
                for a, b in zip(runs, runs[1:])
                if b[1] > a[1] + tolerance
            ]
            checks.append(
                Check(
                    f"more_steps_not_better_{loss}",
                    not rises,
                    {"accuracy_by_steps": {str(k): v for k, v in runs}, "rises": rises},
                    f"PGD ({loss}) accuracy rises with more steps: {rises}.",
                )
            )

    pairs = {}
    for s in white_pgd:
        pairs.setdefault(s.steps, {})[s.loss] = acc[s.name]
    both = {k: v for k, v in pairs.items() if len(v) == 2}
    if both:
        diffs = {str(k): v["xent"] - v["margin"] for k, v in both.items()}
        worst = max(abs(d) for d in diffs.values())
        checks.append(
            Check(
                "xent_margin_agree",
                worst <= tolerance,
                {
                    "xent_minus_margin_accuracy": diffs,
                    "accuracy": {str(k): v for k, v in both.items()},
                    "tolerance": tolerance,
                },
                f"PGD with cross-entropy and margin losses disagree by up to {worst:.3f} in accuracy: "
                f"cross-entropy gradients may be masked (saturated softmax).",
            )
        )

    transfer = [s for s in specs if s.transfer]
    if transfer:
        detail, failed = {}, []
        for t in transfer:
            white = t.name[len("transfer_") :]
            if white in acc:
                detail[white] = {"white_box": acc[white], "transfer": acc[t.name]}
                if acc[white] > acc[t.name] + tolerance:
                    failed.append(white)
        if detail:
            checks.append(
                Check(
                    "whitebox_beats_transfer",
                    not failed,
                    {"accuracy": detail, "failed": failed, "tolerance": tolerance},
                    f"Transfer attacks beat white-box ones ({failed}): the model's own gradients "
                    f"are less useful than another model's, a sign of gradient masking.",
                )
            )

    aa = [s for s in specs if s.kind == "autoattack"]
    if aa and white_pgd:
        best_pgd = min(acc[s.name] for s in white_pgd)
        detail = {"best_pgd_accuracy": best_pgd, **{s.name: acc[s.name] for s in aa}}
        failed = [s.name for s in aa if acc[s.name] < best_pgd - tolerance]
        checks.append(
            Check(
                "blackbox_not_below_whitebox",
                not failed,
                {"accuracy": detail, "failed": failed, "tolerance": tolerance},
                f"{failed} reach far lower accuracy than PGD: PGD's gradients are unreliable.",
            )
        )
    return checks


LARGE_EPS = 0.5


def eps_checks(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    specs: Sequence[AttackSpec],
    output: EvalOutput,
    params: AttackParams,
    num_classes: int,
    tolerance: float = 0.02,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> List[Check]:
    """The eps-dependent checks of Carlini et al. (2019), with two extra PGD runs.

    Re-runs the strongest white-box PGD attack of ``specs`` (PGD-10 with the
    margin loss when none was run) at eps / 2 and at a large eps
    (``LARGE_EPS``, or 1 when eps is already that large), with the same
    step-to-eps ratio:

    - ``accuracy_not_rising_with_eps``: accuracy at eps / 2 is not below the
      accuracy at eps (minus ``tolerance``).
    - ``large_eps_reaches_chance``: at the large eps, accuracy is at most
      chance (1 / num_classes) plus ``tolerance``; an eps-ball of that size
      contains images of every class, so a model that stays accurate there
      is masking gradients.

    Args:
      model_fn: the evaluated model.
      dataset: the same examples as the main evaluation.
      specs: the attacks of the main evaluation.
      output: its per-example outcomes.
      params: its hyperparameters.
      num_classes: number of classes.
      tolerance: allowed accuracy difference.
      strategy: as for ``evaluate``.

    Returns:
      The two checks.
    """
    white = [s for s in specs if s.kind == "pgd" and not s.transfer]
    if white:
        spec = min(white, key=lambda s: float(np.mean(output.correct[s.name])))
        at_eps = float(np.mean(output.correct[spec.name]))
    else:
        spec = AttackSpec("pgd10_margin", "pgd", steps=10, loss="margin")
        at_eps = None
    ratio = params.step_size / params.eps if params.eps > 0 else 0.25
    large = LARGE_EPS if params.eps < LARGE_EPS else 1.0
    acc = {}
    for eps in (params.eps / 2, large) + (() if at_eps is not None else (params.eps,)):
        run_params = dataclasses.replace(params, eps=eps, pgd_step_size=min(1.0, ratio * eps))
        out = evaluate(model_fn, dataset, [spec], run_params, strategy=strategy, verbose=0)
        acc[eps] = float(np.mean(out.correct[spec.name]))
    if at_eps is None:
        at_eps = acc[params.eps]
    half = acc[params.eps / 2]
    chance = 1.0 / num_classes
    return [
        Check(
            "accuracy_not_rising_with_eps",
            half >= at_eps - tolerance,
            {
                "attack": spec.name,
                "eps_half": params.eps / 2,
                "accuracy_half": half,
                "eps": params.eps,
                "accuracy": at_eps,
            },
            f"{spec.name} accuracy rises from {half:.3f} at eps/2 to {at_eps:.3f} at eps: the attack "
            f"is failing (gradient masking?).",
        ),
        Check(
            "large_eps_reaches_chance",
            acc[large] <= chance + tolerance,
            {"attack": spec.name, "eps": large, "accuracy": acc[large], "chance": chance},
            f"{spec.name} at eps {large:g} leaves {acc[large]:.3f} accuracy, above chance "
            f"({chance:.3f}): gradients are probably masked.",
        ),
    ]
