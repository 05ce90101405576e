"""``python -m jarn_tf.bench`` on a tiny model: the table, the ratios and the JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from jarn_tf.bench import training as bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--cnn_channels=4,8,8", "--batch_size=8", "--steps=4", "--warmup=2", "--disc_update_every=2"]


def run_bench(args: list) -> str:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "jarn_tf.bench.training"] + TINY + args,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def parse_table(stdout: str) -> dict:
    """Mode name -> its row's cells, from the markdown table."""
    lines = stdout.splitlines()
    header = "| mode | ms/step | images/s | peak memory | x standard | x PGD-AT7 |"
    assert header in lines, stdout
    rows = {}
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6, line
        rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    value = float(cell.replace("MiB", "").rstrip("x").strip())
    assert math.isfinite(value), cell
    return value


def check_json(path, rows: dict, modes: list) -> dict:
    figures = json.load(open(path))
    assert list(figures["modes"]) == modes
    for mode in modes:
        r = figures["modes"][mode]
        row = rows[bench.MODE_NAMES[mode]]
        assert r["ms_per_step"] == pytest.approx(number(row[0]), abs=0.01)
        assert r["images_per_second"] == pytest.approx(number(row[1]), abs=0.1)
        assert r["steps"] == 4 and r["seconds"] > 0
        assert not r["compiled_during_timing"], mode
    assert figures["modes"]["standard"]["x_standard"] == 1.0
    assert figures["settings"]["cnn_channels"] == [4, 8, 8]
    return figures


def test_every_mode_in_one_process(tmp_path):
    path = tmp_path / "figures.json"
    out = run_bench(["--noisolate", f"--output_json={path}"])
    rows = parse_table(out)
    assert sorted(rows) == sorted(bench.MODE_NAMES.values()), out
    for name, (ms, ips, mem, x_std, x_pgd) in rows.items():
        assert number(ms) > 0 and number(ips) > 0, name
        assert number(x_std) > 0 and number(x_pgd) > 0, name
        assert number(mem) >= 0, name  # in one process a later mode's RSS growth can be 0
        # images/s is batch / (ms/step).
        assert number(ips) == pytest.approx(8000 / number(ms), rel=0.02), name
    assert rows["standard"][3] == "1.00x" and rows["PGD-AT7"][4] == "1.00x"
    assert number(rows["standard"][2]) > 0
    assert "ru_maxrss" in out or "GPU" in out
    assert out.count("PASS") + out.count("FAIL") == 3, out
    assert "Whole run with JARN in the last 25%" in out

    figures = check_json(path, rows, list(bench.MODES))
    jarn = figures["modes"]["jarn"]
    # JARN timed 4 steps from step 2 with k=2: the discriminator updated at steps 2 and 4.
    assert jarn["discriminator_updates"] == 2
    r = jarn["ms_per_step"] / figures["modes"]["standard"]["ms_per_step"]
    assert figures["whole_run_ratio"] == pytest.approx(0.75 + 0.25 * r)


def test_isolated_mode_reports_its_own_memory(tmp_path):
    path = tmp_path / "figures.json"
    out = run_bench(["--modes=standard", f"--output_json={path}"])
    rows = parse_table(out)
    assert list(rows) == ["standard"]
    assert number(rows["standard"][2]) > 0
    assert rows["standard"][3] == "1.00x" and rows["standard"][4] == "n/a"
    figures = check_json(path, rows, ["standard"])
    assert figures["modes"]["standard"]["peak_memory_bytes"] > 0
    assert "n/a" in out  # the targets that need other modes are not judged


def test_targets_pass_and_fail():
    def verdicts(standard, jarn, pgd):
        results = {
            m: dict(ms_per_step=v) for m, v in (("standard", standard), ("pgd_at7", pgd), ("jarn", jarn))
        }
        summary = bench.summarize(results)
        return summary, [t["passed"] for t in summary["targets"]]

    summary, passed = verdicts(10.0, 20.0, 60.0)
    assert passed == [True, True, True]
    assert summary["whole_run_ratio"] == pytest.approx(1.25)
    _, passed = verdicts(10.0, 30.0, 60.0)  # JARN 3x standard; PGD only 2x JARN; run 1.5x
    assert passed == [False, False, False]
    _, passed = verdicts(10.0, 25.0, 62.5)  # exactly on every bound
    assert passed == [True, True, True]
    summary = bench.summarize({"standard": dict(ms_per_step=1.0)})
    assert [t["passed"] for t in summary["targets"]] == [None, None, None]


def test_gan_step_benchmark_prints_and_saves_its_figures(tmp_path):
    # python -m jarn_tf.bench_gan: one process per (regulariser, oneDNN setting), figures printed and saved.
    from jarn_tf.bench import gan as bench_gan

    lines = []
    out_json = tmp_path / "gan.json"
    code = bench_gan.main(
        ["--gan_channels=2", "--batch_size=4", "--steps=1", "--regs=none,rfm", "--onednn=1",
         f"--output_json={out_json}"],
        out=lines.append,
    )
    assert code == 0
    text = "\n".join(lines)
    assert "| none | " in text and "| rfm | " in text and "width 2, batch 4" in text
    saved = json.load(open(out_json))
    assert set(saved["results"]["1"]) == {"none", "rfm"}
    assert all(v["ms_per_step"] > 0 for v in saved["results"]["1"].values())
    assert bench_gan.main(["--regs=dropout"]) == 2
