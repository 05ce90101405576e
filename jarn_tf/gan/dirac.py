r"""The Dirac-GAN of "Don't let your discriminator be fooled" (Zhou & Krähenbühl, ICLR 2019).

  python -m jarn_tf.dirac_gan --output_dir=runs/dirac_gan
  python -m jarn_tf.dirac_gan --output_dir=/tmp/dirac --delta=0.25 --lambda_reg=2 \
      --update=simultaneous --steps=2000 --learning_rate=0.05

Reproduces the paper's toy example (section 4.2, Figure 2; appendix E, Figure 5) with NumPy and
matplotlib only (no TensorFlow: it runs in seconds). The Dirac-GAN (Mescheder, 2018): the data are
a point mass at 0, the generator a point mass at ``theta``, the discriminator ``D(x) = psi * x``. The
paper's objective (eq. 1), which the discriminator maximises and the generator minimises, is

  L(theta, psi) = E_x f(-D(x)) + E_z f(D(G(z))) = f(0) + f(psi * theta)

with a concave ``f``: GAN ``f(t) = -log(1 + exp(-t))``, LSGAN ``f(t) = -(1 + t)^2 / 2``, WGAN
``f(t) = t``. The generator's objective is the discriminator's best response

  l(theta) = max_psi L(theta, psi) - lambda * rho(psi, theta)      (psi feasible for a hard constraint)

for the regularisers (``REGULARIZERS``):

* ``none``: rho = 0. GAN: -log 2 for every theta != 0 and -2 log 2 at 0; LSGAN: -1/2 and -1; WGAN:
  +inf and 0 (Figure 2a): no gradient for the generator anywhere.
* ``noise``: instance noise, L = E f(-psi n1) + E f(psi (theta + n2)) with n1, n2 ~ N(0, sigma^2)
  independent (Gauss-Hermite quadrature), no rho.
* ``gp``: the gradient penalty of WGAN-GP, rho = (|dD/dx| - 1)^2 = (|psi| - 1)^2, weight --gp_weight.
* ``ar``: adversarial regularisation (eq. 4), rho = (D(theta) - D(theta + v))^2 with the fast
  normalised gradient attack v = delta * grad_x D / |grad_x D| = delta * sign(psi), so
  rho = delta^2 psi^2. WGAN + AR has the closed form theta^2 / (4 lambda delta^2) (Figure 2d).
* ``rfm``: robust feature matching (eq. 5) with phi(x) = x and w = psi:
  rho = |phi(theta) - phi(theta + v)|^2 + alpha w^2 = delta^2 + alpha psi^2. With a linear phi the
  feature term is a constant, so in one dimension RFM is weight decay on psi (shifted by lambda delta^2).
* ``robust_loss``: the hard constraint of Theorem 4.1 (Figure 2b), psi feasible iff
  |f(D(theta)) - f(D(theta + u))| <= eps for all |u| <= delta (computed exactly from f's concavity).
* ``robust_discriminator``: the hard constraint of Theorem 4.2 (Figure 2c),
  |D(theta) - D(theta + u)| = |psi| |u| <= eps for all |u| <= delta, i.e. |psi| <= eps / delta.

The maximisation over psi is a dense, log-spaced symmetric grid (|psi| from 1e-6 to 1e12, and 0, and
the constraints' boundaries) refined by a golden-section search between the best grid point's
neighbours. An objective whose maximum sits at the grid's edge and is still growing there is
unbounded and reported as +inf (unregularised WGAN, WGAN with instance noise), not as a
grid-dependent number; a bounded supremum that is only approached as |psi| -> inf (unregularised GAN
and LSGAN) is returned as the limit. (Below |theta| of about 1e-10 the grid cannot tell a slowly
growing bounded objective from an unbounded one.)

Training (appendix E, Figure 5) is gradient dynamics of (theta, psi) from (--initial_theta,
--initial_psi) = (1, 1): the generator descends L, the discriminator ascends L - lambda rho (hard
constraints: a projection of psi after its step), with the gradients in closed form and the attack v
held constant (no gradient through it, as in the paper). --update=alternating (the default, as the
caption of Figure 5 says) takes the discriminator's step, then the generator's against the new
discriminator; --update=simultaneous takes both from the same point.

Writes to --output_dir:

* objective.png: l(theta) for theta in [-theta_max, theta_max], GAN/LSGAN/WGAN, one panel per
  regulariser (Figure 2 and the regularisers of Table 1); +inf and values above the plot's top are
  drawn at the top, and the panel's title says so;
* trajectories.png: the (theta, psi) trajectories over the vector field (-dL/dtheta, d(L - lambda
  rho)/dpsi) for GAN and WGAN, unregularised, with the robust-discriminator constraint and with AR
  (Figure 5 (a)-(f));
* dirac_gan.json: the theta grid, l(theta) per regulariser and loss (+inf written as "inf"), the
  trajectories' start and end points and distances to the optimum (0, 0), and all parameters.

Defaults, chosen for the toy rather than copied from the paper's image experiments:

* --delta=0.5: the attack radius is in units of theta. The paper's delta = 0.05 is an image-space
  radius; in the toy it makes AR's penalty lambda delta^2 psi^2 so weak that WGAN + AR is
  theta^2 / 0.01 (off the plot at |theta| > 0.15) and the trajectories converge 100 times slower.
  With delta = 0.5 and lambda = 1, WGAN + AR is exactly theta^2 and the AR trajectories converge to
  (0, 0) well within the 1000 default steps.
* --lambda_reg=1.
* --alpha=0.1: the paper's alpha = 1e-4 (with lambda = 1) leaves a 1-D RFM panel indistinguishable
  from the unregularised one except within |theta| < 0.01 (and WGAN + RFM = 2500 theta^2). In 1-D
  RFM is weight decay alpha lambda psi^2, so alpha = 0.1 shows its effect next to AR's delta^2 = 0.25.
* --eps=0.5: with delta = 0.5 the robust discriminator is 1-Lipschitz (|psi| <= eps/delta = 1), so
  its WGAN panel is the Wasserstein distance |theta|, and its trajectory ends on the circle of
  radius eps/delta, as appendix E describes ("within distance d of the optimum").
* --gp_weight=10 (WGAN-GP's), --noise_sigma=0.5, --learning_rate=0.1, --steps=1000.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags

LOSSES = ("gan", "lsgan", "wgan")
REGULARIZERS = ("none", "noise", "gp", "ar", "rfm", "robust_loss", "robust_discriminator")
UPDATES = ("alternating", "simultaneous")
LOSS_NAMES = {"gan": "GAN", "lsgan": "LSGAN", "wgan": "WGAN"}

DEFAULT_STEPS = 1000
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_TRAJECTORY_LOSSES = ("gan", "wgan")
DEFAULT_TRAJECTORY_REGULARIZERS = ("none", "robust_discriminator", "ar")

# Where +inf and large values are drawn in objective.png.
_PLOT_TOP = 2.0
_PLOT_BOTTOM = -1.8
# Largest number of (theta, psi[, node]) evaluations held at once.
_CHUNK_ELEMENTS = 2_000_000
# A path whose coordinates pass this is called diverged and stops.
_DIVERGED = 1e100


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of the regularisers (see the module docstring for the defaults' reasons).

    Attributes:
      lambda_reg: weight lambda of AR and RFM.
      delta: attack radius (units of theta) of AR, RFM and the hard constraints.
      alpha: RFM's weight-decay coefficient on w = psi.
      gp_weight: weight of the gradient penalty (|psi| - 1)^2.
      noise_sigma: standard deviation of the instance noise.
      eps: bound of the hard constraints (robust loss, robust discriminator).
      noise_nodes: Gauss-Hermite nodes of the instance-noise expectations (odd).
    """

    lambda_reg: float = 1.0
    delta: float = 0.5
    alpha: float = 0.1
    gp_weight: float = 10.0
    noise_sigma: float = 0.5
    eps: float = 0.5
    noise_nodes: int = 41

    def validate(self) -> None:
        for name in ("lambda_reg", "delta", "alpha", "gp_weight", "noise_sigma", "eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if self.delta == 0:
            raise ValueError("delta must be > 0 (the attack radius).")
        if self.noise_nodes < 1 or self.noise_nodes % 2 == 0:
            raise ValueError(f"noise_nodes must be odd and >= 1, got {self.noise_nodes}.")


# ---------------------------------------------------------------------------
# The losses f.


def loss_f(loss: str, t) -> np.ndarray:
    """The concave f of eq. 1: GAN log sigmoid(t), LSGAN -(1 + t)^2 / 2, WGAN t."""
    t = np.asarray(t, dtype=float)
    if loss == "gan":
        return -np.logaddexp(0.0, -t)
    if loss == "lsgan":
        return -0.5 * (1.0 + t) ** 2
    if loss == "wgan":
        return t + 0.0
    raise ValueError(f"Unknown loss {loss!r}; choose from {', '.join(LOSSES)}.")


def loss_fprime(loss: str, t) -> np.ndarray:
    """f'(t): GAN sigmoid(-t), LSGAN -(1 + t), WGAN 1."""
    t = np.asarray(t, dtype=float)
    if loss == "gan":
        return np.exp(-np.logaddexp(0.0, t))
    if loss == "lsgan":
        return -(1.0 + t)
    if loss == "wgan":
        return np.ones_like(t)
    raise ValueError(f"Unknown loss {loss!r}; choose from {', '.join(LOSSES)}.")


# Where each f is largest (GAN and WGAN increase forever).
_F_ARGMAX = {"gan": math.inf, "lsgan": -1.0, "wgan": math.inf}


def _check(loss: str, reg: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose from {', '.join(LOSSES)}.")
    if reg not in REGULARIZERS:
        raise ValueError(f"Unknown regularizer {reg!r}; choose from {', '.join(REGULARIZERS)}.")


# ---------------------------------------------------------------------------
# Instance noise: E g(n), n ~ N(0, sigma^2), by Gauss-Hermite quadrature.


def _half_quadrature(nodes: int) -> Tuple[float, np.ndarray, np.ndarray]:
    """(w0, x, w): E g(n) = w0 g(0) + sum w (g(x) + g(-x)) for n ~ N(0, 1), x > 0."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    mid = nodes // 2
    w = w / w.sum()
    pos_x = 0.5 * (x[mid + 1 :] - x[:mid][::-1])  # exactly symmetric nodes
    pos_w = 0.5 * (w[mid + 1 :] + w[:mid][::-1])
    total = w[mid] + 2.0 * pos_w.sum()
    return float(w[mid] / total), pos_x, pos_w / total


def _expect_noise(g: Callable[[np.ndarray], np.ndarray], sigma: float, nodes: int) -> np.ndarray:
    """E g(n) for n ~ N(0, sigma^2); g takes the noise on a new last axis.

    The pairs g(u) + g(-u) make the expectation of an odd g exactly 0 (so WGAN with noise is exactly
    0 at theta = 0, not rounding noise that the unboundedness test would call +inf).
    """
    w0, x, w = _half_quadrature(nodes)
    u = sigma * x
    return w0 * g(np.zeros(1))[..., 0] + np.sum(w * (g(u) + g(-u)), axis=-1)


# ---------------------------------------------------------------------------
# The discriminator's objective and its best response.


def robust_loss_violation(loss: str, theta, psi, delta: float) -> np.ndarray:
    """max_{|u| <= delta} |f(D(theta)) - f(D(theta + u))| for D(x) = psi x (Theorem 4.1's constraint).

    With t = psi theta and a = |psi| delta, f(t + s) for |s| <= a is concave in s, so f(t) - f(t + s)
    is largest at an end of the interval and f(t + s) - f(t) where f peaks on [t - a, t + a].
    """
    theta, psi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(psi, float))
    t = psi * theta
    a = np.abs(psi) * delta
    ft = loss_f(loss, t)
    peak = loss_f(loss, np.clip(_F_ARGMAX[loss], t - a, t + a))
    return np.maximum(np.maximum(ft - loss_f(loss, t - a), ft - loss_f(loss, t + a)), peak - ft)


def gan_objective(loss: str, reg: str, theta, psi, params: Params = Params()) -> np.ndarray:
    """L(theta, psi) of the Dirac-GAN (with instance noise for reg='noise')."""
    _check(loss, reg)
    theta, psi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(psi, float))
    if reg == "noise" and params.noise_sigma > 0:
        th, ps = theta[..., None], psi[..., None]
        real = _expect_noise(lambda n: loss_f(loss, ps * (-n)), params.noise_sigma, params.noise_nodes)
        fake = _expect_noise(lambda n: loss_f(loss, ps * (th + n)), params.noise_sigma, params.noise_nodes)
        return real + fake
    return loss_f(loss, 0.0) + loss_f(loss, psi * theta)


def regularizer(reg: str, theta, psi, params: Params = Params()) -> np.ndarray:
    """rho(psi, theta) of the soft regularisers (0 for none, noise and the hard constraints)."""
    theta, psi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(psi, float))
    if reg == "ar":
        return (params.delta * psi) ** 2
    if reg == "rfm":
        return params.delta**2 + params.alpha * psi**2
    if reg == "gp":
        return (np.abs(psi) - 1.0) ** 2
    if reg in REGULARIZERS:
        return np.zeros_like(psi)
    raise ValueError(f"Unknown regularizer {reg!r}; choose from {', '.join(REGULARIZERS)}.")


def _reg_weight(reg: str, params: Params) -> float:
    return params.gp_weight if reg == "gp" else params.lambda_reg


def feasible(loss: str, reg: str, theta, psi, params: Params = Params()) -> np.ndarray:
    """Whether psi satisfies the hard constraint of reg (always, for the soft regularisers)."""
    theta, psi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(psi, float))
    if reg == "robust_discriminator":
        return np.abs(psi) * params.delta <= params.eps * (1 + 1e-12)
    if reg == "robust_loss":
        return robust_loss_violation(loss, theta, psi, params.delta) <= params.eps * (1 + 1e-12)
    return np.ones(psi.shape, dtype=bool)


def discriminator_objective(loss: str, reg: str, theta, psi, params: Params = Params()) -> np.ndarray:
    """L(theta, psi) - lambda rho(psi, theta); -inf where a hard constraint excludes psi."""
    value = gan_objective(loss, reg, theta, psi, params)
    if reg in ("ar", "rfm", "gp"):
        value = value - _reg_weight(reg, params) * regularizer(reg, theta, psi, params)
    if reg in ("robust_loss", "robust_discriminator"):
        value = np.where(feasible(loss, reg, theta, psi, params), value, -np.inf)
    return value


def psi_grid(extra: Sequence[float] = (), per_side: int = 1801) -> np.ndarray:
    """The sorted search grid of psi: 0, +-logspace(-6, 12, per_side) and extra points."""
    pos = np.logspace(-6.0, 12.0, per_side)
    grid = np.concatenate([-pos, [0.0], pos, np.asarray(extra, float)])
    return np.unique(grid)


def _grid_extras(reg: str, params: Params) -> List[float]:
    """Points where the optimum may sit on a kink or constraint boundary."""
    if reg == "robust_discriminator":
        return [params.eps / params.delta, -params.eps / params.delta]
    if reg == "gp":
        return [1.0, -1.0]
    return []


def _golden_max(fun: Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray, iters: int = 90):
    """Golden-section search for the maximum of fun on [a, b] (elementwise); the best point seen."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = a.copy(), b.copy()
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = fun(c), fun(d)
    best_x, best_f = np.where(fc >= fd, c, d), np.maximum(fc, fd)
    for _ in range(iters):
        left = fc >= fd  # the maximum is in [a, d]
        b, a = np.where(left, d, b), np.where(left, a, c)
        x_new = np.where(left, b - inv_phi * (b - a), a + inv_phi * (b - a))
        f_new = fun(x_new)
        c, d, fc, fd = (
            np.where(left, x_new, d),
            np.where(left, c, x_new),
            np.where(left, f_new, fd),
            np.where(left, fc, f_new),
        )
        better = f_new > best_f
        best_x, best_f = np.where(better, x_new, best_x), np.where(better, f_new, best_f)
    return best_x, best_f


def best_response(loss: str, reg: str, theta, params: Params = Params()) -> Tuple[np.ndarray, np.ndarray]:
    """The generator's objective l(theta) = max_psi L - lambda rho, and the maximising psi.

    Args:
      loss: gan, lsgan or wgan.
      reg: one of REGULARIZERS.
      theta: generator parameters (any shape).
      params: the regularisers' parameters.

    Returns:
      (value, psi) of theta's shape: +inf (and psi = +-inf) where the objective is unbounded in psi.
    """
    _check(loss, reg)
    params.validate()
    theta = np.asarray(theta, dtype=float)
    flat = theta.reshape(-1)
    # Instance noise is costly and concave in psi (an expectation of concave functions of psi), where a
    # coarser grid loses nothing: the refinement between the best point's neighbours finds the maximum.
    per_eval = params.noise_nodes + 1 if reg == "noise" else 1
    grid = psi_grid(_grid_extras(reg, params), per_side=451 if reg == "noise" else 1801)
    m = grid.size
    rows = max(1, _CHUNK_ELEMENTS // (m * per_eval))
    values, psis = np.empty_like(flat), np.empty_like(flat)
    for start in range(0, flat.size, rows):
        th = flat[start : start + rows]
        v = discriminator_objective(loss, reg, th[:, None], grid[None, :], params)
        k = np.argmax(v, axis=1)
        idx = np.arange(th.size)
        best = v[idx, k]
        # Unbounded: the best point is the grid's last and the objective still grows there.
        edge_hi, edge_lo = np.nan_to_num(v[:, -1], neginf=0.0), np.nan_to_num(v[:, 0], neginf=0.0)
        up = (k == m - 1) & (v[:, -1] > v[:, -2] + 1e-12 * np.maximum(1.0, np.abs(edge_hi)))
        down = (k == 0) & (v[:, 0] > v[:, 1] + 1e-12 * np.maximum(1.0, np.abs(edge_lo)))
        x, fx = _golden_max(
            lambda p: discriminator_objective(loss, reg, th, p, params),
            grid[np.maximum(k - 1, 0)],
            grid[np.minimum(k + 1, m - 1)],
        )
        better = fx > best
        best, arg = np.where(better, fx, best), np.where(better, x, grid[k])
        best = np.where(up | down, np.inf, best)
        arg = np.where(up, np.inf, np.where(down, -np.inf, arg))
        values[start : start + rows], psis[start : start + rows] = best, arg
    return values.reshape(theta.shape), psis.reshape(theta.shape)


def generator_objective(loss: str, reg: str, theta, params: Params = Params()) -> np.ndarray:
    """l(theta) (see best_response)."""
    return best_response(loss, reg, theta, params)[0]


def wgan_ar_closed_form(theta, lambda_reg: float, delta: float) -> np.ndarray:
    """WGAN + AR: max_psi psi theta - lambda delta^2 psi^2 = theta^2 / (4 lambda delta^2)."""
    return np.asarray(theta, float) ** 2 / (4.0 * lambda_reg * delta**2)


# ---------------------------------------------------------------------------
# Training dynamics (appendix E).


def gradients(loss: str, reg: str, theta, psi, params: Params = Params()) -> Tuple[np.ndarray, np.ndarray]:
    """(dL/dtheta, d(L - lambda rho)/dpsi) in closed form, the attack v held constant.

    rho's gradient: AR 2 delta^2 psi (v = delta sign(psi) constant), RFM 2 alpha psi, GP
    2 (|psi| - 1) sign(psi); none of them depends on theta (D(theta) - D(theta + v) = -psi v).
    """
    _check(loss, reg)
    theta, psi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(psi, float))
    if reg == "noise" and params.noise_sigma > 0:
        th, ps = theta[..., None], psi[..., None]
        s, k = params.noise_sigma, params.noise_nodes
        g_theta = ps[..., 0] * _expect_noise(lambda n: loss_fprime(loss, ps * (th + n)), s, k)
        g_psi = _expect_noise(lambda n: -n * loss_fprime(loss, ps * (-n)), s, k) + _expect_noise(
            lambda n: (th + n) * loss_fprime(loss, ps * (th + n)), s, k
        )
        return g_theta, g_psi
    fp = loss_fprime(loss, psi * theta)
    g_theta, g_psi = psi * fp, theta * fp
    if reg == "ar":
        g_psi = g_psi - params.lambda_reg * 2.0 * params.delta**2 * psi
    elif reg == "rfm":
        g_psi = g_psi - params.lambda_reg * 2.0 * params.alpha * psi
    elif reg == "gp":
        g_psi = g_psi - params.gp_weight * 2.0 * (np.abs(psi) - 1.0) * np.sign(psi)
    return g_theta, g_psi


def project(loss: str, reg: str, theta: float, psi: float, params: Params = Params()) -> float:
    """psi moved into the hard constraint's feasible set (unchanged for the soft regularisers).

    Robust discriminator: clipped to |psi| <= eps / delta. Robust loss: scaled towards 0 (where the
    constraint always holds) to the largest feasible multiple, by bisection.
    """
    if reg == "robust_discriminator":
        bound = params.eps / params.delta
        return float(np.clip(psi, -bound, bound))
    if reg == "robust_loss" and not feasible(loss, reg, theta, psi, params):
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if feasible(loss, reg, theta, mid * psi, params):
                lo = mid
            else:
                hi = mid
        return lo * psi
    return psi


def train(
    loss: str,
    reg: str,
    params: Params = Params(),
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    update: str = "alternating",
    initial: Tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Gradient dynamics of the Dirac-GAN: the (steps + 1, 2) path of (theta, psi).

    The generator descends L, the discriminator ascends L - lambda rho (then psi is projected onto a
    hard constraint). alternating: the discriminator's step, then the generator's against the new
    psi; simultaneous: both from the same point. A path that passes 1e100 stops; its remaining rows
    are NaN.
    """
    _check(loss, reg)
    params.validate()
    if update not in UPDATES:
        raise ValueError(f"Unknown update {update!r}; choose from {', '.join(UPDATES)}.")
    if steps < 0 or not learning_rate > 0:
        raise ValueError(f"Need steps >= 0 and learning_rate > 0, got {steps} and {learning_rate}.")
    path = np.full((steps + 1, 2), np.nan)
    theta, psi = float(initial[0]), float(initial[1])
    path[0] = theta, psi
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(steps):
            if update == "simultaneous":
                g_theta, g_psi = gradients(loss, reg, theta, psi, params)
                new_psi = project(loss, reg, theta, psi + learning_rate * float(g_psi), params)
                theta, psi = theta - learning_rate * float(g_theta), new_psi
            else:
                g_psi = gradients(loss, reg, theta, psi, params)[1]
                psi = project(loss, reg, theta, psi + learning_rate * float(g_psi), params)
                theta = theta - learning_rate * float(gradients(loss, reg, theta, psi, params)[0])
            if not (abs(theta) < _DIVERGED and abs(psi) < _DIVERGED):
                break
            path[i + 1] = theta, psi
    return path


def summarize_path(path: np.ndarray) -> Dict[str, object]:
    """Start, end, distances to the optimum (0, 0), and the distances over the last half."""
    dist = np.hypot(path[:, 0], path[:, 1])
    diverged = bool(np.isnan(dist).any())
    half = dist[len(dist) // 2 :]
    return {
        "start": path[0].tolist(),
        "end": path[-1].tolist() if not diverged else [math.nan, math.nan],
        "distance_start": float(dist[0]),
        "distance_end": float(dist[-1]) if not diverged else math.inf,
        "min_distance_last_half": float(np.nanmin(half)) if not np.isnan(half).all() else math.inf,
        "max_distance_last_half": float(np.nanmax(half)) if not diverged else math.inf,
        "diverged": diverged,
    }


# ---------------------------------------------------------------------------
# Figures and results.


def theta_grid(theta_max: float = 2.0, num: int = 401) -> np.ndarray:
    """linspace(-theta_max, theta_max, num) with an exact 0 when num is odd."""
    grid = np.linspace(-theta_max, theta_max, num)
    grid[np.abs(grid) < 1e-12 * theta_max] = 0.0
    return np.round(grid, 12) + 0.0


_REG_TITLES = {
    "none": "unregularised (Fig. 2a)",
    "noise": "instance noise, sigma={noise_sigma:g}",
    "gp": "gradient penalty, weight {gp_weight:g}",
    "ar": "AR, lambda={lambda_reg:g}, delta={delta:g} (Fig. 2d)",
    "rfm": "RFM, lambda={lambda_reg:g}, alpha={alpha:g}, delta={delta:g}",
    "robust_loss": "robust loss |df| <= {eps:g}, |u| <= {delta:g} (Fig. 2b)",
    "robust_discriminator": "robust D |dD| <= {eps:g}, |u| <= {delta:g} (Fig. 2c)",
}
_COLORS = {"gan": "tab:blue", "lsgan": "tab:green", "wgan": "tab:red"}


def plot_objectives(
    theta: np.ndarray, objectives: Dict[str, Dict[str, np.ndarray]], params: Params, path: str
):
    """objective.png: l(theta) per regulariser (panels) and loss (curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regs = list(objectives)
    cols = 4
    rows = -(-(len(regs) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    fmt = dataclasses.asdict(params)
    for ax, reg in zip(axes.flat, regs):
        infinite = clipped = False
        for loss, values in objectives[reg].items():
            shown = np.minimum(values, _PLOT_TOP)
            infinite |= bool(np.isinf(values).any())
            clipped |= bool((np.isfinite(values) & (values > _PLOT_TOP * (1 + 1e-9))).any())
            ax.plot(theta, shown, color=_COLORS[loss], label=LOSS_NAMES[loss], lw=1.5)
        title = _REG_TITLES[reg].format(**fmt)
        what = " and ".join(w for w, on in (("+inf", infinite), (f"values > {_PLOT_TOP:g}", clipped)) if on)
        if what:
            title += f"\n({what} drawn at {_PLOT_TOP:g})"
        ax.set_title(title, fontsize=9)
        ax.set_ylim(_PLOT_BOTTOM, _PLOT_TOP + 0.15)
        ax.set_xlim(theta[0], theta[-1])
        ax.axhline(_PLOT_TOP, color="0.7", lw=0.8, ls=":")
        ax.set_xlabel("theta")
        ax.set_ylabel("l(theta)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(regs) :]:
        ax.axis("off")
    notes = axes.flat[len(regs)] if len(regs) < axes.size else None
    if notes is not None:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        notes.legend(handles, labels, loc="upper left", fontsize=10)
        notes.text(
            0.0,
            0.55,
            "l(theta) = max_psi f(0) + f(psi theta) - lambda rho\n"
            "GAN f(t) = log sigmoid(t)\nLSGAN f(t) = -(1+t)^2/2\nWGAN f(t) = t\n"
            + ", ".join(f"{k}={v:g}" for k, v in fmt.items() if k != "noise_nodes"),
            va="top",
            fontsize=8,
            wrap=True,
        )
    fig.suptitle("Dirac-GAN: the generator's objective (Zhou & Krähenbühl 2019, Figure 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(
    paths: Dict[str, Dict[str, np.ndarray]], params: Params, update: str, path: str, extent: float = 2.0
):
    """trajectories.png: (theta, psi) paths over the vector field, rows = losses, columns = regs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(paths)
    regs = list(paths[losses[0]]) if losses else []
    fig, axes = plt.subplots(
        len(losses), len(regs), figsize=(3.8 * len(regs), 3.6 * len(losses)), squeeze=False
    )
    grid = np.linspace(-extent, extent, 17)
    tg, pg = np.meshgrid(grid, grid)
    for r, loss in enumerate(losses):
        for c, reg in enumerate(regs):
            ax = axes[r, c]
            g_theta, g_psi = gradients(loss, reg, tg, pg, params)
            u, v = -g_theta, g_psi
            if reg in ("robust_discriminator", "robust_loss"):
                ok = feasible(loss, reg, tg, pg, params)
                u, v = np.where(ok, u, np.nan), np.where(ok, v, np.nan)
            norm = np.hypot(u, v)
            norm = np.where(norm > 0, norm, 1.0)
            ax.quiver(tg, pg, u / norm, v / norm, color="0.6", angles="xy", scale=22, width=0.004)
            p = paths[loss][reg]
            s = summarize_path(p)
            ax.plot(p[:, 0], p[:, 1], color=_COLORS[loss], lw=1.2)
            ax.plot(*p[0], "ko", ms=5)
            if not s["diverged"]:
                ax.plot(*p[-1], "o", color=_COLORS[loss], ms=5, mec="k")
            ax.plot(0, 0, "*", color="gold", ms=12, mec="k")
            if reg == "robust_discriminator":
                for sign in (-1, 1):
                    ax.axhline(sign * params.eps / params.delta, color="k", lw=0.8, ls="--")
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_xlabel("theta")
            ax.set_ylabel("psi")
            end = "diverged" if s["diverged"] else f"|end| = {s['distance_end']:.3g}"
            name = {"none": "unregularised", "robust_discriminator": "robust D"}.get(reg, reg.upper())
            ax.set_title(f"{LOSS_NAMES[loss]}, {name}: {end}", fontsize=9)
    fig.suptitle(
        f"Dirac-GAN training from (1, 1), {update} updates (Figure 5); "
        f"lambda={params.lambda_reg:g}, delta={params.delta:g}, eps={params.eps:g}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(value):
    """Floats with +-inf as "inf"/"-inf" and NaN as null (strict JSON)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _dumps(result: dict) -> str:
    """Strict JSON (see _jsonable), indented, with each list of numbers or names on one line."""
    text = json.dumps(_jsonable(result), indent=1, allow_nan=False, ensure_ascii=False)
    return re.sub(
        r"\[([-\w\s.,\"+]*)\]", lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]", text
    )


def run_experiment(
    output_dir: str,
    params: Params = Params(),
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    update: str = "alternating",
    theta_max: float = 2.0,
    num_theta: int = 401,
    initial: Tuple[float, float] = (1.0, 1.0),
    trajectory_losses: Sequence[str] = DEFAULT_TRAJECTORY_LOSSES,
    trajectory_regularizers: Sequence[str] = DEFAULT_TRAJECTORY_REGULARIZERS,
) -> Dict[str, str]:
    """Computes both figures' numbers, writes objective.png, trajectories.png, dirac_gan.json.

    Returns:
      {"objective_png", "trajectories_png", "json"}: the paths written.
    """
    params.validate()
    for loss in trajectory_losses:
        _check(loss, "none")
    for reg in trajectory_regularizers:
        _check("gan", reg)
    if not trajectory_losses or not trajectory_regularizers:
        raise ValueError("Need at least one trajectory loss and one trajectory regularizer.")
    if not (theta_max > 0 and num_theta >= 3):
        raise ValueError(f"Need theta_max > 0 and num_theta >= 3, got {theta_max} and {num_theta}.")
    theta = theta_grid(theta_max, num_theta)
    objectives = {
        reg: {loss: generator_objective(loss, reg, theta, params) for loss in LOSSES} for reg in REGULARIZERS
    }
    paths = {
        loss: {
            reg: train(loss, reg, params, steps, learning_rate, update, initial)
            for reg in trajectory_regularizers
        }
        for loss in trajectory_losses
    }
    os.makedirs(output_dir, exist_ok=True)
    files = {
        "objective_png": os.path.join(output_dir, "objective.png"),
        "trajectories_png": os.path.join(output_dir, "trajectories.png"),
        "json": os.path.join(output_dir, "dirac_gan.json"),
    }
    plot_objectives(theta, objectives, params, files["objective_png"])
    plot_trajectories(paths, params, update, files["trajectories_png"])
    result = {
        "paper": "Zhou & Krähenbühl, Don't let your discriminator be fooled, ICLR 2019: Figure 2, Figure 5",
        "parameters": {
            **dataclasses.asdict(params),
            "steps": steps,
            "learning_rate": learning_rate,
            "update": update,
            "initial_theta": initial[0],
            "initial_psi": initial[1],
            "theta_max": theta_max,
            "num_theta": num_theta,
            "psi_grid": "0, +-logspace(-6, 12, 1801) (451 for instance noise), constraint boundaries; "
            "golden-section refinement between the best grid point's neighbours",
            "trajectory_losses": list(trajectory_losses),
            "trajectory_regularizers": list(trajectory_regularizers),
        },
        "definitions": {
            "objective": "l(theta) = max_psi f(0) + f(psi theta) - weight * rho(psi), psi within a hard constraint",
            "f": {"gan": "log sigmoid(t)", "lsgan": "-(1 + t)^2 / 2", "wgan": "t"},
            "rho": {
                "none": "0",
                "noise": "0; L = E f(-psi n1) + E f(psi (theta + n2)), n ~ N(0, noise_sigma^2)",
                "gp": "(|psi| - 1)^2, weight gp_weight",
                "ar": "delta^2 psi^2, weight lambda_reg",
                "rfm": "delta^2 + alpha psi^2, weight lambda_reg",
                "robust_loss": "constraint max_{|u|<=delta} |f(psi theta) - f(psi (theta + u))| <= eps",
                "robust_discriminator": "constraint |psi| delta <= eps",
            },
            "inf": 'unbounded objectives are written as "inf"',
        },
        "theta": theta,
        "objective": objectives,
        "trajectories": {
            loss: {reg: summarize_path(p) for reg, p in by_reg.items()} for loss, by_reg in paths.items()
        },
        "files": {k: os.path.basename(v) for k, v in files.items()},
    }
    with open(files["json"], "w") as f:
        f.write(_dumps(result))
    return files


# ---------------------------------------------------------------------------
# Command line.


def define_dirac_gan_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the flags of ``jarn_tf.gan.dirac`` (all optional but --output_dir)."""
    d = Params()
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where objective.png, trajectories.png and dirac_gan.json go. Required.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lambda_reg", d.lambda_reg, "Weight lambda of AR and RFM.", lower_bound=0.0, flag_values=flag_values
    )
    flags.DEFINE_float(
        "delta",
        d.delta,
        "Attack radius delta of AR, RFM and the hard constraints, in units of theta. 0.5, not the paper's "
        "image-space 0.05, which makes AR so weak in the toy (WGAN + AR = theta^2 / 0.01) that its panel "
        "and trajectories show little; with 0.5 and lambda 1, WGAN + AR = theta^2.",
        lower_bound=1e-12,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "alpha",
        d.alpha,
        "RFM's weight decay alpha on w = psi. 0.1, not the paper's 1e-4, which leaves the 1-D RFM panel "
        "unregularised-looking outside |theta| < 0.01 (RFM with phi(x) = x is weight decay in 1-D).",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "gp_weight",
        d.gp_weight,
        "Weight of the gradient penalty (WGAN-GP's 10). Its trajectories (--trajectory_regularizers=gp) "
        "are stable only for --learning_rate < 1/gp_weight.",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "noise_sigma",
        d.noise_sigma,
        "Standard deviation of the instance noise.",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "eps",
        d.eps,
        "Bound eps of the hard constraints (robust loss, robust discriminator |psi| <= eps/delta). 0.5: with "
        "delta 0.5 the robust discriminator is 1-Lipschitz, its WGAN objective |theta|.",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "steps", DEFAULT_STEPS, "Training steps of each trajectory.", lower_bound=0, flag_values=flag_values
    )
    flags.DEFINE_float(
        "learning_rate",
        DEFAULT_LEARNING_RATE,
        "Step size h of both players.",
        lower_bound=1e-12,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "update",
        "alternating",
        list(UPDATES),
        "alternating: the discriminator's step, then the generator's (Figure 5's caption); simultaneous: "
        "both from the same point (appendix E's text).",
        flag_values=flag_values,
    )
    flags.DEFINE_float("initial_theta", 1.0, "Starting theta of the trajectories.", flag_values=flag_values)
    flags.DEFINE_float("initial_psi", 1.0, "Starting psi of the trajectories.", flag_values=flag_values)
    flags.DEFINE_list(
        "trajectory_losses",
        list(DEFAULT_TRAJECTORY_LOSSES),
        f"Rows of trajectories.png: {', '.join(LOSSES)}.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "trajectory_regularizers",
        list(DEFAULT_TRAJECTORY_REGULARIZERS),
        f"Columns of trajectories.png: {', '.join(REGULARIZERS)}.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "theta_max",
        2.0,
        "objective.png spans theta in [-theta_max, theta_max].",
        lower_bound=1e-9,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_theta",
        401,
        "Points of the theta grid (odd: includes 0).",
        lower_bound=3,
        flag_values=flag_values,
    )


def main(argv, flag_values: Optional[flags.FlagValues] = None) -> Optional[int]:
    fv = flags.FLAGS if flag_values is None else flag_values
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not fv.output_dir:
        print("error: --output_dir is required.", file=sys.stderr)
        return 2
    try:
        params = Params(
            lambda_reg=fv.lambda_reg,
            delta=fv.delta,
            alpha=fv.alpha,
            gp_weight=fv.gp_weight,
            noise_sigma=fv.noise_sigma,
            eps=fv.eps,
        )
        params.validate()
        output_dir = os.path.abspath(fv.output_dir)
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise ValueError(f"--output_dir={output_dir} is a file; pass a directory.")
        files = run_experiment(
            output_dir,
            params,
            steps=fv.steps,
            learning_rate=fv.learning_rate,
            update=fv.update,
            theta_max=fv.theta_max,
            num_theta=fv.num_theta,
            initial=(fv.initial_theta, fv.initial_psi),
            trajectory_losses=[s.strip().lower() for s in fv.trajectory_losses],
            trajectory_regularizers=[s.strip().lower() for s in fv.trajectory_regularizers],
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(files["json"]) as f:
        summary = json.load(f)["trajectories"]
    print(
        f"Dirac-GAN, {fv.update} updates, {fv.steps} steps of {fv.learning_rate:g} from ({fv.initial_theta:g}, {fv.initial_psi:g}):"
    )
    for loss, by_reg in summary.items():
        for reg, s in by_reg.items():
            print(f"  {LOSS_NAMES[loss]:5s} {reg:20s} distance to (0, 0) at the end: {s['distance_end']}")
    print(f"Objective (Figure 2): {files['objective_png']}")
    print(f"Trajectories (Figure 5): {files['trajectories_png']}")
    print(f"Numbers and parameters: {files['json']}")
    return 0


def run() -> None:
    """Console-script entry point ``jarn-dirac-gan``."""
    from jarn_tf.core import flag_utils

    define_dirac_gan_flags()
    flag_utils.help_for_console_script(__name__, __doc__)
    app.run(main)


if __name__ == "__main__":
    run()
