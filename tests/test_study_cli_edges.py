"""`coherence study` on the command line: what a mutation campaign over ``coherence.cli_study``
found no test to check (a bad --seeds, and the closing lines a finished study prints on stdout)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from coherence.cli import app
from coherence.study import plan_study, run_study
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.test_study import make_dataset, spec

ARGS = ["--archs", "vit", "--seeds", "7", "--batches", "1", "--epochs", "1", "--batch-size", "8"]


def test_study_refuses_seeds_that_are_not_integers(tmp_path):
    """'7,x' was read as no seed at all by a mutant: the command names the option."""
    base = ["study", "--data", "ce_small", "--workspace", str(tmp_path / "ws")]
    said = CliRunner().invoke(app, [*base, "--archs", "vit", "--seeds", "7,x", "--plan"])
    assert said.exit_code == 2, said.output
    assert "--seeds '7,x': expected comma-separated integers" in " ".join(said.output.split())


@pytest.mark.slow
def test_a_finished_study_prints_its_links_and_panels_on_stdout(tmp_path):
    """What the study leaves the user (`> links.txt`): where its files are, each analysis's
    dashboard link (the link ``run_study`` returns, on the dashboard's port) and the tab that
    shows each sweep, on stdout; the progress and log on stderr."""
    root = tmp_path / "ws"
    make_dataset(root)
    chosen = spec(sweep_archs=("vit",), sweep_dampings=(1e-4,))
    (link,) = run_study(plan_study(chosen, root), log=lambda _: None)
    command = ["study", "--data", "ce_small", "--workspace", str(root), *ARGS]
    command += ["--sweep", "vit", "--sweep-dampings", "1e-4"]
    rerun = CliRunner().invoke(app, command, env={"COLUMNS": "200"})  # all cached: no work
    assert rerun.exit_code == 0, rerun.output
    out = rerun.stdout
    data, checkpoints = datasets_dir(root) / "ce_small", checkpoints_dir(root)
    assert f"study done: dataset {data}, checkpoints in {checkpoints}, results in " in out
    assert f"Show it with:  coherence serve --workspace {root}" in out
    assert f"  vit: http://127.0.0.1:8501/?{link}\n" in out
    assert "  sensitivity (vit): the Sensitivity tab of the view above" in out
    assert "study done" not in rerun.stderr
