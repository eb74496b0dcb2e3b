"""A PDEgym class's source files: shards in order, each checked before anything is read.

PDEgym (camlab-ethz/<CLASS>) publishes a class as an assembled ``<CLASS>.nc`` or a directory
of shards, read in lexicographic name order; variable ``data`` (CE) or ``velocity`` (NS),
axes (sample, time, channel, x, y), float32. ``pdegym`` imports it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import RequestError, SchemaError
from coherence.simulation.dataset import even_tolerance
from coherence.simulation.families import Family
from coherence.simulation.importers.sniff import open_hdf5, read_errors

CLASSES = {
    "CE-RP": Family.EULER,
    "CE-CRP": Family.EULER,
    "CE-RPUI": Family.EULER,
    "NS-BB": Family.NS,
    "NS-Sines": Family.NS,
    "NS-Gauss": Family.NS,
}
VARIABLE = {Family.EULER: "data", Family.NS: "velocity"}
PUBLISHED = {Family.EULER: 10_000, Family.NS: 20_000}
PUBLISHED_SHARDS = {Family.EULER: 14, Family.NS: 17}  # data_0…13, velocity_0…16
PUBLISHED_SNAPSHOTS = 21  # uniform on [0, 1]: Δt = 0.05


@dataclass(frozen=True)
class Shard:
    path: Path
    n: int


@dataclass(frozen=True)
class PdegymSource:
    """The checked source of one class: shards in order and the common per-trajectory shape."""

    class_name: str
    family: Family
    shards: tuple[Shard, ...]
    n_steps: int
    n_channels: int
    nx: int
    ny: int
    times: np.ndarray | None = None  # the files' own clock; None: none, or the published one
    dtype: str = "float32"

    @property
    def variable(self) -> str:
        return VARIABLE[self.family]

    @property
    def total(self) -> int:
        return sum(s.n for s in self.shards)

    @property
    def trajectory_bytes(self) -> int:
        return self.n_steps * self.n_channels * self.nx * self.ny * 4


def shard_paths(src: Path, variable: str = "data") -> list[Path]:
    """An assembled file, or a directory's shards ``<variable>_<k>.nc`` in lexicographic name
    order (the published indices follow it). The shards must be k = 0…K without a hole, and
    nothing else in the folder may end in .nc: a shard left out would shift every index
    after it, and the assembled ``<CLASS>.nc`` that the dataset's own script writes beside
    its shards would import every trajectory twice (the test trajectories also in train)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise SchemaError(f"{src}: no such file or directory")
    # dot-files (macOS's ._data_0.nc) are no data: left aside
    found = sorted(
        (p for p in src.glob("*.nc") if not p.name.startswith(".")), key=lambda p: p.name
    )
    shard = re.compile(rf"{re.escape(variable)}_(0|[1-9][0-9]*)\.nc")
    numbers = {int(m.group(1)): p for p in found if (m := shard.fullmatch(p.name))}
    others = [p.name for p in found if not shard.fullmatch(p.name)]
    if others and not numbers and len(others) == 1:
        raise SchemaError(
            f"{src}: holds {others[0]} and no shard ({variable}_<k>.nc); pass the assembled "
            f"file itself: {src / others[0]}"
        )
    for family, name in VARIABLE.items():  # the other family's shards: its --class
        theirs = re.compile(rf"{name}_(0|[1-9][0-9]*)\.nc")
        if name != variable and others and all(theirs.fullmatch(o) for o in others):
            label, example = ("NS", "NS-Sines") if family is Family.NS else ("CE", "CE-RP")
            raise SchemaError(
                f"{src}: holds {name}_<k>.nc shards, which {label} classes are published "
                f"in, not {variable}_<k>.nc; give the {label} class they hold, e.g. --class "
                f"{example}"
            )
    if others:
        also = f" beside its {len(numbers)} shards" if numbers else ""
        verb = "is not a shard" if len(others) == 1 else "are not shards"
        raise SchemaError(
            f"{src}: {', '.join(others)}{also} {verb} ({variable}_<k>.nc); pass the "
            "assembled file itself, or a folder holding only the shards (move the other "
            ".nc files out: an assembled file beside its shards would import every "
            "trajectory twice)"
        )
    if not numbers:
        raise SchemaError(
            f"{src}: no .nc files here; pass the assembled <CLASS>.nc or the directory "
            f"holding its shards {variable}_0.nc, {variable}_1.nc, …"
        )
    holes = [f"{variable}_{k}.nc" for k in range(max(numbers) + 1) if k not in numbers]
    if holes:
        raise SchemaError(
            f"{src}: {', '.join(holes)} missing (the shards run 0…{max(numbers)}); restore it, "
            "or every published index after it would shift"
        )
    broken = [p.name for p in found if not p.is_file()]
    if broken:  # a shard left out would shift every published index after it
        raise SchemaError(
            f"{src}: {', '.join(broken)} is not a readable file (a broken link or a "
            "folder); restore the shard, or the class would be imported with a gap"
        )
    return found


def class_family(class_name: str) -> Family:
    if class_name not in CLASSES:
        raise RequestError(
            f"--class {class_name!r} is not a PDEgym class; choose one of: {', '.join(CLASSES)}"
        )
    return CLASSES[class_name]


def _refuse_another_class_name(src: Path, class_name: str) -> None:
    """The files carry no class, so --class alone names it, and a slip (CE-RP's folder
    imported as CE-CRP) labelled one class's data as another's, provenance included. A file
    or folder named after another published class is refused; any other name is trusted."""
    named = {name.lower(): name for name in CLASSES}.get(
        (src.stem if src.is_file() else src.name).lower()
    )
    if named is not None and named != class_name:
        raise RequestError(
            f"{src} is named after the class {named} but --class says {class_name}: pass "
            f"--class {named}, or rename the {'file' if src.is_file() else 'folder'} if its "
            "name is wrong (the files hold no class of their own, so the name is all there is)"
        )


def open_source(src: str | os.PathLike, class_name: str) -> PdegymSource:
    """Check every shard's container, variable, shape and dtype; nothing is read yet."""
    family = class_family(class_name)
    _refuse_another_class_name(Path(src), class_name)
    variable = VARIABLE[family]
    shards, tail, times = [], None, None
    for path in shard_paths(Path(src), variable):
        with open_hdf5(path) as f, read_errors(path):
            if variable not in f or not isinstance(f[variable], h5py.Dataset):
                held = ", ".join(
                    f"{k} {tuple(v.shape)}" for k, v in f.items() if isinstance(v, h5py.Dataset)
                )
                if "t0_fields" in f:  # groups, not variables: "holds nothing" misled
                    raise SchemaError(
                        f"{path}: no variable '{variable}' (a {class_name} file holds "
                        f"'{variable}'); it has The Well's layout ({', '.join(sorted(f))}): "
                        "import it with `coherence import well-euler FILE`"
                    )
                raise SchemaError(
                    f"{path}: no variable '{variable}' (a {class_name} file holds "
                    f"'{variable}'); this file holds: {held or 'nothing'}; is it another "
                    "class's file?"
                )
            ds = f[variable]
            shape, dtype = tuple(ds.shape), ds.dtype
            file_times = _file_times(path, f, shape[1] if len(shape) == 5 else 0)
        allowed = (4, 5) if family is Family.EULER else (2, 3)
        if len(shape) != 5 or shape[2] not in allowed or shape[1] < 2 or min(shape[3:]) < 1:
            raise SchemaError(
                f"{path}: '{variable}' has shape {shape}; expected (samples, snapshots ≥ 2, "
                f"channels ∈ {allowed}, x ≥ 1, y ≥ 1) as published for {class_name}"
            )
        if dtype.kind != "f":
            raise SchemaError(
                f"{path}: '{variable}' has dtype {dtype}; expected floating point (published: "
                "float32; float16 and float64 are read too): convert the variable to float32"
            )
        if tail is not None and shape[1:] != tail:
            raise SchemaError(
                f"{path}: '{variable}' has per-sample shape {shape[1:]} but "
                f"{shards[0].path.name} has {tail}; all shards of a class must agree"
            )
        if shards and not _same_times(file_times, times):
            raise SchemaError(
                f"{path}: its 'time' scale differs from {shards[0].path.name}'s; all shards of "
                "a class must share their snapshot times"
            )
        tail, times = shape[1:], file_times
        shards.append(Shard(path, shape[0]))
    n_steps, n_channels, nx, ny = tail
    return PdegymSource(
        class_name, family, tuple(shards), n_steps, n_channels, nx, ny, times, str(dtype)
    )


NETCDF_BARE_DIMENSION = "not a netCDF variable"  # netCDF4's NAME of a dimension without values


def _file_times(path: Path, f: h5py.File, n_steps: int) -> np.ndarray | None:
    """The snapshot times a file's ``time`` scale holds, or None where it holds none (absent,
    a bare netCDF dimension, constant, or the indices 0 … T−1). Why: the published classes
    are on [0, 1] (Δt = 0.05), and a file on another clock must not be imported at that Δt
    (a checkpoint records its Δt and refuses data of another)."""
    scale = f.get("time")
    if not isinstance(scale, h5py.Dataset) or n_steps < 2:
        return None
    if NETCDF_BARE_DIMENSION in str(scale.attrs.get("NAME", b"")):
        return None
    if _flat_length(scale.shape) != n_steps:  # was set aside in silence: the published clock
        raise SchemaError(
            f"{path}: its 'time' scale has shape {scale.shape} for {n_steps} snapshots; write "
            f"one time per snapshot ({n_steps} values), or drop the scale to use the "
            "published clock"
        )
    try:
        values = np.asarray(scale[()], dtype=np.float64).reshape(n_steps)  # (T, 1) as (T,)
        stored = np.finfo(scale.dtype).eps if scale.dtype.kind == "f" else 0.0
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            f"{path}: its 'time' scale holds {scale.dtype}, not numbers ({exc}); write the "
            "snapshot times as numbers, or drop the scale to use the published clock"
        ) from None
    if np.ptp(values) == 0 or np.array_equal(values, np.arange(n_steps)):
        return None
    steps = np.diff(values)
    if not np.all(np.isfinite(values)) or np.any(steps <= 0):
        raise SchemaError(
            f"{path}: its 'time' scale is not increasing ({_shown(values)}); the importer "
            "needs snapshot times in order"
        )
    tolerance = even_tolerance(values, stored)  # the rule every reader of a clock uses
    if np.ptp(steps) > tolerance:
        raise SchemaError(
            f"{path}: its 'time' scale is not evenly spaced ({_shown(values)}); the "
            "surrogates step by one constant Δt"
        )
    published = np.linspace(0.0, 1.0, n_steps)
    if np.abs(values - published).max() <= tolerance:
        return None  # the published clock, as stored: use it exactly
    return np.linspace(values[0], values[-1], n_steps)  # even, without the storage rounding


def _flat_length(shape: tuple[int, ...]) -> int | None:
    """The length of a scale stored as a vector, (T,), (T, 1), (1, T) or with more axes of
    length 1: writers differ; None for a shape with more than one axis longer than 1."""
    long_axes = [n for n in shape if n != 1]
    return long_axes[0] if len(long_axes) == 1 else None


def _same_times(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))


def _shown(values: np.ndarray) -> str:
    head = ", ".join(f"{v:g}" for v in values[:4])
    return f"{head}, …, {values[-1]:g}" if len(values) > 4 else head
