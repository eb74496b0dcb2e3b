"""Validation of the 2-D Euler solver against exact Riemann solutions and invariants.

References are independent of the solver: the exact Riemann solver (Toro ch. 4, itself checked
in test_riemann.py), analytic advection of a smooth entropy wave, exact symmetries (transpose)
and the discrete conservation laws.

1-D problems run in strips of 4 rows on the periodic unit interval: state A on [0.25, 0.75),
B outside, i.e. the Riemann problems (B | A) at x = 0.25 and (A | B) at x = 0.75. The final
times keep the two wave fans apart (checked from the exact wave speeds), so the exact solution
is the two exact Riemann solutions side by side. Errors are L1 errors of the density cell
averages against exact cell averages (8 sub-samples per cell).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coherence.errors import RequestError, SimulationError
from coherence.simulation.euler import (
    conserved_to_primitive,
    evolve,
    max_wave_speed,
    pressure,
    primitive_to_conserved,
)
from coherence.simulation.riemann import exact_riemann, wave_extent

GAMMA = 1.4
ROWS = 4

# name: (A inside, B outside, final time); A, B = (rho, u, p)
PROBLEMS = {
    "sod": ((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), 0.1),
    "lax": ((0.445, 0.698, 3.528), (0.5, 0.0, 0.571), 0.05),
    "toro3": ((1.0, 0.0, 1000.0), (1.0, 0.0, 0.01), 0.004),  # strong shock, p ratio 1e5
    "toro2": ((1.0, -2.0, 0.4), (1.0, 2.0, 0.4), 0.1),  # 123 problem, near vacuum
}


def strip_state(problem: str, n: int, rows: int = ROWS, dtype=torch.float64) -> torch.Tensor:
    """Conserved [1, 4, rows, n] state of a 1-D problem along x."""
    inside_state, outside_state, _ = PROBLEMS[problem]
    x = (np.arange(n) + 0.5) / n
    inside = (x >= 0.25) & (x < 0.75)
    rho, u, p = (
        torch.tensor(np.where(inside, a, b), dtype=dtype).expand(rows, n)
        for a, b in zip(inside_state, outside_state, strict=True)
    )
    return primitive_to_conserved(rho, u, torch.zeros_like(rho), p, GAMMA)[None]


def exact_density(problem: str, n: int, sub: int = 8) -> np.ndarray:
    """Exact density cell averages [n] at the problem's final time."""
    inside_state, outside_state, t = PROBLEMS[problem]
    x = (np.arange(n * sub) + 0.5) / (n * sub)
    left_jump = exact_riemann(outside_state, inside_state, x, t, x0=0.25, gamma=GAMMA)[0]
    right_jump = exact_riemann(inside_state, outside_state, x, t, x0=0.75, gamma=GAMMA)[0]
    return np.where(x < 0.5, left_jump, right_jump).reshape(n, sub).mean(axis=1)


def swap_xy(state: torch.Tensor) -> torch.Tensor:
    """The transposed flow: state'(x, y) = state(y, x) with ρu ↔ ρv, for [..., 4, H, W]."""
    return state[..., [0, 2, 1, 3], :, :].transpose(-1, -2)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_final_times_keep_the_two_riemann_problems_apart(problem):
    inside_state, outside_state, t = PROBLEMS[problem]
    low_ab, high_ab = wave_extent(inside_state, outside_state, GAMMA)  # jump at 0.75
    low_ba, high_ba = wave_extent(outside_state, inside_state, GAMMA)  # jump at 0.25
    margin = 0.1  # leave room for numerical smearing of the outermost waves
    assert 0.25 + high_ba * t < 0.75 + low_ab * t - margin
    assert 0.75 + high_ab * t < 1.25 + low_ba * t - margin


# Thresholds for L1 density errors at N = 64, 128, 256 (observed values in the comments).
# A second-order TVD scheme on discontinuous data converges at L1 order between 2/3
# (contacts, smeared over ~N^(1/3) cells) and 1 (shocks); first order gives 1/2 at contacts.
# The bounds sit below our observations but above what the same solver gives with the limiter
# replaced by zero slopes (first order: Sod 0.55, Lax 0.47, Toro-3 0.30 and errors at N = 256
# of 0.017, 0.033, 0.18) or by an unlimited downwind slope (Sod 0.54, Lax 0.17).
CONVERGENCE = {
    # problem: (min fitted order, max error at N=256)   observed order / error at 256
    "sod": (0.75, 0.0045),  # 0.93 / 0.0034
    "lax": (0.70, 0.012),  # 0.84 / 0.0087
    "toro3": (0.50, 0.11),  # 0.60 / 0.087 (coarse: the shocked shell is ~20 cells at N=64)
}


@pytest.mark.parametrize("problem", list(CONVERGENCE))
def test_riemann_problem_converges_to_exact_solution_along_x(problem):
    sizes = (64, 128, 256)
    t = PROBLEMS[problem][2]
    errors = []
    for n in sizes:
        out = evolve(strip_state(problem, n), [t])[0, -1, 0]  # density [ROWS, n]
        torch.testing.assert_close(out, out[:1].expand_as(out), rtol=0, atol=0)  # stays 1-D
        errors.append(float(np.abs(out[0].numpy() - exact_density(problem, n)).mean()))
    order = -np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    min_order, max_error = CONVERGENCE[problem]
    assert errors[0] > errors[1] > errors[2], errors
    assert order >= min_order, (order, errors)
    assert errors[-1] <= max_error, errors


@pytest.mark.parametrize("problem", ["sod", "lax"])
def test_no_spurious_oscillations(problem):
    """The limiter must prevent new extrema and keep the total variation near the exact one.

    Observed at N = 256 (overshoot as a fraction of the exact density range): 0 (Sod) and
    0.4 % (Lax), TV ratio 1.02 / 1.01. With unlimited central slopes: 2.4 % / 6 % and TV ratio
    1.14 / 1.19; with an unlimited downwind slope, TV ratio 2.1 / 3.3.
    """
    n = 256
    out = evolve(strip_state(problem, n), [PROBLEMS[problem][2]])[0, -1, 0, 0].numpy()
    exact = exact_density(problem, n)
    span = exact.max() - exact.min()
    overshoot = max(out.max() - exact.max(), exact.min() - out.min(), 0.0)
    total_variation = np.abs(np.diff(out, append=out[:1])).sum()
    exact_variation = np.abs(np.diff(exact, append=exact[:1])).sum()
    assert overshoot <= 0.01 * span, overshoot / span
    assert total_variation <= 1.05 * exact_variation, total_variation / exact_variation


@pytest.mark.parametrize("problem", ["sod", "lax", "toro3"])
def test_run_along_y_is_the_transposed_run_along_x(problem):
    n = 128
    t = PROBLEMS[problem][2]
    along_x = evolve(strip_state(problem, n), [0.0, t])
    along_y = evolve(swap_xy(strip_state(problem, n)), [0.0, t])
    assert along_y.shape == (1, 2, 4, n, ROWS)
    torch.testing.assert_close(along_y, swap_xy(along_x), rtol=1e-14, atol=1e-14)
    error = np.abs(along_y[0, -1, 0, :, 0].numpy() - exact_density(problem, n)).mean()
    assert error <= {"sod": 0.008, "lax": 0.018, "toro3": 0.16}[problem], error


def smooth_wave(n: int, axis: str) -> torch.Tensor:
    """Entropy wave ρ = 1 + 0.2 sin 2πx, u = 1, p = 1 (exact cell averages), along x or y."""
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    rho = 1.0 - 0.2 * torch.diff(torch.cos(2 * math.pi * edges)) * n / (2 * math.pi)
    rho = rho.expand(ROWS, n)
    one = torch.ones_like(rho)
    state = primitive_to_conserved(rho, one, 0 * one, one, GAMMA)[None]
    return state if axis == "x" else swap_xy(state)


def smooth_wave_exact_density(n: int, t: float) -> torch.Tensor:
    edges = torch.arange(n + 1, dtype=torch.float64) / n - t
    return 1.0 - 0.2 * torch.diff(torch.cos(2 * math.pi * edges)) * n / (2 * math.pi)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_smooth_advection_is_second_order_at_every_output_time(axis):
    """An advected entropy wave (exact: ρ(x − t)) converges at second order at each requested time.

    This also checks that the outputs sit exactly at the requested times: a snapshot off by one
    step Δt ≈ 0.4 dx / 2.2 would add an L1 error of about Δt · mean|∂ρ/∂x| ≈ 1.1e-3 at
    N = 128, 6–30 times the observed errors (4e-5 … 1.8e-4). MC clips the two extrema, so the
    L1 order is slightly below 2 (observed 1.88–2.04).
    """
    times = [0.0, 0.1, 0.25, 0.5]
    errors = []
    for n in (32, 64, 128):
        out = evolve(smooth_wave(n, axis), times)
        torch.testing.assert_close(out[:, 0], smooth_wave(n, axis), rtol=0, atol=0)
        density = out[0, :, 0, 0] if axis == "x" else out[0, :, 0, :, 0]  # [T, n]
        errors.append(
            [
                float((density[k] - smooth_wave_exact_density(n, t)).abs().mean())
                for k, t in enumerate(times)
            ]
        )
    errors = np.array(errors)[:, 1:]  # [resolution, time > 0]
    orders = np.log2(errors[:-1] / errors[1:])
    assert (orders >= 1.6).all(), (orders, errors)
    assert (errors[-1] <= 3e-4).all(), errors


def quadrant_state(prims, n: int, split=(0.5, 0.5), dtype=torch.float64) -> torch.Tensor:
    """Four-quadrant Riemann state [1, 4, n, n]; prims[k] = (rho, u, v, p) of quadrant k.

    Quadrants counted like Lax–Liu: 0 upper right, 1 upper left, 2 lower left, 3 lower right
    (x to the right along the last axis, y upward along the second-to-last axis).
    """
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    right = (c[None, :] >= split[0]).expand(n, n)
    upper = (c[:, None] >= split[1]).expand(n, n)
    index = torch.where(upper, torch.where(right, 0, 1), torch.where(right, 3, 2))
    table = torch.tensor(prims, dtype=torch.float64)  # [4 quadrants, 4 variables]
    rho, u, v, p = table[index].unbind(-1)
    return primitive_to_conserved(rho, u, v, p, GAMMA)[None].to(dtype)


# Lax & Liu (1998) configuration 3: four shocks; symmetric under x ↔ y with u ↔ v.
# Density ratio 11, pressure ratio 52.
LAX_LIU_3 = [
    (1.5, 0.0, 0.0, 1.5),
    (0.5323, 1.206, 0.0, 0.3),
    (0.138, 1.206, 1.206, 0.029),
    (0.5323, 0.0, 1.206, 0.3),
]


def test_symmetric_four_quadrant_problem_stays_symmetric():
    state = quadrant_state(LAX_LIU_3, 64)
    torch.testing.assert_close(swap_xy(state), state, rtol=0, atol=0)
    out = evolve(state, [0.1, 0.25])
    torch.testing.assert_close(swap_xy(out), out, rtol=1e-14, atol=1e-14)
    rho, _, _, p = conserved_to_primitive(out, GAMMA)
    assert rho.min() > 0 and p.min() > 0
    assert (out[:, -1] - state).abs().amax() > 0.5  # the waves did move


def test_mass_momentum_energy_are_conserved_to_round_off():
    prims = [
        (1.0, 0.75, -0.5, 1.0),
        (0.5197, -0.6259, 0.3, 0.4),
        (0.8, 0.1, 0.8, 1.5),
        (0.3, -0.2, -0.9, 0.2),
    ]
    state = quadrant_state(prims, 40, split=(0.37, 0.61))
    out = evolve(state, [0.05, 0.1, 0.2])
    totals = out.sum(dim=(-2, -1))  # [1, T, 4]
    initial = state.sum(dim=(-2, -1))  # [1, 4]
    scale = state.abs().sum(dim=(-2, -1))
    relative = ((totals - initial[:, None]) / scale[:, None]).abs()
    assert relative.amax() <= 1e-12, relative
    assert (out[:, -1] - state).abs().amax() > 0.1


def test_near_vacuum_problems_keep_density_and_pressure_positive():
    # 1-D: Toro's test 2 (the 123 problem), star density 0.022, star pressure 0.0019
    n = 128
    strip = evolve(strip_state("toro2", n), [PROBLEMS["toro2"][2]])[0, -1]
    rho, _, _, p = conserved_to_primitive(strip, GAMMA)
    assert torch.isfinite(strip).all() and rho.min() > 0 and p.min() > 0
    # in the double-rarefaction half, the density follows the exact fans closely
    error = np.abs(rho[0].numpy() - exact_density("toro2", n))[n // 2 :].mean()
    assert error <= 0.01, error
    # 2-D: every quadrant streams away from the centre at speed 2 (|Δu| = 4 per interface)
    flows = [
        (1.0, 2.0, 2.0, 0.4),
        (1.0, -2.0, 2.0, 0.4),
        (1.0, -2.0, -2.0, 0.4),
        (1.0, 2.0, -2.0, 0.4),
    ]
    out = evolve(quadrant_state(flows, 32), [0.05, 0.1, 0.15])
    rho, _, _, p = conserved_to_primitive(out, GAMMA)
    assert torch.isfinite(out).all() and rho.min() > 0 and p.min() > 0
    assert rho.min() < 1e-2  # it really is close to vacuum


def test_lost_positivity_raises_with_batch_index_and_time():
    """Flows that open a true vacuum cannot stay positive: the solver must say so, not NaN.

    Ten trajectories at 32² run in several CPU blocks, ordered by signal speed, so the
    reported index must be mapped back to the caller's batch order.
    """
    calm = quadrant_state([(1.0, 0.0, 0.0, 1.0)] * 4, 32)
    speed = 6.0  # |Δu| = 12 ≫ 2(a_L + a_R)/(γ−1) = 7.5: vacuum
    flows = [
        (1.0, speed, speed, 0.4),
        (1.0, -speed, speed, 0.4),
        (1.0, -speed, -speed, 0.4),
        (1.0, speed, -speed, 0.4),
    ]
    state = torch.cat([calm] * 4 + [quadrant_state(flows, 32)] + [calm] * 5)
    with pytest.raises(SimulationError, match=r"batch index 4 near t = 0\.0\d+;"):
        evolve(state, [0.1])


def test_trajectories_do_not_depend_on_their_batch():
    """Each trajectory has its own clock, and CPU blocks (here 2 per block at 64², float64,
    sorted by signal speed) are mapped back to the caller's order."""
    prims = [
        (1.0, 0.3, -0.2, 1.0),
        (0.4, -0.5, 0.1, 0.3),
        (0.9, 0.0, 0.6, 2.0),
        (0.2, 0.1, 0.1, 0.5),
    ]
    states = torch.cat(
        [
            quadrant_state(LAX_LIU_3, 64),
            strip_state("sod", 64, rows=64),
            quadrant_state(prims, 64, split=(0.3, 0.6)),
        ]
    )
    together = evolve(states, [0.01, 0.03])
    alone = torch.cat([evolve(states[b : b + 1], [0.01, 0.03]) for b in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_shape_and_exact_initial_snapshot(dtype, device):
    state = quadrant_state(LAX_LIU_3, 16, dtype=dtype).to(device)
    times = torch.tensor([0.0, 0.0, 0.02, 0.02, 0.05])
    threads = torch.get_num_threads()
    out = evolve(state, times)
    assert torch.get_num_threads() == threads  # the caller's thread setting is untouched
    assert out.shape == (1, 5, 4, 16, 16)
    assert out.dtype == dtype and out.device == state.device
    torch.testing.assert_close(out[:, 0], state, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1], state, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2], out[:, 3], rtol=0, atol=0)
    assert not torch.equal(out[:, 4], out[:, 2])
    if device != "cpu":  # same scheme on the accelerator
        reference = evolve(state.cpu(), times)
        torch.testing.assert_close(out.cpu(), reference, rtol=1e-5, atol=1e-5)


def test_float32_agrees_with_float64():
    state = quadrant_state(LAX_LIU_3, 32)
    out64 = evolve(state, [0.1])
    out32 = evolve(state.float(), [0.1])
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-5)  # observed 1.2e-6


def test_primitive_helpers_round_trip_and_match_formulas():
    gen = torch.Generator().manual_seed(0)
    rho, p = (0.1 + torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)).unbind(0)
    u, v = (torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)).unbind(0)
    state = primitive_to_conserved(rho, u, v, p, GAMMA)
    assert state.shape == (3, 4, 5, 6)
    energy = p / (GAMMA - 1) + 0.5 * rho * (u**2 + v**2)
    torch.testing.assert_close(state, torch.stack([rho, rho * u, rho * v, energy], dim=1))
    for got, want in zip(conserved_to_primitive(state, GAMMA), (rho, u, v, p), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(pressure(state, GAMMA), p)
    sound = torch.sqrt(GAMMA * p / rho)
    want = torch.maximum(u.abs() + sound, v.abs() + sound).amax(dim=(-2, -1))
    torch.testing.assert_close(max_wave_speed(state, GAMMA), want)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (torch.ones(4, 8, 8), r"shape \[B, 4, H, W\]"),
        (torch.ones(1, 3, 8, 8), r"shape \[B, 4, H, W\]"),
        (torch.ones(1, 4, 8, 8, dtype=torch.int64), "dtype"),
        (torch.ones(1, 4, 8, 8, dtype=torch.float16), "dtype"),
        (torch.ones(1, 4, 0, 8), "empty"),
    ],
)
def test_malformed_state_is_rejected(state, message):
    with pytest.raises(SimulationError, match=message):
        evolve(state, [0.1])


def test_unphysical_state_names_the_batch_index():
    good = quadrant_state(LAX_LIU_3, 8)
    negative_density = good.clone()
    negative_density[0, 0, 3, 3] = -1.0
    negative_pressure = good.clone()
    negative_pressure[0, 3] = 0.1 * negative_pressure[0, 3]  # E below the kinetic energy
    not_finite = good.clone()
    not_finite[0, 2, 0, 0] = float("nan")
    for bad in (negative_density, negative_pressure, not_finite):
        with pytest.raises(SimulationError, match=r"batch index \[1\]"):
            evolve(torch.cat([good, bad]), [0.1])


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ([0.2, 0.1], "nondecreasing"),
        ([-0.1, 0.1], "≥ 0"),
        ([], "non-empty"),
        ([[0.1, 0.2]], "1-D"),
        ([0.1, float("nan")], "finite"),
        ("soon", "numbers"),
    ],
)
def test_bad_times_are_rejected(times, message):
    with pytest.raises(RequestError, match=message):
        evolve(quadrant_state(LAX_LIU_3, 8), times)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"cfl": 0.0}, "cfl"), ({"cfl": 1.5}, "cfl"), ({"gamma": 1.0}, "gamma")]
)
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(RequestError, match=message):
        evolve(quadrant_state(LAX_LIU_3, 8), [0.1], **kwargs)


def test_reconstruction_falls_back_to_first_order_where_faces_would_not_be_positive(
    monkeypatch,
):
    """MC itself keeps faces between neighbouring values; force an overshooting slope."""
    from coherence.simulation import euler

    monkeypatch.setattr(euler, "_mc_half_slope", lambda back, fwd: 4.0 * (back + fwd))
    q = euler._primitives(strip_state("sod", 16).transpose(0, 1), GAMMA)  # (4, 1, ROWS, 16)
    left, right = euler._reconstruct(q, dim=-1)
    for faces in (left, right):
        assert faces[0].min() > 0 and faces[3].min() > 0
    steep = (left != q).any(dim=0)  # cells that kept a slope
    jumps = (q != torch.roll(q, 1, -1)).any(dim=0) | (q != torch.roll(q, -1, -1)).any(dim=0)
    assert not steep.any() or bool((steep <= jumps).all())
    first_order = (left == q).all(dim=0) & jumps
    assert first_order.any()  # the fallback did engage next to the jumps


def physical_flux(q: torch.Tensor) -> torch.Tensor:
    """Euler flux along the first velocity of primitives (ρ, u_n, u_t, p) [4, ...]."""
    rho, un, ut, p = q
    energy = p / (GAMMA - 1) + 0.5 * rho * (un**2 + ut**2)
    return torch.stack([rho * un, rho * un**2 + p, rho * un * ut, un * (energy + p)])


def random_primitives(n: int, speed: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rho, p = 0.1 + torch.rand(2, 1, 1, n, generator=gen, dtype=torch.float64)
    un, ut = speed * torch.randn(2, 1, 1, n, generator=gen, dtype=torch.float64)
    return torch.stack([rho, un, ut, p])  # (4, 1, 1, n)


def test_hllc_flux_is_consistent_and_upwind_for_supersonic_faces():
    from coherence.simulation.euler import _hllc_flux

    q = random_primitives(200, speed=3.0, seed=1)
    torch.testing.assert_close(_hllc_flux(q, q, GAMMA, swap=False), physical_flux(q))
    swapped = _hllc_flux(q, q, GAMMA, swap=True)
    torch.testing.assert_close(swapped[[0, 2, 1, 3]], physical_flux(q))
    # all waves move right (left) when both states are supersonic: pure upwinding
    ql, qr = random_primitives(100, 0.1, seed=2), random_primitives(100, 0.1, seed=3)
    for sign, upwind in ((1.0, ql), (-1.0, qr)):
        shift = torch.tensor([0.0, sign * 10.0, 0.0, 0.0], dtype=torch.float64)
        ql_s, qr_s, up = (x + shift.view(4, 1, 1, 1) for x in (ql, qr, upwind))
        torch.testing.assert_close(_hllc_flux(ql_s, qr_s, GAMMA, swap=False), physical_flux(up))


def test_hllc_flux_resolves_contacts_and_shear_exactly():
    """Unlike HLL, HLLC keeps an isolated contact: only p and u·(…) cross a moving contact."""
    from coherence.simulation.euler import _hllc_flux

    ql, qr = random_primitives(100, 0.5, seed=4), random_primitives(100, 0.5, seed=5)
    qr[1], qr[3] = ql[1], ql[3]  # same normal velocity and pressure, any ρ and u_t
    flux = _hllc_flux(ql, qr, GAMMA, swap=False)
    upwind = torch.where(ql[1] >= 0, ql, qr)
    torch.testing.assert_close(flux, physical_flux(upwind))


def test_square_grid_fast_path_matches_the_per_direction_path():
    """Square grids sweep both directions in one pass; it must equal the general code path."""
    from coherence.simulation import euler

    gen = torch.Generator().manual_seed(7)
    rho, p = 0.2 + torch.rand(2, 3, 24, 24, generator=gen, dtype=torch.float64)
    u, v = torch.randn(2, 3, 24, 24, generator=gen, dtype=torch.float64)
    q = torch.stack([rho, u, v, p])  # (4, b, H, W) primitives
    fused = euler._rhs_square(q, GAMMA)
    split = euler._rhs_split(q, GAMMA)
    torch.testing.assert_close(fused, split, rtol=1e-12, atol=1e-12 * float(split.abs().max()))
