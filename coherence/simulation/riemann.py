"""Exact Riemann solver for the 1-D Euler equations of an ideal gas (Toro, ch. 4).

Why: the finite-volume solver in ``euler.py`` is validated against exact solutions, so the
reference must be independent of it. This is the textbook construction in float64 numpy:

- Pressure function (Toro eq. 4.5–4.7), for side K with sound speed a_K:
  f_K(p) = 2 a_K/(γ−1) [(p/p_K)^((γ−1)/(2γ)) − 1]          if p ≤ p_K (rarefaction),
  f_K(p) = (p − p_K) sqrt(A_K / (p + B_K))                   if p > p_K (shock),
  A_K = 2/((γ+1) ρ_K), B_K = (γ−1)/(γ+1) p_K.
  The star pressure p* solves f(p) = f_L(p) + f_R(p) + (u_R − u_L) = 0, and
  u* = ½(u_L + u_R) + ½(f_R(p*) − f_L(p*)).
- f is increasing and concave, so Newton's method converges monotonically once an iterate
  lies below the root; an overshoot past zero is clamped to a small positive pressure.
- Vacuum is generated when u_R − u_L ≥ 2(a_L + a_R)/(γ−1) (pressure positivity condition,
  Toro eq. 4.40); that case is detected and raised, not solved.
- Sampling (Toro §4.5) is vectorised over ξ = (x − x0)/t with boolean masks: left/right
  state, star states, and the self-similar rarefaction fans.

Cost: a handful of Newton iterations on scalars, then O(len(x)) vectorised numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from coherence.errors import RequestError, SimulationError

_MAX_NEWTON = 100
_NEWTON_RTOL = 1e-14


class StarState(NamedTuple):
    """The constant states between the two nonlinear waves: pressure, velocity, densities."""

    p: float
    u: float
    rho_left: float
    rho_right: float


def _check_state(name: str, state: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        rho, u, p = (float(v) for v in state)
    except (TypeError, ValueError):
        raise RequestError(
            f"{name} must be a (rho, u, p) triple of numbers, got {state!r}"
        ) from None
    if not (np.isfinite(rho) and np.isfinite(u) and np.isfinite(p)):
        raise RequestError(f"{name} = {state!r} must be finite")
    if rho <= 0 or p <= 0:
        raise RequestError(
            f"{name} = {state!r} needs density > 0 and pressure > 0; pass a physical state"
        )
    return rho, u, p


def _pressure_function(
    p: float, rho_k: float, p_k: float, a_k: float, gamma: float
) -> tuple[float, float]:
    """f_K(p) and its derivative (Toro eq. 4.6, 4.7, 4.37)."""
    if p <= p_k:  # rarefaction
        ratio = p / p_k
        f = 2.0 * a_k / (gamma - 1.0) * (ratio ** ((gamma - 1.0) / (2.0 * gamma)) - 1.0)
        df = ratio ** (-(gamma + 1.0) / (2.0 * gamma)) / (rho_k * a_k)
        return f, df
    a_coef = 2.0 / ((gamma + 1.0) * rho_k)
    b_coef = (gamma - 1.0) / (gamma + 1.0) * p_k
    root = np.sqrt(a_coef / (p + b_coef))
    f = (p - p_k) * root
    df = root * (1.0 - 0.5 * (p - p_k) / (b_coef + p))
    return f, df


def _initial_guess(
    left: tuple[float, float, float],
    right: tuple[float, float, float],
    a_l: float,
    a_r: float,
    gamma: float,
) -> float:
    """Toro's adaptive guess (§9.5.1): PVRS, switching to two-rarefaction or two-shock."""
    rho_l, u_l, p_l = left
    rho_r, u_r, p_r = right
    p_min, p_max = min(p_l, p_r), max(p_l, p_r)
    p_pv = 0.5 * (p_l + p_r) - 0.125 * (u_r - u_l) * (rho_l + rho_r) * (a_l + a_r)
    p_pv = max(p_pv, 0.0)
    if p_max / p_min <= 2.0 and p_min <= p_pv <= p_max:
        return max(p_pv, 1e-12 * p_max)
    if p_pv < p_min:  # two rarefactions (exact for that case)
        z = (gamma - 1.0) / (2.0 * gamma)
        num = a_l + a_r - 0.5 * (gamma - 1.0) * (u_r - u_l)
        den = a_l / p_l**z + a_r / p_r**z
        return max((num / den) ** (1.0 / z), 1e-12 * p_max)
    # two shocks
    g_l = np.sqrt(2.0 / ((gamma + 1.0) * rho_l) / (p_pv + (gamma - 1.0) / (gamma + 1.0) * p_l))
    g_r = np.sqrt(2.0 / ((gamma + 1.0) * rho_r) / (p_pv + (gamma - 1.0) / (gamma + 1.0) * p_r))
    p_ts = (g_l * p_l + g_r * p_r - (u_r - u_l)) / (g_l + g_r)
    return max(p_ts, 1e-12 * p_max)


def star_state(
    left: tuple[float, float, float],
    right: tuple[float, float, float],
    gamma: float = 1.4,
) -> StarState:
    """Solve for p*, u* and the two star densities (Toro §4.3, eq. 4.50, 4.53, 4.57, 4.60).

    Raises SimulationError when the data generate vacuum (no star region exists).
    """
    if not gamma > 1.0:
        raise RequestError(f"gamma = {gamma!r} must be > 1 for an ideal gas")
    rho_l, u_l, p_l = left = _check_state("left", left)
    rho_r, u_r, p_r = right = _check_state("right", right)
    a_l = np.sqrt(gamma * p_l / rho_l)
    a_r = np.sqrt(gamma * p_r / rho_r)
    du = u_r - u_l
    if 2.0 * (a_l + a_r) / (gamma - 1.0) <= du:
        raise SimulationError(
            f"left={left}, right={right} generate vacuum (u_R − u_L = {du:.6g} ≥ "
            f"2(a_L + a_R)/(γ−1) = {2 * (a_l + a_r) / (gamma - 1):.6g}); the exact solver "
            "does not handle vacuum, reduce the velocity jump"
        )
    p = _initial_guess(left, right, a_l, a_r, gamma)
    p_floor = 1e-14 * max(p_l, p_r)
    for _ in range(_MAX_NEWTON):
        f_l, df_l = _pressure_function(p, rho_l, p_l, a_l, gamma)
        f_r, df_r = _pressure_function(p, rho_r, p_r, a_r, gamma)
        p_new = max(p - (f_l + f_r + du) / (df_l + df_r), p_floor)
        change = 2.0 * abs(p_new - p) / (p_new + p)
        p = p_new
        if change < _NEWTON_RTOL:
            break
    else:
        raise SimulationError(
            f"Newton iteration for p* did not converge for left={left}, right={right}"
        )
    f_l, _ = _pressure_function(p, rho_l, p_l, a_l, gamma)
    f_r, _ = _pressure_function(p, rho_r, p_r, a_r, gamma)
    u = 0.5 * (u_l + u_r) + 0.5 * (f_r - f_l)
    return StarState(
        p=float(p),
        u=float(u),
        rho_left=float(_star_density(p, rho_l, p_l, gamma)),
        rho_right=float(_star_density(p, rho_r, p_r, gamma)),
    )


def wave_extent(
    left: tuple[float, float, float],
    right: tuple[float, float, float],
    gamma: float = 1.4,
) -> tuple[float, float]:
    """Slowest and fastest signal speeds of the solution (shock speeds or rarefaction heads).

    Outside [x0 + s_min t, x0 + s_max t] the solution still equals the initial data; tests use
    this to place several Riemann problems on a periodic domain without interaction.
    """
    star = star_state(left, right, gamma)
    sides = ((_check_state("left", left), 1.0), (_check_state("right", right), -1.0))
    extent = []
    for (rho_k, u_k, p_k), sign in sides:
        a_k = np.sqrt(gamma * p_k / rho_k)
        if star.p > p_k:
            q = np.sqrt(
                (gamma + 1.0) / (2.0 * gamma) * star.p / p_k + (gamma - 1.0) / (2.0 * gamma)
            )
            extent.append(u_k - sign * a_k * q)
        else:
            extent.append(u_k - sign * a_k)
    return float(extent[0]), float(extent[1])


def _star_density(p_star: float, rho_k: float, p_k: float, gamma: float) -> float:
    """Shock: Rankine–Hugoniot (Toro 4.50); rarefaction: isentropic law (Toro 4.53)."""
    ratio = p_star / p_k
    if p_star > p_k:
        g = (gamma - 1.0) / (gamma + 1.0)
        return rho_k * (ratio + g) / (g * ratio + 1.0)
    return rho_k * ratio ** (1.0 / gamma)


def _sample_side(
    xi: np.ndarray,
    state: tuple[float, float, float],
    star: StarState,
    gamma: float,
    sign: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solution at speeds xi on one side of the contact; sign = +1 left, −1 right.

    The right side is the mirror image of the left one: (x, u) → (−x, −u).
    """
    rho_k, u_k, p_k = state
    u_k = sign * u_k
    u_star = sign * star.u
    rho_star = star.rho_left if sign > 0 else star.rho_right
    s = sign * xi  # mirrored speeds
    a_k = np.sqrt(gamma * p_k / rho_k)
    rho = np.full_like(xi, rho_k)
    u = np.full_like(xi, u_k)
    p = np.full_like(xi, p_k)
    if star.p > p_k:  # shock (Toro 4.52)
        speed = u_k - a_k * np.sqrt(
            (gamma + 1.0) / (2.0 * gamma) * star.p / p_k + (gamma - 1.0) / (2.0 * gamma)
        )
        behind = s > speed
        rho[behind], u[behind], p[behind] = rho_star, u_star, star.p
    else:  # rarefaction (Toro 4.54–4.56)
        head = u_k - a_k
        tail = u_star - a_k * (star.p / p_k) ** ((gamma - 1.0) / (2.0 * gamma))
        star_region = s >= tail
        fan = (s > head) & ~star_region
        rho[star_region], u[star_region], p[star_region] = rho_star, u_star, star.p
        bracket = 2.0 / (gamma + 1.0) + (gamma - 1.0) / ((gamma + 1.0) * a_k) * (u_k - s[fan])
        rho[fan] = rho_k * bracket ** (2.0 / (gamma - 1.0))
        u[fan] = 2.0 / (gamma + 1.0) * (a_k + 0.5 * (gamma - 1.0) * u_k + s[fan])
        p[fan] = p_k * bracket ** (2.0 * gamma / (gamma - 1.0))
    return rho, sign * u, p


def exact_riemann(
    left: tuple[float, float, float],
    right: tuple[float, float, float],
    x: np.ndarray,
    t: float,
    x0: float = 0.5,
    gamma: float = 1.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (rho, u, p) at positions x and time t ≥ 0 for the jump left | right at x0.

    States are (rho, u, p) triples; the result arrays have the shape of x (float64). At t = 0
    the initial data are returned (x < x0 → left). Raises SimulationError on vacuum.
    """
    x = np.asarray(x, dtype=np.float64)
    t = float(t)
    if not (np.isfinite(t) and t >= 0.0):
        raise RequestError(f"t = {t!r} must be a finite time ≥ 0")
    star = star_state(left, right, gamma)
    left = _check_state("left", left)
    right = _check_state("right", right)
    xi = np.where(x < x0, -np.inf, np.inf) if t == 0.0 else (x - x0) / t
    flat = xi.reshape(-1)
    on_left = flat < star.u
    rho = np.empty_like(flat)
    u = np.empty_like(flat)
    p = np.empty_like(flat)
    for mask, state, sign in ((on_left, left, 1.0), (~on_left, right, -1.0)):
        r_k, u_k, p_k = _sample_side(flat[mask], state, star, gamma, sign)
        rho[mask], u[mask], p[mask] = r_k, u_k, p_k
    return rho.reshape(x.shape), u.reshape(x.shape), p.reshape(x.shape)
