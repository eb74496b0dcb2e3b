"""Initial-condition classes: named, seeded samplers of initial states (METHOD.md §2).

Every sample is a float64 tensor [n, F, R, R] on the periodic unit square, point values at
the cell centres x_j = (j + ½)/R (x along the last axis, y along axis −2), the coordinates
the Well files record. CE samples hold the conserved (ρ, ρu, ρv, E) with γ = 1.4 and keep
their discontinuities sharp; NS samples hold a divergence-free velocity (u, v) built from a
streamfunction, band-limited to the solver's 2/3-rule band (so `navier_stokes.evolve`
returns them unchanged at t = 0) and scaled to RMS speed √⟨u² + v²⟩ = 0.5.

Determinism: `sample(n, R, seed)` seeds one torch.Generator, which draws one seed per sample;
each sample then draws only from its own generator. So the same seed gives bit-identical
output and sample i does not depend on n (prefixes agree). The CE classes and NS-Sines
(R ≥ 15) draw the same parameters on every grid; NS-Gauss and NS-BB fill every mode of the
band, so a finer grid adds finer modes (NS-BB draws shell by shell, so the shells both grids
hold agree up to the RMS normalisation). The samplers live in ``samplers``; this module names,
documents and checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from coherence.errors import RequestError, SimulationError
from coherence.simulation.families import FAMILIES, Family, family_spec
from coherence.simulation.samplers import (
    DTYPE,
    NS_RMS_SPEED,
    ce_crp,
    ce_gauss,
    ce_kh,
    ce_rp,
    ce_rpui,
    ns_bb,
    ns_gauss,
    ns_sines,
    ns_sl,
)

Sampler = Callable[[int, int, torch.Generator], Tensor]  # (n, resolution, generator) → [n,F,R,R]

MIN_RESOLUTION = 8


@dataclass(frozen=True)
class InitialConditionClass:
    """One named family of random initial states; `description` documents parameter ranges."""

    name: str
    family: Family
    description: str
    sampler: Sampler

    def sample(self, n: int, resolution: int, seed: int) -> Tensor:
        """Draw n states on an R×R grid: float64 [n, F, R, R], bit-identical for a given seed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RequestError(f"n={n!r}: ask for a positive integer number of samples")
        if isinstance(resolution, bool) or not isinstance(resolution, int):
            raise RequestError(f"resolution={resolution!r}: must be an integer grid size")
        if resolution < MIN_RESOLUTION:
            raise RequestError(
                f"resolution={resolution}: {self.name} needs at least {MIN_RESOLUTION} points "
                "per side"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise RequestError(f"seed={seed!r}: use an integer in [0, 2**64)")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = self.sampler(n, resolution, gen)
        f = FAMILIES[self.family].n_channels
        expected = (n, f, resolution, resolution)
        if tuple(out.shape) != expected or out.dtype != DTYPE:
            raise SimulationError(
                f"sampler of {self.name} returned {tuple(out.shape)} {out.dtype}, expected "
                f"{expected} float64; this is a bug in the class definition"
            )
        if not bool(torch.isfinite(out).all()):
            raise SimulationError(f"sampler of {self.name} returned non-finite values (a bug)")
        return out


# ------------------------------------------------------------------------------------ registry

_CE_STATES = "ρ ~ U[0.1, 1], p ~ U[0.1, 1], speed ~ U[0, 1] at a uniform angle"
_NS_NOTE = f"divergence-free, in the 2/3-rule band, RMS speed {NS_RMS_SPEED}"

CLASSES: dict[str, InitialConditionClass] = {
    c.name: c
    for c in (
        InitialConditionClass(
            "CE-RP",
            Family.EULER,
            "Four-quadrant Riemann problem: split point (xs, ys) ~ U[0.25, 0.75]², one constant "
            f"state per quadrant with {_CE_STATES}; sharp interfaces (also at the periodic "
            "boundary).",
            ce_rp,
        ),
        InitialConditionClass(
            "CE-CRP",
            Family.EULER,
            "Curved Riemann problem: as CE-RP, but the interfaces are x = xs + A·S(y) and "
            "y = ys + A·S(x), S a 3-mode sine series with coefficients ~ U[−1, 1] normalised by "
            "Σ|a_k|, random phases, A ~ U[0.05, 0.15].",
            ce_crp,
        ),
        InitialConditionClass(
            "CE-RPUI",
            Family.EULER,
            "Riemann problem with uncertain interfaces: straight interfaces at (xs, ys) ~ "
            "U[0.25, 0.75]² perturbed by ε·S, S an 8-mode sine series (Σ|a_k| = 1), ε ~ "
            "U[0.01, 0.02]; checkerboard densities (heavy ~ U[0.6, 1], light ~ U[0.1, 0.4]), "
            "shear across every interface (|u|, |v| ~ U[0.2, 0.7], opposite signs across it), "
            "p ~ U[0.1, 1] per quadrant, so the perturbations grow into fingers.",
            ce_rpui,
        ),
        InitialConditionClass(
            "CE-KH",
            Family.EULER,
            "Kelvin–Helmholtz: periodic band |y − y0| < w, y0 ~ U[0, 1], w ~ U[0.2, 0.3], "
            "ρ_out ~ U[0.5, 1], ρ_in = ρ_out·U[1.5, 3], u = ±Δu/2 with Δu ~ U[0.5, 1.5], "
            "uniform p ~ U[1.5, 3]; v = a·S(x)·exp(−(|y − y0| − w)²/2σ²) with a ~ "
            "U[0.005, 0.02], σ ~ U[0.03, 0.06], S a 4-mode sine series.",
            ce_kh,
        ),
        InitialConditionClass(
            "CE-Gauss",
            Family.EULER,
            "Gaussian bumps: background ρ0, p0 ~ U[0.5, 1] and uniform flow (u0, v0) ~ "
            "U[−0.5, 0.5]²; 1–4 periodic Gaussian bumps (σ ~ U[0.04, 0.1]) adding U[0, 1] to "
            "both ρ and p.",
            ce_gauss,
        ),
        InitialConditionClass(
            "NS-Sines",
            Family.NS,
            "Sum of 4–8 random sine modes of the streamfunction: wavevectors n ∈ [−4, 4]² "
            "(at most the band), velocity amplitude ~ U[0.5, 1] per mode, random phases; "
            f"{_NS_NOTE}.",
            ns_sines,
        ),
        InitialConditionClass(
            "NS-Gauss",
            Family.NS,
            "4–10 periodic Gaussian vortices (vorticity), centres ~ U[0, 1]², σ ~ U[0.05, 0.1], "
            f"strength ±U[0.5, 1]; velocity from −Δψ = ω; {_NS_NOTE}.",
            ns_gauss,
        ),
        InitialConditionClass(
            "NS-BB",
            Family.NS,
            "Brownian-bridge-like random field: Gaussian Fourier coefficients on every mode of "
            "the band with velocity amplitude ~ |n|^(−α), α ~ U[1.5, 2.5] (energy spectrum "
            f"~ k^(1−2α)); {_NS_NOTE}.",
            ns_bb,
        ),
        InitialConditionClass(
            "NS-SL",
            Family.NS,
            "Double shear layer: u = ±1 bands with tanh profiles at y0 ± ¼, y0 ~ U[0, 1], "
            "thickness δ ~ U[1/40, 1/20], v = a·S(x), a ~ U[0.03, 0.08], S a 3-mode sine "
            f"series; band-limited and projected, {_NS_NOTE}.",
            ns_sl,
        ),
    )
}


def get_class(name: str) -> InitialConditionClass:
    """Look up a class by name, with an error that lists the allowed names."""
    try:
        return CLASSES[name]
    except (KeyError, TypeError):
        allowed = ", ".join(CLASSES)
        raise RequestError(
            f"unknown initial-condition class {name!r}; choose one of: {allowed}"
        ) from None


def classes_for(family: Family | str) -> list[str]:
    """Names of the classes of one PDE family, in registry order."""
    spec = family_spec(family)
    return [name for name, c in CLASSES.items() if c.family is spec.family]
