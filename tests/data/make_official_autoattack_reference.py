r"""Writes tests/data/official_autoattack_reference.{keras,npz}: the official AutoAttack's outputs.

  KERAS_BACKEND=torch python tests/data/make_official_autoattack_reference.py

Trains a small MLP (8x8x1 pattern images, 64-32-10) with Keras, saves it as a .keras file, and runs
the official implementation (``pyautoattack`` 0.2.0 on PyTorch 2.13, the optional benchmark
dependencies) on it: APGD-CE and APGD-T (2nd-ranked target) from given starting points, FAB-T (2nd
and 3rd-ranked targets, deterministic) and the whole standard ensemble. ``tests/test_official_reference.py``
runs ours on the same model and inputs and compares, with TensorFlow only. Run it again only to
refresh the reference (e.g. for a new pyautoattack release); the outputs are committed.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EPS = 0.05  # some examples break, some do not
NUM = 100


def pattern_data(n: int, seed: int):
    """8x8x1 images: one fixed random template per class, low contrast, plus heavy noise."""
    templates = np.random.default_rng(123).uniform(0, 1, size=(10, 8, 8, 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = 0.25 + 0.5 * templates[labels] + rng.normal(0, 0.3, (n, 8, 8, 1))
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int64)


def main() -> int:
    if os.environ.get("KERAS_BACKEND") != "torch":
        print("run with KERAS_BACKEND=torch", file=sys.stderr)
        return 2
    import keras
    import pyautoattack
    import torch
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT

    keras.utils.set_random_seed(0)
    x_train, y_train = pattern_data(4000, seed=0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=128, epochs=4, verbose=0)
    model.save(os.path.join(HERE, "official_autoattack_reference.keras"))

    class NCHW(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 2, 3, 1), training=False)

    net = NCHW(model).eval()
    x_nhwc, y = pattern_data(NUM, seed=1)
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(y)
    with torch.no_grad():
        logits = net(x).numpy()
    correct = np.argmax(logits, -1) == y
    rng = np.random.default_rng(2)
    t = rng.uniform(-1, 1, x_nhwc.shape).astype(np.float32)
    start = np.clip(x_nhwc + EPS * t / (np.abs(t).max(axis=(1, 2, 3), keepdims=True) + 1e-12), 0, 1)
    start = start.astype(np.float32)
    start_t = torch.from_numpy(np.ascontiguousarray(start.transpose(0, 3, 1, 2)))

    def nhwc(a):
        return a.detach().numpy().transpose(0, 2, 3, 1)

    out = dict(x=x_nhwc, y=y, eps=EPS, start=start, clean_logits=logits)
    common = dict(n_restarts=1, n_iter=100, verbose=False, eps=EPS, norm="Linf", eot_iter=1, rho=0.75)
    apgd = APGDAttack(net, seed=0, device="cpu", **common)
    apgd.init_hyperparam(x)
    best, acc, loss_best, best_adv = apgd.attack_single_run(x, y_t, x_init=start_t)
    out.update(
        ce_robust=acc.numpy(),
        ce_x_best=nhwc(best),
        ce_loss_best=loss_best.numpy(),
        ce_best_adv=nhwc(best_adv),
    )

    apgd_t = APGDAttack_targeted(net, seed=0, device="cpu", **common)
    apgd_t.init_hyperparam(x)
    with torch.no_grad():
        apgd_t.y_target = net(x).sort(dim=1)[1][:, -2]
    best, acc, loss_best, best_adv = apgd_t.attack_single_run(x, y_t, x_init=start_t)
    out.update(
        t_target=apgd_t.y_target.numpy(),
        t_robust=acc.numpy(),
        t_x_best=nhwc(best),
        t_loss_best=loss_best.numpy(),
        t_best_adv=nhwc(best_adv),
    )

    fab = FABAttack_PT(
        net, n_restarts=1, n_iter=100, eps=EPS, seed=0, norm="Linf", verbose=False, device="cpu"
    )
    fab.targeted = True
    for rank in (2, 3):
        fab.target_class = rank
        adv = fab.attack_single_run(x, y_t, use_rand_start=False, is_targeted=True)
        with torch.no_grad():
            found = (net(adv).max(1)[1] != y_t).numpy() & correct
        out[f"fab{rank}_found"] = found
        out[f"fab{rank}_norm"] = np.where(found, np.abs(nhwc(adv) - x_nhwc).max(axis=(1, 2, 3)), np.inf)

    adversary = AutoAttack(net, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    robust_after = []
    import logging

    class Recorder(logging.Handler):
        def emit(self, record):
            line = record.getMessage()
            if line.startswith("robust accuracy after "):
                robust_after.append(float(line.split(": ")[1].split("%")[0]) / 100)

    logging.getLogger("auto-attack").addHandler(Recorder())
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)
    _, y_adv = adversary.run_standard_evaluation(x, y_t, batch_size=250)
    out.update(
        ensemble_robust=(y_adv.numpy() == y),
        ensemble_robust_after=np.array(robust_after),
        versions=np.array([f"pyautoattack {pyautoattack.__version__}", f"torch {torch.__version__}"]),
    )
    np.savez_compressed(os.path.join(HERE, "official_autoattack_reference.npz"), **out)
    print({k: (v.shape, v.dtype) for k, v in out.items() if isinstance(v, np.ndarray)})
    print("clean", correct.mean(), "ce robust", out["ce_robust"].mean(), "t robust", out["t_robust"].mean())
    print("fab2 found", out["fab2_found"].mean(), "ensemble", robust_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
