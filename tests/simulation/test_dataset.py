"""Dataset generation end to end (real solvers, real HDF5), layout checks and fingerprints."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coherence.cli import app
from coherence.errors import RequestError, SchemaError
from coherence.simulation import euler, navier_stokes
from coherence.simulation.classes import get_class
from coherence.simulation.dataset import (
    SimulationRequest,
    class_seed,
    generate_dataset,
    open_dataset,
    split_counts,
)
from coherence.workspace import ENV_VAR


@pytest.fixture(scope="module")
def ce_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ce") / "ce_small"
    request = SimulationRequest(
        family="euler",
        classes=("CE-RP", "CE-RPUI"),
        trajectories=4,
        resolution=16,
        snapshots=5,
        t_end=0.2,
        seed=7,
    )
    reports: list[tuple[int, int, str]] = []
    generate_dataset(request, root, progress=lambda *r: reports.append(r))
    ce_dataset_progress.extend(reports)
    return root, request


ce_dataset_progress: list[tuple[int, int, str]] = []


def test_split_counts_cover_every_split():
    assert split_counts(20, (0.65, 0.05, 0.30)) == (13, 1, 6)
    assert split_counts(32, (0.65, 0.05, 0.30)) == (20, 2, 10)
    assert split_counts(3, (0.65, 0.05, 0.30)) == (1, 1, 1)
    assert sum(split_counts(97, (0.65, 0.05, 0.30))) == 97


def test_progress_counts_trajectories_of_all_classes_then_names_each_file_written(ce_dataset):
    """The label says what is counted: a class name next to "8/8" once read as that class
    having 8 trajectories (it has 4)."""
    done = [r for r in ce_dataset_progress if r[2].startswith("simulated")]
    writing = [r for r in ce_dataset_progress if r[2].startswith("writing")]
    assert [d for d, _, _ in done] == sorted(d for d, _, _ in done) and done[-1][:2] == (8, 8)
    assert all(f"{d}/8 trajectories" in label for d, _, label in done)
    assert [label for _, _, label in writing] == [
        "writing CE-RP (4 trajectories)",
        "writing CE-RPUI (4 trajectories)",
    ]
    assert ce_dataset_progress[-len(writing) :] == writing  # writing comes last


def test_a_new_simulation_may_not_take_the_name_of_a_dataset_beside_it(ce_dataset, tmp_path):
    """Its default name was FAMILY_RESOLUTION, so two simulations in one workspace shared
    'euler_16', and checkpoints (which record it) counted as trained on both (a review)."""
    root, request = ce_dataset
    small = replace(request, classes=("CE-RP",), trajectories=3, snapshots=3)
    beside = root.parent / "named_like_it"
    with pytest.raises(RequestError, match=r"ce_small is already named 'ce_small'.*--name"):
        generate_dataset(replace(small, dataset_name="ce_small"), beside)
    assert not beside.exists()
    generate_dataset(small, beside)  # by default: its own folder's name
    assert open_dataset(beside).name == "named_like_it"


def test_generated_dataset_layout_and_contents(ce_dataset):
    root, request = ce_dataset
    info = open_dataset(root)
    assert info.name == "ce_small" and info.family.value == "euler"  # its folder's name
    assert info.classes == ["CE-RP", "CE-RPUI"]
    assert {s: sorted(c) for s, c in info.files.items()} == {
        s: ["CE-RP", "CE-RPUI"] for s in ("train", "valid", "test")
    }
    counts = [info.file(s, "CE-RP").n_trajectories for s in ("train", "valid", "test")]
    assert counts == [2, 1, 1]
    np.testing.assert_allclose(info.times, np.linspace(0, 0.2, 5), rtol=1e-6)
    # The stored trajectories are the solver's, from the class's seeded initial states.
    initial = get_class("CE-RPUI").sample(4, 16, class_seed(7, "CE-RPUI"))
    all_states = np.concatenate([info.load(s, "CE-RPUI") for s in ("train", "valid", "test")])
    first_frames = torch.from_numpy(all_states[:, 0]).double()
    matches = [int(torch.argmin(((initial - f) ** 2).flatten(1).sum(1))) for f in first_frames]
    assert sorted(matches) == [0, 1, 2, 3]  # a permutation: every trajectory lands in one split
    k = matches[0]
    expected = euler.evolve(initial[k : k + 1].float(), torch.tensor(request.times).float())
    np.testing.assert_allclose(all_states[0], expected[0].numpy(), rtol=1e-5, atol=1e-5)
    # physical and conservative: positive density, mass conserved along each trajectory
    assert all_states[:, :, 0].min() > 0
    mass = all_states[:, :, 0].sum(axis=(-2, -1))
    np.testing.assert_allclose(mass, mass[:, :1].repeat(5, axis=1), rtol=1e-5)


def test_generation_is_reproducible_and_refuses_to_overwrite(ce_dataset, tmp_path):
    root, request = ce_dataset
    with pytest.raises(RequestError, match="already exists"):
        generate_dataset(request, root)
    again = generate_dataset(
        SimulationRequest(**{**request.to_dict(), "classes": ("CE-RP",)}), tmp_path / "again"
    )
    with (
        h5py.File(root / "data/test/CE-RP.hdf5") as a,
        h5py.File(again / "data/test/CE-RP.hdf5") as b,
    ):
        np.testing.assert_array_equal(a["t0_fields/density"][()], b["t0_fields/density"][()])


def test_classes_added_to_a_dataset_share_its_grid_time_axis_and_name(ce_dataset, tmp_path):
    """A 32² class simulated into a 16² dataset was written (exit 0) and the dataset then
    opened nowhere (a walk-through): a class of another grid or time axis is refused before
    anything is simulated, and a matching one joins under the dataset's own name."""
    import shutil

    root = shutil.copytree(ce_dataset[0], tmp_path / "ce")
    base = {**ce_dataset[1].to_dict(), "classes": ("CE-CRP",), "trajectories": 3}
    for change, words in (
        ({"resolution": 32}, r"grid 16×16 \(x × y\), the simulation is 32×32"),
        ({"snapshots": 9, "t_end": 0.8}, r"5 snapshots on \[0, 0.2\], the simulation has 9"),
    ):
        with pytest.raises(RequestError, match=words + r".*simulate into another --out"):
            generate_dataset(SimulationRequest(**{**base, **change}), root)
        assert open_dataset(root).classes == ["CE-RP", "CE-RPUI"]  # untouched
    generate_dataset(SimulationRequest(**base), root)
    info = open_dataset(root)
    assert sorted(info.classes) == ["CE-CRP", "CE-RP", "CE-RPUI"]
    assert info.name == open_dataset(ce_dataset[0]).name


def test_ns_dataset_is_divergence_free(tmp_path):
    request = SimulationRequest(
        family="ns", classes=("NS-Gauss",), trajectories=3, resolution=16, snapshots=3, t_end=0.1
    )
    info = open_dataset(generate_dataset(request, tmp_path / "ns"))
    states = torch.from_numpy(info.load("train", "NS-Gauss")).double()
    assert info.channels == ("velocity_x", "velocity_y")
    assert navier_stokes.divergence(states).abs().max() < 1e-4  # float32 storage


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"family": "mhd"}, "unknown PDE family 'mhd'"),
        ({"classes": ("CE-RP", "NS-Sines")}, "CE and NS are never mixed"),
        ({"classes": ("CE-XYZ",)}, "CE-RP"),
        ({"classes": ()}, "classes is empty"),
        ({"trajectories": 2}, "at least one"),
        ({"resolution": 30}, "multiple of 8"),
        ({"resolution": 100_000}, "multiple of 8 between 8 and 1024"),
        ({"snapshots": 1}, "snapshots=1"),
        ({"t_end": float("nan")}, "t_end=nan"),
        ({"split": (0.5, 0.5, 0.5)}, "summing to 1"),
    ],
)
def test_simulation_request_validation(changes, message):
    base = dict(family="euler", classes=("CE-RP",), trajectories=4, resolution=16)
    with pytest.raises(RequestError, match=message):
        SimulationRequest(**{**base, **changes})


def test_open_dataset_refuses_inconsistent_or_missing_layouts(ce_dataset, tmp_path):
    root, _ = ce_dataset
    with pytest.raises(SchemaError, match="no 'data' directory"):
        open_dataset(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with h5py.File(copy / "data/valid/CE-RP.hdf5", "a") as f:
        f.attrs["dataset_name"] = "other"
    with pytest.raises(SchemaError, match=r"dataset_name is 'other'.*must agree"):
        open_dataset(copy)
    info = open_dataset(root)
    with pytest.raises(RequestError, match="available: CE-RP, CE-RPUI"):
        info.file("test", "CE-KH")


def test_a_well_folder_given_directly_is_held_to_what_the_surrogates_assume(ce_dataset, tmp_path):
    """A user's own Well folder given to --data skipped what the importer checks: uneven
    snapshot times (the checkpoint recorded the first step as its Δt) and wall or unnamed
    boundaries trained without a word. They are named (training refuses them, analysis
    warns), and the dataset still opens: one that opened before these checks stays readable.
    Open boundaries (imported with --allow-open) are no problem, only said at training."""
    root, _ = ce_dataset

    def edited(name, edit):
        copy = tmp_path / name
        shutil.copytree(root, copy)
        for path in sorted((copy / "data").rglob("*.hdf5")):
            with h5py.File(path, "a") as f:
                edit(f)
        return open_dataset(copy)

    def uneven(f):
        times = f["dimensions/time"][()]
        times[2] += 0.4 * (times[2] - times[1])
        f["dimensions/time"][()] = times

    (said,) = edited("uneven", uneven).assumption_problems
    assert "not evenly spaced in time (steps " in said and "constant Δt" in said

    def relabel(bc_type):
        def edit(f):
            for group in f["boundary_conditions"].values():
                group.attrs["bc_type"] = bc_type

        return edit

    walls = edited("wall", relabel("WALL")).assumption_problems
    files = len(list((root / "data").rglob("*.hdf5")))
    (wall,) = walls  # one line for all the files (each said it alone, six times)
    assert wall.startswith(f"{files} files of {tmp_path / 'wall'} (train/") and ", …)" in wall
    assert "boundaries wall; " in wall and "periodic" in wall

    def unnamed(f):
        for name in list(f["boundary_conditions"]):
            del f["boundary_conditions"][name]

    assert "boundaries none named" in edited("none", unnamed).assumption_problems[0]
    assert open_dataset(root).assumption_problems == [] and not open_dataset(root).open_boundaries
    opened = edited("open", relabel("OPEN"))
    assert opened.open_boundaries and opened.assumption_problems == []


def test_one_clock_rule_for_every_reader():
    """Even to the storage's rounding (float32, float16) or 1 % of the step (a clock written
    to 3 decimals); a third apart (Δt 0.015 beside 0.02) is uneven."""
    from coherence.simulation.dataset import uneven_times

    for times, eps in (
        (np.linspace(0, 1.5, 101).astype(np.float32), 1.2e-7),
        (np.linspace(0, 1, 21).astype(np.float32), 1.2e-7),
        (np.linspace(0, 1.5, 101).astype(np.float16), float(np.finfo(np.float16).eps)),
        (np.round(np.linspace(0, 1, 7), 3), 1.2e-7),
        (1000 + np.linspace(0, 1, 21).astype(np.float32), 1.2e-7),
    ):
        assert uneven_times(Path("f"), times, eps) is None, times
    steps = np.array([0, 0.015, 0.015, 0.02, 0.015, 0.015])
    assert "not evenly spaced" in uneven_times(Path("f"), np.cumsum(steps))


def test_fingerprint_follows_file_contents(ce_dataset, tmp_path):
    root, _ = ce_dataset
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert open_dataset(copy).fingerprint() == open_dataset(root).fingerprint()
    with h5py.File(copy / "data/train/CE-RP.hdf5", "a") as f:
        f["t0_fields/density"][0, 0, 0, 0] += 1.0
    changed = open_dataset(copy)
    assert changed.fingerprint() != open_dataset(root).fingerprint()
    assert changed.fingerprint(split="test") == open_dataset(root).fingerprint(split="test")


def test_a_class_whose_files_disagree_on_gamma_is_refused(ce_dataset, tmp_path):
    """A test file of γ = 1.67 beside the class's train file of 1.4 was analysed with the
    model trained at 1.4 (the check read the first training class's γ only)."""
    from coherence.errors import SchemaError

    root, _ = ce_dataset
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with h5py.File(copy / "data/test/CE-RP.hdf5", "a") as f:
        f.attrs["gamma"] = 1.67
        f["scalars/gamma"][()] = 1.67
    with pytest.raises(SchemaError, match=r"CE-RP.hdf5: gamma is 1.67 but .*CE-RP.hdf5 \(the"):
        open_dataset(copy)


def test_cli_simulate_writes_dataset_and_reports_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli_ds"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            str(out),
            "--family",
            "ns",
            "--classes",
            "NS-Sines",
            "--trajectories",
            "3",
            "--resolution",
            "16",
            "--snapshots",
            "3",
            "--t-end",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    # the folder's name, which the dashboard lists, and which a new dataset now takes as its
    # Well name too (it said "wrote dataset ns_16 … to …/cli_ds", two names for one dataset)
    said = " ".join(result.output.split())
    assert "wrote dataset cli_ds (1 class × 3 trajectories" in said
    assert "note: the dashboard lists the datasets in" in said  # tmp_path: no workspace's
    assert open_dataset(out).name == "cli_ds"
    assert open_dataset(out).classes == ["NS-Sines"]
    # without --classes, the family's own first three (CE-RP was asked of ns: a walk-through)
    command = ["simulate", "--out", str(tmp_path / "ns3"), "--family", "ns", "--trajectories"]
    small = ["3", "--resolution", "16", "--snapshots", "3", "--t-end", "0.05"]
    result = runner.invoke(app, command + small, env={ENV_VAR: str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert sorted(open_dataset(tmp_path / "ns3").classes) == ["NS-BB", "NS-Gauss", "NS-Sines"]
    assert "note: the dashboard lists" in result.output  # not in <workspace>/datasets/
    listed = ["simulate", "--out", str(tmp_path / "datasets" / "ns"), "--family", "ns"]
    result = runner.invoke(app, [*listed, "--trajectories", *small], env={ENV_VAR: str(tmp_path)})
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    # a check's field name reads as the flag that set it (it said "t_end=-1.0: …")
    negative = runner.invoke(app, ["simulate", "--out", str(tmp_path / "y"), "--t-end", "-1"])
    assert negative.exit_code == 2
    assert "error: --t-end -1.0: must be a positive number" in negative.output
    # an absurd horizon ran at 0 % until interrupted
    huge = runner.invoke(app, ["simulate", "--out", str(tmp_path / "y"), "--t-end", "1e30"])
    assert huge.exit_code == 2 and "--t-end 1e+30: at most 10" in huge.output, huge.output
    bad = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--classes", "CE-NOPE"])
    assert bad.exit_code == 2
    assert "error:" in bad.output and "CE-NOPE" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_worker_processes_give_the_same_dataset_as_one_process(tmp_path):
    request = SimulationRequest(
        family="euler",
        classes=("CE-RP", "CE-CRP"),
        trajectories=4,
        resolution=16,
        snapshots=3,
        t_end=0.1,
        seed=3,
    )
    serial = open_dataset(generate_dataset(request, tmp_path / "serial", batch_size=2, workers=1))
    parallel = open_dataset(
        generate_dataset(request, tmp_path / "parallel", batch_size=2, workers=2)
    )
    for split in ("train", "valid", "test"):
        for class_name in request.classes:
            np.testing.assert_array_equal(
                serial.load(split, class_name), parallel.load(split, class_name)
            )


@pytest.mark.parametrize(("threads", "cores", "cap"), [("1", 2, 1), ("", 2, 2), ("3", 8, 3)])
def test_simulate_keeps_to_its_share_of_the_cores(tmp_path, monkeypatch, threads, cores, cap):
    """`COHERENCE_TORCH_THREADS=1 coherence simulate` started one worker process per core
    whenever one job may run at a time (the default on ≤ 4 cores), beside whatever the
    variable was set to make room for. Its share caps the pool; within it, the generator
    still runs a small job in its own process."""
    import coherence.cache.slots
    import coherence.simulation.dataset
    import coherence.simulation.generate

    seen = {}

    def record(jobs, request, pool, progress):
        seen["pool"] = pool
        return run_jobs(jobs, request, pool, progress)

    run_jobs = coherence.simulation.generate._run_jobs
    monkeypatch.setattr(coherence.simulation.generate, "_run_jobs", record)
    monkeypatch.setattr(coherence.cache.slots, "machine_cores", lambda: cores)
    monkeypatch.setattr(coherence.simulation.generate, "machine_cores", lambda: cores)
    monkeypatch.setattr(coherence.cache.slots, "cores_taken_by_others", lambda: 0)  # quiet
    monkeypatch.setenv("COHERENCE_MAX_JOBS", "1")
    monkeypatch.setenv("COHERENCE_TORCH_THREADS", threads)
    small = ["--family", "ns", "--classes", "NS-Sines", "--trajectories", "3"]
    small += ["--resolution", "16", "--snapshots", "3", "--t-end", "0.05"]
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "d"), *small])
    assert result.exit_code == 0, result.output
    assert seen == {"pool": (None, cap)}
    size = coherence.simulation.generate._pool_size
    big = SimulationRequest(family="ns", classes=("NS-Sines",), trajectories=64, resolution=64)
    expected = {(None, 1): 1, (None, 3): min(3, cores), (None, None): cores, (5, 1): 5}
    for pool, processes in expected.items():  # (workers, max_workers): an explicit count wins
        assert size([()] * 8, big, pool) == processes, pool
    tiny = SimulationRequest(family="ns", classes=("NS-Sines",), trajectories=3, resolution=16)
    assert size([()] * 8, tiny, (None, 3)) == 1  # start-up would cost more than it saves


def test_a_simulation_the_disk_cannot_hold_is_refused_before_any_step(tmp_path, monkeypatch):
    """100 000 trajectories at 1024² (≈ 100 TB) passed each limit on its own and simulated
    until memory ran out; the room is checked first, with what fits."""
    from coherence.simulation import generate
    from coherence.simulation.dataset import SimulationRequest, generate_dataset

    request = SimulationRequest(
        family="ns",
        classes=("NS-Sines",),
        trajectories=10,
        resolution=16,
        snapshots=3,
        t_end=0.05,
    )
    per = 3 * 2 * 16**2 * 4  # snapshots × velocity components × cells × float32
    room = generate.room_needed(4 * per)  # room for 4 trajectories, not 10
    monkeypatch.setattr("coherence.resources.free_disk", lambda path: room)
    with pytest.raises(RequestError, match=r"needs ≈ .*--trajectories 4 fits\) or a coarser"):
        generate_dataset(request, tmp_path / "ns")
    assert not (tmp_path / "ns").exists()
    monkeypatch.setattr(
        "coherence.resources.free_disk", lambda path: generate.room_needed(10 * per)
    )
    generate_dataset(request, tmp_path / "ns")  # room for all 10: simulated
    assert open_dataset(tmp_path / "ns").classes == ["NS-Sines"]
