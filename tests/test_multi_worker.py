"""Multi-worker training: real worker processes on localhost with TF_CONFIG.

Two workers (MultiWorkerMirroredStrategy, one CPU replica each) must end
with identical weights, equal to one process on the same global batches;
a worker killed mid-run (at a seeded step, between checkpoints) and the job
restarted must resume every worker from the step before and end where an
uninterrupted run ends; SIGTERM to one
worker must checkpoint every worker at the same step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_faults import fault_env, kill_points

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "run_scripts", "multi_worker_local.sh")
STEPS = 8

# JARN-AT1 from the middle of the run: nested tapes, all three optimizers and
# the discriminator schedule all cross the workers. FGSM without a random
# start and JARN without noise (AT replaces it) draw no random numbers, and
# synchronised batch norm makes a 2 x 16 batch the same as one of 32, so one
# process can reproduce the two workers.
RUN_FLAGS = [
    "--jarn",
    "--jarn_start=0.5",
    "--disc_update_every=2",
    "--at_steps=1",
    "--learning_rate=0.05",
    "--sync_batchnorm",
    "--steps_per_loop=1",
    "--checkpoint_every=2",
    "--summary_every=2",
    "--eval_examples=0",
    "--deterministic",
]

# Trains through the library as the entry point does and saves this
# process's final weights (every variable of every network) to argv[1].
WORKER_SCRIPT = """
import sys
import numpy as np
from absl import flags
from jarn_tf import train as entry
entry.define_train_flags()
flags.FLAGS(["jarn_tf.train"] + sys.argv[2:])
from jarn_tf.core import distribute, loop as train_lib
config = entry.config_from_flags()
strategy = None
if config.runtime.strategy == "multi_worker":
    strategy = distribute.get_strategy("multi_worker")
result = train_lib.train(config, flags.FLAGS.model_dir, eval_examples=0, verbose=0, strategy=strategy)
weights = {f"{name}/{v.path}": v.numpy() for name, net in result.trainer.networks.items() for v in net.weights}
np.savez(sys.argv[1], chief=result.chief, step=result.step, **weights)
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list, index: int) -> str:
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def _load(path: str) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def two_worker_run(tiny_data_dir, tmp_path_factory, tiny_flags):
    """Two worker processes and one single process, same flags and batches."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    model_dir = str(tmp / "two_workers")
    args = tiny_flags + RUN_FLAGS + [f"--data_dir={tiny_data_dir}", f"--train_steps={STEPS}"]
    scratch = tmp / "tmpdir"
    scratch.mkdir()
    ports = _free_ports(2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(tmp / f"worker{i}.npz")]
            + args
            + ["--strategy=multi_worker", f"--model_dir={model_dir}"],
            env=_env(TF_CONFIG=_tf_config(ports, i), TMPDIR=str(scratch)),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    single = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(tmp / "single.npz")]
        + args
        + ["--strategy=default", f"--model_dir={tmp / 'single'}"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    return dict(
        model_dir=model_dir,
        scratch=str(scratch),
        workers=[_load(str(tmp / f"worker{i}.npz")) for i in range(2)],
        single=_load(str(tmp / "single.npz")),
    )


def test_two_workers_end_identical_and_equal_to_one_process(two_worker_run, checkpoint_values):
    w0, w1 = two_worker_run["workers"]
    single = two_worker_run["single"]
    assert bool(w0["chief"]) and not bool(w1["chief"])
    assert int(w0["step"]) == int(w1["step"]) == int(single["step"]) == STEPS
    names = [k for k in w0 if k not in ("chief", "step")]
    assert any(k.startswith("discriminator/") for k in names) and any(k.startswith("adaptor/") for k in names)
    assert set(names) == set(k for k in w1 if k not in ("chief", "step"))
    for name in names:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    scale = max(float(np.max(np.abs(single[k]))) for k in names)
    diff = max(float(np.max(np.abs(w0[k] - single[k]))) for k in names)
    assert diff < 1e-5 * max(1.0, scale), (diff, scale)
    # Every network trained across the workers between the first checkpoint
    # and the last, so the equality above is not one of untouched weights.
    early = checkpoint_values(two_worker_run["model_dir"], 4)  # JARN starts at step 4
    final = checkpoint_values(two_worker_run["model_dir"], STEPS)
    for net in ("classifier", "adaptor", "discriminator"):
        weights = [k for k in final if k.startswith(f"{net}_optimizer/_trainable_variables/")]
        assert weights and any(not np.array_equal(early[k], final[k]) for k in weights), net


def test_chief_alone_writes_the_run(two_worker_run):
    assert sorted(os.listdir(two_worker_run["model_dir"])) == [
        "checkpoints",
        "config.json",
        "eval",
        "export",
        "train",
    ]
    # The non-chief's scratch directory (checkpoints, export) is gone.
    assert not [d for d in os.listdir(two_worker_run["scratch"]) if d.startswith("jarn_tf-")]


def _launch(n: int, args: list, env: dict = None) -> subprocess.Popen:
    """Runs the launcher (with ``env``, default ``_env()``) on ``n`` workers."""
    return subprocess.Popen(
        ["bash", LAUNCHER, str(n)] + args,
        env=dict(env or _env(), MULTI_WORKER_GRACE="5", PYTHONUNBUFFERED="1"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class _Output:
    """Reads a launcher's output in the background while the test waits."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.lines: list = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def pid(self, worker: int) -> int:
        match = re.search(rf"\[launcher\] worker {worker}: pid (\d+)", self.text())
        return int(match.group(1)) if match else 0

    def join(self) -> str:
        self._thread.join(timeout=60)
        return self.text()


def _wait(condition, proc, output: _Output, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, output.text()[-3000:]
        assert time.time() < deadline, "timed out: " + output.text()[-3000:]
        time.sleep(0.2)


def test_killed_worker_then_restarted_job_resumes_all_from_one_step(
    two_worker_run, tiny_data_dir, tmp_path, tiny_flags, checkpoint_values, latest_step
):
    model_dir = str(tmp_path / "killed")
    args = (
        tiny_flags
        + RUN_FLAGS
        + [f"--data_dir={tiny_data_dir}", f"--model_dir={model_dir}", f"--train_steps={STEPS}"]
    )
    # Worker 1 sends itself SIGKILL right after step kill_at (odd, so between
    # checkpoints): the chief cannot finish the next step, the launcher stops it.
    (kill_at,) = kill_points([3, 5])
    proc = _launch(2, args, fault_env(tmp_path / "hook", f"step:{kill_at}:KILL:1"))
    output = _Output(proc)
    proc.wait(timeout=300)
    text = output.join()
    assert proc.returncode != 0, text[-3000:]
    assert f"[worker 1] [fault] SIGKILL after step {kill_at}" in text, text[-3000:]
    assert "[fault]" not in _lines_of(text, 0), text[-3000:]
    assert "worker 1 failed" in text and "Finished" not in text, text[-3000:]
    assert latest_step(model_dir) == kill_at - 1

    proc = _launch(2, args, fault_env(tmp_path / "hook"))
    output = _Output(proc)
    proc.wait(timeout=600)
    text = output.join()
    assert proc.returncode == 0, text[-3000:]
    for worker in (0, 1):
        lines = _lines_of(text, worker)
        assert f"[worker {worker}] Finished at step {STEPS} in" in lines, text[-3000:]
        assert f"(resumed from step {kill_at - 1})" in lines, text[-3000:]
    # Same final weights as the uninterrupted two-worker run.
    reference = checkpoint_values(two_worker_run["model_dir"], STEPS)
    resumed = checkpoint_values(model_dir, STEPS)
    assert reference.keys() == resumed.keys()
    for name in reference:
        np.testing.assert_array_equal(
            reference[name], resumed[name], err_msg=f"{name} (killed after {kill_at})"
        )


def _lines_of(text: str, worker: int) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if line.startswith(f"[worker {worker}]"))


def test_sigterm_to_one_worker_checkpoints_every_worker_at_one_step(
    tiny_data_dir, tmp_path, tiny_flags, checkpoint_values, latest_step
):
    model_dir = str(tmp_path / "preempted")
    args = (
        tiny_flags
        + RUN_FLAGS
        + [
            f"--data_dir={tiny_data_dir}",
            f"--model_dir={model_dir}",
            "--train_steps=400",
            "--checkpoint_every=1000",  # only the SIGTERM path can save mid-run
            "--summary_every=1",
        ]
    )
    proc = _launch(2, args)
    output = _Output(proc)
    train_dir = os.path.join(model_dir, "train")
    _wait(lambda: output.pid(1) and os.path.isdir(train_dir) and os.listdir(train_dir), proc, output)
    time.sleep(2.0)
    os.kill(output.pid(1), signal.SIGTERM)  # the non-chief only
    proc.wait(timeout=180)
    text = output.join()
    assert proc.returncode == 0, text[-3000:]
    steps = [
        int(m)
        for m in re.findall(r"\[worker \d\] Preempted \(SIGTERM\): checkpoint saved at step (\d+)", text)
    ]
    assert len(steps) == 2 and steps[0] == steps[1], text[-3000:]
    saved = latest_step(model_dir)
    assert saved == steps[0] and 0 < saved < 400
    assert int(checkpoint_values(model_dir, saved)["step/.ATTRIBUTES/VARIABLE_VALUE"]) == saved
    assert not os.path.exists(os.path.join(model_dir, "export"))


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "not valid JSON"),
        (
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
            "not in its cluster",
        ),
        ('{"cluster": {"ps": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}', "parameter servers"),
    ],
)
def test_bad_tf_config_fails_before_work(tf_config, message, tiny_data_dir, tmp_path, train_cli):
    env = _env() if tf_config is None else _env(TF_CONFIG=tf_config)
    _assert_fails_before_work(train_cli, "--strategy=multi_worker", env, message, tiny_data_dir, tmp_path)


def test_tpu_without_a_tpu_fails_clearly(tiny_data_dir, tmp_path, train_cli):
    _assert_fails_before_work(
        train_cli, "--strategy=tpu", _env(), "--strategy=tpu found no TPU", tiny_data_dir, tmp_path
    )


def _assert_fails_before_work(
    train_cli, strategy_flag: str, env: dict, message: str, data_dir: str, tmp_path
) -> None:
    proc = train_cli(
        f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'm'}", strategy_flag, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not os.path.exists(tmp_path / "m")


def test_launcher_rejects_bad_arguments():
    for args in ([], ["0"], ["two"], ["2", "--strategy=mirrored"]):
        proc = subprocess.run(["bash", LAUNCHER] + args, capture_output=True, text=True, cwd=REPO, env=_env())
        assert proc.returncode == 2, (args, proc.stderr)


def test_read_tf_config_accepts_clusters_and_names_the_problem():
    from jarn_tf.core import distribute

    chief_cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    for task in ({"type": "chief", "index": 0}, {"type": "worker", "index": 1}):
        config = distribute.read_tf_config(
            {"TF_CONFIG": json.dumps({"cluster": chief_cluster, "task": task})}
        )
        assert config["task"] == task
    bad = {
        json.dumps(
            {"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}
        ): "at most one",
        json.dumps({"cluster": {"worker": ["a:1"]}}): 'no "task"',
        json.dumps({"task": {"type": "worker", "index": 0}}): 'no "cluster"',
        json.dumps(
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}
        ): "not in its cluster",
    }
    for raw, message in bad.items():
        with pytest.raises(ValueError, match=message):
            distribute.read_tf_config({"TF_CONFIG": raw})


def test_single_process_strategies_are_their_own_chief():
    import tensorflow as tf

    from jarn_tf.core import distribute

    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy) and distribute.num_workers(strategy) == 1
    assert distribute.task(strategy) == ("worker", 0)
    flag = distribute.AnyWorker(strategy)
    assert flag(True) is True and flag(False) is False
