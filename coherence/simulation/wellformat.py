"""The Well's HDF5 format: the reader here; the schema and its validator in ``wellschema``,
the writer in ``wellwriter`` (all re-exported here, the one import path for callers).

The Well indexes space as (x, y); models see [F, H, W] = [F, y, x]. The reader and writer do
that transpose, so ``read_well_file`` returns states [B, T, F, H, W] in model channel order
(CE: density, momentum_x, momentum_y, energy; NS: velocity_x, velocity_y).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import SchemaError
from coherence.simulation.families import FAMILIES, Family
from coherence.simulation.wellschema import (
    BC_TYPES,
    CLASS_ATTR,
    FIELD_GROUPS,
    REQUIRED_GROUPS,
    REQUIRED_ROOT_ATTRS,
    _attr,
    _detect_family,
    validate_well_file,
)
from coherence.simulation.wellwriter import WellWriter, write_well_file

__all__ = [
    "BC_TYPES",
    "CLASS_ATTR",
    "FIELD_GROUPS",
    "REQUIRED_GROUPS",
    "REQUIRED_ROOT_ATTRS",
    "WellMetadata",
    "WellWriter",
    "read_metadata",
    "read_well_file",
    "validate_well_file",
    "write_well_file",
]


@dataclass(frozen=True)
class WellMetadata:
    """What a reader needs to know about one Well file, derived from the file itself."""

    path: Path
    dataset_name: str
    family: Family
    class_name: str
    n_trajectories: int
    n_steps: int
    height: int
    width: int
    times: np.ndarray = field(repr=False)
    scalars: dict[str, float] = field(default_factory=dict)
    bc_types: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return FAMILIES[self.family].channels


SCHEMA_FIX = (
    "the file does not follow The Well's schema: regenerate it (`coherence simulate`), import "
    "its source again (`coherence import`), or download it again"
)


def read_metadata(path: str | os.PathLike) -> WellMetadata:
    """Validate a Well file and describe it; raises SchemaError listing every problem."""
    path = Path(path)
    problems = validate_well_file(path)
    if problems:
        text = "; ".join(problems)
        if "regenerate" not in text:  # the rules' lines say what is wrong, not what to do
            text += f"; {SCHEMA_FIX}"
        raise SchemaError(text)
    with h5py.File(path, "r") as f:
        return _metadata(path, f)


def _number(path: Path, name: str, value: object) -> float:
    """A physical constant (γ, ν) as a float; SchemaError naming the file when it is none
    (a string @gamma ended a command in a traceback)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SchemaError(
            f"{path}: the constant {name} is {value!r}, not a finite number; re-import or "
            "re-simulate this file"
        )
    return number


def _metadata(path: Path, f: h5py.File) -> WellMetadata:
    family = _detect_family(f)
    # Root attributes keep the exact (float64) parameter; scalars/ holds float32 copies.
    scalars = {
        name: _number(path, name, _attr(f, name, np.asarray(f["scalars"][name][()]).reshape(-1)[0]))
        for name in (_attr(f["scalars"], "field_names", []) or [])
        if np.asarray(f["scalars"][name][()]).size >= 1
    }
    dims = f["dimensions"]
    return WellMetadata(
        path=path,
        dataset_name=str(_attr(f, "dataset_name")),
        family=family,
        class_name=str(_attr(f, CLASS_ATTR, path.stem)),
        n_trajectories=int(_attr(f, "n_trajectories")),
        n_steps=int(dims["time"].shape[0]),
        height=int(dims["y"].shape[0]),
        width=int(dims["x"].shape[0]),
        times=np.asarray(dims["time"][()], dtype=np.float64),
        scalars=scalars,
        bc_types=tuple(
            str(_attr(bc, "bc_type")).lower() for bc in f["boundary_conditions"].values()
        ),
    )


def read_well_file(
    path: str | os.PathLike,
    *,
    trajectories: Sequence[int] | None = None,
    steps: slice | None = None,
) -> tuple[np.ndarray, WellMetadata]:
    """Read states [B, T, F, H, W] (float32, model channel order) and the file's metadata.

    ``trajectories`` picks trajectory indices, ``steps`` a slice of snapshots; both are
    checked against the file and reported with the available range when out of bounds.
    Non-finite values are refused with the trajectory that holds them.
    """
    path = Path(path)
    meta = read_metadata(path)
    traj_idx = list(range(meta.n_trajectories)) if trajectories is None else list(trajectories)
    bad = [i for i in traj_idx if not 0 <= i < meta.n_trajectories]
    if bad:
        raise SchemaError(
            f"{path}: trajectory index {bad[0]} is out of range; this file holds trajectories "
            f"0..{meta.n_trajectories - 1}"
        )
    step_slice = steps if steps is not None else slice(None)
    if step_slice.stop is not None and step_slice.stop > meta.n_steps:
        raise SchemaError(
            f"{path}: snapshots up to {step_slice.stop} requested but the file has "
            f"{meta.n_steps} (indices 0..{meta.n_steps - 1})"
        )
    order = np.argsort(traj_idx)  # h5py fancy indexing needs increasing indices
    sorted_idx = [traj_idx[i] for i in order]
    unique_idx = sorted(set(sorted_idx))
    with h5py.File(path, "r") as f:
        parts = _channels_from_fields(meta.family, f, unique_idx, step_slice)
    states = np.stack(parts, axis=2)  # (B, T, F, x, y)
    states = np.ascontiguousarray(np.swapaxes(states, -1, -2), dtype=np.float32)  # (B,T,F,H,W)
    position = {t: k for k, t in enumerate(unique_idx)}
    states = states[[position[t] for t in traj_idx]]
    finite = np.isfinite(states).reshape(len(traj_idx), -1).all(axis=1)
    if not finite.all():
        first = traj_idx[int(np.argmin(finite))]
        raise SchemaError(
            f"{path}: trajectory {first} contains NaN or inf values; regenerate the file or "
            "exclude that trajectory"
        )
    if meta.family is Family.EULER:  # channel 0: a compressible flow's density is positive
        positive = (states[:, :, 0] > 0).reshape(len(traj_idx), -1).all(axis=1)
        if not positive.all():
            k = int(np.argmin(positive))
            raise SchemaError(
                f"{path}: trajectory {traj_idx[k]} has a density ≤ 0 (min "
                f"{float(states[k, :, 0].min()):.3g}), which no compressible Euler state has; "
                "the file is damaged or not a CE dataset: regenerate it or exclude that "
                "trajectory"
            )
    return states, meta


def _channels_from_fields(
    family: Family, f: h5py.File, idx: list[int], steps: slice
) -> list[np.ndarray]:
    """Well fields -> model channels, each [B, T, x, y]."""
    if family is Family.EULER:
        momentum = f["t1_fields"]["momentum"][idx, steps]
        return [
            f["t0_fields"]["density"][idx, steps],
            momentum[..., 0],
            momentum[..., 1],
            f["t0_fields"]["energy"][idx, steps],
        ]
    velocity = f["t1_fields"]["velocity"][idx, steps]
    return [velocity[..., 0], velocity[..., 1]]
