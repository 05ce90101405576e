r"""Collects the GAN runs of a Table 1 sweep into one markdown table.

  python -m jarn_tf.gan_table --runs=runs/gan_cpu --seed=0 --output=runs/gan_cpu/table1.md

Reads ``<runs>/<loss>_<reg>_seed<seed>/eval_gan/results.json`` (written by
``jarn_tf.evaluate_gan``; ``run_scripts/cpu_gan_table1.sh`` runs both) and
prints rows GAN / LSGAN / WGAN by columns None / IN / GP / AR / RFM, the
paper's Table 1a (FID on CIFAR-10, 2015 Inception graph) beside it. The
metric is named from the results (FCD with a classifier of this project; FID
only from the Inception graph), with the network's file hash, sample count,
reference split, training wall time and step. Missing cells are shown as
"not run". With the runs' ``disc_robustness/results.json`` (``evaluate_gan
--discriminator_robustness``) it adds the discriminator-robustness table, and
``--curves=PATH.png`` plots each run's training-time FCD (``eval/fcd``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from absl import app, flags

FLAGS = flags.FLAGS

LOSSES = (("gan", "GAN"), ("lsgan", "LSGAN"), ("wgan", "WGAN"))
REGS = (("none", "None"), ("in", "IN"), ("gp", "GP"), ("ar", "AR"), ("rfm", "RFM"))
# Table 1a of Zhou & Kraehenbuehl (ICLR 2019): FID on CIFAR-10, columns None / IN / GP / AR / RFM.
PAPER_TABLE1A = {
    "gan": (34.25, 32.28, 30.22, 24.06, 24.50),
    "lsgan": (32.03, 32.89, 29.72, 27.42, 25.22),
    "wgan": (41.58, 49.80, 26.20, 28.42, 24.90),
}


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def collect(runs: str, seed: int) -> Dict[str, Dict[str, Any]]:
    """Cell name (``<loss>_<reg>``) -> facts of its run, for the runs found."""
    cells: Dict[str, Dict[str, Any]] = {}
    for loss, _ in LOSSES:
        for reg, _ in REGS:
            run = os.path.join(runs, f"{loss}_{reg}_seed{seed}")
            results = _read(os.path.join(run, "eval_gan", "results.json"))
            if results is None:
                continue
            fcd = results["metrics"].get("fcd") or results["metrics"].get("fid")
            score = results["metrics"].get("classifier_score") or results["metrics"].get("is")
            seconds = None
            try:
                with open(os.path.join(run, "train_seconds")) as f:
                    seconds = int(f.read().strip())
            except (OSError, ValueError):
                pass
            cells[f"{loss}_{reg}"] = {
                "run": run,
                "distance": fcd,
                "score": score,
                "step": results.get("generator", {}).get("step"),
                "train_seconds": seconds,
            }
    return cells


def format_table(cells: Dict[str, Dict[str, Any]], seed: int) -> str:
    """The markdown table (ours beside the paper's) and the facts it rests on."""
    if not cells:
        return "No finished cells.\n"
    any_cell = next(iter(cells.values()))
    dist = any_cell["distance"]
    name = dist["name"]
    lines: List[str] = []
    header = "| loss | " + " | ".join(r for _, r in REGS) + " |"
    rule = "|---|" + "---|" * len(REGS)
    lines += [f"**{name}** (lower is better), seed {seed}:", "", header, rule]
    for loss, lname in LOSSES:
        row = []
        for reg, _ in REGS:
            cell = cells.get(f"{loss}_{reg}")
            row.append(f"{cell['distance']['value']:.2f}" if cell else "not run")
        lines.append(f"| {lname} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"**{any_cell['score']['name']}** (higher is better; real test images: "
        f"{any_cell['score'].get('reference_value', float('nan')):.2f}):",
        "",
        header,
        rule,
    ]
    for loss, lname in LOSSES:
        row = []
        for reg, _ in REGS:
            cell = cells.get(f"{loss}_{reg}")
            row.append(f"{cell['score']['value']:.2f}" if cell else "not run")
        lines.append(f"| {lname} | " + " | ".join(row) + " |")
    lines += [
        "",
        "The paper's Table 1a (FID on CIFAR-10 with the 2015 Inception graph; not comparable in value):",
        "",
        header,
        rule,
    ]
    for loss, lname in LOSSES:
        lines.append(f"| {lname} | " + " | ".join(f"{v:.2f}" for v in PAPER_TABLE1A[loss]) + " |")
    lines += ["", "Training wall time (s) per cell:", "", header, rule]
    for loss, lname in LOSSES:
        row = []
        for reg, _ in REGS:
            cell = cells.get(f"{loss}_{reg}")
            row.append(str(cell["train_seconds"]) if cell and cell["train_seconds"] is not None else "n/a")
        lines.append(f"| {lname} | " + " | ".join(row) + " |")
    floor = dist.get("floor") or {}
    lines += [
        "",
        f"{name}: {dist.get('long_name', name)} of `{dist['network']}` (sha256 `{dist['sha256'][:16]}...`), "
        f"{dist['feature_layer']}, {dist['feature_dim']} dims; {dist['num_samples']} generated images against "
        f"{dist['reference_size']} {dist['reference_split']} images"
        + (
            f"; real-data floor {floor['value']:.2f} ({floor['num_real']} {floor['split']} images)"
            if floor
            else ""
        )
        + f". Generator step {any_cell['step']}.",
    ]
    return "\n".join(lines) + "\n"


def format_seed_summary(per_seed: Dict[int, Dict[str, Dict[str, Any]]]) -> str:
    """Over several seeds: each cell's mean (and per-seed values), and each regulariser minus None.

    The paper's claim is about regularisers against no regulariser, so the
    second table pairs each cell with None of the same loss and seed (the
    seed-to-seed spread of a cell is often larger than the gap between
    cells). Empty with fewer than two seeds holding any cell.
    """
    seeds = sorted(s for s, cells in per_seed.items() if cells)
    if len(seeds) < 2:
        return ""
    any_cell = next(iter(per_seed[seeds[0]].values()))
    name = any_cell["distance"]["name"]
    header = "| loss | " + " | ".join(r for _, r in REGS) + " |"
    rule = "|---|" + "---|" * len(REGS)

    def value(seed: int, cell: str) -> Optional[float]:
        c = per_seed[seed].get(cell)
        return None if c is None else float(c["distance"]["value"])

    def summary(values: List[Optional[float]], signed: bool) -> str:
        present = [v for v in values if v is not None]
        if not present:
            return "not run"
        spec = "+.2f" if signed else ".2f"
        each = " / ".join("-" if v is None else format(v, spec) for v in values)
        return f"{format(sum(present) / len(present), spec)} ({each})"

    seed_names = " / ".join(f"seed {s}" for s in seeds)
    lines = [
        f"**{name}** over seeds {', '.join(map(str, seeds))}: mean over the seeds present ({seed_names}):",
        "",
        header,
        rule,
    ]
    for loss, lname in LOSSES:
        row = [summary([value(s, f"{loss}_{reg}") for s in seeds], signed=False) for reg, _ in REGS]
        lines.append(f"| {lname} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"**{name} minus None** of the same loss and seed (negative: the regulariser helps), mean ({seed_names}):",
        "",
        header,
        rule,
    ]
    for loss, lname in LOSSES:
        row = []
        for reg, _ in REGS:
            if reg == "none":
                row.append("0")
                continue
            diffs = []
            for s in seeds:
                a, b = value(s, f"{loss}_{reg}"), value(s, f"{loss}_none")
                diffs.append(None if a is None or b is None else a - b)
            row.append(summary(diffs, signed=True))
        lines.append(f"| {lname} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def collect_robustness(runs: str, seed: int) -> Dict[str, Dict[str, Any]]:
    """Cell name -> the ``evaluate_gan --discriminator_robustness`` results of its run, for those found."""
    out = {}
    for loss, _ in LOSSES:
        for reg, _ in REGS:
            results = _read(os.path.join(runs, f"{loss}_{reg}_seed{seed}", "disc_robustness", "results.json"))
            if results is not None:
                out[f"{loss}_{reg}"] = results
    return out


def format_robustness(robust: Dict[str, Dict[str, Any]], seed: int) -> str:
    """One row per cell: D's worst change on generated and real images, and its scale."""
    if not robust:
        return ""
    keys = sorted({k for r in robust.values() for k in r["generated"]["attacks"]})
    lines = [
        f"**Discriminator robustness** (Definition 3.2), seed {seed}: mean |D(x) - D(x + u)| over the images, "
        "||u||_2 <= delta, generated / real; in brackets the same divided by D's separation |E D(gen) - E D(real)|.",
        "",
        "| cell | separation | " + " | ".join(f"{k} gen / real" for k in keys) + " | grad norm gen / real |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for loss, lname in LOSSES:
        for reg, rname in REGS:
            r = robust.get(f"{loss}_{reg}")
            if r is None:
                continue
            cells = []
            for k in keys:
                g, t = r["generated"]["attacks"].get(k), r["real"]["attacks"].get(k)
                if g is None or t is None:
                    cells.append("n/a")
                    continue
                cells.append(
                    f"{g['mean_abs_change']:.3g} / {t['mean_abs_change']:.3g} "
                    f"({g['relative_to_separation']:.2g} / {t['relative_to_separation']:.2g})"
                )
            lines.append(
                f"| {lname} {rname} | {r['separation']:.3g} | "
                + " | ".join(cells)
                + f" | {r['generated']['grad_norm_mean']:.3g} / {r['real']['grad_norm_mean']:.3g} |"
            )
    n = next(iter(robust.values()))
    lines += [
        "",
        f"{n['num_samples']} generated and {n['num_real']} real {n['real_split']} images, attack seed {n['seed']}; "
        "perturbations not clipped to [0, 1].",
    ]
    return "\n".join(lines) + "\n"


def fcd_curves(runs: str, seeds: List[int], path: str) -> Optional[str]:
    """Plots eval/fcd against the step for every cell and seed found (one panel per loss)."""
    from jarn_tf.reproduce.paper import read_scalars

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 3.6), sharey=True)
    drawn = False
    for ax, (loss, lname) in zip(axes, LOSSES):
        for i, (reg, rname) in enumerate(REGS):
            for seed in seeds:
                points = read_scalars(os.path.join(runs, f"{loss}_{reg}_seed{seed}", "eval")).get("eval/fcd", [])
                if not points:
                    continue
                drawn = True
                ax.plot(
                    [p[0] for p in points],
                    [p[2] for p in points],
                    color=f"C{i}",
                    linestyle="-" if seed == seeds[0] else "--",
                    marker="o",
                    markersize=3,
                    label=f"{rname} (seed {seed})",
                )
        ax.set_title(lname)
        ax.set_xlabel("discriminator step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("FCD (lower is better)")
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv) -> Optional[int]:
    del argv
    seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else [FLAGS.seed]
    per_seed = {seed: collect(FLAGS.runs, seed) for seed in seeds}
    parts = [format_seed_summary(per_seed)]
    for seed in seeds:
        parts.append(format_table(per_seed[seed], seed))
        parts.append(format_robustness(collect_robustness(FLAGS.runs, seed), seed))
    text = "\n".join(p for p in parts if p)
    if FLAGS.curves and fcd_curves(FLAGS.runs, seeds, FLAGS.curves):
        text += f"\nFCD during training: {FLAGS.curves}\n"
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
        print(f"Written to {FLAGS.output}", file=sys.stderr)
    return 0


def run() -> None:
    flags.DEFINE_string("runs", "runs/gan_cpu", "Directory of the sweep's runs (<loss>_<reg>_seed<seed>).")
    flags.DEFINE_integer("seed", 0, "Seed of the runs to collect.")
    flags.DEFINE_list(
        "seeds", None, "Several seeds (overrides --seed): their means and regulariser - None first, then one table each."
    )
    flags.DEFINE_string("curves", None, "Also plot every run's eval/fcd against the step into this PNG.")
    flags.DEFINE_string("output", None, "Also write the table to this file.")
    app.run(main)


if __name__ == "__main__":
    run()
