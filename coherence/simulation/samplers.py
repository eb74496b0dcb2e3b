"""The samplers of the initial-condition classes (``classes`` names and documents them).

Each sampler maps (n, resolution, generator) to float64 states [n, F, R, R] at the cell
centres; it draws one generator per sample (``_sample_generators``) so sample i never depends
on n. CE samplers return conserved (ρ, ρu, ρv, E); NS samplers a divergence-free velocity in
the solver's 2/3-rule band at RMS speed ``NS_RMS_SPEED``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from coherence.errors import SimulationError
from coherence.simulation import navier_stokes
from coherence.simulation.families import EULER_GAMMA

NS_RMS_SPEED = 0.5
DTYPE = torch.float64


# ---------------------------------------------------------------------------------- random draws


def _sample_generators(n: int, gen: torch.Generator) -> list[torch.Generator]:
    """One generator per sample, seeded from `gen`, so a sample's draws never shift others."""
    seeds = torch.randint(0, 2**62, (n,), generator=gen, dtype=torch.int64)
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def _uniform(g: torch.Generator, lo: float, hi: float, size: int | None = None) -> Tensor:
    shape = () if size is None else (size,)
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=DTYPE)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _stack(samples: list[Tensor]) -> Tensor:
    return torch.stack(samples).to(DTYPE)


# ---------------------------------------------------------------------- compressible Euler (CE)


def _cell_centres(resolution: int) -> Tensor:
    return (torch.arange(resolution, dtype=DTYPE) + 0.5) / resolution


def _grid(resolution: int) -> tuple[Tensor, Tensor]:
    """Cell-centre coordinates (X, Y), each [R, R], indexed [y, x]."""
    c = _cell_centres(resolution)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y


def _conserved(rho: Tensor, u: Tensor, v: Tensor, p: Tensor) -> Tensor:
    """(ρ, u, v, p) → (ρ, ρu, ρv, E), E = p/(γ−1) + ½ρ(u² + v²); returns [4, R, R]."""
    energy = p / (EULER_GAMMA - 1) + 0.5 * rho * (u**2 + v**2)
    return torch.stack((rho, rho * u, rho * v, energy))


def _random_states(g: torch.Generator) -> Tensor:
    """Four constant states [4 quadrants, (ρ, u, v, p)]: ρ, p ~ U[0.1, 1], |u| ~ U[0, 1]."""
    rho = _uniform(g, 0.1, 1.0, 4)
    p = _uniform(g, 0.1, 1.0, 4)
    speed = _uniform(g, 0.0, 1.0, 4)
    angle = _uniform(g, 0.0, 2 * math.pi, 4)
    return torch.stack((rho, speed * torch.cos(angle), speed * torch.sin(angle), p), dim=1)


def _quadrants(states: Tensor, right: Tensor, top: Tensor) -> Tensor:
    """Fill quadrant q = right + 2·top (0 = bottom-left … 3 = top-right) with states[q]."""
    q = right.long() + 2 * top.long()  # (R, R)
    prim = states[q]  # (R, R, 4)
    return _conserved(prim[..., 0], prim[..., 1], prim[..., 2], prim[..., 3])


def _sine_series(g: torch.Generator, coord: Tensor, modes: int) -> Tensor:
    """Σ_{k=1..modes} a_k sin(2πk·coord + φ_k), a_k ~ U[−1, 1], φ_k ~ U[0, 2π); Σ|a_k| = 1."""
    a = _uniform(g, -1.0, 1.0, modes)
    phi = _uniform(g, 0.0, 2 * math.pi, modes)
    k = torch.arange(1, modes + 1, dtype=DTYPE)
    series = (a * torch.sin(2 * math.pi * k * coord[..., None] + phi)).sum(-1)
    return series / a.abs().sum()


def ce_rp(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        xs, ys = _uniform(g, 0.25, 0.75), _uniform(g, 0.25, 0.75)
        out.append(_quadrants(_random_states(g), x > xs, y > ys))
    return _stack(out)


def ce_crp(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        xs, ys = _uniform(g, 0.25, 0.75), _uniform(g, 0.25, 0.75)
        states = _random_states(g)
        amp_x, amp_y = _uniform(g, 0.05, 0.15), _uniform(g, 0.05, 0.15)
        curve_x = xs + amp_x * _sine_series(g, y, 3)  # interface x = X(y)
        curve_y = ys + amp_y * _sine_series(g, x, 3)  # interface y = Y(x)
        out.append(_quadrants(states, x > curve_x, y > curve_y))
    return _stack(out)


def ce_rpui(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        xs, ys = _uniform(g, 0.25, 0.75), _uniform(g, 0.25, 0.75)
        heavy, light = _uniform(g, 0.6, 1.0, 2), _uniform(g, 0.1, 0.4, 2)
        rho = torch.stack((heavy[0], light[0], light[1], heavy[1]))  # checkerboard
        # u jumps across y = ys and v across x = xs: shear on every interface.
        s_u, s_v = (1.0 if float(_uniform(g, 0, 1)) < 0.5 else -1.0 for _ in range(2))
        u_top, u_bot = s_u * _uniform(g, 0.2, 0.7), -s_u * _uniform(g, 0.2, 0.7)
        v_right, v_left = s_v * _uniform(g, 0.2, 0.7), -s_v * _uniform(g, 0.2, 0.7)
        u = torch.stack((u_bot, u_bot, u_top, u_top))
        v = torch.stack((v_left, v_right, v_left, v_right))
        p = _uniform(g, 0.1, 1.0, 4)
        states = torch.stack((rho, u, v, p), dim=1)
        eps_x, eps_y = _uniform(g, 0.01, 0.02), _uniform(g, 0.01, 0.02)
        curve_x = xs + eps_x * _sine_series(g, y, 8)
        curve_y = ys + eps_y * _sine_series(g, x, 8)
        out.append(_quadrants(states, x > curve_x, y > curve_y))
    return _stack(out)


def _periodic_offset(a: Tensor, centre: Tensor) -> Tensor:
    """Minimum-image signed distance a − centre on the unit circle, in [−½, ½)."""
    return torch.remainder(a - centre + 0.5, 1.0) - 0.5


def ce_kh(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        y0, half_width = _uniform(g, 0.0, 1.0), _uniform(g, 0.2, 0.3)
        rho_out = _uniform(g, 0.5, 1.0)
        rho_in = rho_out * _uniform(g, 1.5, 3.0)
        shear = _uniform(g, 0.5, 1.5)
        p0 = _uniform(g, 1.5, 3.0)
        amp, sigma = _uniform(g, 0.005, 0.02), _uniform(g, 0.03, 0.06)
        dy = _periodic_offset(y, y0)
        inside = dy.abs() < half_width
        rho = torch.where(inside, rho_in, rho_out)
        u = torch.where(inside, 0.5 * shear, -0.5 * shear)
        bump = torch.exp(-((dy.abs() - half_width) ** 2) / (2 * sigma**2))
        v = amp * _sine_series(g, x, 4) * bump
        out.append(_conserved(rho, u, v, torch.full_like(rho, float(p0))))
    return _stack(out)


def ce_gauss(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        rho = torch.full_like(x, float(_uniform(g, 0.5, 1.0)))
        p = torch.full_like(x, float(_uniform(g, 0.5, 1.0)))
        u0, v0 = _uniform(g, -0.5, 0.5), _uniform(g, -0.5, 0.5)
        for _ in range(_randint(g, 1, 4)):
            cx, cy = _uniform(g, 0.0, 1.0), _uniform(g, 0.0, 1.0)
            sigma = _uniform(g, 0.04, 0.1)
            r2 = _periodic_offset(x, cx) ** 2 + _periodic_offset(y, cy) ** 2
            bump = torch.exp(-r2 / (2 * sigma**2))
            rho = rho + _uniform(g, 0.0, 1.0) * bump
            p = p + _uniform(g, 0.0, 1.0) * bump
        out.append(_conserved(rho, torch.full_like(x, float(u0)), torch.full_like(x, float(v0)), p))
    return _stack(out)


# ---------------------------------------------------------------- incompressible Navier–Stokes


def _band(resolution: int) -> int:
    """Largest integer wavenumber K kept by the solver's 2/3 rule: K < R/3."""
    return math.ceil(resolution / 3) - 1


def _velocity_from_stream(psi_hat: Tensor, resolution: int) -> Tensor:
    """Velocity [2, R, R] at cell centres of ψ(x) = Re Σ_n ψ̂_n exp(2πi n·x).

    psi_hat: complex [2K+1, 2K+1] indexed [n_y + K, n_x + K] with K ≤ _band(R); u = ∂y ψ,
    v = −∂x ψ, evaluated exactly (no aliasing, since 2K < R) by one inverse FFT per component.
    """
    k = (psi_hat.shape[0] - 1) // 2
    n = torch.arange(-k, k + 1)
    ny, nx = torch.meshgrid(n, n, indexing="ij")
    shift = torch.exp(1j * math.pi * (nx + ny).to(DTYPE) / resolution)  # x_j = (j + ½)/R
    coeff = psi_hat * shift
    full = torch.zeros((2, resolution, resolution), dtype=torch.complex128)
    iy, ix = ny % resolution, nx % resolution
    full[0, iy, ix] = 2j * math.pi * ny.to(DTYPE) * coeff
    full[1, iy, ix] = -2j * math.pi * nx.to(DTYPE) * coeff
    vel = torch.fft.ifft2(full).real * resolution**2  # (2, R, R)
    return _normalise_rms(vel)


def _normalise_rms(vel: Tensor) -> Tensor:
    rms = vel.pow(2).sum(0).mean().sqrt()
    if float(rms) == 0.0:
        raise SimulationError("an NS sample came out identically zero (a bug in the class)")
    return vel * (NS_RMS_SPEED / rms)


def ns_sines(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    k_max = min(4, _band(resolution))
    out = []
    for g in _sample_generators(n, gen):
        psi_hat = torch.zeros((2 * k_max + 1,) * 2, dtype=torch.complex128)
        for _ in range(_randint(g, 4, 8)):
            nx = ny = 0
            while nx == 0 and ny == 0:
                nx, ny = _randint(g, -k_max, k_max), _randint(g, -k_max, k_max)
            amp, phase = _uniform(g, 0.5, 1.0), _uniform(g, 0.0, 2 * math.pi)
            # ψ ∝ 1/|n|: every mode carries a velocity amplitude ∝ amp.
            psi_hat[ny + k_max, nx + k_max] += amp * torch.exp(1j * phase) / math.hypot(nx, ny)
        out.append(_velocity_from_stream(psi_hat, resolution))
    return _stack(out)


def ns_gauss(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    k = _band(resolution)
    m = torch.arange(-k, k + 1, dtype=DTYPE)
    ny, nx = torch.meshgrid(m, m, indexing="ij")
    n2 = nx**2 + ny**2
    inv_lap = torch.where(n2 > 0, 1.0 / (4 * math.pi**2 * torch.where(n2 > 0, n2, 1.0)), 0.0)
    out = []
    for g in _sample_generators(n, gen):
        omega_hat = torch.zeros_like(n2, dtype=torch.complex128)
        for _ in range(_randint(g, 4, 10)):
            cx, cy = _uniform(g, 0.0, 1.0), _uniform(g, 0.0, 1.0)
            sigma = _uniform(g, 0.05, 0.1)
            strength = _uniform(g, 0.5, 1.0) * (1.0 if float(_uniform(g, 0, 1)) < 0.5 else -1.0)
            # Fourier coefficients of the periodised Gaussian exp(−|x − c|²/(2σ²)).
            gauss = 2 * math.pi * sigma**2 * torch.exp(-2 * math.pi**2 * sigma**2 * n2)
            omega_hat += strength * gauss * torch.exp(-2j * math.pi * (nx * cx + ny * cy))
        # −Δψ = ω; dropping n = 0 removes the mean vorticity a periodic flow cannot carry.
        out.append(_velocity_from_stream(omega_hat * inv_lap, resolution))
    return _stack(out)


def _shells(k: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For s = 1..K the modes with |n|∞ = s: (row index n_y + K, column index n_x + K, |n|)."""
    m = torch.arange(-k, k + 1)
    ny, nx = torch.meshgrid(m, m, indexing="ij")
    linf = torch.maximum(ny.abs(), nx.abs())
    shells = []
    for s in range(1, k + 1):
        sel = linf == s
        norm = torch.hypot(ny[sel].to(DTYPE), nx[sel].to(DTYPE))
        shells.append((ny[sel] + k, nx[sel] + k, norm))
    return shells


def ns_bb(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    k = _band(resolution)
    shells = _shells(k)
    out = []
    for g in _sample_generators(n, gen):
        alpha = float(_uniform(g, 1.5, 2.5))
        psi_hat = torch.zeros((2 * k + 1,) * 2, dtype=torch.complex128)
        for iy, ix, norm in shells:
            # Each shell |n|∞ = s draws from its own generator, so coarse grids share shells.
            g_shell = torch.Generator(device="cpu").manual_seed(_randint(g, 0, 2**62))
            xi = torch.randn((norm.numel(), 2), generator=g_shell, dtype=DTYPE)
            # velocity coefficient ~ |n|^(−α), so ψ̂ ~ |n|^(−α−1)
            psi_hat[iy, ix] = torch.complex(xi[:, 0], xi[:, 1]) * norm ** (-alpha - 1)
        out.append(_velocity_from_stream(psi_hat, resolution))
    return _stack(out)


def ns_sl(n: int, resolution: int, gen: torch.Generator) -> Tensor:
    x, y = _grid(resolution)
    out = []
    for g in _sample_generators(n, gen):
        y0, delta = _uniform(g, 0.0, 1.0), _uniform(g, 1 / 40, 1 / 20)
        amp = _uniform(g, 0.03, 0.08)
        dy = _periodic_offset(y, y0)  # layers at dy = ±¼
        u = torch.tanh((dy + 0.25) / delta) - torch.tanh((dy - 0.25) / delta) - 1.0
        v = amp * _sine_series(g, x, 3)
        vel = torch.stack((u, v))[None]  # (1, 2, R, R)
        vel = navier_stokes.project_divergence_free(navier_stokes.band_limit(vel))[0]
        out.append(_normalise_rms(vel))
    return _stack(out)
