r"""Rob-GAN (Liu & Hsieh, "From Adversarial Training to Generative Adversarial Networks"):
Table 1 and Figures 1, 5, 6/7 and 8, one command each.

  python -m jarn_tf.robgan_study --experiment=table1|figure1|figure5|figure67|figure8|all \
      --scale=cpu|cifar10 --seeds=0,1 [--output_dir=runs/robgan_cpu] \
      [--feature_net=runs/paper_cpu/models/standard_seed0] [--dry_run] [--docs_dir=docs]

Every stage is a subprocess with a fixed command, run from the repository root (the flagfiles'
paths are relative to it); its output goes to a ``.log`` beside its directory and its wall time
to a ``.time.json`` (one entry per attempt). A finished stage is skipped, a killed training
resumes from its checkpoint when the same command runs again, and a training another process is
running (same --model_dir) is left alone. ``O/study.json`` holds the settings below; running
again in the same --output_dir with other settings is refused before any work (more seeds may
be added). ``all`` runs the union of the experiments' stages once and writes every report.
``--dry_run`` prints every stage's command with its status (done, run, resume) and writes
nothing; ``--report_only`` writes the reports from what is on disk and runs nothing.

Layout (O = --output_dir, default runs/robgan_<scale>; P = cpu or cifar10):
  O/seed<S>/advgan/            python -m jarn_tf.train --flagfile=flags/P_advgan.cfg (co-training,
                               eq. 9 with the PGD attack on real images); export/ holds the
                               generator, samples.png and class_head/ (the discriminator's trunk and
                               class head, a classifier, before fine-tuning)
  O/seed<S>/advgan_ft/         flags/P_advgan_finetune.cfg --init_from=O/seed<S>/advgan (eq. 10)
  O/seed<S>/pgd_at/            flags/P_advgan_pgd_at.cfg (the baseline: PGD adversarial training of
                               the discriminator's trunk and class head)
  O/seed<S>/advgan_noattack/, advgan_acgan/, advgan_acgan_noattack/   the Figure 6/7 ablations
  O/seed<S>/eval/<model>/<split>/n<N>/eps<e>/   python -m jarn_tf.evaluate (clean and PGD-20; clean
                               only at eps 0) on the first N images of the split; .../aa/ AutoAttack
                               (<model>: pgd_at, advgan_ft, advgan_class_head)
  O/<experiment>.md, .json, .png   the report (with --docs_dir also copied to
                               <docs_dir>/results/robgan_<experiment>_<scale>.md/.json and
                               <docs_dir>/figures/robgan_<experiment>_<scale>.png)
The example count is part of an evaluation's directory because Table 1 and the figures attack
different numbers of images at the same eps.

Experiments, what they measure, and the paper's claim (``PAPER``) set against it:
  figure1   PGD-AT: accuracy under PGD-20 against eps on train and test images and their gap;
            the local Lipschitz value (LLV, mean ||d xent / d x||_2 at clean images) of train and
            test images over training (``eval/llv_train``, ``eval/llv_test`` of pgd_at/eval/)
  figure5   accuracy under PGD-20 against eps of the class head before (advgan/export/class_head)
            and after fine-tuning (advgan_ft), test images
  figure8   the train-test gap of accuracy under PGD-20 against eps, PGD-AT beside AdvGAN (fine-tuned)
  figure67  FCD and classifier score over training of the four co-trainings (eq. 9 / eq. 8, with
            and without the attack) and their sample grids
  table1    clean, PGD-20 and AutoAttack accuracy of AdvGAN (fine-tuned) and PGD-AT at the Table 1
            columns, per seed, mean and difference, beside the paper's numbers
Every verdict ("holds" / "does not hold" / "not measured") is computed from the numbers by the
criterion printed beside it; means are over the seeds whose numbers exist.

Settings ([paper]: the paper's text; [authors' code]: xuanqing94/RobGAN; [ours]: our choice):
  * Networks, losses, optimisers, training lengths: the flagfiles, which label each of their
    settings the same way. [paper] co-training with eq. 9 and a 5-step PGD attack on every real
    batch, fine-tuning with eq. 10, and the baseline of Madry et al. on the same network; [ours]
    the baseline sees as many real images as co-training plus fine-tuning (its flagfile).
  * [ours] eps in [0, 1] image units everywhere; the paper's images are in [-1, 1], so its eps
    are twice ours.
  * Evaluation attack: [paper] L-inf PGD; [authors' code] 20 steps of eps/5; [ours] from a random
    start (jarn_tf.evaluate's default), one restart, seed 0; at eps 0 the clean accuracy.
  * [ours] AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) at Table 1's nonzero columns,
    a check of the PGD numbers the paper does not have.
  * Table 1 columns: cifar10 0 / 0.01 / 0.02 / 0.04 [paper] (its 0 / 0.02 / 0.04 / 0.08 halved);
    cpu 0 / 0.05 / 0.1 / 0.2 [ours] (Fashion-MNIST, trained at eps 0.1).
  * Figure eps grid (Figures 1, 5, 8): cpu 0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2 [ours]; cifar10 0,
    0.005, 0.01, 0.015, 0.02, 0.03, 0.04 [ours] (spans Table 1's columns and the training eps
    8/255; the axis of the paper's Figure 8 goes to 0.05 of its units).
  * Examples attacked [ours]: cpu 500 (figure grids, train and test splits), 1000 (Table 1),
    100 (AutoAttack); cifar10 1000, 10000 (the whole test set) and 1000.
  * Generator quality [ours]: FCD (Frechet distance in the penultimate features of --feature_net,
    a classifier of this project) and the classifier score (the Inception score with that
    classifier), of --fcd_samples samples against as many test images, instead of the paper's
    Inception score: cpu 5000 (the FCD curves of the robust-discriminator Table 1a; more than the
    2048 features of the CPU-scale classifier, else its covariance is singular), cifar10 10000.
  * Evaluations during training [ours] (--eval_every): cpu co-training every 300 of its 1200
    steps, fine-tuning every 100 of 300, PGD-AT every 150 of 900; cifar10 co-training every
    5000 steps (100 epochs of batch 64: 78,125), fine-tuning every 2500 (60 epochs of batch 128:
    23,438), PGD-AT every 5000 (160 epochs of batch 128: 62,500): 6-16 points a curve, each FCD
    of 10000 samples costing a minute or two of GPU.
  * [ours] seeds 0 (--seeds); the Figure 6/7 ablations only for the first seed unless
    --ablation_seeds says otherwise.
  * [ours] the verdicts' criteria (printed in every report): gaps and differences of means over
    seeds, no significance test; "small eps" of Figure 1 = up to the PGD-AT run's training eps.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from jarn_tf.reproduce.paper import (
    REPO,
    flagfile_values,
    hardware,
    load_json,
    md_table,
    mean_std,
    parse_fraction,
    read_scalars,
    run_subprocess,
    save_figure,
    training_pid,
)

EXPERIMENTS = ("table1", "figure1", "figure5", "figure67", "figure8")

# The paper's numbers and claims (section 3.1, section 4, Table 1, Figures 1 and 5-8).
PAPER: Dict[str, Any] = {
    "table1": {
        "dataset": "CIFAR-10",
        "eps_paper_units": (0.0, 0.02, 0.04, 0.08),  # images in [-1, 1]
        "advgan_accuracy": (81.1, 70.41, 57.43, 30.25),  # %, L-inf PGD
        # Points over Madry et al.'s adversarial training (the parentheses of Table 1).
        "improvement_over_madry": (-0.35, 1.26, 3.69, 6.67),
        "claims": {
            "pgd_above": "AdvGAN (fine-tuned) is more accurate than PGD-AT under PGD at every eps > 0 "
            "(+1.26, +3.69, +6.67 points)",
            "pgd_grows": "AdvGAN's advantage under PGD grows with eps",
            "clean_close": "AdvGAN's clean accuracy about PGD-AT's (-0.35 points)",
        },
    },
    "figure1": {
        "gap_grows": "PGD-AT's train-test gap of accuracy under attack grows with eps for eps up to "
        "its training eps (Fig. 1 left)",
        "llv_test_grows": "the test images' LLV keeps growing during PGD-AT (Fig. 1 right)",
        "llv_train_low": "the training images' LLV stays low, below the test images' (Fig. 1 right)",
    },
    "figure5": {
        "finetune_helps": "fine-tuning (eq. 10) raises the class head's accuracy under PGD (Fig. 5)",
    },
    "figure8": {
        "smaller_gap": "AdvGAN (fine-tuned) has a smaller train-test gap of accuracy under PGD than "
        "PGD-AT (Fig. 8)",
    },
    "figure67": {
        "eq9_beats_eq8_attack": "the split loss (eq. 9) gives a better generator than the AC-GAN loss "
        "(eq. 8), both with the attack (Fig. 6)",
        "eq9_beats_eq8_noattack": "eq. 9 beats eq. 8 without the attack too (Fig. 7: 'our new loss "
        "works much better than the original AC-GAN loss')",
        "attack_faster_eq9": "the attack speeds up convergence (eq. 9) (Fig. 7)",
        "attack_faster_eq8": "the attack speeds up convergence (eq. 8) (Fig. 7)",
        "attack_better_eq9": "the attack improves the final generator (eq. 9) (Fig. 7)",
    },
}

TITLES = {
    "table1": "Rob-GAN Table 1: accuracy under L-inf attacks, AdvGAN (fine-tuned) against PGD-AT",
    "figure1": "Rob-GAN Figure 1: PGD-AT's generalisation gap under attack and its local Lipschitz value",
    "figure5": "Rob-GAN Figure 5: the effect of fine-tuning on accuracy under PGD",
    "figure8": "Rob-GAN Figure 8: train-test accuracy gap under PGD, PGD-AT against AdvGAN",
    "figure67": "Rob-GAN Figures 6 and 7: eq. 9 against eq. 8, with and without the attack",
}

SCALES: Dict[str, Dict[str, Any]] = {
    "cpu": {
        "dataset": "Fashion-MNIST",
        "figure_eps": "0,0.025,0.05,0.075,0.1,0.15,0.2",
        "table_eps": "0,0.05,0.1,0.2",
        "pgd_examples_figures": 500,
        "pgd_examples_table": 1000,
        "autoattack_examples": 100,
        "fcd_samples": 5000,
        "eval_every_cotrain": 300,
        "eval_every_finetune": 100,
        "eval_every_pgd_at": 150,
        "feature_net": "runs/paper_cpu/models/standard_seed0",
        "feature_flagfile": "flags/cpu_standard.cfg",
        "train_eps": 0.1,  # the flagfiles' eps, when the run's metadata does not say
    },
    "cifar10": {
        "dataset": "CIFAR-10",
        "figure_eps": "0,0.005,0.01,0.015,0.02,0.03,0.04",
        "table_eps": "0,0.01,0.02,0.04",
        "pgd_examples_figures": 1000,
        "pgd_examples_table": 10000,
        "autoattack_examples": 1000,
        "fcd_samples": 10000,
        "eval_every_cotrain": 5000,
        "eval_every_finetune": 2500,
        "eval_every_pgd_at": 5000,
        "feature_net": "runs/paper_paper/models/cifar10_standard_seed0",
        "feature_flagfile": "flags/cifar10_standard.cfg",
        "train_eps": 8 / 255,
    },
}

# Training stages: name -> flagfile suffix. The co-trainings are measured with the FCD.
TRAININGS = {
    "advgan": "advgan",
    "advgan_ft": "advgan_finetune",
    "pgd_at": "advgan_pgd_at",
    "advgan_noattack": "advgan_noattack",
    "advgan_acgan": "advgan_acgan",
    "advgan_acgan_noattack": "advgan_acgan_noattack",
}
COTRAININGS = ("advgan", "advgan_noattack", "advgan_acgan", "advgan_acgan_noattack")
# Figure 7's legend.
COTRAINING_LABELS = {
    "advgan": "eq. 9 + attack (new loss + adversarial)",
    "advgan_noattack": "eq. 9 (new loss)",
    "advgan_acgan": "eq. 8 + attack (original loss + adversarial)",
    "advgan_acgan_noattack": "eq. 8 (original loss)",
}
# Evaluated classifiers: name -> (training stage, path of the classifier inside its model_dir).
CLASSIFIERS = {
    "pgd_at": ("pgd_at", ""),
    "advgan_ft": ("advgan_ft", ""),
    "advgan_class_head": ("advgan", "export/class_head"),
}
LABELS = {
    "pgd_at": "PGD-AT",
    "advgan_ft": "AdvGAN (fine-tuned)",
    "advgan_class_head": "class head before fine-tuning",
}


class Stage:
    """One subprocess: a training or an evaluation.

    Attributes:
      kind: ``train`` or ``eval``.
      key: its output directory, relative to the output root.
      args: the arguments after ``python``.
      needs: keys of the stages whose outputs it reads.
      flagfile: the flagfile of a training.
      requires: a file or directory (relative to the output root) it reads, checked before it runs.
    """

    def __init__(
        self,
        kind: str,
        key: str,
        args: List[str],
        needs: Sequence[str] = (),
        flagfile: str = "",
        requires: str = "",
    ):
        self.kind, self.key, self.args, self.needs = kind, key, args, list(needs)
        self.flagfile, self.requires = flagfile, requires

    @property
    def marker(self) -> str:
        return f"{self.key}/export/metadata.json" if self.kind == "train" else f"{self.key}/results.json"

    @property
    def display(self) -> str:
        return shlex.join(["python", *self.args])


def _ints(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(
            f"{flag}={text}: expected distinct non-negative integers separated by commas, e.g. 0,1"
        )
    return values


def _eps_list(text: str, flag: str) -> List[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        numbers = [parse_fraction(v) for v in values]
    except (ValueError, ZeroDivisionError):
        numbers = []
    if not numbers or any(not 0 <= x <= 1 for x in numbers) or numbers != sorted(set(numbers)):
        raise ValueError(
            f"{flag}={text}: expected increasing eps in [0, 1] separated by commas, e.g. 0,0.05,0.1"
        )
    return values


def eps_name(text: str) -> str:
    return f"{parse_fraction(text):g}"


class Study:
    """The settings, paths and stages of one invocation."""

    def __init__(self, args: argparse.Namespace):
        if args.experiment is None:
            raise ValueError(f"--experiment is required: one of {', '.join(EXPERIMENTS)} or all")
        if args.experiment not in EXPERIMENTS + ("all",):
            raise ValueError(f"--experiment={args.experiment}: not one of {', '.join(EXPERIMENTS)}, all")
        if args.scale not in SCALES:
            raise ValueError(f"--scale={args.scale}: not one of {', '.join(SCALES)}")
        self.argv: List[str] = []
        self.experiments = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
        self.scale = args.scale
        d = SCALES[args.scale]
        self.defaults = d
        self.seeds = _ints(args.seeds, "--seeds")
        self.ablation_seeds = (
            _ints(args.ablation_seeds, "--ablation_seeds") if args.ablation_seeds else self.seeds[:1]
        )
        self.figure_eps = _eps_list(args.figure_eps or d["figure_eps"], "--figure_eps")
        self.table_eps = _eps_list(args.table_eps or d["table_eps"], "--table_eps")
        counts = {}
        for name in (
            "pgd_examples_figures",
            "pgd_examples_table",
            "autoattack_examples",
            "fcd_samples",
            "eval_every_cotrain",
            "eval_every_finetune",
            "eval_every_pgd_at",
        ):
            value = getattr(args, name)
            value = d[name] if value is None else value
            if value < 1:
                raise ValueError(f"--{name}={value}: must be >= 1")
            counts[name] = value
        self.n_fig = counts["pgd_examples_figures"]
        self.n_table = counts["pgd_examples_table"]
        self.n_aa = counts["autoattack_examples"]
        self.fcd_samples = counts["fcd_samples"]
        self.eval_every = {
            "advgan": counts["eval_every_cotrain"],
            "advgan_ft": counts["eval_every_finetune"],
            "pgd_at": counts["eval_every_pgd_at"],
        }
        self.out = os.path.abspath(args.output_dir or os.path.join("runs", f"robgan_{self.scale}"))
        self.out_cmd = self._cmd(self.out)
        self.feature_net = os.path.abspath(args.feature_net or d["feature_net"])
        self.feature_net_cmd = self._cmd(self.feature_net)
        self.common = ["--nodownload"] + ([f"--data_dir={args.data_dir}"] if args.data_dir else [])
        self.docs_dir = args.docs_dir

    @staticmethod
    def _cmd(path: str) -> str:
        """A path as the commands (run from the repository) spell it."""
        inside = path == REPO or path.startswith(REPO + os.sep)
        return os.path.relpath(path, REPO) if inside else path

    def path(self, rel: str) -> str:
        return os.path.join(self.out, rel)

    def cmd_path(self, rel: str) -> str:
        return os.path.join(self.out_cmd, rel)

    def settings(self) -> Dict[str, Any]:
        """What study.json holds; a resume with other values is refused (seeds may change)."""
        return {
            "scale": self.scale,
            "figure_eps": [eps_name(e) for e in self.figure_eps],
            "table_eps": [eps_name(e) for e in self.table_eps],
            "pgd_examples_figures": self.n_fig,
            "pgd_examples_table": self.n_table,
            "autoattack_examples": self.n_aa,
            "fcd_samples": self.fcd_samples,
            "eval_every": dict(self.eval_every),
            "feature_net": self.feature_net,
            "attack": "PGD-20, step eps/5, random start",
        }

    # Stages.
    def flagfile(self, training: str) -> str:
        return f"flags/{self.scale}_{TRAININGS[training]}.cfg"

    def train_key(self, seed: int, training: str) -> str:
        return f"seed{seed}/{training}"

    def train_stage(self, seed: int, training: str) -> Stage:
        key = self.train_key(seed, training)
        args = [
            "-m",
            "jarn_tf.train",
            f"--flagfile={self.flagfile(training)}",
            f"--model_dir={self.cmd_path(key)}",
        ]
        needs: List[str] = []
        if training in COTRAININGS:
            args += [
                f"--fcd_network={self.feature_net_cmd}",
                f"--fcd_samples={self.fcd_samples}",
                f"--eval_every={self.eval_every['advgan']}",
            ]
        elif training == "advgan_ft":
            needs = [self.train_key(seed, "advgan")]
            args.insert(3, f"--init_from={self.cmd_path(needs[0])}")
            args.append(f"--eval_every={self.eval_every['advgan_ft']}")
        else:
            args.append(f"--eval_every={self.eval_every['pgd_at']}")
        args += [f"--seed={seed}", *self.common, "--verbose=0"]
        return Stage("train", key, args, needs, self.flagfile(training))

    def eval_key(self, seed: int, model: str, split: str, n: int, eps: str) -> str:
        return f"seed{seed}/eval/{model}/{split}/n{n}/eps{eps_name(eps)}"

    def eval_stages(
        self, seed: int, model: str, split: str, n: int, eps: str, autoattack: bool
    ) -> List[Stage]:
        training, inside = CLASSIFIERS[model]
        requires = os.path.join(self.train_key(seed, training), inside) if inside else ""
        model_path = self.cmd_path(requires or self.train_key(seed, training))
        needs = [self.train_key(seed, training)]
        key = self.eval_key(seed, model, split, n, eps)
        x = parse_fraction(eps)
        head = ["-m", "jarn_tf.evaluate", f"--model={model_path}", f"--split={split}"]
        tail = ["--noeps_checks", "--square_check_queries=0", "--verbose=0", *self.common]
        if x == 0:
            attacks = ["--attacks=clean", "--eps=0"]
        else:
            attacks = ["--attacks=clean,pgd20", f"--eps={eps}", f"--pgd_step_size={x / 5:.10g}"]
        out = [
            Stage(
                "eval",
                key,
                head + attacks + [f"--num_examples={n}", f"--output_dir={self.cmd_path(key)}"] + tail,
                needs,
                requires=requires,
            )
        ]
        if autoattack and x > 0:
            aa = f"{key}/aa"
            args = head + ["--attacks=autoattack", f"--eps={eps}", f"--num_examples={self.n_aa}"]
            args += [f"--output_dir={self.cmd_path(aa)}"] + tail
            out.append(Stage("eval", aa, args, needs, requires=requires))
        return out

    def plan(self, experiments: Sequence[str]) -> Dict[str, Stage]:
        """The stages of ``experiments``: trainings first (co-training before fine-tuning), then the
        evaluations."""
        trainings: List[Tuple[int, str]] = []
        evals: List[Stage] = []

        def grid(models: Sequence[str], splits: Sequence[str]) -> None:
            for seed in self.seeds:
                for model in models:
                    for split in splits:
                        for eps in self.figure_eps:
                            evals.extend(self.eval_stages(seed, model, split, self.n_fig, eps, False))

        for exp in experiments:
            if exp == "figure67":
                trainings += [(s, t) for s in self.ablation_seeds for t in COTRAININGS]
                continue
            needed = {
                "figure1": ("pgd_at",),
                "figure5": ("advgan", "advgan_ft"),
                "figure8": ("advgan", "advgan_ft", "pgd_at"),
                "table1": ("advgan", "advgan_ft", "pgd_at"),
            }[exp]
            trainings += [(s, t) for s in self.seeds for t in needed]
            if exp == "figure1":
                grid(["pgd_at"], ["train", "test"])
            elif exp == "figure5":
                grid(["advgan_class_head", "advgan_ft"], ["test"])
            elif exp == "figure8":
                grid(["pgd_at", "advgan_ft"], ["train", "test"])
            else:
                for seed in self.seeds:
                    for model in ("advgan_ft", "pgd_at"):
                        for eps in self.table_eps:
                            evals.extend(self.eval_stages(seed, model, "test", self.n_table, eps, True))
        order = {t: i for i, t in enumerate(TRAININGS)}
        stages: Dict[str, Stage] = {}
        for seed, training in sorted(set(trainings), key=lambda st: (st[0], order[st[1]])):
            stage = self.train_stage(seed, training)
            stages[stage.key] = stage
        for stage in evals:
            stages.setdefault(stage.key, stage)
        return stages

    # Reading results.
    def seconds(self, key: str) -> Optional[float]:
        """The wall time of a stage (all its attempts) from its .time.json; for an evaluation without
        one, its results.json's wall_time_seconds (the attacks alone); None if not known."""
        record = load_json(self.path(f"{key}.time.json"))
        if record:
            return float(sum(r.get("seconds", 0.0) for r in record.get("runs", [])))
        results = load_json(self.path(f"{key}/results.json")) or {}
        value = results.get("wall_time_seconds")
        return None if value is None else float(value)

    def accuracy(
        self, seed: int, model: str, split: str, n: int, eps: str, autoattack: bool = False
    ) -> Optional[float]:
        """Accuracy (%) under PGD-20 (clean at eps 0) or AutoAttack, None if not evaluated."""
        key = self.eval_key(seed, model, split, n, eps) + ("/aa" if autoattack else "")
        results = load_json(self.path(f"{key}/results.json"))
        attack = "autoattack" if autoattack else ("clean" if parse_fraction(eps) == 0 else "pgd20")
        value = (results or {}).get("accuracy", {}).get(attack)
        return None if value is None else round(100.0 * float(value), 6)

    def scalars(self, seed: int, training: str, tag: str) -> List[Tuple[int, float]]:
        points = read_scalars(self.path(f"{self.train_key(seed, training)}/eval")).get(tag, [])
        return [(step, value) for step, _, value in points]

    def train_eps(self, seed: int, training: str) -> float:
        """The eps a run was trained with (its export's metadata), else the scale's."""
        meta = load_json(self.path(f"{self.train_key(seed, training)}/export/metadata.json")) or {}
        config = meta.get("config") or {}
        for section in (config.get("mode"), "classifier", "train"):
            if isinstance(section, str):
                eps = (config.get(section) or {}).get("eps")
                if eps is not None:
                    return parse_fraction(str(eps))
        return self.defaults["train_eps"]


# ---------------------------------------------------------------------------
# Running.


def stage_done(study: Study, stage: Stage) -> bool:
    return os.path.exists(study.path(stage.marker))


def missing_flagfile(study: Study, stages: Mapping[str, Stage]) -> Optional[str]:
    """The error line for the first flagfile (or one it includes) that does not exist."""
    for stage in stages.values():
        if not stage.flagfile:
            continue
        try:
            flagfile_values(stage.flagfile)
        except FileNotFoundError as e:
            return (
                f"flagfile {e.args[0]} does not exist (needed to train {os.path.basename(stage.key)} for "
                f"--scale={study.scale}); write it or leave out the experiments that need it"
            )
    return None


def _record_time(path: str, stage: Stage, rc: int, start: float, seconds: float) -> None:
    record = load_json(path) or {}
    record.setdefault("runs", []).append(
        {
            "start": datetime.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "returncode": rc,
        }
    )
    record["command"] = stage.display
    record["seconds"] = round(sum(r["seconds"] for r in record["runs"]), 1)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def execute(
    study: Study, stages: Mapping[str, Stage], dry_run: bool, out: Callable[[str], None] = print
) -> bool:
    """Runs (or, with ``dry_run``, lists) every stage not done yet; True when all are done."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # faster GAN steps on CPUs (jarn_tf.core.startup)
    status: Dict[str, str] = {}
    for stage in stages.values():
        if stage_done(study, stage):
            status[stage.key] = "done"
            out(f"[done]    {stage.display}")
            continue
        if stage.kind == "train" and training_pid(study.path(stage.key)) is not None:
            status[stage.key] = "busy"
            out(f"[busy]    {stage.key}: another process is training it; run this again when it has finished")
            continue
        blocked = [n for n in stage.needs if status.get(n) in ("failed", "skipped", "busy")]
        if blocked and not dry_run:
            status[stage.key] = "skipped"
            out(f"[skipped] {stage.key}: needs {', '.join(blocked)}")
            continue
        resume = stage.kind == "train" and glob.glob(study.path(f"{stage.key}/checkpoints/ckpt-*"))
        word = "resume" if resume else "run"
        out(f"[{word}]{' ' * (8 - len(word))}{stage.display}")
        if dry_run:
            status[stage.key] = "planned"
            continue
        if stage.requires and not os.path.exists(study.path(stage.requires)):
            status[stage.key] = "failed"
            out(
                f"[failed]  {stage.key}: {study.path(stage.requires)} does not exist (a co-training exported "
                "before class_head/ was added? train it again in another --output_dir)"
            )
            continue
        log_path = study.path(f"{stage.key}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        start = time.time()
        with open(log_path, "a") as log:
            log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}: {stage.display}\n")
            log.flush()
            rc = run_subprocess(stage.args, log, env)
        seconds = time.time() - start
        _record_time(study.path(f"{stage.key}.time.json"), stage, rc, start, seconds)
        if rc == 0 and stage_done(study, stage):
            status[stage.key] = "ran"
            out(f"          done in {seconds:.0f} s")
        else:
            status[stage.key] = "failed"
            again = " Running this again resumes the training." if stage.kind == "train" else ""
            out(f"[failed]  {stage.key}: exit status {rc}, no {stage.marker}; see {log_path}.{again}")
    return all(s in ("done", "ran") for s in status.values())


# ---------------------------------------------------------------------------
# Reports.


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _f(value: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(values: Sequence[Optional[float]], sign: bool = False) -> str:
    """``mean ± sample std`` over the seeds present (``paper.mean_std``), the mean signed if asked."""
    text = mean_std(values, spec=".2f")
    mean = _mean(values)
    return text if mean is None or not sign else _f(mean, sign=True) + text[len(f"{mean:.2f}") :]


def verdict(ok: Optional[bool]) -> str:
    return "not measured" if ok is None else ("holds" if ok else "does not hold")


def claim(text: str, measured: str, criterion: str, ok: Optional[bool]) -> Dict[str, Any]:
    return {"claim": text, "measured": measured, "criterion": criterion, "holds": ok, "verdict": verdict(ok)}


def _claims_table(claims: Sequence[Mapping[str, Any]]) -> List[str]:
    rows = [[c["claim"], c["measured"], c["criterion"], f"**{c['verdict']}**"] for c in claims]
    return [
        "## The paper's claims here",
        "",
        md_table(["paper's claim", "measured here", "criterion [ours]", "verdict"], rows),
        "",
    ]


def _gap(train: Optional[float], test: Optional[float]) -> Optional[float]:
    """Train minus test accuracy (points)."""
    return None if train is None or test is None else train - test


def _curve_by_eps(study: Study, model: str, split: str, n: int) -> Dict[str, Dict[int, Optional[float]]]:
    return {e: {s: study.accuracy(s, model, split, n, e) for s in study.seeds} for e in study.figure_eps}


def _eps_axis(study: Study) -> List[float]:
    return [parse_fraction(e) for e in study.figure_eps]


def _draw_eps_lines(
    ax, study: Study, series: Mapping[str, Mapping[str, Mapping[int, Optional[float]]]], styles
) -> None:
    """Mean over seeds as a line, each seed's value as a point."""
    xs = _eps_axis(study)
    for (label, by_eps), (color, line) in zip(series.items(), styles):
        means = [_mean(list(by_eps[e].values())) for e in study.figure_eps]
        ax.plot(
            [x for x, m in zip(xs, means) if m is not None],
            [m for m in means if m is not None],
            color=color,
            linestyle=line,
            marker="o",
            markersize=3,
            label=label,
        )
        for x, e in zip(xs, study.figure_eps):
            pts = [v for v in by_eps[e].values() if v is not None]
            ax.scatter([x] * len(pts), pts, color=color, s=8, alpha=0.5)
    ax.set_xlabel("eps (L-inf, [0, 1] image units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _eps_table(
    study: Study, series: Mapping[str, Mapping[str, Mapping[int, Optional[float]]]], sign: Sequence[bool] = ()
) -> List[str]:
    """Rows: series (mean ± std over seeds, then per seed); columns: eps."""
    rows = []
    for i, (label, by_eps) in enumerate(series.items()):
        signed = i < len(sign) and sign[i]
        rows.append(
            [f"{label}, mean"] + [_mean_std(list(by_eps[e].values()), signed) for e in study.figure_eps]
        )
        if len(study.seeds) > 1:
            for s in study.seeds:
                rows.append(
                    [f"{label}, seed {s}"] + [_f(by_eps[e][s], sign=signed) for e in study.figure_eps]
                )
    return [md_table(["", *[f"eps {e}" for e in study.figure_eps]], rows), ""]


def report_figure1(study: Study) -> Tuple[List[str], Dict[str, Any], Optional[Callable]]:
    train = _curve_by_eps(study, "pgd_at", "train", study.n_fig)
    test = _curve_by_eps(study, "pgd_at", "test", study.n_fig)
    gap = {e: {s: _gap(train[e][s], test[e][s]) for s in study.seeds} for e in study.figure_eps}
    series = {"train": train, "test": test, "gap (train - test)": gap}
    llv = {
        s: {tag: study.scalars(s, "pgd_at", f"eval/llv_{tag}") for tag in ("train", "test")}
        for s in study.seeds
    }
    train_eps = study.train_eps(study.seeds[0], "pgd_at")
    small = [e for e in study.figure_eps if parse_fraction(e) <= train_eps + 1e-9]
    g0 = _mean(list(gap[small[0]].values())) if small else None
    g1 = _mean(list(gap[small[-1]].values())) if len(small) > 1 else None
    grows = None if g0 is None or g1 is None else g1 > g0
    small_gaps = [_mean(list(gap[e].values())) for e in small]
    rises = sum(
        1 for a, b in zip(small_gaps, small_gaps[1:]) if a is not None and b is not None and b > a + 1e-9
    )

    def ends(tag: str, last: bool) -> Optional[float]:
        return _mean([(llv[s][tag][-1 if last else 0][1] if llv[s][tag] else None) for s in study.seeds])

    test_first, test_last = ends("test", False), ends("test", True)
    train_first, train_last = ends("train", False), ends("train", True)
    claims = [
        claim(
            PAPER["figure1"]["gap_grows"],
            f"gap {_f(g0, sign=True)} points at eps {small[0] if small else '-'}, {_f(g1, sign=True)} at eps "
            f"{small[-1] if small else '-'} (training eps {train_eps:g}); it rises at {rises} of "
            f"{max(len(small) - 1, 0)} steps of the grid up to there",
            "mean gap at the largest grid eps <= the training eps above the gap at the smallest",
            grows,
        ),
        claim(
            PAPER["figure1"]["llv_test_grows"],
            f"test LLV {_f(test_first, 4)} at the first evaluation, {_f(test_last, 4)} at the last",
            "last > first (means over seeds)",
            None if test_first is None or test_last is None else test_last > test_first,
        ),
        claim(
            PAPER["figure1"]["llv_train_low"],
            f"train LLV {_f(train_first, 4)} -> {_f(train_last, 4)}; "
            f"test {_f(test_first, 4)} -> {_f(test_last, 4)}",
            "at the last evaluation train LLV < test LLV, and it grew less than the test LLV",
            (
                None
                if None in (train_first, train_last, test_first, test_last)
                else (train_last < test_last and train_last - train_first < test_last - test_first)
            ),
        ),
    ]
    lines = [
        f"PGD-AT (`pgd_at`): accuracy (%) under PGD-20 (clean at eps 0) on the first {study.n_fig} train and "
        "test images; gap = train - test (points).",
        "",
        *_eps_table(study, series, sign=(False, False, True)),
        "Local Lipschitz value (mean ||d xent / d x||_2 at clean images) during training, "
        "`eval/llv_train` / `eval/llv_test`:",
        "",
        md_table(
            ["seed", "steps", "train LLV first -> last", "test LLV first -> last"],
            [
                [
                    str(s),
                    f"{llv[s]['test'][0][0]}-{llv[s]['test'][-1][0]}" if llv[s]["test"] else "-",
                    " -> ".join(_f(p[1], 4) for p in (llv[s]["train"][:1] + llv[s]["train"][-1:])) or "-",
                    " -> ".join(_f(p[1], 4) for p in (llv[s]["test"][:1] + llv[s]["test"][-1:])) or "-",
                ]
                for s in study.seeds
            ],
        ),
        "",
    ]
    data = {
        "accuracy_pct": {"train": train, "test": test},
        "gap_points": gap,
        "llv": llv,
        "train_eps": train_eps,
    }

    def draw(fig) -> None:
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        _draw_eps_lines(left, study, series, [("C0", "-"), ("C1", "-"), ("C3", "--")])
        left.set_ylabel("accuracy under PGD-20 (%)")
        left.set_title("PGD-AT: train / test accuracy and gap")
        for i, s in enumerate(study.seeds):
            for tag, color in (("train", "C0"), ("test", "C1")):
                pts = llv[s][tag]
                if pts:
                    right.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        color=color,
                        marker="o",
                        markersize=3,
                        linestyle=["-", "--", ":", "-."][i % 4],
                        label=f"{tag} (seed {s})",
                    )
        right.set_xlabel("training step")
        right.set_ylabel("LLV: mean ||d xent / d x||_2")
        right.set_title("PGD-AT: local Lipschitz value")
        right.grid(alpha=0.3)
        if right.get_legend_handles_labels()[0]:
            right.legend(fontsize=8)

    return lines, {"numbers": data, "claims": claims}, draw


def report_figure5(study: Study) -> Tuple[List[str], Dict[str, Any], Optional[Callable]]:
    head = _curve_by_eps(study, "advgan_class_head", "test", study.n_fig)
    ft = _curve_by_eps(study, "advgan_ft", "test", study.n_fig)
    diff = {e: {s: _gap(ft[e][s], head[e][s]) for s in study.seeds} for e in study.figure_eps}
    series = {LABELS["advgan_class_head"]: head, LABELS["advgan_ft"]: ft, "fine-tuned - before": diff}
    means = [_mean(list(diff[e].values())) for e in study.figure_eps]
    present = [m for m in means if m is not None]
    overall = _mean(present) if len(present) == len(means) else None
    claims = [
        claim(
            PAPER["figure5"]["finetune_helps"],
            f"fine-tuned - before: {_f(overall, sign=True)} points on average over the grid, above at "
            f"{sum(m > 0 for m in present)} of {len(means)} eps",
            "mean over the eps grid of (fine-tuned - before) > 0",
            None if overall is None else overall > 0,
        )
    ]
    lines = [
        f"Accuracy (%) under PGD-20 (clean at eps 0) on the first {study.n_fig} test images of the "
        "discriminator's class head after co-training (`advgan/export/class_head`) and after fine-tuning "
        "(`advgan_ft`).",
        "",
        *_eps_table(study, series, sign=(False, False, True)),
    ]

    def draw(fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        _draw_eps_lines(ax, study, {k: series[k] for k in list(series)[:2]}, [("C1", "-"), ("C0", "-")])
        ax.set_ylabel("test accuracy under PGD-20 (%)")
        ax.set_title("Effect of fine-tuning")

    return (
        lines,
        {
            "numbers": {"accuracy_pct": {"class_head": head, "advgan_ft": ft}, "difference_points": diff},
            "claims": claims,
        },
        draw,
    )


def report_figure8(study: Study) -> Tuple[List[str], Dict[str, Any], Optional[Callable]]:
    acc = {
        m: {split: _curve_by_eps(study, m, split, study.n_fig) for split in ("train", "test")}
        for m in ("pgd_at", "advgan_ft")
    }
    gaps = {
        m: {
            e: {s: _gap(acc[m]["train"][e][s], acc[m]["test"][e][s]) for s in study.seeds}
            for e in study.figure_eps
        }
        for m in acc
    }
    nonzero = [e for e in study.figure_eps if parse_fraction(e) > 0]
    mean_gap = {}
    for m in acc:
        vals = [_mean(list(gaps[m][e].values())) for e in nonzero]
        mean_gap[m] = _mean(vals) if vals and None not in vals else None
    smaller = sum(
        1
        for e in nonzero
        if None not in (_mean(list(gaps["advgan_ft"][e].values())), _mean(list(gaps["pgd_at"][e].values())))
        and _mean(list(gaps["advgan_ft"][e].values())) < _mean(list(gaps["pgd_at"][e].values()))
    )
    ok = None if None in mean_gap.values() else mean_gap["advgan_ft"] < mean_gap["pgd_at"]
    claims = [
        claim(
            PAPER["figure8"]["smaller_gap"],
            f"mean gap over eps > 0: AdvGAN {_f(mean_gap['advgan_ft'], sign=True)}, PGD-AT "
            f"{_f(mean_gap['pgd_at'], sign=True)} points; AdvGAN's smaller at {smaller} of "
            f"{len(nonzero)} eps",
            "mean over the grid's eps > 0 of AdvGAN's gap < PGD-AT's",
            ok,
        )
    ]
    series = {
        f"{LABELS['pgd_at']} gap": gaps["pgd_at"],
        f"{LABELS['advgan_ft']} gap": gaps["advgan_ft"],
    }
    acc_series = {f"{LABELS[m]} {split}": acc[m][split] for m in acc for split in ("train", "test")}
    lines = [
        f"Train - test accuracy (points) under PGD-20 (clean at eps 0), first {study.n_fig} images of "
        "each split:",
        "",
        *_eps_table(study, series, sign=(True, True)),
        "The accuracies (%):",
        "",
        *_eps_table(study, acc_series),
    ]

    def draw(fig) -> None:
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        _draw_eps_lines(left, study, series, [("C3", "-"), ("C0", "-")])
        left.set_ylabel("train - test accuracy (points)")
        left.set_title("Generalisation gap under PGD-20")
        _draw_eps_lines(right, study, acc_series, [("C3", "-"), ("C3", "--"), ("C0", "-"), ("C0", "--")])
        right.set_ylabel("accuracy under PGD-20 (%)")
        right.set_title("train (solid) and test (dashed)")

    return (
        lines,
        {"numbers": {"accuracy_pct": acc, "gap_points": gaps, "mean_gap_points": mean_gap}, "claims": claims},
        draw,
    )


def report_figure67(study: Study) -> Tuple[List[str], Dict[str, Any], Optional[Callable]]:
    curves = {
        run: {
            s: {
                "fcd": study.scalars(s, run, "eval/fcd"),
                "classifier_score": study.scalars(s, run, "eval/classifier_score"),
            }
            for s in study.ablation_seeds
        }
        for run in COTRAININGS
    }
    # The curve means are taken over the steps every co-training of a seed logged, so that a run
    # missing an (early, high-FCD) evaluation is not favoured over one that has it.
    shared_steps: Dict[Tuple[str, int], List[int]] = {}
    for metric in ("fcd", "classifier_score"):
        for s in study.ablation_seeds:
            present = [{p[0] for p in curves[run][s][metric]} for run in COTRAININGS if curves[run][s][metric]]
            shared_steps[(metric, s)] = sorted(set.intersection(*present)) if present else []
    summary: Dict[str, Dict[str, Optional[float]]] = {}
    for run in COTRAININGS:
        out: Dict[str, Optional[float]] = {}
        for metric in ("fcd", "classifier_score"):
            finals, avgs = [], []
            for s in study.ablation_seeds:
                pts = curves[run][s][metric]
                if not pts and metric == "fcd":  # an export's FCD without its curve
                    meta = load_json(study.path(f"{study.train_key(s, run)}/export/metadata.json")) or {}
                    value = (meta.get("fcd") or {}).get("value")
                    pts = [(meta.get("step", 0), float(value))] if value is not None else []
                finals.append(pts[-1][1] if pts else None)
                shared = [p[1] for p in pts if p[0] in shared_steps[(metric, s)]]
                avgs.append(_mean(shared) if shared else None)
            out[f"final_{metric}"] = _mean(finals)
            out[f"mean_{metric}"] = _mean(avgs)
        summary[run] = out

    def compare(key: str, better: str, worse: str, kind: str) -> List[Dict[str, Any]]:
        rows = []
        for metric, lower in (("fcd", True), ("classifier_score", False)):
            a, b = summary[better][f"{kind}_{metric}"], summary[worse][f"{kind}_{metric}"]
            ok = None if a is None or b is None else (a < b if lower else a > b)
            what = "final" if kind == "final" else "mean over the training curve of the"
            rows.append(
                claim(
                    PAPER["figure67"][key],
                    f"{metric}: {COTRAINING_LABELS[better]} {_f(a)}, {COTRAINING_LABELS[worse]} {_f(b)}",
                    f"{what} {'FCD lower' if lower else 'classifier score higher'}",
                    ok,
                )
            )
        return rows

    claims = (
        compare("eq9_beats_eq8_attack", "advgan", "advgan_acgan", "final")
        + compare("eq9_beats_eq8_noattack", "advgan_noattack", "advgan_acgan_noattack", "final")
        + compare("attack_faster_eq9", "advgan", "advgan_noattack", "mean")
        + compare("attack_faster_eq8", "advgan_acgan", "advgan_acgan_noattack", "mean")
        + compare("attack_better_eq9", "advgan", "advgan_noattack", "final")
    )
    rows = [
        [f"`{run}`", COTRAINING_LABELS[run]]
        + [
            _f(summary[run][k])
            for k in ("final_fcd", "mean_fcd", "final_classifier_score", "mean_classifier_score")
        ]
        for run in COTRAININGS
    ]
    notes = []
    for s in study.ablation_seeds:
        logged = {run: {p[0] for p in curves[run][s]["fcd"]} for run in COTRAININGS}
        every = set().union(*logged.values())
        lacking = [
            f"`{run}` lacks step {', '.join(map(str, sorted(every - steps)))}"
            for run, steps in logged.items()
            if steps and every - steps
        ]
        shared = ", ".join(map(str, shared_steps[("fcd", s)])) or "none"
        notes.append(f"seed {s}: steps {shared}" + (f" ({'; '.join(lacking)})" if lacking else ""))
    steps_note = "; ".join(notes)
    lines = [
        f"The four co-trainings, seeds {', '.join(map(str, study.ablation_seeds))} (mean over them): "
        "FCD (lower is "
        f"better) and classifier score (higher is better) of {study.fcd_samples} samples in the features of "
        f"`{study.feature_net_cmd}`, at the last evaluation and averaged over the evaluations during "
        "training "
        "(lower average FCD = faster convergence). The averages use only the steps every co-training "
        f"of the seed logged: {steps_note}.",
        "",
        md_table(["run", "loss", "final FCD", "mean FCD", "final score", "mean score"], rows),
        "",
    ]

    def draw(fig) -> None:
        import matplotlib.image as mpimg

        grid = fig.add_gridspec(2, 4, height_ratios=[1, 1.1])
        styles = {
            "advgan": "C0",
            "advgan_noattack": "C0",
            "advgan_acgan": "C3",
            "advgan_acgan_noattack": "C3",
        }
        for col, (metric, name) in enumerate(
            (("fcd", "FCD (lower is better)"), ("classifier_score", "classifier score"))
        ):
            ax = fig.add_subplot(grid[0, 2 * col : 2 * col + 2])
            for run in COTRAININGS:
                for i, s in enumerate(study.ablation_seeds):
                    pts = curves[run][s][metric]
                    if pts:
                        ax.plot(
                            [p[0] for p in pts],
                            [p[1] for p in pts],
                            color=styles[run],
                            linestyle="-" if "noattack" not in run else "--",
                            marker="o",
                            markersize=3,
                            alpha=1.0 if i == 0 else 0.5,
                            label=COTRAINING_LABELS[run]
                            + (f" (seed {s})" if len(study.ablation_seeds) > 1 else ""),
                        )
            ax.set_xlabel("training step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        seed = study.ablation_seeds[0]
        for col, run in enumerate(COTRAININGS):
            ax = fig.add_subplot(grid[1, col])
            path = study.path(f"{study.train_key(seed, run)}/export/samples.png")
            if os.path.isfile(path):
                ax.imshow(mpimg.imread(path), cmap="gray")
            else:
                ax.text(0.5, 0.5, "not trained", ha="center", va="center")
            ax.set_title(f"{COTRAINING_LABELS[run]}\nseed {seed}", fontsize=8)
            ax.axis("off")

    return lines, {"numbers": {"curves": curves, "summary": summary}, "claims": claims}, draw


def report_table1(study: Study) -> Tuple[List[str], Dict[str, Any], Optional[Callable]]:
    models = ("advgan_ft", "pgd_at")
    pgd = {
        m: {
            e: {s: study.accuracy(s, m, "test", study.n_table, e) for s in study.seeds}
            for e in study.table_eps
        }
        for m in models
    }
    aa = {
        m: {
            e: {s: study.accuracy(s, m, "test", study.n_table, e, True) for s in study.seeds}
            for e in study.table_eps
        }
        for m in models
    }
    mean_pgd = {m: {e: _mean(list(pgd[m][e].values())) for e in study.table_eps} for m in models}
    mean_aa = {m: {e: _mean(list(aa[m][e].values())) for e in study.table_eps} for m in models}
    diff_pgd = {e: _gap(mean_pgd["advgan_ft"][e], mean_pgd["pgd_at"][e]) for e in study.table_eps}
    diff_aa = {e: _gap(mean_aa["advgan_ft"][e], mean_aa["pgd_at"][e]) for e in study.table_eps}
    nonzero = [e for e in study.table_eps if parse_fraction(e) > 0]
    zero = [e for e in study.table_eps if parse_fraction(e) == 0]

    def cell(p: Optional[float], a: Optional[float], e: str, sign: bool = False) -> str:
        return _f(p, sign=sign) if parse_fraction(e) == 0 else f"{_f(p, sign=sign)} / {_f(a, sign=sign)}"

    rows = []
    for m in models:
        for s in study.seeds:
            rows.append(
                [f"{LABELS[m]}, seed {s}"] + [cell(pgd[m][e][s], aa[m][e][s], e) for e in study.table_eps]
            )
        rows.append(
            [f"**{LABELS[m]}, mean**"] + [cell(mean_pgd[m][e], mean_aa[m][e], e) for e in study.table_eps]
        )
    rows.append(["**AdvGAN - PGD-AT**"] + [cell(diff_pgd[e], diff_aa[e], e, True) for e in study.table_eps])
    p = PAPER["table1"]
    paper_cols = len(study.table_eps) == len(p["advgan_accuracy"])
    if paper_cols:
        rows.append(["paper (CIFAR-10), AdvGAN, PGD"] + [f"{v}" for v in p["advgan_accuracy"]])
        rows.append(["paper, AdvGAN - Madry et al., PGD"] + [f"{v:+}" for v in p["improvement_over_madry"]])
    diffs = [diff_pgd[e] for e in nonzero]
    diffs_aa = [diff_aa[e] for e in nonzero]
    known = bool(diffs) and None not in diffs
    clean = diff_pgd[zero[0]] if zero else None
    claims = [
        claim(
            p["claims"]["pgd_above"],
            "PGD-20: " + ", ".join(f"{_f(diff_pgd[e], sign=True)} at eps {e}" for e in nonzero),
            "AdvGAN - PGD-AT > 0 at every column eps > 0 (means over seeds)",
            all(d > 0 for d in diffs) if known else None,
        ),
        claim(
            p["claims"]["pgd_grows"],
            "PGD-20: " + " < ".join(_f(d, sign=True) for d in diffs) if known else "-",
            "the difference strictly increases from column to column (eps > 0)",
            all(b > a for a, b in zip(diffs, diffs[1:])) if known and len(diffs) > 1 else None,
        ),
        claim(
            p["claims"]["clean_close"],
            f"clean: {_f(clean, sign=True)} points",
            "AdvGAN - PGD-AT >= -1 point (the paper's -0.35 with a point of slack)",
            None if clean is None else clean >= -1.0,
        ),
        claim(
            "[not in the paper] the PGD advantage survives AutoAttack",
            "AutoAttack: " + ", ".join(f"{_f(diff_aa[e], sign=True)} at eps {e}" for e in nonzero),
            "AdvGAN - PGD-AT > 0 at every column eps > 0",
            all(d > 0 for d in diffs_aa) if diffs_aa and None not in diffs_aa else None,
        ),
    ]
    lines = [
        f"Accuracy (%) on the first {study.n_table} test images: clean at eps 0, else PGD-20 (step "
        "eps/5, random "
        f"start) / AutoAttack (standard, first {study.n_aa} images). eps in [0, 1] image units; the paper's "
        "columns are in [-1, 1] units, twice ours"
        + (
            f" (its {' / '.join(f'{v:g}' for v in p['eps_paper_units'])} = our "
            f"{' / '.join(study.table_eps)})."
            if study.scale == "cifar10"
            else ". At cpu scale (Fashion-MNIST) the paper's CIFAR-10 numbers are not comparable in value; "
            "compare the sign and trend of the difference."
        ),
        "",
        md_table(["", *[f"eps {e}" for e in study.table_eps]], rows),
        "",
    ]
    if paper_cols:
        implied = [round(a - d, 2) for a, d in zip(p["advgan_accuracy"], p["improvement_over_madry"])]
        lines += [
            "The paper's Madry et al. numbers implied by its improvements: "
            f"{' / '.join(map(str, implied))} %.",
            "",
        ]
    data = {
        "pgd20_pct": pgd,
        "autoattack_pct": aa,
        "mean_pgd20_pct": mean_pgd,
        "mean_autoattack_pct": mean_aa,
        "difference_pgd20_points": diff_pgd,
        "difference_autoattack_points": diff_aa,
    }
    return lines, {"numbers": data, "claims": claims}, None


REPORTS = {
    "table1": report_table1,
    "figure1": report_figure1,
    "figure5": report_figure5,
    "figure8": report_figure8,
    "figure67": report_figure67,
}


def _times_section(
    study: Study, stages: Mapping[str, Stage], machine: str
) -> Tuple[List[str], Dict[str, Optional[float]]]:
    """Wall time of the trainings, and of the evaluations grouped by model, split and example count."""
    groups: Dict[str, List[Optional[float]]] = {}
    for stage in stages.values():
        if stage.kind == "train":
            name = stage.key
        else:
            parts = stage.key.split("/")  # seedS/eval/model/split/nN/epsE[/aa]
            name = "/".join(parts[:5]) + (" AutoAttack" if parts[-1] == "aa" else " PGD")
        groups.setdefault(name, []).append(study.seconds(stage.key))
    times = {}
    rows = []
    for name, values in groups.items():
        known = [v for v in values if v is not None]
        times[name] = sum(known) if known else None
        count = f" ({len(known)} of {len(values)} evaluations timed)" if len(values) > 1 else ""
        rows.append([f"`{name}`", (f"{sum(known):.0f}" if known else "not run here") + count])
    total = sum(v for v in times.values() if v is not None)
    lines = [
        "## Hardware and wall time",
        "",
        f"This machine: {machine}. Wall time of each stage from its `.time.json` (every attempt, start-up "
        "included; an evaluation run elsewhere: the attacks' time in its results.json); total "
        f"{total / 60:.1f} min.",
        "",
        md_table(["stage", "seconds"], rows),
        "",
    ]
    return lines, times


def write_report(study: Study, experiment: str, out: Callable[[str], None] = print) -> str:
    """Writes O/<experiment>.md, .json (and .png) from the results on disk; returns the markdown."""
    os.makedirs(study.out, exist_ok=True)
    body, data, draw = REPORTS[experiment](study)
    stages = study.plan([experiment])
    seeds = study.ablation_seeds if experiment == "figure67" else study.seeds
    png = None
    if draw is not None:
        png = save_figure(
            study.path(f"{experiment}.png"), draw, figsize=(12, 7) if experiment == "figure67" else (11, 4)
        )
    machine = hardware()
    times_lines, times = _times_section(study, stages, machine)
    done = sum(stage_done(study, s) for s in stages.values())
    lines = [
        f"# {TITLES[experiment]}",
        "",
        f"Scale {study.scale} ({study.defaults['dataset']}), seeds {', '.join(map(str, seeds))}; {done} of "
        f"{len(stages)} stages done. Written on {datetime.datetime.now().isoformat(timespec='seconds')} by",
        "",
        f"    {shlex.join(['python', '-m', 'jarn_tf.robgan_study', *study.argv])}",
        "",
        *_claims_table(data["claims"]),
        "## Numbers",
        "",
        *body,
        *([f"![{experiment}]({experiment}.png)", ""] if png else []),
        *times_lines,
        "## Commands",
        "",
        "Run from the repository root; each is skipped once its output exists.",
        "",
        "<details><summary>" + f"{len(stages)} commands</summary>",
        "",
        *[f"    {s.display}" for s in stages.values()],
        "",
        "</details>",
        "",
    ]
    markdown = "\n".join(lines)
    with open(study.path(f"{experiment}.md"), "w") as f:
        f.write(markdown)
    record = {
        "experiment": experiment,
        "scale": study.scale,
        "seeds": seeds,
        "command": shlex.join(["python", "-m", "jarn_tf.robgan_study", *study.argv]),
        "settings": study.settings(),
        "hardware": machine,
        "paper": PAPER[experiment],
        **data,
        "stage_seconds": times,
        "commands": [s.display for s in stages.values()],
    }
    with open(study.path(f"{experiment}.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")
    if study.docs_dir:
        name = f"robgan_{experiment}_{study.scale}"
        os.makedirs(os.path.join(study.docs_dir, "results"), exist_ok=True)
        with open(os.path.join(study.docs_dir, "results", f"{name}.md"), "w") as f:
            f.write(markdown.replace(f"]({experiment}.png)", f"](../figures/{name}.png)"))
        shutil.copyfile(
            study.path(f"{experiment}.json"), os.path.join(study.docs_dir, "results", f"{name}.json")
        )
        if png:
            os.makedirs(os.path.join(study.docs_dir, "figures"), exist_ok=True)
            shutil.copyfile(png, os.path.join(study.docs_dir, "figures", f"{name}.png"))
    out(f"Wrote {study.path(experiment + '.md')}" + (f" and {experiment}.png" if png else ""))
    return markdown


# ---------------------------------------------------------------------------
# Entry point.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jarn_tf.robgan_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--experiment", default=None, help=f"One of {', '.join(EXPERIMENTS)}, all.")
    p.add_argument(
        "--scale",
        default="cpu",
        help="cpu (Fashion-MNIST, flags/cpu_*.cfg) or cifar10 (flags/cifar10_*.cfg).",
    )
    p.add_argument("--seeds", default="0", help="Seeds, comma-separated.")
    p.add_argument(
        "--ablation_seeds",
        default=None,
        help="Seeds of the Figure 6/7 ablations (default: the first of --seeds).",
    )
    p.add_argument("--output_dir", default=None, help="Default runs/robgan_<scale>.")
    p.add_argument(
        "--feature_net",
        default=None,
        help="Classifier export of the FCD (default: the scale's standard classifier).",
    )
    p.add_argument("--data_dir", default=None, help="Passed on to every command.")
    p.add_argument(
        "--figure_eps", default=None, help="Eps grid of Figures 1, 5, 8 (comma-separated, [0, 1] units)."
    )
    p.add_argument("--table_eps", default=None, help="Table 1's columns ([0, 1] units).")
    for name, what in (
        ("pgd_examples_figures", "Images of each split attacked for the figures"),
        ("pgd_examples_table", "Test images attacked for Table 1"),
        ("autoattack_examples", "Test images of AutoAttack (Table 1)"),
        ("fcd_samples", "Samples (and test images) of the co-trainings' FCD"),
        ("eval_every_cotrain", "Steps between the co-trainings' evaluations (FCD)"),
        ("eval_every_finetune", "Steps between the fine-tuning's evaluations"),
        ("eval_every_pgd_at", "Steps between PGD-AT's evaluations (LLV)"),
    ):
        p.add_argument(f"--{name}", type=int, default=None, help=f"{what}; default: the scale's (docstring).")
    p.add_argument(
        "--dry_run", action="store_true", help="Print every stage's command and status; run nothing."
    )
    p.add_argument(
        "--report_only", action="store_true", help="Write the reports from what is on disk; run nothing."
    )
    p.add_argument(
        "--docs_dir", default=None, help="Also copy the reports to <docs_dir>/results and <docs_dir>/figures."
    )
    return p


def main(argv: Sequence[str], out: Callable[[str], None] = print) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as e:  # argparse has printed its message
        return int(e.code or 0)
    try:
        study = Study(args)
        study.argv = list(argv)
        stages = study.plan(study.experiments)
        missing = missing_flagfile(study, stages)
        if missing:
            raise ValueError(missing)
        settings = json.loads(json.dumps(study.settings()))
        previous = load_json(study.path("study.json"))
        if previous is not None and previous != settings:
            changed = sorted(k for k in set(settings) | set(previous) if previous.get(k) != settings.get(k))
            what = "; ".join(f"{k}: {previous.get(k)} there, {settings.get(k)} now" for k in changed)
            raise ValueError(
                f"{study.out} holds a study with other settings ({what}); pass another --output_dir or "
                "the same settings"
            )
        cotraining = [s for s in stages.values() if s.kind == "train" and s.key.split("/")[1] in COTRAININGS]
        needs_net = any(not stage_done(study, s) for s in cotraining)
        has_net = os.path.isfile(os.path.join(study.feature_net, "export", "metadata.json"))
        if needs_net and not has_net and not (args.dry_run or args.report_only):
            raise ValueError(
                f"--feature_net={study.feature_net_cmd}: no classifier export there (the co-trainings' "
                "FCD needs "
                f"one). Train it: python -m jarn_tf.train --flagfile={study.defaults['feature_flagfile']} "
                f"--nodownload --model_dir={study.feature_net_cmd}"
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if needs_net and not has_net:
        out(f"note: --feature_net={study.feature_net_cmd} does not exist yet; a real run would refuse.")
    if args.dry_run:
        execute(study, stages, dry_run=True, out=out)
        todo = sum(not stage_done(study, s) for s in stages.values())
        out(f"Dry run: {len(stages) - todo} stage(s) done, {todo} to run.")
        return 0
    os.makedirs(study.out, exist_ok=True)
    with open(study.path("study.json"), "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")
    ok = True if args.report_only else execute(study, stages, dry_run=False, out=out)
    for experiment in study.experiments:
        write_report(study, experiment, out)
    return 0 if ok else 1


def run() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
