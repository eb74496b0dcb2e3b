"""Edges of the solvers that the convergence tests do not reach: a mirrored problem, γ other
than 1.4, the exact Riemann solution at its boundaries, non-square grids, and the checks that
refuse an unphysical state, a CFL number out of range or a blow-up. Each was added where a
mutant of the solver passed every earlier test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coherence.errors import SimulationError
from coherence.simulation import euler
from coherence.simulation import navier_stokes as ns
from coherence.simulation.euler import evolve, primitive_to_conserved
from coherence.simulation.riemann import exact_riemann, star_state
from tests.simulation.test_euler import strip_state


def test_a_state_with_zero_pressure_somewhere_is_refused():
    rho = torch.ones(8, 8, dtype=torch.float64)
    p = torch.ones_like(rho)
    p[3, 3] = 0.0
    state = primitive_to_conserved(rho, torch.ones_like(rho), torch.zeros_like(rho), p)[None]
    with pytest.raises(SimulationError, match="not physical"):
        evolve(state, [0.01])


def test_an_unphysical_output_snapshot_is_refused(monkeypatch):
    """The check on each stored snapshot, not only on the initial state."""
    real_step = euler._step

    def last_step_breaks(u, clock, target, gamma, cfl_h):
        u2, bad, status = real_step(u, clock, target, gamma, cfl_h)
        if not bool(status[1]):  # every trajectory reached the output time
            u2 = u2.clone()
            u2[0] = -1.0  # density < 0 in the returned state
        return u2, bad, status

    monkeypatch.setattr(euler, "_step", last_step_breaks)
    with pytest.raises(SimulationError, match="batch index 0"):
        evolve(strip_state("sod", 16), [0.01])


def test_the_mirrored_problem_gives_the_mirrored_solution():
    """x → −x, ρu → −ρu of a flowing Sod problem: an HLLC wave-speed estimate taken from one
    side only (Davis's S_L = min(u_L − c_L, u_R − c_R) cut to u_L − c_L) breaks the symmetry."""
    state = strip_state("sod", 64)
    state[:, 1] += 0.5 * state[:, 0]  # a flow, so the problem is not its own mirror
    state[:, 3] += 0.125 * state[:, 0]  # the kinetic energy that flow adds, p unchanged
    mirrored = state.flip(-1).clone()
    mirrored[:, 1] = -mirrored[:, 1]
    a = evolve(state, [0.05])[0, -1]
    b = evolve(mirrored, [0.05])[0, -1].flip(-1)
    b[1] = -b[1]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_at_t0_the_point_at_the_interface_takes_the_right_state():
    rho, _, _ = exact_riemann((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), np.array([0.5]), 0.0)
    assert rho[0] == 0.125


def test_a_rarefaction_keeps_p_over_rho_to_the_gamma_for_gamma_five_thirds():
    gamma = 5.0 / 3.0
    star = star_state((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), gamma)  # a left rarefaction
    assert star.p / star.rho_left**gamma == pytest.approx(1.0, rel=1e-12)


def test_two_strong_rarefactions_meet_the_closed_form_star_pressure():
    """p* = ((2a − (γ−1)Δu/2) / (2a / p^z))^(1/z), z = (γ−1)/2γ, for symmetric states: the
    two-rarefaction formula, exact when both waves are rarefactions (a pressure floor placed
    too high changed it)."""
    gamma, z = 1.4, 0.4 / 2.8
    a = math.sqrt(gamma * 0.4)
    p_star = ((2 * a - 0.5 * (gamma - 1) * 6.0) / (2 * a / 0.4**z)) ** (1 / z)
    star = star_state((1.0, -3.0, 0.4), (1.0, 3.0, 0.4), gamma)
    assert star.p == pytest.approx(p_star, rel=1e-10)


def test_the_two_thirds_band_drops_the_mode_at_a_third_of_the_grid():
    """Mode 8 on a 24² grid lies outside |k| < N/3: kept by a ≤ where the rule says <."""
    y = (torch.arange(24, dtype=torch.float64) / 24)[:, None].expand(24, 24)
    u = torch.sin(2 * math.pi * 8 * y)
    velocity = torch.stack((u, torch.zeros_like(u)))[None]
    assert ns.band_limit(velocity).abs().max() < 1e-12


def test_a_mean_flow_on_a_non_square_grid_is_kept():
    velocity = torch.zeros(1, 2, 24, 32, dtype=torch.float64)
    velocity[:, 0], velocity[:, 1] = 1.0, 0.5
    out = ns.evolve(velocity, [0.0, 0.01])
    torch.testing.assert_close(out[0, :, 0].mean((-2, -1)), torch.ones(2, dtype=torch.float64))


def test_the_cfl_step_reads_u_against_the_width_and_v_against_the_height(monkeypatch):
    steps = []
    real_step = ns._Stepper.step
    monkeypatch.setattr(
        ns._Stepper, "step", lambda self, *args: steps.append(1) or real_step(self, *args)
    )
    velocity = torch.zeros(1, 2, 16, 64, dtype=torch.float64)
    velocity[:, 0] = 1.0  # |u| = 1 along x, where the cells are 1/64 wide
    ns.evolve(velocity, [0.1], cfl=0.5)
    assert len(steps) == math.ceil(0.1 * 64 / 0.5)  # 13 steps, not the 4 of 1/16 cells


def test_a_cfl_number_above_its_limit_is_refused():
    with pytest.raises(SimulationError, match="cfl"):
        ns.evolve(torch.zeros(1, 2, 16, 16, dtype=torch.float64), [0.1], cfl=1.5)


def test_a_blow_up_is_reported(monkeypatch):
    monkeypatch.setattr(ns._Stepper, "step", lambda self, w, n1, dt: w * float("nan"))
    velocity = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    velocity[:, 0] = 1.0
    with pytest.raises(SimulationError, match="blew up"):
        ns.evolve(velocity, [0.1])
