r"""Runs the official AutoAttack (PyTorch) on an exported ``.keras`` classifier.

  KERAS_BACKEND=torch python -m jarn_tf.official_autoattack \
      --model=runs/x/export/classifier.keras --inputs=inputs.npz --eps=0.1 --output=official.npz

The reference for ``jarn_tf.bench.attacks --compare_official``, which starts this module in its own
process (Keras picks its backend once per process, and this one must be PyTorch). It loads the model
with Keras' torch backend, wraps it as a ``torch.nn.Module`` taking NCHW images (the official Square
attack reads the image layout as C, H, W) and runs ``pyautoattack.AutoAttack(version="standard")``'s
``run_standard_evaluation`` on the images of ``--inputs`` (``x`` float32 NHWC in [0, 1], ``y`` int),
exactly as its users call it. ``--output`` gets the robust flags, the adversarial examples, the
robust accuracy and the time after each attack (read off the official log lines), the total time and
the versions.

Needs the optional benchmark dependencies: ``pip install torch==2.13.0 pyautoattack==0.2.0``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Dict, List

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

# The official log line after each attack: "robust accuracy after APGD-CE: 52.20% (total time 80.1 s)".
_AFTER_ATTACK = re.compile(r"robust accuracy after (\S+): ([0-9.]+)% \(total time ([0-9.]+) s\)")


def define_flags() -> None:
    flags.DEFINE_string("model", None, "The exported .keras classifier (images NHWC in [0, 1] -> logits).")
    flags.DEFINE_string("inputs", None, "An .npz with x (float32 [N, H, W, C] in [0, 1]) and y (int [N]).")
    flags.DEFINE_float("eps", None, "L-inf radius in [0, 1] units.")
    flags.DEFINE_string("output", None, "Where to write the results (.npz).")
    flags.DEFINE_integer("seed", 0, "AutoAttack's seed.")
    flags.DEFINE_integer("batch_size", 250, "run_standard_evaluation's batch size (its default).")
    flags.DEFINE_list("attacks", None, "A custom list of attacks (default: the standard version's four).")
    flags.DEFINE_integer(
        "pass_batch_size",
        250,
        "Images per call when timing one forward pass and one forward pass with the input gradient "
        "before the attack (0: do not time them).",
        lower_bound=0,
    )
    flags.mark_flags_as_required(["model", "inputs", "eps", "output"])


class _LogRecorder(logging.Handler):
    """Keeps the official log's lines, and the robust accuracy and total time after each attack."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: List[str] = []
        self.after: Dict[str, tuple] = {}

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        print(f"[official] {line}", flush=True)
        match = _AFTER_ATTACK.search(line)
        if match:
            self.after[match.group(1).lower()] = (float(match.group(2)) / 100.0, float(match.group(3)))


def torch_pass_ms(model, x, y, batch_size: int, repeats: int = 5) -> tuple:
    """Milliseconds per image of one forward pass (no gradient) and of one forward pass with the input
    gradient of the summed cross-entropy, as the official attacks compute them, at ``batch_size``
    images per call; median of ``repeats`` calls after a warm-up call."""
    import torch

    reps = -(-batch_size // len(y))
    xb = torch.cat([x] * reps)[:batch_size].contiguous()
    yb = torch.cat([y] * reps)[:batch_size]

    def forward():
        with torch.no_grad():
            return model(xb)

    def forward_grad():
        xg = xb.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(model(xg), yb, reduction="sum")
        return torch.autograd.grad(loss, xg)[0]

    def per_image(fn):
        fn()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        return 1000 * float(np.median(times)) / batch_size

    return per_image(forward), per_image(forward_grad)


def main(argv) -> int:
    del argv
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise SystemExit("error: run with KERAS_BACKEND=torch (Keras picks its backend when it is imported).")
    try:
        import torch
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise SystemExit(
            f"error: the official AutoAttack needs PyTorch and pyautoattack ({e}): "
            "pip install torch==2.13.0 pyautoattack==0.2.0"
        ) from e
    import keras

    import jarn_tf.layers  # noqa: F401  registers the custom layers of the export

    keras_model = keras.saving.load_model(FLAGS.model, compile=False)

    class NCHWModel(torch.nn.Module):
        """images NCHW -> logits of the NHWC Keras model (inference mode)."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 2, 3, 1), training=False)

    model = NCHWModel(keras_model).eval()
    with np.load(FLAGS.inputs) as f:
        x_nhwc, y = np.asarray(f["x"], np.float32), np.asarray(f["y"]).astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(y)

    pass_ms = torch_pass_ms(model, x, y_t, FLAGS.pass_batch_size) if FLAGS.pass_batch_size else None
    recorder = _LogRecorder()
    official_logger = logging.getLogger("auto-attack")
    official_logger.setLevel(logging.DEBUG)
    official_logger.addHandler(recorder)
    official_logger.propagate = False

    kwargs = dict(norm="Linf", eps=float(FLAGS.eps), seed=int(FLAGS.seed), device="cpu")
    if FLAGS.attacks:
        adversary = AutoAttack(model, version="custom", attacks=list(FLAGS.attacks), **kwargs)
    else:
        adversary = AutoAttack(model, version="standard", **kwargs)
    tic = time.perf_counter()
    x_adv, y_adv = adversary.run_standard_evaluation(x, y_t, batch_size=int(FLAGS.batch_size))
    total = time.perf_counter() - tic

    names = list(recorder.after)
    cumulative = [recorder.after[n][1] for n in names]
    seconds = np.diff([0.0] + cumulative)
    np.savez(
        FLAGS.output,
        robust=(y_adv.numpy() == y),
        adversarial=x_adv.numpy().transpose(0, 2, 3, 1),
        attack_names=np.array(names),
        robust_accuracy_after=np.array([recorder.after[n][0] for n in names], np.float64),
        attack_seconds=np.asarray(seconds, np.float64),
        total_seconds=total,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        log=np.array(recorder.lines),
        **({"pass_ms": np.array(pass_ms, np.float64)} if pass_ms else {}),
    )
    print(f"[official] wrote {FLAGS.output} ({total:.1f} s)", flush=True)
    return 0


def run() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
