"""Determinism, preemption (SIGTERM) and a killed run (SIGKILL) resumed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(tiny_flags: list, data_dir: str, model_dir: str, steps: int, *extra: str) -> list:
    return (
        [sys.executable, "-m", "jarn_tf.train"]
        + tiny_flags
        + [
            f"--data_dir={data_dir}",
            f"--model_dir={model_dir}",
            f"--train_steps={steps}",
            "--jarn",
            "--jarn_start=0.5",
            "--disc_update_every=3",
            "--at_steps=1",
            "--steps_per_loop=1",
            "--checkpoint_every=2",
            "--summary_every=2",
            "--eval_examples=0",
            "--deterministic",
            *extra,
        ]
    )


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def _wait_for_checkpoint(latest_step, proc, model_dir: str, step: int, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while latest_step(model_dir) < step:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_deterministic_runs_are_bit_identical_and_sigkill_resume_matches(
    tiny_data_dir, tmp_path, tiny_flags, checkpoint_values, latest_step
):
    steps = 12
    full_a, full_b, killed = (str(tmp_path / n) for n in ("a", "b", "killed"))
    for model_dir in (full_a, full_b):
        subprocess.run(
            _command(tiny_flags, tiny_data_dir, model_dir, steps),
            check=True,
            env=_env(),
            cwd=REPO,
            capture_output=True,
        )
    a, b = checkpoint_values(full_a, steps), checkpoint_values(full_b, steps)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    # Kill -9 once a checkpoint at a random step exists, then start again.
    kill_after = random.Random().choice([2, 4, 6, 8])
    proc = subprocess.Popen(
        _command(tiny_flags, tiny_data_dir, killed, steps),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(latest_step, proc, killed, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = latest_step(killed)
    assert kill_after <= resumed_from < steps or resumed_from == steps
    subprocess.run(
        _command(tiny_flags, tiny_data_dir, killed, steps),
        check=True,
        env=_env(),
        cwd=REPO,
        capture_output=True,
    )
    c = checkpoint_values(killed, steps)
    for name in a:
        np.testing.assert_array_equal(a[name], c[name], err_msg=f"{name} (killed after {kill_after})")


def test_sigterm_checkpoints_current_step_and_exits_cleanly(
    tiny_data_dir, tmp_path, tiny_flags, checkpoint_values, latest_step
):
    model_dir = str(tmp_path / "preempted")
    # checkpoint_every larger than the run: only the SIGTERM path can save mid-run.
    proc = subprocess.Popen(
        _command(tiny_flags, tiny_data_dir, model_dir, 400, "--checkpoint_every=1000", "--summary_every=1"),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    train_dir = os.path.join(model_dir, "train")
    while not (os.path.isdir(train_dir) and os.listdir(train_dir)):  # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Preempted" in out
    saved = latest_step(model_dir)
    assert 0 < saved < 400
    # It resumes from there.
    state = checkpoint_values(model_dir, saved)
    assert int(state["step/.ATTRIBUTES/VARIABLE_VALUE"]) == saved
