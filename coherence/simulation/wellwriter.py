"""The Well writer: whole arrays (``write_well_file``) or block by block (``WellWriter``).

Files are written under a temporary name, validated (``wellschema``) and renamed, so a crash
never leaves a half file under the final name. Model channels [B, T, F, H, W] become The
Well's fields laid out (x, y): see the schema in ``wellschema``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import SchemaError
from coherence.io import shared_mode
from coherence.simulation.families import FAMILIES, Family
from coherence.simulation.wellschema import CLASS_ATTR, FIELD_GROUPS, validate_well_file


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
        shared_mode(fd)  # the dataset file it becomes: readable as open() would make it
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
