"""The two PDE families: their state channels (model order) and physical constants."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coherence.errors import parse_choice

SPLITS = ("train", "valid", "test")  # the Well layout's splits, in its order


class Family(StrEnum):
    EULER = "euler"
    NS = "ns"


@dataclass(frozen=True)
class FamilySpec:
    """What a state of one family looks like, in the channel order models see."""

    family: Family
    channels: tuple[str, ...]
    scalars: dict[str, float]
    description: str

    @property
    def n_channels(self) -> int:
        return len(self.channels)


EULER_GAMMA = 1.4
NS_VISCOSITY = 4e-4

FAMILIES: dict[Family, FamilySpec] = {
    Family.EULER: FamilySpec(
        family=Family.EULER,
        channels=("density", "momentum_x", "momentum_y", "energy"),
        scalars={"gamma": EULER_GAMMA},
        description="2-D compressible Euler, conserved variables (ρ, ρu, ρv, E), γ = 1.4",
    ),
    Family.NS: FamilySpec(
        family=Family.NS,
        channels=("velocity_x", "velocity_y"),
        scalars={"nu": NS_VISCOSITY},
        description="2-D incompressible Navier–Stokes, velocity (u, v), ν = 4e-4",
    ),
}
# the physical constants a model is tied to (γ, ν): compared between a class's files and
# between a checkpoint and the data it meets; other scalars a file may hold are not
PHYSICAL_CONSTANTS = tuple(sorted({name for spec in FAMILIES.values() for name in spec.scalars}))


def family_spec(name: str | Family) -> FamilySpec:
    """Look up a family by name, with an error that lists the allowed values."""
    return FAMILIES[parse_choice(Family, name, "PDE family")]
