"""`coherence analyze` prepares its request once (dataset opened, batches assembled) and that
preparation serves the cost estimate and the run: a computation, a result assembled from
cached units, or one served whole, does not assemble the batches again."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
from typer.testing import CliRunner

from coherence.analysis import pipeline
from coherence.cache import jobs
from coherence.cli import app


@pytest.fixture
def prepares(monkeypatch):
    """Every ``pipeline.prepare`` call, wherever it was imported."""
    calls = []

    def counting(request, info=None):
        calls.append(request.trajectories)
        return real(request, info)

    real = pipeline.prepare
    monkeypatch.setattr(pipeline, "prepare", counting)
    monkeypatch.setattr(jobs, "prepare", counting)
    return calls


def analyze(checkpoint, data, workspace, out, trajectories: str) -> str:
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)),
        *("--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", trajectories),
        *("--estimator", "euclidean", "--device", "cpu", "--workspace", str(workspace), "--yes"),
    ]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert run.exit_code == 0, run.output
    assert out.exists()
    return " ".join(run.output.split())


def test_analyze_prepares_once_when_served_from_cached_units(
    checkpoint, tiny_dataset, workspace, tmp_path, prepares
):
    said = analyze(checkpoint, tiny_dataset, workspace, tmp_path / "both.npz", "0,1")  # computes
    assert prepares == [(0, 1)]  # the estimate's preparation serves the computation too
    assert "cost estimate: whole job" in said and "cached)" not in said
    prepares.clear()
    said = analyze(checkpoint, tiny_dataset, workspace, tmp_path / "one.npz", "1")  # units cached
    assert prepares == [(1,)]
    # every unit cached: no estimate of a computation that will not happen (it said ≈ 2 min)
    assert "every unit is cached (1 unit): assembled without computing" in said
    assert "cost estimate" not in said
    # said as such (it read "N = 8, 0.0 s"), and the units' device kept in the provenance
    assert "assembled from cached units in " in said
    provenance = json.loads((tmp_path / "one.json").read_text())["provenance"]
    assert provenance["device"] == "cpu (assembled from cached units)"
    prepares.clear()
    analyze(checkpoint, tiny_dataset, workspace, tmp_path / "again.npz", "1")  # result cached
    assert prepares == [(1,)]


def test_analyze_estimates_only_the_units_left_to_compute(checkpoint, tiny_dataset, tmp_path):
    fresh = tmp_path / "ws"
    analyze(checkpoint, tiny_dataset, fresh, tmp_path / "first.npz", "0")
    said = analyze(checkpoint, tiny_dataset, fresh, tmp_path / "both.npz", "0,1")  # 1 of 2
    assert "(1 × (checkpoint, batch) left of 2 (1 cached)" in said
    # a damaged unit is not "cached": it is dropped, estimated and computed; so is a damaged
    # result (it was taken as served by its metadata, then recomputed with no estimate)
    from coherence.cache import ResultStore
    from coherence.workspace import cache_dir

    with ResultStore(cache_dir(fresh)) as store:
        raw = store._cache  # the diskcache beneath: damage the bytes, as a disk fault would
        for name in list(raw):
            if name.startswith(("result:", "unit:")):
                raw[name] = raw[name][:100]
    said = analyze(checkpoint, tiny_dataset, fresh, tmp_path / "again.npz", "0")
    assert "every unit is cached" not in said and "cost estimate: whole job" in said
    assert "served without computing" not in said
    assert "(1 × (checkpoint, batch) at" in said  # the damaged one, left to compute


@pytest.mark.parametrize(
    ("estimator", "prints"), [("ekfac-krylov", True), ("ekfac", False)], ids=["galerkin", "ekfac"]
)
def test_analyze_prints_the_full_system_residuals(
    checkpoint, tiny_dataset, workspace, tmp_path, estimator, prints
):
    """The EK-FAC estimators run end to end from the CLI; a Galerkin result prints its
    residuals against the paper's tolerances, EK-FAC alone (no residual) does not."""
    out = tmp_path / f"{estimator}.npz"
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset), "--out", str(out)),
        *("--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", "0"),
        *("--estimator", estimator, "--depth", "1", "--device", "cpu"),
        *("--workspace", str(workspace), "--yes"),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert ("full-system residual" in run.output) is prints, run.output
    if prints:  # one short line, pointing to the rest (it stood 900 characters long)
        (line,) = [x for x in run.output.splitlines() if x.startswith("full-system residual")]
        assert len(" ".join(line.split())) < 300 and "README: estimators" in line
        # and how much of the SMSE map the residual correction is, from the result itself
        solves = json.loads(out.with_suffix(".json").read_text())["diagnostics"]
        median = statistics.median(c["residual_correction"] for row in solves for c in row)
        said = " ".join(run.output.split())
        assert f"(the residual correction), here {median:.3g}× the Galerkin part's norm" in said
    assert "(1 checkpoint × 1 batch, N = 4" in " ".join(run.output.split())  # singular nouns
    assert json.loads(out.with_suffix(".json").read_text())["request"]["estimator"] == estimator


def test_analyze_says_when_its_workspace_is_new(checkpoint, tiny_dataset, tmp_path):
    """A mistyped --workspace computed afresh into a new, empty workspace without a word
    (`serve` says so); said once, when it is created."""
    new = tmp_path / "wrokspace"
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset)),
        *("--out", str(tmp_path / "R.npz"), "--classes", "CE-RP,CE-CRP", "--window", "0:2"),
        *("--trajectories", "0", "--estimator", "euclidean", "--device", "cpu"),
        *("--workspace", str(new), "--yes"),
    ]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert run.exit_code == 0, run.output
    said = " ".join(run.output.split())
    assert f"the workspace {new} does not exist yet" in said and "for a typo" in said
    run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert run.exit_code == 0 and "does not exist yet" not in run.output, run.output


def test_analyze_takes_workspace_names_and_says_when_data_and_checkpoint_are_swapped(
    checkpoint, tiny_dataset, tmp_path
):
    """`--data ce_demo` (a name, as `study --data` takes it) was "no 'data' directory";
    a checkpoint given as --data, or a dataset as --checkpoint, now says they are swapped."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    shutil.copytree(checkpoint, root / "checkpoints" / "unet_tiny")

    def analyze(ckpt: str, data: str) -> tuple[int, str]:
        args = [
            "analyze",
            *("--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "R.npz")),
            *("--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", "0"),
            *("--estimator", "euclidean", "--device", "cpu", "--workspace", str(root)),
        ]
        # --no-trust-code: the old flag pair's second half, hidden now, still accepted
        run = CliRunner().invoke(app, [*args, "--yes", "--no-trust-code"], env={"COLUMNS": "300"})
        return run.exit_code, " ".join(run.output.split())

    code, said = analyze("unet_tiny", "tiny")
    assert code == 0, said
    request = json.loads((tmp_path / "R.json").read_text())["request"]
    assert request["data"] == str(root / "datasets" / "tiny")
    assert request["checkpoints"] == [str(root / "checkpoints" / "unet_tiny")]
    # a snapshot by its path inside the workspace, as the dashboard lists it
    code, said = analyze("unet_tiny/epochs/0001", "tiny")
    assert code == 0, said
    request = json.loads((tmp_path / "R.json").read_text())["request"]
    assert request["checkpoints"] == [str(root / "checkpoints" / "unet_tiny/epochs/0001")]
    code, said = analyze("unet_tiny/epochs/1", "tiny")  # the epoch unpadded: the same
    assert code == 0, said
    request = json.loads((tmp_path / "R.json").read_text())["request"]
    assert request["checkpoints"] == [str(root / "checkpoints" / "unet_tiny/epochs/0001")]
    code, said = analyze("unet_tiny/epochs/0005", "tiny")
    assert code == 2 and "unet_tiny keeps no snapshot of epoch 5 (epochs kept: 1, 2)" in said
    code, said = analyze(str(root / "checkpoints" / "unet_tiny" / "epochs"), "tiny")
    assert code == 2 and "It is the folder of unet_tiny's training snapshots" in said
    assert (
        f"e.g. {root / 'checkpoints' / 'unet_tiny' / 'epochs' / '0002'} (epochs kept: 1, 2)" in said
    )
    code, said = analyze("tiny", "unet_tiny")
    assert code == 2 and "--checkpoint tiny: no such folder, nor a checkpoint of that" in said
    assert "the workspace has a dataset of that name: were --data and --checkpoint swapped?" in said
    code, said = analyze("unet_tiny", "nowhere")
    assert code == 2 and "--data nowhere: no such folder" in said and "give the folder's" in said
    assert "or one of the names there (tiny)" in said  # the workspace's datasets, listed
    code, said = analyze(str(root / "datasets" / "tiny"), "tiny")
    assert code == 2 and "It is a dataset (data/<split>/*.hdf5), not a checkpoint" in said
    code, said = analyze("unet_tiny", str(root / "checkpoints" / "unet_tiny"))
    assert (
        code == 2
        and "This folder is a checkpoint, not a dataset (on the command line: were --data" in said
    )


@pytest.mark.parametrize("out", ["R.txt", "folder.npz", "notes.txt/R.npz", "/proc/new/R.npz"])
def test_a_result_path_that_cannot_be_written_is_refused_before_computing(
    checkpoint, tiny_dataset, workspace, tmp_path, prepares, out
):
    """`--out R.txt` was refused only after the analysis had run (and been cached)."""
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "notes.txt").write_text("a file, where a folder would be made")
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset)),
        *("--out", str(tmp_path / out), "--classes", "CE-RP", "--window", "0:2"),
        *("--estimator", "euclidean", "--workspace", str(workspace), "--yes"),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    said = " ".join(run.output.split())
    assert f"--out {tmp_path / out}:" in said and ".R.npz." not in said  # not a temp name
    assert prepares == []  # refused before the data were even read
    if out.startswith("/proc"):  # writable by its permissions (root), not by its kind
        assert "cannot write in /proc (" in said and "a folder you can write to" in said


@pytest.mark.slow
def test_analyze_times_its_estimate_alone_when_another_job_computes(
    checkpoint, tiny_dataset, workspace, tmp_path, monkeypatch
):
    """The estimate was timed beside the running job (oversubscribed, several times slow)
    and asked for --yes. It is flagged as such, and where that figure would ask, the CLI
    waits its turn to time it alone; it holds no key lock while it waits (the slot is taken
    after the key lock)."""
    import os
    import threading

    import torch

    from coherence.analysis.pipeline import load_checked, prepare
    from coherence.analysis.request import AnalysisRequest
    from coherence.cache import slots
    from coherence.cache.cost import BESIDE_OTHER_JOB, JobEstimate, estimate_job
    from tests.fixtures import wait_for

    monkeypatch.setenv(slots.DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    # the oversubscribed figure crosses the threshold (a tiny model's would not), the alone one not
    monkeypatch.setattr(JobEstimate, "needs_confirmation", property(lambda e: e.beside_other_job))
    request = AnalysisRequest(
        checkpoints=(str(checkpoint),), data=str(tiny_dataset), classes=("CE-RP",), n_steps=2
    )
    info, batches = prepare(request)
    model, _ = load_checked(checkpoint, info, torch.device("cpu"))
    _, fd = slots.acquire("another job")
    outcome = {}
    try:
        assert estimate_job(model, request, batches[0].inputs).describe().endswith(BESIDE_OTHER_JOB)
        out = tmp_path / "R.npz"
        args = [
            "analyze",
            *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset), "--out", str(out)),
            *("--classes", "CE-RP", "--window", "0:2", "--estimator", "euclidean"),
            *("--device", "cpu", "--workspace", str(workspace)),
        ]
        worker = threading.Thread(target=lambda: outcome.update(r=CliRunner().invoke(app, args)))
        worker.start()
        wait_for(lambda: slots.queue_position("estimate") == 1, "the estimate to queue")
    finally:
        os.close(fd)
    worker.join(180)
    run = outcome["r"]
    assert run.exit_code == 0, run.output
    said = " ".join(run.output.split())
    assert "queued, position 1" in said and "cost estimate: whole job" in said
    assert "over-estimate" not in said and out.exists()


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_off_a_terminal_a_wait_for_another_process_is_said(
    checkpoint, tiny_dataset, tmp_path, monkeypatch
):
    """Two identical analyses: in a log the second was silent while it waited, then printed
    the first one's time as if it had computed the result itself."""
    from coherence.analysis.request import AnalysisRequest

    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset)),
        *("--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", "0"),
        *("--estimator", "euclidean", "--device", "cpu", "--yes"),
    ]
    first = tmp_path / "first"
    done = CliRunner().invoke(
        app, [*args, "--workspace", str(first), "--out", str(tmp_path / "A.npz")]
    )
    assert done.exit_code == 0, done.output
    request = AnalysisRequest.from_dict(json.loads((tmp_path / "A.json").read_text())["request"])
    second = tmp_path / "second"
    monkeypatch.setenv(jobs.TEST_DELAY_ENV, "0.5")  # the worker's job takes seconds
    runner = jobs.JobRunner(second)
    key = runner.submit(request)  # another process computes it
    assert runner.status(key).state == "running"
    out = tmp_path / "B.npz"
    waited = CliRunner().invoke(
        app, [*args, "--workspace", str(second), "--out", str(out)], env={"COLUMNS": "300"}
    )
    said = " ".join(waited.output.split())
    assert waited.exit_code == 0, waited.output
    assert "another process is computing this selection: waiting for its result" in said
    assert "computed earlier in" in said and out.exists()
    assert runner.store.computations(key) == 1


def test_analyze_warns_about_data_the_surrogates_do_not_assume(checkpoint, tiny_dataset, tmp_path):
    """Training refuses wall boundaries (the surrogates pad periodically); an analysis of such
    files runs, and says once per problem what the models assumed instead."""
    import h5py

    walls = tmp_path / "walls"
    shutil.copytree(tiny_dataset, walls)
    for path in sorted((walls / "data").rglob("*.hdf5")):
        with h5py.File(path, "a") as f:
            for group in f["boundary_conditions"].values():
                group.attrs["bc_type"] = "WALL"
    said = analyze(checkpoint, walls, tmp_path / "ws", tmp_path / "R.npz", "0")
    assert said.count("boundaries wall; ") == 1 and f"6 files of {walls} (" in said
    assert "(`coherence train` refuses such data; its models learned them as periodic" in said
    plain = analyze(checkpoint, tiny_dataset, tmp_path / "ws", tmp_path / "P.npz", "0")
    assert "refuses such data" not in plain
