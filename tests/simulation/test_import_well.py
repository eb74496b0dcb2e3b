"""`coherence import well-euler`: down-sampling conserves totals, γ from the file, open BCs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from coherence.cli import app
from coherence.errors import RequestError, SchemaError
from coherence.simulation.dataset import open_dataset
from coherence.simulation.importers.well_euler import block_mean, import_well_euler
from tests.simulation.import_fixtures import solver_states, write_well_euler

STEM = "euler_multi_quadrants_periodicBC_gamma_1.4_Dry_air"


@pytest.fixture(scope="module")
def states():
    return solver_states("euler", "CE-RPUI", 3, 32)


def test_block_means_conserve_every_total(tmp_path, states):
    gamma = 1.13  # the state's pressure is recomputed with this γ by the fixture
    stem = "euler_multi_quadrants_periodicBC_gamma_1.13_C3H8"  # a name rounded as published
    path = write_well_euler(tmp_path / "data" / "train" / f"{stem}.hdf5", states, gamma=gamma)
    with h5py.File(path, "a") as f:  # a field of its own, which the import leaves out
        f["t0_fields/temperature"] = f["t0_fields/density"][()]
    report = import_well_euler([path], tmp_path / "out", downsample=4)
    assert not [w for w in report.warnings if "its name says" in w]
    info = open_dataset(tmp_path / "out")
    meta = info.file("train", stem)
    assert (meta.height, meta.width, meta.n_steps) == (8, 8, 21)
    assert meta.scalars["gamma"] == gamma and meta.bc_types == ("periodic", "periodic")
    coarse = info.load("train", stem)
    # totals per (trajectory, time, channel): coarse sum × 16 = fine sum, to float32 round-off
    np.testing.assert_allclose(
        coarse.astype(np.float64).sum(axis=(-2, -1)) * 16,
        states.astype(np.float64).sum(axis=(-2, -1)),
        rtol=1e-6,
    )
    # each coarse cell is the mean of its 4×4 block (independent reshape-free reference)
    expected = np.mean([states[..., i::4, j::4] for i in range(4) for j in range(4)], axis=0)
    np.testing.assert_allclose(coarse, expected, rtol=1e-6, atol=1e-6)
    with h5py.File(meta.path) as f:
        rho, m = f["t0_fields/density"][()], f["t1_fields/momentum"][()]
        energy = f["t0_fields/energy"][()]
        np.testing.assert_allclose(
            f["t0_fields/pressure"][()],
            (gamma - 1) * (energy - 0.5 * (m[..., 0] ** 2 + m[..., 1] ** 2) / rho),
            rtol=1e-5,
        )
        assert f.attrs["licence"] == "CC-BY-4.0"
        assert list(f.attrs["source_index"]) == [0, 1, 2]
        assert json.loads(f.attrs["import_checks"])["downsample"] == 4
        # named in the mapping (it vanished without a record)
        assert json.loads(f.attrs["channel_mapping"])["dropped"] == "t0_fields/temperature"
    assert report.counts == (3, 0, 0)


def test_block_mean_on_a_known_array():
    values = np.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_array_equal(block_mean(values, 2, (1, 2)), [[[2.5, 4.5], [10.5, 12.5]]])


def test_open_boundaries_are_refused_unless_asked(tmp_path, states):
    stem = "euler_multi_quadrants_openBC_gamma_1.4_Dry_air"
    path = write_well_euler(tmp_path / "data" / "valid" / f"{stem}.hdf5", states, bc="OPEN")
    with pytest.raises(SchemaError, match=r"open boundaries .*periodic.*--allow-open"):
        import_well_euler([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    warnings = []
    import_well_euler([path], tmp_path / "out", allow_open=True, warn=warnings.append)
    assert open_dataset(tmp_path / "out").file("valid", stem).bc_types == ("open", "open")
    assert "open-boundary" in warnings[0]


def test_refusals(tmp_path, states):
    path = write_well_euler(tmp_path / "elsewhere" / f"{STEM}.hdf5", states)
    with pytest.raises(RequestError, match=r"cannot tell its split.*--split"):
        import_well_euler([path], tmp_path / "out")
    with pytest.raises(RequestError, match="not divisible by --downsample 3"):
        import_well_euler([path], tmp_path / "out", split="test", downsample=3)
    with pytest.raises(RequestError, match=r"--split 'bogus': choose train, valid, test"):
        import_well_euler([path], tmp_path / "out", split="bogus")
    for limit in (0, -3):  # 0 wrote empty class files, -3 raised numpy's ValueError
        with pytest.raises(RequestError, match=rf"--limit {limit}: keep at least 1"):
            import_well_euler([path], tmp_path / "out", split="test", limit=limit)
    with pytest.raises(SchemaError, match=r"elsewhere: a folder, not a file; pass the HDF5"):
        import_well_euler([tmp_path / "elsewhere"], tmp_path / "out", split="test")
    assert not (tmp_path / "out").exists()
    bad = write_well_euler(tmp_path / "data" / "test" / "bad.hdf5", states, gamma=1.4)
    with h5py.File(bad, "a") as f:
        f.attrs["gamma"] = 5 / 3  # the root attribute disagrees with scalars/gamma
    with pytest.raises(SchemaError, match=r"γ is 1\.666.* in the root attribute but 1\.4 in"):
        import_well_euler([bad], tmp_path / "out")
    with h5py.File(bad, "a") as f:
        f["scalars/gamma"][...] = 5 / 3  # the file's γ disagrees with its own channels
    with pytest.raises(SchemaError, match=r"γ recovered .* is 1\.4000, expected 1\.66"):
        import_well_euler([bad], tmp_path / "out")
    odd = write_well_euler(tmp_path / "data" / "test" / "odd.hdf5", states)
    with h5py.File(odd, "a") as f:  # one field on another grid: every shape was listed
        energy = f["t0_fields/energy"][()]
        del f["t0_fields/energy"]
        f["t0_fields/energy"] = energy[..., :-2]
    with pytest.raises(SchemaError, match=r"Not on the common shape \(.*\): energy: the file"):
        import_well_euler([odd], tmp_path / "out")
    from coherence.simulation.wellformat import write_well_file

    ns = write_well_file(  # a Well file of another family: read directly, no import
        tmp_path / "ns" / "data" / "test" / "NS-Sines.hdf5",
        states[:, :3, :2],
        np.linspace(0, 0.1, 3),
        family="ns",
        class_name="NS-Sines",
        dataset_name="ns",
    )
    with pytest.raises(SchemaError, match=r"velocity fields .*needs no import.* to --data"):
        import_well_euler([ns], tmp_path / "out")
    uneven = write_well_euler(tmp_path / "data" / "test" / "uneven.hdf5", states)
    with h5py.File(uneven, "a") as f:  # imported without a word; Δt was its first step
        times = f["dimensions/time"][()]
        times[-1] += 0.5 * (times[-1] - times[-2])
        f["dimensions/time"][()] = times
    with pytest.raises(SchemaError, match=r"uneven.hdf5: its snapshots are not evenly spaced"):
        import_well_euler([uneven], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_well_euler(tmp_path, states):
    path = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    result = CliRunner().invoke(
        app, ["import", "well-euler", str(path), "--out", str(tmp_path / "o"), "--downsample", "2"]
    )
    assert result.exit_code == 0, result.output
    assert open_dataset(tmp_path / "o").file("test", STEM).width == 16
    # off a terminal no bar: its last frame, wrapped at 80 columns, put "MB" on a line of
    # its own in a log; the summary says what was imported
    assert "━" not in result.output and "imported into" in result.output


def test_an_import_without_a_valid_file_says_training_needs_one(tmp_path, states):
    """The README's train + test import gave a dataset `coherence train` refused later ('has
    no valid split'): the import says so, and the refusal names the fix."""
    paths = [
        write_well_euler(tmp_path / "data" / split / f"{STEM}.hdf5", states)
        for split in ("train", "test")
    ]
    report = import_well_euler(paths, tmp_path / "o", downsample=2)
    (note,) = [w for w in report.warnings if "no valid split" in w]
    assert "valid/ file of the same name" in note
    with pytest.raises(RequestError, match=r"no 'valid' split.*import a valid file into it"):
        open_dataset(tmp_path / "o").file("valid", STEM)
    valid = write_well_euler(tmp_path / "data" / "valid" / f"{STEM}.hdf5", states)
    again = import_well_euler([valid], tmp_path / "o", downsample=2)
    assert not [w for w in again.warnings if "split yet" in w]  # train and valid now there


def test_a_file_whose_name_is_another_gas_or_whose_class_lacks_a_split_is_said(tmp_path, states):
    """The class is the file's name: a file named γ = 1.4 holding γ = 1.6 imported as the
    1.4 gas without a word, and a renamed valid file became a class with no train split,
    which training then left out silently (the split warning looked at the dataset only)."""
    train = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    valid = write_well_euler(tmp_path / "data" / "valid" / f"{STEM}.hdf5", states)
    renamed = write_well_euler(tmp_path / "data" / "valid" / "my_run.hdf5", states)
    report = import_well_euler([train, valid, renamed], tmp_path / "o", downsample=2)
    (note,) = [w for w in report.warnings if "split yet" in w]
    assert "no train split yet for my_run" in note and STEM not in note
    wrong = write_well_euler(tmp_path / "g" / "valid" / f"{STEM}.hdf5", states, gamma=1.6)
    report = import_well_euler([wrong], tmp_path / "gas", downsample=2)
    (note,) = [w for w in report.warnings if "its name says" in w]
    assert "its name says γ = 1.4 but the file holds γ = 1.6" in note and "rename" in note
    # the published Dry_air files are 1.365, 1.4 and 1.404: a mix-up 0.004 apart is said
    near = write_well_euler(tmp_path / "n" / "valid" / f"{STEM}.hdf5", states, gamma=1.404)
    report = import_well_euler([near], tmp_path / "near", downsample=2)
    assert [w for w in report.warnings if "name says γ = 1.4 but the file holds γ = 1.404" in w]


def test_the_limit_a_full_disk_suggests_imports(tmp_path, states, monkeypatch):
    """--limit caps each file: with room for 3 trajectories over 3 files the hint said
    '--limit 3 fits', which the same check then refused."""
    from coherence.simulation.importers import common

    paths = [
        write_well_euler(tmp_path / "data" / split / f"{STEM}.hdf5", states)
        for split in ("train", "valid", "test")
    ]
    per_trajectory = int(np.prod(states.shape[1:])) * 4 * 5 // 4 // 4  # 5 fields at 16²
    monkeypatch.setattr(common, "free_disk", lambda path: common.room_needed(3 * per_trajectory))
    with pytest.raises(RequestError, match=r"--limit 1 fits") as refused:
        import_well_euler(paths, tmp_path / "o", downsample=2)
    assert "(9 trajectories)" in str(refused.value)  # 3 files of 3: room for 3 in all
    report = import_well_euler(paths, tmp_path / "o", downsample=2, limit=1)
    assert report.counts == (1, 1, 1)


def _replace(f: h5py.File, name: str, value) -> None:
    del f[name]
    f[name] = value


MALFORMED = {  # what a damaged or foreign source holds → the words of its refusal
    "no time axis": (lambda f: f.__delitem__("dimensions/time"), "dimensions/time is missing"),
    "one snapshot": (lambda f: _replace(f, "dimensions/time", [0.0]), "at least 2 finite"),
    "NaN time": (
        lambda f: f["dimensions/time"].__setitem__(1, np.nan),
        "strictly increasing times",
    ),
    "time backwards": (
        lambda f: _replace(f, "dimensions/time", np.linspace(1, 0, 21)),
        "strictly increasing",
    ),
    "time as text": (
        lambda f: _replace(f, "dimensions/time", np.array([b"a"] * 21)),
        "not numeric",
    ),
    "empty scalars/gamma": (
        lambda f: _replace(f, "scalars/gamma", np.zeros(0, np.float32)),
        "scalars/gamma is empty",
    ),
    "scalars/gamma a group": (
        lambda f: (f.__delitem__("scalars/gamma"), f.create_group("scalars/gamma")),
        "scalars/gamma is a Group",
    ),
    "root gamma text": (lambda f: f.attrs.__setitem__("gamma", "abc"), "not a number"),
    "scalars/gamma NaN": (
        lambda f: f["scalars/gamma"].__setitem__((), np.nan),
        "scalars/gamma is nan",
    ),
    "gamma NaN": (
        lambda f: (f.attrs.__setitem__("gamma", np.nan), _replace(f, "scalars/gamma", np.nan)),
        "γ must be a finite number > 1",
    ),
    "density a group": (
        lambda f: (f.__delitem__("t0_fields/density"), f.create_group("t0_fields/density")),
        "t0_fields/density is a Group",
    ),
    "density as text": (
        lambda f: _replace(f, "t0_fields/density", np.full((3, 21, 32, 32), b"x")),
        "not floating-point",
    ),
    "density as integers": (
        lambda f: _replace(f, "t0_fields/density", np.ones((3, 21, 32, 32), np.int32)),
        "int32 values, not floating-point",
    ),
    "momentum of 1 component": (
        lambda f: _replace(f, "t1_fields/momentum", np.ones((3, 21, 32, 32, 1), np.float32)),
        "(…, 2) for momentum",
    ),
    "momentum of 3 components": (
        lambda f: _replace(f, "t1_fields/momentum", np.ones((3, 21, 32, 32, 3), np.float32)),
        "(…, 2) for momentum",
    ),
    "boundaries a dataset": (
        lambda f: _replace(f, "boundary_conditions", [1, 2]),
        "boundary_conditions is not a group",
    ),
    "no boundaries": (
        lambda f: f.__delitem__("boundary_conditions"),
        "no boundary_conditions group",
    ),
    "wall boundaries": (
        lambda f: [
            g.attrs.__setitem__("bc_type", "WALL") for g in f["boundary_conditions"].values()
        ],
        "x_periodic (wall)",
    ),
    "unwritten data": (
        lambda f: [
            f[name].__setitem__(1, 0.0)
            for name in (
                "t0_fields/density",
                "t0_fields/energy",
                "t0_fields/pressure",
                "t1_fields/momentum",
            )
        ],
        "trajectory 1 is all zeros in every field at snapshot(s) 0, 1, 2, 3, 4, …: data",
    ),
    "trailing snapshots unwritten": (
        lambda f: [
            f[name].__setitem__((1, slice(10, None)), 0.0)
            for name in (
                "t0_fields/density",
                "t0_fields/energy",
                "t0_fields/pressure",
                "t1_fields/momentum",
            )
        ],
        "trajectory 1 is all zeros in every field at snapshot(s) 10, 11, 12, 13, 14, …",
    ),
    "no trajectories": (
        lambda f: [
            _replace(f, name, np.zeros((0, *f[name].shape[1:]), np.float32))
            for name in (
                "t0_fields/density",
                "t0_fields/energy",
                "t0_fields/pressure",
                "t1_fields/momentum",
            )
        ],
        "0 trajectories on a 32×32 (x × y) grid",
    ),
    "an empty grid": (
        lambda f: [
            _replace(f, name, np.zeros((3, 21, 0, 0, *f[name].shape[4:]), np.float32))
            for name in (
                "t0_fields/density",
                "t0_fields/energy",
                "t0_fields/pressure",
                "t1_fields/momentum",
            )
        ],
        "on a 0×0 (x × y) grid",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_source_is_refused_naming_the_file_and_what_is_wrong(tmp_path, states, case):
    """Each of these crashed with KeyError, IndexError, AttributeError, TypeError or
    ZeroDivisionError, or imported silently (wall boundaries relabelled periodic, an empty
    class committed, a time axis refused only after streaming the whole file)."""
    mutate, words = MALFORMED[case]
    path = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(SchemaError) as refused:
        import_well_euler([path], tmp_path / "out")
    message = str(refused.value)
    assert str(path) in message and words in message, message
    assert not (tmp_path / "out").exists()


def test_two_files_that_would_share_a_name_are_named(tmp_path, states):
    """train/X and valid/X forced into one split by --split said "the same split/file name is
    given twice", though each file was given once."""
    train = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    valid = write_well_euler(tmp_path / "data" / "valid" / f"{STEM}.hdf5", states)
    with pytest.raises(RequestError) as refused:
        import_well_euler([train, valid], tmp_path / "out", split="train")
    message = str(refused.value)
    assert f"{train} and {valid} would both become data/train/{STEM}.hdf5" in message
    assert "--split train puts every file into that split" in message
    other = write_well_euler(tmp_path / "b" / "train" / f"{STEM}.hdf5", states)
    for forced in (None, "train"):  # the folders collide by themselves: --split is not why
        with pytest.raises(RequestError, match=f"two files named {STEM}.hdf5 in folders named"):
            import_well_euler([train, other], tmp_path / "out", split=forced)
    with pytest.raises(RequestError, match="the same file given twice"):
        import_well_euler([train, train], tmp_path / "out")


def test_a_grid_whose_one_snapshot_exceeds_the_block_is_counted_whole(
    tmp_path, states, monkeypatch
):
    """One snapshot larger than the read block is read whole, with float64 temporaries: a
    4096² grid peaked at 1.06 GB where the check had allowed 232 MiB (3 blocks), so an
    import could be killed for memory instead of refused."""
    from coherence.simulation.importers import common

    path = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    with h5py.File(path, "a") as f:  # declared, never written: no disk, no memory
        for name in ("t0_fields/density", "t0_fields/energy", "t0_fields/pressure"):
            del f[name]
            f.create_dataset(name, shape=(1, 2, 4096, 4096), dtype="f4", chunks=True)
        del f["t1_fields/momentum"]
        f.create_dataset("t1_fields/momentum", shape=(1, 2, 4096, 4096, 2), dtype="f4", chunks=True)
        _replace(f, "dimensions/time", np.array([0.0, 1.0], np.float32))
    monkeypatch.setattr(common, "free_memory", lambda: 600 * 2**20)
    with pytest.raises(SchemaError, match=r"one trajectory is 2 × 4096 × 4096 × 5 values"):
        import_well_euler([path], tmp_path / "out", downsample=4)


def test_a_nan_trajectory_hint_keeps_the_other_files_whole(tmp_path, states):
    """--limit caps every file: the hint "--limit 1" for a NaN in a valid file's second
    trajectory, followed, cut the good train file to one trajectory too."""
    train = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    valid = write_well_euler(tmp_path / "data" / "valid" / f"{STEM}.hdf5", states)
    with h5py.File(valid, "a") as f:
        f["t0_fields/density"][1, 2, 0, 0] = np.nan
    with pytest.raises(SchemaError) as refused:
        import_well_euler([train, valid], tmp_path / "o", downsample=2)
    message = " ".join(str(refused.value).split())
    assert "trajectory 1 has NaN or inf in density" in message
    assert message.endswith("import this file alone with --limit 1 (--limit caps every file given)")


def test_a_float16_well_file_is_imported_said_and_recorded(tmp_path, states):
    """PDEgym's importer said a float16 source; The Well's imported it in silence, and
    neither recorded the source's type."""
    path = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    with h5py.File(path, "a") as f:
        for name in ("t0_fields/density", "t0_fields/energy", "t0_fields/pressure"):
            _replace(f, name, f[name][()].astype(np.float16))
    report = import_well_euler([path], tmp_path / "o", downsample=2)
    (note,) = [w for w in report.warnings if "published: float32" in w]
    assert "fields stored as float16, float32 (published: float32)" in note
    assert report.checks[str(path)]["source_dtype"] == "float16, float32"  # per file
    single = write_well_euler(tmp_path / "f32" / "test" / f"{STEM}.hdf5", states)
    full = import_well_euler([single], tmp_path / "p", downsample=2)
    assert full.checks[str(single)]["source_dtype"] == "float32"
    assert not [w for w in full.warnings if "published: float32" in w]


def test_unwritten_snapshots_are_named_by_their_index_in_the_trajectory(
    tmp_path, states, monkeypatch
):
    """The Well import checks one time block at a time: the snapshot named is the
    trajectory's, not the block's (one snapshot per block here)."""
    from coherence.simulation.importers import well_euler

    monkeypatch.setattr(well_euler, "BLOCK_BYTES", 1)
    path = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    with h5py.File(path, "a") as f:
        for name in ("t0_fields/density", "t0_fields/energy", "t0_fields/pressure"):
            f[name][1, 10:] = 0.0
        f["t1_fields/momentum"][1, 10:] = 0.0
    with pytest.raises(SchemaError, match=r"\(time 10\.\.10\): trajectory 1 is all zeros .* 10:"):
        import_well_euler([path], tmp_path / "out")


def test_files_of_another_grid_clock_or_gas_are_refused_before_anything_is_written(
    tmp_path, states
):
    """A valid file at another resolution was committed with the others (exit 2 only
    afterwards, a dataset that opened nowhere and refused the corrected import); another γ
    joined a γ = 1.4 dataset silently, and its checkpoints recorded 1.4."""
    out = tmp_path / "out"
    train = write_well_euler(tmp_path / "data" / "train" / f"{STEM}.hdf5", states)
    coarse = write_well_euler(tmp_path / "c" / "valid" / f"{STEM}.hdf5", states[..., ::2, ::2])
    with pytest.raises(
        SchemaError, match=r"grid 16×16 \(x × y\), but .* has 32×32; files of one dataset"
    ):
        import_well_euler([train, coarse], out, downsample=2)
    clock = write_well_euler(tmp_path / "k" / "valid" / f"{STEM}.hdf5", states)
    with h5py.File(clock, "a") as f:
        f["dimensions/time"][...] *= 2
    with pytest.raises(SchemaError, match=r"on \[0, 3\], but .* on \[0, 1\.5\]; files of one"):
        import_well_euler([train, clock], out, downsample=2)
    gas = write_well_euler(tmp_path / "g" / "valid" / "other_gas.hdf5", states, gamma=1.6)
    with pytest.raises(SchemaError, match=r"γ = 1\.6, but .* has γ = 1\.4; one dataset holds"):
        import_well_euler([train, gas], out, downsample=2)
    assert not out.exists()
    import_well_euler([train], out, downsample=2)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(RequestError, match=r"already holds a dataset with γ = 1\.4, the imp"):
        import_well_euler([gas], out, downsample=2)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_file_of_the_other_layout_is_pointed_to_its_importer(tmp_path, states):
    """A Well file given to `import pdegym` read "this file holds: nothing; is it another
    class's file?"; a PDEgym file given to `import well-euler`, only what was missing."""
    from coherence.simulation.importers.pdegym import import_pdegym
    from tests.simulation.import_fixtures import ce_published, write_pdegym

    well = write_well_euler(tmp_path / "data" / "test" / f"{STEM}.hdf5", states)
    with pytest.raises(SchemaError, match=r"The Well's layout .*`coherence import well-euler"):
        import_pdegym(well, tmp_path / "o", "CE-RP")
    pdegym = write_pdegym(tmp_path / "data" / "test" / "CE-RP.nc", "data", ce_published(states))
    with pytest.raises(SchemaError, match=r"PDEgym's layout: import it with `coherence import pd"):
        import_well_euler([pdegym], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_download_is_not_imported_into_itself_and_its_split_is_recorded(tmp_path, states):
    """The Well's download is a dataset in our layout: --out the download (with
    --overwrite) replaced the downloaded file by the converted one. The split rule is
    recorded for the report; a --limit past a file's end is said."""
    from types import SimpleNamespace

    from coherence.report import data_sources

    download = tmp_path / "dl"
    test = write_well_euler(download / "data" / "test" / f"{STEM}.hdf5", states)
    before = test.read_bytes()
    with pytest.raises(RequestError, match=r"would write over its own source; choose another"):
        import_well_euler([test], download, downsample=1, overwrite=True)
    assert test.read_bytes() == before
    workspace = tmp_path / "ws"
    report = import_well_euler([test], workspace / "datasets" / "well", downsample=2, limit=9)
    assert [w for w in report.warnings if f"--limit 9: {test} holds 3 trajectories" in w]
    (row,) = data_sources(workspace, SimpleNamespace(dataset="well", classes=(STEM,))).values()
    assert "licence CC-BY-4.0" in row and "split: The Well's own train/valid/test files" in row
