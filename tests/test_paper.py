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
