r"""Reproduces the JARN paper's tables and figures, one command each.

  python -m jarn_tf.paper --experiment=table3 --scale=cpu [--output_dir=runs/paper_cpu] \
      [--seeds=0,1] [--dry_run]

Each experiment trains the models it needs (or reuses them), evaluates them
(or reuses the evaluations) and writes ``O/<experiment>/<experiment>.md``: our
numbers (mean ± standard deviation over seeds, and per seed) next to the
paper's, the commands and seeds behind every number, the hardware and the wall
time of training and evaluation. Figures are copied into ``O/<experiment>/``.

Experiments: table1 (MNIST), table2 (SVHN), table3 (CIFAR-10, plus the JARN
release variants), table4 (time per epoch), table5 (transfer attacks),
figure2 (accuracy against eps), figure3 (loss surfaces), figure4 (Jacobians),
figure5 (sensitivity of JARN to lambda_adv, batch size and the discriminator's
update interval); beyond the paper's figures, paired (JARN against standard
training and JARN-AT1 against PGD-AT7, seed by seed: mean difference and 95%
paired-t interval of worst-case, AutoAttack and clean accuracy; pass
--seeds=0,1,2,3,4) and schedule (JARN over the whole run, the last 25% and the
last 12.5% of training, beside standard training).

Scales: ``paper`` uses ``flags/<dataset>_<row>.cfg`` (mnist for table1, svhn
for table2, cifar10 otherwise), the paper's eps (0.3 MNIST, 8/255 otherwise)
and whole test sets; ``cpu`` runs every experiment on Fashion-MNIST with
``flags/cpu_<row>.cfg``, eps 0.1 (and 0.05 for the attack tables), 1,000 test
images for FGSM/PGD and 500 for AutoAttack.

Layout (O = --output_dir, default runs/paper_<scale>); every step is a
subprocess with a fixed command, skipped when its outputs exist:
  O/models/<model>_seed<k>/            python -m jarn_tf.train (reused once
                                       export/metadata.json exists, else resumed)
  O/models/<model>_seed<k>.log         its output; .time.json its wall time
  O/evals/<model>_seed<k>/<kind>/      python -m jarn_tf.evaluate (reused once
                                       results.json and the kind's files exist)
  O/figure2/eps_sweep_seed<k>/         the eps sweep of Figure 2
  O/<experiment>/<experiment>.md       the table, figures beside it
At cpu scale <model> is the row (standard, jarn, ...), so Tables 1-3 share
their models; at paper scale it is <dataset>_<row> (cifar10_jarn, ...).
Variants are named after their overrides: pgd_at7_eps0.15, jarn_lambda_adv2,
jarn_jarn_start0 (a variant with the flagfile's own value is the plain model).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPERIMENTS: Dict[str, str] = {
    "table1": "Table 1: MNIST accuracy (%) on adversarial and clean test samples",
    "table2": "Table 2: SVHN accuracy (%) on adversarial and clean test samples",
    "table3": "Table 3: CIFAR-10 accuracy (%) on adversarial and clean test samples",
    "table4": "Table 4: average wall-clock time per training epoch",
    "table5": "Table 5: accuracy (%) under transfer attacks",
    "figure2": "Figure 2: generalisation of robustness to PGD attacks of different eps",
    "figure3": "Figure 3: loss surfaces along the adversarial and a random direction",
    "figure4": "Figure 4: input Jacobians",
    "figure5": "Figure 5: accuracy of JARN with different hyperparameters",
    "paired": "Paired comparison over seeds: JARN against standard training, JARN-AT1 against PGD-AT7",
    "schedule": "JARN's schedule: JARN over the whole run, the last 25% and the last 12.5% of training",
}
SCALES = ("cpu", "paper")

ROW_LABELS: Dict[str, str] = {
    "standard": "Standard",
    "uniform_noise": "Uniform Noise",
    "fgsm_at1": "FGSM-AT1",
    "double_backprop": "Double Backprop",
    "jarn": "JARN",
    "pgd_at7": "PGD-AT7",
    "jarn_at1": "JARN-AT1",
    "jarn_release": "JARN (release)",
    "jarn_release_intended": "JARN (release, intended)",
}
JARN_ROWS = ("jarn", "jarn_at1", "jarn_release", "jarn_release_intended")

EXPERIMENT_ROWS: Dict[str, Tuple[str, ...]] = {
    "table1": ("standard", "uniform_noise", "jarn"),
    "table2": ("standard", "uniform_noise", "jarn"),
    "table3": (
        "standard",
        "uniform_noise",
        "fgsm_at1",
        "double_backprop",
        "jarn",
        "pgd_at7",
        "jarn_at1",
        "jarn_release",
        "jarn_release_intended",
    ),
    "table4": ("pgd_at7", "jarn_at1", "fgsm_at1", "jarn"),
    "table5": ("jarn", "jarn_at1"),
    "figure2": ("jarn_at1", "pgd_at7", "pgd_at7_wide", "standard", "jarn"),
    "figure3": ("standard", "fgsm_at1", "jarn", "jarn_at1", "pgd_at7"),
    "figure4": ("standard", "fgsm_at1", "jarn", "jarn_at1", "pgd_at7"),
    "figure5": ("jarn",),
    "paired": ("standard", "jarn", "jarn_at1", "pgd_at7"),
    "schedule": ("standard", "jarn"),
}

# Paper columns of the attack tables: (heading, key in results.json's accuracy).
ATTACK_COLUMNS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "table1": (("FGSM", "fgsm"), ("PGD5", "pgd5"), ("PGD40", "pgd40"), ("Clean", "clean")),
    "table2": (
        ("FGSM", "fgsm"),
        ("PGD5", "pgd5"),
        ("PGD10", "pgd10"),
        ("PGD20", "pgd20"),
        ("Clean", "clean"),
    ),
}
ATTACK_COLUMNS["table3"] = ATTACK_COLUMNS["table2"]
ALL_ATTACKS = (
    ("FGSM", "fgsm"),
    ("PGD5", "pgd5"),
    ("PGD10", "pgd10"),
    ("PGD20", "pgd20"),
    ("PGD40", "pgd40"),
    ("PGD40 margin", "pgd40_margin"),
    ("Worst case", "worst_case"),
    ("Clean", "clean"),
)
EVAL_ATTACKS = "clean,fgsm,pgd5,pgd10,pgd20,pgd40"

# The paper's numbers, as printed (strings keep their digits).
TABLE4_SECONDS = ("704", "294", "267", "217")
# Table 5's columns: transfer from PGD-AT7, from the same model (another seed), white-box; clean.
TABLE5_KEYS = ("at7_fgsm", "at7_pgd20", "same_fgsm", "same_pgd20", "wb_fgsm", "wb_pgd20", "clean")
PAPER: Dict[str, Dict[str, Dict[str, str]]] = {
    "table1": {
        "standard": dict(fgsm="76.5", pgd5="0", pgd40="0", clean="98.7"),
        "uniform_noise": dict(fgsm="77.5", pgd5="0", pgd40="0.02", clean="98.7"),
        "jarn": dict(fgsm="98.4", pgd5="98.1", pgd40="98.1", clean="98.8"),
    },
    "table2": {
        "standard": dict(fgsm="64.4", pgd5="26.0", pgd10="5.47", pgd20="1.96", clean="94.7"),
        "uniform_noise": dict(fgsm="65.0", pgd5="42.6", pgd10="18.4", pgd20="9.21", clean="95.3"),
        "jarn": dict(fgsm="67.2", pgd5="57.5", pgd10="37.7", pgd20="26.79", clean="94.9"),
    },
    "table3": {
        "standard": dict(fgsm="13.4", pgd5="0", pgd10="0", pgd20="0", clean="95.0"),
        "uniform_noise": dict(fgsm="67.4", pgd5="44.6", pgd10="19.7", pgd20="7.48", clean="94.0"),
        "fgsm_at1": dict(fgsm="94.5", pgd5="0.25", pgd10="0.02", pgd20="0.01", clean="91.7"),
        "double_backprop": dict(fgsm="28.3", pgd5="0.05", pgd10="0", pgd20="0", clean="95.7"),
        "jarn": dict(fgsm="67.2", pgd5="50.0", pgd10="27.6", pgd20="15.5", clean="93.9"),
        "pgd_at7": dict(fgsm="56.2", pgd5="55.5", pgd10="47.3", pgd20="45.9", clean="87.3"),
        "jarn_at1": dict(fgsm="65.7", pgd5="60.1", pgd10="51.8", pgd20="46.7", clean="84.8"),
    },
    "table4": {
        row: {"seconds": v} for row, v in zip(("pgd_at7", "jarn_at1", "fgsm_at1", "jarn"), TABLE4_SECONDS)
    },
    "table5": {
        "jarn": dict(zip(TABLE5_KEYS, ("79.6", "76.7", "73.6", "17.4", "67.2", "15.5", "93.9"))),
        "jarn_at1": dict(zip(TABLE5_KEYS, ("66.4", "63.0", "70.3", "59.3", "65.7", "46.7", "84.8"))),
    },
}

# Figure 5's sweeps around the flagfile's values: [paper] the three hyperparameters (section 4.3.5);
# [ours] the values (the paper's Figure 5 gives its own only as a plot).
FIGURE5_SWEEPS: Dict[str, Tuple[float, ...]] = {
    "lambda_adv": (0.5, 2.0, 5.0),
    "batch_size": (32, 128),
    "disc_update_every": (1, 5, 20),
}
# The schedules of --experiment=schedule: JARN from this fraction of training on (0 = the whole run).
SCHEDULE_STARTS: Dict[str, Tuple[float, ...]] = {"jarn_start": (0.0, 0.75, 0.875)}
# The paired comparison: (treated row, reference row); its measures: (heading, key, words in sentences).
PAIRS = (("jarn", "standard"), ("jarn_at1", "pgd_at7"))
PAIRED_METRICS = (
    ("Worst case", "worst_case", "worst-case accuracy"),
    ("AutoAttack", "autoattack", "AutoAttack accuracy"),
    ("Clean", "clean", "clean accuracy"),
)
# Section 3 of the paper (jarn_iclr2020.txt), the claim --experiment=schedule tests.
SCHEDULE_CLAIM = (
    "using JARN framework only on the last few epoch (25%) to train the classifier confers similar "
    "adversarial robustness compared to training with JARN for the whole duration"
)
TRAIN_SET_SIZE = {"mnist": 60000, "fashion_mnist": 60000, "svhn": 73257, "cifar10": 50000}
PAPER_DATASET = {"table1": "mnist", "table2": "svhn"}
PAPER_EPS = {"mnist": "0.3", "svhn": "8/255", "cifar10": "8/255"}
# PGD-AT7 trained at 1.5x eps (Figure 2): (eps, step size). [paper] 12/255 against 8/255 (section 4.3.1);
# [ours] 0.15 at CPU scale (1.5x our 0.1) and the step eps/4, the ratio of the PGD-AT7 flagfiles.
WIDE_EPS = {"cpu": ("0.15", "0.0375"), "paper": ("12/255", "3/255")}
# Eps of the sweep of Figure 2, as multiples of the scale's eps.
SWEEP_MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def parse_fraction(text: str) -> float:
    """``0.1`` or ``8/255`` as a float."""
    text = str(text).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def eps_name(text: str) -> str:
    """The eps of directory names: ``f"{eps:g}"`` (0.1, 0.0313725)."""
    return f"{parse_fraction(text):g}"


# ---------------------------------------------------------------------------
# What an experiment needs.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One trained configuration (seeds apart).

    Attributes:
      row: the flagfile's row (``standard``, ``jarn``...).
      label: its name in the tables.
      flagfile: the flagfile, relative to the repository.
      base: the model directory's name without the seed.
      extra_flags: flags after the flagfile (variants).
    """

    row: str
    label: str
    flagfile: str
    base: str
    extra_flags: Tuple[str, ...] = ()

    def name(self, seed: int) -> str:
        return f"{self.base}_seed{seed}"


@dataclasses.dataclass
class Job:
    """One subprocess: a training or an evaluation.

    Attributes:
      kind: ``train`` or ``eval``.
      key: its output directory, relative to the output root.
      args: the arguments after ``python``.
      markers: files (relative to the output root) whose existence means done.
      log: its log file, relative to the output root.
      needs: keys of the jobs whose outputs it reads.
      flagfile: the flagfile of a training.
      status: ``reuse``, ``run``, ``resume``, ``busy``, ``ran``, ``failed``, ``skipped``.
      seconds: its wall time when it ran.
    """

    kind: str
    key: str
    args: List[str]
    markers: List[str]
    log: str
    needs: List[str] = dataclasses.field(default_factory=list)
    flagfile: Optional[str] = None
    status: str = ""
    seconds: Optional[float] = None


class Context:
    """An experiment's settings, paths and jobs."""

    def __init__(self, args: argparse.Namespace):
        self.experiment: str = args.experiment
        self.scale: str = args.scale
        self.seeds: List[int] = args.seeds
        # The command's --seeds; ``seeds`` grows to every seed on disk before the report.
        self.run_seeds: List[int] = list(args.seeds)
        self.out = os.path.abspath(args.output_dir or os.path.join(REPO, "runs", f"paper_{self.scale}"))
        inside = self.out == REPO or self.out.startswith(REPO + os.sep)
        # Commands run in the repository (the flagfiles' paths are relative to it).
        self.out_cmd = os.path.relpath(self.out, REPO) if inside else self.out
        self.dataset = (
            "fashion_mnist" if self.scale == "cpu" else PAPER_DATASET.get(self.experiment, "cifar10")
        )
        if args.eps:
            self.eps_list = list(args.eps)
        elif self.scale == "cpu":
            self.eps_list = ["0.1", "0.05"] if self.experiment in ATTACK_COLUMNS else ["0.1"]
        else:
            self.eps_list = [PAPER_EPS[self.dataset]]
        self.eps = self.eps_list[0]
        default_n = 1000 if self.scale == "cpu" else None  # paper: the whole test set
        self.num_examples: Optional[int] = args.num_examples or default_n
        self.autoattack_examples: int = args.autoattack_examples or (500 if self.scale == "cpu" else 1000)
        self.rows: Optional[List[str]] = args.rows
        self.common_flags = ["--download" if args.download else "--nodownload"]
        if args.data_dir:
            self.common_flags.append(f"--data_dir={args.data_dir}")
        self.extra_train = shlex.split(args.extra_train_flags or "")
        self.extra_eval = shlex.split(args.extra_eval_flags or "")
        self.jobs: Dict[str, Job] = {}

    # Paths.
    def path(self, rel: str) -> str:
        return os.path.join(self.out, rel)

    def cmd_path(self, rel: str) -> str:
        return os.path.join(self.out_cmd, rel)

    # Models.
    def spec(self, row: str) -> ModelSpec:
        """The model of a row; ``pgd_at7_wide`` is PGD-AT7 at 1.5x eps."""
        if row == "pgd_at7_wide":
            eps, step = WIDE_EPS[self.scale]
            base = self.spec("pgd_at7")
            return dataclasses.replace(
                base,
                label=f"PGD-AT7 (eps {eps})",
                base=f"{base.base}_eps{eps_name(eps)}",
                extra_flags=(f"--eps={eps}", f"--step_size={step}"),
            )
        if self.scale == "cpu":
            return ModelSpec(row, ROW_LABELS[row], f"flags/cpu_{row}.cfg", row)
        return ModelSpec(row, ROW_LABELS[row], f"flags/{self.dataset}_{row}.cfg", f"{self.dataset}_{row}")

    def variant(self, spec: ModelSpec, flag: str, value: Any) -> ModelSpec:
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return dataclasses.replace(
            spec,
            label=f"{spec.label} ({flag}={text})",
            base=f"{spec.base}_{flag}{text}",
            extra_flags=spec.extra_flags + (f"--{flag}={text}",),
        )

    def model_key(self, spec: ModelSpec, seed: int) -> str:
        return f"models/{spec.name(seed)}"

    def add(self, job: Job) -> Job:
        return self.jobs.setdefault(job.key, job)

    def train(self, spec: ModelSpec, seed: int) -> str:
        """Adds the training of ``spec`` with ``seed``; returns its key."""
        key = self.model_key(spec, seed)
        args = (
            ["-m", "jarn_tf.train", f"--flagfile={spec.flagfile}", f"--seed={seed}"]
            + [f"--model_dir={self.cmd_path(key)}", *self.common_flags, "--verbose=0"]
            # The variant's flags last: --extra_train_flags must not undo them.
            + self.extra_train
            + list(spec.extra_flags)
        )
        self.add(
            Job("train", key, args, [f"{key}/export/metadata.json"], f"{key}.log", flagfile=spec.flagfile)
        )
        return key

    def evaluate(
        self,
        model: str,
        subdir: str,
        flags: Sequence[str],
        markers: Sequence[str] = (),
        extra_models: Sequence[str] = (),
        key: Optional[str] = None,
    ) -> str:
        """Adds ``python -m jarn_tf.evaluate`` of a model (its dir name) into evals/<model>/<subdir>."""
        key = key or f"evals/{model}/{subdir}"
        args = (
            ["-m", "jarn_tf.evaluate", f"--model={self.cmd_path('models/' + model)}", *flags]
            + ["--seed=0", "--verbose=0", *self.common_flags, f"--output_dir={self.cmd_path(key)}"]
            + self.extra_eval
        )
        needs = [f"models/{m}" for m in (model, *extra_models)]
        marks = [f"{key}/results.json"] + [f"{key}/{m}" for m in markers]
        self.add(Job("eval", key, args, marks, f"{key}.log", needs=needs))
        return key

    def n_flag(self, n: Optional[int]) -> List[str]:
        return [f"--num_examples={n}"] if n else []

    def attacks_dir(self, model: str, eps: str) -> str:
        return f"evals/{model}/attacks_eps{eps_name(eps)}"

    def eval_attacks(self, model: str, eps: str) -> str:
        flags = [
            f"--attacks={EVAL_ATTACKS}",
            "--pgd_loss=both",
            f"--eps={eps}",
            *self.n_flag(self.num_examples),
        ]
        return self.evaluate(model, f"attacks_eps{eps_name(eps)}", flags)

    def autoattack_dir(self, model: str, eps: str) -> str:
        return f"evals/{model}/autoattack_eps{eps_name(eps)}"

    def eval_autoattack(self, model: str, eps: str) -> str:
        flags = ["--attacks=autoattack", f"--eps={eps}", *self.n_flag(self.autoattack_examples)]
        return self.evaluate(model, f"autoattack_eps{eps_name(eps)}", flags)

    def eval_jacobian(self, model: str) -> str:
        flags = ["--attacks=clean", "--jacobian_figure", f"--eps={self.eps}", *self.n_flag(self.num_examples)]
        flags.append("--square_check_queries=0")
        return self.evaluate(model, "jacobian", flags, markers=["jacobians.png"])

    def eval_loss_surface(self, model: str) -> str:
        flags = ["--attacks=clean", "--loss_surface", f"--eps={self.eps}", *self.n_flag(self.num_examples)]
        flags.append("--square_check_queries=0")
        return self.evaluate(model, "loss_surface", flags, markers=["loss_surface.json"])

    def transfer_dirs(self, target: str, source: str) -> Tuple[str, str]:
        e = eps_name(self.eps)
        return (
            f"evals/{target}/transfer_from_{source}_eps{e}",
            f"evals/{target}/transfer_fgsm_from_{source}_eps{e}",
        )

    def eval_transfer(self, target: str, source: str) -> None:
        pgd_dir, fgsm_dir = self.transfer_dirs(target, source)
        src = f"--source_model={self.cmd_path('models/' + source)}"
        n = self.n_flag(self.num_examples)
        self.evaluate(
            target,
            "",
            [src, "--attacks=clean,fgsm,pgd20", f"--eps={self.eps}", *n],
            extra_models=[source],
            key=pgd_dir,
        )
        # The evaluation transfers PGD only; FGSM is PGD-1 of step eps without random start.
        flags = [src, "--attacks=transfer_pgd1", f"--eps={self.eps}", f"--pgd_step_size={self.eps}"]
        flags += ["--nopgd_random_start", *n, "--noeps_checks", "--square_check_queries=0"]
        self.evaluate(target, "", flags, extra_models=[source], key=fgsm_dir)

    def sweep_grid(self) -> str:
        eps = parse_fraction(self.eps)
        return ",".join(f"{m * eps:.6g}" for m in SWEEP_MULTIPLES)

    def eval_sweep(self, seed: int, models: Sequence[str]) -> str:
        key = f"figure2/eps_sweep_seed{seed}"
        compare = ",".join(self.cmd_path("models/" + m) for m in models[1:])
        flags = [f"--compare_models={compare}", "--attacks=clean", "--eps_sweep"]
        flags += ["--sweep_attacks=pgd5,pgd10,pgd20", f"--sweep_eps={self.sweep_grid()}", f"--eps={self.eps}"]
        flags += [*self.n_flag(self.num_examples), "--square_check_queries=0"]
        return self.evaluate(
            models[0], "", flags, markers=["eps_sweep.json"], extra_models=models[1:], key=key
        )

    def other_seed(self, seed: int) -> int:
        """The seed of the "same model, differently initialised" of Table 5."""
        if len(self.seeds) > 1:
            return self.seeds[(self.seeds.index(seed) + 1) % len(self.seeds)]
        return seed + 1


def flagfile_values(path: str, seen: Optional[set] = None) -> Dict[str, str]:
    """The flags a flagfile sets (nested flagfiles expanded, the last value wins).

    Raises:
      FileNotFoundError: the flagfile or one it includes does not exist.
    """
    seen = seen or set()
    full = os.path.join(REPO, path) if not os.path.isabs(path) else path
    if not os.path.isfile(full):
        raise FileNotFoundError(path)
    values: Dict[str, str] = {}
    with open(full) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, _, value = line[2:].partition("=")
            if name == "flagfile":
                if value not in seen:
                    values.update(flagfile_values(value, seen | {value}))
            else:
                values[name] = value
    return values


# ---------------------------------------------------------------------------
# Plans: the jobs of each experiment.


def _rows(ctx: Context) -> List[str]:
    rows = list(EXPERIMENT_ROWS[ctx.experiment])
    return [r for r in rows if ctx.rows is None or r in ctx.rows]


def plan(ctx: Context) -> None:
    """Fills ``ctx.jobs`` with the experiment's trainings and evaluations, in order."""
    exp = ctx.experiment
    specs = _specs(ctx)
    if exp == "figure5":
        specs = [s for spec in specs for s in figure5_specs(ctx, spec)[1]]
    for spec in specs:
        for seed in ctx.seeds:
            ctx.train(spec, seed)
    if exp == "table5":
        at7 = ctx.spec("pgd_at7")
        for spec in specs:
            for seed in ctx.seeds:
                ctx.train(at7, seed)
                ctx.train(spec, ctx.other_seed(seed))
    if exp in ATTACK_COLUMNS or exp in ("figure5", "table5"):
        for spec in specs:
            for seed in ctx.seeds:
                for eps in ctx.eps_list if exp in ATTACK_COLUMNS else [ctx.eps]:
                    ctx.eval_attacks(spec.name(seed), eps)
    if exp == "table3":
        for spec in specs:
            for seed in ctx.seeds:
                ctx.eval_autoattack(spec.name(seed), ctx.eps)
                ctx.eval_jacobian(spec.name(seed))
    if exp in ("paired", "schedule"):
        # The same evaluations as Table 3's at its first eps: a model of both reuses them.
        for spec in specs:
            for seed in ctx.seeds:
                ctx.eval_attacks(spec.name(seed), ctx.eps)
                ctx.eval_autoattack(spec.name(seed), ctx.eps)
    if exp == "table5":
        for spec in specs:
            for seed in ctx.seeds:
                ctx.eval_transfer(spec.name(seed), ctx.spec("pgd_at7").name(seed))
                ctx.eval_transfer(spec.name(seed), spec.name(ctx.other_seed(seed)))
    if exp == "figure2":
        for seed in ctx.seeds:
            ctx.eval_sweep(seed, [s.name(seed) for s in specs])
    if exp == "figure3":
        for spec in specs:
            for seed in ctx.seeds:
                ctx.eval_loss_surface(spec.name(seed))
    if exp == "figure4":
        for spec in specs:
            for seed in ctx.seeds:
                ctx.eval_jacobian(spec.name(seed))


def sweep_specs(
    ctx: Context, spec: ModelSpec, sweeps: Mapping[str, Sequence[float]]
) -> Tuple[Dict[str, str], List[ModelSpec]]:
    """The flagfile's values of the swept flags and the models: the base, then one per other value."""
    values = flagfile_values(spec.flagfile)
    base = {flag: values.get(flag, "?") for flag in sweeps}
    out = [spec]
    for flag, choices in sweeps.items():
        for v in choices:
            if base[flag] != "?" and float(base[flag]) == float(v):
                continue  # the base model stands for the flagfile's value
            out.append(ctx.variant(spec, flag, v))
    return base, out


def figure5_specs(ctx: Context, spec: ModelSpec) -> Tuple[Dict[str, str], List[ModelSpec]]:
    return sweep_specs(ctx, spec, FIGURE5_SWEEPS)


def schedule_specs(ctx: Context, spec: ModelSpec) -> Tuple[Dict[str, str], List[ModelSpec]]:
    """JARN's flagfile model (its --jarn_start) and one variant per other start: jarn_jarn_start0..."""
    return sweep_specs(ctx, spec, SCHEDULE_STARTS)


def check_flagfiles(ctx: Context) -> Optional[str]:
    """An error message when a flagfile a training needs is missing."""
    for job in ctx.jobs.values():
        if not job.flagfile:
            continue
        try:
            flagfile_values(job.flagfile)
        except FileNotFoundError as e:
            name = os.path.basename(job.key)
            return (
                f"flagfile {e.args[0]} does not exist (needed to train {name} for --experiment="
                f"{ctx.experiment} --scale={ctx.scale}); write it or leave the row out with --rows."
            )
    return None


# ---------------------------------------------------------------------------
# Running.


def _display(args: Sequence[str]) -> str:
    return shlex.join(["python", *args])


def _done(ctx: Context, job: Job) -> bool:
    return all(os.path.exists(ctx.path(m)) for m in job.markers)


def training_pid(model_dir: str) -> Optional[int]:
    """The id of a running ``jarn_tf.train`` process whose --model_dir is ``model_dir`` (Linux's /proc).

    None when there is none, or no /proc to look in.
    """
    target = os.path.realpath(model_dir)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
            if "jarn_tf.train" not in argv and not any(os.path.basename(a) == "jarn-train" for a in argv[:2]):
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        for i, arg in enumerate(argv):
            if arg.startswith("--model_dir="):
                value = arg.split("=", 1)[1]
            elif arg == "--model_dir" and i + 1 < len(argv):
                value = argv[i + 1]
            else:
                continue
            if os.path.realpath(os.path.join(cwd, value)) == target:
                return int(pid)
    return None


def _initial_status(ctx: Context, job: Job) -> str:
    if _done(ctx, job):
        return "reuse"
    if job.kind == "train":
        if training_pid(ctx.path(job.key)) is not None:
            return "busy"
        if glob.glob(ctx.path(f"{job.key}/checkpoints/ckpt-*")):
            return "resume"
    return "run"


def execute(ctx: Context, dry_run: bool, out=print) -> bool:
    """Runs (or, with ``dry_run``, lists) every job not done yet; True when all are done."""
    ok = True
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    for job in ctx.jobs.values():
        job.status = _initial_status(ctx, job)
        failed_needs = [
            n for n in job.needs if ctx.jobs.get(n) and ctx.jobs[n].status in ("failed", "skipped", "busy")
        ]
        if job.status == "reuse":
            out(f"[reuse]  {job.key}: {job.markers[0]} exists")
            continue
        if job.status == "busy":
            pid = training_pid(ctx.path(job.key))
            out(f"[busy]   {job.key}: process {pid} is training it; run this again when it has finished.")
            ok = False
            continue
        if failed_needs and not dry_run:
            job.status = "skipped"
            out(f"[skip]   {job.key}: needs {', '.join(failed_needs)}")
            ok = False
            continue
        out(f"[{job.status}]{' ' * (7 - len(job.status))}{_display(job.args)}")
        if dry_run:
            continue
        log_path = ctx.path(job.log)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        start = time.time()
        with open(log_path, "a") as log:
            log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}: {_display(job.args)}\n")
            log.flush()
            rc = run_subprocess(job.args, log, env)
        job.seconds = time.time() - start
        if job.kind == "train":
            _record_time(ctx.path(f"{job.key}.time.json"), job, rc, start)
        if rc == 0 and _done(ctx, job):
            job.status = "ran"
            out(f"         done in {job.seconds:.0f} s")
        else:
            job.status = "failed"
            ok = False
            why = f"exit status {rc}" if rc else f"exited without writing {job.markers[0]} (preempted?)"
            again = " Running this again resumes the training." if job.kind == "train" else ""
            out(f"[failed] {job.key}: {why}; see {log_path}.{again}")
            out(_tail(log_path))
    return ok


def run_subprocess(args: Sequence[str], log, env: Mapping[str, str]) -> int:
    """Runs ``python args`` in the repository, output to ``log``; returns its exit status.

    A SIGTERM to this process is passed on to the child (a training then
    checkpoints and exits, ready to resume), after which this process exits.
    """
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT
    )
    terminated = []

    def forward(signum, frame):
        terminated.append(signum)
        proc.send_signal(signum)

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: no forwarding
        previous = None
    try:
        rc = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if terminated:
        print(f"SIGTERM: passed on to `{_display(args)}`, which exited with status {rc}.", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    return rc


def _record_time(path: str, job: Job, rc: int, start: float) -> None:
    record = {"runs": []}
    if os.path.exists(path):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            pass
    record.setdefault("runs", []).append(
        {
            "start": datetime.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
            "seconds": round(job.seconds or 0.0, 1),
            "returncode": rc,
            "command": _display(job.args),
            "note": "wall time of the whole subprocess (start-up, training, export)",
        }
    )
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path) as f:
            return "".join("         | " + line for line in f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# Reading results.


def load_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def accuracy(ctx: Context, rel_dir: str, attack: str) -> Optional[float]:
    """An attack's accuracy (%) in ``rel_dir/results.json``, None if absent."""
    results = load_json(ctx.path(f"{rel_dir}/results.json"))
    if not results or attack not in results.get("accuracy", {}):
        return None
    return 100.0 * float(results["accuracy"][attack])


def eval_seconds(ctx: Context, rel_dir: str) -> Optional[float]:
    results = load_json(ctx.path(f"{rel_dir}/results.json"))
    return float(results["wall_time_seconds"]) if results and "wall_time_seconds" in results else None


def seeds_on_disk(ctx: Context) -> List[int]:
    """``ctx.seeds`` plus every seed of this experiment's models that has an evaluation."""
    seeds = set(ctx.seeds)
    for spec in _specs(ctx):
        for path in glob.glob(ctx.path(f"evals/{spec.base}_seed*")):
            suffix = os.path.basename(path)[len(spec.base) + len("_seed") :]
            if suffix.isdigit():
                seeds.add(int(suffix))
    return sorted(seeds)


def seeds_with_numbers(ctx: Context, spec: ModelSpec) -> List[int]:
    """The seeds of ``ctx.seeds`` behind a row's numbers: those with a training record (Table 4),
    an eps sweep (Figure 2) or an evaluation (the other experiments)."""
    if ctx.experiment == "table4":
        return [s for s in ctx.seeds if epoch_times(ctx, spec.name(s))[0] is not None]
    if ctx.experiment == "figure2":
        return [s for s in ctx.seeds if os.path.exists(ctx.path(f"figure2/eps_sweep_seed{s}/eps_sweep.json"))]
    return [s for s in ctx.seeds if os.path.isdir(ctx.path(f"evals/{spec.name(s)}"))]


def seeds_sentence(ctx: Context) -> str:
    """Which seeds the command ran and which seeds the numbers come from, row by row where they differ."""
    ran = ", ".join(map(str, ctx.run_seeds))
    groups: Dict[Tuple[int, ...], List[str]] = {}
    for spec in _specs(ctx):
        groups.setdefault(tuple(seeds_with_numbers(ctx, spec)), []).append(spec.label)

    def seeds(values: Tuple[int, ...]) -> str:
        if not values:
            return "no seed"
        return f"seed{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"

    if len(groups) == 1:
        used = seeds(next(iter(groups)))
    else:
        ordered = sorted(groups.items(), key=lambda kv: kv[0])
        used = "; ".join(f"{seeds(k)} for {', '.join(labels)}" for k, labels in ordered)
    plural = "s" if len(ctx.run_seeds) > 1 else ""
    return f"This command ran seed{plural} {ran}; the numbers come from {used}."


def jacobian_numbers(ctx: Context, model: str) -> Dict[str, Optional[float]]:
    """Mean |cos(J, x)|, alignment and saliency cosine of evals/<model>/jacobian, None where not recorded."""
    out: Dict[str, Optional[float]] = {
        "jacobian_cosine": None,
        "jacobian_alignment": None,
        "saliency_cosine": None,
    }
    for name in ("jacobian_stats.json", "results.json"):
        data = load_json(ctx.path(f"evals/{model}/jacobian/{name}"))
        for key in out:
            found = _find_key(data, key) if data else None
            if out[key] is None and found is not None:
                out[key] = found
    return out


def _find_key(data: Any, key: str) -> Optional[float]:
    if isinstance(data, Mapping):
        if key in data:
            value = data[key]
            if isinstance(value, Mapping):
                value = value.get("mean")
            return float(value) if isinstance(value, (int, float)) else None
        for v in data.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


_EVENT_CACHE: Dict[str, Dict[str, List[Tuple[int, float, float]]]] = {}


def read_scalars(logdir: str) -> Dict[str, List[Tuple[int, float, float]]]:
    """TensorBoard tag -> [(step, wall time, value)] of the event files in ``logdir``."""
    if logdir in _EVENT_CACHE:
        return _EVENT_CACHE[logdir]
    out: Dict[str, List[Tuple[int, float, float]]] = {}
    files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    if files:
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # summary_iterator's deprecation notice
        import tensorflow as tf

        for path in files:
            try:
                for event in tf.compat.v1.train.summary_iterator(path):
                    for value in event.summary.value:
                        if value.HasField("tensor"):
                            v = tf.make_ndarray(value.tensor)
                            if v.size != 1:
                                continue
                            number = float(v.reshape(-1)[0])
                        elif value.HasField("simple_value"):
                            number = float(value.simple_value)
                        else:
                            continue
                        out.setdefault(value.tag, []).append(
                            (int(event.step), float(event.wall_time), number)
                        )
            except Exception:  # a truncated event file (a run still writing): keep what was read
                continue
    for v in out.values():
        v.sort()
    _EVENT_CACHE[logdir] = out
    return out


def disc_accuracy(ctx: Context, model: str) -> Optional[float]:
    """The last train/disc_accuracy (%) of a model, None if not logged."""
    values = read_scalars(ctx.path(f"models/{model}/train")).get("train/disc_accuracy")
    return 100.0 * values[-1][2] if values else None


_FINISHED = re.compile(r"Finished at step (\d+) in (\d+) s(?: \(resumed from step (\d+)\))?")


def training_time(ctx: Context, model: str, partial_ok: bool = False) -> Tuple[Optional[float], str]:
    """Training wall time (s) and where it comes from.

    The train command's "Finished at step N in S s" lines of the model's log
    (one per run, summed over resumptions), else the subprocess wall times
    this driver recorded (<model>.time.json), else the span of the
    TensorBoard events' times.

    A run killed before it finished logs no time, so a log whose runs do not
    start at step 0 covers only the steps after the resume. That time is
    returned only with ``partial_ok`` (its source says which steps it covers);
    otherwise the time is None ("not recorded"), so that means over seeds and
    seconds per epoch are not made from part of a run. The TensorBoard span
    is not used then either: it would include the time between the kill and
    the resume.
    """
    try:
        with open(ctx.path(f"models/{model}.log")) as f:
            found = _FINISHED.findall(f.read())
        if found:
            seconds = float(sum(int(s) for _, s, _ in found))
            first = min(int(start or 0) for _, _, start in found)
            if first == 0:
                return seconds, "train's log"
            last = max(int(step) for step, _, _ in found)
            source = (
                f"train's log, steps {first}-{last} only: the run before the resume from step {first} "
                "was stopped and logged no time"
            )
            return (seconds if partial_ok else None), source
    except OSError:
        pass
    record = load_json(ctx.path(f"models/{model}.time.json"))
    if record and record.get("runs"):
        return sum(r["seconds"] for r in record["runs"]), "subprocess wall time"
    scalars = read_scalars(ctx.path(f"models/{model}/train"))
    times = [t for values in scalars.values() for _, t, _ in values]
    if len(times) > 1:
        return max(times) - min(times), "TensorBoard event times"
    return None, "not recorded"


def model_config(ctx: Context, model: str) -> Optional[Dict[str, Any]]:
    meta = load_json(ctx.path(f"models/{model}/export/metadata.json"))
    if meta and "config" in meta:
        return meta["config"]
    return load_json(ctx.path(f"models/{model}/config.json"))


def epoch_times(ctx: Context, model: str) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(epochs, seconds per epoch over the run, seconds per epoch in the JARN/AT phase)."""
    config = model_config(ctx, model)
    if not config:
        return None, None, None
    opt, cls = config["optimizer"], config["classifier"]
    n_train = TRAIN_SET_SIZE.get(config["data"]["dataset"])
    if not n_train:
        return None, None, None
    steps_per_epoch = n_train // opt["batch_size"]
    epochs = opt["train_steps"] / steps_per_epoch
    seconds, _ = training_time(ctx, model)
    per_epoch = seconds / epochs if seconds else None
    rates = read_scalars(ctx.path(f"models/{model}/train")).get("train/examples_per_second", [])
    start = cls["jarn_start"] * opt["train_steps"] if cls.get("jarn") else 0.0
    every = config.get("runtime", {}).get("summary_every", 0)
    phase = [v for step, _, v in rates if step - every >= start] or [v for _, _, v in rates]
    phase_epoch = n_train / _median(phase) if phase else None
    return epochs, per_epoch, phase_epoch


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


# ---------------------------------------------------------------------------
# Formatting.


def mean_present(values: Iterable[Optional[float]]) -> Optional[float]:
    """The mean of the values present (not None); None when none is."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def mean_std(values: Iterable[Optional[float]], digits: int = 1, spec: Optional[str] = None) -> str:
    """``mean ± sample std`` of the values present; ``-`` when none.

    Formatted with ``spec`` (e.g. ``.3g``), else with ``digits`` decimals.
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    spec = spec or f".{digits}f"
    mean = mean_present(vals)
    if len(vals) == 1:
        return format(mean, spec)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{format(mean, spec)} ± {format(std, spec)}"


# t_{0.975, df}, df = 1..30: the two-sided 95% quantile of Student's t, to 4 decimals.
T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
Z975 = 1.959963984540054  # the normal's 0.975 quantile


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom (the 95% interval's multiplier).

    The table for df <= 30; beyond, the normal quantile corrected by the Cornish-Fisher
    expansion (Abramowitz & Stegun 26.7.5), within 1e-7 of the exact value there.

    Raises:
      ValueError: df < 1.
    """
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(g / df ** (i + 1) for i, g in enumerate(terms))


@dataclasses.dataclass(frozen=True)
class PairedT:
    """The paired t of differences (treated - reference, one per seed).

    Attributes:
      seeds: the seeds with both numbers, in order.
      diffs: their differences.
      mean: the mean difference (None without any).
      sd: the sample standard deviation (None below 2 seeds).
      lo, hi: the 95% interval mean ± t_{0.975, n-1} sd / sqrt(n) (None below 2 seeds).
    """

    seeds: Tuple[int, ...]
    diffs: Tuple[float, ...]
    mean: Optional[float]
    sd: Optional[float]
    lo: Optional[float]
    hi: Optional[float]

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired_t(pairs: Iterable[Tuple[int, Optional[float], Optional[float]]]) -> PairedT:
    """The paired t of (seed, treated, reference) values; seeds missing either value are left out."""
    kept = [(seed, a - b) for seed, a, b in pairs if a is not None and b is not None]
    seeds = tuple(k[0] for k in kept)
    diffs = tuple(k[1] for k in kept)
    n = len(diffs)
    if n == 0:
        return PairedT(seeds, diffs, None, None, None, None)
    mean = sum(diffs) / n
    if n < 2:
        return PairedT(seeds, diffs, mean, None, None, None)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return PairedT(seeds, diffs, mean, sd, mean - half, mean + half)


def _seed_list(seeds: Sequence[int]) -> str:
    if not seeds:
        return "no seed"
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def paired_conclusion(stats: PairedT, what: str, treated: str, reference: str) -> str:
    """What the 95% interval of ``stats`` supports, in one sentence (``what``: e.g. worst-case accuracy)."""
    head = what[:1].upper() + what[1:]
    if stats.n == 0:
        return f"{head}: no seed has both {treated}'s and {reference}'s number yet."
    if stats.lo is None or stats.hi is None:
        return (
            f"{head}: not enough seeds for an interval (only {_seed_list(stats.seeds)}: "
            f"{stats.mean:+.2f} points); a paired t needs two or more."
        )
    interval = f"[{stats.lo:+.2f}, {stats.hi:+.2f}]"
    if stats.lo > 0 or stats.hi < 0:
        return (
            f"{head}: the 95% interval {interval} excludes 0: {treated} changes {what} by "
            f"{stats.mean:+.2f} points (between {stats.lo:+.2f} and {stats.hi:+.2f}) against {reference}, "
            f"over {_seed_list(stats.seeds)}."
        )
    return (
        f"{head}: the 95% interval {interval} includes 0: no effect of {treated} against {reference} "
        f"detectable with {stats.n} seeds ({', '.join(map(str, stats.seeds))}); effects outside {interval} "
        "points are unlikely."
    )


def paired_row(heading: str, stats: PairedT) -> List[str]:
    """A summary table's row: measure, seeds, mean difference, sd, 95% interval."""
    interval = "-"
    if stats.lo is not None and stats.hi is not None:
        interval = f"[{stats.lo:+.2f}, {stats.hi:+.2f}]"
    elif stats.n:
        interval = "not enough seeds"
    return [
        heading,
        ", ".join(map(str, stats.seeds)) or "-",
        "-" if stats.mean is None else f"{stats.mean:+.2f}",
        "-" if stats.sd is None else f"{stats.sd:.2f}",
        interval,
    ]


PAIRED_HEADER = ["Measure", "Seeds", "Mean difference", "Sample sd", "95% interval (paired t)"]


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def hardware() -> str:
    """This machine: processor, CPU cores and GPU names."""
    from jarn_tf.core import startup

    gpus = []
    # Without an NVIDIA device, asking TensorFlow would only print a cuInit error.
    if startup.gpu_expected():
        import tensorflow as tf

        for device in tf.config.list_physical_devices("GPU"):
            try:
                gpus.append(tf.config.experimental.get_device_details(device).get("device_name", device.name))
            except Exception:  # details are best effort
                gpus.append(device.name)
    processor = platform.processor() or platform.machine()
    return (
        f"{processor}, {os.cpu_count()} CPU cores, GPU: {', '.join(gpus) or 'none'} ({platform.platform()})"
    )


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


STATUS_WORDS = {
    "reuse": "reused",
    "ran": "ran",
    "failed": "FAILED",
    "skipped": "not run (an input failed)",
    "busy": "not run (training elsewhere)",
    "run": "not run",
    "resume": "not run",
}


def _commands_section(ctx: Context) -> List[str]:
    intro = (
        f"Run from the repository root; outputs under `{ctx.out_cmd}/`. Each line: what it produced, "
        "whether this invocation ran or reused it, the command."
    )
    lines = ["## Commands", "", intro, ""]
    for job in ctx.jobs.values():
        took = f" in {job.seconds:.0f} s" if job.seconds is not None else ""
        lines.append(
            f"- `{job.key}` ({STATUS_WORDS.get(job.status, job.status)}{took}): `{_display(job.args)}`"
        )
    return lines + [""]


def _header(ctx: Context, argv: Sequence[str]) -> List[str]:
    scale = (
        f"cpu scale: Fashion-MNIST stands in for the paper's dataset, the models of `flags/cpu_<row>.cfg`, "
        f"eps {', '.join(ctx.eps_list)}"
        if ctx.scale == "cpu"
        else f"paper scale: {ctx.dataset}, `flags/{ctx.dataset}_<row>.cfg`, eps {', '.join(ctx.eps_list)}"
    )
    n = f"the first {ctx.num_examples}" if ctx.num_examples else "all"
    return [
        f"# {EXPERIMENTS[ctx.experiment]}",
        "",
        f"Reproduced at {scale}; {n} test images for FGSM/PGD.",
        f"Written by `{shlex.join(['python', '-m', 'jarn_tf.paper', *argv])}` on "
        f"{datetime.datetime.now().isoformat(timespec='seconds')} (commit {_git_commit() or '?'}).",
        seeds_sentence(ctx) + " Every seed found on disk is used, not only the command's.",
        "Numbers: mean ± sample standard deviation over the seeds present (one seed: its value)"
        + (
            "."
            if ctx.experiment in ("paired", "schedule")  # no paper numbers to show
            else "; the paper's in parentheses"
            + (" (measured on the paper's dataset, not comparable in value)." if ctx.scale == "cpu" else ".")
        ),
        "",
    ]


def _hardware_section(ctx: Context, models: Sequence[str]) -> List[str]:
    lines = [
        "## Hardware and time",
        "",
        f"This machine (where the table was written): {hardware()}. The trainings and evaluations ran where "
        "their logs are; a reused model may come from elsewhere.",
        "",
    ]
    rows = []
    for model in models:
        seconds, source = training_time(ctx, model, partial_ok=True)
        evals = [
            eval_seconds(ctx, job.key)
            for job in ctx.jobs.values()
            if job.kind == "eval"
            and (job.key.startswith(f"evals/{model}/") or job.needs[:1] == [f"models/{model}"])
        ]
        evals = [e for e in evals if e is not None]
        rows.append(
            [
                f"`{model}`",
                f"{seconds:.0f}" if seconds is not None else "not recorded",
                source if seconds is not None else "",
                f"{sum(evals):.0f}" if evals else "-",
            ]
        )
    lines.append(md_table(["model", "training (s)", "training time from", "evaluations (s)"], rows))
    return lines + [""]


def _checked_evaluations(ctx: Context) -> List[Tuple[str, Optional[List[str]]]]:
    """Every evaluation (``evals/<model>/<name>/results.json``) of the report's models: its folder
    and the names of the gradient-masking checks it failed (None where it records no checks)."""
    models = set(_models(ctx)) | {spec.name(seed) for spec in _specs(ctx) for seed in ctx.seeds}
    found = []
    for model in sorted(models):
        for path in sorted(glob.glob(ctx.path(f"evals/{model}/*/results.json"))):
            results = load_json(path) or {}
            rel = os.path.relpath(os.path.dirname(path), ctx.out)
            checks = results.get("checks")
            failed = None if checks is None else [c["name"] for c in checks if c.get("passed") is False]
            found.append((rel, failed))
    return found


def _checks_section(ctx: Context) -> List[str]:
    """Whether the evaluations behind the report passed ``jarn_tf.evaluate``'s gradient-masking checks."""
    found = _checked_evaluations(ctx)
    checked = [(rel, failed) for rel, failed in found if failed is not None]
    if not found:
        return []
    clean = sum(not failed for _, failed in checked)
    lines = [
        "## Gradient-masking checks",
        "",
        f"{clean} of {len(checked)} checked evaluations behind this report passed every check that ran "
        "(`python -m jarn_tf.evaluate`'s: PGD beats FGSM, more steps never help, cross-entropy and margin "
        "agree, no attack raises accuracy above clean beyond sampling error (`attacks_not_above_clean`), "
        "and the others its results.md lists).",
    ]
    bad = [(rel, failed) for rel, failed in checked if failed]
    if bad:
        lines += ["", "**Failed checks (these models' robust accuracies may be overstated):**"]
        lines += [f"- `{rel}`: {', '.join(failed)}" for rel, failed in bad]
    unchecked = [rel for rel, failed in found if failed is None]
    if unchecked:
        lines += ["", f"No checks recorded (evaluations of another kind or version): {len(unchecked)}."]
    return lines + [""]


def _with_paper(ours: str, paper: Optional[str]) -> str:
    return f"{ours} ({paper})" if paper is not None else ours


# ---------------------------------------------------------------------------
# Reports.


def _specs(ctx: Context) -> List[ModelSpec]:
    """The rows' models; for schedule, JARN's once per start (Figure 5 expands its own)."""
    specs = [ctx.spec(r) for r in _rows(ctx)]
    if ctx.experiment == "schedule":
        expand = lambda spec: schedule_specs(ctx, spec)[1] if spec.row == "jarn" else [spec]  # noqa: E731
        specs = [s for spec in specs for s in expand(spec)]
    return specs


def _models(ctx: Context) -> List[str]:
    return [os.path.basename(j.key) for j in ctx.jobs.values() if j.kind == "train"]


def report_attack_table(ctx: Context) -> List[str]:
    exp = ctx.experiment
    columns = ATTACK_COLUMNS[exp]
    paper = PAPER.get(exp, {})
    lines: List[str] = []
    specs = _specs(ctx)
    for i, eps in enumerate(ctx.eps_list):
        lines += [f"## Accuracy (%), eps = {eps}" + (" (the paper's columns)" if i == 0 else ""), ""]
        rows = []
        for spec in specs:
            cells = [spec.label]
            for _, attack in columns:
                ours = mean_std(accuracy(ctx, ctx.attacks_dir(spec.name(s), eps), attack) for s in ctx.seeds)
                cells.append(_with_paper(ours, paper.get(spec.row, {}).get(attack) if i == 0 else None))
            cells.append(
                mean_std(accuracy(ctx, ctx.attacks_dir(spec.name(s), eps), "worst_case") for s in ctx.seeds)
            )
            present = [
                s for s in ctx.seeds if accuracy(ctx, ctx.attacks_dir(spec.name(s), eps), "clean") is not None
            ]
            cells.append(", ".join(str(s) for s in present) or "-")
            rows.append(cells)
        lines += [md_table(["Model", *(c for c, _ in columns), "Worst case", "Seeds"], rows), ""]
    if exp == "table3":
        lines += ["## More columns, eps = " + ctx.eps, ""]
        rows = []
        for spec in specs:
            names = [spec.name(s) for s in ctx.seeds]
            jac = [jacobian_numbers(ctx, m) for m in names]
            is_jarn = spec.row in JARN_ROWS
            rows.append(
                [
                    spec.label,
                    mean_std(accuracy(ctx, ctx.attacks_dir(m, ctx.eps), "pgd40") for m in names),
                    mean_std(accuracy(ctx, ctx.attacks_dir(m, ctx.eps), "pgd40_margin") for m in names),
                    mean_std(accuracy(ctx, ctx.attacks_dir(m, ctx.eps), "worst_case") for m in names),
                    mean_std(accuracy(ctx, ctx.autoattack_dir(m, ctx.eps), "autoattack") for m in names),
                    mean_std(accuracy(ctx, ctx.attacks_dir(m, ctx.eps), "clean") for m in names),
                    mean_std((j["jacobian_cosine"] for j in jac), spec=".3g"),
                    mean_std((j["jacobian_alignment"] for j in jac), spec=".3g"),
                    mean_std((j["saliency_cosine"] for j in jac), spec=".3g"),
                    mean_std(disc_accuracy(ctx, m) for m in names) if is_jarn else "",
                ]
            )
        header = ["Model", "PGD40 xent", "PGD40 margin", "Worst case", "AutoAttack", "Clean"]
        header += ["abs cos(J, x)", "alignment", "cos(abs J, x)", "discriminator accuracy (last, %)"]
        lines += [md_table(header, rows), ""]
        lines += [
            f"AutoAttack on the first {ctx.autoattack_examples} test images; Jacobian numbers (means "
            "over the evaluated images) from `evals/<model>/jacobian` (`-` where the evaluation did not "
            "record them). abs cos(J, x) and Etmann et al.'s alignment |<x, J>|/||J|| are 0 up to rounding "
            "for any classifier that standardises its input (J is orthogonal to x); cos(abs J, x) is the "
            "saliency cosine, which can move.",
            "",
        ]
    lines += ["## Per seed", ""]
    rows = []
    for spec in specs:
        for seed in ctx.seeds:
            for eps in ctx.eps_list:
                d = ctx.attacks_dir(spec.name(seed), eps)
                cells = [spec.label, str(seed), eps] + [fmt(accuracy(ctx, d, a)) for _, a in ALL_ATTACKS]
                if exp == "table3":
                    cells.append(fmt(accuracy(ctx, ctx.autoattack_dir(spec.name(seed), eps), "autoattack")))
                rows.append(cells + [f"`{d}`"])
    header = ["Model", "Seed", "eps", *(c for c, _ in ALL_ATTACKS)] + (
        ["AutoAttack"] if exp == "table3" else []
    )
    lines += [md_table(header + ["results"], rows), ""]
    return lines


def report_table4(ctx: Context) -> List[str]:
    rows, per_phase = [], {}
    for spec in _specs(ctx):
        values = [epoch_times(ctx, spec.name(s)) for s in ctx.seeds]
        per_phase[spec.row] = [v[2] for v in values if v[2] is not None]
        rows.append(
            [
                spec.label,
                mean_std((v[2] for v in values), 1),
                mean_std((v[1] for v in values), 1),
                mean_std((v[0] for v in values), 2),
                PAPER["table4"].get(spec.row, {}).get("seconds", "-"),
            ]
        )
    ref = per_phase.get("pgd_at7")
    for row, spec in zip(rows, _specs(ctx)):
        mine = per_phase.get(spec.row)
        row.append(f"{(sum(mine) / len(mine)) / (sum(ref) / len(ref)):.2f}" if mine and ref else "-")
        paper = PAPER["table4"].get(spec.row, {}).get("seconds")
        row.append(f"{float(paper) / 704:.2f}" if paper else "-")
    header = [
        "Model",
        "s / epoch (JARN/AT phase)",
        "s / epoch (whole run)",
        "epochs",
        "paper s / epoch",
        "ratio to PGD-AT7",
        "paper ratio",
    ]
    return [
        "## Time per training epoch",
        "",
        md_table(header, rows),
        "",
        "s / epoch (JARN/AT phase): the training set's size over the median of `train/examples_per_second` "
        "(TensorBoard) in the steps where JARN is on (the last part of the run) or, without JARN, over the "
        "whole run. s / epoch (whole run): the training wall time (see below) over the epochs, JARN's "
        "plain-training phase included. Compare ratios, not seconds, across hardware; on a shared machine "
        "the times carry the load of whatever else ran.",
        "",
    ]


def report_table5(ctx: Context) -> List[str]:
    at7 = ctx.spec("pgd_at7")
    keys = TABLE5_KEYS
    rows, per_seed = [], []
    transfer_keys = [k for k in keys if k.startswith(("at7_", "same_"))]
    for spec in _specs(ctx):
        by_seed: Dict[int, Dict[str, Optional[float]]] = {}
        for seed in ctx.seeds:
            target = spec.name(seed)
            got: Dict[str, Optional[float]] = {}
            for prefix, source in (("at7", at7.name(seed)), ("same", spec.name(ctx.other_seed(seed)))):
                pgd_dir, fgsm_dir = ctx.transfer_dirs(target, source)
                got[f"{prefix}_fgsm"] = accuracy(ctx, fgsm_dir, "transfer_pgd1")
                got[f"{prefix}_pgd20"] = accuracy(ctx, pgd_dir, "transfer_pgd20")
            wb = ctx.attacks_dir(target, ctx.eps)
            got.update(
                wb_fgsm=accuracy(ctx, wb, "fgsm"),
                wb_pgd20=accuracy(ctx, wb, "pgd20"),
                clean=accuracy(ctx, wb, "clean"),
            )
            by_seed[seed] = got
            per_seed.append(
                [spec.label, str(seed), f"`{at7.name(seed)}`", f"`{spec.name(ctx.other_seed(seed))}`"]
                + [fmt(got[k]) for k in keys]
            )
        # Every column over the same seeds: those with transfer results (white-box runs of other seeds,
        # e.g. from the paired experiment, would otherwise move the white-box and clean means alone).
        seeds = [s for s, got in by_seed.items() if any(got[k] is not None for k in transfer_keys)]
        seeds = seeds or list(by_seed)
        paper = PAPER["table5"].get(spec.row, {})
        cells = [_with_paper(mean_std([by_seed[s][k] for s in seeds]), paper.get(k)) for k in keys]
        rows.append([spec.label, *cells, ", ".join(map(str, seeds))])
    header = ["Model", "PGD-AT7 FGSM", "PGD-AT7 PGD20", "Same model FGSM", "Same model PGD20"]
    header += ["White-box FGSM", "White-box PGD20", "Clean", "Seeds"]
    return [
        f"## Accuracy (%) under transfer attacks, eps = {ctx.eps}",
        "",
        md_table(header, rows),
        "",
        "Transfer: adversarial examples crafted on the source model (PGD-AT7 of the same seed; the same "
        "configuration trained with another seed), evaluated on the target. Transfer FGSM is one PGD step "
        "of size eps without random start (`--attacks=transfer_pgd1`), which is FGSM. A defence that masks "
        "gradients shows transfer accuracy below its white-box accuracy. Each row's columns are over the "
        "seeds with transfer results (mean ± sample sd), the white-box and clean ones included.",
        "",
        "## Per seed",
        "",
        md_table(["Model", "Seed", "PGD-AT7 source", "same-model source", *header[1:-1]], per_seed),
        "",
    ]


def save_figure(path: str, draw: Callable[[Any], None], figsize=(12, 4)) -> str:
    """Draws ``draw(fig)`` on a new matplotlib figure (Agg backend) and saves it to ``path`` at 110 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize)
    draw(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_figure2(ctx: Context) -> List[str]:
    specs = _specs(ctx)
    attacks = ("pgd5", "pgd10", "pgd20")
    # (model base, attack) -> eps -> accuracies over seeds
    curves: Dict[Tuple[str, str], Dict[float, List[float]]] = {}
    copied = []
    for seed in ctx.seeds:
        sweep = load_json(ctx.path(f"figure2/eps_sweep_seed{seed}/eps_sweep.json"))
        if not sweep:
            continue
        png = ctx.path(f"figure2/eps_sweep_seed{seed}/eps_sweep.png")
        if os.path.exists(png):
            shutil.copy2(png, ctx.path(f"figure2/eps_sweep_seed{seed}.png"))
            copied.append(f"eps_sweep_seed{seed}.png")
        for c in sweep["curves"]:
            base = re.sub(r"_seed\d+$", "", os.path.basename(c["model"]))
            for e, a in zip(c["eps"], c["accuracy"]):
                curves.setdefault((base, c["attack"]), {}).setdefault(round(e, 8), []).append(100 * a)
    lines = ["## Accuracy (%) against eps (mean over seeds)", ""]
    grid = sorted({e for v in curves.values() for e in v})
    rows = []
    for spec in specs:
        for attack in attacks:
            values = curves.get((spec.base, attack), {})
            rows.append([spec.label, attack.upper()] + [mean_std(values.get(e, [])) for e in grid])
    lines += [md_table(["Model", "Attack", *(f"eps {e:.4g}" for e in grid)], rows), ""]
    if curves:

        def draw(fig):
            for i, attack in enumerate(attacks):
                ax = fig.add_subplot(1, len(attacks), i + 1)
                for spec in specs:
                    values = curves.get((spec.base, attack), {})
                    xs = sorted(values)
                    ax.plot(xs, [sum(values[x]) / len(values[x]) for x in xs], marker="o", label=spec.label)
                ax.axvline(parse_fraction(ctx.eps), color="grey", linestyle=":", linewidth=1)
                ax.set_title(attack.upper())
                ax.set_xlabel("eps")
                ax.set_ylabel("accuracy (%)")
                ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

        save_figure(ctx.path("figure2/figure2.png"), draw)
        lines += ["![Figure 2](figure2.png)", ""]
    lines += [
        f"The sweep starts from eps x {', '.join(f'{m:g}' for m in SWEEP_MULTIPLES)} (eps = {ctx.eps}; the "
        "dotted line) and doubles eps until every accuracy is 0. PGD steps are eps/4. Each seed's own plot: "
        + (", ".join(f"`{c}`" for c in copied) or "none yet")
        + ". The paper shows this figure without numbers.",
        "",
    ]
    return lines


def report_figure3(ctx: Context) -> List[str]:
    import numpy as np

    rows, surfaces = [], []
    for spec in _specs(ctx):
        stats = []
        for seed in ctx.seeds:
            model = spec.name(seed)
            data = load_json(ctx.path(f"evals/{model}/loss_surface/loss_surface.json"))
            png = ctx.path(f"evals/{model}/loss_surface/loss_surface.png")
            if os.path.exists(png):
                shutil.copy2(png, ctx.path(f"figure3/{model}_loss_surface.png"))
            if not data:
                continue
            values = np.asarray(data["xent"])
            c = values.shape[1] // 2
            stats.append((float(values[:, c, c].mean()), float(values.max(axis=(1, 2)).mean())))
            if seed == ctx.seeds[0]:
                surfaces.append((spec.label, data))
        rows.append(
            [
                spec.label,
                mean_std((s[0] for s in stats), 3),
                mean_std((s[1] for s in stats), 3),
                ", ".join(map(str, ctx.seeds)),
            ]
        )
    lines = [
        "## Cross-entropy around the test images",
        "",
        md_table(["Model", "loss at x", "largest loss on the grid", "Seeds"], rows),
        "",
        "Means over the examples drawn (the first test images). Per model: `<model>_loss_surface.png`.",
        "",
    ]
    if surfaces:

        def draw(fig):
            for i, (label, data) in enumerate(surfaces):
                ax = fig.add_subplot(1, len(surfaces), i + 1, projection="3d")
                a, b = np.meshgrid(data["alphas"], data["betas"], indexing="ij")
                ax.plot_surface(a, b, np.asarray(data["xent"])[0], cmap="viridis")
                ax.set_title(label, fontsize=9)
                ax.set_xlabel("adversarial", fontsize=7)
                ax.set_ylabel("random", fontsize=7)

        save_figure(ctx.path("figure3/figure3.png"), draw, figsize=(3.2 * len(surfaces), 3.4))
        lines += [f"![Figure 3](figure3.png) (first test image, seed {ctx.seeds[0]})", ""]
    return lines


def report_figure4(ctx: Context) -> List[str]:
    rows, pngs = [], []
    for spec in _specs(ctx):
        jac = []
        for seed in ctx.seeds:
            model = spec.name(seed)
            jac.append(jacobian_numbers(ctx, model))
            png = ctx.path(f"evals/{model}/jacobian/jacobians.png")
            if os.path.exists(png):
                shutil.copy2(png, ctx.path(f"figure4/{model}_jacobians.png"))
                if seed == ctx.seeds[0]:
                    pngs.append((spec.label, png))
        rows.append(
            [
                spec.label,
                mean_std((j["jacobian_cosine"] for j in jac), spec=".3g"),
                mean_std((j["jacobian_alignment"] for j in jac), spec=".3g"),
                ", ".join(map(str, ctx.seeds)),
            ]
        )
    lines = [
        "## How much the Jacobians look like the images",
        "",
        md_table(["Model", "mean abs cos(J, x)", "alignment", "Seeds"], rows),
        "",
        "J = d xent / dx; `-` where the evaluation did not record the numbers. Per model: "
        "`<model>_jacobians.png` (images on top, Jacobians below).",
        "",
    ]
    if pngs:
        import matplotlib.image as mpimg

        def draw(fig):
            for i, (label, png) in enumerate(pngs):
                ax = fig.add_subplot(len(pngs), 1, i + 1)
                ax.imshow(mpimg.imread(png))
                ax.set_title(label, fontsize=9)
                ax.axis("off")

        save_figure(ctx.path("figure4/figure4.png"), draw, figsize=(10, 3.2 * len(pngs)))
        lines += [f"![Figure 4](figure4.png) (seed {ctx.seeds[0]})", ""]
    return lines


def report_figure5(ctx: Context) -> List[str]:
    """Figure 5's sweeps: each variant beside the flagfile's model over the same seeds (paired by seed),
    and the flagfile's model's spread over every seed on disk, the yardstick for one-seed differences."""
    attacks = (("FGSM", "fgsm"), ("PGD5", "pgd5"), ("PGD10", "pgd10"), ("PGD20", "pgd20"), ("Clean", "clean"))
    rows = []
    panels: Dict[str, List[Tuple[float, Dict[str, Optional[float]]]]] = {}
    spreads = []

    def results(m: ModelSpec, seeds: Sequence[int]) -> Dict[str, List[Optional[float]]]:
        return {a: [accuracy(ctx, ctx.attacks_dir(m.name(s), ctx.eps), a) for s in seeds] for _, a in attacks}

    for spec in _specs(ctx):
        base, models = figure5_specs(ctx, spec)
        every = results(spec, ctx.seeds)
        if any(v is not None for v in every["pgd20"]):
            n = sum(v is not None for v in every["pgd20"])
            spreads.append(
                f"- `{spec.base}` over {n} seed(s) on disk: PGD20 {mean_std(every['pgd20'])}, "
                f"clean {mean_std(every['clean'])}."
            )
        for flag in FIGURE5_SWEEPS:
            prefix = f"--{flag}="
            variants = [
                (m, f[len(prefix) :])
                for m in models
                if m is not spec
                for f in m.extra_flags
                if f.startswith(prefix)
            ]
            # The seeds any variant of this sweep has: the flagfile's model is shown over the same ones.
            def has_variant(seed: int) -> bool:
                return any(results(m, [seed])["clean"][0] is not None for m, _ in variants)

            seeds = [s for s in ctx.seeds if has_variant(s)] or list(ctx.seeds)
            ref = {a: mean_present(v) for a, v in results(spec, seeds).items()}
            points = []
            for m, value in [(spec, base[flag]), *variants]:
                got = results(m, seeds)
                accs = {a: mean_present(v) for a, v in got.items()}
                x = float(value) if value != "?" else math.nan
                points.append((x, accs))
                if m is spec:
                    label, diff = f"{value} (flagfile)", ""
                else:
                    label = value
                    a, r = accs["pgd20"], ref["pgd20"]
                    diff = "-" if a is None or r is None else f"{a - r:+.1f}"
                cells = [mean_std(got[a]) for _, a in attacks]
                rows.append((flag, x, [flag, label, *cells, diff, ", ".join(map(str, seeds)), f"`{m.base}`"]))
            panels[flag] = sorted(points, key=lambda p: p[0])
    rows.sort(key=lambda r: (list(FIGURE5_SWEEPS).index(r[0]), r[1]))
    header = ["Hyperparameter", "Value", *(h for h, _ in attacks), "PGD20 - flagfile's", "Seeds", "model"]
    lines = [
        f"## Accuracy (%) of JARN, eps = {ctx.eps}",
        "",
        md_table(header, [r[2] for r in rows]),
        "",
        "Each variant is the flagfile's JARN with one flag changed (the model directory's name says which); "
        "each sweep's rows, the flagfile's model's included, are over the seeds its variants have, so the "
        "difference is paired by seed. The paper shows this figure without numbers.",
        "",
        "The flagfile's model over every seed on disk (mean ± sample sd), the yardstick for a difference "
        "measured on few seeds:",
        "",
        *(spreads or ["- no results yet."]),
        "",
    ]
    if any(acc[a] is not None for pts in panels.values() for _, acc in pts for _, a in attacks):

        def draw(fig):
            for i, (flag, points) in enumerate(panels.items()):
                ax = fig.add_subplot(1, len(panels), i + 1)
                for heading, attack in attacks:
                    kept = [(x, acc[attack]) for x, acc in points if acc[attack] is not None]
                    ax.plot([k[0] for k in kept], [k[1] for k in kept], marker="o", label=heading)
                ax.set_xscale("log")
                xs = [x for x, _ in points if not math.isnan(x)]
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{x:g}" for x in xs])
                ax.minorticks_off()
                ax.set_xlabel(flag)
                ax.set_ylabel("accuracy (%)")
                ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

        save_figure(ctx.path("figure5/figure5.png"), draw)
        lines += ["![Figure 5](figure5.png)", ""]
    return lines


def measure(ctx: Context, model: str, key: str) -> Optional[float]:
    """Accuracy (%) of a model at ``ctx.eps``: ``autoattack`` from its AutoAttack evaluation, the
    others (``clean``, ``worst_case``, an attack) from its attacks evaluation."""
    if key == "autoattack":
        return accuracy(ctx, ctx.autoattack_dir(model, ctx.eps), "autoattack")
    return accuracy(ctx, ctx.attacks_dir(model, ctx.eps), key)


def _accuracy_rows(ctx: Context, specs: Sequence[ModelSpec], labels: Sequence[str]) -> List[List[str]]:
    """Per model: clean, worst case and AutoAttack (mean ± sd over seeds), the seeds behind them."""
    rows = []
    for spec, label in zip(specs, labels):
        cells = [label]
        for _, key, _ in PAIRED_METRICS[::-1]:  # clean, AutoAttack, worst case
            cells.append(mean_std(measure(ctx, spec.name(s), key) for s in ctx.seeds))
        present = [s for s in ctx.seeds if measure(ctx, spec.name(s), "clean") is not None]
        present_aa = [s for s in ctx.seeds if measure(ctx, spec.name(s), "autoattack") is not None]
        seeds = ", ".join(map(str, present)) or "-"
        if present_aa != present:
            seeds += f" (AutoAttack: {', '.join(map(str, present_aa)) or '-'})"
        rows.append(cells + [seeds])
    return rows


ACCURACY_HEADER = ["Clean", "AutoAttack", "Worst case", "Seeds"]


def _paired_sections(
    ctx: Context, treated: ModelSpec, reference: ModelSpec, t_label: str, r_label: str
) -> Tuple[List[str], Dict[str, PairedT]]:
    """Per seed: both models' numbers and their difference; then mean, sd, interval and conclusion."""
    stats: Dict[str, PairedT] = {}
    per_seed = []
    for seed in ctx.seeds:
        cells = [str(seed)]
        for _, key, _ in PAIRED_METRICS:
            a, b = measure(ctx, treated.name(seed), key), measure(ctx, reference.name(seed), key)
            cells += [fmt(a), fmt(b), "-" if a is None or b is None else f"{a - b:+.1f}"]
        per_seed.append(cells)
    for heading, key, _ in PAIRED_METRICS:
        stats[key] = paired_t(
            (s, measure(ctx, treated.name(s), key), measure(ctx, reference.name(s), key)) for s in ctx.seeds
        )
    header = ["Seed"]
    for _, _, what in PAIRED_METRICS:
        column = what.replace(" accuracy", "")
        header += [f"{t_label} {column}", f"{r_label} {column}", "difference"]
    lines = [
        md_table(header, per_seed),
        "",
        md_table(PAIRED_HEADER, [paired_row(h, stats[k]) for h, k, _ in PAIRED_METRICS]),
        "",
    ]
    lines += [f"- {paired_conclusion(stats[k], what, t_label, r_label)}" for _, k, what in PAIRED_METRICS]
    return lines + [""], stats


def _t_note(ctx: Context) -> str:
    n = len(ctx.seeds)
    t = f" (t_0.975,{n - 1} = {t_quantile_975(n - 1):.3f} with all {n} seeds)" if n > 1 else ""
    return (
        f"Differences in points of accuracy (%), {PAIRED_HEADER[4]}: mean ± t_0.975,n-1 · sd / sqrt(n) "
        f"over the n seeds with both numbers{t}. The interval covers the spread between training seeds on "
        f"the same test images (the first {ctx.num_examples or 'all'} for clean and worst case, the first "
        f"{ctx.autoattack_examples} for AutoAttack), not the sampling of the test images."
    )


def report_paired(ctx: Context) -> List[str]:
    specs = {s.row: s for s in _specs(ctx)}
    models = list(specs.values())
    rows = _accuracy_rows(ctx, models, [s.label for s in models])
    lines = [f"## Accuracy (%), eps = {ctx.eps}", "", md_table(["Model", *ACCURACY_HEADER], rows), ""]
    lines += [
        "Worst case: the share of test images classified correctly under every attack of the attacks "
        "evaluation (clean, FGSM, PGD 5/10/20/40 with cross-entropy and margin losses); AutoAttack: its "
        "own evaluation, on the first images of the same test set.",
        "",
    ]
    for treated, reference in PAIRS:
        if treated not in specs or reference not in specs:
            continue
        t, r = specs[treated], specs[reference]
        lines += [f"## {t.label} - {r.label}, paired by seed", ""]
        if (treated, reference) == ("jarn", "standard"):
            lines += [
                "With the same seed, JARN (paper variant) runs the same steps as standard training until "
                "JARN starts, so each seed's difference is the JARN phase's effect.",
                "",
            ]
        else:
            lines += [f"{t.label} and {r.label} trained with the same seed.", ""]
        section, _ = _paired_sections(ctx, t, r, t.label, r.label)
        lines += section
    lines += [_t_note(ctx), ""]
    return lines


def _phase(start: float) -> str:
    """``whole run`` or ``last 25%`` for a --jarn_start."""
    return "whole run" if start == 0 else f"last {100 * (1 - start):g}%"


def _jarn_start(spec: ModelSpec, base: str) -> float:
    value = next((f.split("=", 1)[1] for f in spec.extra_flags if f.startswith("--jarn_start=")), base)
    return float(value) if value != "?" else math.nan


def report_schedule(ctx: Context) -> List[str]:
    specs = _specs(ctx)
    standard = next((s for s in specs if s.row == "standard"), None)
    jarn = next((s for s in specs if s.row == "jarn" and not s.extra_flags), None)
    base = schedule_specs(ctx, jarn)[0]["jarn_start"] if jarn else "?"
    schedules = sorted(((_jarn_start(s, base), s) for s in specs if s.row == "jarn"), key=lambda p: p[0])
    labels, ordered = [], []
    if standard:
        labels.append(standard.label)
        ordered.append(standard)
    for start, spec in schedules:
        flagfile = ", the flagfile's" if spec is jarn else ""
        labels.append(f"JARN, {_phase(start)} (jarn_start={start:g}{flagfile})")
        ordered.append(spec)
    rows = _accuracy_rows(ctx, ordered, labels)
    for row, spec in zip(rows, ordered):
        row.insert(-1, mean_std((training_time(ctx, spec.name(s))[0] for s in ctx.seeds), 0))
        row.append(f"`{spec.base}`")
    header = ["Model", *ACCURACY_HEADER[:3], "Training (s)", "Seeds", "model"]
    lines = [f"## Accuracy (%) and training time, eps = {ctx.eps}", "", md_table(header, rows), ""]
    lines += [
        "Each JARN model is the flagfile's JARN (paper variant) with --jarn_start changed (the model "
        "directory's name says which); jarn_start=0.75 is the flagfile's own model. Training time: "
        "see Hardware and time below for where each comes from.",
        "",
    ]
    reference = next((s for start, s in schedules if start == 0.75), None)
    verdicts: Dict[str, PairedT] = {}
    if reference is not None:
        for start, spec in schedules:
            if spec is reference:
                continue
            label, r_label = f"JARN {_phase(start)}", "JARN last 25%"
            lines += [f"## {label} - {r_label}, paired by seed", ""]
            section, stats = _paired_sections(ctx, spec, reference, label, r_label)
            lines += section
            if start == 0:
                verdicts = stats
        lines += [_t_note(ctx), ""]
    lines += ["## The paper's claim", "", f"Section 3: \"{SCHEDULE_CLAIM}\".", ""]
    lines += [schedule_verdict(verdicts), ""]
    means = {}
    for start, spec in schedules:
        mean = mean_present(training_time(ctx, spec.name(seed))[0] for seed in ctx.seeds)
        if mean is not None:
            means[start] = mean
    if 0.0 in means and 0.75 in means:
        lines += [
            f"It adds that the last-25% schedule saves compute: here JARN over the whole run trained in "
            f"{means[0.0]:.0f} s and JARN in the last 25% in {means[0.75]:.0f} s (means over the seeds with "
            f"a time, ratio {means[0.0] / means[0.75]:.2f}).",
            "",
        ]
    return lines


def schedule_verdict(stats: Mapping[str, PairedT]) -> str:
    """Section 3's claim against the paired intervals of whole run - last 25% (worst case, AutoAttack)."""
    robust = [(what, stats[key]) for _, key, what in PAIRED_METRICS if key != "clean" and key in stats]
    ready = [(what, st) for what, st in robust if st.lo is not None and st.hi is not None]
    if not robust or len(ready) < len(robust):
        missing = [what for what, st in robust if st.lo is None] or ["worst-case and AutoAttack accuracy"]
        return (
            f"Verdict: none yet; {' and '.join(missing)} of the whole-run and last-25% JARN need two or more "
            "seeds with both numbers for an interval."
        )
    differ = [(what, st) for what, st in ready if st.lo > 0 or st.hi < 0]
    if differ:
        parts = "; ".join(
            f"{what} {st.mean:+.2f} points, 95% interval [{st.lo:+.2f}, {st.hi:+.2f}]" for what, st in differ
        )
        return (
            "Verdict: the numbers contradict the claim at this scale: JARN over the whole run differs from "
            f"JARN in the last 25% ({parts}; whole run minus last 25%)."
        )
    bound = max(max(abs(st.lo), abs(st.hi)) for _, st in ready)
    n = min(st.n for _, st in ready)
    return (
        f"Verdict: the numbers are consistent with the claim at this scale: with {n} seeds, no difference "
        "between JARN over the whole run and in the last 25% is detectable in worst-case or AutoAttack "
        f"accuracy; differences larger than {bound:.2f} points are unlikely."
    )


REPORTS: Dict[str, Callable[[Context], List[str]]] = {
    "table1": report_attack_table,
    "table2": report_attack_table,
    "table3": report_attack_table,
    "table4": report_table4,
    "table5": report_table5,
    "figure2": report_figure2,
    "figure3": report_figure3,
    "figure4": report_figure4,
    "figure5": report_figure5,
    "paired": report_paired,
    "schedule": report_schedule,
}


def write_report(ctx: Context, argv: Sequence[str]) -> str:
    """Writes O/<experiment>/<experiment>.md (and its figures); returns its path."""
    os.makedirs(ctx.path(ctx.experiment), exist_ok=True)
    lines = _header(ctx, argv) + REPORTS[ctx.experiment](ctx)
    lines += _checks_section(ctx) + _hardware_section(ctx, _models(ctx)) + _commands_section(ctx)
    path = ctx.path(f"{ctx.experiment}/{ctx.experiment}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path


# ---------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jarn_tf.paper",
        description="Trains (or reuses), evaluates and tabulates one of the JARN paper's tables or figures.",
    )
    p.add_argument("--experiment", required=True, help=f"One of {', '.join(EXPERIMENTS)}.")
    p.add_argument(
        "--scale", default="cpu", help="cpu (Fashion-MNIST, flags/cpu_*.cfg) or paper (the paper's datasets)."
    )
    p.add_argument(
        "--output_dir",
        default=None,
        help="Root of models, evaluations and tables. Default: runs/paper_<scale>.",
    )
    p.add_argument("--seeds", default="0", help="Comma-separated training seeds, e.g. 0,1.")
    p.add_argument(
        "--dry_run", action="store_true", help="List the commands (and what is reused); run nothing."
    )
    p.add_argument(
        "--rows", default=None, help="Only these rows (e.g. standard,jarn): partial runs and tests."
    )
    p.add_argument(
        "--eps",
        default=None,
        help="Comma-separated eps of the evaluations (first = main). Default: the scale's.",
    )
    p.add_argument(
        "--num_examples",
        type=int,
        default=None,
        help="Test images of FGSM/PGD. Default: 1000 (cpu), all (paper).",
    )
    p.add_argument(
        "--autoattack_examples",
        type=int,
        default=None,
        help="Test images of AutoAttack. Default: 500 (cpu), 1000 (paper).",
    )
    p.add_argument("--data_dir", default=None, help="Passed to every train and evaluate command.")
    p.add_argument(
        "--download", action="store_true", help="Let TFDS download the data (default: --nodownload)."
    )
    p.add_argument(
        "--extra_train_flags", default="", help="Appended to every train command (same model names!)."
    )
    p.add_argument("--extra_eval_flags", default="", help="Appended to every evaluate command.")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the command line.

    Raises:
      ValueError: an unknown experiment, scale or row, or bad seeds / eps.
    """
    args = _parser().parse_args(list(argv))
    if args.experiment not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {args.experiment!r}; valid experiments: {', '.join(EXPERIMENTS)}."
        )
    if args.scale not in SCALES:
        raise ValueError(f"unknown scale {args.scale!r}; valid scales: {', '.join(SCALES)}.")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must list distinct seeds, got {args.seeds!r}.")
    if args.rows is not None:
        args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        known = EXPERIMENT_ROWS[args.experiment]
        bad = [r for r in args.rows if r not in known]
        if bad or not args.rows:
            raise ValueError(
                f"--rows of {args.experiment} must be among {', '.join(known)}; got {bad or 'none'}."
            )
    if args.eps is not None:
        args.eps = [e.strip() for e in args.eps.split(",") if e.strip()]
        try:
            ok = args.eps and all(0 < parse_fraction(e) <= 1 for e in args.eps)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("--eps must be numbers or fractions in (0, 1], e.g. 0.1,0.05 or 8/255.")
    return args


def main(argv: Sequence[str], out=print) -> int:
    """Runs one experiment; 0 when every step succeeded, 1 when one failed, 2 for bad input."""
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = Context(args)
    try:
        plan(ctx)  # figure5 reads its flagfile
    except FileNotFoundError as e:
        print(
            f"error: flagfile {e.args[0]} does not exist (needed by --experiment={ctx.experiment}).",
            file=sys.stderr,
        )
        return 2
    problem = check_flagfiles(ctx)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out(f"{EXPERIMENTS[ctx.experiment]} ({ctx.scale} scale), outputs in {ctx.out}")
    if ctx.experiment in ("paired", "schedule") and len(ctx.seeds) < 2:
        out(
            "note: a paired interval needs two or more seeds (e.g. --seeds=0,1,2,3,4); this command "
            "uses seed(s) on disk beside its own, and says 'not enough seeds' where a pair has fewer."
        )
    ok = execute(ctx, args.dry_run, out=out)
    if args.dry_run:
        todo = sum(j.status != "reuse" for j in ctx.jobs.values())
        out(f"Dry run: {len(ctx.jobs) - todo} step(s) reused, {todo} to run.")
        return 0
    # The tables show every seed evaluated so far, not only this run's (e.g.
    # a second seed trained for some rows by an earlier --rows/--seeds run).
    ctx.seeds = seeds_on_disk(ctx)
    path = write_report(ctx, argv)
    out(f"Wrote {path}")
    return 0 if ok else 1


def run() -> None:
    """Console-script entry point (``jarn-paper``)."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
