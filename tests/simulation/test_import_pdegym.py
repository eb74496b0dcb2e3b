"""`coherence import pdegym` on files in the published layout, built from our own solvers."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from coherence.cli import app
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.errors import CoherenceError, RequestError, SchemaError
from coherence.simulation import importers
from coherence.simulation.dataset import SPLITS, open_dataset
from coherence.simulation.importers import pdegym
from coherence.simulation.importers.pdegym import import_pdegym
from tests.simulation.import_fixtures import (
    ce_published,
    classic_netcdf_stub,
    ns_published,
    solver_states,
    write_pdegym,
    write_shards,
)

N = 12
RES = 16


@pytest.fixture(scope="module")
def ce_states():
    return solver_states("euler", "CE-RPUI", N, RES)


@pytest.fixture(scope="module")
def ns_states():
    return solver_states("ns", "NS-Sines", N, RES)


def imported(root, class_name):
    """All imported trajectories in source order (by the recorded pdegym_index)."""
    info = open_dataset(root)
    states, index = [], []
    for split in SPLITS:
        states.append(info.load(split, class_name))
        with h5py.File(info.file(split, class_name).path) as f:
            index.append(f.attrs["pdegym_index"])
    order = np.argsort(np.concatenate(index))
    return np.concatenate(states)[order], np.concatenate(index)[order]


def test_shards_are_read_in_lexicographic_order(tmp_path, ce_states, monkeypatch):
    # 11 shards: data_0, data_1, data_10, data_2, …: piece k of the class is in the k-th name
    sizes = [1] * 10 + [2]
    write_shards(tmp_path / "src", "data", "data", ce_published(ce_states), sizes)
    monkeypatch.setattr(pdegym, "BLOCK_BYTES", 1)  # one trajectory per block
    report = import_pdegym(tmp_path / "src", tmp_path / "out", "CE-RPUI", split="random")
    states, index = imported(tmp_path / "out", "CE-RPUI")
    np.testing.assert_array_equal(index, np.arange(N))
    np.testing.assert_allclose(states, ce_states, rtol=2e-6, atol=1e-6)
    assert report.counts == (7, 1, 4) and "NOT the paper's exact permutation" in report.split_label
    with h5py.File(report.files[0]) as f:
        names = list(f.attrs["source_files"])
        assert names[:3] == ["data_0.nc", "data_1.nc", "data_10.nc"]
        # the recorded (file, index) of each row points back at that row's source trajectory
        for row, (file_index, local) in enumerate(
            zip(f.attrs["source_file_index"], f.attrs["source_index"], strict=True)
        ):
            with h5py.File(tmp_path / "src" / names[file_index]) as src:
                rho = src["data"][local, :, 0]
            np.testing.assert_array_equal(rho, f["t0_fields/density"][row])
        assert f.attrs["licence"] == "CC-BY-NC-4.0"
        assert "camlab-ethz/CE-RPUI" in f.attrs["source"]
        assert json.loads(f.attrs["channel_mapping"])["momentum_x"].startswith("data[:, :, 0] *")
        checks = json.loads(f.attrs["import_checks"])
        assert abs(checks["gamma_hat_min"] - 1.4) < 1e-4


def test_a_density_pressure_swap_that_keeps_gamma_is_caught_by_the_scatter(tmp_path):
    """Where ρ and p have similar ranges a ρ↔p swap kept the least-squares γ̂ at 1.40 and was
    imported; the cells' scatter about the fitted line tells it (a user's walk), in the fit
    and in an import of such a file."""
    x = np.linspace(0.0, 1.0, 32, endpoint=False)
    grid_x, grid_y = np.meshgrid(x, x, indexing="ij")
    rho = 1.0 + 0.2 * np.sin(2 * np.pi * grid_x) * np.cos(2 * np.pi * grid_y)
    p = 1.0 + 0.2 * np.cos(2 * np.pi * grid_x) * np.sin(2 * np.pi * grid_y)
    u, v = 0.3 * np.sin(2 * np.pi * grid_y), 0.2 * np.cos(2 * np.pi * grid_x)
    energy = (p / 0.4 + 0.5 * rho * (u * u + v * v)).astype(np.float32)
    rho, p = rho.astype(np.float32), p.astype(np.float32)
    right = importers.common.gamma_hat(rho, rho * u, rho * v, p, energy)
    assert right.estimate == pytest.approx(1.4, abs=1e-5) and right.residual < 1e-6
    checks: dict = {}
    importers.common.check_gamma("f.nc", 0, right, 1.4, "ρ, u, v, p, E", checks)
    assert checks["gamma_fit_residual_max"] == right.residual
    swapped = importers.common.gamma_hat(p, p * u, p * v, rho, energy)
    assert abs(swapped.estimate - 1.4) < importers.common.GAMMA_TOLERANCE  # γ̂ alone passed
    refusal = r"fit p = \(γ − 1\).* only to \d+\.\d%.*pressure swapped"
    with pytest.raises(SchemaError, match=f"f.nc: .*{refusal}"):
        importers.common.check_gamma("f.nc", 0, swapped, 1.4, "ρ, u, v, p, E", checks)
    # the published layout (n, T, C, x, y) with the first and fourth channels exchanged
    fields = np.stack([p, u.astype(np.float32), v.astype(np.float32), rho, energy])
    data = np.broadcast_to(fields, (3, 21, *fields.shape)).astype(np.float32)
    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", np.ascontiguousarray(data))
    with pytest.raises(SchemaError, match=f"CE-RPUI.nc: .*{refusal}"):
        import_pdegym(source, tmp_path / "o", "CE-RPUI")
    assert not (tmp_path / "o").exists()


def test_a_file_or_folder_named_after_another_class_is_refused(tmp_path, ce_states):
    """`--class CE-RPUI` on CE-CRP.nc imported it as CE-RPUI, its provenance saying both."""
    data = ce_published(ce_states)
    crp = write_pdegym(tmp_path / "CE-CRP.nc", "data", data)
    with pytest.raises(RequestError, match=r"CE-CRP.nc is named after the class CE-CRP but "):
        import_pdegym(crp, tmp_path / "o", "CE-RPUI")
    folder = write_shards(tmp_path / "ce-rp", "data", "data", data, [6, 6])
    with pytest.raises(RequestError, match=r"pass --class CE-RP, or rename the folder"):
        import_pdegym(folder, tmp_path / "o", "CE-RPUI")
    assert not (tmp_path / "o").exists()
    report = import_pdegym(crp, tmp_path / "o", "CE-CRP", limit=3)  # the name agrees
    assert sum(report.counts) == 3


def test_poseidon_split_is_by_index_and_labelled_when_scaled(tmp_path, ce_states):
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    report = import_pdegym(tmp_path / "CE-RPUI.nc", tmp_path / "out", "CE-RPUI")
    assert report.counts == (10, 1, 1) and "NOT the published test set" in report.split_label
    info = open_dataset(tmp_path / "out")
    with h5py.File(info.file("test", "CE-RPUI").path) as f:
        assert list(f.attrs["pdegym_index"]) == [N - 1]
    full = importers.common.poseidon_split(10_000, 10_000)
    assert full.counts == (9640, 120, 240)
    assert np.flatnonzero(full.split_of == 2)[0] == 9760 and "poseidon:" in full.label


def test_four_channel_file_gets_energy_from_pressure(tmp_path, ce_states):
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states, channels=4))
    report = import_pdegym(tmp_path / "CE-RPUI.nc", tmp_path / "out", "CE-RPUI", limit=5)
    states, index = imported(tmp_path / "out", "CE-RPUI")
    np.testing.assert_array_equal(index, np.arange(5))
    np.testing.assert_allclose(states, ce_states[:5], rtol=1e-5, atol=1e-5)
    # the γ check cannot catch a wrong channel order here: said, not only recorded
    assert any(
        "the γ check that catches a wrong channel order cannot run" in w for w in report.warnings
    )


def test_keep_pressure_stores_the_source_channel(tmp_path, ce_states):
    data = ce_published(ce_states)
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", data)
    report = import_pdegym(tmp_path / "CE-RPUI.nc", tmp_path / "o", "CE-RPUI", keep_pressure=True)
    with h5py.File(report.files[0]) as f:
        rows = f.attrs["pdegym_index"]
        np.testing.assert_array_equal(f["t0_fields/pressure"][()], data[rows, :, 3])


@pytest.mark.parametrize("transposed", [False, True])
def test_ns_velocity_axis_pairing_decides_swap(tmp_path, ns_states, transposed):
    data = ns_published(ns_states)
    if transposed:  # 'velocity x' now runs along the axis named y
        data = np.ascontiguousarray(np.swapaxes(data, -1, -2))
    write_pdegym(tmp_path / "NS-Sines.nc", "velocity", data)
    report = import_pdegym(tmp_path / "NS-Sines.nc", tmp_path / "out", "NS-Sines")
    assert report.swap_xy is transposed
    assert report.checks["velocity_axis_pairing"] == ("swapped" if transposed else "as-stored")
    assert report.checks["axes_swapped_on_import"] is transposed  # what was done
    states, _ = imported(tmp_path / "out", "NS-Sines")
    np.testing.assert_array_equal(states, ns_states)  # the solver's own fields, tracer dropped
    # and the imported velocity is divergence-free in our model layout [.., H=y, W=x]
    pairing = importers.common.velocity_pairing(states[:, :, 0], states[:, :, 1])
    assert pairing.div_swapped < 1e-5  # u along W (last axis) = x in model layout


def test_a_velocity_divergent_either_way_is_said_as_not_incompressible(tmp_path, ns_states):
    """A velocity with divergence 0.86 both ways was only said to have axes the data could
    not tell apart; the solver's own (≈ 0) is imported without that word."""
    noise = np.random.default_rng(0).normal(size=ns_states.shape).astype(np.float32)
    write_pdegym(tmp_path / "NS-Sines.nc", "velocity", ns_published(noise))
    warnings: list[str] = []
    import_pdegym(tmp_path / "NS-Sines.nc", tmp_path / "o", "NS-Sines", warn=warnings.append)
    (said,) = [w for w in warnings if "far from divergence-free" in w]
    assert "check that the file holds a Navier–Stokes velocity" in said
    write_pdegym(tmp_path / "ok" / "NS-Sines.nc", "velocity", ns_published(ns_states))
    warnings.clear()
    import_pdegym(
        tmp_path / "ok" / "NS-Sines.nc", tmp_path / "o2", "NS-Sines", warn=warnings.append
    )
    assert not [w for w in warnings if "divergence-free" in w]


def test_forced_swap_against_the_data_warns(tmp_path, ns_states):
    write_pdegym(tmp_path / "NS-Sines.nc", "velocity", ns_published(ns_states))
    warnings = []
    import_pdegym(
        tmp_path / "NS-Sines.nc", tmp_path / "o", "NS-Sines", swap_xy="yes", warn=warnings.append
    )
    assert len(warnings) == 1 and "contradicts the data" in warnings[0]
    # the command line then said the swap made 'velocity x' run along x, against its warning
    head = ["import", "pdegym", str(tmp_path / "NS-Sines.nc"), "--class", "NS-Sines"]
    result = CliRunner().invoke(app, [*head, "--out", str(tmp_path / "o2"), "--swap-xy", "yes"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "contradicts the data" in said and "x and y were swapped, as --swap-xy yes asks" in said
    assert "runs along x" not in said
    with h5py.File(tmp_path / "o2" / "data" / "train" / "NS-Sines.hdf5") as f:
        checks = json.loads(f.attrs["import_checks"])
    assert checks["positive_density_pressure"].startswith("not applicable")  # not False
    # the detection (as stored) beside what was done (swapped, as forced)
    assert checks["velocity_axis_pairing"] == "as-stored" and checks["axes_swapped_on_import"]


def test_refusals_name_the_file_and_the_fix(tmp_path, ce_states):
    stub = classic_netcdf_stub(tmp_path / "data_0.nc")
    with pytest.raises(SchemaError, match=r"classic netCDF.*nccopy -k nc4"):
        import_pdegym(stub, tmp_path / "o", "CE-RP")
    good = write_pdegym(tmp_path / "ce.nc", "data", ce_published(ce_states))
    with pytest.raises(SchemaError, match=r"no variable 'velocity'.*holds: .*data \(12, 21, 5"):
        import_pdegym(good, tmp_path / "o", "NS-BB")
    with pytest.raises(RequestError, match=r"not a PDEgym class.*CE-RP"):
        import_pdegym(good, tmp_path / "o", "CE-XX")
    bad = ce_published(ce_states)
    bad[4, 3, 0, 2, 2] = np.nan
    path = write_pdegym(tmp_path / "nan.nc", "data", bad)
    with pytest.raises(SchemaError, match=r"nan.nc: trajectory 4 has NaN or inf in density"):
        import_pdegym(path, tmp_path / "o", "CE-RPUI")
    bad[4, 3, 0, 2, 2] = 1.0
    bad[0, 1, 0, 1, 1] = np.inf  # the first trajectory: no --limit imports what is before it
    path = write_pdegym(tmp_path / "first.nc", "data", bad)
    with pytest.raises(SchemaError, match=r"trajectory 0 has NaN .* download it again$"):
        import_pdegym(path, tmp_path / "o", "CE-RPUI")
    bad = ce_published(ce_states)
    bad[6, :, 3] *= -1
    path = write_pdegym(tmp_path / "neg.nc", "data", bad)
    with pytest.raises(SchemaError, match=r"neg.nc: trajectory 6 has pressure ≤ 0.*--limit 6$"):
        import_pdegym(path, tmp_path / "o", "CE-RPUI")
    wrong_gamma = ce_published(ce_states)
    wrong_gamma[:, :, 3] *= (5 / 3 - 1) / 0.4  # a γ = 5/3 pressure with γ = 1.4 energies
    path = write_pdegym(tmp_path / "gamma.nc", "data", wrong_gamma)
    with pytest.raises(SchemaError, match=r"γ recovered .* is 1\.66"):
        import_pdegym(path, tmp_path / "o", "CE-RPUI")
    flat = write_pdegym(tmp_path / "flat.nc", "data", ce_published(ce_states)[:, :, :3])
    with pytest.raises(SchemaError, match=r"shape \(12, 21, 3, 16, 16\).*channels"):
        import_pdegym(flat, tmp_path / "o", "CE-RPUI")
    empty_grid = write_pdegym(tmp_path / "empty.nc", "data", np.zeros((4, 21, 5, 0, 0), "f4"))
    with pytest.raises(SchemaError, match=r"empty.nc: 'data' has shape \(4, 21, 5, 0, 0\)"):
        import_pdegym(empty_grid, tmp_path / "o", "CE-RPUI")  # was a ZeroDivisionError
    shards = tmp_path / "shards"
    write_shards(shards, "data", "data", ce_published(ce_states), [4, 4, 4])
    (shards / "data_1.nc").unlink()
    (shards / "data_1.nc").symlink_to(tmp_path / "gone.nc")  # a shard lost: a gap, not skipped
    with pytest.raises(SchemaError, match=r"shards: data_1.nc is not a readable file"):
        import_pdegym(shards, tmp_path / "o", "CE-RPUI")
    ns_shards = tmp_path / "ns_shards"  # NS shards given a CE class: the class is named
    write_shards(ns_shards, "velocity", "velocity", ce_published(ce_states)[:, :, :3], [4, 4, 4])
    with pytest.raises(SchemaError, match=r"holds velocity_<k>.nc shards, which NS classes"):
        import_pdegym(ns_shards, tmp_path / "o", "CE-RPUI")
    ints = write_pdegym(tmp_path / "ints.nc", "data", ce_published(ce_states))
    with h5py.File(ints, "r+") as f:
        del f["data"]
        f.create_dataset("data", data=np.ones((4, 21, 5, 16, 16), "i4"))
    with pytest.raises(SchemaError, match=r"has dtype int32; .*convert the variable to float32"):
        import_pdegym(ints, tmp_path / "o", "CE-RPUI")
    few = write_pdegym(tmp_path / "few.nc", "data", ce_published(ce_states)[:2])
    with pytest.raises(SchemaError, match=r"holds 2 trajectories; .*one each for train, valid"):
        import_pdegym(few, tmp_path / "o", "CE-RPUI")
    assert not (tmp_path / "o").exists()  # nothing half-written by any refusal


def test_classes_add_up_in_one_dataset_listed_by_the_dashboard(tmp_path, ce_states, ns_states):
    workspace = tmp_path / "ws"
    out = workspace / "datasets" / "pdegym_ce"
    rp = solver_states("euler", "CE-RP", N, RES)
    write_pdegym(tmp_path / "CE-RP.nc", "data", ce_published(rp))
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    import_pdegym(tmp_path / "CE-RP.nc", out, "CE-RP")
    import_pdegym(tmp_path / "CE-RPUI.nc", out, "CE-RPUI")
    info = open_dataset(out)
    assert info.classes == ["CE-RP", "CE-RPUI"] and info.name == "pdegym_ce"
    catalog = scan_workspace(workspace)
    entry = catalog.dataset("pdegym_ce")
    assert entry is not None and not catalog.problems
    assert entry.classes == ("CE-RP", "CE-RPUI") and entry.resolution == (RES, RES)
    assert entry.counts["test"] == {"CE-RP": 1, "CE-RPUI": 1}
    with pytest.raises(RequestError, match="already exists; pass --overwrite"):
        import_pdegym(tmp_path / "CE-RP.nc", out, "CE-RP")
    import_pdegym(tmp_path / "CE-RP.nc", out, "CE-RP", overwrite=True, split="random")
    assert open_dataset(out).file("test", "CE-RP").n_trajectories == 4
    write_pdegym(tmp_path / "NS-Sines.nc", "velocity", ns_published(ns_states))
    with pytest.raises(RequestError, match="family euler, the import is ns"):
        import_pdegym(tmp_path / "NS-Sines.nc", out, "NS-Sines")
    assert open_dataset(out).classes == ["CE-RP", "CE-RPUI"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    # a second folder may not take the first one's name: checkpoints record the dataset_name
    # they were trained on, and the dashboard counted models of one as trained on both
    other = workspace / "datasets" / "other"
    with pytest.raises(RequestError, match=r"is already named 'pdegym_ce'.*give another --name"):
        import_pdegym(tmp_path / "CE-RP.nc", other, "CE-RP", name="pdegym_ce")
    import_pdegym(tmp_path / "CE-RP.nc", other, "CE-RP", name="renamed")
    with pytest.raises(RequestError, match=r"datasets/other is already named 'renamed'.*--name"):
        import_pdegym(tmp_path / "CE-RP.nc", workspace / "datasets" / "renamed", "CE-RP")
    folders = [p.name for p in (workspace / "datasets").iterdir() if not p.name.startswith(".")]
    assert sorted(folders) == ["other", "pdegym_ce"]


def test_cli_imports_and_refuses_in_one_line(tmp_path, ce_states):
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    runner = CliRunner()
    head = ["import", "pdegym", str(tmp_path / "CE-RPUI.nc"), "--class", "CE-RPUI"]
    result = runner.invoke(
        app,
        [*head, "--out", str(tmp_path / "out"), "--split", "random", "--limit", "8"],
    )
    assert result.exit_code == 0, result.output
    assert open_dataset(tmp_path / "out").file("train", "CE-RPUI").n_trajectories == 5
    stub = classic_netcdf_stub(tmp_path / "old.nc")
    result = runner.invoke(
        app, ["import", "pdegym", str(stub), "--class", "CE-RP", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "nccopy -k nc4" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app,
        [*head, "--out", str(tmp_path / "y"), "--split", "alphabetical"],
    )
    assert result.exit_code == 2 and "poseidon, random" in result.output
    assert issubclass(SchemaError, CoherenceError)


def test_a_bad_trajectory_in_a_shard_is_named_by_its_class_index_and_its_row(tmp_path, ce_states):
    """In 3 shards of 4, trajectory 5 is row 1 of the second: the message gives both, and
    the --limit that imports the trajectories before it (it gave the row alone: --limit 1)."""
    bad = ce_published(ce_states)
    bad[5, 2, 0, 3, 3] = np.nan
    write_shards(tmp_path / "src", "data", "data", bad, [4, 4, 4])
    with pytest.raises(SchemaError) as refused:
        import_pdegym(tmp_path / "src", tmp_path / "o", "CE-RPUI")
    message = str(refused.value)
    assert "data_1.nc: trajectory 5 (row 1 of this file) has NaN or inf in density" in message
    assert message.endswith("with --limit 5")
    report = import_pdegym(tmp_path / "src", tmp_path / "ok", "CE-RPUI", limit=5)
    assert sum(report.counts) == 5  # the hint's --limit imports the good ones


def test_a_truncated_file_is_refused_by_name(tmp_path, ce_states):
    """Its header is HDF5 but its body is cut (an interrupted download): a one-line refusal
    naming the file, not h5py's traceback."""
    good = write_pdegym(tmp_path / "ce.nc", "data", ce_published(ce_states))
    cut = tmp_path / "cut.nc"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SchemaError, match=r"cut.nc: HDF5 cannot read this file .*truncated"):
        import_pdegym(cut, tmp_path / "o", "CE-RPUI")


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_file_with_damaged_bytes_is_refused_by_name(tmp_path, ce_states, which):
    """Bytes overwritten, not cut off (a bad copy): HDF5 raised a bare RuntimeError while
    looking the variable up (the root group's B-tree, the first 'TREE' node) or an OSError
    without errno while reading a chunk (the chunk index, the last), and the CLI printed the
    traceback; both are the truncated file's refusal now."""
    good = write_pdegym(tmp_path / "ce.nc", "data", ce_published(ce_states))
    data = bytearray(good.read_bytes())
    nodes = [i for i in range(len(data)) if data.startswith(b"TREE", i)]
    at = nodes[0] if which == "first" else nodes[-1]
    data[at : at + 4] = b"XXXX"  # the node's signature: HDF5 checks it on every read
    bad = tmp_path / "bad.nc"
    bad.write_bytes(bytes(data))
    with pytest.raises(SchemaError, match=r"bad.nc: HDF5 could not read this file .*damaged"):
        import_pdegym(bad, tmp_path / "o", "CE-RPUI")
    assert not (tmp_path / "o").exists()


def test_the_files_own_snapshot_times_are_kept_and_said(tmp_path, ce_states):
    """The importer set t = linspace(0, 1, T) whatever the file's 'time' scale held: a file
    on another clock was imported at Δt = 0.05, and a checkpoint then recorded the wrong Δt."""
    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    with h5py.File(source, "r+") as f:
        f["time"][...] = np.linspace(0.0, 2.0, 21)
    report = import_pdegym(source, tmp_path / "slow", "CE-RPUI", limit=3)
    np.testing.assert_allclose(open_dataset(tmp_path / "slow").times, np.linspace(0, 2, 21))
    assert open_dataset(tmp_path / "slow").physics("train", ["CE-RPUI"])["dt"] == pytest.approx(0.1)
    assert any("Δt = 0.1 (the published classes: [0, 1], Δt = 0.05)" in w for w in report.warnings)

    with h5py.File(source, "r+") as f:  # netCDF4's bare dimension: no times, the published clock
        f["time"][...] = np.linspace(0.0, 2.0, 21)  # whatever it holds is no coordinate
        f["time"].attrs["NAME"] = b"This is a netCDF dimension but not a netCDF variable.  21"
    report = import_pdegym(source, tmp_path / "bare", "CE-RPUI", limit=3)
    np.testing.assert_allclose(open_dataset(tmp_path / "bare").times, np.linspace(0, 1, 21))
    assert not any("snapshot times" in w for w in report.warnings)

    for stored, values, dt in (
        (np.float16, np.linspace(0.0, 1.0, 21), None),  # rounded to float16: still even
        (np.float32, 1000.0 + np.linspace(0.0, 1.0, 21), 0.05),
    ):
        with h5py.File(source, "r+") as f:
            del f["time"]
            f.create_dataset("time", data=values.astype(stored))
            f["time"].make_scale("time")
        target = tmp_path / f"clock_{np.dtype(stored).name}"
        report = import_pdegym(source, target, "CE-RPUI", limit=3)
        times = open_dataset(target).times
        said = any("snapshot times" in w for w in report.warnings)
        assert said == (dt is not None) and times[1] - times[0] == pytest.approx(0.05, rel=1e-3)

    with h5py.File(source, "r+") as f:
        del f["time"]
        f.create_dataset("time", data=np.linspace(0.0, 1.0, 21) ** 2)
        f["time"].make_scale("time")
    with pytest.raises(SchemaError, match=r"CE-RPUI.nc: its 'time' scale is not evenly spaced"):
        import_pdegym(source, tmp_path / "uneven", "CE-RPUI", limit=3)
    with h5py.File(source, "r+") as f:  # 20 times for 21 snapshots: was set aside in silence
        del f["time"]
        f.create_dataset("time", data=np.linspace(0.0, 2.0, 20))
        f["time"].make_scale("time")
    with pytest.raises(SchemaError, match=r"'time' scale has shape \(20,\) for 21 snapshots"):
        import_pdegym(source, tmp_path / "uneven", "CE-RPUI", limit=3)
    for shape in ((21, 1), (1, 21)):  # a column or row vector is the same clock (was refused)
        with h5py.File(source, "r+") as f:
            del f["time"]
            f.create_dataset("time", data=np.linspace(0.0, 2.0, 21).reshape(shape))
        target = tmp_path / f"clock_{shape[0]}x{shape[1]}"
        import_pdegym(source, target, "CE-RPUI", limit=3)
        np.testing.assert_allclose(open_dataset(target).times, np.linspace(0, 2, 21))
    with h5py.File(source, "r+") as f:
        del f["time"]
        f.create_dataset("time", data=np.zeros((21, 2)))
    with pytest.raises(SchemaError, match=r"'time' scale has shape \(21, 2\) for 21 snapshots"):
        import_pdegym(source, tmp_path / "matrix", "CE-RPUI", limit=3)

    # 11 snapshots and no clock of their own: [0, 1] is a guess, said (it was silent, and a
    # checkpoint then recorded Δt = 0.1 as if it were the published one)
    short = write_pdegym(tmp_path / "short" / "CE-RPUI.nc", "data", ce_published(ce_states)[:, :11])
    report = import_pdegym(short, tmp_path / "short_ds", "CE-RPUI", limit=3)
    np.testing.assert_allclose(open_dataset(tmp_path / "short_ds").times, np.linspace(0, 1, 11))
    (said,) = [w for w in report.warnings if "snapshots per trajectory" in w]
    assert said.startswith("11 snapshots per trajectory (published: 21)") and "Δt = 0.1 " in said
    assert not (tmp_path / "uneven").exists()


def test_a_float16_source_is_imported_and_said(tmp_path, ce_states):
    with h5py.File(tmp_path / "CE-RPUI.nc", "w") as f:
        f.create_dataset("data", data=ce_published(ce_states)[:3].astype(np.float16))
    report = import_pdegym(tmp_path / "CE-RPUI.nc", tmp_path / "out", "CE-RPUI", split="random")
    assert any("'data' is float16 (published: float32)" in w for w in report.warnings)
    assert report.checks["source_dtype"] == "float16"  # recorded in import_checks
    states, _ = imported(tmp_path / "out", "CE-RPUI")
    np.testing.assert_allclose(states, ce_states[:3], rtol=5e-3, atol=5e-3)


def test_an_import_the_disk_cannot_hold_is_refused_before_writing(tmp_path, ce_states, monkeypatch):
    """A paper class is ≈ 55 GB: with too little room the import filled the disk and ended
    in h5py's traceback. The free-space reading is set to room for 3 trajectories."""
    from coherence.simulation.importers import common

    src = write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    per_trajectory = int(np.prod(ce_published(ce_states).shape[1:])) * 4
    room = common.room_needed(3 * per_trajectory)
    monkeypatch.setattr(common, "free_disk", lambda path: room)
    with pytest.raises(RequestError, match=r"free on that disk.*--limit 3 fits") as refused:
        import_pdegym(src, tmp_path / "ws" / "ds", "CE-RPUI")
    assert str(tmp_path / "ws" / "ds") in str(refused.value)
    assert not (tmp_path / "ws").exists()  # nothing staged, nothing written
    report = import_pdegym(src, tmp_path / "ws" / "ds", "CE-RPUI", limit=3, split="random")
    assert sum(report.counts) == 3  # the hint's --limit imports


def test_the_room_check_fits_small_disks(tmp_path, monkeypatch):
    """A fixed 64 MB margin refused 3 PDEgym trajectories at 128² (21 MB) on a disk with
    84 MB free, said they wrote 88 MB and that not even 3 fit. Now the margin grows with the
    data, the message gives the data's own size, and the --limit it offers is the largest
    that the same check lets through."""
    from coherence.simulation.importers import common

    mb = 10**6
    per = 6.88 * mb  # one trajectory: 21 snapshots × 5 fields × 128² float32
    monkeypatch.setattr(common, "free_disk", lambda path: 84 * mb)
    common.check_room(tmp_path, 3, int(per), "CE-RP", minimum=3)  # 21 MB: fits
    with pytest.raises(RequestError, match=r"writes ≈ 83 MB and needs ≈ 92 MB free") as refused:
        common.check_room(tmp_path, 12, int(per), "CE-RP", minimum=3)
    fits = int(re.search(r"--limit (\d+) fits", str(refused.value)).group(1))
    common.check_room(tmp_path, fits, int(per), "CE-RP", minimum=3)  # the hint passes
    with pytest.raises(RequestError):
        common.check_room(tmp_path, fits + 1, int(per), "CE-RP", minimum=3)
    monkeypatch.setattr(common, "free_disk", lambda path: 20 * mb)
    with pytest.raises(RequestError, match=r"; not even the 3 trajectories an import needs fit:"):
        common.check_room(tmp_path, 12, int(per), "CE-RP", minimum=3)
    # three files (The Well's splits), room for two trajectories: --limit 1 takes three
    monkeypatch.setattr(common, "free_disk", lambda path: common.room_needed(2 * int(per)))
    with pytest.raises(RequestError, match=r"import fewer files \(2 trajectories fit, but"):
        common.check_room(tmp_path, 9, int(per), "Well files", files=3)


def test_a_trajectory_larger_than_memory_is_refused_by_its_shape(tmp_path):
    """A file declaring 10⁶ snapshots per trajectory (its data never written: a small file)
    ended in numpy's allocation error for 300 GB; the import reads whole trajectories."""
    path = tmp_path / "CE-RP.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", shape=(3, 10**6, 5, 128, 128), dtype="f4", chunks=(1, 1, 5, 128, 128)
        )
    with pytest.raises(SchemaError, match=r"CE-RP.nc: one trajectory is 1000000 × 5 × 128 × 128"):
        import_pdegym(path, tmp_path / "o", "CE-RP")
    assert not (tmp_path / "o").exists()


def test_unwritten_ns_snapshots_are_refused(tmp_path, ns_states):
    """NS has no positive field, so a trajectory whose last snapshots were never written (all
    zeros) imported silently (a review)."""
    data = ns_published(ns_states)
    data[2, 15:] = 0.0
    path = write_pdegym(tmp_path / "NS-Sines.nc", "velocity", data)
    with pytest.raises(SchemaError, match=r"trajectory 2 is all zeros in every field at snapshot"):
        import_pdegym(path, tmp_path / "out", "NS-Sines")
    assert not (tmp_path / "out").exists()


def test_a_shard_folder_holds_its_shards_without_holes_and_nothing_else(tmp_path, ce_states):
    """The assembled <CLASS>.nc that the dataset's own script writes beside its shards was
    imported too (every trajectory twice, test ones also in train), and a missing shard
    shifted every published index after it without a word."""
    out = tmp_path / "out"
    shards = write_shards(tmp_path / "src", "data", "data", ce_published(ce_states), [4, 4, 4])
    write_pdegym(shards / "CE-RPUI.nc", "data", ce_published(ce_states))
    with pytest.raises(SchemaError, match=r"CE-RPUI.nc beside its 3 shards is not a shard"):
        import_pdegym(shards, out, "CE-RPUI")
    (shards / "CE-RPUI.nc").unlink()
    (shards / "data_1.nc").unlink()
    with pytest.raises(SchemaError, match=r"data_1.nc missing \(the shards run 0…2\)"):
        import_pdegym(shards, out, "CE-RPUI")
    assert not out.exists()
    report = import_pdegym(tmp_path / "src" / "data_0.nc", out, "CE-RPUI", limit=10)
    assert sum(report.counts) == 4  # one file: fine; a --limit past its end is said
    assert (
        "--limit 10: " in report.warnings[0]
        and "holds 4 trajectories; importing all" in (report.warnings[0])
    )


def test_the_report_names_the_imported_datas_source_licence_and_split(tmp_path, ce_states):
    """A report is the file that gets sent on: the CC-BY-NC licence and a split that is
    not the published test set travel with its figures (the files recorded them, the
    report showed neither). Simulated data records no source and gets no row."""
    from types import SimpleNamespace

    from coherence.report import data_sources

    workspace = tmp_path / "ws"
    write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    import_pdegym(tmp_path / "CE-RPUI.nc", workspace / "datasets" / "pg", "CE-RPUI", limit=8)
    selection = SimpleNamespace(dataset="pg", classes=("CE-RPUI",))
    (row,) = data_sources(workspace, selection).items()
    assert row[0] == "data source (CE-RPUI)"
    assert row[1].startswith("PDEgym camlab-ethz/CE-RPUI (Hugging Face) · licence CC-BY-NC-4.0")
    assert "NOT the published test set" in row[1]
    assert data_sources(workspace, SimpleNamespace(dataset="none", classes=("X",))) == {}


def test_a_folder_of_one_assembled_file_and_dot_files_are_told_apart(tmp_path, ce_states):
    """A folder holding only the assembled file is pointed to it; macOS's ._data_0.nc is
    left aside; fewer shards than published are said (their indices may not be the
    published ones)."""
    folder = tmp_path / "dl"
    write_pdegym(folder / "CE-RPUI.nc", "data", ce_published(ce_states))
    with pytest.raises(SchemaError, match=r"holds CE-RPUI.nc and no shard .* itself: .*dl/CE-RP"):
        import_pdegym(folder, tmp_path / "o", "CE-RPUI")
    shards = write_shards(tmp_path / "src", "data", "data", ce_published(ce_states), [6, 6])
    (shards / "._data_0.nc").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble metadata
    report = import_pdegym(shards, tmp_path / "o", "CE-RPUI")
    assert sum(report.counts) == N
    assert any("2 of the 14 published shards" in w for w in report.warnings)


def test_a_refusal_before_any_byte_is_read_prints_no_empty_progress_bar(tmp_path):
    """Every refusal was printed under an empty 'reading … 0/? bytes ?' bar."""
    garbage = tmp_path / "CE-RP.nc"
    garbage.write_bytes(b"<html>not found</html>")
    result = CliRunner().invoke(
        app, ["import", "pdegym", str(garbage), "--class", "CE-RP", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not an HDF5/netCDF4 file" in result.output
    assert "bytes" not in result.output and "reading" not in result.output


def test_replacing_a_class_a_checkpoint_trained_on_names_the_checkpoint(tmp_path, ce_states):
    """--overwrite of a class re-splits it: a model's training trajectories can land in the
    test split, and the analysis then read data the model learnt from, without a word (only
    `study --plan` saw it). The import names every checkpoint whose training files it
    replaced, and none trained on the files there now or on other classes."""
    from coherence.surrogates.training import train
    from tests.fixtures import tiny_args

    source = write_pdegym(tmp_path / "CE-RPUI.nc", "data", ce_published(ce_states))
    other = write_pdegym(tmp_path / "CE-CRP.nc", "data", ce_published(ce_states))
    root = tmp_path / "ws" / "datasets" / "ce"
    ckpts = tmp_path / "ws" / "checkpoints"

    def run(*args: str):
        result = CliRunner().invoke(app, ["import", "pdegym", *args], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    run(str(source), "--class", "CE-RPUI", "--out", str(root))
    run(str(other), "--class", "CE-CRP", "--out", str(root))
    args = tiny_args(epochs=1, classes=("CE-RPUI",))
    train(root, ckpts / "old_model", args)
    said = run(str(source), "--class", "CE-RPUI", "--out", str(root), "--overwrite", "--limit", "8")
    assert "1 checkpoint (old_model) trained on training files of CE-RPUI that this import" in said
    train(root, ckpts / "new_model", args)
    said = run(str(other), "--class", "CE-CRP", "--out", str(root), "--overwrite", "--limit", "8")
    assert "warning" not in said  # neither trained on CE-CRP
    from coherence.cli_import import checkpoints_trained_on_replaced

    stale = checkpoints_trained_on_replaced(root, {"CE-RPUI"})
    assert [p.name for p in stale] == ["old_model"]


READ_FAILURES = {  # what HDF5 raises mid-read → the words of the refusal
    "damaged": (RuntimeError("Unable to check link existence (bad symbol table)"), "damaged"),
    "drive": (
        OSError("Can't read data (file read failed: errno = 5, error message = 'I/O error')"),
        "check the drive or mount",
    ),
    "filter": (
        OSError("Can't read data (required filter 'blosc' is not registered)"),
        "HDF5 filter this installation lacks",
    ),
    "damaged chunk": (  # a filter HDF5 has, failing on overwritten bytes
        OSError("Can't synchronously read data (filter returned failure during read)"),
        "damaged",
    ),
}


def test_a_damaged_gzip_chunk_is_said_as_damaged_not_as_a_missing_filter(tmp_path):
    """A real file: gzip is built in, so a chunk that fails to inflate is damage to copy
    again (the refusal said to install a filter plugin or h5repack, which fails too)."""
    from coherence.simulation.importers.sniff import read_errors

    path = tmp_path / "f.hdf5"
    with h5py.File(path, "w") as f:
        data = np.random.default_rng(0).random((4, 32, 32), dtype=np.float32)
        f.create_dataset("a", data=data, chunks=(1, 32, 32), compression="gzip")
    with h5py.File(path, "r") as f:
        offset = f["a"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + 10)
        handle.write(b"\xff" * 200)
    with (
        pytest.raises(SchemaError, match=r"f.hdf5: HDF5 could not read .*it is damaged"),
        read_errors(path),
        h5py.File(path, "r") as f,
    ):
        f["a"][()]


@pytest.mark.parametrize(("raised", "said"), READ_FAILURES.values(), ids=READ_FAILURES)
def test_a_read_error_is_said_as_what_it_is(tmp_path, raised, said):
    """HDF5 sets no errno: a failing drive and a missing filter plugin read as a damaged
    file to download again; the message's own errno or filter tells them apart."""
    from coherence.simulation.importers.sniff import read_errors

    where = tmp_path / "f.nc"
    with (
        pytest.raises(SchemaError, match=f"f.nc: HDF5 could not read this file .*{said}"),
        read_errors(where),
    ):
        raise raised
    with pytest.raises(OSError, match="No space"), read_errors(where):  # the system's errno
        raise OSError(28, "No space left on device")
