"""Results files of an evaluation.

``build_results`` gathers the per-attack accuracies, hyperparameters, checks
and library versions into the content of ``results.json``;
``write_results`` writes it as ``results.json``, ``results.md`` (a markdown
table, ``format_table``, the checks, ``format_checks``, and the Jacobian
statistics, ``format_jacobian_stats``) and ``results.csv``.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from jarn_tf.robustness.evaluation import WORST_CASE, AttackParams, AttackSpec, EvalOutput, attack_hyperparameters
from jarn_tf.robustness.checks import Check

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"


def library_versions() -> Dict[str, str]:
    """Versions of the libraries that determine the numbers."""
    import jarn_tf

    versions = {
        "jarn_tf": jarn_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import tensorflow_datasets as tfds

        versions["tensorflow_datasets"] = tfds.__version__
    except ImportError:
        pass
    return versions


def build_results(
    output: EvalOutput,
    specs: Sequence[AttackSpec],
    params: AttackParams,
    checks: Sequence[Check],
    info: Mapping[str, Any],
    wall_seconds: float,
    jacobian_stats: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The content of results.json.

    Args:
      output: per-example outcomes.
      specs: the attacks run.
      params: their hyperparameters.
      checks: masking checks.
      info: model, dataset, split, batch size, batch-norm mode... recorded as
        given.
      wall_seconds: wall time of the whole evaluation.
      jacobian_stats: ``analysis.jacobian_stats``'s summary, when computed.

    Returns:
      A JSON-serialisable dict; ``accuracy`` maps every attack (and
      ``worst_case``) to its accuracy in [0, 1]. With ``jacobian_stats``,
      ``jacobian_cosine``, ``jacobian_alignment``, ``image_l2_norm`` and
      ``saliency_cosine`` hold their means and ``jacobian_stats`` the whole summary (standard
      deviations and errors, number of examples).
    """
    acc = output.accuracies()
    attacks_out = {}
    for s in specs:
        entry = attack_hyperparameters(s, params)
        entry.update(
            accuracy=acc[s.name],
            num_correct=int(np.sum(output.correct[s.name])),
            seconds=round(output.seconds[s.name], 3),
        )
        if s.kind != "clean":
            entry["max_perturbation"] = output.max_perturbation[s.name]
            entry["pixel_range"] = list(output.pixel_range[s.name])
        if s.name in output.extra:
            # AutoAttack runs its parts in order, each on what is still robust.
            entry["accuracy_after_each_part"] = {
                k: float(np.mean(v)) for k, v in output.extra[s.name].items()
            }
        attacks_out[s.name] = entry
    return {
        **dict(info),
        "num_examples": output.num_examples,
        "seed": params.seed,
        "eps": params.eps,
        "jit_compile": params.jit_compile,
        "accuracy": acc,
        "attacks": attacks_out,
        "worst_case_over": [s.name for s in specs],
        "checks": [c.to_dict() for c in checks],
        # A check that could not run (passed: null) does not fail the evaluation; it is listed.
        "checks_passed": all(c.passed is not False for c in checks),
        "checks_not_run": [c.name for c in checks if c.passed is None],
        **(
            {
                "jacobian_cosine": jacobian_stats["jacobian_cosine"]["mean"],
                "jacobian_alignment": jacobian_stats["jacobian_alignment"]["mean"],
                "image_l2_norm": jacobian_stats["image_l2_norm"]["mean"],
                "saliency_cosine": jacobian_stats["saliency_cosine"]["mean"],
                "jacobian_stats": dict(jacobian_stats),
            }
            if jacobian_stats
            else {}
        ),
        "versions": library_versions(),
        "wall_time_seconds": round(wall_seconds, 3),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _table_rows(results: Mapping[str, Any]) -> List[Tuple[str, str, str, str]]:
    rows = []
    for name, entry in results["attacks"].items():
        if entry["kind"] == "clean":
            params = "-"
        elif entry["kind"] == "autoattack":
            params = f"eps={entry['eps']:.4g} " + "+".join(entry["parts"])
        else:
            params = (
                f"eps={entry['eps']:.4g} steps={entry['steps']} step={entry['step_size']:.4g} "
                f"{entry['loss']}" + (f" restarts={entry['restarts']}" if entry["restarts"] > 1 else "")
            )
        rows.append((name, f"{100 * entry['accuracy']:.2f}", str(entry["num_correct"]), params))
    n_worst = int(round(results["accuracy"][WORST_CASE] * results["num_examples"]))
    rows.append(
        (WORST_CASE, f"{100 * results['accuracy'][WORST_CASE]:.2f}", str(n_worst), "all attacks above")
    )
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    """A markdown table: attack, accuracy (%), correct, hyperparameters."""
    header = ("attack", "accuracy (%)", f"correct / {results['num_examples']}", "parameters")
    rows = [header] + _table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def format_checks(checks: Sequence[Mapping[str, Any]]) -> str:
    """One line per check: PASS, FAIL with the warning, or NOT RUN with what it needs."""
    lines = []
    for c in checks:
        if c["passed"] is None:
            lines.append(f"- NOT RUN {c['name']}: {c['message']}")
        elif c["passed"]:
            lines.append(f"- PASS {c['name']}")
        else:
            lines.append(f"- FAIL {c['name']}: {c['message']}")
    return "\n".join(lines) if lines else "- (no check applies to these attacks)"


def format_jacobian_stats(stats: Mapping[str, Any]) -> str:
    """One line: the means of ``analysis.jacobian_stats`` with their standard errors."""
    cos, align, norm = stats["jacobian_cosine"], stats["jacobian_alignment"], stats["image_l2_norm"]
    used = stats["num_examples"] - stats.get("zero_jacobian_examples", 0)
    zero = (
        f" ({stats['zero_jacobian_examples']} examples left out: J is exactly 0, a saturated softmax)"
        if stats.get("zero_jacobian_examples")
        else ""
    )
    if cos["mean"] is None:
        return (
            f"J = {stats['jacobian']} is exactly 0 for all {stats['num_examples']} examples "
            "(saturated softmax)."
        )
    return (
        f"Jacobian-image |cos| (standardised, as JARN's discriminator sees them) {cos['mean']:.4f} "
        f"+- {cos['stderr']:.4f}; alignment |<x, J>| / ||J||_2 (Etmann et al., 2019) {align['mean']:.4f} "
        f"+- {align['stderr']:.4f}, mean ||x||_2 {norm['mean']:.4f}; saliency cosine(|J|, x) "
        f"{stats['saliency_cosine']['mean']:.4f} +- {stats['saliency_cosine']['stderr']:.4f}. "
        f"J = {stats['jacobian']}; mean +- "
        f"standard error over {used} examples{zero}."
    )


def _protocol(results: Mapping[str, Any]) -> str:
    """How batch norm ran, for results.md's header."""
    mode = results.get("batchnorm")
    if mode == "train":
        replicas = results.get("replicas") or 1
        split = (
            f", each of the {replicas} replicas normalising its share unless the model's batch norm is "
            "synchronized"
            if replicas > 1
            else ""
        )
        return (
            f" Batch norm: train (training=True, statistics of each batch of "
            f"{results.get('batchnorm_batch_size', results.get('batch_size', '?'))} examples{split})."
        )
    if mode:
        return f" Batch norm: {mode} (moving averages)."
    return ""


def write_results(results: Mapping[str, Any], output_dir: str) -> Dict[str, str]:
    """Writes results.json, results.md and results.csv to ``output_dir``.

    Args:
      results: the content of results.json, from ``build_results``.
      output_dir: destination directory (created if needed).

    Returns:
      File kind (json, md, csv) -> path.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        k: os.path.join(output_dir, f)
        for k, f in (("json", RESULTS_JSON), ("md", RESULTS_MD), ("csv", RESULTS_CSV))
    }
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(
            f"# Robustness of {results.get('model', '?')}\n\n"
            f"{results.get('dataset', '?')} {results.get('split', 'test')}, first {results['num_examples']} "
            f"examples, L-inf eps = {results['eps']:.6g}, seed {results['seed']}.{_protocol(results)}\n\n"
        )
        f.write(
            format_table(results)
            + "\n\n## Gradient-masking checks\n\n"
            + format_checks(results["checks"])
            + "\n"
        )
        if results.get("jacobian_stats"):
            f.write("\n## Input Jacobians\n\n" + format_jacobian_stats(results["jacobian_stats"]) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "attack",
                "accuracy",
                "num_correct",
                "num_examples",
                "eps",
                "steps",
                "step_size",
                "loss",
                "restarts",
            ]
        )
        for name, e in results["attacks"].items():
            writer.writerow(
                [
                    name,
                    e["accuracy"],
                    e["num_correct"],
                    results["num_examples"],
                    e.get("eps", 0.0),
                    e.get("steps", ""),
                    e.get("step_size", ""),
                    e.get("loss", ""),
                    e.get("restarts", ""),
                ]
            )
        writer.writerow(
            [
                WORST_CASE,
                results["accuracy"][WORST_CASE],
                int(round(results["accuracy"][WORST_CASE] * results["num_examples"])),
                results["num_examples"],
                results["eps"],
                "",
                "",
                "",
                "",
            ]
        )
    return paths
