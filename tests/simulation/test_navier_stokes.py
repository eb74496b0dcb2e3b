"""Pseudo-spectral Navier–Stokes: exact solutions, invariants and the energy budget."""

from __future__ import annotations

import math

import pytest
import torch

from coherence.errors import SimulationError
from coherence.simulation import navier_stokes as ns

pytestmark = pytest.mark.usefixtures("single_thread")  # small FFTs gain nothing from threads

ROUND_OFF = 1e-10  # float64 absolute tolerance for quantities that vanish analytically


def _nodes(n: int, h: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid (x, y), each [h, n]: x_j = j/n along the last axis, y_i = i/h (h defaults to n)."""
    h = n if h is None else h
    cy = torch.arange(h, dtype=torch.float64) / h
    cx = torch.arange(n, dtype=torch.float64) / n
    y, x = torch.meshgrid(cy, cx, indexing="ij")
    return x, y


def _taylor_green(
    n: int, k: int, shift: tuple[float, float] = (0.0, 0.0), h: int | None = None
) -> torch.Tensor:
    """u = sin(2πk x) cos(2πk y), v = −cos(2πk x) sin(2πk y) at x − shift: [2, h, n]."""
    x, y = _nodes(n, h)
    a, b = 2 * math.pi * k * (x - shift[0]), 2 * math.pi * k * (y - shift[1])
    return torch.stack((torch.sin(a) * torch.cos(b), -torch.cos(a) * torch.sin(b)))


def _random_field(
    batch: int, n: int, seed: int, rms: float = 0.5, band: bool = True
) -> torch.Tensor:
    """White-noise velocity, projected (and band-limited), scaled to RMS speed `rms`."""
    g = torch.Generator().manual_seed(seed)
    v = ns.project_divergence_free(torch.randn(batch, 2, n, n, generator=g, dtype=torch.float64))
    if band:
        v = ns.band_limit(v)
    return v * (rms / v.pow(2).sum(1).mean((-2, -1)).sqrt())[:, None, None, None]


def _simpson(y: torch.Tensor, h: float) -> torch.Tensor:
    """Composite Simpson rule along the last axis (odd number of samples)."""
    return (
        h / 3 * (y[..., 0] + y[..., -1] + 4 * y[..., 1:-1:2].sum(-1) + 2 * y[..., 2:-1:2].sum(-1))
    )


@pytest.mark.parametrize(
    ("k", "nu", "height"), [(1, 1e-2, 32), (2, 1e-2, 32), (3, 4e-4, 32), (1, 1e-2, 24)]
)
def test_taylor_green_decays_exactly(k: int, nu: float, height: int) -> None:
    # The nonlinear term of Taylor–Green is a pure gradient, so u(t) = u(0)·exp(−ν|k|²t) with
    # |k|² = 2(2πk)². Irregular and repeated times check that every output time is hit exactly.
    u0 = _taylor_green(32, k, h=height)[None]
    times = [0.0, 0.123, 0.123, 0.5, 1.0]
    out = ns.evolve(u0, times, nu=nu)
    assert out.shape == (1, len(times), 2, height, 32)
    for i, t in enumerate(times):
        exact = u0[0] * math.exp(-2 * nu * (2 * math.pi * k) ** 2 * t)
        rel = float((out[0, i] - exact).norm() / exact.norm())
        assert rel < 1e-10, f"t={t}: relative error {rel:.2e}"
    assert out[0, 1].equal(out[0, 2])


def test_mean_flow_is_kept_and_advects_taylor_green_at_fourth_order() -> None:
    # Galilean invariance: with mean flow U the exact solution is U + TG(x − U t)·decay.
    # This exercises the advection term (not a gradient any more) and the IF-RK4 order.
    nu, k, mean = 1e-2, 2, (0.3, -0.2)
    offset = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    u0 = (_taylor_green(32, k) + offset)[None]
    times = [0.0, 0.5, 1.0]
    errors = {}
    for cfl in (0.5, 0.25):
        out = ns.evolve(u0, times, nu=nu, cfl=cfl)
        for i, t in enumerate(times):
            moved = _taylor_green(32, k, shift=(mean[0] * t, mean[1] * t))
            exact = moved * math.exp(-2 * nu * (2 * math.pi * k) ** 2 * t) + offset
            errors[cfl, t] = float((out[0, i] - exact).norm() / exact.norm())
    assert max(errors.values()) < 1e-5, errors
    order = math.log2(errors[0.5, 1.0] / errors[0.25, 1.0])
    assert 3.5 < order < 4.5, f"observed order {order:.2f}, errors {errors}"


def test_divergence_stays_at_round_off_and_t0_is_the_projection() -> None:
    g = torch.Generator().manual_seed(3)
    raw = 0.3 * torch.randn(2, 2, 32, 32, generator=g, dtype=torch.float64)  # not solenoidal
    raw = raw + torch.tensor([0.2, -0.1], dtype=torch.float64)[None, :, None, None]
    assert float(ns.divergence(raw).abs().max()) > 1.0
    out = ns.evolve(raw, torch.linspace(0, 0.5, 6, dtype=torch.float64))
    assert float(ns.divergence(out).abs().max()) < ROUND_OFF
    expected_t0 = ns.band_limit(ns.project_divergence_free(raw))
    torch.testing.assert_close(out[:, 0], expected_t0, rtol=0, atol=1e-13)
    # the mean flow (k = 0 mode) is conserved
    torch.testing.assert_close(
        out.mean((-2, -1)), raw.mean((-2, -1))[:, None].expand(-1, 6, -1), rtol=0, atol=1e-13
    )


def test_energy_never_grows_on_a_turbulent_field() -> None:
    u0 = _random_field(2, 32, seed=0)
    out = ns.evolve(u0, torch.linspace(0, 1, 21, dtype=torch.float64), nu=4e-4)
    energy = ns.kinetic_energy(out)  # (B, T)
    increments = energy[:, 1:] - energy[:, :-1]
    assert float(increments.max()) <= 0.0, f"energy grew by {float(increments.max()):.3e}"
    assert float((energy[:, -1] / energy[:, 0]).max()) < 0.99  # and it really decays


def test_energy_budget_matches_enstrophy_and_needs_dealiasing() -> None:
    # Periodic incompressible flow: dE/dt = −2νZ, Z = ½⟨ω²⟩. With 2/3 dealiasing the
    # semi-discrete nonlinear term conserves energy exactly, so E(T) − E(0) = −2ν∫Z dt up to
    # the RK4 and Simpson errors. A flipped viscosity sign makes E grow (relative error ≥ 2);
    # dropping dealiasing breaks energy conservation of the nonlinear term (checked below).
    nu, t_end, m = 1e-3, 0.2, 41
    u0 = _random_field(2, 32, seed=1, band=False)  # white: aliasing is strong from the start
    times = torch.linspace(0, t_end, m, dtype=torch.float64)

    def budget_error(dealias: bool) -> torch.Tensor:
        out = ns.evolve(u0, times, nu=nu, cfl=0.2, dealias=dealias)
        energy, enstrophy = ns.kinetic_energy(out), ns.enstrophy(out)
        change = energy[:, -1] - energy[:, 0]
        predicted = -2 * nu * _simpson(enstrophy, t_end / (m - 1))
        return ((change - predicted) / predicted).abs()

    assert float(budget_error(True).max()) < 1e-5
    try:
        aliased = float(budget_error(False).max())
    except SimulationError:  # aliasing may blow the run up altogether
        aliased = math.inf
    assert aliased > 0.1, f"without dealiasing the budget should fail, error {aliased:.2e}"


def test_spectral_diagnostics_match_analytic_fields() -> None:
    # ψ = sin(2πx)cos(4πy)/(2π), φ = cos(2πx + 4πy)/(2π): u = ∇⊥ψ + ∇φ + mean.
    x, y = _nodes(16)
    two_pi = 2 * math.pi
    sol = torch.stack(
        (
            -2 * torch.sin(two_pi * x) * torch.sin(2 * two_pi * y),
            -torch.cos(two_pi * x) * torch.cos(2 * two_pi * y),
        )
    )
    phase = two_pi * x + 2 * two_pi * y
    grad = torch.stack((-torch.sin(phase), -2 * torch.sin(phase)))
    mean = torch.tensor([0.7, -0.4], dtype=torch.float64)[:, None, None]
    field = (sol + grad + mean)[None]

    lap_psi = -(1 + 4) * two_pi**2 * torch.sin(two_pi * x) * torch.cos(2 * two_pi * y) / two_pi
    torch.testing.assert_close(ns.vorticity(field)[0], -lap_psi, rtol=0, atol=1e-11)
    torch.testing.assert_close(
        ns.divergence(field)[0], -(1 + 4) * two_pi * torch.cos(phase), rtol=0, atol=1e-11
    )
    projected = ns.project_divergence_free(field)
    torch.testing.assert_close(projected[0], sol + mean, rtol=0, atol=1e-13)
    torch.testing.assert_close(ns.project_divergence_free(projected), projected, rtol=0, atol=1e-13)
    # E = ½⟨|u|²⟩: the three parts are orthogonal; ⟨sol²⟩ = (4·¼ + ¼), ⟨grad²⟩ = (½ + 2)
    energy = 0.5 * (1.25 + 2.5 + 0.7**2 + 0.4**2)
    torch.testing.assert_close(
        ns.kinetic_energy(field), torch.tensor([energy], dtype=torch.float64)
    )
    # ½⟨ω²⟩ with ω = 5·2π·sin(2πx)cos(4πy): mean of sin²cos² is ¼
    torch.testing.assert_close(
        ns.enstrophy(field), torch.tensor([0.5 * (5 * two_pi) ** 2 / 4], dtype=torch.float64)
    )


def test_dtype_and_device_are_kept() -> None:
    u64 = _random_field(2, 16, seed=2)
    times = [0.0, 0.1]
    out64 = ns.evolve(u64, times)
    out32 = ns.evolve(u64.float(), times)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert out32.device == u64.device
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-5)
    zero = ns.evolve(torch.zeros(1, 2, 8, 8, dtype=torch.float32), [0.0, 1.0])
    assert zero.dtype == torch.float32 and float(zero.abs().max()) == 0.0
    if torch.cuda.is_available():
        on_gpu = ns.evolve(u64.cuda(), times)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), out64, rtol=0, atol=1e-12)


GOOD = torch.zeros(1, 2, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize(
    ("velocity", "times", "kwargs", "match"),
    [
        (torch.zeros(2, 8, 8, dtype=torch.float64), [0.0], {}, r"\[B, 2, H, W\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.float64), [0.0], {}, "channels"),
        (torch.zeros(1, 2, 8, 8, dtype=torch.int64), [0.0], {}, "float32 or float64"),
        (torch.zeros(1, 2, 2, 8, dtype=torch.float64), [0.0], {}, "too small"),
        (torch.full((1, 2, 8, 8), math.nan, dtype=torch.float64), [0.0], {}, "NaN"),
        (GOOD.numpy(), [0.0], {}, "torch.Tensor"),
        (GOOD, [0.0, 0.2, 0.1], {}, "nondecreasing"),
        (GOOD, [-0.1, 0.2], {}, "≥ 0"),
        (GOOD, [0.0, math.inf], {}, "finite"),
        (GOOD, [[0.0, 0.1]], {}, "1-D"),
        (GOOD, [], {}, "non-empty"),
        (GOOD, [0.0], {"nu": -1e-3}, "viscosity"),
        (GOOD, [0.0], {"cfl": 0.0}, "cfl"),
        (GOOD + 1e3, [0.0, 1e3], {}, "steps"),
    ],
)
def test_bad_inputs_raise(velocity, times, kwargs, match) -> None:
    with pytest.raises(SimulationError, match=match):
        ns.evolve(velocity, times, **kwargs)
