"""The Table 1 collector (jarn_tf.gan.table): cells, the discriminator-robustness table, FCD curves."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from jarn_tf.gan import table as gan_table


def _metric(name, value, **extra):
    return {
        "name": name,
        "long_name": name,
        "value": value,
        "network": "clf.keras",
        "sha256": "ab" * 32,
        "feature_layer": "penultimate",
        "feature_dim": 8,
        "num_samples": 100,
        "reference_size": 100,
        "reference_split": "test",
        **extra,
    }


def _cell(root, cell, seed, fcd, robust_change=None, curve=()):
    run = os.path.join(root, f"{cell}_seed{seed}")
    os.makedirs(os.path.join(run, "eval_gan"))
    with open(os.path.join(run, "eval_gan", "results.json"), "w") as f:
        json.dump(
            {
                "metrics": {"fcd": _metric("FCD", fcd), "classifier_score": _metric("classifier score", 4.0)},
                "generator": {"step": 1000},
            },
            f,
        )
    with open(os.path.join(run, "train_seconds"), "w") as f:
        f.write("123\n")
    if robust_change is not None:
        os.makedirs(os.path.join(run, "disc_robustness"))
        attack = {"mean_abs_change": robust_change, "relative_to_separation": robust_change / 2.0}
        with open(os.path.join(run, "disc_robustness", "results.json"), "w") as f:
            json.dump(
                {
                    "separation": 2.0,
                    "generated": {"attacks": {"fgm@0.05": attack}, "grad_norm_mean": 3.0},
                    "real": {"attacks": {"fgm@0.05": attack}, "grad_norm_mean": 1.0},
                    "num_samples": 50,
                    "num_real": 50,
                    "real_split": "test",
                    "seed": seed,
                },
                f,
            )
    if curve:
        writer = tf.summary.create_file_writer(os.path.join(run, "eval"))
        with writer.as_default():
            for step, value in curve:
                tf.summary.scalar("eval/fcd", value, step=step)
        writer.close()


def test_tables_and_curves_from_the_runs(tmp_path):
    root = str(tmp_path)
    _cell(root, "gan_none", 0, 70.5, robust_change=0.25, curve=[(250, 120.0), (500, 80.0)])
    _cell(root, "wgan_rfm", 0, 60.25, curve=[(250, 100.0)])
    cells = gan_table.collect(root, 0)
    assert set(cells) == {"gan_none", "wgan_rfm"}
    table = gan_table.format_table(cells, 0)
    assert "| GAN | 70.50 | not run | not run | not run | not run |" in table
    assert "| WGAN | not run | not run | not run | not run | 60.25 |" in table
    robust = gan_table.format_robustness(gan_table.collect_robustness(root, 0), 0)
    assert "| GAN None | 2 | 0.25 / 0.25 (0.12 / 0.12) | 3 / 1 |" in robust
    assert "WGAN RFM" not in robust
    path = gan_table.fcd_curves(root, [0], str(tmp_path / "curves.png"))
    png = tf.io.decode_png(open(path, "rb").read()).numpy()
    assert png.shape[0] > 100 and np.std(png) > 0
    assert gan_table.fcd_curves(str(tmp_path / "empty"), [0], str(tmp_path / "none.png")) is None


def test_seed_summary_pairs_each_regulariser_with_none_of_its_seed(tmp_path):
    root = str(tmp_path)
    for seed, none, ar in ((0, 70.0, 68.0), (1, 85.0, 95.0)):
        _cell(root, "gan_none", seed, none)
        _cell(root, "gan_ar", seed, ar)
    _cell(root, "gan_rfm", 0, 66.0)  # seed 0 only
    per_seed = {s: gan_table.collect(root, s) for s in (0, 1)}
    text = gan_table.format_seed_summary(per_seed)
    assert "| GAN | 77.50 (70.00 / 85.00) | not run | not run | 81.50 (68.00 / 95.00) | 66.00 (66.00 / -) |" in text
    # AR - None: -2 on seed 0, +10 on seed 1 (not 95 - 70 or 68 - 85: paired by seed).
    assert "| GAN | 0 | not run | not run | +4.00 (-2.00 / +10.00) | -4.00 (-4.00 / -) |" in text
    assert gan_table.format_seed_summary({0: per_seed[0]}) == ""
