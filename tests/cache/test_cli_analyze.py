"""`coherence analyze` prepares its request once (dataset opened, batches assembled) and that
preparation serves the cost estimate and the run: a computation, a result assembled from
cached units, or one served whole, does not assemble the batches again."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coherence.analysis import pipeline
from coherence.cache import jobs
from coherence.cli import app


@pytest.fixture
def prepares(monkeypatch):
    """Every ``pipeline.prepare`` call, wherever it was imported."""
    calls = []

    def counting(request):
        calls.append(request.trajectories)
        return real(request)

    real = pipeline.prepare
    monkeypatch.setattr(pipeline, "prepare", counting)
    monkeypatch.setattr(jobs, "prepare", counting)
    return calls


def analyze(checkpoint, data, workspace, out, trajectories: str) -> None:
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)),
        *("--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", trajectories),
        *("--estimator", "euclidean", "--device", "cpu", "--workspace", str(workspace), "--yes"),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert out.exists()


def test_analyze_prepares_once_when_served_from_cached_units(
    checkpoint, tiny_dataset, workspace, tmp_path, prepares
):
    analyze(checkpoint, tiny_dataset, workspace, tmp_path / "both.npz", "0,1")  # computes
    assert prepares == [(0, 1)]  # the estimate's preparation serves the computation too
    prepares.clear()
    analyze(checkpoint, tiny_dataset, workspace, tmp_path / "one.npz", "1")  # units cached
    assert prepares == [(1,)]
    prepares.clear()
    analyze(checkpoint, tiny_dataset, workspace, tmp_path / "again.npz", "1")  # result cached
    assert prepares == [(1,)]


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
    assert "(1 checkpoint × 1 batch, N = 4" in " ".join(run.output.split())  # singular nouns
    assert json.loads(out.with_suffix(".json").read_text())["request"]["estimator"] == estimator


@pytest.mark.parametrize("out", ["R.txt", "folder.npz"])
def test_a_result_path_that_cannot_be_written_is_refused_before_computing(
    checkpoint, tiny_dataset, workspace, tmp_path, prepares, out
):
    """`--out R.txt` was refused only after the analysis had run (and been cached)."""
    (tmp_path / "folder.npz").mkdir()
    args = [
        "analyze",
        *("--checkpoint", str(checkpoint), "--data", str(tiny_dataset)),
        *("--out", str(tmp_path / out), "--classes", "CE-RP", "--window", "0:2"),
        *("--estimator", "euclidean", "--workspace", str(workspace), "--yes"),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert f"--out {tmp_path / out}:" in " ".join(run.output.split())
    assert prepares == []  # refused before the data were even read
