r"""Benchmarks: our PGD against CleverHans's, and our AutoAttack against the official one.

  python -m jarn_tf.bench_attacks --dataset=fashion_mnist --batch_size=256 --steps=20
  python -m jarn_tf.bench_attacks --compare_official --model_path=runs/pgd_at7 \
      --num_examples=500 --eps=0.1

Prints images/second of ``jarn_tf.robustness.attacks.pgd`` (compiled with tf.function,
as the evaluation runs it) and of CleverHans 4's
``cleverhans.tf2.attacks.projected_gradient_descent`` (as its users call it,
eagerly, and wrapped in tf.function), the largest difference between their
adversarial examples (both without random start, so they must agree), and
optionally AutoAttack's time per 1,000 examples.

CleverHans is a benchmark-only dependency; its own requirements are stale, so
install it without them: ``pip install --no-deps cleverhans==4.0.0``.

``--compare_official`` instead runs standard AutoAttack twice on the same
exported model, the first ``--num_examples`` test images and ``--eps``: the
official implementation (``pyautoattack``, PyTorch, on the ``.keras`` export
under Keras' torch backend, in its own process: ``jarn_tf.robustness.official_autoattack``)
and ours (``jarn_tf.robustness.autoattack.run_autoattack``, in this process), one after
the other. It prints each attack's time and the robust accuracy after it, the
images/s of both and their ratio, and whether the two find the same robust
examples; ``--output`` keeps the figures as JSON. The official side needs the
optional benchmark dependencies ``pip install torch==2.13.0 pyautoattack==0.2.0``.

``--profile_passes`` shows where one pass of the model goes and how close it runs to the
hardware: for each 2-D convolution of the Keras model (``--model_path`` or a random-init
model), the forward convolution and its input gradient (``Conv2DBackpropInput``, what every
attack step computes), in float32 and bfloat16, in ms per call and GFLOP/s; then the whole
model's forward pass and forward pass with the input gradient, compiled with tf.function and
with XLA. ``--pass_batch_size`` images per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional

import numpy as np
from absl import app, flags

from jarn_tf import config

FLAGS = flags.FLAGS


def define_bench_flags() -> None:
    from jarn_tf.core.flag_utils import define_fraction

    flags.DEFINE_enum("dataset", "fashion_mnist", config.DATASETS, "Input shape.")
    flags.DEFINE_string("model_path", None, "An exported model (.keras or model_dir); default: random init.")
    flags.DEFINE_enum("model", None, config.MODELS, "Architecture for a random-init model.")
    flags.DEFINE_list("cnn_channels", ["64", "128", "256"], "MNIST CNN channels.")
    flags.DEFINE_integer("wrn_depth", 34, "WRN depth.")
    flags.DEFINE_integer("wrn_width", 10, "WRN width.")
    flags.DEFINE_integer("batch_size", 256, "Images per attack call.")
    flags.DEFINE_integer("steps", 20, "PGD steps.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per implementation (after one warm-up).")
    define_fraction("eps", 0.1, "L-inf radius.", 0.0, 1.0)
    flags.DEFINE_integer("autoattack_examples", 0, "Also time standard AutoAttack on this many examples.")
    flags.DEFINE_integer("seed", 0, "Seed of the model and the inputs (and of AutoAttack).")
    flags.DEFINE_bool(
        "compare_official",
        False,
        "Run standard AutoAttack, ours and the official (pyautoattack on PyTorch), on --model_path, the "
        "first --num_examples test images and --eps, and compare time and results.",
    )
    flags.DEFINE_integer("num_examples", 500, "--compare_official: the first N test images.", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "--compare_official: TFDS data dir or a directory of IDX files.")
    flags.DEFINE_integer(
        "official_batch_size", 250, "--compare_official: the official run_standard_evaluation's batch size."
    )
    flags.DEFINE_integer(
        "autoattack_batch_size",
        None,
        "--compare_official: our run_autoattack's batch size (default: all still-robust examples at once).",
    )
    flags.DEFINE_list(
        "members",
        None,
        "--compare_official: AutoAttack members to run, in order (default: the standard four).",
    )
    flags.DEFINE_bool("skip_official", False, "--compare_official: time ours only (no PyTorch needed).")
    flags.DEFINE_integer(
        "rounds",
        1,
        "--compare_official: run both this many times, alternating which goes first (official first in "
        "odd rounds), and report the ratio of each round and their median.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "pass_batch_size",
        250,
        "--compare_official: images per call when timing one forward pass and one forward pass with the "
        "input gradient of the model in each framework (0: do not time them).",
        lower_bound=0,
    )
    flags.DEFINE_string(
        "output", None, "--compare_official, --profile_passes: also write the figures to this JSON file."
    )
    flags.DEFINE_bool(
        "profile_passes",
        False,
        "Time each 2-D convolution of the model (forward and input gradient, float32 and bfloat16, ms and "
        "GFLOP/s) and the whole model's passes with and without XLA, at --pass_batch_size images per call.",
    )


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call, median of ``repeats`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        np.asarray(out)  # wait for the result
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def _batch_of(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple:
    """``batch_size`` images and labels, the given ones repeated as often as needed."""
    reps = -(-batch_size // len(labels))
    return np.concatenate([images] * reps)[:batch_size], np.concatenate([labels] * reps)[:batch_size]


def _input_gradient_fn(model_fn: Callable) -> Callable:
    """(images, labels) -> the input gradient of the summed cross-entropy: what each step of APGD
    and FAB computes (one forward pass and one backward pass to the input)."""
    import tensorflow as tf

    def forward_grad(x, y):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=tf.cast(model_fn(x), tf.float32)
                )
            )
        return tape.gradient(loss, x)

    return forward_grad


def tf_pass_ms(
    model_fn: Callable, images: np.ndarray, labels: np.ndarray, batch_size: int, repeats: int = 5
) -> dict:
    """Milliseconds per image of one forward pass and of one forward pass with the input gradient
    of the summed cross-entropy (what each step of APGD and FAB computes), compiled with tf.function,
    at ``batch_size`` images per call; median of ``repeats`` calls after a warm-up call."""
    import tensorflow as tf

    x, y = _batch_of(images, labels, batch_size)
    x, y = tf.constant(x), tf.constant(y.astype(np.int32))
    forward = tf.function(model_fn)
    forward_grad = tf.function(_input_gradient_fn(model_fn))
    return {
        "forward": 1000 * _timed(lambda: forward(x), repeats) / batch_size,
        "forward_grad": 1000 * _timed(lambda: forward_grad(x, y), repeats) / batch_size,
    }


def _load_test_images(dataset: str, data_dir: Optional[str], num_examples: int):
    """The first ``num_examples`` test images (float32 in [0, 1]) and labels, in evaluate's order."""
    from jarn_tf.core import data

    data_config = config.DataConfig(dataset=dataset, data_dir=data_dir, download=False)
    order = data.resolve_example_order(data_config, "test", "auto")
    images, labels = data.load_arrays(data_config, "test", order.name)
    return (
        np.asarray(images[:num_examples], np.float32) / 255.0,
        np.asarray(labels[:num_examples], np.int64),
        order.detail,
    )


def _run_official(keras_path: str, inputs: str, output: str) -> Dict[str, object]:
    """Runs ``jarn_tf.robustness.official_autoattack`` in its own process (Keras' torch backend); its results."""
    command = [
        sys.executable,
        "-m",
        "jarn_tf.robustness.official_autoattack",
        f"--model={keras_path}",
        f"--inputs={inputs}",
        f"--eps={FLAGS.eps!r}",
        f"--output={output}",
        f"--seed={FLAGS.seed}",
        f"--batch_size={FLAGS.official_batch_size}",
        f"--pass_batch_size={FLAGS.pass_batch_size}",
    ]
    if FLAGS.members:
        command.append(f"--attacks={','.join(FLAGS.members)}")
    env = dict(os.environ, KERAS_BACKEND="torch")
    subprocess.run(command, check=True, env=env)
    with np.load(output) as f:
        return {k: f[k] for k in f.files}


def conv_flops(batch: int, out_hw: tuple, kernel_shape: tuple) -> int:
    """Floating-point operations of a 2-D convolution (or of its input gradient, the same count):
    2 per multiply-add, every kernel tap counted, padding included."""
    kh, kw, cin, cout = kernel_shape
    return 2 * batch * out_hw[0] * out_hw[1] * cout * kh * kw * cin


def _conv_layers(model) -> list:
    """The Conv2D layers of a Keras model, nested models included, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_conv_layers(layer))
        elif type(layer) is keras.layers.Conv2D:
            found.append(layer)
    return found


def profile_passes(
    keras_model, model_fn: Callable, image_shape: tuple, batch_size: int, repeats: int
) -> dict:
    """``--profile_passes``: per convolution and for the whole model, time and GFLOP/s (see the
    module docstring). Returns {"layers": [...], "model": {...}} and prints both as tables."""
    import tensorflow as tf

    def timed_ms(fn, *args) -> float:
        return 1000 * _timed(lambda: fn(*args), repeats)

    rng = np.random.default_rng(0)
    layers = []
    print(f"Per convolution, {batch_size} images per call (GFLOP/s: 2 per multiply-add, all kernel taps):")
    print(
        "| layer | input -> output | float32 forward ms (GFLOP/s) | float32 input gradient ms (GFLOP/s) "
        "| bfloat16 forward ms (GFLOP/s) | bfloat16 input gradient ms (GFLOP/s) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for layer in _conv_layers(keras_model):
        if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            print(f"| {layer.name} | (skipped: not a plain channels-last convolution) | | | | |")
            continue
        in_shape = (batch_size, *[int(d) for d in layer.input.shape[1:]])
        kernel = layer.kernel.numpy()
        strides, padding = [1, *layer.strides, 1], layer.padding.upper()
        x = rng.uniform(-1, 1, in_shape).astype(np.float32)
        y = tf.nn.conv2d(x, kernel, strides, padding)
        dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
        flops = conv_flops(batch_size, tuple(y.shape[1:3]), kernel.shape)
        row = dict(
            name=layer.name, input=list(in_shape[1:]), output=[int(d) for d in y.shape[1:]], gflop=flops / 1e9
        )
        for dtype in (tf.float32, tf.bfloat16):
            k, xd, dyd = (tf.cast(v, dtype) for v in (kernel, x, dy))
            forward = tf.function(lambda x, k: tf.nn.conv2d(x, k, strides, padding))
            input_grad = tf.function(
                lambda dy, k: tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=list(in_shape), filter=k, out_backprop=dy, strides=strides, padding=padding
                )
            )
            row[dtype.name] = dict(
                forward_ms=timed_ms(forward, xd, k), input_grad_ms=timed_ms(input_grad, dyd, k)
            )
        layers.append(row)
        cells = " | ".join(
            f"{row[d][key]:.2f} ({flops / 1e6 / row[d][key]:.0f})"
            for d in ("float32", "bfloat16")
            for key in ("forward_ms", "input_grad_ms")
        )
        print(
            f"| {layer.name} | {'x'.join(map(str, row['input']))} -> {'x'.join(map(str, row['output']))} | {cells} |"
        )

    x = tf.constant(rng.uniform(0, 1, (batch_size, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, 2, batch_size).astype(np.int32))
    forward_grad = _input_gradient_fn(model_fn)

    whole = {}
    print()
    print(f"The whole model, {batch_size} images per call (ms per call):")
    print("| compiled with | forward | forward + input gradient |")
    print("| --- | --- | --- |")
    for name, jit in (("tf.function", False), ("XLA (jit_compile)", True)):
        try:
            whole[name] = dict(
                forward_ms=timed_ms(tf.function(model_fn, jit_compile=jit), x),
                forward_grad_ms=timed_ms(tf.function(forward_grad, jit_compile=jit), x, y),
            )
            print(f"| {name} | {whole[name]['forward_ms']:.2f} | {whole[name]['forward_grad_ms']:.2f} |")
        except Exception as e:  # noqa: BLE001 - XLA refuses some models; report and go on
            print(f"| {name} | failed: {type(e).__name__} | |")
    return dict(batch_size=batch_size, layers=layers, model=whole)


def _random_init_classifier(info) -> tuple:
    """The flags' architecture (--model, --cnn_channels, --wrn_*), randomly initialised, for the
    dataset ``info``; (Keras model, description)."""
    from jarn_tf.jarn import models

    arch = FLAGS.model or ("mnist_cnn" if info.image_shape[0] == 28 else "wrn")
    cfg = config.ModelConfig(
        model=arch,
        cnn_channels=tuple(int(c) for c in FLAGS.cnn_channels),
        wrn_depth=FLAGS.wrn_depth,
        wrn_width=FLAGS.wrn_width,
    )
    classifier = models.build_classifier(cfg, info.image_shape, info.num_classes)
    return classifier, f"{arch} (random init) {cfg.cnn_channels if arch == 'mnist_cnn' else ''}"


def _profile_main() -> int:
    import tensorflow as tf

    from jarn_tf.core import data, export

    if FLAGS.pass_batch_size < 1:
        print("error: --profile_passes needs --pass_batch_size >= 1.")
        return 2
    if FLAGS.model_path:
        loaded = export.load_model(FLAGS.model_path)
        keras_model = getattr(loaded.model_fn, "keras_model", None)
        if keras_model is None:
            print(f"error: --profile_passes needs a Keras model; {loaded.path} is a {loaded.format}.")
            return 2
        model_fn, image_shape = loaded.model_fn, tuple(loaded.image_shape or keras_model.input_shape[1:])
    else:
        info = data.dataset_info(FLAGS.dataset)
        keras_model, _ = _random_init_classifier(info)
        model_fn = lambda x: keras_model(x, training=False)  # noqa: E731
        image_shape = tuple(info.image_shape)
    print(
        f"{FLAGS.model_path or 'random-init model'}; {os.cpu_count()} CPUs, TensorFlow {tf.__version__} "
        f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})"
    )
    summary = profile_passes(keras_model, model_fn, image_shape, FLAGS.pass_batch_size, FLAGS.repeats)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {FLAGS.output}")
    return 0


def compare_official() -> int:
    """``--compare_official``: standard AutoAttack, official and ours, on the same model and images."""
    import tensorflow as tf

    from jarn_tf.core import export
    from jarn_tf.robustness import autoattack

    if not FLAGS.model_path:
        print("error: --compare_official needs --model_path (a training run's model_dir or its export).")
        return 2
    model = export.load_model(FLAGS.model_path)
    if model.format != "keras":
        print(f"error: the official AutoAttack runs the .keras export; {model.path} is a {model.format}.")
        return 2
    dataset = model.dataset or FLAGS.dataset
    images, labels, order = _load_test_images(dataset, FLAGS.data_dir, FLAGS.num_examples)
    n, eps = len(labels), float(FLAGS.eps)
    members = tuple(FLAGS.members or autoattack.ATTACKS)
    print(
        f"Standard AutoAttack ({', '.join(members)}), eps {eps:g}, the first {n} {dataset} test images "
        f"({order}), model {model.path}; {os.cpu_count()} CPUs, TensorFlow {tf.__version__} "
        f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})"
    )

    def run_official() -> Dict[str, object]:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = os.path.join(tmp, "inputs.npz")
            np.savez(inputs, x=images, y=labels)
            print("-- official (pyautoattack, PyTorch, Keras torch backend), in its own process")
            official = _run_official(model.path, inputs, os.path.join(tmp, "official.npz"))
        names = [str(a) for a in official["attack_names"]]
        row = dict(
            total=float(official["total_seconds"]),
            seconds=dict(zip(names, map(float, official["attack_seconds"]))),
            robust_after=dict(zip(names, map(float, official["robust_accuracy_after"]))),
            robust=np.asarray(official["robust"], bool),
            detail=f"pyautoattack, torch {official['torch_version']} ({int(official['torch_threads'])} threads)",
        )
        if "pass_ms" in official:
            row["pass_ms"] = dict(zip(("forward", "forward_grad"), map(float, official["pass_ms"])))
        return row

    def run_ours(time_passes: bool) -> Dict[str, object]:
        print("-- ours (jarn_tf.robustness.autoattack), in this process")
        pass_ms = None
        if time_passes and FLAGS.pass_batch_size:
            pass_ms = tf_pass_ms(model.model_fn, images, labels, FLAGS.pass_batch_size)
        tic = time.perf_counter()
        result = autoattack.run_autoattack(
            model.model_fn,
            images,
            labels,
            eps,
            attacks=members,
            seed=FLAGS.seed,
            batch_size=FLAGS.autoattack_batch_size,
            log=lambda line: print(f"[ours] {line}", flush=True),
        )
        row = dict(
            total=time.perf_counter() - tic,
            seconds={k: float(v) for k, v in result["seconds"].items()},
            robust_after={k: float(np.mean(v)) for k, v in result["per_attack"].items()},
            robust=np.asarray(result["robust"], bool),
            detail=f"jarn_tf, TensorFlow {tf.__version__}",
        )
        if pass_ms:
            row["pass_ms"] = pass_ms
        return row

    # Each round runs both sides one after the other; the order alternates between rounds, so that
    # a drift of the machine's speed during a run does not favour one side.
    rounds, firsts = [], []
    for r in range(FLAGS.rounds):
        if FLAGS.rounds > 1:
            print(f"== round {r + 1} of {FLAGS.rounds}")
        order = ("official", "ours") if r % 2 == 0 and not FLAGS.skip_official else ("ours", "official")
        rows_r: Dict[str, Dict[str, object]] = {}
        for side in order:
            if side == "official" and not FLAGS.skip_official:
                rows_r["official"] = run_official()
            elif side == "ours":
                rows_r["ours"] = run_ours(time_passes=(r == 0))
        rounds.append(rows_r)
        firsts.append(order[0])
    rows = {name: rounds[0][name] for name in ("official", "ours") if name in rounds[0]}

    print()
    header = " | ".join(f"{m} s (robust %)" for m in members)
    print(f"| implementation | {header} | total s | images / s |")
    print("| --- | " + " | ".join("---" for _ in members) + " | --- | --- |")
    for r, rows_r in enumerate(rounds):
        for name in ("official", "ours"):
            if name not in rows_r:
                continue
            row = rows_r[name]
            cells = " | ".join(
                f"{row['seconds'].get(m, 0.0):.1f} ({100 * row['robust_after'].get(m, float('nan')):.1f})"
                for m in members
            )
            label = f"{name}: {row['detail']}" + (f", round {r + 1}" if len(rounds) > 1 else "")
            print(f"| {label} | {cells} | {row['total']:.1f} | {n / row['total']:.2f} |")
    timed = [(name, row["pass_ms"]) for name, row in rows.items() if "pass_ms" in row]
    if timed:
        # What bounds the ratio: the gradient attacks (APGD, FAB) run one forward pass with the input
        # gradient per step (FAB one more forward pass), Square one forward pass per query.
        print()
        print(f"Per pass, {FLAGS.pass_batch_size} images per call (ms per image):")
        print("| implementation | forward | forward + input gradient |")
        print("| --- | --- | --- |")
        for name, ms in timed:
            print(f"| {name} | {ms['forward']:.3f} | {ms['forward_grad']:.3f} |")
        if len(timed) == 2:
            (_, ours_ms), (_, theirs_ms) = sorted(timed, key=lambda t: t[0] != "ours")
            print(
                f"| official / ours | {theirs_ms['forward'] / ours_ms['forward']:.2f}x | "
                f"{theirs_ms['forward_grad'] / ours_ms['forward_grad']:.2f}x |"
            )
        print()
    summary: Dict[str, object] = {
        "dataset": dataset,
        "num_examples": n,
        "eps": eps,
        "model": model.path,
        "members": list(members),
        "seed": FLAGS.seed,
        "cpus": os.cpu_count(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        **{
            name: {k: v for k, v in row.items() if k != "robust"}
            | {"robust_accuracy": float(row["robust"].mean())}
            for name, row in rows.items()
        },
    }
    if "official" in rows:
        ours, theirs = rows["ours"]["robust"], rows["official"]["robust"]
        ratio = rows["official"]["total"] / rows["ours"]["total"]
        same = int(np.sum(ours == theirs))
        print(
            f"throughput ours / official: {ratio:.2f}x; robust accuracy ours {100 * ours.mean():.1f}% vs "
            f"official {100 * theirs.mean():.1f}%; the same verdict on {same}/{n} examples (robust for ours "
            f"only: {int(np.sum(ours & ~theirs))}, for the official only: {int(np.sum(theirs & ~ours))})"
        )
        summary.update(
            speedup=ratio,
            same_verdict=same,
            robust_ours_only=int(np.sum(ours & ~theirs)),
            robust_official_only=int(np.sum(theirs & ~ours)),
        )
    if len(rounds) > 1:
        per_round = [
            dict(
                first=firsts[r],
                **{f"{name}_total": rows_r[name]["total"] for name in rows_r},
                **(
                    dict(
                        speedup=rows_r["official"]["total"] / rows_r["ours"]["total"],
                        same_verdict=int(np.sum(rows_r["ours"]["robust"] == rows_r["official"]["robust"])),
                    )
                    if "official" in rows_r
                    else {}
                ),
            )
            for r, rows_r in enumerate(rounds)
        ]
        summary["rounds"] = per_round
        for r, entry in enumerate(per_round):
            line = f"round {r + 1} ({entry['first']} first): ours {entry['ours_total']:.1f} s"
            if "speedup" in entry:
                line += (
                    f", official {entry['official_total']:.1f} s, ratio {entry['speedup']:.2f}x, the same "
                    f"verdict on {entry['same_verdict']}/{n}"
                )
            print(line)
        if "official" in rows:
            ratios = [entry["speedup"] for entry in per_round]
            summary.update(
                speedup_median=float(np.median(ratios)), speedup_min=min(ratios), speedup_max=max(ratios)
            )
            print(
                f"throughput ours / official over {len(rounds)} rounds: median {np.median(ratios):.2f}x "
                f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
            )
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {FLAGS.output}")
    return 0


def main(argv) -> int:
    del argv
    if FLAGS.compare_official and FLAGS.profile_passes:
        print("error: --compare_official and --profile_passes are separate modes; give one.")
        return 2
    if FLAGS.compare_official:
        return compare_official()
    if FLAGS.profile_passes:
        return _profile_main()
    import keras
    import tensorflow as tf

    from jarn_tf.core import data, export
    from jarn_tf.robustness import attacks, autoattack

    try:
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    except ImportError:
        print("error: CleverHans is not installed: pip install --no-deps cleverhans==4.0.0")
        return 2

    keras.utils.set_random_seed(FLAGS.seed)
    info = data.dataset_info(FLAGS.dataset)
    if FLAGS.model_path:
        model_fn = export.load_model(FLAGS.model_path).model_fn
        description = FLAGS.model_path
    else:
        classifier, description = _random_init_classifier(info)
        model_fn = lambda x: classifier(x, training=False)  # noqa: E731

    rng = np.random.default_rng(FLAGS.seed)
    images = tf.constant(rng.uniform(0, 1, (FLAGS.batch_size, *info.image_shape)).astype(np.float32))
    labels = tf.constant(rng.integers(0, info.num_classes, FLAGS.batch_size))
    eps, steps = FLAGS.eps, FLAGS.steps
    step_size = eps / 4

    def ours_fn(x, y):
        return attacks.pgd(model_fn, x, y, eps, step_size, steps, random_start=False)

    ours = tf.function(ours_fn)
    ours_xla = tf.function(ours_fn, jit_compile=True)  # what evaluate --jit_compile runs

    def cleverhans(x, y):
        return projected_gradient_descent(
            model_fn,
            x,
            eps,
            step_size,
            steps,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            y=y,
            rand_init=False,
            sanity_checks=False,
        )

    cleverhans_compiled = tf.function(cleverhans)
    runs: Dict[str, Callable[[], object]] = {
        "jarn_tf pgd (tf.function)": lambda: ours(images, labels),
        "jarn_tf pgd (XLA, --jit_compile)": lambda: ours_xla(images, labels),
        "cleverhans pgd (eager)": lambda: cleverhans(images, labels),
        "cleverhans pgd (tf.function)": lambda: cleverhans_compiled(images, labels),
    }
    print(f"PGD-{steps}, eps {eps:g}, step {step_size:g}, batch {FLAGS.batch_size}, {description}")
    seconds = {name: _timed(fn, FLAGS.repeats) for name, fn in runs.items()}
    base = seconds["jarn_tf pgd (tf.function)"]
    print(f"| implementation | s / batch | images / s | time vs jarn_tf |")
    print(f"| --- | --- | --- | --- |")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {FLAGS.batch_size / s:.0f} | {s / base:.2f}x |")
    diff = np.abs(ours(images, labels).numpy() - cleverhans(images, labels).numpy())
    # On an untrained model many input gradients are ~0 and their sign can
    # flip with summation order; on a trained model the two agree to ~1e-8.
    print(
        f"ours vs cleverhans: max |diff| {diff.max():.2e}, "
        f"pixels differing by > 1e-6: {100 * np.mean(diff > 1e-6):.3f}%"
    )

    if FLAGS.autoattack_examples:
        n = FLAGS.autoattack_examples
        x = (
            images[:n]
            if n <= FLAGS.batch_size
            else tf.constant(rng.uniform(0, 1, (n, *info.image_shape)).astype(np.float32))
        )
        y = tf.argmax(model_fn(x), axis=-1)  # attack correctly classified points
        tic = time.perf_counter()
        autoattack.run_autoattack(model_fn, x, y, eps, seed=FLAGS.seed)
        dt = time.perf_counter() - tic
        print(f"standard AutoAttack: {dt:.1f} s for {n} examples = {1000 * dt / n:.0f} s per 1,000 examples")
    return 0


def run() -> None:
    define_bench_flags()
    from jarn_tf.core import startup

    startup.prefer_onednn()  # before TensorFlow is imported: see its docstring
    app.run(main)


if __name__ == "__main__":
    run()
