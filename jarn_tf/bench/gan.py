r"""Benchmark: time per step of the ``gan`` mode, per regulariser, with and without oneDNN.

  python -m jarn_tf.bench_gan --gan_channels=16 --batch_size=64 --steps=20

For the networks of ``jarn_tf.gan.models`` on random images of the dataset's shape (no data
needed), each (regulariser, oneDNN setting) runs in its own process: a fresh ``GANTrainer`` is
built, one step is traced and run untimed, then ``--steps`` steps (discriminator update, then the
generator's) are timed under one ``tf.function``. Prints milliseconds per step, the ratio to the
unregularised step and the oneDNN speed-up, and writes them to ``--output_json`` if given.

TensorFlow turns oneDNN's CPU kernels on by itself only on recent Intel CPUs; the GAN commands of
this project (``run_scripts/cpu_gan_table1.sh``, ``jarn_tf.gan.study``) set
``TF_ENABLE_ONEDNN_OPTS=1``; this command shows what that buys on the machine at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence

REGS = ("none", "instance_noise", "gradient_penalty", "ar", "rfm")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_steps(reg: str, args: argparse.Namespace) -> Dict[str, float]:
    """Traces and times the GAN step of ``reg`` in this process."""
    import tensorflow as tf

    from jarn_tf import config as config_lib
    from jarn_tf.core import data, trainer as trainer_lib
    from jarn_tf.gan.trainer import GANVariant

    config = config_lib.with_fields(
        config_lib.ExperimentConfig(),
        mode="gan",
        dataset=args.dataset,
        download=False,
        model="mnist_cnn",
        disc_layers=2,
        gan_channels=args.gan_channels,
        gan_block=args.gan_block,
        batch_size=args.batch_size,
        learning_rate=2e-4,
        lr_boundaries=(),
        weight_decay=1e-4,
        augment=False,
        disc_reg=reg,
        train_steps=args.steps + 1,
    )
    info = data.dataset_info(args.dataset)
    trainer = trainer_lib.build_trainer(config, info, tf.distribute.get_strategy())
    images = tf.random.stateless_uniform([args.batch_size, *info.image_shape], seed=[0, 1])
    batch = (images, tf.zeros([args.batch_size], tf.int64))
    step = tf.function(lambda b: trainer.replica_step(b, GANVariant(True)))
    tic = time.perf_counter()
    step(batch)
    trace = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(args.steps):
        out = step(batch)
    float(out["d_loss"])  # wait for the last step
    return {"ms_per_step": 1000 * (time.perf_counter() - tic) / args.steps, "trace_seconds": trace}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jarn_tf.bench_gan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--gan_channels", type=int, default=16)
    p.add_argument("--gan_block", default="resnet", choices=("resnet", "vanilla"))
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--regs", default=",".join(REGS))
    p.add_argument("--onednn", default="0,1", help="TF_ENABLE_ONEDNN_OPTS values to compare.")
    p.add_argument("--output_json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: time one reg here
    return p


def main(argv: Sequence[str], out=print) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        print(json.dumps(time_steps(args.one, args)))
        return 0
    regs = [r for r in args.regs.split(",") if r]
    bad = [r for r in regs if r not in REGS]
    if bad or args.steps < 1:
        print(f"error: --regs {bad} not among {list(REGS)}" if bad else "error: --steps must be >= 1",
              file=sys.stderr)
        return 2
    settings = [s.strip() for s in args.onednn.split(",") if s.strip()]
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    base = [a for a in argv if not a.startswith(("--regs", "--onednn", "--output_json"))]
    for onednn in settings:
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        for reg in regs:
            proc = subprocess.run([sys.executable, "-m", "jarn_tf.bench.gan", *base, f"--one={reg}"],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"error: {reg} with oneDNN={onednn} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results.setdefault(onednn, {})[reg] = json.loads(proc.stdout.strip().splitlines()[-1])
    lines: List[str] = [
        f"GAN step, {args.dataset}, {args.gan_block} width {args.gan_channels}, batch {args.batch_size}, "
        f"{args.steps} timed steps (D then G):",
        "| regulariser | " + " | ".join(f"oneDNN={o} ms (x none)" for o in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for reg in regs:
        cells = []
        for o in settings:
            ms = results[o][reg]["ms_per_step"]
            cells.append(f"{ms:.0f} ({ms / results[o].get('none', results[o][reg])['ms_per_step']:.2f}x)")
        lines.append(f"| {reg} | " + " | ".join(cells) + " |")
    if "0" in results and "1" in results:
        speedups = [results["0"][r]["ms_per_step"] / results["1"][r]["ms_per_step"] for r in regs]
        lines.append(f"oneDNN speed-up: {min(speedups):.2f}x to {max(speedups):.2f}x")
    out("\n".join(lines))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
