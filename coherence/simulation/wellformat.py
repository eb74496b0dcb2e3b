"""The Well's HDF5 schema: one writer, one validator that reports every problem, one reader.

Schema (docs/data_format.md of The Well), for a 2-D periodic dataset of B trajectories with T
snapshots on an H×W grid:

    root  @dataset_name @grid_type='cartesian' @n_spatial_dims=2 @n_trajectories=B
          @simulation_parameters=[...] (+ one attribute per parameter)
          @initial_condition_class  (ours; foreign files may lack it: the file stem is used)
    dimensions/            @spatial_dims=['x','y']; time float32(T); x float32(W); y float32(H)
    boundary_conditions/   one group per boundary, @bc_type in {periodic, wall, open}
    scalars/               @field_names; one float32 dataset per constant (gamma or nu)
    t0_fields/ t1_fields/ t2_fields/   @field_names; scalar fields float32(B,T,x,y),
                                       vector fields float32(B,T,x,y,2), tensor (B,T,x,y,2,2)

The Well indexes space as (x, y); models see [F, H, W] = [F, y, x]. The reader and writer do
that transpose, so ``read_well_file`` returns states [B, T, F, H, W] in model channel order
(CE: density, momentum_x, momentum_y, energy; NS: velocity_x, velocity_y).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import SchemaError
from coherence.simulation.families import FAMILIES, Family

FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
REQUIRED_ROOT_ATTRS = (
    "dataset_name",
    "grid_type",
    "n_spatial_dims",
    "n_trajectories",
    "simulation_parameters",
)
REQUIRED_GROUPS = ("dimensions", "boundary_conditions", "scalars", *FIELD_GROUPS)
BC_TYPES = ("periodic", "wall", "open")
CLASS_ATTR = "initial_condition_class"


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


def _decode(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _decode(value.item())
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attr(obj: h5py.HLObject, name: str, default: object = None) -> object:
    return _decode(obj.attrs[name]) if name in obj.attrs else default


# ---------------------------------------------------------------------------------------------
# writing


def write_well_file(
    path: str | os.PathLike,
    states: np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    family: str | Family,
    class_name: str,
    dataset_name: str,
) -> Path:
    """Write trajectories ``states`` [B, T, F, H, W] (model channel order) as one Well file.

    The file is written to a temporary name and renamed, so a crash never leaves a half file
    under the final name. It is validated after writing.
    """
    spec = FAMILIES[Family(family)]
    path = Path(path)
    states = np.asarray(states)
    if states.ndim != 5 or states.shape[2] != spec.n_channels:
        raise SchemaError(
            f"{path}: states must be [trajectories, snapshots, {spec.n_channels}, H, W] for "
            f"family {spec.family.value}; got shape {tuple(states.shape)}"
        )
    n_traj, n_steps, _, height, width = states.shape
    if np.shape(times) != (n_steps,):
        raise SchemaError(f"{path}: times has shape {np.shape(times)}, expected ({n_steps},)")
    with WellWriter(
        path,
        family=spec.family,
        class_name=class_name,
        dataset_name=dataset_name,
        n_trajectories=n_traj,
        times=times,
        nx=width,
        ny=height,
    ) as writer:
        # (B, T, F, H, W) -> (B, T, F, x, y): The Well indexes space as (x, y)
        writer.write(0, np.swapaxes(states, -1, -2))
    return path


class WellWriter:
    """Write one Well file block by block (memory bounded by the block, not the file).

    ``write(start, fields)`` stores trajectories start.. from model channels laid out
    [b, T, F, x, y] (The Well's axis order). The file lives under a temporary name until
    ``close`` has checked that every trajectory was written and the file validates; then it
    is renamed. An exception inside ``with`` deletes the temporary file.
    ``scalars`` overrides the family's constants (e.g. an imported γ); ``attrs`` adds root
    attributes (provenance); ``bc_type`` labels both boundaries.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        family: str | Family,
        class_name: str,
        dataset_name: str,
        n_trajectories: int,
        times: Sequence[float] | np.ndarray,
        nx: int,
        ny: int,
        scalars: dict[str, float] | None = None,
        attrs: dict[str, object] | None = None,
        bc_type: str = "periodic",
    ) -> None:
        self.spec = FAMILIES[Family(family)]
        self.path = Path(path)
        self.scalars = dict(self.spec.scalars if scalars is None else scalars)
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1:
            raise SchemaError(f"{self.path}: times must be 1-D, got shape {times.shape}")
        self.n_trajectories, self.n_steps = n_trajectories, times.shape[0]
        self.nx, self.ny = nx, ny
        self._written = np.zeros(n_trajectories, dtype=bool)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp_name = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        try:
            # v108: attributes above 64 KiB (per-trajectory provenance) need dense storage
            self.file = h5py.File(self.tmp_name, "w", libver=("v108", "latest"))
            self._header(class_name, dataset_name, times, attrs or {}, bc_type)
        except BaseException:
            self._discard()
            raise

    def _header(
        self, class_name: str, dataset_name: str, times: np.ndarray, attrs: dict, bc_type: str
    ) -> None:
        f, n_traj, width, height = self.file, self.n_trajectories, self.nx, self.ny
        f.attrs["dataset_name"] = dataset_name
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = 2
        f.attrs["n_trajectories"] = n_traj
        f.attrs["simulation_parameters"] = list(self.scalars)
        for name, value in self.scalars.items():
            f.attrs[name] = value
        f.attrs[CLASS_ATTR] = class_name
        for name, value in attrs.items():
            f.attrs[name] = value

        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        _write_dim(dims, "time", times.astype(np.float32), time_varying=True)
        _write_dim(dims, "x", ((np.arange(width) + 0.5) / width).astype(np.float32))
        _write_dim(dims, "y", ((np.arange(height) + 0.5) / height).astype(np.float32))

        bcs = f.create_group("boundary_conditions")
        for axis, n in (("x", width), ("y", height)):
            bc = bcs.create_group(f"{axis}_{bc_type}")
            bc.attrs["associated_dims"] = [axis]
            bc.attrs["associated_fields"] = []
            bc.attrs["bc_type"] = bc_type
            bc.attrs["sample_varying"] = False
            bc.attrs["time_varying"] = False
            mask = np.zeros(n, dtype=bool)
            mask[[0, -1]] = True
            bc.create_dataset("mask", data=mask)
            bc.create_dataset("values", data=np.zeros(0, dtype=np.float32))

        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = list(self.scalars)
        for name, value in self.scalars.items():
            ds = scalars.create_dataset(name, data=np.float32(value))
            ds.attrs["sample_varying"] = False
            ds.attrs["time_varying"] = False

        groups = {g: f.create_group(g) for g in FIELD_GROUPS}
        self._layout = _channel_layout(self.spec.family)
        for group_name, field_names in self._layout.items():
            groups[group_name].attrs["field_names"] = list(field_names)
            for name in field_names:
                tail = (2,) if group_name == "t1_fields" else ()
                ds = groups[group_name].create_dataset(
                    name, shape=(n_traj, self.n_steps, width, height, *tail), dtype=np.float32
                )
                ds.attrs["dim_varying"] = np.array([True, True])
                ds.attrs["sample_varying"] = True
                ds.attrs["time_varying"] = True
        for group in groups.values():
            group.attrs.setdefault("field_names", [])

    def write(self, start: int, fields: np.ndarray, pressure: np.ndarray | None = None) -> None:
        """Store trajectories ``start..start+b`` from ``fields`` [b, T, F, x, y].

        ``pressure`` [b, T, x, y] (Euler) replaces the pressure computed from the conserved
        channels with γ, e.g. a source's own pressure channel.
        """
        fields = np.asarray(fields)
        expected = (self.n_steps, self.spec.n_channels, self.nx, self.ny)
        if fields.ndim != 5 or fields.shape[1:] != expected:
            raise SchemaError(
                f"{self.path}: a block must be [b, {', '.join(map(str, expected))}] "
                f"(trajectories, snapshots, channels, x, y); got {tuple(fields.shape)}"
            )
        stop = start + fields.shape[0]
        if not 0 <= start <= stop <= self.n_trajectories:
            raise SchemaError(
                f"{self.path}: trajectories {start}..{stop - 1} are outside 0.."
                f"{self.n_trajectories - 1}"
            )
        if not np.all(np.isfinite(fields)):
            raise SchemaError(
                f"{self.path}: refusing to write non-finite values (NaN or inf) in states"
            )
        data = _fields_from_channels(self.spec.family, fields, self.scalars)
        if pressure is not None:
            data["pressure"] = np.asarray(pressure, dtype=np.float32)
        for name, values in data.items():
            group = next(g for g, names in self._layout.items() if name in names)
            self.file[group][name][start:stop] = values
        self._written[start:stop] = True

    def close(self) -> Path:
        """Check completeness and the schema, then move the file to its final name."""
        self.file.close()
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise SchemaError(
                f"{self.path}: trajectories {missing[0]}.. were never written "
                f"({missing.size} of {self.n_trajectories}); the file was not kept"
            )
        problems = validate_well_file(self.tmp_name, stem=self.path.stem)
        if problems:
            raise SchemaError(
                f"{self.path}: the written file failed validation: " + "; ".join(problems)
            )
        os.replace(self.tmp_name, self.path)
        return self.path

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        if os.path.exists(self.tmp_name):
            os.unlink(self.tmp_name)

    def __enter__(self) -> WellWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.close()
        finally:
            self._discard()


def _write_dim(group: h5py.Group, name: str, values: np.ndarray, time_varying: bool = False):
    ds = group.create_dataset(name, data=values)
    ds.attrs["sample_varying"] = False
    ds.attrs["time_varying"] = time_varying


def _channel_layout(family: Family) -> dict[str, tuple[str, ...]]:
    """Which Well field group holds which field (CE: t0 density, energy, pressure; t1 momentum)."""
    if family is Family.EULER:
        return {"t0_fields": ("density", "energy", "pressure"), "t1_fields": ("momentum",)}
    return {"t0_fields": (), "t1_fields": ("velocity",)}


def _fields_from_channels(
    family: Family, fields: np.ndarray, scalars: dict[str, float]
) -> dict[str, np.ndarray]:
    """Model channels [B, T, F, x, y] -> Well fields (scalars [B,T,x,y], vectors [B,T,x,y,2])."""
    if family is Family.EULER:
        rho, mx, my, energy = (fields[:, :, c] for c in range(4))
        gamma = scalars["gamma"]
        kinetic = 0.5 * (mx.astype(np.float64) ** 2 + my.astype(np.float64) ** 2) / rho
        pressure = ((gamma - 1.0) * (energy - kinetic)).astype(np.float32)
        return {
            "density": rho,
            "energy": energy,
            "pressure": pressure,
            "momentum": np.stack([mx, my], axis=-1),
        }
    return {"velocity": np.stack([fields[:, :, 0], fields[:, :, 1]], axis=-1)}


# ---------------------------------------------------------------------------------------------
# validation


def validate_well_file(path: str | os.PathLike, *, stem: str | None = None) -> list[str]:
    """Check every rule of the schema and return all problems (empty list: the file is valid).

    Each problem reads "<file>: <where> <what is wrong> (<fix>)". ``stem`` is the file name
    the class attribute must match, when it differs from the path's (a temporary file).
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file (check the dataset directory)"]
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [f"{path}: not a readable HDF5 file ({exc}); regenerate or re-download it"]
    with f:
        return _validate_open_file(path, f, stem or path.stem)


def _validate_open_file(path: Path, f: h5py.File, stem: str) -> list[str]:
    problems: list[str] = []
    where = str(path)
    for name in REQUIRED_ROOT_ATTRS:
        if name not in f.attrs:
            problems.append(f"{where}: root should contain attribute '{name}'")
    for name in REQUIRED_GROUPS:
        if name not in f or not isinstance(f[name], h5py.Group):
            problems.append(f"{where}: root should contain group '{name}'")
    if problems:
        return problems
    if _attr(f, "grid_type") != "cartesian":
        problems.append(
            f"{where}: @grid_type is {_attr(f, 'grid_type')!r}; only 'cartesian' "
            "grids are supported"
        )
    if _attr(f, "n_spatial_dims") != 2:
        problems.append(
            f"{where}: @n_spatial_dims is {_attr(f, 'n_spatial_dims')!r}; "
            "only 2-D data is supported"
        )
    for param in _attr(f, "simulation_parameters", []) or []:
        if param not in f.attrs:
            problems.append(
                f"{where}: root lists simulation parameter '{param}' but has no attribute '{param}'"
            )
    class_attr = _attr(f, CLASS_ATTR)
    if class_attr is not None and class_attr != stem:
        problems.append(
            f"{where}: @{CLASS_ATTR} is {class_attr!r} but the file is named "
            f"'{stem}.hdf5'; name the file '<class>.hdf5' ({class_attr}.hdf5)"
        )

    dims = f["dimensions"]
    spatial = _attr(dims, "spatial_dims")
    if list(spatial or []) != ["x", "y"]:
        problems.append(f"{where}: dimensions/@spatial_dims should be ['x', 'y'], got {spatial!r}")
    for name in ("time", "x", "y"):
        if name not in dims:
            problems.append(f"{where}: dimensions should contain dataset '{name}'")
    for bc_name, bc in f["boundary_conditions"].items():
        bc_type = _attr(bc, "bc_type")
        if str(bc_type).lower() not in BC_TYPES:
            problems.append(
                f"{where}: boundary_conditions/{bc_name}/@bc_type is {bc_type!r}; "
                f"allowed: {', '.join(BC_TYPES)}"
            )
    scalars = f["scalars"]
    for name in _attr(scalars, "field_names", []) or []:
        if name not in scalars:
            problems.append(f"{where}: scalars lists '{name}' but has no dataset '{name}'")
    if problems:
        return problems

    n_traj = int(_attr(f, "n_trajectories"))
    n_steps = dims["time"].shape[0] if dims["time"].ndim == 1 else -1
    if n_steps < 2:
        problems.append(
            f"{where}: dimensions/time should be 1-D with at least 2 snapshots, "
            f"got shape {dims['time'].shape}"
        )
    nx, ny = dims["x"].shape[0], dims["y"].shape[0]
    times = np.asarray(dims["time"][()], dtype=np.float64)
    if times.ndim == 1 and times.size > 1 and not np.all(np.diff(times) > 0):
        problems.append(f"{where}: dimensions/time must increase strictly")

    for group_name, rank in zip(FIELD_GROUPS, (0, 1, 2), strict=True):
        group = f[group_name]
        names = _attr(group, "field_names")
        if names is None:
            problems.append(f"{where}: {group_name} should contain attribute 'field_names'")
            names = list(group.keys())
        for name in names:
            if name not in group:
                problems.append(
                    f"{where}: {group_name} lists field '{name}' but has no dataset '{name}'"
                )
                continue
            ds = group[name]
            expected = (n_traj, n_steps, nx, ny) + (2,) * rank
            if ds.shape != expected:
                problems.append(
                    f"{where}: {group_name}/{name} has shape {ds.shape}, expected "
                    f"{expected} (trajectories, time, x, y{', 2' * rank})"
                )
            if ds.dtype.kind != "f":
                problems.append(
                    f"{where}: {group_name}/{name} has dtype {ds.dtype}; fields "
                    "must be floating point (float32)"
                )
    if not problems:
        try:
            _detect_family(f)
        except SchemaError as exc:
            problems.append(str(exc).replace("<file>", where))
    return problems


def _detect_family(f: h5py.File) -> Family:
    t0 = set(f["t0_fields"].keys())
    t1 = set(f["t1_fields"].keys())
    if {"density", "energy"} <= t0 and "momentum" in t1:
        return Family.EULER
    if "velocity" in t1 and "density" not in t0:
        return Family.NS
    raise SchemaError(
        "<file>: cannot tell the PDE family from its fields (t0: "
        f"{sorted(t0)}, t1: {sorted(t1)}); compressible Euler needs t0 'density', 'energy' and "
        "t1 'momentum'; incompressible Navier–Stokes needs t1 'velocity'"
    )


# ---------------------------------------------------------------------------------------------
# reading


def read_metadata(path: str | os.PathLike) -> WellMetadata:
    """Validate a Well file and describe it; raises SchemaError listing every problem."""
    path = Path(path)
    problems = validate_well_file(path)
    if problems:
        raise SchemaError("; ".join(problems))
    with h5py.File(path, "r") as f:
        return _metadata(path, f)


def _metadata(path: Path, f: h5py.File) -> WellMetadata:
    family = _detect_family(f)
    # Root attributes keep the exact (float64) parameter; scalars/ holds float32 copies.
    scalars = {
        name: float(_attr(f, name, np.asarray(f["scalars"][name][()]).reshape(-1)[0]))
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
