"""The exact Riemann solver against Toro's published values and the jump conditions."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.errors import RequestError, SimulationError
from coherence.simulation.riemann import exact_riemann, star_state, wave_extent

GAMMA = 1.4

TORO_TESTS = {  # Toro (2009), Table 4.1: left and right (rho, u, p)
    1: ((1.0, 0.0, 1.0), (0.125, 0.0, 0.1)),
    2: ((1.0, -2.0, 0.4), (1.0, 2.0, 0.4)),
    3: ((1.0, 0.0, 1000.0), (1.0, 0.0, 0.01)),
    4: ((1.0, 0.0, 0.01), (1.0, 0.0, 100.0)),
}

TORO_STAR = {  # Toro (2009), Table 4.2: p*, u*, rho*_L, rho*_R as printed
    1: ("0.30313", "0.92745", "0.42632", "0.26557"),
    2: ("0.00189", "0.00000", "0.02185", "0.02185"),
    3: ("460.894", "19.5975", "0.57506", "5.99924"),
    4: ("46.0950", "-6.19633", "5.99242", "0.57511"),
    5: ("1691.64", "8.68975", "14.2823", "31.0426"),
}


def toro_states(test: int):
    """Left/right states; test 5 is the collision of the flows behind the shocks of tests 3, 4.

    Table 4.1 prints test 5's data rounded to six digits; Table 4.2 was computed from the
    unrounded star states (with the rounded data p* comes out 1691.647, not 1691.64).
    """
    if test != 5:
        return TORO_TESTS[test]
    three = star_state(*TORO_TESTS[3], GAMMA)
    four = star_state(*TORO_TESTS[4], GAMMA)
    return (three.rho_right, three.u, three.p), (four.rho_left, four.u, four.p)


def assert_matches_printed(got: float, printed: str, name: str) -> None:
    """|got − printed| ≤ half a unit in the last printed digit."""
    decimals = len(printed.split(".")[1])
    assert abs(got - float(printed)) <= 0.5 * 10.0**-decimals * (1 + 1e-9), (name, got, printed)


@pytest.mark.parametrize("test", sorted(TORO_STAR))
def test_star_state_matches_toro_table_4_2_to_the_printed_digits(test):
    star = star_state(*toro_states(test), GAMMA)
    for name, got, printed in zip(
        ("p*", "u*", "rho*_L", "rho*_R"), star, TORO_STAR[test], strict=True
    ):
        assert_matches_printed(got, printed, name)


def test_test5_inputs_printed_by_toro_are_the_rounded_star_states():
    left, right = toro_states(5)
    for got, printed in zip(
        left + right,
        ("5.99924", "19.5975", "460.894", "5.99242", "-6.19633", "46.0950"),
        strict=True,
    ):
        assert_matches_printed(got, printed, "test 5 data")


def test_two_rarefaction_closed_form_for_the_123_problem():
    """Two rarefactions: p* = [(a_L + a_R − (γ−1)/2 Δu) / (a_L/p_L^z + a_R/p_R^z)]^(1/z)."""
    (rho_l, u_l, p_l), (rho_r, u_r, p_r) = TORO_TESTS[2]
    z = (GAMMA - 1) / (2 * GAMMA)
    a_l, a_r = np.sqrt(GAMMA * p_l / rho_l), np.sqrt(GAMMA * p_r / rho_r)
    p_star = ((a_l + a_r - 0.5 * (GAMMA - 1) * (u_r - u_l)) / (a_l / p_l**z + a_r / p_r**z)) ** (
        1 / z
    )
    assert star_state(*TORO_TESTS[2], GAMMA).p == pytest.approx(p_star, rel=1e-12)


def conserved_and_flux(rho, u, p):
    energy = p / (GAMMA - 1) + 0.5 * rho * u**2
    return np.array([rho, rho * u, energy]), np.array([rho * u, rho * u**2 + p, u * (energy + p)])


@pytest.mark.parametrize("test", [1, 3, 4, 5])
def test_sampled_shocks_satisfy_rankine_hugoniot(test):
    left, right = toro_states(test)
    star = star_state(left, right, GAMMA)
    low, high = wave_extent(left, right, GAMMA)
    t, eps = 0.01, 1e-9
    for speed, outer_pressure in ((low, left[2]), (high, right[2])):
        if star.p <= outer_pressure:
            continue  # a rarefaction on this side
        x = np.array([0.5 + speed * t - eps, 0.5 + speed * t + eps])
        rho, u, p = exact_riemann(left, right, x, t, gamma=GAMMA)
        (u_a, f_a), (u_b, f_b) = (conserved_and_flux(rho[i], u[i], p[i]) for i in (0, 1))
        np.testing.assert_allclose(speed * (u_b - u_a), f_b - f_a, rtol=1e-10, atol=1e-10)
        assert abs(rho[1] - rho[0]) > 1e-3  # a genuine jump was sampled


def test_rarefaction_fan_is_isentropic_and_keeps_its_riemann_invariant():
    left, right = TORO_TESTS[1]
    star = star_state(left, right, GAMMA)
    rho_l, u_l, p_l = left
    a_l = np.sqrt(GAMMA * p_l / rho_l)
    head = u_l - a_l
    tail = star.u - a_l * (star.p / p_l) ** ((GAMMA - 1) / (2 * GAMMA))
    t = 0.2
    x = 0.5 + np.linspace(head, tail, 101) * t
    rho, u, p = exact_riemann(left, right, x, t, gamma=GAMMA)
    np.testing.assert_allclose(p / rho**GAMMA, p_l / rho_l**GAMMA, rtol=1e-12)
    a = np.sqrt(GAMMA * p / rho)
    np.testing.assert_allclose(u + 2 * a / (GAMMA - 1), u_l + 2 * a_l / (GAMMA - 1), rtol=1e-12)
    np.testing.assert_allclose(u - a, (x - 0.5) / t, rtol=1e-12, atol=1e-12)  # C− characteristics
    np.testing.assert_allclose([rho[0], rho[-1]], [rho_l, star.rho_left], rtol=1e-12)


def test_contact_carries_density_jump_only():
    left, right = TORO_TESTS[1]
    star = star_state(left, right, GAMMA)
    t, eps = 0.2, 1e-9
    x = 0.5 + star.u * t + np.array([-eps, eps])
    rho, u, p = exact_riemann(left, right, x, t, gamma=GAMMA)
    np.testing.assert_allclose(u, star.u, rtol=1e-14)
    np.testing.assert_allclose(p, star.p, rtol=1e-14)
    np.testing.assert_allclose(rho, [star.rho_left, star.rho_right], rtol=1e-14)


@pytest.mark.parametrize("test", [1, 2, 3, 4])
def test_mirror_image_problem_gives_mirror_image_solution(test):
    (rho_l, u_l, p_l), (rho_r, u_r, p_r) = TORO_TESTS[test]
    x = np.linspace(0.0, 1.0, 401)
    rho, u, p = exact_riemann((rho_l, u_l, p_l), (rho_r, u_r, p_r), x, 0.01, gamma=GAMMA)
    mirrored = exact_riemann((rho_r, -u_r, p_r), (rho_l, -u_l, p_l), 1.0 - x, 0.01, gamma=GAMMA)
    for got, want in zip(mirrored, (rho, -u, p), strict=True):
        np.testing.assert_allclose(got[1:-1], want[1:-1], rtol=1e-12, atol=1e-14)


def test_initial_data_and_shapes():
    left, right = TORO_TESTS[1]
    x = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    rho, u, p = exact_riemann(left, right, x, 0.0, x0=0.4, gamma=GAMMA)
    assert rho.shape == u.shape == p.shape == (3, 4)
    np.testing.assert_array_equal(rho, np.where(x < 0.4, 1.0, 0.125))
    np.testing.assert_array_equal(p, np.where(x < 0.4, 1.0, 0.1))
    rho, _, _ = exact_riemann(left, right, x, 0.1, x0=0.4, gamma=GAMMA)
    assert rho[0, 0] == 1.0 and rho[-1, -1] == 0.125  # outside the fan: untouched


def test_wave_extent_of_sod():
    low, high = wave_extent(*TORO_TESTS[1], GAMMA)
    assert low == pytest.approx(-np.sqrt(GAMMA), rel=1e-14)  # rarefaction head u_L − a_L
    star = star_state(*TORO_TESTS[1], GAMMA)
    rho_r = 0.125
    # shock speed from mass conservation across the shock: S = ρ*_R u* / (ρ*_R − ρ_R)
    assert high == pytest.approx(star.rho_right * star.u / (star.rho_right - rho_r), rel=1e-12)


def test_vacuum_is_detected():
    with pytest.raises(SimulationError, match="vacuum"):
        star_state((1.0, -4.0, 0.4), (1.0, 4.0, 0.4), GAMMA)


@pytest.mark.parametrize(
    ("left", "right", "message"),
    [
        ((1.0, 0.0, -1.0), (1.0, 0.0, 1.0), "pressure > 0"),
        ((0.0, 0.0, 1.0), (1.0, 0.0, 1.0), "density > 0"),
        ((1.0, 0.0), (1.0, 0.0, 1.0), "triple"),
        ((1.0, float("inf"), 1.0), (1.0, 0.0, 1.0), "finite"),
    ],
)
def test_bad_states_are_rejected(left, right, message):
    with pytest.raises(RequestError, match=message):
        star_state(left, right, GAMMA)


def test_bad_time_and_gamma_are_rejected():
    with pytest.raises(RequestError, match="t = "):
        exact_riemann(*TORO_TESTS[1], np.zeros(3), -1.0)
    with pytest.raises(RequestError, match="gamma"):
        star_state(*TORO_TESTS[1], gamma=1.0)
