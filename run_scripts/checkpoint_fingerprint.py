r"""Fingerprints of a short deterministic run of every training mode, to check that a refactor
changes no number (issue 28: "fixed-seed --deterministic runs of every mode give bit-identical
checkpoints before and after the move").

  python run_scripts/checkpoint_fingerprint.py --output=/tmp/before.json   # at the old commit
  python run_scripts/checkpoint_fingerprint.py --output=/tmp/after.json    # at the new one
  python run_scripts/checkpoint_fingerprint.py --compare /tmp/before.json /tmp/after.json

Each run is ``python -m jarn_tf.train`` in a subprocess from the repository root (CPU-scale
flagfiles, Fashion-MNIST from the Debian IDX files or TFDS, ``--deterministic``, a few steps of a
small batch, no evaluation), and its fingerprint is the SHA-256 of every variable of the final
checkpoint (name and bytes, in name order) except the save counter, plus each variable's own hash
so that a difference names the variables that moved. Runs that need another run
(``advgan_finetune`` needs a co-training run) are made in order. Comparing prints one line per
mode and exits 1 when any differs. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ("--deterministic", "--nodownload", "--verbose=0", "--eval_every=0", "--eval_examples=0",
          "--checkpoint_every=4", "--summary_every=2", "--image_summary_every=0", "--seed=3")

# name -> (flags, the run it needs as --init_from or None). Every mode and the JARN and AT variants.
RUNS: List[Tuple[str, Tuple[str, ...], str]] = [
    ("standard", ("--flagfile=flags/cpu_standard.cfg", "--train_steps=4", "--batch_size=16"), ""),
    ("jarn", ("--flagfile=flags/cpu_jarn.cfg", "--train_steps=8", "--batch_size=16", "--disc_update_every=2",
              "--jarn_start=0.5"), ""),
    ("jarn_release", ("--flagfile=flags/cpu_jarn_release.cfg", "--train_steps=8", "--batch_size=16",
                      "--disc_update_every=2", "--jarn_start=0.5"), ""),
    ("jarn_at1", ("--flagfile=flags/cpu_jarn_at1.cfg", "--train_steps=8", "--batch_size=16",
                  "--disc_update_every=2", "--jarn_start=0.5"), ""),
    ("pgd_at7", ("--flagfile=flags/cpu_pgd_at7.cfg", "--train_steps=4", "--batch_size=16"), ""),
    ("double_backprop", ("--flagfile=flags/cpu_double_backprop.cfg", "--train_steps=4", "--batch_size=16"), ""),
    ("gan_rfm", ("--flagfile=flags/cpu_gan_rfm.cfg", "--train_steps=4", "--batch_size=16", "--gan_channels=8"), ""),
    ("wgan_gp", ("--flagfile=flags/cpu_wgan_gp.cfg", "--train_steps=4", "--batch_size=16", "--gan_channels=8"), ""),
    ("lsgan_ar", ("--flagfile=flags/cpu_lsgan_ar.cfg", "--train_steps=4", "--batch_size=16", "--gan_channels=8"), ""),
    ("advgan", ("--flagfile=flags/cpu_advgan.cfg", "--train_steps=4", "--batch_size=16", "--gan_channels=8",
                "--latent_dim=16"), ""),
    ("advgan_finetune", ("--flagfile=flags/cpu_advgan_finetune.cfg", "--train_steps=4", "--batch_size=16"),
     "advgan"),
    ("advgan_pgd_at", ("--flagfile=flags/cpu_advgan_pgd_at.cfg", "--train_steps=4", "--batch_size=16",
                       "--gan_channels=8"), ""),
]


def fingerprint(checkpoint_dir: str) -> Dict[str, object]:
    """SHA-256 of the newest checkpoint's variables (all, and each), the save counter left out."""
    import numpy as np
    import tensorflow as tf

    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise SystemExit(f"no checkpoint in {checkpoint_dir}")
    reader = tf.train.load_checkpoint(path)
    names = sorted(n for n in reader.get_variable_to_shape_map() if "save_counter" not in n
                   and not n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))
    total = hashlib.sha256()
    each = {}
    for name in names:
        value = np.ascontiguousarray(reader.get_tensor(name))
        digest = hashlib.sha256(name.encode() + value.tobytes()).hexdigest()
        each[name] = digest[:16]
        total.update(digest.encode())
    return {"checkpoint": os.path.basename(path), "sha256": total.hexdigest(), "variables": each}


def run_all(out_dir: str, only: Sequence[str]) -> Dict[str, object]:
    results: Dict[str, object] = {}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    for name, flags, needs in RUNS:
        if only and name not in only and not any(needs == n for n in only):
            continue
        model_dir = os.path.join(out_dir, name)
        cmd = [sys.executable, "-m", "jarn_tf.train", *flags, *COMMON, f"--model_dir={model_dir}"]
        if needs:
            cmd.append(f"--init_from={os.path.join(out_dir, needs)}")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        results[name] = fingerprint(os.path.join(model_dir, "checkpoints"))
        print(f"{name:16s} {results[name]['sha256'][:16]}", flush=True)
    return results


def compare(a_path: str, b_path: str) -> int:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name:16s} only in {'the first' if name in a else 'the second'}")
            bad += 1
            continue
        same = a[name]["sha256"] == b[name]["sha256"]
        line = f"{name:16s} {'identical' if same else 'DIFFERS'} ({a[name]['sha256'][:16]})"
        if not same:
            bad += 1
            va, vb = a[name]["variables"], b[name]["variables"]
            moved = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
            line += f": {len(moved)} variables, e.g. {moved[:3]}"
        print(line)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="JSON of the fingerprints")
    parser.add_argument("--work_dir", default=None, help="Where the runs go (default: a temporary directory)")
    parser.add_argument("--only", default="", help="Comma list of run names (default: all)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.output:
        parser.error("--output is required (or --compare)")
    only = [n for n in args.only.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(args.work_dir or tmp, only)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
