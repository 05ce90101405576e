"""Determinism, preemption (SIGTERM) and killed runs (SIGKILL) resumed.

Every run here draws random numbers on each of its seeded paths: PGD random
starts (--at_steps=3), uniform input noise (--uniform_noise) and pad-crop-flip
augmentation (--augment), with JARN (all three networks and optimizers). Two runs must
be bit-identical, and a run interrupted (SIGTERM, SIGKILL between checkpoints,
SIGKILL inside a checkpoint write) and started again must say it resumed from
the step it saved and end bit-identical to an uninterrupted run.

The signals are real, sent by the process to itself at a chosen point of
training (``fault_env``: a sitecustomize module on PYTHONPATH), so the kill
point is deterministic: a kill that lands after the last step, or a run that
ignores its checkpoint and trains again from step 0, fails the tests.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from concurrent import futures

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
# The seed of the kill points: fixed, so a failure reproduces.
KILL_SEED = 13

RUN_FLAGS = (
    # JARN from step 0 with a discriminator update on every step: nested tapes
    # and all three optimizers, in one step variant (each variant costs a trace).
    "--jarn",
    "--jarn_start=0",
    "--disc_update_every=1",
    "--at_steps=3",  # PGD with a random start (the default for --at_steps > 1)
    "--uniform_noise",
    "--augment",
    "--steps_per_loop=1",
    "--checkpoint_every=2",
    "--summary_every=2",
    "--image_summary_every=0",
    "--eval_examples=0",
    "--deterministic",
    "--verbosity=0",  # INFO: train_lib logs "Restored <checkpoint> at step N."
)

# Installed as sitecustomize.py: it patches jarn_tf.core.loop as it is
# imported, so that the process sends itself a signal at one point of training.
FAULT_HOOK = '''
"""Test hook of tests/test_faults.py (never installed outside the tests).

JARN_TEST_FAULT="<point>:<n>:<KILL|TERM>[:<worker>]", point one of
  step        after the training chunk that ends at step n;
  write       inside the write of checkpoint ckpt-n: its shards are written
              (to ckpt-n_temp/), not yet merged into ckpt-n.index/.data;
  unrecorded  ckpt-n is written whole, the state file does not name it yet.
With <worker>, only the process whose TF_CONFIG task index is <worker> fires.
"""
import importlib.util
import json
import os
import signal
import sys


def _fire(signame, what):
    print(f"[fault] SIG{signame} {what}", flush=True)
    os.kill(os.getpid(), getattr(signal, "SIG" + signame))


def _patch(train_lib, point, n, signame):
    if point == "step":
        run = train_lib.StepRunner.run

        def patched_run(self, iterator, end):
            step = run(self, iterator, end)
            if step == n:
                _fire(signame, f"after step {n}")
            return step

        train_lib.StepRunner.run = patched_run
    elif point == "write":
        from tensorflow.python.checkpoint import functional_saver

        gen_io_ops = functional_saver.gen_io_ops
        merge = gen_io_ops.merge_v2_checkpoints

        def patched_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
            prefix = destination_prefix.numpy() if hasattr(destination_prefix, "numpy") else destination_prefix
            prefix = prefix.decode() if isinstance(prefix, bytes) else str(prefix)
            if prefix.endswith(f"ckpt-{n}"):
                _fire(signame, f"inside the write of ckpt-{n}")
            return merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)

        gen_io_ops.merge_v2_checkpoints = patched_merge
    elif point == "unrecorded":
        from tensorflow.python.checkpoint import checkpoint_management

        update = checkpoint_management.update_checkpoint_state_internal

        def patched_update(save_dir, model_checkpoint_path, *args, **kwargs):
            if str(model_checkpoint_path).endswith(f"ckpt-{n}"):
                _fire(signame, f"after ckpt-{n} was written, before the state file names it")
            return update(save_dir, model_checkpoint_path, *args, **kwargs)

        checkpoint_management.update_checkpoint_state_internal = patched_update
    else:
        raise ValueError(f"JARN_TEST_FAULT: unknown point {point!r}")


class _PatchOnImport:
    def __init__(self, *fault):
        self.fault = fault

    def find_spec(self, name, path=None, target=None):
        if name != "jarn_tf.core.loop":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module, *self.fault)

        spec.loader.exec_module = exec_and_patch
        return spec


def _install():
    fault = os.environ.get("JARN_TEST_FAULT")
    if not fault:
        return
    point, n, signame, *worker = fault.split(":")
    if worker:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
        if task.get("index") != int(worker[0]):
            return
    sys.meta_path.insert(0, _PatchOnImport(point, int(n), signame))


_install()
'''


def kill_points(*choices: list) -> list:
    """One seeded draw from each list of candidate steps."""
    rng = random.Random(KILL_SEED)
    return [rng.choice(c) for c in choices]


def fault_env(hook_dir, fault: str = "", **extra) -> dict:
    """The environment of a run whose process sends itself the signal of ``fault`` (see FAULT_HOOK)."""
    os.makedirs(hook_dir, exist_ok=True)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
        f.write(FAULT_HOOK)
    env = dict(os.environ, PYTHONPATH=f"{hook_dir}{os.pathsep}{REPO}", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.pop("JARN_TEST_FAULT", None)
    if fault:
        env["JARN_TEST_FAULT"] = fault
    env.update(extra)
    return env


def resumed_from(stdout: str, steps: int) -> int:
    """The step a finished run says it resumed from; fails when it did not resume."""
    match = re.search(rf"Finished at step {steps} in \d+ s \(resumed from step (\d+)\)", stdout)
    assert match, stdout[-3000:]
    return int(match.group(1))


def restored_step(stderr: str) -> int:
    """The step train_lib logged it restored (``Restored <path> at step N.``), 0 when none."""
    found = re.findall(r"Restored \S+ckpt-(\d+) at step (\d+)\.", stderr)
    assert len(found) <= 1, found
    if not found:
        return 0
    number, step = (int(x) for x in found[0])
    assert number == step, found
    return step


def _train(tiny_flags: list, data_dir: str, model_dir: str, env: dict, *extra: str):
    return subprocess.run(
        [sys.executable, "-m", "jarn_tf.train"]
        + list(tiny_flags)
        + list(RUN_FLAGS)
        + [f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--train_steps={STEPS}", *extra],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _killed(proc: subprocess.CompletedProcess, what: str) -> None:
    """The run was killed by SIGKILL at the hook (not finished, not failed)."""
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert f"[fault] SIGKILL {what}" in proc.stdout, proc.stdout[-2000:]
    assert "Finished" not in proc.stdout


def _assert_same(reference: dict, values: dict, what: str) -> None:
    """Every variable of two checkpoints is bit-identical, but the count of saves."""
    assert reference.keys() == values.keys()
    assert len(reference) > 30 and any(name.startswith("discriminator") for name in reference)
    for name in reference:
        if name.startswith("save_counter/"):  # counts checkpoint writes, not training
            continue
        np.testing.assert_array_equal(reference[name], values[name], err_msg=f"{name} ({what})")


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory, tiny_flags, checkpoint_values):
    """Two uninterrupted runs (at once: each spends most of its time starting); their final checkpoints."""
    tmp = tmp_path_factory.mktemp("faults")
    env = fault_env(tmp / "hook")
    dirs = [str(tmp / name) for name in ("a", "b")]
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda d: _train(tiny_flags, tiny_data_dir, d, env), dirs))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"Finished at step {STEPS} in" in proc.stdout and "resumed" not in proc.stdout, proc.stdout
    with open(os.path.join(dirs[0], "config.json")) as f:
        config = json.load(f)
    return dict(dirs=dirs, config=config, values=[checkpoint_values(d, STEPS) for d in dirs], tmp=tmp)


def test_deterministic_runs_with_every_random_path_are_bit_identical(uninterrupted):
    # The run draws random numbers on each seeded path (its resolved config says so).
    text = json.dumps(uninterrupted["config"])
    for field, value in (
        ("at_steps", 3),
        ("at_random_start", True),
        ("uniform_noise", True),
        ("augment", True),
    ):
        assert re.search(rf'"{field}": {json.dumps(value)}\b', text), (field, text)
    assert re.search(r'"noise_eps": 0\.0*[1-9]', text), text
    a, b = uninterrupted["values"]
    _assert_same(a, b, "two identical runs")


def test_sigkill_between_and_inside_checkpoint_writes_resumes_to_the_same_weights(
    uninterrupted, tiny_data_dir, tiny_flags, checkpoint_values, latest_step
):
    """A kill between checkpoints, one inside a checkpoint write and one before the state file
    names the new checkpoint: each restart resumes from the newest whole checkpoint, and the
    run ends where an uninterrupted run ends (the README: a kill during a checkpoint write loses
    nothing that was checkpointed)."""
    tmp = uninterrupted["tmp"]
    model_dir = str(tmp / "killed")
    checkpoints = os.path.join(model_dir, "checkpoints")
    kill_at, write_at = kill_points([3, 5], [8])
    unrecorded_at = 10
    hook = tmp / "hook"

    # 1. SIGKILL after step kill_at (odd): the steps since ckpt-(kill_at - 1) are lost.
    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(hook, f"step:{kill_at}:KILL"))
    _killed(proc, f"after step {kill_at}")
    assert restored_step(proc.stderr) == 0
    assert latest_step(model_dir) == kill_at - 1

    # 2. Resumes from there; SIGKILL inside the write of ckpt-write_at: its shards
    # lie in ckpt-<n>_temp/, no ckpt-<n>.index exists.
    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(hook, f"write:{write_at}:KILL"))
    _killed(proc, f"inside the write of ckpt-{write_at}")
    assert restored_step(proc.stderr) == kill_at - 1
    assert os.path.isdir(os.path.join(checkpoints, f"ckpt-{write_at}_temp")), os.listdir(checkpoints)
    assert not os.path.exists(os.path.join(checkpoints, f"ckpt-{write_at}.index"))
    assert latest_step(model_dir) == write_at - 2

    # 3. Resumes from ckpt-(write_at - 2); SIGKILL after ckpt-unrecorded_at is written
    # whole but before the state file names it (TensorFlow alone would resume from
    # the checkpoint before).
    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(hook, f"unrecorded:{unrecorded_at}:KILL"))
    _killed(proc, f"after ckpt-{unrecorded_at} was written")
    assert restored_step(proc.stderr) == write_at - 2
    assert os.path.exists(os.path.join(checkpoints, f"ckpt-{unrecorded_at}.index"))
    assert latest_step(model_dir) == unrecorded_at - 2

    # 4. Resumes from ckpt-unrecorded_at and finishes where the uninterrupted run did.
    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(hook))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert restored_step(proc.stderr) == resumed_from(proc.stdout, STEPS) == unrecorded_at
    assert "Skipped checkpoint" not in proc.stderr, proc.stderr[-3000:]
    _assert_same(
        uninterrupted["values"][0],
        checkpoint_values(model_dir, STEPS),
        f"killed after step {kill_at}, inside ckpt-{write_at}, before recording ckpt-{unrecorded_at}",
    )


def test_sigterm_checkpoints_the_step_it_stopped_at_and_the_resumed_run_matches(
    uninterrupted, tiny_data_dir, tiny_flags, checkpoint_values, latest_step
):
    tmp = uninterrupted["tmp"]
    model_dir = str(tmp / "preempted")
    (stop_at,) = kill_points([5, 7])  # odd: only the SIGTERM path saves there
    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(tmp / "hook", f"step:{stop_at}:TERM"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[fault] SIGTERM after step {stop_at}" in proc.stdout, proc.stdout[-2000:]
    assert f"Preempted (SIGTERM): checkpoint saved at step {stop_at}." in proc.stdout, proc.stdout[-2000:]
    assert "Finished" not in proc.stdout
    assert latest_step(model_dir) == stop_at
    assert int(checkpoint_values(model_dir, stop_at)["step/.ATTRIBUTES/VARIABLE_VALUE"]) == stop_at
    assert not os.path.exists(os.path.join(model_dir, "export"))

    proc = _train(tiny_flags, tiny_data_dir, model_dir, fault_env(tmp / "hook"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert restored_step(proc.stderr) == resumed_from(proc.stdout, STEPS) == stop_at
    _assert_same(
        uninterrupted["values"][0], checkpoint_values(model_dir, STEPS), f"SIGTERM at step {stop_at}"
    )


def test_mirrored_run_killed_part_way_resumes_to_the_uninterrupted_weights(
    tiny_data_dir, tmp_path, tiny_flags, checkpoint_values, latest_step
):
    """Two replicas (logical CPU devices): per-replica seeds, the cross-replica
    sums and a MirroredVariable step all go through the kill and the restore."""
    mirrored = ("--cpu_devices=2", "--strategy=mirrored")
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    (kill_at,) = kill_points([5, 7])
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [
            pool.submit(_train, tiny_flags, tiny_data_dir, full, fault_env(tmp_path / "hook"), *mirrored),
            pool.submit(
                _train,
                tiny_flags,
                tiny_data_dir,
                killed,
                fault_env(tmp_path / "hook", f"step:{kill_at}:KILL"),
                *mirrored,
            ),
        ]
        uninterrupted, first = (job.result() for job in jobs)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    _killed(first, f"after step {kill_at}")
    assert latest_step(killed) == kill_at - 1

    proc = _train(tiny_flags, tiny_data_dir, killed, fault_env(tmp_path / "hook"), *mirrored)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert restored_step(proc.stderr) == resumed_from(proc.stdout, STEPS) == kill_at - 1
    for run in (uninterrupted, first, proc):  # two replicas, one per logical CPU device
        assert re.search(
            r"Using MirroredStrategy with devices \(\S+CPU:0', \S+CPU:1'\)", run.stderr
        ), run.stderr[-3000:]
    _assert_same(
        checkpoint_values(full, STEPS),
        checkpoint_values(killed, STEPS),
        f"mirrored, killed after step {kill_at}",
    )
