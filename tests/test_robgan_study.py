"""The Rob-GAN study (jarn_tf.robgan.study): its commands, skip-when-done, the reports on fabricated
runs (results.json as jarn_tf.evaluate writes it, TensorBoard scalars as the trainers log them) and
its refusals. No training, no data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jarn_tf.robgan import study as rs


@pytest.fixture
def flagfiles_exist(monkeypatch):
    """The commands do not depend on which flagfiles the repository holds today."""
    monkeypatch.setattr(rs, "flagfile_values", lambda path: {})


def _dry(argv, capsys=None):
    lines = []
    assert rs.main(argv + ["--dry_run"], lines.append) == 0
    return lines


# ---------------------------------------------------------------------------
# Commands.


def test_cpu_dry_run_prints_every_command(tmp_path, flagfiles_exist):
    out = str(tmp_path / "o")
    lines = _dry(["--experiment=table1", "--scale=cpu", "--seeds=0,1", f"--output_dir={out}"])
    assert not os.path.exists(out), "a dry run writes nothing"
    text = "\n".join(lines)
    tail = "--nodownload --verbose=0"
    assert (
        f"[run]     python -m jarn_tf.train --flagfile=flags/cpu_advgan.cfg --model_dir={out}/seed0/advgan "
        "--fcd_network=runs/paper_cpu/models/standard_seed0 --fcd_samples=5000 --eval_every=300 "
        f"--seed=0 {tail}"
    ) in text
    assert (
        f"python -m jarn_tf.train --flagfile=flags/cpu_advgan_finetune.cfg --init_from={out}/seed1/advgan "
        f"--model_dir={out}/seed1/advgan_ft --eval_every=100 --seed=1 {tail}"
    ) in text
    assert (
        f"python -m jarn_tf.train --flagfile=flags/cpu_advgan_pgd_at.cfg --model_dir={out}/seed0/pgd_at "
        f"--eval_every=150 --seed=0 {tail}"
    ) in text
    ev = "--noeps_checks --square_check_queries=0 --verbose=0 --nodownload"
    d = f"{out}/seed1/eval/pgd_at/test/n1000"
    assert (
        f"python -m jarn_tf.evaluate --model={out}/seed1/pgd_at --split=test --attacks=clean --eps=0 "
        f"--num_examples=1000 --output_dir={d}/eps0 {ev}"
    ) in text
    assert (
        f"python -m jarn_tf.evaluate --model={out}/seed1/pgd_at --split=test --attacks=clean,pgd20 "
        "--eps=0.05 "
        f"--pgd_step_size=0.01 --num_examples=1000 --output_dir={d}/eps0.05 {ev}"
    ) in text
    assert (
        f"python -m jarn_tf.evaluate --model={out}/seed1/pgd_at --split=test --attacks=autoattack --eps=0.2 "
        f"--num_examples=100 --output_dir={d}/eps0.2/aa {ev}"
    ) in text
    assert "--attacks=autoattack --eps=0 " not in text  # no AutoAttack at eps 0
    # 3 trainings per seed; per seed and model 4 columns and 3 AutoAttacks.
    assert lines[-1] == "Dry run: 0 stage(s) done, 34 to run."
    stages = [line for line in lines if line.startswith("[")]
    assert [i for i, line in enumerate(stages) if "jarn_tf.train" in line] == list(
        range(6)
    ), "trainings first"


def test_cifar10_dry_run_uses_its_flagfiles_grid_and_counts(tmp_path, flagfiles_exist):
    out = str(tmp_path / "o")
    lines = _dry(["--experiment=figure1", "--scale=cifar10", f"--output_dir={out}", "--feature_net=/fx"])
    text = "\n".join(lines)
    assert (
        f"--flagfile=flags/cifar10_advgan_pgd_at.cfg --model_dir={out}/seed0/pgd_at --eval_every=5000" in text
    )
    for split in ("train", "test"):
        assert (
            f"--split={split} --attacks=clean,pgd20 --eps=0.005 --pgd_step_size=0.001 --num_examples=1000 "
            f"--output_dir={out}/seed0/eval/pgd_at/{split}/n1000/eps0.005"
        ) in text
    assert lines[-1] == "Dry run: 0 stage(s) done, 15 to run."  # 1 training + 2 splits x 7 eps
    # Figure 6/7: the four co-trainings of the first seed only, measured with the FCD.
    lines = _dry(
        [
            "--experiment=figure67",
            "--scale=cifar10",
            "--seeds=3,4",
            f"--output_dir={out}",
            "--feature_net=/fx",
        ]
    )
    trains = [line for line in lines if "jarn_tf.train" in line]
    assert [t.split("--flagfile=flags/")[1].split(".cfg")[0] for t in trains] == [
        "cifar10_advgan",
        "cifar10_advgan_noattack",
        "cifar10_advgan_acgan",
        "cifar10_advgan_acgan_noattack",
    ]
    assert all(
        "--seed=3" in t and "--fcd_network=/fx --fcd_samples=10000 --eval_every=5000" in t for t in trains
    )
    # Table 1 at cifar10: the paper's columns halved, the whole test set.
    lines = _dry(["--experiment=table1", "--scale=cifar10", f"--output_dir={out}", "--feature_net=/fx"])
    text = "\n".join(lines)
    assert "--eps=0.04 --pgd_step_size=0.008 --num_examples=10000" in text
    assert "--attacks=autoattack --eps=0.01 --num_examples=1000" in text


def test_all_runs_the_union_once(tmp_path, flagfiles_exist):
    args = rs._parser().parse_args(["--experiment=all", "--seeds=0,1", f"--output_dir={tmp_path}"])
    study = rs.Study(args)
    union = study.plan(study.experiments)
    parts = [study.plan([e]) for e in rs.EXPERIMENTS]
    assert set(union) == set().union(*parts)
    assert sum(s.kind == "train" for s in union.values()) == 2 * 3 + 3  # ablations: the first seed only


# ---------------------------------------------------------------------------
# Running: skip when done, resume, failures.


def _feature_net(tmp_path):
    net = tmp_path / "feature_net"
    (net / "export").mkdir(parents=True)
    (net / "export" / "metadata.json").write_text("{}")
    return str(net)


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("{}")


def test_finished_stages_are_skipped_and_the_rest_run_once(tmp_path, monkeypatch, flagfiles_exist):
    out = tmp_path / "o"
    ran = []

    def fake_run(args, log, env):  # writes what the stage would
        ran.append(args)
        flag = next(a for a in args if a.startswith(("--output_dir=", "--model_dir=")))
        target = flag.split("=", 1)[1]
        if "advgan_ft" in target and "/eval/" not in target and fail[0]:
            return 1
        _touch(os.path.join(target, "results.json" if "output_dir" in flag else "export/metadata.json"))
        return 0

    fail = [True]
    monkeypatch.setattr(rs, "run_subprocess", fake_run)
    # Co-training done; the class head's eps 0 evaluation done; fine-tuning killed mid-way.
    _touch(str(out / "seed0/advgan/export/metadata.json"))
    os.makedirs(out / "seed0/advgan/export/class_head")
    _touch(str(out / "seed0/eval/advgan_class_head/test/n500/eps0/results.json"))
    _touch(str(out / "seed0/advgan_ft/checkpoints/ckpt-100.index"))
    argv = ["--experiment=figure5", f"--output_dir={out}", f"--feature_net={_feature_net(tmp_path)}"]
    lines = _dry(argv)
    assert sum(line.startswith("[done]") for line in lines) == 2
    assert any(
        line.startswith("[resume]  python -m jarn_tf.train --flagfile=flags/cpu_advgan_finetune.cfg")
        for line in lines
    )
    # The fine-tuning fails: its evaluations are skipped, the class head's run; exit status 1.
    lines = []
    assert rs.main(argv, lines.append) == 1
    assert [a[1] for a in ran].count("jarn_tf.train") == 1
    assert sum("[skipped] seed0/eval/advgan_ft/" in line for line in lines) == 7
    assert len(ran) == 1 + 6  # the fine-tuning and the class head's 6 evaluations left
    timing = json.load(open(out / "seed0/advgan_ft.time.json"))
    assert timing["runs"][0]["returncode"] == 1 and "--init_from=" in timing["command"]
    assert (out / "figure5.md").exists() and (out / "study.json").exists()
    # Again, the fine-tuning succeeding: only it and its 7 evaluations run.
    fail[0] = False
    ran.clear()
    assert rs.main(argv, lines.append) == 0
    assert len(ran) == 8 and "--flagfile=flags/cpu_advgan_finetune.cfg" in ran[0]
    assert len(json.load(open(out / "seed0/advgan_ft.time.json"))["runs"]) == 2
    ran.clear()
    assert rs.main(argv, lines.append) == 0 and ran == []
    # A co-training exported without the class head: its evaluations fail with a clear line, run nothing.
    os.rename(out / "seed0/advgan/export/class_head", out / "seed0/advgan/export/gone")
    for path in (out / "seed0/eval/advgan_class_head/test/n500").glob("eps0.1/results.json"):
        os.remove(path)
    lines.clear()
    assert rs.main(argv, lines.append) == 1 and ran == []
    assert [line for line in lines if line.startswith("[failed]")] == [
        f"[failed]  seed0/eval/advgan_class_head/test/n500/eps0.1: {out}/seed0/advgan/export/class_head does "
        "not exist (a co-training exported before class_head/ was added? train it again in another "
        "--output_dir)"
    ]


# ---------------------------------------------------------------------------
# Reports on fabricated runs.


def _results(path, split, eps, accuracy, n=100):
    """results.json (and .md, .csv) written by jarn_tf.robustness.reports as jarn_tf.evaluate does."""
    from jarn_tf.robustness import evaluation as eval_lib
    from jarn_tf.robustness import reports as results_lib

    autoattack = path.endswith("/aa")
    names = ["autoattack"] if autoattack else (["clean"] if eps == 0 else ["clean", "pgd20"])
    specs = eval_lib.parse_attacks(names, "xent")
    k = int(round(accuracy * n / 100))
    correct = {s.name: np.arange(n) < (k if s.name != "clean" else n - 5 if eps else k) for s in specs}
    output = eval_lib.EvalOutput(
        correct=correct,
        labels=np.zeros(n, np.int64),
        max_perturbation={s.name: eps for s in specs if s.kind != "clean"},
        pixel_range={s.name: (0.0, 1.0) for s in specs if s.kind != "clean"},
        seconds={s.name: 1.0 for s in specs},
    )
    params = eval_lib.AttackParams(eps=eps, pgd_step_size=eps / 5 if eps else None)
    info = {"model": "m", "dataset": "fashion_mnist", "split": split, "batch_size": 100}
    results_lib.write_results(results_lib.build_results(output, specs, params, [], info, 3.0), path)


def _scalars(logdir, tag_values):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for tag, points in tag_values.items():
            for step, value in points:
                tf.summary.scalar(tag, value, step=step)
    writer.flush()
    writer.close()


def _study(out, experiment="all", seeds="0,1"):
    argv = [f"--experiment={experiment}", f"--seeds={seeds}", f"--output_dir={out}"]
    study = rs.Study(rs._parser().parse_args(argv))
    study.argv = argv
    return study


GRID = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)


def _grid(study, model, split, accs, seed_offset=-2.0):
    for s in study.seeds:
        for e, a in zip(study.figure_eps, accs):
            _results(
                study.path(study.eval_key(s, model, split, study.n_fig, e)),
                split,
                float(e),
                a + seed_offset * s,
            )


def _figure_runs(study, pgd_train, pgd_test, ft_train, ft_test, head_test, llv_train, llv_test):
    _grid(study, "pgd_at", "train", pgd_train)
    _grid(study, "pgd_at", "test", pgd_test)
    _grid(study, "advgan_ft", "train", ft_train)
    _grid(study, "advgan_ft", "test", ft_test)
    _grid(study, "advgan_class_head", "test", head_test)
    for s in study.seeds:
        steps = (150, 300, 450)
        _scalars(
            study.path(f"seed{s}/pgd_at/eval"),
            {"eval/llv_train": list(zip(steps, llv_train)), "eval/llv_test": list(zip(steps, llv_test))},
        )


def _read(study, experiment):
    rs.write_report(study, experiment, out=lambda line: None)
    return open(study.path(f"{experiment}.md")).read(), json.load(open(study.path(f"{experiment}.json")))


def _verdicts(record):
    return [c["verdict"] for c in record["claims"]]


PGD_TRAIN = (90, 80, 70, 60, 50, 40, 30)
PGD_TEST = (88, 75, 62, 50, 40, 32, 25)  # gaps 2, 5, 8, 10, 10, 8, 5
FT_TRAIN = (86, 78, 70, 62, 54, 44, 34)
FT_TEST = (85, 76, 67, 58, 50, 40, 31)  # gaps 1, 2, 3, 4, 4, 4, 3
HEAD_TEST = (80, 70, 60, 50, 40, 30, 20)


def test_figure_reports_compute_numbers_and_verdicts(tmp_path):
    study = _study(tmp_path / "o")
    _figure_runs(study, PGD_TRAIN, PGD_TEST, FT_TRAIN, FT_TEST, HEAD_TEST, (0.5, 0.4, 0.4), (0.6, 0.9, 1.2))
    md, record = _read(study, "figure1")
    gap = record["numbers"]["gap_points"]
    assert gap["0.1"]["0"] == pytest.approx(10.0) and gap["0"]["1"] == pytest.approx(2.0)
    assert record["numbers"]["accuracy_pct"]["test"]["0.05"]["1"] == pytest.approx(
        60.0
    )  # seed 1: 2 points lower
    assert _verdicts(record) == ["holds", "holds", "holds"]
    assert "gap +2.00 points at eps 0, +10.00 at eps 0.1 (training eps 0.1); it rises at 3 of 4 steps" in md
    assert "| gap (train - test), mean | +2.00 ± 0.00 | +5.00 ± 0.00 |" in md
    assert "test LLV 0.6000 at the first evaluation, 1.2000 at the last" in md
    assert os.path.getsize(study.path("figure1.png")) > 1000
    md, record = _read(study, "figure5")
    assert record["numbers"]["difference_points"]["0.2"]["0"] == pytest.approx(11.0)
    assert _verdicts(record) == ["holds"] and "above at 7 of 7 eps" in md
    md, record = _read(study, "figure8")
    assert record["numbers"]["mean_gap_points"]["pgd_at"] == pytest.approx(46 / 6)
    assert record["numbers"]["mean_gap_points"]["advgan_ft"] == pytest.approx(20 / 6)
    assert _verdicts(record) == ["holds"] and "AdvGAN's smaller at 6 of 6 eps" in md
    assert record["seeds"] == [0, 1] and "seeds 0, 1;" in md
    assert "## Hardware and wall time" in md and "CPU cores" in md and "python -m jarn_tf.evaluate" in md


def test_figure_verdicts_flip_when_the_claims_do_not_hold(tmp_path):
    study = _study(tmp_path / "o", seeds="0")
    # Test images more robust than train images (negative, shrinking gap), LLV falling on test images,
    # fine-tuning lowering accuracy and AdvGAN's gap larger than PGD-AT's.
    _figure_runs(
        study,
        PGD_TEST,
        PGD_TRAIN,
        FT_TEST,
        FT_TRAIN,
        (95, 85, 75, 65, 55, 45, 35),
        (0.5, 0.4, 0.4),
        (0.9, 0.7, 0.3),
    )
    _, record = _read(study, "figure1")
    assert record["numbers"]["gap_points"]["0.1"]["0"] == pytest.approx(-10.0)
    assert _verdicts(record) == ["does not hold", "does not hold", "does not hold"]
    _, record = _read(study, "figure5")
    assert _verdicts(record) == ["does not hold"]
    _, record = _read(study, "figure8")
    assert _verdicts(record) == ["does not hold"]
    # Nothing measured: no verdict.
    _, record = _read(_study(tmp_path / "empty", seeds="0"), "figure8")
    assert _verdicts(record) == ["not measured"]


def _table_runs(study, advgan, pgd_at, advgan_aa, pgd_at_aa):
    for s in study.seeds:
        for model, pgd, aa in (("advgan_ft", advgan, advgan_aa), ("pgd_at", pgd_at, pgd_at_aa)):
            for i, e in enumerate(study.table_eps):
                key = study.eval_key(s, model, "test", study.n_table, e)
                _results(study.path(key), "test", float(e), pgd[i] + s)
                if float(e) > 0:
                    _results(study.path(key + "/aa"), "test", float(e), aa[i] + s)


def test_table1_report(tmp_path):
    study = _study(tmp_path / "o")
    _table_runs(study, (80, 70, 60, 40), (81, 69, 57, 34), (0, 68, 57, 36), (0, 67, 55, 30))
    for s in study.seeds:
        rs._record_time(
            study.path(f"seed{s}/pgd_at.time.json"), rs.Stage("train", "k", ["-m", "x"]), 0, 0.0, 60.0
        )
    md, record = _read(study, "table1")
    assert record["numbers"]["difference_pgd20_points"] == pytest.approx(
        {"0": -1.0, "0.05": 1.0, "0.1": 3.0, "0.2": 6.0}
    )
    assert record["numbers"]["difference_autoattack_points"]["0.2"] == pytest.approx(6.0)
    assert record["numbers"]["pgd20_pct"]["pgd_at"]["0.1"]["1"] == pytest.approx(58.0)
    assert _verdicts(record) == ["holds", "holds", "holds", "holds"]
    assert "| **AdvGAN - PGD-AT** | -1.00 | +1.00 / +1.00 | +3.00 / +2.00 | +6.00 / +6.00 |" in md
    assert "| AdvGAN (fine-tuned), seed 1 | 81.00 | 71.00 / 69.00 | 61.00 / 58.00 | 41.00 / 37.00 |" in md
    assert "| paper (CIFAR-10), AdvGAN, PGD | 81.1 | 70.41 | 57.43 | 30.25 |" in md
    assert "| paper, AdvGAN - Madry et al., PGD | -0.35 | +1.26 | +3.69 | +6.67 |" in md
    assert "not comparable in value" in md
    assert record["stage_seconds"]["seed0/pgd_at"] == 60.0 and "| `seed1/pgd_at` | 60 |" in md
    # Evaluations without a .time.json: the attacks' time of their results.json (3 s each).
    assert "| `seed0/eval/advgan_ft/test/n1000 PGD` | 12 (4 of 4 evaluations timed) |" in md
    assert not os.path.exists(study.path("table1.png"))
    # AdvGAN behind at eps 0.2 and a shrinking advantage; clean 3 points behind.
    other = _study(tmp_path / "p", seeds="0")
    _table_runs(other, (78, 72, 63, 30), (81, 69, 57, 34), (0, 60, 50, 20), (0, 67, 55, 30))
    _, record = _read(other, "table1")
    assert _verdicts(record) == ["does not hold", "does not hold", "does not hold", "does not hold"]


def test_figure67_report_and_docs_copy(tmp_path):
    import matplotlib.image as mpimg

    study = _study(tmp_path / "o", experiment="figure67", seeds="0,1")
    study.docs_dir = str(tmp_path / "docs")
    steps = (300, 600, 900, 1200)
    fcd = {
        "advgan": (60, 40, 30, 25),
        "advgan_noattack": (90, 60, 40, 30),
        "advgan_acgan": (70, 55, 45, 40),
        "advgan_acgan_noattack": (95, 70, 55, 50),
    }
    for run, values in fcd.items():
        _scalars(
            study.path(f"seed0/{run}/eval"),
            {
                "eval/fcd": list(zip(steps, values)),
                "eval/classifier_score": [(s, 100.0 / v) for s, v in zip(steps, values)],
            },
        )
        os.makedirs(study.path(f"seed0/{run}/export"))
        mpimg.imsave(
            study.path(f"seed0/{run}/export/samples.png"),
            np.random.default_rng(0).random((28, 28)),
            cmap="gray",
        )
    md, record = _read(study, "figure67")
    assert record["seeds"] == [0], "the ablations run for the first seed only"
    assert record["numbers"]["summary"]["advgan"]["final_fcd"] == pytest.approx(25.0)
    assert record["numbers"]["summary"]["advgan_noattack"]["mean_fcd"] == pytest.approx(55.0)
    assert _verdicts(record) == ["holds"] * 10
    assert (
        "fcd: eq. 9 + attack (new loss + adversarial) 25.00, "
        "eq. 8 + attack (original loss + adversarial) 40.00" in md
    )
    name = "robgan_figure67_cpu"
    copied = open(tmp_path / "docs" / "results" / f"{name}.md").read()
    assert f"](../figures/{name}.png)" in copied and os.path.exists(
        tmp_path / "docs" / "figures" / f"{name}.png"
    )
    assert json.load(open(tmp_path / "docs" / "results" / f"{name}.json"))["claims"] == record["claims"]


# ---------------------------------------------------------------------------
# Refusals: one line, before any work.


def _refused(argv, capsys, monkeypatch):
    monkeypatch.setattr(rs, "run_subprocess", lambda *a: pytest.fail("ran a stage"))
    assert rs.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_refusals(tmp_path, capsys, monkeypatch, flagfiles_exist):
    out = f"--output_dir={tmp_path / 'o'}"
    assert "--experiment=table9: not one of" in _refused(["--experiment=table9", out], capsys, monkeypatch)
    assert "--experiment is required" in _refused([out], capsys, monkeypatch)
    assert "--scale=gpu" in _refused(["--experiment=all", "--scale=gpu", out], capsys, monkeypatch)
    for seeds in ("0,x", "", "1,1", "-1"):
        assert "--seeds=" in _refused(["--experiment=table1", f"--seeds={seeds}", out], capsys, monkeypatch)
    assert "--table_eps=0,0.2,0.1" in _refused(
        ["--experiment=table1", "--table_eps=0,0.2,0.1", out], capsys, monkeypatch
    )
    err = _refused(
        ["--experiment=figure5", out, f"--feature_net={tmp_path / 'nowhere'}"], capsys, monkeypatch
    )
    assert (
        "python -m jarn_tf.train --flagfile=flags/cpu_standard.cfg --nodownload "
        f"--model_dir={tmp_path / 'nowhere'}" in err
    )
    assert not (tmp_path / "o").exists()


def test_figure1_without_a_feature_net_is_not_refused(tmp_path, capsys, monkeypatch, flagfiles_exist):
    lines = _dry(["--experiment=figure1", f"--output_dir={tmp_path}", f"--feature_net={tmp_path / 'none'}"])
    assert not any("note:" in line for line in lines)


def test_missing_flagfile_is_named(tmp_path, capsys, monkeypatch):
    # The real check, nested flagfiles included.
    (tmp_path / "outer.cfg").write_text(f"--mode=x\n--flagfile={tmp_path / 'inner.cfg'}\n")
    study = _study(tmp_path / "o", experiment="figure1", seeds="0")
    stage = rs.Stage("train", "seed0/pgd_at", ["-m", "jarn_tf.train"], flagfile=str(tmp_path / "outer.cfg"))
    assert f"flagfile {tmp_path / 'inner.cfg'} does not exist" in rs.missing_flagfile(study, {"a": stage})
    assert rs.missing_flagfile(study, {}) is None

    def only_some(path):
        if path.endswith("cpu_advgan_acgan_noattack.cfg"):
            raise FileNotFoundError(path)
        return {}

    monkeypatch.setattr(rs, "flagfile_values", only_some)
    err = _refused(
        ["--experiment=figure67", f"--output_dir={tmp_path / 'o'}", "--dry_run"], capsys, monkeypatch
    )
    assert (
        "flagfile flags/cpu_advgan_acgan_noattack.cfg does not exist" in err
        and "advgan_acgan_noattack" in err
    )
    # Experiments that do not need it go ahead.
    assert (
        rs.main(["--experiment=figure1", f"--output_dir={tmp_path / 'o'}", "--dry_run"], lambda line: None)
        == 0
    )


def test_resume_with_other_settings_is_refused(tmp_path, capsys, monkeypatch, flagfiles_exist):
    out = tmp_path / "o"
    out.mkdir()
    study = _study(out, experiment="figure5", seeds="0")
    (out / "study.json").write_text(json.dumps(study.settings()))
    # The same settings (more seeds, another experiment) are fine.
    assert (
        rs.main(
            ["--experiment=figure1", "--seeds=0,1,2", f"--output_dir={out}", "--dry_run"], lambda line: None
        )
        == 0
    )
    err = _refused(
        ["--experiment=figure5", "--fcd_samples=500", f"--output_dir={out}", "--dry_run"], capsys, monkeypatch
    )
    assert "holds a study with other settings (fcd_samples: 5000 there, 500 now)" in err
    err = _refused(
        ["--experiment=figure1", "--figure_eps=0,0.1", f"--output_dir={out}", "--dry_run"],
        capsys,
        monkeypatch,
    )
    assert "figure_eps" in err


def test_figure67_curve_means_use_only_the_steps_every_run_logged(tmp_path):
    """A run missing its (early, high) step-300 FCD is not favoured: the means share their steps."""
    study = _study(tmp_path / "o", experiment="figure67", seeds="0")
    full = (300, 600, 900, 1200)
    fcd = {
        "advgan": ((600, 62.0), (900, 50.0), (1200, 25.0)),  # its step-300 evaluation is missing
        "advgan_noattack": tuple(zip(full, (90.0, 58.0, 45.0, 30.0))),
        "advgan_acgan": tuple(zip(full, (70.0, 55.0, 45.0, 40.0))),
        "advgan_acgan_noattack": tuple(zip(full, (95.0, 70.0, 55.0, 50.0))),
    }
    for run, points in fcd.items():
        _scalars(
            study.path(f"seed0/{run}/eval"),
            {"eval/fcd": list(points), "eval/classifier_score": [(s, 100.0 / v) for s, v in points]},
        )
    md, record = _read(study, "figure67")
    summary = record["numbers"]["summary"]
    # Over 600/900/1200 only: 45.67 against 44.33 (over their own steps it would be 45.67 against 55.75).
    assert summary["advgan"]["mean_fcd"] == pytest.approx(137.0 / 3)
    assert summary["advgan_noattack"]["mean_fcd"] == pytest.approx(133.0 / 3)
    faster = [c for c in record["claims"] if "speeds up convergence (eq. 9)" in c["claim"] and "fcd:" in c["measured"]]
    assert [c["verdict"] for c in faster] == ["does not hold"]
    assert "seed 0: steps 600, 900, 1200 (`advgan` lacks step 300)" in md
