"""A dataset appears complete or not at all: staging, commit, recovery, and kill -9 tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coherence.dashboard.workspace_scan import scan_workspace
from coherence.errors import RequestError, SchemaError
from coherence.simulation.dataset import SPLITS, open_dataset
from coherence.simulation.importers.pdegym import import_pdegym
from coherence.simulation.staging import MARKER, dataset_transaction, pending_commit, recover
from coherence.simulation.wellformat import write_well_file
from tests.fixtures import REPO, link_into_a_folder_refusing_locks
from tests.simulation.import_fixtures import ce_published, solver_states, write_pdegym
from tests.simulation.test_wellformat import euler_states

CLASSES = ("CE-RP", "CE-CRP")


def _write(stage, split, class_name):
    write_well_file(
        stage.path(split, f"{class_name}.hdf5"),
        euler_states(b=2),
        np.linspace(0, 1, 4),
        family="euler",
        class_name=class_name,
        dataset_name="d",
    )


def test_new_dataset_appears_in_one_rename_and_a_failure_leaves_nothing(tmp_path):
    root = tmp_path / "d"
    with pytest.raises(RuntimeError), dataset_transaction(root) as stage:
        _write(stage, "train", "CE-RP")
        raise RuntimeError("killed")
    assert not root.exists() and not list(tmp_path.iterdir())  # no lock file either
    with dataset_transaction(root) as stage:
        for split in SPLITS:
            _write(stage, split, "CE-RP")
        assert not root.exists()  # nothing visible before the commit
    assert open_dataset(root).classes == ["CE-RP"]
    # beside a dataset the lock stays: another user's writer may share it (a review)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]


def test_one_writer_at_a_time(tmp_path):
    with (
        dataset_transaction(tmp_path / "d"),
        pytest.raises(RequestError, match="another"),
        dataset_transaction(tmp_path / "d"),
    ):
        pass


def test_a_symlinked_out_shares_its_targets_lock(tmp_path):
    """The second writer, through a link to the first one's folder, was admitted and its
    recovery deleted the first one's staged files (the review's item)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with dataset_transaction(tmp_path / "real") as stage:
        for split in SPLITS:
            _write(stage, split, "CE-RP")
        with pytest.raises(RequestError, match="another"), dataset_transaction(tmp_path / "link"):
            pass
        assert stage.staging.is_dir()  # the first writer's staging is still there
    assert open_dataset(tmp_path / "real").classes == ["CE-RP"]


def test_a_link_into_a_folder_that_refuses_the_lock_locks_beside_the_link(tmp_path, monkeypatch):
    """Adding classes through a link to a dataset in a shared folder whose own folder is not
    ours to write: the lock goes beside the link (cache.locks.try_lock_beside), and a
    second writer through the same link is still refused."""
    link, shared = link_into_a_folder_refusing_locks(tmp_path, monkeypatch, "real")
    with dataset_transaction(link) as stage:
        assert (link.parent / ".link.lock").exists() and not (shared / ".real.lock").exists()
        with (
            pytest.raises(RequestError, match=r"another .*holds .*home/\.link\.lock"),
            dataset_transaction(link),
        ):
            pass
        for split in SPLITS:
            _write(stage, split, "CE-RP")
    assert open_dataset(shared / "real").classes == ["CE-RP"]


def test_recovery_of_a_glob_like_name_leaves_other_datasets_staging_alone(tmp_path):
    other = tmp_path / ".ds1.staging-424242"  # ds1's new dataset, being written
    other.mkdir()
    assert recover(tmp_path / "ds[12]") == []
    assert other.is_dir()
    assert recover(tmp_path / "ds1") == ["removed the unfinished new dataset .ds1.staging-424242"]


def test_interrupted_commit_hides_the_dataset_until_recovery_finishes_it(tmp_path):
    workspace = tmp_path / "ws"
    root = workspace / "datasets" / "d"
    with dataset_transaction(root) as stage:
        for split in SPLITS:
            _write(stage, split, "CE-RP")
    # a killed commit: CE-CRP staged complete, marker written, one of three files moved
    with dataset_transaction(tmp_path / "scratch") as stage:
        for split in SPLITS:
            _write(stage, split, "CE-CRP")
    staging = root / ".staging-99999"
    for split in SPLITS:
        (staging / "data" / split).mkdir(parents=True)
        os.replace(
            tmp_path / "scratch/data" / split / "CE-CRP.hdf5",
            staging / "data" / split / "CE-CRP.hdf5",
        )
    (staging / MARKER).write_text("99999")
    os.replace(staging / "data/train/CE-CRP.hdf5", root / "data/train/CE-CRP.hdf5")
    (root / "data/test/.CE-RP.abc.tmp").write_bytes(b"half")
    assert pending_commit(root) == staging
    with pytest.raises(SchemaError, match="interrupted while committing"):
        open_dataset(root)
    catalog = scan_workspace(workspace)
    assert catalog.dataset("d") is None and "interrupted" in catalog.problems[0]
    actions = recover(root)
    assert any("finished" in a for a in actions) and any(".tmp" in a for a in actions)
    assert open_dataset(root).classes == ["CE-CRP", "CE-RP"]
    assert not list(root.rglob(".*"))


# ---------------------------------------------------------------------------------------------
# kill -9 a real writer at random moments


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "COHERENCE_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "coherence.cli", *args]


def _simulate(root: Path, *extra: str) -> list[str]:
    return _cli(
        "simulate", "--out", str(root), "--family", "euler", "--classes", ",".join(CLASSES),
        "--trajectories", "6", "--resolution", "16", "--snapshots", "5", *extra,
    )  # fmt: skip


def _writing(root: Path) -> bool:
    """Whether a writer has started writing files (into either kind of staging dir)."""
    patterns = [(root.parent, f".{root.name}.staging-*/data/*/*"), (root, ".staging-*/data/*/*")]
    return any(any(base.glob(p)) for base, p in patterns if base.is_dir())


def _kill_while_writing(command: list[str], root: Path, rng: np.random.Generator) -> None:
    """Start ``command``; kill -9 it a random moment after its first file write began (or at
    a random time, for a third of the runs, which may fall before or after writing)."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    if rng.random() < 1 / 3:
        time.sleep(rng.uniform(0.5, 6.0))
    else:
        while not _writing(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.08))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _state(root: Path, workspace: Path, complete_sets: list[set[str]]) -> str:
    """'absent', 'hidden' or 'complete'; anything else (a partial dataset) fails."""
    listed = scan_workspace(workspace).dataset(root.name)
    if not root.exists():
        assert listed is None
        return "absent"
    try:
        info = open_dataset(root)
    except SchemaError as error:
        assert "interrupted" in str(error) or "no 'data'" in str(error), error
        assert listed is None
        return "hidden"
    classes = {c for split in SPLITS for c in info.files.get(split, {})}
    assert classes in complete_sets, f"partial dataset: {classes}"
    for split in SPLITS:
        assert set(info.files[split]) == classes, f"{split} lacks classes: partial dataset"
    assert listed is not None
    return "complete"


def _no_leftovers(workspace: Path) -> None:
    stray = [
        p
        for p in workspace.rglob("*")
        if p.name.endswith(".tmp") or ".staging-" in p.name or p.name == MARKER
    ]
    assert not stray, stray


def _rerun(command: list[str], state: str) -> None:
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    if state == "complete":  # the kill came after the commit: the data really are there
        assert result.returncode == 2 and "already exists" in result.stderr, result.stderr
    elif state == "committing":  # killed inside its commit: the rerun finishes that commit
        assert result.returncode == 2, result.stderr
        assert "finished the interrupted commit" in result.stderr, result.stderr
        assert "interrupted write that was finished just now" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr


def _simulate_kills(tmp_path: Path, kills: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    workspace = tmp_path / "ws"
    states = []
    for k in range(kills):
        root = workspace / "datasets" / f"sim{k}"
        overwrite = k % 2 == 1  # odd runs overwrite an existing complete dataset
        if overwrite:
            subprocess.run(_simulate(root), cwd=REPO, env=_env(), check=True, capture_output=True)
        extra = ("--overwrite", "--seed", "1") if overwrite else ()
        _kill_while_writing(_simulate(root, *extra), root, rng)
        state = _state(root, workspace, [set(CLASSES)])
        states.append(state)
        _rerun(_simulate(root, *extra), "absent" if overwrite else state)
        assert _state(root, workspace, [set(CLASSES)]) == "complete"
        _no_leftovers(workspace)
    return states


@pytest.mark.slow
def test_killed_simulate_leaves_no_partial_dataset(tmp_path):
    _simulate_kills(tmp_path, kills=1, seed=0)  # a new dataset; overwrites: the slow test


@pytest.mark.slow
def test_killed_simulate_leaves_no_partial_dataset_20_times(tmp_path):
    states = _simulate_kills(tmp_path, kills=20, seed=1)
    assert "absent" in states or "hidden" in states  # some kills really hit the write


def _import_kills(tmp_path: Path, kills: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    workspace = tmp_path / "ws"
    source = write_pdegym(
        tmp_path / "CE-RPUI.nc", "data", ce_published(solver_states("euler", "CE-RPUI", 6, 32))
    )
    for k in range(kills):
        root = workspace / "datasets" / f"imp{k}"
        base = write_pdegym(
            tmp_path / "CE-RP.nc", "data", ce_published(solver_states("euler", "CE-RP", 6, 32))
        )
        import_pdegym(base, root, "CE-RP")  # the existing dataset the import adds to
        add = _cli("import", "pdegym", str(source), "--class", "CE-RPUI", "--out", str(root))
        _kill_while_writing(add, root, rng)
        allowed = [{"CE-RP"}, {"CE-RP", "CE-RPUI"}]
        state = _state(root, workspace, allowed)
        added = state == "complete" and "CE-RPUI" in open_dataset(root).classes
        # hidden: the import was killed inside its commit (a commit marker is left, which
        # the reader refuses); the rerun rolls that commit forward, so the class is there
        _rerun(add, "complete" if added else "committing" if state == "hidden" else "absent")
        assert open_dataset(root).classes == ["CE-RP", "CE-RPUI"]
        _no_leftovers(workspace)


def test_killed_import_adds_all_or_nothing(tmp_path):
    _import_kills(tmp_path, kills=1, seed=0)


@pytest.mark.slow
def test_killed_import_adds_all_or_nothing_20_times(tmp_path):
    _import_kills(tmp_path, kills=20, seed=2)


def test_rerun_after_a_kill_inside_the_commit_finishes_it_then_says_so(tmp_path):
    """The reader's advice after a kill inside an import's commit is to rerun the command: the
    rerun rolls the commit forward (the class is then complete) and its refusal says that
    this is why the class already exists."""
    base = write_pdegym(
        tmp_path / "CE-RP.nc", "data", ce_published(solver_states("euler", "CE-RP", 6, 32))
    )
    source = write_pdegym(
        tmp_path / "CE-RPUI.nc", "data", ce_published(solver_states("euler", "CE-RPUI", 6, 32))
    )
    root, finished = tmp_path / "x" / "ds", tmp_path / "y" / "ds"
    for target in (root, finished):
        import_pdegym(base, target, "CE-RP")
    import_pdegym(source, finished, "CE-RPUI")
    staging = root / ".staging-99999"  # what a kill after the marker, before any move, leaves
    for path in (finished / "data").glob("*/CE-RPUI.hdf5"):
        (staging / "data" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, staging / "data" / path.parent.name / path.name)
    (staging / MARKER).write_text("")
    add = _cli("import", "pdegym", str(source), "--class", "CE-RPUI", "--out", str(root))
    _rerun(add, "committing")
    assert open_dataset(root).classes == ["CE-RP", "CE-RPUI"]
    assert pending_commit(root) is None


WORKERS_SCRIPT = """
import sys
from coherence.simulation.dataset import SimulationRequest, generate_dataset
request = SimulationRequest(family="euler", classes=("CE-RP", "CE-CRP"), trajectories=16,
                            resolution=64, snapshots=11)  # minutes: killed long before
generate_dataset(request, sys.argv[1], workers=2)
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
@pytest.mark.slow
def test_simulation_workers_exit_when_their_parent_is_killed(tmp_path):
    """kill -9 of a simulation left its spawned pool workers (≈ 300 MB each) running, then
    waiting for work forever, reparented to init."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKERS_SCRIPT, str(tmp_path / "ds")], cwd=REPO, env=_env()
    )
    deadline = time.monotonic() + 120
    while len(workers := [c for c in _children(proc.pid) if _alive(c)]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no pool workers started"
        time.sleep(0.05)
    time.sleep(2.0)  # computing their chunks
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"pool workers {left} outlived their killed parent"


def test_a_dataset_is_not_written_into_a_checkpoint_or_over_a_file(tmp_path):
    """simulate --out <a checkpoint> wrote data/ into it (rc 0), and a file as --out left a
    lock file beside it; both are refused before anything is written."""
    checkpoint = tmp_path / "unet_s1"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    a_file = tmp_path / "hostname"
    a_file.write_text("box")
    before = sorted(tmp_path.rglob("*"))
    for inside in (checkpoint, checkpoint / "data_here"):  # the folder, or one in it
        with (
            pytest.raises(RequestError, match=r"unet_s1 is a checkpoint; write the dataset"),
            dataset_transaction(inside),
        ):
            pass
    with (
        pytest.raises(RequestError, match=r"hostname: a file, not a folder"),
        dataset_transaction(a_file),
    ):
        pass
    assert sorted(tmp_path.rglob("*")) == before


def test_an_out_inside_a_dataset_or_over_datasets_is_refused(tmp_path):
    """--out the datasets folder wrote data/ beside the datasets (a broken dataset "data"),
    --out the workspace into its root, --out <dataset>/data nested one dataset in another."""
    from coherence.simulation.staging import check_dataset_folder

    workspace = tmp_path / "ws"
    dataset = workspace / "datasets" / "ce"
    (dataset / "data" / "train").mkdir(parents=True)
    (dataset / "data" / "train" / "CE-RP.hdf5").touch()
    (workspace / "cache").mkdir()
    refused = {
        dataset / "data": f"lies in the data folder of the dataset {dataset}; choose a folder",
        workspace / "datasets": "that is a workspace's folder of datasets",
        workspace: f"that is a workspace, not a dataset's folder; write the dataset to a "
        f"folder of its own, e.g. {workspace / 'datasets' / 'NAME'}",
    }
    for out, says in refused.items():
        with pytest.raises(RequestError, match=re.escape(says)):
            check_dataset_folder(out)
    shelf = tmp_path / "shelf"
    shutil.copytree(workspace / "datasets", shelf)
    with pytest.raises(RequestError, match=r"a folder of datasets \(ce\)"):
        check_dataset_folder(shelf)
    for fine in (dataset, workspace / "datasets" / "new", shelf / "new"):
        check_dataset_folder(fine)  # a dataset's own folder (to add classes), or a new one


def test_a_new_workspace_is_refused_as_an_out_and_a_dataset_always_passes(tmp_path, monkeypatch):
    """A new workspace holds no cache/ or checkpoints/ yet: --out ws/datasets wrote
    ws/datasets/data/ and --out ws wrote ws/data/. A dataset that happens to hold a
    checkpoints/ folder was refused as a workspace."""
    from coherence.simulation.staging import check_dataset_folder

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(RequestError, match=r"a workspace's folder of datasets, .* e\.g\. .*NAME"):
        check_dataset_folder(fresh / "datasets")
    (fresh / "datasets" / "ce" / "data" / "train").mkdir(parents=True)
    (fresh / "datasets" / "ce" / "data" / "train" / "CE-RP.hdf5").touch()
    with pytest.raises(RequestError, match=r"that is a workspace, not a dataset's folder"):
        check_dataset_folder(fresh)
    (fresh / "datasets" / "ce" / "checkpoints").mkdir()
    check_dataset_folder(fresh / "datasets" / "ce")  # a dataset: classes added to it
    monkeypatch.setenv("COHERENCE_WORKSPACE", str(tmp_path / "named"))
    for out in (tmp_path / "named", tmp_path / "named" / "datasets"):
        with pytest.raises(RequestError, match="that is a workspace"):
            check_dataset_folder(out)
