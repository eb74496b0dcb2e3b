"""Importers on inputs no earlier test built: non-square grids, γ a little off, a density of
exactly zero, a file naming no boundary, shards that disagree, a second import under another
name or on another clock, PDEgym's swapped axes with the pressure kept. Each was added where a
mutant of an importer passed every earlier test."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from coherence.errors import RequestError, SchemaError
from coherence.simulation.dataset import open_dataset
from coherence.simulation.importers.common import Pairing
from coherence.simulation.importers.pdegym import import_pdegym
from coherence.simulation.importers.pdegym_source import open_source
from coherence.simulation.importers.well_euler import block_mean, import_well_euler
from tests.simulation.import_fixtures import (
    ce_published,
    ns_published,
    solver_states,
    write_pdegym,
    write_well_euler,
)

STEM = "euler_multi_quadrants_periodicBC_gamma_1.4_Dry_air"


@pytest.fixture(scope="module")
def states() -> np.ndarray:
    return solver_states("euler", "CE-RPUI", 3, 32)


def test_a_non_square_grid_imports_with_its_axes(tmp_path, states):
    rect = np.ascontiguousarray(states[..., :16])  # 32 rows (y) × 16 columns (x)
    path = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", rect)
    import_well_euler([path], tmp_path / "out", downsample=2)
    info = open_dataset(tmp_path / "out")
    assert (info.height, info.width) == (16, 8)
    density = info.load("train", STEM)[:, :, 0]
    np.testing.assert_allclose(density, block_mean(rect[:, :, 0], 2, (2, 3)), rtol=1e-6)


def test_a_second_file_of_the_same_non_square_grid_is_accepted(tmp_path, states):
    rect = np.ascontiguousarray(states[..., :16])
    train = write_well_euler(tmp_path / "s" / "train" / f"{STEM}.hdf5", rect)
    valid = write_well_euler(tmp_path / "s" / "valid" / f"{STEM}.hdf5", rect)
    import_well_euler([train], tmp_path / "out", downsample=2)
    import_well_euler([valid], tmp_path / "out", downsample=2)
    assert set(open_dataset(tmp_path / "out").files) == {"train", "valid"}


def test_rows_not_divisible_by_the_downsampling_are_refused(tmp_path, states):
    rect = np.ascontiguousarray(states[..., :30, :])  # y = 30, x = 32
    path = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", rect)
    with pytest.raises(RequestError, match="not divisible by --downsample 4"):
        import_well_euler([path], tmp_path / "out", downsample=4)


def test_a_file_whose_two_gammas_differ_is_refused(tmp_path, states):
    path = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    with h5py.File(path, "r+") as f:
        f.attrs["gamma"] = 1.401  # scalars/gamma stays 1.4
    with pytest.raises(SchemaError, match="contradicts itself"):
        import_well_euler([path], tmp_path / "out", downsample=2)


def test_a_gamma_not_above_one_is_refused_by_name(tmp_path, states):
    path = write_well_euler(tmp_path / "data" / "train" / "g.hdf5", states, gamma=1.0)
    with pytest.raises(SchemaError, match="γ > 1"):
        import_well_euler([path], tmp_path / "out", downsample=2)


def test_a_gamma_a_third_of_a_percent_off_the_datasets_is_refused(tmp_path, states):
    first = write_well_euler(tmp_path / "s" / "train" / f"{STEM}.hdf5", states)
    other = write_well_euler(tmp_path / "t" / "train" / "other_gas.hdf5", states, gamma=1.404)
    import_well_euler([first], tmp_path / "out", downsample=2)
    with pytest.raises(RequestError, match=r"γ = 1\.4"):
        import_well_euler([other], tmp_path / "out", downsample=2)


def test_a_file_naming_no_boundary_is_refused(tmp_path, states):
    path = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    with h5py.File(path, "r+") as f:
        for name in list(f["boundary_conditions"]):
            del f["boundary_conditions"][name]
    with pytest.raises(SchemaError, match="none named"):
        import_well_euler([path], tmp_path / "out", downsample=2)


def test_another_name_for_an_existing_dataset_is_refused(tmp_path, states):
    train = write_well_euler(tmp_path / "s" / "train" / f"{STEM}.hdf5", states)
    valid = write_well_euler(tmp_path / "s" / "valid" / f"{STEM}.hdf5", states)
    import_well_euler([train], tmp_path / "out", downsample=2)
    with pytest.raises(RequestError, match="--name"):
        import_well_euler([valid], tmp_path / "out", downsample=2, name="another")


def test_a_split_on_another_clock_is_refused_before_anything_is_written(tmp_path, states):
    train = write_well_euler(tmp_path / "s" / "train" / f"{STEM}.hdf5", states)
    valid = write_well_euler(tmp_path / "s" / "valid" / f"{STEM}.hdf5", states)
    with h5py.File(valid, "r+") as f:
        f["dimensions/time"][...] = np.linspace(0, 3.0, 21).astype(np.float32)
    import_well_euler([train], tmp_path / "out", downsample=2)
    with pytest.raises(RequestError, match="snapshots on"):
        import_well_euler([valid], tmp_path / "out", downsample=2)
    assert set(open_dataset(tmp_path / "out").files) == {"train"}  # still opens, unchanged


def test_energy_of_another_gamma_is_refused(tmp_path, states):
    data = ce_published(np.concatenate([states] * 2))  # 6 trajectories
    rho, u, v, p = (data[:, :, c].astype(np.float64) for c in range(4))
    data[:, :, 4] = p / 0.45 + 0.5 * rho * (u * u + v * v)  # the energy of γ = 1.45
    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", data)
    with pytest.raises(SchemaError, match="γ recovered"):
        import_pdegym(source, tmp_path / "out", "CE-RPUI", split="random")


def test_a_density_of_exactly_zero_is_refused(tmp_path, states):
    data = ce_published(np.concatenate([states] * 2))
    data[1, 3, 0, 5, 5] = 0.0
    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", data)
    with pytest.raises(SchemaError, match="density ≤ 0"):
        import_pdegym(source, tmp_path / "out", "CE-RPUI", split="random")


def test_divergences_within_a_factor_ten_leave_the_axes_ambiguous():
    assert Pairing(div_as_stored=0.11, div_swapped=1.0).verdict == "ambiguous"
    assert Pairing(div_as_stored=1.0, div_swapped=0.11).verdict == "ambiguous"
    assert Pairing(div_as_stored=0.09, div_swapped=1.0).verdict == "as-stored"
    assert Pairing(div_as_stored=1.0, div_swapped=0.09).verdict == "swapped"


def test_swapped_axes_transpose_the_fields_and_the_kept_pressure(tmp_path):
    data = ce_published(solver_states("euler", "CE-RPUI", 3, 16))
    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", data)
    report = import_pdegym(
        source, tmp_path / "o", "CE-RPUI", split="random", swap_xy="yes", keep_pressure=True
    )
    assert report.swap_xy
    path = open_dataset(tmp_path / "o").file("train", "CE-RPUI").path
    with h5py.File(path) as f:
        rows = f.attrs["pdegym_index"]
        pressure = np.swapaxes(data[rows, :, 3], -1, -2)
        np.testing.assert_array_equal(f["t0_fields/pressure"][()], pressure)


def test_shards_of_another_grid_are_refused(tmp_path):
    write_pdegym(
        tmp_path / "src" / "data_0.nc",
        "data",
        ce_published(solver_states("euler", "CE-RPUI", 2, 16)),
    )
    write_pdegym(
        tmp_path / "src" / "data_1.nc",
        "data",
        ce_published(solver_states("euler", "CE-RPUI", 2, 8)),
    )
    with pytest.raises(SchemaError, match="all shards of a class must agree"):
        open_source(tmp_path / "src", "CE-RPUI")


def test_shards_on_other_clocks_are_refused(tmp_path):
    data = ce_published(solver_states("euler", "CE-RPUI", 2, 8))
    write_pdegym(tmp_path / "src" / "data_0.nc", "data", data)
    second = write_pdegym(tmp_path / "src" / "data_1.nc", "data", data)
    with h5py.File(second, "r+") as f:
        f["time"][...] = np.linspace(0, 2, 21)
    with pytest.raises(SchemaError, match="'time' scale differs"):
        open_source(tmp_path / "src", "CE-RPUI")


@pytest.mark.parametrize("swap", ["no", "yes"])
def test_a_non_square_navier_stokes_file_keeps_its_axes_either_way(tmp_path, swap):
    """PDEgym stores [x, y]; the Well [y, x]. Every fixture was square, so an importer that
    forgot to swap the grid's sizes with the axes went unseen."""
    states = np.ascontiguousarray(solver_states("ns", "NS-Sines", 4, 16)[..., :8])  # y 16, x 8
    data = ns_published(states)  # [n, T, 3, x = 8, y = 16]
    source = write_pdegym(tmp_path / "NS-Sines.nc", "velocity", data)
    import_pdegym(source, tmp_path / "o", "NS-Sines", split="random", swap_xy=swap)
    info = open_dataset(tmp_path / "o")
    # stored [y, x] as it came, or with the two axes exchanged under --swap-xy yes
    assert (info.height, info.width) == ((16, 8) if swap == "no" else (8, 16))
