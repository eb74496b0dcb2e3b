"""Initial-condition classes: shapes, determinism, physical ranges, solenoidal NS fields."""

from __future__ import annotations

import math

import pytest
import torch

from coherence.errors import RequestError, SimulationError
from coherence.simulation import navier_stokes as ns
from coherence.simulation.classes import (
    CLASSES,
    MIN_RESOLUTION,
    NS_RMS_SPEED,
    InitialConditionClass,
    classes_for,
    get_class,
)
from coherence.simulation.families import EULER_GAMMA, FAMILIES, Family

CE_NAMES = classes_for(Family.EULER)
NS_NAMES = classes_for(Family.NS)

pytestmark = pytest.mark.usefixtures("single_thread")  # small FFTs gain nothing from threads


def _primitive(state: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Conserved [n, 4, R, R] → (ρ, u, v, p), computed independently of the samplers."""
    rho, mx, my, energy = state.unbind(1)
    u, v = mx / rho, my / rho
    p = (EULER_GAMMA - 1) * (energy - 0.5 * rho * (u**2 + v**2))
    return rho, u, v, p


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_class_samples_deterministic_float64_states(name: str) -> None:
    ic = get_class(name)
    assert ic.name == name and ic.description
    channels = FAMILIES[ic.family].n_channels
    for resolution in (MIN_RESOLUTION, 32, 64):
        a = ic.sample(3, resolution, seed=11)
        assert a.shape == (3, channels, resolution, resolution)
        assert a.dtype == torch.float64
        assert bool(torch.isfinite(a).all())
    a = ic.sample(3, 32, seed=11)
    assert torch.equal(a, ic.sample(3, 32, seed=11))  # bit-identical
    assert torch.equal(a[:2], ic.sample(2, 32, seed=11))  # sample i does not depend on n
    b = ic.sample(3, 32, seed=12)
    assert not torch.allclose(a, b)
    for i in range(3):  # the samples of one draw differ from each other too
        for j in range(i):
            assert not torch.allclose(a[i], a[j])


@pytest.mark.parametrize("name", CE_NAMES)
def test_ce_samples_are_physical(name: str) -> None:
    rho, u, v, p = _primitive(get_class(name).sample(16, 32, seed=5))
    assert float(rho.min()) > 0 and float(p.min()) > 0
    if name in ("CE-RP", "CE-CRP", "CE-RPUI"):  # documented ranges of the quadrant states
        tol = 1e-12
        assert 0.1 - tol <= float(rho.min()) and float(rho.max()) <= 1 + tol
        assert 0.1 - tol <= float(p.min()) and float(p.max()) <= 1 + tol
        assert float(torch.hypot(u, v).max()) <= 1 + tol
        # piecewise constant: at most four distinct states per sample
        for sample in rho:
            assert 2 <= sample.unique().numel() <= 4


def test_rpui_interfaces_carry_density_jumps_and_shear() -> None:
    rho, u, v, _ = _primitive(get_class("CE-RPUI").sample(8, 64, seed=2))
    # across the horizontal interface u jumps by at least 0.4, across the vertical one v does
    for r, uu, vv in zip(rho, u, v, strict=True):
        assert float(uu.max() - uu.min()) >= 0.4 - 1e-12
        assert float(vv.max() - vv.min()) >= 0.4 - 1e-12
        assert float(r.max() - r.min()) >= 0.2 - 1e-12


def test_random_parameters_do_not_depend_on_resolution() -> None:
    coarse = get_class("CE-RP").sample(2, 32, seed=4)
    fine = get_class("CE-RP").sample(2, 64, seed=4)
    for a, b in zip(coarse[:, 0], fine[:, 0], strict=True):
        torch.testing.assert_close(a.unique(), b.unique(), rtol=0, atol=0)
    # NS-Sines: the same Fourier amplitudes on both grids (cell-centre phases differ)
    coarse = torch.fft.fft2(get_class("NS-Sines").sample(2, 32, seed=4)).abs() / 32**2
    fine = torch.fft.fft2(get_class("NS-Sines").sample(2, 64, seed=4)).abs() / 64**2
    idx = torch.arange(-4, 5)
    torch.testing.assert_close(
        coarse[..., idx[:, None] % 32, idx % 32],
        fine[..., idx[:, None] % 64, idx % 64],
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", NS_NAMES)
def test_ns_samples_are_solenoidal_band_limited_and_scaled(name: str) -> None:
    for resolution in (32, 64):
        vel = get_class(name).sample(4, resolution, seed=9)
        assert float(ns.divergence(vel).abs().max()) < 1e-10
        rms = vel.pow(2).sum(1).mean((-2, -1)).sqrt()
        torch.testing.assert_close(rms, torch.full_like(rms, NS_RMS_SPEED), rtol=1e-12, atol=0)
        # inside the solver's 2/3 band, so the solver starts from exactly this field
        torch.testing.assert_close(ns.band_limit(vel), vel, rtol=0, atol=1e-13)
        torch.testing.assert_close(ns.project_divergence_free(vel), vel, rtol=0, atol=1e-13)


def test_registry_lookup_and_errors() -> None:
    assert set(CE_NAMES) >= {"CE-RP", "CE-CRP", "CE-RPUI"}
    assert set(NS_NAMES) >= {"NS-Sines", "NS-Gauss", "NS-BB"}
    assert set(CE_NAMES) | set(NS_NAMES) == set(CLASSES)
    assert classes_for("ns") == NS_NAMES
    with pytest.raises(RequestError) as err:
        get_class("CE-XX")
    for name in CLASSES:
        assert name in str(err.value)
    with pytest.raises(RequestError, match="family"):
        classes_for("maxwell")


@pytest.mark.parametrize(
    ("n", "resolution", "seed", "match"),
    [
        (0, 32, 0, "n=0"),
        (2, MIN_RESOLUTION - 1, 0, "resolution"),
        (2, 32.0, 0, "resolution"),
        (2, 32, -1, "seed"),
        (2, 32, 2**64, "seed"),
    ],
)
def test_bad_sample_requests_raise(n, resolution, seed, match) -> None:
    with pytest.raises(RequestError, match=match):
        get_class("NS-Sines").sample(n, resolution, seed)


def test_broken_sampler_is_reported() -> None:
    broken = InitialConditionClass(
        "broken", Family.NS, "returns the wrong shape", lambda n, r, g: torch.zeros(n, 3, r, r)
    )
    with pytest.raises(SimulationError, match="broken"):
        broken.sample(2, 16, 0)


@pytest.mark.slow
def test_ce_classes_evolve_under_euler() -> None:
    euler = pytest.importorskip("coherence.simulation.euler")
    if not callable(getattr(euler, "evolve", None)):
        pytest.skip("coherence.simulation.euler.evolve is not available yet")
    states = torch.cat([get_class(name).sample(1, 32, seed=0) for name in CE_NAMES])
    out = euler.evolve(states, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert out.shape == (len(CE_NAMES), 3, 4, 32, 32)
    assert bool(torch.isfinite(out).all())
    rho, _, _, p = _primitive(out.flatten(0, 1))
    assert float(rho.min()) > 0 and float(p.min()) > 0, "ρ or p lost positivity"
    assert not math.isclose(float((out[:, -1] - out[:, 0]).abs().max()), 0.0)
