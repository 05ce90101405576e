"""The commands start quietly: TensorFlow's C++ start-up lines are filtered, the rest is kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jarn_tf.core import startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STDERR = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795442194.918664   25981 port.cc:153] oneDNN custom operations are on. You may see ...
I0000 00:00:1795442194.919034   25981 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
I0000 00:00:1795442194.981681   25981 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow ...
W0000 00:00:1795442195.000000   25981 some_file.cc:12] A warning that matters.
E0000 00:00:1795442196.058818   25981 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
To enable the following instructions: this line follows no noise and stays.
Traceback (most recent call last):
"""


def _lines(text: str) -> set:
    """The lines of ``text``, log lines without their time and thread (which differ between runs)."""
    return {re.sub(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ", r"\1 ", line) for line in text.splitlines()}


def test_filter_drops_only_the_start_up_lines():
    kept = startup.filter_startup_lines(STDERR, gpu=False).splitlines()
    assert kept == [
        "W0000 00:00:1795442195.000000   25981 some_file.cc:12] A warning that matters.",
        "To enable the following instructions: this line follows no noise and stays.",
        "Traceback (most recent call last):",
    ]
    # Where there is a GPU, the CUDA lines say why it is not used: they stay.
    with_gpu = startup.filter_startup_lines(STDERR, gpu=True)
    assert "cudart_stub.cc" in with_gpu and "failed call to cuInit" in with_gpu
    assert "port.cc" not in with_gpu


def test_commands_start_quietly_unless_asked_for_everything(tmp_path):
    # A command that imports TensorFlow and stops: evaluate with a model that does not exist.
    cmd = [sys.executable, "-m", "jarn_tf.evaluate", f"--model={tmp_path / 'none'}", "--dataset=mnist"]
    procs = {
        level: subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL=level),
            cwd=REPO,
        )
        for level in ("2", "0")  # 2: as the scripts set it (the evaluate tests run it unset)
    }
    stderr = {level: proc.communicate(timeout=300)[1] for level, proc in procs.items()}
    for level, proc in procs.items():
        assert proc.returncode != 0 and "none" in stderr[level], (level, stderr[level][-2000:])
    # TF_CPP_MIN_LOG_LEVEL=0 gets everything TensorFlow writes; the filter would take some of it.
    noise = _lines(stderr["0"]) - _lines(startup.filter_startup_lines(stderr["0"], startup.gpu_expected()))
    if not noise:
        pytest.skip("TensorFlow writes no start-up lines that the filter knows on this machine")
    assert not noise & _lines(stderr["2"]), stderr["2"]
    assert "absl::InitializeLog" not in stderr["2"] and "port.cc" not in stderr["2"]


def test_prefer_onednn_defaults_on_and_respects_the_user():
    env = {}
    assert startup.prefer_onednn(env) and env == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert not startup.prefer_onednn(env) and env == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_attack_commands_run_with_onednn_unless_turned_off(tmp_path):
    """TensorFlow says "oneDNN custom operations are on" at start-up when they are (any CPU)."""
    cmd = [sys.executable, "-m", "jarn_tf.evaluate", f"--model={tmp_path / 'none'}", "--dataset=mnist"]
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    procs = {
        setting: subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(base, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0", **extra),
            cwd=REPO,
        )
        for setting, extra in (("unset", {}), ("off", {"TF_ENABLE_ONEDNN_OPTS": "0"}))
    }
    stderr = {setting: proc.communicate(timeout=300)[1] for setting, proc in procs.items()}
    assert "oneDNN custom operations are on" in stderr["unset"], stderr["unset"][-2000:]
    assert "oneDNN custom operations are on" not in stderr["off"], stderr["off"][-2000:]
