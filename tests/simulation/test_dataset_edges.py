"""What a dataset must refuse or keep apart that no earlier test checked: files of another
width, clock or γ in one dataset, uneven clocks near the tolerance, a split that is not random,
a staging folder no run committed, the Well schema's strictness on times and families. Each was
added where a mutant of the data side passed every earlier test."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from coherence.errors import SchemaError
from coherence.simulation.dataset import (
    class_seed,
    files_fingerprint,
    open_dataset,
    uneven_times,
)
from coherence.simulation.importers.common import random_split
from coherence.simulation.staging import recover
from coherence.simulation.wellformat import read_well_file, validate_well_file, write_well_file
from tests.simulation.import_fixtures import solver_states

TIMES = np.linspace(0, 1, 21)


def well_file(path: Path, family: str = "ns", times=TIMES, res: int = 8, **kwargs) -> Path:
    """One trajectory of the solver at ``res``² as a Well file of class 'c'."""
    states = solver_states(family, "NS-Sines" if family == "ns" else "CE-RPUI", 1, res)
    kwargs = {"class_name": "c", "dataset_name": "d", **kwargs}
    return write_well_file(path, states, times, family=family, **kwargs)


def test_files_of_another_width_are_refused(tmp_path):
    well_file(tmp_path / "ds" / "data" / "train" / "c.hdf5")
    states = np.ascontiguousarray(solver_states("ns", "NS-Sines", 1, 16)[..., :8, :])  # 8 × 16
    path = tmp_path / "ds" / "data" / "valid" / "c.hdf5"
    write_well_file(path, states, TIMES, family="ns", class_name="c", dataset_name="d")
    with pytest.raises(SchemaError, match="width"):
        open_dataset(tmp_path / "ds")


def test_files_of_as_many_snapshots_on_another_clock_are_refused(tmp_path):
    well_file(tmp_path / "ds" / "data" / "train" / "c.hdf5")
    well_file(tmp_path / "ds" / "data" / "valid" / "c.hdf5", times=np.linspace(0, 2, 21))
    with pytest.raises(SchemaError, match="time axis differs"):
        open_dataset(tmp_path / "ds")


def test_one_class_of_two_gammas_is_refused(tmp_path):
    well_file(tmp_path / "ds" / "data" / "train" / "c.hdf5", "euler")
    path = well_file(tmp_path / "ds" / "data" / "test" / "c.hdf5", "euler")
    with h5py.File(path, "r+") as f:
        f.attrs["gamma"] = 1.5
        f["scalars/gamma"][()] = np.float32(1.5)
    with pytest.raises(SchemaError, match=r"gamma is 1\.5"):
        open_dataset(tmp_path / "ds")


def test_the_time_step_is_one_snapshot_step(tmp_path):
    well_file(tmp_path / "ds" / "data" / "train" / "c.hdf5")
    assert open_dataset(tmp_path / "ds").physics("train", ["c"])["dt"] == pytest.approx(0.05)


def test_physics_of_a_class_the_split_lacks_falls_back_to_the_split(tmp_path):
    well_file(tmp_path / "ds" / "data" / "train" / "c.hdf5")
    assert "nu" in open_dataset(tmp_path / "ds").physics("train", ["other"])


def test_a_step_5_percent_longer_and_a_three_snapshot_clock_are_uneven():
    assert uneven_times(Path("x"), np.array([0, 0.05, 0.10, 0.1525])) is not None  # 5 % apart
    assert uneven_times(Path("x"), np.array([0.0, 0.1, 0.3])) is not None  # three snapshots


def test_moving_a_file_to_another_split_changes_the_fingerprint(tmp_path):
    first = well_file(tmp_path / "train" / "c.hdf5")
    moved = tmp_path / "valid" / "c.hdf5"
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    assert files_fingerprint([first]) != files_fingerprint([moved])


def test_the_split_is_a_seeded_permutation_and_each_class_has_its_own_seed():
    split = random_split(100, 0, "CE-RP").split_of.tolist()
    assert split != sorted(split)  # not the first 65 train, then valid, then test
    assert split != random_split(100, 1, "CE-RP").split_of.tolist()
    assert class_seed(0, "CE-RP") != class_seed(0, "CE-CRP")


def test_a_staging_folder_no_run_committed_is_discarded_not_published(tmp_path):
    """Recovery rolls forward only a staging folder marked COMMITTING: an aborted import's
    partial class must not appear in the dataset."""
    root = tmp_path / "ds"
    well_file(root / "data" / "train" / "a.hdf5", class_name="a", dataset_name="ds")
    well_file(
        root / ".staging-999" / "data" / "train" / "b.hdf5", class_name="b", dataset_name="ds"
    )
    recover(root)
    assert not (root / "data" / "train" / "b.hdf5").exists()
    assert not (root / ".staging-999").exists()
    assert (root / "data" / "train" / "a.hdf5").exists()


def test_a_repeated_time_is_not_strictly_increasing(tmp_path):
    path = well_file(tmp_path / "c.hdf5")
    with h5py.File(path, "r+") as f:
        f["dimensions/time"][2] = f["dimensions/time"][1]
    assert any("increase strictly" in problem for problem in validate_well_file(path))


def test_density_beside_velocity_names_no_family(tmp_path):
    path = well_file(tmp_path / "c.hdf5")
    with h5py.File(path, "r+") as f:
        f["t0_fields"].create_dataset("density", data=np.ones((1, 21, 8, 8), np.float32))
        f["t0_fields"].attrs["field_names"] = ["density"]
    assert any("cannot tell the PDE family" in problem for problem in validate_well_file(path))


def test_coordinates_are_cell_centres(tmp_path):
    with h5py.File(well_file(tmp_path / "c.hdf5")) as f:
        np.testing.assert_allclose(f["dimensions/x"][()], (np.arange(8) + 0.5) / 8)


def test_a_trajectory_index_equal_to_the_count_is_out_of_range(tmp_path):
    path = well_file(tmp_path / "c.hdf5")
    with pytest.raises(SchemaError, match="out of range"):
        read_well_file(path, trajectories=[1])
