"""The paper driver (python -m jarn_tf.paper): its plans, its checks, and one tiny real run that a
second invocation reuses."""

from __future__ import annotations

import os

import pytest

from jarn_tf.reproduce import paper

TABLE3_ROWS = (
    "standard",
    "uniform_noise",
    "fgsm_at1",
    "double_backprop",
    "jarn",
    "pgd_at7",
    "jarn_at1",
    "jarn_release",
    "jarn_release_intended",
)


def _context(*argv: str) -> paper.Context:
    ctx = paper.Context(paper.parse_args(list(argv)))
    paper.plan(ctx)
    return ctx


def _trainings(ctx: paper.Context) -> list:
    return [j for j in ctx.jobs.values() if j.kind == "train"]


def test_table3_cpu_dry_run_lists_nine_models_and_their_commands(tmp_path):
    out = str(tmp_path / "o")
    lines = []
    assert (
        paper.main(["--experiment=table3", "--scale=cpu", f"--output_dir={out}", "--dry_run"], lines.append)
        == 0
    )
    assert not os.path.exists(out), "a dry run writes nothing"
    ctx = _context("--experiment=table3", "--scale=cpu", f"--output_dir={out}")
    trains = _trainings(ctx)
    assert [j.key for j in trains] == [f"models/{r}_seed0" for r in TABLE3_ROWS]
    rel = os.path.relpath(out, paper.REPO) if out.startswith(paper.REPO) else out
    text = "\n".join(lines)
    for row in TABLE3_ROWS:
        cmd = (
            f"python -m jarn_tf.train --flagfile=flags/cpu_{row}.cfg --seed=0 "
            f"--model_dir={rel}/models/{row}_seed0 --nodownload --verbose=0"
        )
        assert f"[run]    {cmd}" in text
        base = f"python -m jarn_tf.evaluate --model={rel}/models/{row}_seed0"
        assert (
            f"{base} --attacks=clean,fgsm,pgd5,pgd10,pgd20,pgd40 --pgd_loss=both --eps=0.1 "
            f"--num_examples=1000 --seed=0 --verbose=0 --nodownload "
            f"--output_dir={rel}/evals/{row}_seed0/attacks_eps0.1"
        ) in text
        assert f"--output_dir={rel}/evals/{row}_seed0/attacks_eps0.05" in text
        assert f"{base} --attacks=autoattack --eps=0.1 --num_examples=500" in text
        assert f"--jacobian_figure" in text and f"{rel}/evals/{row}_seed0/jacobian" in text
    # 9 trainings, then per model two attack evaluations, AutoAttack and the Jacobians.
    assert len(ctx.jobs) == 9 * 5
    assert text.splitlines()[-1] == "Dry run: 0 step(s) reused, 45 to run."


def test_paper_scale_uses_the_datasets_flagfiles_and_eps():
    ctx = _context("--experiment=table3", "--scale=paper", "--seeds=0,1")
    trains = _trainings(ctx)
    assert [j.flagfile for j in trains[::2]] == [f"flags/cifar10_{r}.cfg" for r in TABLE3_ROWS]
    assert {j.key for j in trains} == {f"models/cifar10_{r}_seed{s}" for r in TABLE3_ROWS for s in (0, 1)}
    attacks = ctx.jobs["evals/cifar10_jarn_seed1/attacks_eps0.0313725"]
    assert "--eps=8/255" in attacks.args and not any(a.startswith("--num_examples") for a in attacks.args)
    assert ctx.out.endswith(os.path.join("runs", "paper_paper"))
    mnist = _context("--experiment=table1", "--scale=paper")
    assert [j.flagfile for j in _trainings(mnist)] == [
        f"flags/mnist_{r}.cfg" for r in ("standard", "uniform_noise", "jarn")
    ]
    assert "evals/mnist_jarn_seed0/attacks_eps0.3" in mnist.jobs
    # Figure 2's PGD-AT7 at 1.5x eps, Figure 5's sweeps and Table 5's second seed: variants of the flagfiles.
    wide = _context("--experiment=figure2", "--scale=cpu").jobs["models/pgd_at7_eps0.15_seed0"]
    assert wide.args[2] == "--flagfile=flags/cpu_pgd_at7.cfg"
    assert wide.args[-2:] == ["--eps=0.15", "--step_size=0.0375"]
    fig5 = {j.key for j in _trainings(_context("--experiment=figure5", "--scale=cpu"))}
    assert {"models/jarn_seed0", "models/jarn_lambda_adv0.5_seed0", "models/jarn_batch_size128_seed0"} <= fig5
    assert "models/jarn_disc_update_every10_seed0" not in fig5  # the flagfile's value: the base model
    t5 = _context("--experiment=table5", "--scale=cpu").jobs
    assert "models/jarn_seed1" in t5 and "evals/jarn_seed0/transfer_from_pgd_at7_seed0_eps0.1" in t5
    assert "evals/jarn_at1_seed0/transfer_fgsm_from_jarn_at1_seed1_eps0.1" in t5


def test_unknown_experiment_and_missing_flagfile_fail_before_any_work(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "o")
    assert paper.main(["--experiment=table9", f"--output_dir={out}"]) == 2
    assert "unknown experiment 'table9'" in capsys.readouterr().err
    # A repository whose flags/ lacks cpu_jarn.cfg.
    repo = tmp_path / "repo"
    (repo / "flags").mkdir(parents=True)
    (repo / "flags" / "cpu_standard.cfg").write_text("--dataset=fashion_mnist\n")
    (repo / "flags" / "cpu_uniform_noise.cfg").write_text("--flagfile=flags/cpu_standard.cfg\n")
    monkeypatch.setattr(paper, "REPO", str(repo))
    ran = []
    monkeypatch.setattr(paper, "run_subprocess", lambda *a: ran.append(a) or 0)
    assert paper.main(["--experiment=table1", f"--output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "flagfile flags/cpu_jarn.cfg does not exist" in err and "jarn_seed0" in err
    assert not ran and not os.path.exists(out)


def test_tiny_table1_trains_evaluates_writes_the_table_then_reuses_everything(
    tiny_data_dir, tmp_path, monkeypatch
):
    out = str(tmp_path / "paper")
    argv = [
        "--experiment=table1",
        "--scale=cpu",
        f"--output_dir={out}",
        "--rows=standard",
        "--eps=0.1",
        "--num_examples=32",
        f"--data_dir={tiny_data_dir}",
        "--extra_train_flags=--train_steps=6 --cnn_channels=8,16,16 --batch_size=16 --summary_every=2 "
        "--checkpoint_every=6 --image_summary_every=0 --eval_examples=32",
        "--extra_eval_flags=--noeps_checks --square_check_queries=0 --batch_size=32",
    ]
    lines = []
    assert paper.main(argv, lines.append) == 0, "\n".join(lines)
    md_path = os.path.join(out, "table1", "table1.md")
    md = open(md_path).read()
    row = next(line for line in md.splitlines() if line.startswith("| Standard |"))
    assert "(76.5)" in row and "(98.7)" in row  # the paper's FGSM and clean accuracy
    assert row.split("|")[4].strip() != "-"  # our PGD40
    assert "python -m jarn_tf.train --flagfile=flags/cpu_standard.cfg --seed=0" in md
    assert "evals/standard_seed0/attacks_eps0.1` (ran" in md
    assert "CPU cores" in md and "| `standard_seed0` |" in md
    assert "not recorded" not in md  # the train log's "Finished ... in S s"
    assert os.path.exists(os.path.join(out, "models", "standard_seed0.time.json"))
    log = os.path.join(out, "models", "standard_seed0.log")
    size = os.path.getsize(log)

    # Everything exists: nothing runs, the table is written again.
    def no_subprocess(*args):
        raise AssertionError(f"ran {args[0]}")

    monkeypatch.setattr(paper, "run_subprocess", no_subprocess)
    lines = []
    assert paper.main(argv, lines.append) == 0
    assert [line.split()[0] for line in lines[1:3]] == ["[reuse]", "[reuse]"]
    assert os.path.getsize(log) == size
    assert "evals/standard_seed0/attacks_eps0.1` (reused)" in open(md_path).read()
    lines = []
    assert paper.main(argv + ["--dry_run"], lines.append) == 0
    assert lines[-1] == "Dry run: 2 step(s) reused, 0 to run."


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
def test_a_model_another_process_is_training_is_left_alone(tmp_path):
    import subprocess
    import sys
    import time

    # A process that looks like `python -m jarn_tf.train --model_dir=o/models/standard_seed0` run in tmp_path.
    cmd = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "jarn_tf.train"]
    proc = subprocess.Popen(cmd + ["--model_dir=o/models/standard_seed0"], cwd=str(tmp_path))
    try:
        model_dir = str(tmp_path / "o" / "models" / "standard_seed0")
        deadline = time.time() + 10
        while paper.training_pid(model_dir) is None and time.time() < deadline:
            time.sleep(0.1)  # until the child has exec'd
        assert paper.training_pid(model_dir) == proc.pid
        assert paper.training_pid(str(tmp_path / "o" / "models" / "jarn_seed0")) is None
        lines = []
        argv = ["--experiment=table1", "--rows=standard", f"--output_dir={tmp_path / 'o'}", "--dry_run"]
        assert paper.main(argv, lines.append) == 0
        assert lines[1].startswith(f"[busy]   models/standard_seed0: process {proc.pid} is training it")
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------
# The paired comparison and JARN's schedule (issue 27 items 1 and 2).


def test_t_quantile_and_paired_interval_match_known_values():
    # Student's t 0.975 quantiles (any table; scipy.stats.t.ppf(0.975, df)).
    known = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045, 30: 2.042, 40: 2.021, 120: 1.980}
    for df, t in known.items():
        assert paper.t_quantile_975(df) == pytest.approx(t, abs=6e-4), df
    assert paper.t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        paper.t_quantile_975(0)
    # diffs 1.0, 1.2, 0.8, 1.1, 0.9: mean 1, sd sqrt(0.025), half 2.776 * 0.1581 / sqrt(5) = 0.1963.
    st = paper.paired_t([(s, 10 + d, 10.0) for s, d in enumerate((1.0, 1.2, 0.8, 1.1, 0.9))])
    assert st.seeds == (0, 1, 2, 3, 4) and st.mean == pytest.approx(1.0)
    assert st.sd == pytest.approx(0.158114, abs=1e-5)
    assert (st.lo, st.hi) == (pytest.approx(0.8037, abs=1e-3), pytest.approx(1.1963, abs=1e-3))
    # diffs 1, 2, 3: mean 2, sd 1, half 4.303 / sqrt(3) = 2.484: the interval includes 0 (1.96 would not).
    st = paper.paired_t([(0, 1.0, 0.0), (1, 2.0, 0.0), (2, 3.0, 0.0), (3, None, 1.0)])
    assert st.seeds == (0, 1, 2) and (st.lo, st.hi) == (
        pytest.approx(-0.484, abs=1e-3),
        pytest.approx(4.484, abs=1e-3),
    )
    one = paper.paired_t([(7, 2.0, 1.5), (8, 3.0, None)])
    assert one.n == 1 and one.mean == 0.5 and one.lo is None
    assert "not enough seeds" in paper.paired_conclusion(one, "worst-case accuracy", "JARN", "Standard")


def _fake_runs(out: str, numbers: dict, eps: str = "0.1", failed: dict = None) -> None:
    """Finished trainings and evaluations on disk: (model, seed) -> (clean, worst case, AutoAttack) in %.

    ``failed``: (model, seed) -> names of gradient-masking checks its attacks evaluation failed.
    """
    import json

    def dump(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f)

    for (model, seed), (clean, worst, aa) in numbers.items():
        name = f"{model}_seed{seed}"
        dump(os.path.join(out, "models", name, "export", "metadata.json"), {})
        with open(os.path.join(out, "models", f"{name}.log"), "w") as f:
            f.write(f"Finished at step 3750 in {200 + seed} s\n")
        acc = {"clean": clean / 100, "worst_case": worst / 100}
        bad = (failed or {}).get((model, seed), [])
        checks = [{"name": n, "passed": n not in bad} for n in ("pgd_beats_fgsm", "attacks_not_above_clean")]
        dump(
            os.path.join(out, "evals", name, f"attacks_eps{eps}", "results.json"),
            {"accuracy": acc, "checks": checks},
        )
        aa_acc = {"autoattack": aa / 100}
        dump(os.path.join(out, "evals", name, f"autoattack_eps{eps}", "results.json"), {"accuracy": aa_acc})


def _no_subprocess(*args):
    raise AssertionError(f"ran {args[0]}")


def _report_from_disk(monkeypatch, out: str, experiment: str) -> str:
    """Runs ``python -m jarn_tf.paper --experiment=<experiment>`` on finished runs (no subprocess may
    start) and returns the report it writes."""
    monkeypatch.setattr(paper, "run_subprocess", _no_subprocess)
    lines = []
    assert paper.main([f"--experiment={experiment}", f"--output_dir={out}"], lines.append) == 0, "\n".join(lines)
    return open(os.path.join(out, experiment, f"{experiment}.md")).read()


def test_paired_report_from_results_on_disk(tmp_path, monkeypatch):
    out = str(tmp_path / "o")
    jarn_gain = (1.0, 1.2, 0.8, 1.1, 0.9)  # worst case: [+0.80, +1.20], excludes 0
    at1_gain = (-1.0, 0.0, 1.0, 2.0, 3.0)  # worst case: mean 1, sd 1.58, [-0.96, +2.96], includes 0
    clean_gain = (0.5, -0.5, 0.0, 1.0, -1.0)  # mean 0, sd 0.79: [-0.98, +0.98]
    at1_aa_gain = (-2.4, -2.8, -2.6, -2.2, -3.0)  # mean -2.6, sd 0.32: [-2.99, -2.21], excludes 0
    numbers = {}
    for s in range(5):
        numbers[("standard", s)] = (87.0, 13.0 + s, 10.0)
        numbers[("jarn", s)] = (87.0 + clean_gain[s], 13.0 + s + jarn_gain[s], 10.0 + jarn_gain[s])
        numbers[("pgd_at7", s)] = (80.0, 55.0, 52.0)
        numbers[("jarn_at1", s)] = (82.0, 55.0 + at1_gain[s], 52.0 + at1_aa_gain[s])
    _fake_runs(out, numbers, failed={("jarn", 3): ["attacks_not_above_clean"]})
    # Seed 0 only on the command line: the other four come from the disk.
    md = _report_from_disk(monkeypatch, out, "paired")
    assert "the numbers come from seeds 0, 1, 2, 3, 4" in md
    assert "| Worst case | 0, 1, 2, 3, 4 | +1.00 | 0.16 | [+0.80, +1.20] |" in md
    assert (
        "- Worst-case accuracy: the 95% interval [+0.80, +1.20] excludes 0: JARN changes worst-case "
        "accuracy by +1.00 points (between +0.80 and +1.20) against Standard, over seeds 0, 1, 2, 3, 4."
    ) in md
    assert "| AutoAttack | 0, 1, 2, 3, 4 | +1.00 | 0.16 | [+0.80, +1.20] |" in md
    assert "| Clean | 0, 1, 2, 3, 4 | +0.00 | 0.79 | [-0.98, +0.98] |" in md
    assert "- Clean accuracy: the 95% interval [-0.98, +0.98] includes 0: no effect of JARN against" in md
    assert "| Worst case | 0, 1, 2, 3, 4 | +1.00 | 1.58 | [-0.96, +2.96] |" in md
    assert (
        "- Worst-case accuracy: the 95% interval [-0.96, +2.96] includes 0: no effect of JARN-AT1 against "
        "PGD-AT7 detectable with 5 seeds (0, 1, 2, 3, 4); effects outside [-0.96, +2.96] points are unlikely."
    ) in md
    assert "| AutoAttack | 0, 1, 2, 3, 4 | -2.60 | 0.32 | [-2.99, -2.21] |" in md
    assert "JARN-AT1 changes AutoAttack accuracy by -2.60 points (between -2.99 and -2.21) against" in md
    assert "| 2 | 15.8 | 15.0 | +0.8 | 10.8 | 10.0 | +0.8 | 87.0 | 87.0 | +0.0 |" in md  # seed 2, JARN
    assert "t_0.975,4 = 2.776 with all 5 seeds" in md
    # The masking checks of every evaluation behind the report (20 attacks evaluations record checks;
    # the fake AutoAttack ones record none), the failed one named.
    assert "19 of 20 checked evaluations behind this report passed every check" in md
    assert "- `evals/jarn_seed3/attacks_eps0.1`: attacks_not_above_clean" in md
    assert "- `evals/jarn_seed2/" not in md and "No checks recorded (evaluations of another kind or version): 20." in md


def test_paired_report_with_one_seed_says_not_enough_seeds(tmp_path, monkeypatch):
    out = str(tmp_path / "o")
    _fake_runs(out, {(m, 0): (80.0, 20.0, 18.0) for m in ("standard", "jarn", "jarn_at1", "pgd_at7")})
    monkeypatch.setattr(paper, "run_subprocess", _no_subprocess)
    lines = []
    assert paper.main(["--experiment=paired", f"--output_dir={out}"], lines.append) == 0
    assert lines[1].startswith("note: a paired interval needs two or more seeds")
    md = open(os.path.join(out, "paired", "paired.md")).read()
    assert "| Worst case | 0 | +0.00 | - | not enough seeds |" in md
    assert "Worst-case accuracy: not enough seeds for an interval (only seed 0: +0.00 points)" in md
    assert "interval [" not in md


def test_paired_and_schedule_dry_runs_list_their_models_and_flags(tmp_path):
    out = str(tmp_path / "o")
    lines = []
    argv = ["--experiment=paired", "--seeds=0,1,2,3,4", f"--output_dir={out}", "--dry_run"]
    assert paper.main(argv, lines.append) == 0
    assert not os.path.exists(out)
    text = "\n".join(lines)
    rows = ("standard", "jarn", "jarn_at1", "pgd_at7")
    for row in rows:
        for seed in range(5):
            model = f"--model_dir={out}/models/{row}_seed{seed} "
            assert f"--flagfile=flags/cpu_{row}.cfg --seed={seed} {model}" in text
            assert f"--attacks=autoattack --eps=0.1 --num_examples=500" in text
            assert f"--output_dir={out}/evals/{row}_seed{seed}/attacks_eps0.1" in text
            assert f"--output_dir={out}/evals/{row}_seed{seed}/autoattack_eps0.1" in text
    assert "attacks_eps0.05" not in text  # the table's eps only
    # 4 models x 5 seeds x (a training and two evaluations).
    assert lines[-1] == "Dry run: 0 step(s) reused, 60 to run."

    ctx = _context("--experiment=schedule", "--seeds=0,1", f"--output_dir={out}")
    trains = {j.key: j.args for j in _trainings(ctx)}
    names = ("standard", "jarn", "jarn_jarn_start0", "jarn_jarn_start0.875")
    assert sorted(trains) == sorted(f"models/{n}_seed{s}" for n in names for s in (0, 1))
    assert trains["models/jarn_jarn_start0_seed1"][2:4] == ["--flagfile=flags/cpu_jarn.cfg", "--seed=1"]
    assert trains["models/jarn_jarn_start0_seed1"][-1] == "--jarn_start=0"
    assert trains["models/jarn_jarn_start0.875_seed0"][-1] == "--jarn_start=0.875"
    # The flagfile's 0.75 is the plain JARN model (Table 3's), not a second one.
    assert not any(a.startswith("--jarn_start") for a in trains["models/jarn_seed0"])
    assert "evals/jarn_jarn_start0_seed0/autoattack_eps0.1" in ctx.jobs
    assert len(ctx.jobs) == 4 * 2 * 3
    assert paper.main(["--experiment=schedule", "--rows=jarn,pgd_at7", "--dry_run"], lines.append) == 2


def test_schedule_report_sets_the_papers_claim_against_the_numbers(tmp_path, monkeypatch):
    out = str(tmp_path / "o")
    numbers = {}
    for s in range(3):
        numbers[("standard", s)] = (87.0, 13.0, 10.0)
        numbers[("jarn", s)] = (87.0, 14.0 + s, 11.0)
        numbers[("jarn_jarn_start0.875", s)] = (87.0, 14.0, 11.0)
        numbers[("jarn_jarn_start0", s)] = (85.0, 14.0 + s + (1.0, 2.0, 3.0)[s], 11.0 + (-1.0, 1.0, 0.0)[s])
    _fake_runs(out, numbers)
    monkeypatch.setattr(paper, "run_subprocess", _no_subprocess)
    lines = []
    argv = ["--experiment=schedule", "--seeds=0,1,2", f"--output_dir={out}"]
    assert paper.main(argv, lines.append) == 0, "\n".join(lines)
    md = open(os.path.join(out, "schedule", "schedule.md")).read()
    # Clean, AutoAttack, worst case, training time (the fake logs: 200 + seed s).
    whole = "| JARN, whole run (jarn_start=0) | 85.0 ± 0.0 | 11.0 ± 1.0 | 17.0 ± 2.0 | 201 ± 1 | 0, 1, 2 |"
    assert whole in md
    assert "| JARN, last 25% (jarn_start=0.75, the flagfile's) | 87.0 ± 0.0 | 11.0 ± 0.0 |" in md
    assert "| JARN, last 12.5% (jarn_start=0.875) |" in md
    assert "## JARN whole run - JARN last 25%, paired by seed" in md
    # Worst case: diffs 1, 2, 3 -> [-0.48, +4.48]; AutoAttack: -1, 1, 0 -> [-2.48, +2.48].
    assert "| Worst case | 0, 1, 2 | +2.00 | 1.00 | [-0.48, +4.48] |" in md
    assert (
        "Verdict: the numbers are consistent with the claim at this scale: with 3 seeds, no difference "
        "between JARN over the whole run and in the last 25% is detectable in worst-case or AutoAttack "
        "accuracy; differences larger than 4.48 points are unlikely."
    ) in md
    # Whole run 3 points worse on clean accuracy (excluded from the claim, which is about robustness).
    assert "| Clean | 0, 1, 2 | -2.00 | 0.00 | [-2.00, -2.00] |" in md
    # Worst case 1 point up on every seed: the interval excludes 0 and the verdict turns.
    for s in range(3):
        numbers[("jarn_jarn_start0", s)] = (85.0, 14.0 + s + (0.9, 1.0, 1.1)[s], 11.0)
    _fake_runs(out, numbers)
    assert paper.main(argv, lines.append) == 0
    md = open(os.path.join(out, "schedule", "schedule.md")).read()
    assert (
        "Verdict: the numbers contradict the claim at this scale: JARN over the whole run differs from JARN "
        "in the last 25% (worst-case accuracy +1.00 points, 95% interval [+0.75, +1.25]; whole run minus "
        "last 25%)."
    ) in md


def test_figure5_report_pairs_each_variant_with_the_flagfiles_model_on_its_seeds(tmp_path, monkeypatch):
    """Variants on seed 0 only, the flagfile's JARN on seeds 0-2: the flagfile's row and the difference use
    seed 0 alone; the spread line uses all three seeds."""
    import json

    out = str(tmp_path / "o")

    def fake(name: str, pgd20: float, clean: float = 87.0) -> None:
        os.makedirs(os.path.join(out, "models", name, "export"), exist_ok=True)
        open(os.path.join(out, "models", name, "export", "metadata.json"), "w").write("{}")
        d = os.path.join(out, "evals", name, "attacks_eps0.1")
        os.makedirs(d, exist_ok=True)
        acc = dict(clean=clean, fgsm=pgd20 + 3, pgd5=pgd20 + 2, pgd10=pgd20 + 1, pgd20=pgd20)
        record = {"accuracy": {k: v / 100 for k, v in acc.items()}, "checks": []}
        json.dump(record, open(f"{d}/results.json", "w"))

    fake("jarn_seed0", 14.0)
    fake("jarn_seed1", 20.0)
    fake("jarn_seed2", 20.0)
    for flag, values in paper.FIGURE5_SWEEPS.items():
        for v in values:
            if (flag, v) in (("lambda_adv", 1.0), ("batch_size", 64), ("disc_update_every", 10)):
                continue
            fake(f"jarn_{flag}{v:g}_seed0", 15.5 if (flag, v) == ("lambda_adv", 5.0) else 14.0, clean=85.0)
    md = _report_from_disk(monkeypatch, out, "figure5")
    # The flagfile's row over seed 0 (the variants' seed), not the mean over seeds 0-2 (18.0).
    assert "| lambda_adv | 1.0 (flagfile) | 17.0 | 16.0 | 15.0 | 14.0 | 87.0 |  | 0 | `jarn` |" in md
    assert "| lambda_adv | 5 | 18.5 | 17.5 | 16.5 | 15.5 | 85.0 | +1.5 | 0 | `jarn_lambda_adv5` |" in md
    assert "| batch_size | 32 | 17.0 | 16.0 | 15.0 | 14.0 | 85.0 | +0.0 | 0 | `jarn_batch_size32` |" in md
    assert "- `jarn` over 3 seed(s) on disk: PGD20 18.0 ± 3.5, clean 87.0 ± 0.0." in md
    assert os.path.exists(os.path.join(out, "figure5", "figure5.png"))


def test_table5_report_averages_every_column_over_the_seeds_with_transfer_results(tmp_path, monkeypatch):
    """Transfer results on seed 0 only, white-box results on seeds 0-2 (as when the paired experiment ran
    more seeds): the summary row's white-box and clean columns are seed 0's, not the mean over 0-2."""
    import json

    out = str(tmp_path / "o")

    def dump(rel: str, accuracy: dict) -> None:
        os.makedirs(os.path.join(out, rel), exist_ok=True)
        record = {"accuracy": {k: v / 100 for k, v in accuracy.items()}, "checks": []}
        json.dump(record, open(f"{out}/{rel}/results.json", "w"))

    for model in ("jarn", "jarn_at1", "pgd_at7"):
        for s in range(3):
            os.makedirs(os.path.join(out, "models", f"{model}_seed{s}", "export"), exist_ok=True)
            open(os.path.join(out, "models", f"{model}_seed{s}", "export", "metadata.json"), "w").write("{}")
            acc = dict(clean=80.0 + s, fgsm=30.0 + 10 * s, pgd20=20.0 + 10 * s)
            dump(f"evals/{model}_seed{s}/attacks_eps0.1", acc)
    for model in ("jarn", "jarn_at1"):
        for source in ("pgd_at7_seed0", f"{model}_seed1"):
            dump(f"evals/{model}_seed0/transfer_from_{source}_eps0.1", dict(transfer_pgd20=50.0))
            dump(f"evals/{model}_seed0/transfer_fgsm_from_{source}_eps0.1", dict(transfer_pgd1=60.0))
    md = _report_from_disk(monkeypatch, out, "table5")
    # Seed 0's white-box 30.0 / 20.0 and clean 80.0, not the means over seeds 0-2 (40.0 / 30.0 / 81.0).
    transfer = "| JARN | 60.0 (79.6) | 50.0 (76.7) | 60.0 (73.6) | 50.0 (17.4) |"
    assert transfer + " 30.0 (67.2) | 20.0 (15.5) | 80.0 (93.9) | 0 |" in md
    assert "| JARN | 2 | `pgd_at7_seed2` | `jarn_seed0` | - | - | - | - | 50.0 | 40.0 | 82.0 |" in md


def test_training_time_of_a_resumed_run_says_which_steps_it_covers(tmp_path):
    """A run killed at step 1700 logs no time; its resume logs steps 1700-3748 only. That is no training
    time for means and per-epoch figures, and is labelled as part of a run where shown."""
    out = str(tmp_path / "o")
    ctx = paper.Context(paper.parse_args(["--experiment=paired", f"--output_dir={out}"]))
    os.makedirs(os.path.join(out, "models"))
    logs = {
        "whole": "Finished at step 3748 in 400 s, evaluations 5 s of it.\n",
        "twice": "Finished at step 1000 in 100 s.\n"
        "Finished at step 3748 in 300 s (resumed from step 1000).\n",
        "resumed": "step 1600 ...\nFinished at step 3748 in 232 s (resumed from step 1700).\n",
    }
    for name, text in logs.items():
        open(os.path.join(out, "models", f"{name}.log"), "w").write(text)
    assert paper.training_time(ctx, "whole") == (400.0, "train's log")
    assert paper.training_time(ctx, "twice") == (400.0, "train's log")
    seconds, source = paper.training_time(ctx, "resumed")
    assert seconds is None and "steps 1700-3748 only" in source
    assert paper.training_time(ctx, "resumed", partial_ok=True)[0] == 232.0
