"""The Well's HDF5 schema: its names and the one validator that reports every problem.

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

The validator checks in three passes, each only when the one before found nothing: the
required attributes and groups; the header (grid, parameters, dimensions, boundaries,
scalars); the data (time axis, every field's shape and dtype) and the PDE family. The writer
is ``wellwriter``, the reader ``wellformat`` (which re-exports both and this module's names).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import SchemaError
from coherence.simulation.families import Family

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


def _names(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A list-of-strings attribute (field_names, spatial_dims), or None when it is not one."""
    value = _attr(obj, name)
    if isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _not_an_array(group: h5py.Group, name: str) -> str | None:
    """Why ``name`` is not a dataset of this file (None when it is one): missing, a group, or
    data kept in another file. A dangling external link raised KeyError; a live one read data
    from outside the workspace, which the scan refuses for symlinks."""
    link = group.get(name, getlink=True)
    if link is None:
        return "it is missing"
    if isinstance(link, h5py.ExternalLink):
        return f"it links to {link.filename}; the data must be in the file itself"
    found = group.get(name)
    if found is None:
        return f"it links to {getattr(link, 'path', 'a path')}, which does not exist"
    if not isinstance(found, h5py.Dataset):
        return "it is a group"
    if found.is_virtual:
        return "it is a virtual dataset reading other files; the data must be in the file itself"
    if found.external:
        return (
            f"its values are stored in {found.external[0][0]}; the data must be in the file itself"
        )
    return None


def _numeric(ds: h5py.Dataset) -> bool:
    return ds.dtype.kind in "fiu"


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
        try:
            return _validate_open_file(path, f, stem or path.stem)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OSError) as exc:
            # a layout no rule foresaw: still one problem line, never a traceback
            return [
                f"{path}: cannot be read as a Well file ({type(exc).__name__}: {exc}); "
                "regenerate or re-download it"
            ]


def _structure_problems(where: str, f: h5py.File) -> list[str]:
    """Required root attributes and groups (nothing else can be checked without them)."""
    problems = []
    for name in REQUIRED_ROOT_ATTRS:
        if name not in f.attrs:
            problems.append(f"{where}: root should contain attribute '{name}'")
    for name in REQUIRED_GROUPS:
        external = isinstance(f.get(name, getlink=True), h5py.ExternalLink)
        if external or name not in f or not isinstance(f[name], h5py.Group):
            problems.append(f"{where}: root should contain group '{name}'")
    return problems


def _root_problems(where: str, f: h5py.File, stem: str) -> list[str]:
    """Grid, dimensionality, listed parameters and the class attribute against the file name."""
    problems = []
    if _attr(f, "grid_type") != "cartesian":
        problems.append(
            f"{where}: @grid_type is {_attr(f, 'grid_type')!r}; only 'cartesian' "
            "grids are supported"
        )
    n_traj = _attr(f, "n_trajectories")
    if isinstance(n_traj, bool) or not isinstance(n_traj, int) or n_traj < 1:
        problems.append(
            f"{where}: @n_trajectories is {n_traj!r}; it should be the number of trajectories "
            "(an integer ≥ 1)"
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
    return problems


def _group_header_problems(where: str, f: h5py.File) -> list[str]:
    """dimensions/, boundary_conditions/ and scalars/: their attributes and listed datasets."""
    problems = []
    dims = f["dimensions"]
    if _names(dims, "spatial_dims") != ["x", "y"]:
        spatial = _attr(dims, "spatial_dims")
        problems.append(f"{where}: dimensions/@spatial_dims should be ['x', 'y'], got {spatial!r}")
    for name in ("time", "x", "y"):
        if why := _not_an_array(dims, name):
            problems.append(f"{where}: dimensions should contain dataset '{name}' ({why})")
        elif not _numeric(dims[name]):
            problems.append(f"{where}: dimensions/{name} holds {dims[name].dtype}, not numbers")
    for bc_name in f["boundary_conditions"]:
        bc = f["boundary_conditions"].get(bc_name)
        if not isinstance(bc, h5py.Group):
            problems.append(f"{where}: boundary_conditions/{bc_name} should be a group")
            continue
        bc_type = _attr(bc, "bc_type")
        if str(bc_type).lower() not in BC_TYPES:
            problems.append(
                f"{where}: boundary_conditions/{bc_name}/@bc_type is {bc_type!r}; "
                f"allowed: {', '.join(BC_TYPES)}"
            )
    scalars = f["scalars"]
    names = _names(scalars, "field_names") if "field_names" in scalars.attrs else []
    if names is None:
        problems.append(f"{where}: scalars/@field_names should be a list of names")
    for name in names or []:
        if why := _not_an_array(scalars, name):
            problems.append(f"{where}: scalars lists '{name}' but has no dataset '{name}' ({why})")
        elif not _numeric(scalars[name]) or scalars[name].size < 1:
            problems.append(f"{where}: scalars/{name} should hold a number")
    return problems


def _time_problems(where: str, time: h5py.Dataset) -> list[str]:
    """dimensions/time: 1-D, at least 2 snapshots, strictly increasing."""
    problems = []
    if (time.shape[0] if time.ndim == 1 else -1) < 2:
        problems.append(
            f"{where}: dimensions/time should be 1-D with at least 2 snapshots, "
            f"got shape {time.shape}"
        )
    times = np.asarray(time[()], dtype=np.float64)
    if times.ndim == 1 and times.size > 1 and not np.all(np.diff(times) > 0):
        problems.append(f"{where}: dimensions/time must increase strictly")
    return problems


def _field_arrays(f: h5py.File) -> list[h5py.Dataset]:
    """Every field dataset that the tN_fields groups list and hold."""
    arrays = []
    for group_name in FIELD_GROUPS:
        group = f[group_name]
        names = _names(group, "field_names") if "field_names" in group.attrs else list(group)
        arrays += [group[n] for n in names or () if not _not_an_array(group, n)]
    return arrays


def _field_group_problems(
    where: str, group_name: str, group: h5py.Group, grid: tuple[int, ...], rank: int
) -> list[str]:
    """Every listed field of one tN_fields group exists, has shape grid + (2,)·rank, is float."""
    problems = []
    if "field_names" not in group.attrs:
        problems.append(f"{where}: {group_name} should contain attribute 'field_names'")
        names = list(group.keys())
    else:
        names = _names(group, "field_names")
        if names is None:
            return [f"{where}: {group_name}/@field_names should be a list of field names"]
    for name in names:
        if why := _not_an_array(group, name):
            problems.append(
                f"{where}: {group_name} lists field '{name}' but has no dataset '{name}' ({why})"
            )
            continue
        ds = group[name]
        expected = grid + (2,) * rank
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
    return problems


def _data_problems(where: str, f: h5py.File) -> list[str]:
    """The time axis, then every field's shape and dtype against (trajectories, time, x, y)."""
    dims = f["dimensions"]
    problems = _time_problems(where, dims["time"])
    n_steps = dims["time"].shape[0] if dims["time"].ndim == 1 else -1
    stated = int(_attr(f, "n_trajectories"))
    held = {len(ds) for ds in _field_arrays(f) if ds.ndim > 0}
    if len(held) == 1 and stated not in held:  # said once, not once per field
        (count,) = held
        problems.append(
            f"{where}: @n_trajectories is {stated}, but every field holds {count} "
            f"trajectories; set the attribute to {count}"
        )
        stated = count  # the fields' other axes are still checked
    grid = (stated, n_steps, dims["x"].shape[0], dims["y"].shape[0])
    for group_name, rank in zip(FIELD_GROUPS, (0, 1, 2), strict=True):
        problems += _field_group_problems(where, group_name, f[group_name], grid, rank)
    return problems


def _validate_open_file(path: Path, f: h5py.File, stem: str) -> list[str]:
    """Every problem of the first pass that finds any: structure, header, then data + family."""
    where = str(path)
    problems = _structure_problems(where, f)
    if problems:
        return problems
    problems = _root_problems(where, f, stem) + _group_header_problems(where, f)
    if problems:
        return problems
    problems = _data_problems(where, f)
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
