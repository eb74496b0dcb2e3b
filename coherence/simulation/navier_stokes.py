"""Incompressible 2-D Navier–Stokes on the periodic unit square, pseudo-spectral.

State: velocity (u, v) of shape [B, 2, H, W]; x runs along the last axis (W points), y along
axis H; grid spacing 1/W and 1/H. The solver advances the vorticity ω = ∂x v − ∂y u,

    ∂t ω + u·∇ω = ν Δω,   u = U + (∂y ψ, −∂x ψ),   −Δψ = ω,

where U is the mean flow (the k = 0 Fourier mode of the velocity), which the equations conserve.
Why vorticity: one scalar unknown, incompressibility holds by construction, and the velocity
recovered from ψ has zero spectral divergence to round-off.

Discretization (cost per RK stage: one batched inverse FFT of 4 fields and one forward FFT):
- Fourier modes k = 2π n (rfft2 layout); derivatives use i k with the Nyquist mode zeroed.
- 2/3-rule dealiasing: the state keeps only |n_x| < W/3 and |n_y| < H/3 (strict), and the
  nonlinear term is truncated to the same band. Products of two fields in that band alias only
  onto discarded modes, so the semi-discrete system is an exact Galerkin truncation: the
  nonlinear term conserves energy and enstrophy and dE/dt = −2νZ holds exactly.
- Time: integrating-factor RK4 (Cox & Matthews 2002 call it IF-RK4): the viscous factor
  exp(−ν|k|²dt) is exact, the advection term gets classical 4th-order RK. The step is
  dt = cfl / max(|u|/dx + |v|/dy), shortened so that every output time is hit exactly
  (each remaining interval is split into equal steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from coherence.errors import SimulationError
from coherence.simulation.families import NS_VISCOSITY

_MAX_STEPS = 2_000_000
_FLOAT_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Spectral:
    """Wavenumber operators on the rfft2 grid of an H×W field (all broadcast to [H, W//2+1])."""

    kx: Tensor  # (1, Wr) 2π n_x, Nyquist zeroed: first derivative in x
    ky: Tensor  # (H, 1) 2π n_y, Nyquist zeroed: first derivative in y
    k2: Tensor  # (H, Wr) |k|² with the true Nyquist wavenumbers: the Laplacian
    mask: Tensor  # (H, Wr) 1 on the retained band, 0 elsewhere


def _spectral(h: int, w: int, dtype: torch.dtype, device: torch.device, dealias: bool) -> _Spectral:
    nx = torch.fft.rfftfreq(w, d=1.0 / w, dtype=dtype, device=device)  # 0..W/2
    ny = torch.fft.fftfreq(h, d=1.0 / h, dtype=dtype, device=device)  # 0..H/2-1, -H/2..-1
    k2 = (2 * math.pi) ** 2 * (ny[:, None] ** 2 + nx[None, :] ** 2)
    nyq_x = (nx.abs() == w / 2) if w % 2 == 0 else torch.zeros_like(nx, dtype=torch.bool)
    nyq_y = (ny.abs() == h / 2) if h % 2 == 0 else torch.zeros_like(ny, dtype=torch.bool)
    kx = torch.where(nyq_x, 0.0, 2 * math.pi * nx)[None, :]
    ky = torch.where(nyq_y, 0.0, 2 * math.pi * ny)[:, None]
    if dealias:
        keep = (ny.abs() < h / 3)[:, None] & (nx.abs() < w / 3)[None, :]
    else:
        keep = (~nyq_y)[:, None] & (~nyq_x)[None, :]
    return _Spectral(kx=kx, ky=ky, k2=k2, mask=keep.to(dtype))


def _check_velocity(velocity: Tensor, *, batched: bool) -> None:
    if not isinstance(velocity, Tensor):
        raise SimulationError(
            f"velocity must be a torch.Tensor, got {type(velocity).__name__}; "
            "convert it with torch.as_tensor"
        )
    if velocity.dtype not in _FLOAT_DTYPES:
        raise SimulationError(
            f"velocity has dtype {velocity.dtype}; the spectral solver needs float32 or "
            "float64: cast it with .double() or .float()"
        )
    if batched and velocity.ndim != 4:
        raise SimulationError(
            f"velocity has shape {tuple(velocity.shape)}; expected [B, 2, H, W] "
            "(add a batch axis with velocity[None] for one field)"
        )
    if velocity.ndim < 3 or velocity.shape[-3] != 2:
        raise SimulationError(
            f"velocity has shape {tuple(velocity.shape)}; expected [..., 2, H, W] with channels "
            "(u, v) on axis -3"
        )
    if min(velocity.shape[-2:]) < 4:
        raise SimulationError(
            f"velocity grid {tuple(velocity.shape[-2:])} is too small; use at least 4×4 points"
        )
    if not bool(torch.isfinite(velocity).all()):
        raise SimulationError("velocity contains NaN or inf; pass a finite initial field")


def _ops_for(velocity: Tensor, dealias: bool = True) -> _Spectral:
    h, w = velocity.shape[-2:]
    return _spectral(h, w, velocity.dtype, velocity.device, dealias)


def divergence(velocity: Tensor) -> Tensor:
    """Spectral divergence ∂x u + ∂y v of [..., 2, H, W] → [..., H, W] (Nyquist mode dropped)."""
    _check_velocity(velocity, batched=False)
    ops = _ops_for(velocity)
    uh = torch.fft.rfft2(velocity)  # (..., 2, H, Wr)
    div_h = 1j * (ops.kx * uh[..., 0, :, :] + ops.ky * uh[..., 1, :, :])
    return torch.fft.irfft2(div_h, s=velocity.shape[-2:])


def vorticity(velocity: Tensor) -> Tensor:
    """Spectral vorticity ω = ∂x v − ∂y u of [..., 2, H, W] → [..., H, W]."""
    _check_velocity(velocity, batched=False)
    ops = _ops_for(velocity)
    uh = torch.fft.rfft2(velocity)
    w_h = 1j * (ops.kx * uh[..., 1, :, :] - ops.ky * uh[..., 0, :, :])
    return torch.fft.irfft2(w_h, s=velocity.shape[-2:])


def kinetic_energy(velocity: Tensor) -> Tensor:
    """E = ½ ⟨u² + v²⟩, the domain mean (unit square), of [..., 2, H, W] → [...]."""
    _check_velocity(velocity, batched=False)
    return 0.5 * (velocity**2).sum(dim=-3).mean(dim=(-2, -1))


def enstrophy(velocity: Tensor) -> Tensor:
    """Z = ½ ⟨ω²⟩ of [..., 2, H, W] → [...]; for periodic incompressible flow dE/dt = −2νZ."""
    return 0.5 * (vorticity(velocity) ** 2).mean(dim=(-2, -1))


def project_divergence_free(velocity: Tensor) -> Tensor:
    """Leray projection û ← û − k (k·û)/|k|², keeping the mean flow (k = 0) unchanged.

    Uses the same Nyquist-free wavenumbers as `divergence`, so the result has zero spectral
    divergence to round-off. Cost: one rfft2 and one irfft2 of the field.
    """
    _check_velocity(velocity, batched=False)
    ops = _ops_for(velocity)
    uh = torch.fft.rfft2(velocity)  # (..., 2, H, Wr)
    kk = ops.kx**2 + ops.ky**2  # (H, Wr)
    inv = torch.where(kk > 0, 1.0 / torch.where(kk > 0, kk, 1.0), 0.0)
    k_dot_u = (ops.kx * uh[..., 0, :, :] + ops.ky * uh[..., 1, :, :]) * inv
    proj = torch.stack(
        (uh[..., 0, :, :] - ops.kx * k_dot_u, uh[..., 1, :, :] - ops.ky * k_dot_u), -3
    )
    return torch.fft.irfft2(proj, s=velocity.shape[-2:])


def band_limit(velocity: Tensor) -> Tensor:
    """Keep only the 2/3-rule band |n_x| < W/3, |n_y| < H/3 the solver resolves.

    A field already in the band (and divergence-free) is returned unchanged by `evolve` at t = 0.
    """
    _check_velocity(velocity, batched=False)
    ops = _ops_for(velocity)
    return torch.fft.irfft2(torch.fft.rfft2(velocity) * ops.mask, s=velocity.shape[-2:])


def _check_times(times: Sequence[float] | Tensor) -> list[float]:
    t = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if t.ndim != 1 or t.numel() == 0:
        raise SimulationError(
            f"times has shape {tuple(t.shape)}; pass a non-empty 1-D sequence of output times"
        )
    if not bool(torch.isfinite(t).all()) or float(t.min()) < 0:
        raise SimulationError(f"times {t.tolist()} must be finite and ≥ 0 (t = 0 is the input)")
    if t.numel() > 1 and bool((t[1:] < t[:-1]).any()):
        raise SimulationError(f"times {t.tolist()} must be nondecreasing; sort them first")
    return [float(x) for x in t]


class _Stepper:
    """IF-RK4 for the masked vorticity spectrum w_h of shape [B, H, Wr]."""

    def __init__(self, ops: _Spectral, mean_flow: Tensor, shape: tuple[int, int], nu: float):
        self.ops = ops
        self.shape = shape
        self.nu = nu
        kk = ops.k2
        inv_k2 = torch.where(kk > 0, 1.0 / torch.where(kk > 0, kk, 1.0), 0.0)
        # Spectral multipliers mapping ω̂ to (û, v̂, ∂x ω, ∂y ω): ψ̂ = ω̂/|k|², u = ∂y ψ, v = −∂x ψ.
        ones = torch.ones_like(kk)
        self.to_fields = torch.stack(
            (1j * ops.ky * inv_k2, -1j * ops.kx * inv_k2, 1j * ops.kx * ones, 1j * ops.ky * ones)
        )  # (4, H, Wr) complex
        self.mean = mean_flow[:, :, None, None]  # (B, 2, 1, 1)
        h, w = shape
        self.rate_scale = torch.tensor([w, h], dtype=mean_flow.dtype, device=mean_flow.device)

    def velocity(self, w_h: Tensor) -> Tensor:
        fields = torch.fft.irfft2(w_h[:, None] * self.to_fields[:2], s=self.shape)  # (B, 2, H, W)
        return fields + self.mean

    def nonlinear(self, w_h: Tensor) -> Tensor:
        """−(u·∇ω) in spectral space, truncated to the band."""
        return self.nonlinear_and_rate(w_h, with_rate=False)[0]

    def nonlinear_and_rate(self, w_h: Tensor, with_rate: bool = True) -> tuple[Tensor, Tensor]:
        """−(u·∇ω) as in `nonlinear`, and the CFL rate max(|u|/dx + |v|/dy) over the batch."""
        f = torch.fft.irfft2(w_h[:, None] * self.to_fields, s=self.shape)  # (B, 4, H, W)
        uv = f[:, :2] + self.mean  # (B, 2, H, W)
        adv = uv[:, 0] * f[:, 2] + uv[:, 1] * f[:, 3]  # (B, H, W)
        rate = (
            (uv.abs() * self.rate_scale[None, :, None, None]).sum(1).amax()
            if with_rate
            else uv.new_zeros(())
        )
        return -torch.fft.rfft2(adv) * self.ops.mask, rate

    def step(self, w_h: Tensor, n1: Tensor, dt: float) -> Tensor:
        """One IF-RK4 step; n1 = nonlinear(w_h) is passed in (its velocity also set dt)."""
        e2 = torch.exp(-0.5 * self.nu * dt * self.ops.k2)  # exp(L dt/2), L = −ν|k|²
        e1 = e2 * e2
        k1 = dt * n1
        k2 = dt * self.nonlinear(e2 * (w_h + 0.5 * k1))
        k3 = dt * self.nonlinear(e2 * w_h + 0.5 * k2)
        k4 = dt * self.nonlinear(e1 * w_h + e2 * k3)
        return e1 * w_h + (e1 * k1 + 2 * e2 * (k2 + k3) + k4) / 6


def evolve(
    velocity: Tensor,
    times: Sequence[float] | Tensor,
    *,
    nu: float = NS_VISCOSITY,
    cfl: float = 0.5,
    dealias: bool = True,
) -> Tensor:
    """Evolve [B, 2, H, W] velocity from t = 0 and return snapshots [B, len(times), 2, H, W].

    The input is first Leray-projected (mean flow kept) and, with ``dealias``, truncated to
    the 2/3-rule band; the snapshot at t = 0 is that projected field. One dt (from the fastest
    sample) is shared by the batch. dtype and device of the input are kept (complex64 or
    complex128 internally). ``dealias=False`` keeps every non-Nyquist mode and exists to show
    what aliasing does; do not use it for data. Cost: 4 × (5 FFTs of [B, H, W]) per step,
    about t_end · max(|u|/dx + |v|/dy) / cfl steps.
    """
    _check_velocity(velocity, batched=True)
    out_times = _check_times(times)
    if not (isinstance(nu, int | float) and math.isfinite(nu) and nu >= 0):
        raise SimulationError(f"nu={nu!r}: the viscosity must be a finite number ≥ 0")
    if not (isinstance(cfl, int | float) and 0 < cfl <= 1.2):
        raise SimulationError(
            f"cfl={cfl!r}: use 0 < cfl ≤ 1.2 (IF-RK4 with 2/3 dealiasing is unstable near 1.35)"
        )
    b, _, h, w = velocity.shape
    ops = _ops_for(velocity, dealias)
    uh = torch.fft.rfft2(velocity)  # (B, 2, H, Wr)
    mean_flow = uh[:, :, 0, 0].real / (h * w)  # (B, 2)
    # ω̂ = i kx v̂ − i ky û; the curl ignores any gradient part, so this is the Leray projection.
    w_h = 1j * (ops.kx * uh[:, 1] - ops.ky * uh[:, 0]) * ops.mask  # (B, H, Wr)
    stepper = _Stepper(ops, mean_flow, (h, w), float(nu))

    out = velocity.new_empty((b, len(out_times), 2, h, w))
    t, steps = 0.0, 0
    for i, t_out in enumerate(out_times):
        while t < t_out:
            n1, rate = stepper.nonlinear_and_rate(w_h)
            remaining = t_out - t
            rate_f = float(rate)
            n_sub = max(1, math.ceil(remaining * rate_f / cfl)) if rate_f > 0 else 1
            if steps + n_sub > _MAX_STEPS:
                raise SimulationError(
                    f"reaching t = {t_out} needs more than {_MAX_STEPS} steps: the velocity "
                    f"(max |u|/dx + |v|/dy = {rate_f:.3g}) is too large for this grid and times"
                )
            dt = remaining / n_sub
            w_h = stepper.step(w_h, n1, dt)
            t = t_out if n_sub == 1 else t + dt
            steps += 1
        out[:, i] = stepper.velocity(w_h)
        if not bool(torch.isfinite(out[:, i]).all()):
            raise SimulationError(
                f"the solution blew up before t = {t_out}; lower cfl (now {cfl}) or raise nu"
            )
    return out
