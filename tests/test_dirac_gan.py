"""The Dirac-GAN of Zhou & Krähenbühl (2019), Figures 2 and 5: known objective values, closed forms,
smoothness under AR, convergence of the AR trajectories, and the command (``jarn_tf.gan.dirac``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from jarn_tf.gan import dirac as dg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG2 = math.log(2.0)
OFF_ZERO = [-1.5, -0.3, 0.2, 2.0]


@pytest.mark.parametrize(
    "loss, at_zero, elsewhere",
    [("gan", -2 * LOG2, -LOG2), ("lsgan", -1.0, -0.5), ("wgan", 0.0, math.inf)],
)
def test_unregularised_objective_known_values(loss, at_zero, elsewhere):
    values = dg.generator_objective(loss, "none", OFF_ZERO + [0.0])
    if math.isinf(elsewhere):
        assert np.all(np.isposinf(values[:-1])), values
    else:
        np.testing.assert_allclose(values[:-1], elsewhere, rtol=1e-9, atol=1e-12)
    assert values[-1] == pytest.approx(at_zero, rel=1e-12, abs=1e-15)


def test_unbounded_objectives_are_inf_and_psi_runs_off():
    """WGAN without a bound on psi: +inf (not a grid-dependent number); with instance noise too."""
    for reg in ("none", "noise"):
        values, psi = dg.best_response("wgan", reg, [-0.01, 1e-4, 0.0, 1.0])
        assert list(values) == [math.inf, math.inf, 0.0, math.inf], (reg, values)
        assert psi[0] == -math.inf and psi[1] == math.inf and psi[3] == math.inf


@pytest.mark.parametrize("lam, delta", [(1.0, 0.5), (0.3, 0.05), (10.0, 1.0), (2.0, 0.2)])
def test_wgan_ar_matches_closed_form(lam, delta):
    theta = np.array([-1.7, -0.4, 0.05, 0.3, 1.0, 1.9])
    params = dg.Params(lambda_reg=lam, delta=delta)
    values, psi = dg.best_response("wgan", "ar", theta, params)
    expected = theta**2 / (4 * lam * delta**2)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_allclose(dg.wgan_ar_closed_form(theta, lam, delta), expected, rtol=1e-15)
    np.testing.assert_allclose(psi, theta / (2 * lam * delta**2), rtol=1e-4)
    assert dg.generator_objective("wgan", "ar", 0.0, params) == 0.0


def test_other_closed_forms():
    theta = np.array([-1.9, -0.6, 0.1, 0.8, 2.0])
    p = dg.Params()  # lambda 1, delta 0.5, alpha 0.1, gp_weight 10, eps 0.5, sigma 0.5
    # WGAN-GP: max_psi psi |theta| - w (psi - 1)^2 = |theta| + theta^2 / (4 w).
    np.testing.assert_allclose(
        dg.generator_objective("wgan", "gp", theta, p), np.abs(theta) + theta**2 / 40, rtol=1e-8
    )
    # RFM (weight decay alpha on psi plus the constant lambda delta^2).
    np.testing.assert_allclose(
        dg.generator_objective("wgan", "rfm", theta, p), theta**2 / (4 * 0.1) - 0.25, rtol=1e-8
    )
    # Robust discriminator |psi| <= eps / delta = 1: WGAN |theta|, GAN log sigmoid(|theta|) - log 2.
    np.testing.assert_allclose(
        dg.generator_objective("wgan", "robust_discriminator", theta, p), np.abs(theta)
    )
    np.testing.assert_allclose(
        dg.generator_objective("gan", "robust_discriminator", theta, p),
        -np.log1p(np.exp(-np.abs(theta))) - LOG2,
        rtol=1e-10,
    )
    # LSGAN with instance noise sigma is LSGAN + AR with lambda delta^2 = sigma^2 (checks the quadrature).
    np.testing.assert_allclose(
        dg.generator_objective("lsgan", "noise", theta, p),
        dg.generator_objective("lsgan", "ar", theta, dg.Params(lambda_reg=1.0, delta=0.5)),
        rtol=1e-9,
    )
    # The robust loss constraint for WGAN is the robust discriminator's.
    np.testing.assert_allclose(
        dg.generator_objective("wgan", "robust_loss", theta, p), np.abs(theta), rtol=1e-9
    )


def test_gan_ar_is_smooth_and_increasing_in_abs_theta_unlike_unregularised():
    theta = dg.theta_grid(0.5, 201)  # step 0.005, includes 0
    ar = dg.generator_objective("gan", "ar", theta)
    none = dg.generator_objective("gan", "none", theta)
    # Continuous: neighbouring values close, no jump at 0.
    assert np.max(np.abs(np.diff(ar))) < 2e-3
    # Strictly increasing in |theta| (a meaningful gradient towards 0), and symmetric.
    right = ar[theta >= 0]
    assert np.all(np.diff(right) > 0), np.diff(right)
    np.testing.assert_allclose(ar, ar[::-1], rtol=1e-9)
    assert ar[theta == 0.0][0] == pytest.approx(-2 * LOG2)
    # Unregularised: a jump of log 2 at 0 and flat elsewhere (no gradient).
    assert np.max(np.abs(np.diff(none))) == pytest.approx(LOG2, rel=1e-6)
    np.testing.assert_allclose(none[theta != 0], -LOG2, rtol=1e-9)


@pytest.mark.parametrize("loss", ["gan", "wgan"])
def test_ar_trajectory_converges_unregularised_does_not(loss):
    ar = dg.summarize_path(dg.train(loss, "ar"))
    none = dg.summarize_path(dg.train(loss, "none"))
    assert ar["start"] == [1.0, 1.0] and not ar["diverged"]
    assert ar["distance_end"] < 1e-2, ar
    # Alternating updates keep the unregularised game on a cycle around (0, 0).
    assert none["min_distance_last_half"] > 0.5, none
    assert none["distance_end"] > 0.5 and none["max_distance_last_half"] < 3.0, none


def test_simultaneous_updates():
    """Simultaneous updates: unregularised WGAN spirals out, AR still converges."""
    none = dg.summarize_path(dg.train("wgan", "none", update="simultaneous"))
    ar = dg.summarize_path(dg.train("wgan", "ar", update="simultaneous"))
    assert none["distance_end"] > 10 * none["distance_start"], none
    assert ar["distance_end"] < 1e-2, ar


def test_robust_discriminator_trajectory_stays_within_constraint():
    path = dg.train("wgan", "robust_discriminator", steps=300)
    assert np.all(np.abs(path[1:, 1]) <= 0.5 / 0.5 + 1e-12)
    # Appendix E: within a distance d of the optimum, not converging to it.
    assert 0.5 < np.hypot(*path[-1]) < 1.2


def test_gradients_match_finite_differences():
    params = dg.Params()
    theta, psi, h = 0.7, -0.4, 1e-6
    for loss in dg.LOSSES:
        for reg in ("none", "noise", "gp", "ar", "rfm"):
            g_theta, g_psi = dg.gradients(loss, reg, theta, psi, params)
            obj = lambda t, p: float(dg.discriminator_objective(loss, reg, t, p, params))  # noqa: E731
            fd_theta = (obj(theta + h, psi) - obj(theta - h, psi)) / (2 * h)
            fd_psi = (obj(theta, psi + h) - obj(theta, psi - h)) / (2 * h)
            assert float(g_theta) == pytest.approx(fd_theta, rel=1e-5, abs=1e-8), (loss, reg)
            assert float(g_psi) == pytest.approx(fd_psi, rel=1e-5, abs=1e-8), (loss, reg)


def _flags(args):
    fv = flags.FlagValues()
    dg.define_dirac_gan_flags(fv)
    fv(["jarn_tf.gan.dirac"] + list(args))
    return fv


def test_command_writes_figures_and_json(tmp_path, capsys):
    out = tmp_path / "dirac"
    fv = _flags([f"--output_dir={out}", "--steps=40", "--num_theta=41"])
    assert dg.main(["jarn_tf.gan.dirac"], flag_values=fv) == 0
    printed = capsys.readouterr().out
    for name in ("objective.png", "trajectories.png", "dirac_gan.json"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert str(path) in printed
    for name in ("objective.png", "trajectories.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    result = json.loads((out / "dirac_gan.json").read_text(), parse_constant=no_constants)
    params = result["parameters"]
    assert (params["steps"], params["delta"], params["update"], params["num_theta"]) == (
        40,
        0.5,
        "alternating",
        41,
    )
    assert len(result["theta"]) == 41 and result["theta"][20] == 0.0
    assert set(result["objective"]) == set(dg.REGULARIZERS)
    assert result["objective"]["none"]["wgan"][0] == "inf" and result["objective"]["none"]["wgan"][20] == 0.0
    assert result["objective"]["ar"]["wgan"][0] == pytest.approx(4.0)  # theta^2 at theta = -2
    traj = result["trajectories"]
    assert set(traj) == {"gan", "wgan"} and set(traj["wgan"]) == {"none", "robust_discriminator", "ar"}
    assert traj["wgan"]["ar"]["start"] == [1.0, 1.0]
    assert traj["wgan"]["ar"]["distance_end"] < traj["wgan"]["none"]["distance_end"]


def test_command_rejects_bad_input(tmp_path, capsys):
    fv = _flags([f"--output_dir={tmp_path}", "--trajectory_regularizers=none,bogus", "--num_theta=5"])
    assert dg.main(["jarn_tf.gan.dirac"], flag_values=fv) == 2
    assert "bogus" in capsys.readouterr().err
    assert dg.main(["jarn_tf.gan.dirac"], flag_values=_flags([])) == 2  # no --output_dir


def test_console_script_and_no_tensorflow():
    with open(os.path.join(REPO, "setup.cfg")) as f:
        assert "jarn-dirac-gan = jarn_tf.gan.dirac:run" in f.read()
    code = "import sys, jarn_tf.gan.dirac; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
