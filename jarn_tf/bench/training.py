r"""Benchmark: time per step and peak memory of each training mode.

  python -m jarn_tf.bench --dataset=fashion_mnist --batch_size=64 --steps=50

For the same model, batch and machine, in one run, prints the time per step
and peak memory of standard training, FGSM-AT1, PGD-AT7, JARN (during its
JARN phase, discriminator updates included at their real frequency),
JARN-AT1 and double backprop, their ratios to standard training and to
PGD-AT7, the time of a whole run with JARN in its last 25% relative to
standard training, and PASS/FAIL against the targets:

  * a JARN step takes at most 2.5x a standard step;
  * a PGD-AT7 step takes at least 2.5x a JARN step (the paper's Table 4 has
    3.2x per epoch);
  * a run with JARN in the last 25% takes at most 1.4x standard training.

Each mode gets a fresh trainer (default strategy), is warmed up (compiled),
then runs ``--steps`` steps in the same compiled chunks as ``jarn_tf.core.loop``'s
loop. The inputs are random images of the dataset's shape held in memory
(``--real_data`` reads the dataset instead), so no dataset is needed.

By default each mode runs in its own process (``--isolate``), so its peak
memory is its own: on a GPU the TF allocator's peak on GPU:0, on a CPU the
growth of the process's peak resident set size (``ru_maxrss``) over its size
before the trainer was built.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from absl import app, flags

FLAGS = flags.FLAGS

MODES = ("standard", "fgsm_at1", "pgd_at7", "jarn", "jarn_at1", "double_backprop")
MODE_NAMES = {
    "standard": "standard",
    "fgsm_at1": "FGSM-AT1",
    "pgd_at7": "PGD-AT7",
    "jarn": "JARN",
    "jarn_at1": "JARN-AT1",
    "double_backprop": "double backprop",
}
# The targets.
JARN_VS_STANDARD_MAX = 2.5
PGD_VS_JARN_MIN = 2.5
WHOLE_RUN_MAX = 1.4
JARN_FRACTION = 0.25
_JARN_PHASE_LR = 0.1 * 0.1**2

# Flags of the benchmark itself; every other flag is a training flag
# (jarn_tf.config's sections) and is passed on to the per-mode processes.
_BENCH_FLAGS = ("steps", "warmup", "real_data", "modes", "isolate", "output_json", "quiet")
_NOT_FORWARDED = ("modes", "isolate", "output_json", "quiet")


def define_bench_flags() -> None:
    """The training flags of ``jarn_tf.train`` (same definitions) and the benchmark's own."""
    from jarn_tf.core import flag_utils

    flag_utils.define_config_flags()
    # The benchmark's defaults: a small dataset shape and a visible penalty.
    FLAGS.set_default("dataset", "fashion_mnist")
    FLAGS.set_default("double_backprop", 0.01)
    flags.DEFINE_bool("real_data", False, "Feed the real training set instead of random in-memory images.")
    flags.DEFINE_integer(
        "steps",
        50,
        "Timed steps per mode; rounded up to a multiple of --disc_update_every.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "warmup",
        10,
        "Untimed steps per mode first (compilation); rounded up to a multiple of --disc_update_every.",
        lower_bound=1,
    )
    flags.DEFINE_list("modes", list(MODES), f"Modes to run, of {', '.join(MODES)}.")
    flags.DEFINE_bool("isolate", True, "Run each mode in its own process (clean peak memory).")
    flags.DEFINE_string("output_json", None, "Also write the figures to this JSON file.")
    flags.DEFINE_bool("quiet", False, "Print nothing (with --output_json).")
    # --help lists the training flags too, not only those defined here.
    flags.adopt_module_key_flags(flag_utils)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def base_config():
    """The training configuration of the flags (paper defaults filled in), no data download."""
    import dataclasses

    from jarn_tf.core import flag_utils

    config = flag_utils.config_from_flags(FLAGS)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, download=False))


def _settings(config) -> dict:
    """The figures' settings: what the report and the JSON say was run."""
    m, c = config.model, config.mode_config
    k = c.disc_update_every
    return dict(
        dataset=config.data.dataset,
        model=m.model,
        cnn_channels=tuple(m.cnn_channels),
        wrn_depth=m.wrn_depth,
        wrn_width=m.wrn_width,
        disc_layers=m.disc_layers,
        disc_base_channels=m.disc_base_channels,
        disc_update_every=k,
        lambda_adv=c.lambda_adv,
        eps=c.eps,
        batch_size=config.optimizer.batch_size,
        steps=_round_up(FLAGS.steps, k),
        warmup=_round_up(FLAGS.warmup, k),
        steps_per_loop=config.runtime.steps_per_loop,
        double_backprop=c.double_backprop,
        seed=config.seed,
        real_data=FLAGS.real_data,
        jit_compile=config.runtime.jit_compile,
        mixed_precision=m.mixed_precision,
    )


def mode_config(mode: str, base):
    """The configuration of benchmark ``mode``: ``base`` with that mode's regularisers.

    Args:
      mode: one of ``MODES``.
      base: the configuration of the flags (``base_config``).

    Returns:
      ``base`` at a constant learning rate, with the mode's settings.
    """
    import dataclasses

    c = base.mode_config
    optimizer = dataclasses.replace(
        base.optimizer,
        train_steps=10**9,  # constant learning rate over the benchmark
        # Every mode at the learning rate of JARN's phase (after both decays):
        # from a fresh init at 0.1, JARN on random data can diverge in tens of steps.
        learning_rate=_JARN_PHASE_LR,
    )
    off = dict(jarn=False, at_steps=0, uniform_noise=False, double_backprop=0.0)
    fgsm = dict(at_steps=1, step_size=c.eps, at_random_start=False)  # as jarn_tf.train for --at_steps=1
    changes = {
        "standard": {},
        "fgsm_at1": fgsm,
        "pgd_at7": dict(at_steps=7, step_size=c.eps / 4, at_random_start=True),
        "jarn": dict(jarn=True, jarn_start=0.0),  # the JARN phase
        "jarn_at1": dict(jarn=True, jarn_start=0.0, **fgsm),
        "double_backprop": dict(double_backprop=c.double_backprop),
    }[mode]
    return dataclasses.replace(
        base, optimizer=optimizer, mode_config=dataclasses.replace(c, **{**off, **changes})
    )


def _random_dataset(info, batch_size: int, seed: int):
    """An endless dataset of random uint8 images (as floats in [0, 1]) and labels."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = 8 * batch_size
    images = rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, n).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _current_rss() -> int:
    """Resident set size of this process in bytes (0 if unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _max_rss() -> int:
    """Peak resident set size of this process in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else 1024 * r


def _gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({os.cpu_count()} cores)"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
    except Exception:  # pylint: disable=broad-except
        name = ""
    return f"GPU:0 ({name})" if name else "GPU:0"


def memory_measure(isolated: bool) -> str:
    if _gpu():
        return "peak GPU memory in use (tf.config.experimental.get_memory_info('GPU:0')['peak'])"
    measure = "CPU: growth of the process's peak RSS (ru_maxrss) over its RSS before the trainer was built"
    if not isolated:
        measure += " (--noisolate: ru_maxrss never falls, so later modes can read too low)"
    return measure


def run_mode(mode: str, base, s: dict) -> dict:
    """Builds a fresh trainer for ``mode``, warms it up and times ``s['steps']`` steps.

    Args:
      mode: one of ``MODES``.
      base: the configuration of the flags (``base_config``).
      s: the settings (``_settings``): steps, warm-up, data.

    Returns:
      The mode's figures.
    """
    import keras
    import tensorflow as tf

    from jarn_tf.core import data, loop as train_lib, trainer as trainer_lib

    config = mode_config(mode, base)
    train_lib.validate_config(config)
    info = data.dataset_info(config.data.dataset)
    gc.collect()
    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()
    batch_size = config.optimizer.batch_size
    if s["real_data"]:
        dataset = data.make_train_dataset(config.data, batch_size, config.seed)
    else:
        dataset = _random_dataset(info, batch_size, config.seed)
    iterator = iter(dataset)
    next(iterator)  # start the pipeline before measuring memory

    gpu = _gpu()
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    rss_before = _current_rss()
    with train_lib.mixed_precision_scope(config.model.mixed_precision):
        trainer = trainer_lib.build_trainer(config, info, strategy)
    spl = config.runtime.steps_per_loop
    runner = train_lib.StepRunner(trainer, strategy, spl, config.runtime.jit_compile)

    def run_steps(start: int, end: int) -> List[tuple]:
        """Runs [start, end) as train_lib does, syncing every steps_per_loop steps."""
        done = len(runner.variants_run)
        step = start
        while step < end:
            step = runner.run(iterator, train_lib.next_stop(step, end, [spl]))
        return runner.variants_run[done:]

    warm_keys = set(run_steps(0, s["warmup"]))
    tic = time.perf_counter()
    timed_keys = run_steps(s["warmup"], s["warmup"] + s["steps"])
    seconds = time.perf_counter() - tic
    if gpu:
        peak = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    else:
        peak = max(0, _max_rss() - rss_before)
    timed = range(s["warmup"], s["warmup"] + s["steps"])
    disc_updates = sum(bool(getattr(trainer.variant(i), "update_discriminator", False)) for i in timed)
    bad = runner.nonfinite()
    result = dict(
        mode=mode,
        steps=s["steps"],
        seconds=seconds,
        ms_per_step=1000.0 * seconds / s["steps"],
        images_per_second=batch_size * s["steps"] / seconds,
        peak_memory_bytes=peak,
        variants=sorted({str(k) for k in timed_keys}),
        compiled_during_timing=bool(set(timed_keys) - warm_keys),
        discriminator_updates=disc_updates,
        nonfinite_step=-1 if bad is None else bad[0],
    )
    del trainer, runner, iterator, dataset
    gc.collect()
    return result


def _forwarded_flags() -> List[str]:
    """The flags a per-mode process of --isolate gets: the training flags and --steps etc."""
    from jarn_tf.core import flag_utils

    names = flag_utils.config_flag_names() + [n for n in _BENCH_FLAGS if n not in _NOT_FORWARDED]
    return [n for n in names if n in FLAGS]


def _run_isolated(mode: str) -> dict:
    """Runs one mode in a fresh ``python -m jarn_tf.bench`` process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "figures.json")
        args = [
            FLAGS[name].serialize()
            for name in _forwarded_flags()
            if FLAGS[name].present and FLAGS[name].value is not None
        ]
        cmd = [sys.executable, "-m", "jarn_tf.bench.training", *args]
        cmd += [f"--modes={mode}", "--noisolate", "--quiet", f"--output_json={path}"]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(path) as f:
            figures = json.load(f)
    result = figures["modes"][mode]
    result["memory_measure"] = figures["memory_measure"]
    result["device"] = figures["device"]
    return result


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b:
        return None
    return a / b


def summarize(results: Dict[str, dict]) -> dict:
    """Adds the ratio columns and evaluates the three targets."""
    ms = {m: r["ms_per_step"] for m, r in results.items()}
    for m, r in results.items():
        r["x_standard"] = _ratio(ms[m], ms.get("standard"))
        r["x_pgd_at7"] = _ratio(ms[m], ms.get("pgd_at7"))
    jarn_vs_std = _ratio(ms.get("jarn"), ms.get("standard"))
    pgd_vs_jarn = _ratio(ms.get("pgd_at7"), ms.get("jarn"))
    whole = None
    if jarn_vs_std is not None:
        whole = (1 - JARN_FRACTION) + JARN_FRACTION * jarn_vs_std

    def target(name, value, bound, upper):
        ok = None if value is None else (value <= bound if upper else value >= bound)
        return dict(name=name, value=value, bound=bound, upper_bound=upper, passed=ok)

    return dict(
        whole_run_ratio=whole,
        targets=[
            target("JARN step / standard step", jarn_vs_std, JARN_VS_STANDARD_MAX, True),
            target("PGD-AT7 step / JARN step", pgd_vs_jarn, PGD_VS_JARN_MIN, False),
            target(
                f"run with JARN in the last {100 * JARN_FRACTION:.0f}% / standard run",
                whole,
                WHOLE_RUN_MAX,
                True,
            ),
        ],
    )


def _fmt_ratio(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def format_report(s: dict, results: Dict[str, dict], summary: dict, measure: str, device: str) -> str:
    lines = [
        f"Training step benchmark: {s['dataset']} shape, {s['model']} "
        + (
            f"{'-'.join(map(str, s['cnn_channels']))}"
            if s["model"] == "mnist_cnn"
            else f"WRN-{s['wrn_depth']}-{s['wrn_width']}"
        )
        + f", batch {s['batch_size']}, {'real' if s['real_data'] else 'random'} data, "
        f"discriminator {s['disc_layers']} layers / {s['disc_base_channels']} channels "
        f"updated every {s['disc_update_every']} steps, eps {s['eps']:g}, on {device}.",
        f"{s['steps']} timed steps per mode after {s['warmup']} warm-up steps, "
        f"{s['steps_per_loop']} steps per compiled loop, learning rate {_JARN_PHASE_LR:g}, "
        f"jit_compile {s.get('jit_compile', False)}, mixed precision {s.get('mixed_precision', 'none')}.",
        f"Peak memory: {measure}.",
        "",
        "| mode | ms/step | images/s | peak memory | x standard | x PGD-AT7 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in results.items():
        lines.append(
            f"| {MODE_NAMES[m]} | {r['ms_per_step']:.2f} | {r['images_per_second']:.1f} "
            f"| {r['peak_memory_bytes'] / 2**20:.1f} MiB | {_fmt_ratio(r['x_standard'])} "
            f"| {_fmt_ratio(r['x_pgd_at7'])} |"
        )
    lines.append("")
    whole = summary["whole_run_ratio"]
    lines.append(
        f"Whole run with JARN in the last {100 * JARN_FRACTION:.0f}% "
        f"((1 - {JARN_FRACTION:g}) * standard + {JARN_FRACTION:g} * JARN) / standard: {_fmt_ratio(whole)}"
    )
    for t in summary["targets"]:
        verdict = "n/a (mode not run)" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
        op = "<=" if t["upper_bound"] else ">="
        lines.append(f"{verdict}: {t['name']} = {_fmt_ratio(t['value'])} (target {op} {t['bound']:g}x)")
    warnings = [m for m, r in results.items() if r.get("compiled_during_timing")]
    if warnings:
        lines.append(f"warning: {', '.join(warnings)} compiled a loop during the timed steps.")
    bad = [m for m, r in results.items() if r.get("nonfinite_step", -1) >= 0]
    if bad:
        lines.append(f"warning: non-finite loss in {', '.join(bad)} (timings may be unrepresentative).")
    return "\n".join(lines)


def main(argv) -> int:
    del argv
    modes = [m.strip() for m in FLAGS.modes if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        print(
            f"error: --modes must be a comma list of {', '.join(MODES)}; got {FLAGS.modes}", file=sys.stderr
        )
        return 2
    try:
        base = base_config()
        for m in modes:
            from jarn_tf.core import loop as train_lib

            train_lib.validate_config(mode_config(m, base))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = _settings(base)
    if FLAGS.steps != s["steps"] and not FLAGS.quiet:
        print(f"note: --steps={FLAGS.steps} rounded up to {s['steps']} (a multiple of --disc_update_every)")

    tic = time.perf_counter()
    results: Dict[str, dict] = {}
    if FLAGS.isolate:
        for m in modes:
            results[m] = _run_isolated(m)
        measure = results[modes[0]].pop("memory_measure")
        device = results[modes[0]].pop("device")
        for r in results.values():
            r.pop("memory_measure", None)
            r.pop("device", None)
    else:
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one trainer per mode: retracing is expected
        for m in modes:
            results[m] = run_mode(m, base, s)
        measure = memory_measure(isolated=len(modes) == 1)
        device = _device()
    summary = summarize(results)
    if not FLAGS.quiet:
        print(format_report(s, results, summary, measure, device))
        print(f"Benchmark wall time: {time.perf_counter() - tic:.1f} s")
    if FLAGS.output_json:
        payload = dict(settings=s, device=device, memory_measure=measure, modes=results, **summary)
        with open(FLAGS.output_json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
            f.write("\n")
    for t in summary["targets"]:
        if t["value"] is not None and not math.isfinite(t["value"]):
            return 1
    return 0


def run() -> None:
    define_bench_flags()
    app.run(main)


if __name__ == "__main__":
    run()
