"""A PDEgym class's source files: shards in order, each checked before anything is read.

PDEgym (camlab-ethz/<CLASS>) publishes a class as an assembled ``<CLASS>.nc`` or a directory
of shards, read in lexicographic name order; variable ``data`` (CE) or ``velocity`` (NS),
axes (sample, time, channel, x, y), float32. ``pdegym`` imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py

from coherence.errors import RequestError, SchemaError
from coherence.simulation.families import Family
from coherence.simulation.importers.sniff import open_hdf5

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

    @property
    def variable(self) -> str:
        return VARIABLE[self.family]

    @property
    def total(self) -> int:
        return sum(s.n for s in self.shards)

    @property
    def trajectory_bytes(self) -> int:
        return self.n_steps * self.n_channels * self.nx * self.ny * 4


def shard_paths(src: Path) -> list[Path]:
    """An assembled file, or every ``*.nc`` of a directory in lexicographic name order."""
    if src.is_file():
        return [src]
    if src.is_dir():
        paths = sorted((p for p in src.glob("*.nc") if p.is_file()), key=lambda p: p.name)
        if not paths:
            raise SchemaError(
                f"{src}: no .nc files here; pass the assembled <CLASS>.nc or the directory "
                "holding data_*.nc / velocity_*.nc"
            )
        return paths
    raise SchemaError(f"{src}: no such file or directory")


def class_family(class_name: str) -> Family:
    if class_name not in CLASSES:
        raise RequestError(
            f"--class {class_name!r} is not a PDEgym class; choose one of: {', '.join(CLASSES)}"
        )
    return CLASSES[class_name]


def open_source(src: str | os.PathLike, class_name: str) -> PdegymSource:
    """Check every shard's container, variable, shape and dtype; nothing is read yet."""
    family = class_family(class_name)
    variable = VARIABLE[family]
    shards, tail = [], None
    for path in shard_paths(Path(src)):
        with open_hdf5(path) as f:
            if variable not in f or not isinstance(f[variable], h5py.Dataset):
                held = ", ".join(
                    f"{k} {tuple(v.shape)}" for k, v in f.items() if isinstance(v, h5py.Dataset)
                )
                raise SchemaError(
                    f"{path}: no variable '{variable}' (a {class_name} file holds "
                    f"'{variable}'); this file holds: {held or 'nothing'}; is it another "
                    "class's file?"
                )
            ds = f[variable]
            shape, dtype = tuple(ds.shape), ds.dtype
        allowed = (4, 5) if family is Family.EULER else (2, 3)
        if len(shape) != 5 or shape[2] not in allowed or shape[1] < 2:
            raise SchemaError(
                f"{path}: '{variable}' has shape {shape}; expected (samples, snapshots, "
                f"channels ∈ {allowed}, x, y) as published for {class_name}"
            )
        if dtype.kind != "f":
            raise SchemaError(f"{path}: '{variable}' has dtype {dtype}; expected float32")
        if tail is not None and shape[1:] != tail:
            raise SchemaError(
                f"{path}: '{variable}' has per-sample shape {shape[1:]} but "
                f"{shards[0].path.name} has {tail}; all shards of a class must agree"
            )
        tail = shape[1:]
        shards.append(Shard(path, shape[0]))
    n_steps, n_channels, nx, ny = tail
    return PdegymSource(class_name, family, tuple(shards), n_steps, n_channels, nx, ny)
