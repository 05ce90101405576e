"""The Table 2 study (jarn_tf.gan.study): the draw, the ranking, the report, refusals."""

from __future__ import annotations

import json
import math
import os

import pytest

from jarn_tf.gan import study as gan_study


def test_setups_are_drawn_from_the_pool_reproducibly_and_distinct():
    a = gan_study.sample_setups(12, seed=3)
    assert a == gan_study.sample_setups(12, seed=3)
    assert a != gan_study.sample_setups(12, seed=4)
    assert len({tuple(s.values()) for s in a}) == 12
    for setup in a:
        assert set(setup) == set(gan_study.POOL)
        for key, value in setup.items():
            assert value in gan_study.POOL[key], (key, value)
    # Over many draws every value of the pool shows up.
    many = gan_study.sample_setups(200, seed=0)
    for key, values in gan_study.POOL.items():
        assert {s[key] for s in many} == set(values), key
    with pytest.raises(ValueError, match="only 432 distinct setups"):
        gan_study.sample_setups(433, seed=0)


def test_rank_shares_ties_and_puts_diverged_runs_last():
    assert gan_study.rank([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert gan_study.rank([1.0, 1.0, 5.0, 0.5]) == [2.5, 2.5, 4.0, 1.0]
    assert gan_study.rank([math.inf, 2.0, math.inf, 1.0]) == [3.5, 2.0, 3.5, 1.0]


def test_summary_counts_best_worst_and_mean_rank():
    regs = ["none", "rfm", "gradient_penalty"]
    fcd = [
        {"none": 30.0, "rfm": 10.0, "gradient_penalty": 20.0},  # rfm best, none worst
        {"none": math.inf, "rfm": 5.0, "gradient_penalty": math.inf},  # none and GP share last
        {"none": 1.0, "rfm": 2.0, "gradient_penalty": 3.0},  # none best, GP worst
        {"none": 1.0, "rfm": 2.0},  # incomplete: left out
    ]
    table = gan_study.summarise(fcd, regs)
    assert table["rfm"] == {"best": 2, "worst": 0, "mean_rank": pytest.approx((1 + 1 + 2) / 3), "setups": 3}
    assert table["none"] == {"best": 1, "worst": 2, "mean_rank": pytest.approx((3 + 2.5 + 1) / 3), "setups": 3}
    assert table["gradient_penalty"]["worst"] == 2 and table["gradient_penalty"]["best"] == 0


def _fake_run(root, setup, reg, fcd=None, diverged=False, seconds=10.0):
    model_dir = os.path.join(root, f"setup{setup:02d}", reg)
    os.makedirs(os.path.join(model_dir, "export"), exist_ok=True)
    if fcd is not None:
        with open(os.path.join(model_dir, "export", "metadata.json"), "w") as f:
            json.dump({"fcd": {"value": fcd, "classifier_score": 5.0}, "step": 7}, f)
    with open(model_dir + ".time.json", "w") as f:
        json.dump({"seconds": seconds, "returncode": 1 if diverged else 0, "diverged": diverged}, f)


def test_report_from_runs_on_disk(tmp_path):
    args = gan_study._parser().parse_args(["--setups=2", f"--output_dir={tmp_path}"])
    regs = list(gan_study.REGS)
    setups = gan_study.sample_setups(2, 0)
    for i, values in enumerate(
        [
            {"none": 50.0, "instance_noise": 40.0, "gradient_penalty": 30.0, "rfm": 20.0, "ar": 10.0},
            {"none": None, "instance_noise": 9.0, "gradient_penalty": 8.0, "rfm": 7.0, "ar": 6.0},
        ]
    ):
        for reg, value in values.items():
            _fake_run(str(tmp_path), i, reg, value, diverged=value is None)
    markdown = gan_study.report(args, setups, regs)
    saved = json.load(open(tmp_path / "table2.json"))
    # Setup 0: RFM best of the paper's four, None worst; setup 1: None diverged (last), RFM best.
    assert saved["table"]["rfm"]["best"] == 2 and saved["table"]["none"]["worst"] == 2
    assert saved["table"]["rfm"]["mean_rank"] == 1.0 and saved["table"]["none"]["mean_rank"] == 4.0
    assert saved["table_with_ar"]["ar"]["best"] == 2 and saved["table_with_ar"]["rfm"]["mean_rank"] == 2.0
    assert "| # best (ours) | 0 | 0 | 0 | 2 |" in markdown
    assert "| # best (paper, 55 setups) | 1 | 6 | 11 | 37 |" in markdown
    assert "diverged" in markdown and "2 of 2 setups complete" in markdown
    assert "not FID" in markdown


def test_refusals_before_any_work(tmp_path, capsys):
    assert gan_study.main(["--regs=none,dropout", f"--output_dir={tmp_path}"]) == 2
    assert "--regs: ['dropout']" in capsys.readouterr().err
    # A study resumed with other settings.
    out = tmp_path / "study"
    out.mkdir()
    args = gan_study._parser().parse_args(["--setups=2", f"--output_dir={out}"])
    with open(out / "study.json", "w") as f:
        json.dump(gan_study._settings(args, list(gan_study.REGS)), f)
    assert gan_study.main(["--setups=3", f"--output_dir={out}", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other settings (setups differ)" in err
    # A missing feature network, named with the command that trains it.
    code = gan_study.main(["--setups=2", f"--output_dir={out}", f"--fcd_network={tmp_path / 'none'}"])
    assert code == 2 and "flags/cpu_standard.cfg" in capsys.readouterr().err


def test_dry_run_resolves_every_command(tmp_path, capsys):
    # Every run's flags resolve through jarn_tf.train's own parsing and validation.
    assert gan_study.main(["--setups=3", "--seed=1", f"--output_dir={tmp_path}", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if "jarn_tf.train" in line]
    assert len(commands) == 3 * len(gan_study.REGS)
    first = gan_study.sample_setups(3, 1)[0]
    assert f"--gan_block={first['gan_block']}" in commands[0]
    assert f"--gan_channels={gan_study.CPU_FILTERS[first['filters']]}" in commands[0]
    assert all("--gan_generator_loss=non_saturating" in c for c in commands)
    assert not (tmp_path / "study.json").exists()


def test_paper_scale_commands(tmp_path, capsys):
    # --scale=paper: CIFAR-10, the pool's filters as they are, 50 epochs; resolvable without the data.
    assert gan_study.main(["--scale=paper", "--setups=2", f"--output_dir={tmp_path}", "--dry_run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if "jarn_tf.train" in line]
    first = gan_study.sample_setups(2, 0)[0]
    assert all("--dataset=cifar10" in c and "--epochs=50" in c and "--train_steps" not in c for c in commands)
    assert f"--gan_channels={first['filters']}" in commands[0]

