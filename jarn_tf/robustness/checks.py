"""Sanity checks of an evaluation: is the model attackable, are the attacks working?

The checks of AutoAttack's reference implementation (fra31/auto-attack,
``autoattack/checks.py``) on the model itself, run on one batch before any
attack (``model_checks``):

- ``outputs_are_logits``: the outputs are not rows of probabilities
  (non-negative, summing to 1); attacks on softmax outputs are weak.
- ``deterministic_outputs``: forward passes on the same images agree; a
  randomised model needs EOT, not standard attacks.

The sanity checks of Carlini et al. (2019), "On Evaluating Adversarial
Robustness", section 5, that flag gradient masking (or a broken attack):

- ``masking_checks`` compares the accuracies of the attacks already run
  (PGD against FGSM, more steps, cross-entropy against margin loss,
  white-box against transfer, the gradient-free Square against the white-box
  attacks). ``square_check`` runs Square on the examples every white-box
  attack left standing when ``--attacks`` has no Square, so that the last
  comparison (AutoAttack's own Square check) runs for every model.
- ``eps_checks`` re-runs the strongest PGD attack at eps / 2 and at a large
  eps (``LARGE_EPS``) and checks accuracy against eps.
- ``attacks_not_above_clean`` (part of ``masking_checks``): no attack leaves
  the model more accurate than the clean images, beyond sampling error (a
  paired sign test).

Each check is a ``Check``: its name, whether it passed (None when it could
not run with the attacks given), the numbers behind the verdict and the
warning printed when it fails (or what it needs, when it did not run).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from jarn_tf.robustness import autoattack
from jarn_tf.robustness.evaluation import AttackParams, AttackSpec, EvalOutput, evaluate
from jarn_tf.core.export import ModelFn

# AutoAttack's thresholds (checks.py): outputs within this of [0, 1] rows summing to 1 are
# probabilities; L2-normalised outputs of two passes further apart than this are random.
PROBABILITY_TOLERANCE = 1e-5
RANDOMNESS_TOLERANCE = 1e-4
RANDOMNESS_PASSES = 5
# Fraction of examples Square may break beyond the white-box attacks. AutoAttack's own check allows
# 0.2% after APGD-CE, APGD-T and FAB-T; after PGD alone Square breaks a few more on healthy models.
SQUARE_TOLERANCE = 0.01
# Level of the sign test of attacks_not_above_clean (attacks that raise accuracy above clean).
ATTACK_ABOVE_CLEAN_ALPHA = 0.01
# White-box members of AutoAttack; ``square`` is its gradient-free one.
WHITEBOX_PARTS = ("apgd-ce", "apgd-t", "fab-t")


@dataclasses.dataclass
class Check:
    """One sanity check of the evaluation.

    Attributes:
      name: what is checked.
      passed: False suggests gradient masking (or a broken attack); None
        means the check could not run with the attacks given.
      detail: the numbers behind the verdict.
      message: one line for the warning printed when it fails; when it did
        not run, what it needs.
    """

    name: str
    passed: Optional[bool]
    detail: Dict[str, Any]
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _not_run(name: str, needs: str) -> Check:
    return Check(name, None, {}, f"needs {needs}.")


# ---------------------------------------------------------------------------
# Checks of the model itself (AutoAttack's checks.py).


def model_checks(model_fn: ModelFn, images, name_prefix: str = "") -> List[Check]:
    """AutoAttack's checks of the model's outputs, on one batch of clean images.

    - ``outputs_are_logits``: fails when every output lies in [0, 1] and every
      row sums to 1 (within ``PROBABILITY_TOLERANCE``): the model returns
      probabilities, and cross-entropy attacks on them (PGD-xent, APGD-CE)
      are weak.
    - ``deterministic_outputs``: ``RANDOMNESS_PASSES`` forward passes on the
      same images; fails when a prediction changes or two L2-normalised
      output rows differ by more than ``RANDOMNESS_TOLERANCE``: the model is
      randomised (dropout or noise at inference) and needs attacks with EOT.

    Args:
      model_fn: images -> outputs (logits expected).
      images: float32 [B, H, W, C] in [0, 1].
      name_prefix: put before the names (e.g. ``source_model/``) for models
        other than the evaluated one.

    Returns:
      The two checks.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    outputs = [np.asarray(model_fn(images), np.float64) for _ in range(RANDOMNESS_PASSES)]
    first = outputs[0]
    row_sums = first.sum(axis=-1)
    tol = PROBABILITY_TOLERANCE
    probabilities = bool(
        first.size and first.max() < 1 + tol and first.min() > -tol and np.all(np.abs(row_sums - 1) < tol)
    )
    checks = [
        Check(
            name_prefix + "outputs_are_logits",
            not probabilities,
            {
                "min_output": float(first.min()) if first.size else None,
                "max_output": float(first.max()) if first.size else None,
                "max_abs_row_sum_minus_1": float(np.max(np.abs(row_sums - 1))) if first.size else None,
                "num_examples": int(first.shape[0]),
            },
            "The model's outputs are non-negative and each row sums to 1: they look like probabilities, "
            "not logits. Cross-entropy attacks on softmax outputs are weak (a second softmax flattens "
            "their gradients), so the accuracies above are too high. Evaluate the logits: export the "
            "model without its final softmax, or wrap it as log(probabilities).",
        )
    ]
    normalised = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
    max_diff = max(
        (
            float(np.max(np.linalg.norm(a - b, axis=-1)))
            for i, a in enumerate(normalised)
            for b in normalised[i + 1 :]
        ),
        default=0.0,
    )
    predictions = [np.argmax(o, axis=-1) for o in outputs]
    changed = int(np.sum(np.any([p != predictions[0] for p in predictions[1:]], axis=0)))
    checks.append(
        Check(
            name_prefix + "deterministic_outputs",
            max_diff <= RANDOMNESS_TOLERANCE and changed == 0,
            {
                "passes": RANDOMNESS_PASSES,
                "max_normalised_output_difference": max_diff,
                "predictions_changed": changed,
                "num_examples": int(first.shape[0]),
                "tolerance": RANDOMNESS_TOLERANCE,
            },
            f"{RANDOMNESS_PASSES} forward passes on the same images differ (L2 distance of normalised "
            f"outputs up to {max_diff:.3g}, {changed} predictions changed): the model is randomised "
            "(dropout or noise active at inference?). PGD and standard AutoAttack see one random draw "
            "per step and overestimate its robustness: attack it with EOT (gradients averaged over many "
            "draws, e.g. the reference AutoAttack's version='rand'), or export it with the randomness off "
            "(training=False).",
        )
    )
    return checks


# ---------------------------------------------------------------------------
# Checks of the attacks' outcomes.


def _whitebox_correct(output: EvalOutput, specs: Sequence[AttackSpec]) -> Dict[str, np.ndarray]:
    """White-box attack name -> bool [N] correct under it (AutoAttack: after its last white-box part)."""
    out = {}
    for s in specs:
        if s.gradient_based and not s.transfer:
            out[s.name] = output.correct[s.name]
        elif s.kind == "autoattack":
            white_parts = [p for p in s.parts if p in WHITEBOX_PARTS]
            if white_parts and "square" not in s.parts:
                out[s.name] = output.correct[s.name]
            elif white_parts:
                # Parts run in order, each on what is still robust: robust after the last
                # white-box part is robust to all of them.
                per_part = output.extra.get(s.name, {})
                if white_parts[-1] in per_part:
                    out[f"{s.name}:{white_parts[-1]}"] = per_part[white_parts[-1]]
    return out


def whitebox_robust(output: EvalOutput, specs: Sequence[AttackSpec]) -> Optional[np.ndarray]:
    """bool [N]: classified correctly clean and under every white-box attack run.

    Returns:
      None when no white-box attack (FGSM, PGD, APGD, FAB) was run.
    """
    white = _whitebox_correct(output, specs)
    if not white:
        return None
    masks = list(white.values()) + ([output.correct["clean"]] if "clean" in output.correct else [])
    return np.logical_and.reduce(masks)


def masking_checks(
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    tolerance: float = 0.02,
    pgd_fgsm_tolerance: float = 0.0,
    square_tolerance: float = SQUARE_TOLERANCE,
    square_check_correct: Optional[np.ndarray] = None,
) -> List[Check]:
    """Checks that warn of gradient masking.

    Every check is returned; one that cannot run with the attacks given has
    ``passed=None`` and says what it needs.

    - ``pgd_beats_fgsm``: no more than ``pgd_fgsm_tolerance`` of the examples
      resist every white-box PGD attack run yet fall to FGSM (iterative
      attacks must be at least as strong as one step). The detail counts them
      per PGD attack too.
    - ``more_steps_not_better_<loss>``: PGD accuracy at every step count is
      not above the accuracy at the fewest steps (same loss) by more than
      ``tolerance``, so a slow rise over several counts is caught.
    - ``xent_margin_agree``: PGD with the cross-entropy and with the margin
      loss reach accuracies within ``tolerance`` (saturated softmaxes make
      cross-entropy gradients vanish while margin gradients do not).
    - ``whitebox_beats_transfer``: a white-box PGD attack is at least as
      strong as the same attack transferred from another model.
    - ``blackbox_not_below_whitebox``: the gradient-free Square attack does
      not beat the white-box attacks: run alone (``square``), its accuracy is
      not below the lowest white-box accuracy minus ``tolerance``; and it
      breaks at most ``square_tolerance`` of the examples that every
      white-box attack left standing (AutoAttack's own check; Square from
      ``autoattack``, ``square`` or ``square_check_correct``).

    Args:
      output: per-example outcomes.
      specs: the attacks run.
      tolerance: allowed accuracy difference (fraction of examples).
      pgd_fgsm_tolerance: fraction of examples that may resist PGD but not FGSM.
      square_tolerance: fraction of examples Square may break beyond the
        white-box attacks.
      square_check_correct: bool [N], correct under ``square_check``'s run
        (True where it did not attack), when one was made.

    Returns:
      The checks, run or not.
    """
    acc = output.accuracies()
    n = max(output.num_examples, 1)
    by_name = {s.name: s for s in specs}
    checks: List[Check] = []
    white_pgd = [s for s in specs if s.kind == "pgd" and not s.transfer]

    if "fgsm" in by_name and white_pgd:
        fgsm_wrong = ~output.correct["fgsm"]
        counts = {s.name: int(np.sum(output.correct[s.name] & fgsm_wrong)) for s in white_pgd}
        robust_to_all_pgd = np.logical_and.reduce([output.correct[s.name] for s in white_pgd])
        count = int(np.sum(robust_to_all_pgd & fgsm_wrong))
        checks.append(
            Check(
                "pgd_beats_fgsm",
                count <= pgd_fgsm_tolerance * n,
                {
                    "robust_to_every_pgd_but_not_fgsm": count,
                    "robust_to_pgd_but_not_fgsm": counts,
                    "num_examples": n,
                    "tolerance": pgd_fgsm_tolerance,
                },
                f"{count} examples resist every PGD attack but not FGSM: PGD is weaker than one step, a sign "
                "of gradient masking or of too few steps or too small a step size (add pgd20 and "
                "pgd20_margin).",
            )
        )
    else:
        checks.append(
            _not_run("pgd_beats_fgsm", "fgsm and a white-box pgdK attack, e.g. --attacks=fgsm,pgd20")
        )

    step_runs = False
    for loss in ("xent", "margin"):
        runs = sorted((s.steps, acc[s.name]) for s in white_pgd if s.loss == loss)
        if len({steps for steps, _ in runs}) >= 2:
            step_runs = True
            fewest_steps, fewest_acc = runs[0]
            rises = [
                {"from_steps": fewest_steps, "to_steps": k, "from_accuracy": fewest_acc, "to_accuracy": a}
                for k, a in runs[1:]
                if a > fewest_acc + tolerance
            ]
            checks.append(
                Check(
                    f"more_steps_not_better_{loss}",
                    not rises,
                    {
                        "accuracy_by_steps": {str(k): v for k, v in runs},
                        "rises": rises,
                        "tolerance": tolerance,
                    },
                    f"PGD ({loss}) accuracy rises with more steps: {rises}; more steps must not help the "
                    "model (gradient masking, or a step size too large to converge).",
                )
            )
    if not step_runs:
        checks.append(
            _not_run("more_steps_not_better", "two PGD step counts with the same loss, e.g. pgd10,pgd20")
        )

    pairs: Dict[int, Dict[str, float]] = {}
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
    else:
        checks.append(
            _not_run("xent_margin_agree", "pgdK with both losses, e.g. --attacks=pgd20 --pgd_loss=both")
        )

    detail, failed = {}, []
    for t in (s for s in specs if s.transfer):
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
    else:
        checks.append(_not_run("whitebox_beats_transfer", "--source_model and a pgdK attack"))

    checks.append(_square_check(output, specs, tolerance, square_tolerance, square_check_correct, acc, n))
    checks.append(attacks_not_above_clean(output))
    return checks


def _sign_test_p(gained: int, lost: int) -> float:
    """One-sided exact sign test: P(X >= gained) for X ~ Binomial(gained + lost, 1/2)."""
    n = gained + lost
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2.0**n


def attacks_not_above_clean(output: EvalOutput, alpha: float = ATTACK_ABOVE_CLEAN_ALPHA) -> Check:
    """``attacks_not_above_clean``: no attack leaves more examples correct than the clean images do.

    An attack searches for a misclassified point near each image, so accuracy under it cannot be
    above clean accuracy for a correct attack on a deterministic, gradient-honest model; a higher
    one means a broken attack, or a model whose gradients point away from its errors (masking,
    batch statistics of the attacked batch, randomness). On the same examples the comparison is
    paired: ``gained`` counts examples wrong clean but right under the attack, ``lost`` the
    reverse. The check fails when an attack gains more than it loses beyond sampling error: a
    one-sided exact sign test on gained out of gained + lost at level ``alpha``.

    Args:
      output: per-example outcomes, with ``clean``.
      alpha: the test's level.

    Returns:
      The check (not run without clean accuracy).
    """
    if "clean" not in output.correct:
        return _not_run("attacks_not_above_clean", "clean accuracy (the 'clean' attack, run by default)")
    clean = np.asarray(output.correct["clean"], bool)
    detail, failed = {}, []
    for name, correct in output.correct.items():
        if name == "clean":
            continue
        correct = np.asarray(correct, bool)
        gained, lost = int(np.sum(correct & ~clean)), int(np.sum(~correct & clean))
        p = _sign_test_p(gained, lost)
        detail[name] = {
            "accuracy": float(correct.mean()),
            "clean_accuracy": float(clean.mean()),
            "gained": gained,
            "lost": lost,
            "p_value": p,
        }
        if gained > lost and p < alpha:
            failed.append(name)
    return Check(
        "attacks_not_above_clean",
        not failed,
        {"attacks": detail, "failed": failed, "alpha": alpha, "num_examples": int(len(clean))},
        f"Accuracy under {failed} is above clean accuracy beyond sampling error (sign test, p < {alpha}): "
        "an attack that makes the model more accurate is broken, or the model's gradients are masked "
        "(e.g. batch norm with the attacked batch's statistics, randomness).",
    )


def _square_check(
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    tolerance: float,
    square_tolerance: float,
    square_check_correct: Optional[np.ndarray],
    acc: Dict[str, float],
    n: int,
) -> Check:
    name = "blackbox_not_below_whitebox"
    white = _whitebox_correct(output, specs)
    # Square's outcome per example, wherever it ran.
    square_runs = {s.name: output.correct[s.name] for s in specs if "square" in s.parts}
    if square_check_correct is not None:
        square_runs["square_check"] = np.asarray(square_check_correct, bool)
    if not white or not square_runs:
        return _not_run(
            name,
            "a white-box attack (fgsm, pgdK, apgd-ce...) and Square (square or autoattack in --attacks, "
            "or --square_check_queries > 0)",
        )
    robust_white = whitebox_robust(output, specs)
    square_correct = np.logical_and.reduce(list(square_runs.values()))
    extra = int(np.sum(robust_white & ~square_correct))
    white_acc = {k: float(np.mean(v)) for k, v in white.items()}
    best_white = min(white_acc.values())
    alone = {s.name: acc[s.name] for s in specs if s.parts == ("square",)}
    below = [k for k, a in alone.items() if a < best_white - tolerance]
    # One example is never enough evidence (it is 2% of a 50-example run).
    too_many = extra > max(square_tolerance * n, 1)
    problems = []
    if too_many:
        problems.append(
            f"Square broke {extra} examples ({extra / n:.2%}) that every white-box attack left standing"
        )
    if below:
        problems.append(
            f"Square alone reaches {min(alone.values()):.2%}, below the best white-box accuracy "
            f"{best_white:.2%}"
        )
    return Check(
        name,
        not problems,
        {
            "square_breaks_beyond_whitebox": extra,
            "square_runs": sorted(square_runs),
            "whitebox_accuracy": white_acc,
            "best_whitebox_accuracy": best_white,
            "square_alone_accuracy": alone,
            "num_examples": n,
            "tolerance": tolerance,
            "square_tolerance": square_tolerance,
        },
        "; ".join(problems)
        + ": the gradient-based attacks are misled (gradient masking), so the white-box accuracies "
        "overestimate robustness. Report the worst case with Square included (--attacks=...,autoattack) "
        "and try Square with more queries, restarts, or an adaptive attack.",
    )


def square_check(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    params: AttackParams,
    num_queries: int,
    verbose: int = 0,
) -> Optional[np.ndarray]:
    """Runs Square on the examples every white-box attack left standing.

    For ``blackbox_not_below_whitebox`` when ``specs`` has no Square (AutoAttack
    runs it last, on what the white-box attacks left). Square's breaks are not
    added to the reported accuracies; the check reports them.

    Args:
      model_fn: the evaluated model.
      dataset: the examples of the evaluation, in the same order.
      output: its per-example outcomes.
      specs: its attacks.
      params: eps and seed.
      num_queries: Square's queries per example.
      verbose: 1 prints Square's progress.

    Returns:
      bool [N]: correct under Square (True where it did not attack), or None
      when no white-box attack ran (nothing to compare with).
    """
    robust = whitebox_robust(output, specs)
    if robust is None:
        return None
    correct = np.ones(output.num_examples, bool)
    idx = np.nonzero(robust)[0]
    if verbose:
        print(
            f"Square check: Square ({num_queries} queries) on the {idx.size} examples every white-box "
            "attack left standing"
        )
    if idx.size == 0:
        return correct
    images, labels = [], []
    for x, y in dataset:
        images.append(np.asarray(x, np.float32))
        labels.append(np.asarray(y, np.int64))
    images = np.concatenate(images)[: output.num_examples][idx]
    labels = np.concatenate(labels)[: output.num_examples][idx]
    result = autoattack.run_autoattack(
        model_fn,
        images,
        labels,
        params.eps,
        attacks=("square",),
        seed=params.seed,
        batch_size=max(int(np.asarray(next(iter(dataset))[1]).shape[0]), 1),
        num_queries=num_queries,
        log=(lambda message: print(f"  square check: {message}", flush=True)) if verbose else None,
    )
    # Examples this pass finds misclassified unperturbed are not Square's breaks.
    correct[idx] = np.asarray(result["robust"], bool) | ~np.asarray(result["clean"], bool)
    return correct


LARGE_EPS = 0.5
# The checks of ``eps_checks``.
EPS_CHECKS = ("accuracy_not_rising_with_eps", "large_eps_reaches_chance")


def eps_checks(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    specs: Sequence[AttackSpec],
    output: EvalOutput,
    params: AttackParams,
    num_classes: int,
    tolerance: float = 0.02,
    strategy: Optional[tf.distribute.Strategy] = None,
    verbose: int = 0,
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
      verbose: 1 says what runs and shows each run's progress bar.

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
    runs = (params.eps / 2, large) + (() if at_eps is not None else (params.eps,))
    for i, eps in enumerate(runs):
        if verbose:
            print(f"Eps check {i + 1}/{len(runs)}: {spec.name} at eps {eps:.4g}")
        run_params = dataclasses.replace(params, eps=eps, pgd_step_size=min(1.0, ratio * eps))
        out = evaluate(
            model_fn,
            dataset,
            [spec],
            run_params,
            strategy=strategy,
            num_examples=output.num_examples,
            verbose=verbose,
        )
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


def checks_after_attacks(
    model_fn: ModelFn,
    dataset: tf.data.Dataset,
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    params: AttackParams,
    num_classes: int,
    *,
    square_check_queries: int,
    masking_tolerance: float,
    pgd_fgsm_tolerance: float,
    square_tolerance: float,
    run_eps_checks: bool,
    eps_checks_needs: str,
    strategy: tf.distribute.Strategy,
    verbose: int = 0,
) -> List[Check]:
    """The checks of the evaluation protocol that follow the attacks, in its order.

    The Square check (when ``square_check_queries`` > 0, eps > 0 and no attack of ``specs`` ran
    Square), the gradient-masking checks (``masking_checks``), then the eps checks (``eps_checks``,
    when ``run_eps_checks``, eps > 0 and an attack other than clean ran; else each is reported as
    not run, needing ``eps_checks_needs``). ``python -m jarn_tf.evaluate`` and
    ``jarn_tf.evaluate_robustness`` both run these.

    Returns:
      The checks, in the order of ``results.json``.
    """
    square_correct = None
    if square_check_queries > 0 and params.eps > 0 and not any("square" in s.parts for s in specs):
        square_correct = square_check(model_fn, dataset, output, specs, params, square_check_queries, verbose)
    checks = masking_checks(
        output,
        specs,
        masking_tolerance,
        pgd_fgsm_tolerance=pgd_fgsm_tolerance,
        square_tolerance=square_tolerance,
        square_check_correct=square_correct,
    )
    if run_eps_checks and params.eps > 0 and any(spec.kind != "clean" for spec in specs):
        with strategy.scope():
            checks += eps_checks(
                model_fn,
                dataset,
                specs,
                output,
                params,
                num_classes,
                masking_tolerance,
                strategy=strategy,
                verbose=verbose,
            )
    else:
        checks += [Check(n, None, {}, f"needs {eps_checks_needs}.") for n in EPS_CHECKS]
    return checks
