"""Small files in exactly the published layouts, built at test time from our own solvers.

PDEgym: variable ``data`` (CE) or ``velocity`` (NS), (n, t, C, res, res) float32, chunks
(1, 1, C, res, res), the five dimension scales attached. The Well: euler_multi_quadrants with
scalars/gamma and periodic or open boundary groups. States come from our Euler and
Navier–Stokes solvers, so the γ and divergence checks see real physics.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import h5py
import numpy as np

from coherence.simulation.dataset import simulate_chunk

GAMMA = 1.4
TIMES = np.linspace(0.0, 1.0, 21)


@cache
def solver_states(family: str, class_name: str, n: int, res: int, seed: int = 0) -> np.ndarray:
    """Model states [n, 21, F, H, W] from our solver (cached: several tests share them)."""
    states = simulate_chunk(family, class_name, n, res, seed, 0, n, TIMES)
    states.setflags(write=False)
    return states


def ce_published(states: np.ndarray, channels: int = 5) -> np.ndarray:
    """(ρ, ρu, ρv, E) [n, T, 4, H=y, W=x] -> PDEgym (ρ, u, v, p[, E]) [n, T, C, x, y]."""
    rho, mx, my, energy = (states[:, :, c].astype(np.float64) for c in range(4))
    u, v = mx / rho, my / rho
    p = (GAMMA - 1.0) * (energy - 0.5 * rho * (u**2 + v**2))
    parts = [rho, u, v, p, energy][:channels]
    return np.swapaxes(np.stack(parts, axis=2), -1, -2).astype(np.float32)


def ns_published(states: np.ndarray) -> np.ndarray:
    """(u, v) [n, T, 2, H=y, W=x] -> PDEgym (u, v, tracer) [n, T, 3, x, y]."""
    tracer = np.sin(2 * np.pi * np.arange(states.shape[-1]) / states.shape[-1])
    tracer = np.broadcast_to(tracer, states[:, :, :1].shape)
    return np.swapaxes(np.concatenate([states, tracer], axis=2), -1, -2).astype(np.float32)


def write_pdegym(path: Path, variable: str, data: np.ndarray) -> Path:
    """One file in the published layout (netCDF4 = HDF5 with dimension scales)."""
    n, t, c, nx, ny = data.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        scales = {}
        for name, size in (("sample", n), ("time", t), ("channel", c), ("x", nx), ("y", ny)):
            values = TIMES[:size] if name == "time" and size == 21 else np.arange(size)
            scales[name] = f.create_dataset(name, data=np.asarray(values, dtype=np.float64))
            scales[name].make_scale(name)
        chunks = (1, 1, c, nx, ny) if data.size else None  # HDF5 has no empty chunks
        ds = f.create_dataset(variable, data=data.astype(np.float32), chunks=chunks)
        for axis, name in enumerate(scales):
            ds.dims[axis].attach_scale(scales[name])
    return path


def write_shards(directory: Path, stem: str, variable: str, data: np.ndarray, sizes) -> Path:
    """Shards named ``<stem>_<k>.nc`` holding consecutive pieces of ``data`` in *lexicographic*
    name order (data_0, data_1, data_10, data_2, …), like the dataset's assembly."""
    names = sorted(f"{stem}_{k}.nc" for k in range(len(sizes)))
    bounds = np.cumsum((0, *sizes))
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
        write_pdegym(directory / name, variable, data[lo:hi])
    return directory


def classic_netcdf_stub(path: Path) -> Path:
    path.write_bytes(b"CDF\x01" + b"\x00" * 60)
    return path


def write_well_euler(
    path: Path, states: np.ndarray, gamma: float = GAMMA, bc: str = "PERIODIC"
) -> Path:
    """The Well's euler_multi_quadrants layout from (ρ, ρu, ρv, E) [n, T, 4, H, W]."""
    fields = np.swapaxes(states, -1, -2).astype(np.float32)  # (n, T, 4, x, y)
    rho, mx, my, energy = (fields[:, :, c] for c in range(4))
    pressure = ((gamma - 1.0) * (energy - 0.5 * (mx**2 + my**2) / rho)).astype(np.float32)
    n, t, _, nx, ny = fields.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        kind = "periodicBC" if bc == "PERIODIC" else "openBC"
        f.attrs["dataset_name"] = f"euler_multi_quadrants_{kind}"
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = 2
        f.attrs["n_trajectories"] = n
        f.attrs["simulation_parameters"] = ["gamma"]
        f.attrs["gamma"] = gamma
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        dims.create_dataset("time", data=np.linspace(0, 1.5, t).astype(np.float32))
        dims.create_dataset("x", data=np.linspace(0, 1, nx).astype(np.float32))
        dims.create_dataset("y", data=np.linspace(0, 1, ny).astype(np.float32))
        bcs = f.create_group("boundary_conditions")
        for axis in ("x", "y"):
            g = bcs.create_group(f"{axis}_{bc.lower()}")
            g.attrs["bc_type"] = bc
            g.attrs["associated_dims"] = [axis]
            g.create_dataset("mask", data=np.zeros(nx, dtype=bool))
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["gamma"]
        scalars.create_dataset("gamma", data=np.float32(gamma))
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["density", "energy", "pressure"]  # stored in another order
        for name, values in (("pressure", pressure), ("density", rho), ("energy", energy)):
            t0.create_dataset(name, data=values)
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["momentum"]
        t1.create_dataset("momentum", data=np.stack([mx, my], axis=-1))
        f.create_group("t2_fields").attrs["field_names"] = []
    return path
