"""The Well schema: round trips, foreign files, and every refusal names file, rule and fix."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from coherence.errors import SchemaError
from coherence.simulation.wellformat import (
    read_metadata,
    read_well_file,
    validate_well_file,
    write_well_file,
)


def euler_states(b: int = 3, t: int = 4, h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.5, 1.5, (b, t, h, w))
    u, v = rng.normal(size=(2, b, t, h, w))
    p = rng.uniform(0.5, 1.5, (b, t, h, w))
    energy = p / 0.4 + 0.5 * rho * (u**2 + v**2)
    return np.stack([rho, rho * u, rho * v, energy], axis=2).astype(np.float32)


@pytest.fixture
def ce_file(tmp_path):
    states = euler_states()
    path = write_well_file(
        tmp_path / "CE-RP.hdf5",
        states,
        np.linspace(0, 1, 4),
        family="euler",
        class_name="CE-RP",
        dataset_name="demo",
    )
    return path, states


def test_euler_round_trip_keeps_channels_and_orientation(ce_file):
    path, states = ce_file
    back, meta = read_well_file(path)
    np.testing.assert_array_equal(back, states)
    assert meta.family.value == "euler"
    assert meta.class_name == "CE-RP" and meta.dataset_name == "demo"
    assert (meta.height, meta.width, meta.n_steps, meta.n_trajectories) == (6, 8, 4, 3)
    assert meta.scalars == {"gamma": 1.4}
    assert meta.bc_types == ("periodic", "periodic")


def test_written_file_follows_the_well_layout(ce_file):
    path, states = ce_file
    with h5py.File(path) as f:
        for attr in (
            "dataset_name",
            "grid_type",
            "n_spatial_dims",
            "n_trajectories",
            "simulation_parameters",
            "initial_condition_class",
        ):
            assert attr in f.attrs
        for group in (
            "dimensions",
            "boundary_conditions",
            "scalars",
            "t0_fields",
            "t1_fields",
            "t2_fields",
        ):
            assert group in f
        assert sorted(f["t0_fields"]) == ["density", "energy", "pressure"]
        assert list(f["t1_fields"]) == ["momentum"]
        # The Well indexes (trajectory, time, x, y): x is our last axis (W = 8).
        assert f["t0_fields/density"].shape == (3, 4, 8, 6)
        assert f["t1_fields/momentum"].shape == (3, 4, 8, 6, 2)
        assert f["t0_fields/density"].dtype == np.float32
        np.testing.assert_array_equal(f["t0_fields/density"][1, 2, 5, 3], states[1, 2, 0, 3, 5])
        rho, mx, my, energy = (states[..., c, :, :].astype(np.float64) for c in range(4))
        expected_p = 0.4 * (energy - 0.5 * (mx**2 + my**2) / rho)
        np.testing.assert_allclose(
            f["t0_fields/pressure"][()], np.swapaxes(expected_p, -1, -2), rtol=1e-5
        )


def test_navier_stokes_round_trip(tmp_path):
    states = np.random.default_rng(1).normal(size=(2, 3, 2, 8, 4)).astype(np.float32)
    path = write_well_file(
        tmp_path / "NS-Sines.hdf5",
        states,
        [0.0, 0.5, 1.0],
        family="ns",
        class_name="NS-Sines",
        dataset_name="ns",
    )
    back, meta = read_well_file(path, trajectories=[1], steps=slice(1, 3))
    np.testing.assert_array_equal(back, states[[1], 1:3])
    assert meta.family.value == "ns" and meta.scalars == {"nu": 4e-4}


def test_reads_a_foreign_well_file_like_euler_multi_quadrants(tmp_path):
    """A file we did not write: no class attribute, open boundaries, (x, y) indexing."""
    b, t, nx, ny = 2, 3, 5, 4
    rng = np.random.default_rng(3)
    rho = rng.uniform(0.5, 1.0, (b, t, nx, ny)).astype(np.float32)
    momentum = rng.normal(size=(b, t, nx, ny, 2)).astype(np.float32)
    energy = rng.uniform(2, 3, (b, t, nx, ny)).astype(np.float32)
    path = tmp_path / "euler_multi_quadrants_openBC_gamma_1.4.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs.update(
            dataset_name="euler_multi_quadrants_openBC",
            grid_type="cartesian",
            n_spatial_dims=2,
            n_trajectories=b,
            simulation_parameters=["gamma"],
            gamma=1.4,
        )
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        dims["time"] = np.linspace(0, 1, t, dtype=np.float32)
        dims["x"] = np.linspace(0, 1, nx, dtype=np.float32)
        dims["y"] = np.linspace(0, 1, ny, dtype=np.float32)
        bc = f.create_group("boundary_conditions").create_group("xy_open")
        bc.attrs["bc_type"] = "OPEN"
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["gamma"]
        scalars["gamma"] = np.float32(1.4)
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["density", "energy", "pressure"]
        t0["density"], t0["energy"], t0["pressure"] = rho, energy, energy * 0.4
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["momentum"]
        t1["momentum"] = momentum
        f.create_group("t2_fields").attrs["field_names"] = []
    states, meta = read_well_file(path)
    assert meta.class_name == path.stem and meta.bc_types == ("open",)
    assert states.shape == (b, t, 4, ny, nx)
    np.testing.assert_array_equal(states[:, :, 0], np.swapaxes(rho, -1, -2))
    np.testing.assert_array_equal(states[:, :, 2], np.swapaxes(momentum[..., 1], -1, -2))
    np.testing.assert_array_equal(states[:, :, 3], np.swapaxes(energy, -1, -2))


def _corrupt(path, action):
    with h5py.File(path, "a") as f:
        action(f)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda f: f.__delitem__("t2_fields"), "root should contain group 't2_fields'"),
        (
            lambda f: f.attrs.__delitem__("dataset_name"),
            "root should contain attribute 'dataset_name'",
        ),
        (lambda f: f.__delitem__("dimensions/time"), "dimensions should contain dataset 'time'"),
        (
            lambda f: f["boundary_conditions/x_periodic"].attrs.__setitem__("bc_type", "mirror"),
            "allowed: periodic, wall, open",
        ),
        (
            lambda f: f.attrs.__setitem__("initial_condition_class", "CE-KH"),
            "name the file '<class>.hdf5' (CE-KH.hdf5)",
        ),
        (
            lambda f: (
                f["t0_fields"].__delitem__("density"),
                f["t0_fields"].create_dataset("density", data=np.zeros((3, 4, 8, 5))),
            ),
            "t0_fields/density has shape (3, 4, 8, 5), expected (3, 4, 8, 6)",
        ),
        (
            lambda f: (
                f["t0_fields"].__delitem__("energy"),
                f["t0_fields"].create_dataset("energy", data=np.zeros((3, 4, 8, 6), int)),
            ),
            "fields must be floating point",
        ),
        (
            lambda f: f["t1_fields"].__delitem__("momentum"),
            "t1_fields lists field 'momentum' but has no dataset",
        ),
        # each of these raised AttributeError, TypeError, ValueError or KeyError (a review)
        (
            lambda f: (f.__delitem__("dimensions/x"), f.create_group("dimensions/x")),
            "dimensions should contain dataset 'x'",
        ),
        (
            lambda f: (f.__delitem__("dimensions/time"), f.create_group("dimensions/time")),
            "dimensions should contain dataset 'time'",
        ),
        (lambda f: f.attrs.__setitem__("n_trajectories", "three"), "@n_trajectories is 'three'"),
        (lambda f: f.attrs.__setitem__("n_trajectories", 0), "an integer ≥ 1"),
        (
            lambda f: (
                f["t0_fields"].__delitem__("density"),
                f["t0_fields"].create_group("density"),
            ),
            "t0_fields lists field 'density' but has no dataset",
        ),
        (
            lambda f: f["t0_fields"].attrs.__setitem__("field_names", 5),
            "t0_fields/@field_names should be a list of field names",
        ),
        (
            lambda f: f["dimensions"].attrs.__setitem__("spatial_dims", 7),
            "dimensions/@spatial_dims should be ['x', 'y'], got 7",
        ),
        (
            lambda f: (
                f.__delitem__("dimensions/time"),
                f["dimensions"].create_dataset("time", data=np.array([b"a", b"b", b"c", b"d"])),
            ),
            "dimensions/time holds |S1, not numbers",
        ),
        (
            lambda f: (f.__delitem__("scalars/gamma"), f.create_group("scalars/gamma")),
            "scalars lists 'gamma' but has no dataset 'gamma'",
        ),
        (
            lambda f: (
                f["t0_fields"].__delitem__("density"),
                f["t0_fields"].__setitem__("density", h5py.ExternalLink("/nowhere.h5", "d")),
            ),
            "no dataset 'density' (it links to /nowhere.h5",
        ),
    ],
)
def test_validator_names_file_rule_and_fix(ce_file, action, expected):
    path, _ = ce_file
    _corrupt(path, action)
    problems = validate_well_file(path)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(str(path)) for p in problems)
    with pytest.raises(SchemaError, match=str(path)):
        read_well_file(path)


def test_a_field_linked_to_another_file_is_refused(ce_file, tmp_path):
    """An external link read data from outside the workspace (the scan refuses symlinks that
    point outside, so a link inside the file must not do what a symlink may not)."""
    path, _ = ce_file
    outside = tmp_path / "outside.h5"
    with h5py.File(path) as f, h5py.File(outside, "w") as o:
        o["density"] = f["t0_fields/density"][()]
    _corrupt(
        path,
        lambda f: (
            f["t0_fields"].__delitem__("density"),
            f["t0_fields"].__setitem__("density", h5py.ExternalLink(str(outside), "density")),
        ),
    )
    problems = validate_well_file(path)
    assert any(f"density' (it links to {outside}; the data must be" in p for p in problems)
    raw = tmp_path / "outside.raw"
    raw.write_bytes(b"\0" * 4 * 3 * 4 * 8 * 6)

    def external_raw(f):
        shape = f["t0_fields/energy"].shape
        del f["t0_fields/energy"]
        f["t0_fields"].create_dataset("energy", shape, "f4", external=[(str(raw), 0, 2**20)])

    _corrupt(path, external_raw)
    problems = validate_well_file(path)
    assert any(f"energy' (its values are stored in {raw}" in p for p in problems), problems
    _corrupt(path, lambda f: f["t1_fields"].__setitem__("momentum2", h5py.SoftLink("/gone")))
    _corrupt(path, lambda f: f["t1_fields"].attrs.__setitem__("field_names", ["momentum2"]))
    problems = validate_well_file(path)
    assert any("(it links to /gone, which does not exist)" in p for p in problems), problems


def test_a_wrong_trajectory_count_is_said_once_not_once_per_field(ce_file):
    """@n_trajectories disagreeing with the arrays was named four times, once per field's
    shape ("has shape (3, …), expected (5, …)"), though the fix is one attribute."""
    path, _ = ce_file
    with h5py.File(path) as f:
        held = f["t0_fields/density"].shape[0]
    _corrupt(path, lambda f: f.attrs.__setitem__("n_trajectories", held + 2))
    problems = validate_well_file(path)
    assert problems == [
        f"{path}: @n_trajectories is {held + 2}, but every field holds {held} trajectories; "
        f"set the attribute to {held}"
    ]
    # a field that also differs in another axis is still named
    _corrupt(
        path,
        lambda f: (
            f["t0_fields"].__delitem__("pressure"),
            f["t0_fields"].create_dataset("pressure", data=np.zeros((held, 2, 8, 6), "f4")),
        ),
    )
    problems = validate_well_file(path)
    assert any("t0_fields/pressure has shape" in p for p in problems), problems


def test_validator_reports_every_problem_at_once(ce_file):
    path, _ = ce_file
    _corrupt(path, lambda f: (f.attrs.__delitem__("grid_type"), f.__delitem__("scalars")))
    problems = validate_well_file(path)
    assert len(problems) == 2, problems


def test_a_missing_field_is_refused_with_what_to_do(ce_file):
    """The rule's line said what was wrong ("lists field 'density' but has no dataset") and
    nothing of what to do."""
    path, _ = ce_file
    _corrupt(path, lambda f: f["t0_fields"].__delitem__("density"))
    with pytest.raises(SchemaError) as refused:
        read_metadata(path)
    said = str(refused.value)
    assert "t0_fields lists field 'density' but has no dataset 'density' (it is missing)" in said
    assert said.endswith(
        "regenerate it (`coherence simulate`), import its source again "
        "(`coherence import`), or download it again"
    )


def test_a_constant_that_is_no_number_is_named(ce_file):
    """A string @gamma ended analyze and train in a traceback (float('abc'))."""
    path, _ = ce_file
    _corrupt(path, lambda f: f.attrs.__setitem__("gamma", "abc"))
    with pytest.raises(SchemaError, match=r"CE-RP.hdf5: the constant gamma is 'abc', not a fin"):
        read_metadata(path)


def test_reader_refuses_nan_naming_the_trajectory(ce_file):
    path, _ = ce_file
    _corrupt(path, lambda f: f["t0_fields/energy"].__setitem__((2, 1, 0, 0), np.nan))
    with pytest.raises(SchemaError, match="trajectory 2 contains NaN"):
        read_well_file(path)
    states, _ = read_well_file(path, trajectories=[0, 1])  # the clean ones still read
    assert states.shape[0] == 2


def test_reader_refuses_a_non_positive_density_naming_the_trajectory(ce_file):
    """A CE file with a negative density was analysed without complaint (rc 0)."""
    path, _ = ce_file
    _corrupt(path, lambda f: f["t0_fields/density"].__setitem__((1, 2, 3, 4), -0.5))
    with pytest.raises(SchemaError, match=r"trajectory 1 has a density ≤ 0 \(min -0\.5\)"):
        read_well_file(path)
    states, _ = read_well_file(path, trajectories=[0, 2])  # the clean ones still read
    assert states.shape[0] == 2 and (states[:, :, 0] > 0).all()
    _corrupt(path, lambda f: f["t0_fields/density"].__setitem__((1, 2, 3, 4), 0.0))
    with pytest.raises(SchemaError, match=r"trajectory 1 has a density ≤ 0 \(min 0\)"):
        read_well_file(path)  # exactly zero is refused too (a mutation to >= 0 passed)


def test_reader_refuses_out_of_range_requests(ce_file):
    path, _ = ce_file
    with pytest.raises(SchemaError, match=r"trajectories 0\.\.2"):
        read_well_file(path, trajectories=[5])
    with pytest.raises(SchemaError, match="the file has 4"):
        read_well_file(path, steps=slice(0, 9))


def test_reader_keeps_requested_trajectory_order(ce_file):
    path, states = ce_file
    back, _ = read_well_file(path, trajectories=[2, 0, 2])
    np.testing.assert_array_equal(back, states[[2, 0, 2]])


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"definitely not hdf5")
    assert "not a readable HDF5 file" in validate_well_file(junk)[0]
    with pytest.raises(SchemaError, match="no such file"):
        read_metadata(tmp_path / "missing.hdf5")


def test_failed_write_leaves_nothing_behind(tmp_path):
    states = euler_states()
    states[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(SchemaError, match="non-finite"):
        write_well_file(
            tmp_path / "CE-RP.hdf5",
            states,
            np.linspace(0, 1, 4),
            family="euler",
            class_name="CE-RP",
            dataset_name="demo",
        )
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_replacement(ce_file, tmp_path):
    path, states = ce_file
    write_well_file(
        path,
        states[:1],
        np.linspace(0, 1, 4),
        family="euler",
        class_name="CE-RP",
        dataset_name="demo",
    )
    assert read_metadata(path).n_trajectories == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CE-RP.hdf5"]


def test_streaming_writer_matches_the_one_shot_writer_and_refuses_gaps(ce_file, tmp_path):
    from coherence.simulation.wellformat import WellWriter

    _, states = ce_file
    fields = np.swapaxes(states, -1, -2)  # The Well's (x, y) order
    kwargs = dict(family="euler", class_name="CE-RP", dataset_name="demo", n_trajectories=3)
    grid = dict(times=np.linspace(0, 1, 4), nx=8, ny=6)
    target = tmp_path / "streamed" / "CE-RP.hdf5"
    with WellWriter(target, **kwargs, **grid) as writer:
        writer.write(2, fields[2:])
        writer.write(0, fields[:2])
    np.testing.assert_array_equal(read_well_file(target)[0], states)
    gap = tmp_path / "gap" / "CE-RP.hdf5"
    with (
        pytest.raises(SchemaError, match=r"trajectories 1\.\. were never written"),
        WellWriter(gap, **kwargs, **grid) as writer,
    ):
        writer.write(0, fields[:1])
        writer.write(2, fields[2:])
    assert list(gap.parent.iterdir()) == []
