"""`coherence study`: plan, train, analyse into the cache, resume after a kill, refuse bad input.

Real parts throughout: a dataset from the real Euler solver, demo-preset models trained for one
epoch, real analyses; the dashboard's own URL decoding finds the study's results in the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest

from coherence.cache.jobs import JobRunner
from coherence.cli_common import product
from coherence.cli_study import _print_panels
from coherence.dashboard.selection import decode_query
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.errors import CoherenceError, RequestError
from coherence.study import StudySpec, SweepStep, plan_study, run_study
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.fileset import digest
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.fixtures import CE_CLASSES, REPO, busy_core, free_port, simulate

# spec()'s study on the command line
STUDY_ARGS = ["study", "--data", "ce_small", "--archs", "vit", "--seeds", "7", "--batches", "1"]
STUDY_ARGS += ["--epochs", "1", "--batch-size", "8"]


def make_dataset(root: Path, name: str = "ce_small", **changes) -> Path:
    """3 CE classes × 5 trajectories (3 train, 1 valid, 1 test) × 5 snapshots at 16²."""
    directory = datasets_dir(root)
    return simulate(directory, name, "euler", CE_CLASSES, snapshots=5, t_end=0.2, **changes)


def spec(**changes) -> StudySpec:
    base = dict(dataset="ce_small", archs=("vit",), seeds=(7,), batches=1, epochs=1, batch_size=8)
    return StudySpec(**{**base, **changes})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "ws"
    make_dataset(root)
    return root


@pytest.mark.slow
def test_study_plans_runs_and_then_has_nothing_left_to_do(workspace):
    plan = plan_study(spec(), workspace)
    assert [s.state for s in plan.train] == ["new"]
    assert [a.state for a in plan.analyses] == ["pending"]
    assert plan.train[0].args.transitions == 4  # 5 snapshots: every transition, not 16
    assert all(s.seconds > 0 and s.peak_bytes > 0 for s in plan.train)
    assert all(a.seconds > 0 and a.peak_bytes > 0 for a in plan.analyses)
    text = "\n".join(plan.describe())
    assert "train ce_small_vit_demo_s7: 1 epoch —" in text and "total to run" in text
    assert "roll out each analysed model group over its test trajectories" in text
    assert "timed while another job computes" not in text

    links = run_study(plan, log=lambda _: None)
    history = ckpt.read_history(checkpoints_dir(workspace) / "ce_small_vit_demo_s7")

    again = plan_study(spec(), workspace)
    assert [s.state for s in again.train] == ["done"]
    assert [a.state for a in again.analyses] == ["cached"]
    assert again.seconds == 0 and plan.has_work and not again.has_work
    run_study(again, log=lambda _: None)
    # all cached: a cluster that cannot be reached is not needed (it was refused). In a
    # process of its own: this one may be connected to the Ray tests' cluster already
    port = free_port()
    command = [sys.executable, "-m", "coherence.cli", *STUDY_ARGS, "--workspace", str(workspace)]
    rerun = subprocess.run(
        [*command, "--ray-address", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "COHERENCE_RAY_TIMEOUT": "5"},
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    said = " ".join((rerun.stdout + rerun.stderr).split())
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in said
    assert "not needed: every training and analysis is cached" in said and "study done" in said
    assert ckpt.read_history(checkpoints_dir(workspace) / "ce_small_vit_demo_s7") == history

    # The printed link is what the dashboard decodes: same request, served from the cache.
    params = {k: v[-1] for k, v in parse_qs(links[0]).items()}
    selection, warnings = decode_query(params, scan_workspace(workspace))
    assert warnings == []
    runner = JobRunner(workspace)
    assert runner.status(runner.key(selection.to_request(workspace))).state == "done"
    # and its rollouts, which the Rollout panel draws at once, computed once (not again
    # by the second run)
    rollout = runner.task_key("rollout", selection.rollout_spec(workspace))
    assert runner.artifact(rollout) is not None and runner.store.computations(rollout) == 1


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_a_killed_study_resumes_without_redoing_finished_steps(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    make_dataset(root)
    command = [
        sys.executable,
        "-m",
        "coherence.cli",
        "study",
        "--data",
        "ce_small",
        "--workspace",
        str(root),
        "--archs",
        "vit",
        "--seeds",
        "1,2",
        "--batches",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--yes",  # a study over the confirmation limit starts without asking
    ]
    env = {**os.environ, "COHERENCE_TORCH_THREADS": "1", "COHERENCE_CONFIRM_MINUTES": "0"}
    first = checkpoints_dir(root) / "ce_small_vit_demo_s1"
    second = checkpoints_dir(root) / "ce_small_vit_demo_s2"
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (second / ckpt.CONFIG_FILE).exists():  # seed 1 done, seed 2 under way
            assert process.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    finished = ckpt.read_history(first)
    assert len(finished) == 2

    plan = plan_study(spec(archs=("vit",), seeds=(1, 2), epochs=2), root)
    assert plan.train[0].state == "done"
    assert plan.train[1].state in ("resume", "done")
    run_study(plan, log=lambda _: None)
    assert ckpt.read_history(first) == finished  # not retrained
    assert len(ckpt.read_history(second)) == 2
    states = [a.state for a in plan_study(spec(seeds=(1, 2), epochs=2), root).analyses]
    assert states == ["cached"]

    # killed between its two units: the plan quoted both; the rerun resumes from the first
    from coherence.cache.keys import unit_keys
    from coherence.simulation.dataset import open_dataset
    from coherence.study_plan import selection_for

    (step,) = plan_study(spec(seeds=(1, 2), epochs=2), root).analyses
    classes = tuple(step.query["classes"].split(","))
    info = open_dataset(datasets_dir(root) / "ce_small")
    selection = selection_for(spec(seeds=(1, 2), epochs=2), root, info, "vit", classes)
    request = selection.to_request(root)
    runner = JobRunner(root)
    (seed_1,), (seed_2,) = unit_keys(request)
    runner.store.delete(runner.key(request))
    runner.store.delete_unit(seed_2)
    from coherence import study_plan

    monkeypatch.setattr(study_plan, "_analysis_cost", lambda *args: (60.0, 1))  # not a probe
    (half,) = plan_study(spec(seeds=(1, 2), epochs=2), root).analyses
    assert (half.state, half.cached_units) == ("pending", 1)
    runner.store.delete_unit(seed_1)
    (whole,) = plan_study(spec(seeds=(1, 2), epochs=2), root).analyses
    assert whole.cached_units == 0 and (half.seconds, whole.seconds) == (30.0, 60.0)


def test_a_nan_in_the_test_split_is_refused_by_the_plan_before_any_training(tmp_path):
    """NaN in a test trajectory was found only by the analysis, after training; the plan
    reads the test states the analyses use and names the file and trajectory."""
    import h5py

    root = tmp_path / "ws"
    make_dataset(root)
    test_file = datasets_dir(root) / "ce_small" / "data" / "test" / "CE-RP.hdf5"
    with h5py.File(test_file, "r+") as f:
        f["t0_fields/density"][0, 1, 0, 0] = np.nan
    with pytest.raises(CoherenceError, match=r"CE-RP\.hdf5: trajectory 0 contains NaN"):
        plan_study(spec(), root)
    assert not checkpoints_dir(root).exists() or not any(checkpoints_dir(root).iterdir())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_plan_beside_another_program_times_on_the_cores_left(workspace, monkeypatch):
    """Beside other work, 2-thread cost probes quoted a demo of minutes at 7.5 h: the probe
    now runs on the threads a job would get (the cores left), and the plan says so; a thread
    count the user set is used as it is, without a word."""
    from coherence.cache import slots

    monkeypatch.delenv(slots.THREADS_ENV, raising=False)
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    monkeypatch.setattr(slots, "_load_reading", [])
    with busy_core():  # on the CPU: a GPU plan's probes do not run on these threads
        said = " ".join(plan_study(spec(device="cpu"), workspace).describe())
        # 2 of 2 if yet another process ran on them meanwhile
        assert re.search(
            r"other processes keep [12] of 2 cores busy: the models were timed on 1 ", said
        )
        monkeypatch.setattr(slots, "_load_reading", [])
        monkeypatch.setenv(slots.THREADS_ENV, "1")
        said = " ".join(plan_study(spec(device="cpu"), workspace).describe())
        assert "other processes keep" not in said


def test_a_study_over_the_confirmation_limit_asks_before_training(workspace, monkeypatch):
    """`coherence analyze` asked before a job over COHERENCE_CONFIRM_MINUTES, while a study of
    hours started training at once: it asks too (here without a terminal: refused, naming
    --yes), before anything is trained; its plan alone asks nothing."""
    from typer.testing import CliRunner

    from coherence.cli import app

    monkeypatch.setenv("COHERENCE_CONFIRM_MINUTES", "0")
    args = [*STUDY_ARGS, "--seeds", "99", "--workspace", str(workspace)]  # a seed not trained
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2, said
    assert re.search(r"this study is estimated at .*, over the 0 s that needs a confirmation", said)
    assert "pass --yes to start it" in said and "fewer --seeds" in said
    assert not (checkpoints_dir(workspace) / "ce_small_vit_demo_s99").exists()
    planned = CliRunner().invoke(app, [*args, "--plan"], env={"COLUMNS": "200"})
    assert planned.exit_code == 0 and "total to run" in planned.output


@pytest.mark.slow
def test_study_refuses_missing_data_unknown_classes_and_foreign_checkpoints(
    workspace, tmp_path, monkeypatch
):
    with pytest.raises(RequestError, match=r"no dataset .*nothing_here.*import or simulate"):
        plan_study(spec(dataset="nothing_here"), workspace)
    with pytest.raises(RequestError, match=r"--data ce_smal: .*did you mean ce_small\?"):
        plan_study(spec(dataset="ce_smal"), workspace)
    for outside in ("/etc", "ce_small/data", "."):  # not a folder directly in datasets/
        with pytest.raises(RequestError, match=rf"--data {outside}: a study's dataset is a "):
            plan_study(spec(dataset=outside), workspace)
    with pytest.raises(RequestError, match="NS-Sines: not in the test split"):
        plan_study(spec(classes=("NS-Sines",)), workspace)
    linked = datasets_dir(workspace) / "linked"  # files that live outside the workspace
    outside_copy = tmp_path / "outside_ds"
    shutil.copytree(datasets_dir(workspace) / "ce_small", outside_copy)
    linked.mkdir()
    (linked / "data").symlink_to(outside_copy / "data")
    try:
        with pytest.raises(RequestError, match=r"--data linked: datasets/linked/data points "):
            plan_study(spec(dataset="linked"), workspace)  # was: no reason, after reading
    finally:
        shutil.rmtree(linked)
    with pytest.raises(RequestError, match="--seeds"):
        spec(seeds=(1, 1))
    with pytest.raises(RequestError, match="--preset 'huge'"):
        spec(preset="huge")
    with pytest.raises(RequestError, match="--archs unet,unet: name each architecture once"):
        spec(archs=("unet", "unet"))  # was planned and trained twice, into one checkpoint
    with pytest.raises(RequestError, match=r"--batch-size 0: give at least 1"):
        spec(batch_size=0)  # was 'batch_size=0', after opening the dataset

    other = tmp_path / "other"
    make_dataset(other)
    foreign = checkpoints_dir(other) / "ce_small_vit_demo_s7"
    plan = plan_study(spec(), workspace)
    run_study(plan, log=lambda _: None)
    # the dataset by its path: the same study (it trained into datasets/ and then failed)
    by_path = plan_study(spec(dataset=str(datasets_dir(workspace) / "ce_small")), workspace)
    assert by_path.spec.dataset == "ce_small"
    assert [(t.out, t.state) for t in by_path.train] == [(t.out, "done") for t in plan.train]
    monkeypatch.chdir(workspace)  # and by a path from the current directory
    assert plan_study(spec(dataset="datasets/ce_small"), workspace).spec.dataset == "ce_small"
    foreign.parent.mkdir(parents=True)
    source = checkpoints_dir(workspace) / "ce_small_vit_demo_s7"
    shutil.copytree(source, foreign)
    # Same name, other data (another simulation seed gives other files): refused by name.
    make_dataset(other, seed=99, overwrite=True)
    with pytest.raises(RequestError, match=r"trained otherwise \(other training data or classes"):
        plan_study(spec(), other)
    # Same name and data, trained on 2 of the 4 transitions a trajectory: not the study's model (the
    # plan called it done and would have analysed it as the study's)
    third = tmp_path / "third"
    shutil.copytree(workspace, third)
    config_path = checkpoints_dir(third) / "ce_small_vit_demo_s7" / ckpt.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["training"]["args"]["transitions"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(RequestError, match=r"trained otherwise \(transitions 2, not 4\)"):
        plan_study(spec(), third)
    # Trained past the study's epochs: not its model either (it was 'done', and its seeds of
    # the study's length were then refused as seeds of one model, after their training)
    fourth = tmp_path / "fourth"
    shutil.copytree(workspace, fourth)
    history_path = checkpoints_dir(fourth) / "ce_small_vit_demo_s7" / ckpt.HISTORY_FILE
    history = json.loads(history_path.read_text())
    history_path.write_text(json.dumps([*history, {**history[-1], "epoch": 2}]))
    with pytest.raises(RequestError, match=r"trained otherwise \(2 epochs, not 1\)"):
        plan_study(spec(), fourth)


@pytest.mark.slow
def test_study_precomputes_the_dynamics_and_sensitivity_sweeps(tmp_path):
    from coherence.dashboard import sweeps
    from coherence.dashboard.selection import default_selection

    root = tmp_path / "ws"
    make_dataset(root)
    chosen = spec(
        epochs=2, dynamics_archs=("vit",), sweep_archs=("vit",), sweep_dampings=(1e-4, 1e-2)
    )
    plan = plan_study(chosen, root)
    assert not (root / "cache").exists()  # planning reads the cache, never creates it
    # epoch 1 besides the last; ekfac-krylov at 1e-2 and euclidean besides the main analysis
    assert [(s.kind, s.requests) for s in plan.sweeps] == [("dynamics", 1), ("sensitivity", 2)]
    assert "dynamics vit: up to 1 analysis of snapshot epochs (1)" in "\n".join(plan.describe())
    # a snapshot costs the main analysis; euclidean (no solve, no η) far less than a second one
    main = plan.analyses[0].seconds
    assert plan.sweeps[0].seconds == main
    assert main < plan.sweeps[1].seconds < 1.5 * main
    run_study(plan, log=lambda _: None)
    with product.capture() as captured:
        _print_panels(plan)
    assert "dynamics (vit): the Training dynamics tab" in captured.get()
    assert "sensitivity (vit): the Sensitivity tab" in captured.get()
    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    runner = JobRunner(root)
    dynamics, _ = sweeps.dynamics_points(root, selection, runner)
    assert [p.x for p in dynamics] == [1.0, 2.0]
    sensitivity, _ = sweeps.sensitivity_points(root, selection, runner, dampings=(1e-4, 1e-2))
    assert len(sensitivity) == 3
    for point in dynamics + sensitivity:  # the panels' own keys find every point cached
        assert runner.status(point.key).state == "done", (point.series, point.x)
    again = plan_study(chosen, root)
    assert [s.requests for s in again.sweeps] == [0, 0] and again.seconds == 0
    assert "  dynamics vit: nothing to compute (cached)" in again.describe()
    # a snapshot still to analyse beside a cached main analysis cost "≈ 0 s" (a walk-through)
    runner.store.delete(dynamics[0].key)
    third = plan_study(chosen, root)
    assert third.analyses[0].state == "cached"
    (snapshot,) = [s for s in third.sweeps if s.kind == "dynamics"]
    assert snapshot.requests == 1 and snapshot.seconds > 0
    many = replace(
        again, sweeps=(SweepStep("dynamics", "vit", 20, 1.0, tuple(map(str, range(20)))),)
    )
    assert "snapshot epochs (0, 1, 2, 3, 4, 5, …, 19)" in "\n".join(many.describe())


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_study_command_plans_the_sweeps_it_is_asked_for(tmp_path):
    """`coherence study --dynamics/--sweep`: the CLI's way to the two sweep panels, planned
    with their counts (epoch 1 besides the last; ekfac-krylov at 1e-2 and euclidean besides the
    main analysis); a grid given as text reaches the spec as the panel's own λ values."""
    from typer.testing import CliRunner

    from coherence.cli import app
    from coherence.cli_study import DAMPING_GRID_TEXT
    from coherence.dashboard.sweeps import DAMPING_GRID

    assert tuple(float(d) for d in DAMPING_GRID_TEXT.split(",")) == DAMPING_GRID
    root = tmp_path / "ws"
    make_dataset(root)
    base = ["study", "--data", "ce_small", "--workspace", str(root), "--archs", "vit"]
    base += ["--seeds", "7", "--batches", "1", "--epochs", "2", "--plan"]
    sweeps = ["--dynamics", "vit", "--sweep", "vit", "--sweep-dampings", "1e-4,1e-2"]
    run = CliRunner().invoke(app, [*base, *sweeps], env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    assert "dynamics vit: up to 1 analysis of snapshot epochs" in run.output
    assert "sensitivity vit: up to 2 analyses of λ / estimator settings" in run.output
    # which ones: epoch 1; the default estimator at the other λ, euclidean once (no λ)
    assert "snapshot epochs (1) (cached" in run.output
    assert "settings (ekfac-krylov λ=0.01, euclidean) (cached" in run.output
    # the plan is --plan's product: on stdout (`> plan.txt`), the rest on stderr
    assert "sensitivity vit: up to 2 analyses" in run.stdout
    assert "planning (probing" not in run.stdout
    more = [*base[: base.index("--batches")], "--batches", "99", *base[base.index("--epochs") :]]
    cut = CliRunner().invoke(app, more, env={"COLUMNS": "200"})
    assert cut.exit_code == 0 and "--batches 99: the test split has " in cut.stdout, cut.output
    assert "(1 seed)" in cut.stdout  # not '(1 seeds)'
    quiet = CliRunner().invoke(app, base, env={"COLUMNS": "200"})
    assert quiet.exit_code == 0 and "dynamics" not in quiet.output  # none unless asked
    bad = CliRunner().invoke(app, [*base, "--sweep", "vit", "--sweep-dampings", "1e-4,small"])
    assert bad.exit_code != 0 and "--sweep-dampings '1e-4,small'" in bad.output
    alone = CliRunner().invoke(app, [*base, "--sweep-dampings", "1e-3"], env={"COLUMNS": "200"})
    assert alone.exit_code != 0 and "add --sweep ARCHS" in alone.output
    empty = CliRunner().invoke(app, [*base, "--sweep", "vit", "--sweep-dampings", ""])
    assert empty.exit_code != 0 and "--sweep-dampings ''" in empty.output  # not the default
    gap = CliRunner().invoke(app, [*base, "--sweep", "vit", "--sweep-dampings", "1e-3,,1e-2"])
    assert gap.exit_code != 0 and "an empty item between two commas" in gap.output
    past = ["--dynamics", "vit", "--keep-epochs", "9"]  # past --epochs 2: names what was asked
    late = CliRunner().invoke(app, [*base, *past], env={"COLUMNS": "200"})
    assert late.exit_code != 0 and "--keep-epochs 9 keeps no epoch before the last" in late.output
    beyond = CliRunner().invoke(app, [*base, "--keep-epochs", "1,5"], env={"COLUMNS": "200"})
    assert beyond.exit_code == 0, beyond.output  # planned, and said (it was accepted silently)
    assert "--keep-epochs 5: beyond the 2 epochs trained, so no snapshot of it" in beyond.stdout
    grid = CliRunner().invoke(app, [*base, "--sweep", "vit"], env={"COLUMNS": "200"})
    # the panel's grid: ekfac-krylov at 6 λ less the main analysis's, and euclidean once
    assert "sensitivity vit: up to 6 analyses" in grid.output
    twice = ["--sweep", "vit,vit", "--sweep-dampings", "1e-2,1e-2"]
    once = CliRunner().invoke(app, [*base, *twice], env={"COLUMNS": "200"})
    assert once.output.count("sensitivity vit: up to 2 analyses") == 1, once.output
    # refused before any training, without --plan: nothing trained, nothing cached
    for wrong in (["--dynamics", "unet"], ["--dynamics", "vit", "--keep-epochs", "2"]):
        refused = CliRunner().invoke(app, [*base[:-1], *wrong], env={"COLUMNS": "200"})
        assert refused.exit_code != 0 and "--dynamics" in refused.output, refused.output
    assert not checkpoints_dir(root).exists() or not any(checkpoints_dir(root).iterdir())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dynamics_archs": ("unet",)}, r"--dynamics unet: not among the study's --archs vit"),
        ({"archs": ("vit", "foo")}, r"--archs foo: unknown architecture; choose among unet, vit"),
        ({"sweep_archs": ("vitt",), "sweep_dampings": (1e-4,)}, r"--sweep vitt: not among"),
        ({"dynamics_archs": ("vit",), "keep_epochs": ()}, r"--keep-epochs none"),
        ({"sweep_archs": ("vit",), "sweep_dampings": (1e-4, -1.0)}, r"--sweep-dampings -1"),
        ({"sweep_archs": ("vit",), "sweep_dampings": (float("nan"),)}, r"--sweep-dampings nan"),
        ({"sweep_archs": ("vit",)}, r"--sweep vit with no --sweep-dampings"),
    ],
)
def test_study_refuses_sweeps_it_could_not_run(changes, message):
    """Before any training: a typo in a sweep's architecture would otherwise skip it
    silently hours later."""
    with pytest.raises(RequestError, match=message):
        spec(**changes)


@pytest.mark.slow
def test_dynamics_of_checkpoints_without_snapshots_is_noted_not_silent(tmp_path):
    root = tmp_path / "ws"
    make_dataset(root)
    run_study(plan_study(spec(epochs=2, keep_epochs=()), root), log=lambda _: None)
    plan = plan_study(spec(epochs=2, dynamics_archs=("vit",)), root)
    assert [(s.kind, s.requests) for s in plan.sweeps] == [("dynamics", 0)]
    assert any("kept no snapshot before their last epoch" in n for n in plan.notes), plan.notes
    with product.capture() as captured:  # the study's last lines: no tab to open for it
        _print_panels(plan)
    assert "dynamics (vit): nothing to show" in captured.get()
    assert "Training dynamics tab" not in captured.get()


@pytest.mark.slow
def test_dynamics_over_snapshots_other_than_asked_says_which_it_traces(tmp_path):
    """--keep-epochs applies to training: on trained checkpoints another list would
    otherwise look as if it had been traced."""
    root = tmp_path / "ws"
    make_dataset(root)
    run_study(plan_study(spec(epochs=3, keep_epochs=(1,)), root), log=lambda _: None)
    other = plan_study(spec(epochs=3, keep_epochs=(2,), dynamics_archs=("vit",)), root)
    (note,) = [n for n in other.notes if n.startswith("dynamics vit")]
    assert "kept epochs 1 before their last (all seeds); --keep-epochs 2 keeps epochs 2" in note
    assert note.endswith("applies to training still to run: the dynamics trace the kept ones")
    last = plan_study(spec(epochs=3, keep_epochs=(3,), dynamics_archs=("vit",)), root)
    (note,) = [n for n in last.notes if n.startswith("dynamics vit")]
    assert "--keep-epochs 3 keeps none there" in note  # was 'not the none of
    assert [s.requests for s in other.sweeps] == [1]  # epoch 1, the one kept
    same = plan_study(spec(epochs=3, keep_epochs=(1,), dynamics_archs=("vit",)), root)
    assert not [n for n in same.notes if n.startswith("dynamics")], same.notes


@pytest.mark.slow
def test_a_study_uses_finished_checkpoints_of_the_same_training_under_other_names(tmp_path):
    """The demo's vit_demo_s10 is a study of ce_demo's own checkpoint: the study uses it
    instead of training a duplicate, and says so; one trained otherwise (other epochs) is
    not adopted, nor by a spec that keeps its own names (the demo's)."""
    root = tmp_path / "ws"
    make_dataset(root)
    demo_named = spec(naming="{arch}_demo_s{seed}", adopt=False)
    run_study(plan_study(demo_named, root), log=lambda _: None)
    trained = checkpoints_dir(root) / "vit_demo_s7"
    history = ckpt.read_history(trained)
    # broken copies that sort first are not adopted: changed weights (the manifest says
    # so), and an edited config without a manifest (the weights do not fit it)
    flipped, edited = checkpoints_dir(root) / "aaa_flipped", checkpoints_dir(root) / "aab_edited"
    for copy in (flipped, edited):
        shutil.copytree(trained, copy)
    weights = bytearray((flipped / ckpt.WEIGHTS_FILE).read_bytes())
    weights[-8:] = bytes(8)
    (flipped / ckpt.WEIGHTS_FILE).write_bytes(bytes(weights))
    (edited / ckpt.MANIFEST_FILE).unlink()
    config = json.loads((edited / ckpt.CONFIG_FILE).read_text())
    config["model"]["config"]["width"] = 2 * config["model"]["config"]["width"]
    (edited / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    plan = plan_study(spec(), root)
    shutil.rmtree(flipped)
    shutil.rmtree(edited)
    assert plan.spec.checkpoint_name("vit", 7) == "vit_demo_s7"
    assert [(t.out, t.state) for t in plan.train] == [(trained, "done")]
    assert "vit: uses the trained vit_demo_s7 (this data, the same settings, 1 epoch)" in (
        "\n".join(plan.notes)
    )
    run_study(plan, log=lambda _: None)
    assert [p.name for p in checkpoints_dir(root).glob("[!.]*")] == ["vit_demo_s7"]
    assert ckpt.read_history(trained) == history  # untouched
    longer = plan_study(spec(epochs=2), root)  # trained for 1 epoch: not this study's
    assert [(t.out.name, t.state) for t in longer.train] == [("ce_small_vit_demo_s7", "new")]
    assert not longer.spec.adopted
    assert not plan_study(demo_named, root).spec.adopted


def test_a_plan_timed_beside_another_job_says_its_times_are_high(workspace, tmp_path, monkeypatch):
    """The plan's probes ran oversubscribed beside a running job (a 25 s analysis was quoted
    at 26 min); they never wait for a slot, so the plan says so instead."""
    import os

    from coherence.cache import slots

    monkeypatch.setenv(slots.DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    _, fd = slots.acquire("another job")
    try:
        text = "\n".join(plan_study(spec(), workspace).describe())
    finally:
        os.close(fd)
    assert "timed while another job computes on this machine" in text


def test_a_study_trains_in_a_compute_slot(tmp_path, monkeypatch):
    """A study's training held no compute slot: beside a dashboard job (or another study)
    both ran on every core, several times slower than one after the other."""
    import os
    import threading

    from coherence.cache import slots
    from tests.fixtures import wait_for

    monkeypatch.setenv(slots.DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    root = tmp_path / "ws"
    make_dataset(root)
    plan = plan_study(spec(seeds=(5,)), root)
    lines: list[str] = []
    _, fd = slots.acquire("another job")
    try:
        worker = threading.Thread(target=lambda: run_study(plan, log=lines.append))
        worker.start()
        wait_for(lambda: slots.queue_position("train-ce_small_vit_demo_s5") == 1, "to queue")
        # and until it has said so: its ticket is in the queue a poll before it first
        # reports, and a slot freed in between was taken without a word (a flaky failure)
        wait_for(
            lambda: "  queued, position 1: waiting for a free compute slot" in lines, "its line"
        )
        assert not (checkpoints_dir(root) / "ce_small_vit_demo_s5" / ckpt.CONFIG_FILE).exists()
    finally:
        os.close(fd)
    worker.join(300)
    assert "  queued, position 1: waiting for a free compute slot" in lines
    assert len(ckpt.read_history(checkpoints_dir(root) / "ce_small_vit_demo_s5")) == 1


def test_memory_notes_give_the_fix_that_makes_the_step_fit(tmp_path):
    """A paper ViT at --batch-size 32 needed 22.6 GiB of 19.5: the plan said 'import fewer
    trajectories (--limit)', which does not shrink a batch's activations; analyses over
    memory, which analyze refuses mid-study, were listed without a word."""
    from coherence.study_plan import GIB, _memory_notes
    from coherence.study_spec import AnalysisStep, TrainStep
    from coherence.surrogates.training import TrainingArgs

    def train(peak_gib: float, per_example_gib: float, state: str = "new") -> TrainStep:
        args = TrainingArgs(arch="vit", batch_size=32)
        out = tmp_path / f"vit_{peak_gib}"
        return TrainStep(
            "vit", 10, out, args, 0, state, 60.0, int(peak_gib * GIB), int(per_example_gib * GIB)
        )

    def analysis(peak_gib: float, state: str = "pending") -> AnalysisStep:
        return AnalysisStep("vit", ("c",), {}, 6, 48, state, 60.0, int(peak_gib * GIB))

    available = int(19.5 * GIB)
    (batch,) = _memory_notes([train(22.6, 0.6)], [], available)  # 3.4 GiB fixed + 32 × 0.6
    assert "needs ≈ 22.6 GiB of 19.5 GiB: use --batch-size 20 (≈ 15.4 GiB)" in batch
    (pairs,) = _memory_notes([train(22.6, 0.01)], [], available)  # the pairs are the excess
    assert "--limit" in pairs and "--batch-size" not in pairs
    assert _memory_notes([train(22.6, 0.6, state="done"), train(10.0, 0.2)], [], available) == []
    (over,) = _memory_notes(
        [], [analysis(43.1), analysis(43.1, "cached"), analysis(5.0)], available
    )
    assert over.startswith("analysing vit needs ≈ 43.1 GiB of 19.5 GiB: analyze would refuse")
    assert "--classes" in over


@pytest.mark.slow
def test_a_checkpoint_saved_by_an_older_version_resumes_as_planned(workspace, tmp_path):
    """Its config lacks lr and has transitions None (saved before either was resolved): the
    plan said resume and the trainer then refused it, '(transitions: None → 4)'."""
    older = tmp_path / "older"
    shutil.copytree(workspace, older)
    run_study(plan_study(spec(), older), log=lambda _: None)  # 1 epoch (done if it was)
    config_path = checkpoints_dir(older) / "ce_small_vit_demo_s7" / ckpt.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["training"]["args"]["transitions"] = None
    del config["training"]["args"]["lr"]
    data = json.dumps(config).encode()
    config_path.write_bytes(data)
    manifest_path = config_path.parent / "manifest.json"  # as that version saved the set
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][ckpt.CONFIG_FILE] = {"bytes": len(data), "sha256": digest(data)}
    manifest_path.write_text(json.dumps(manifest))
    plan = plan_study(spec(epochs=2, batches=1), older)
    assert [t.state for t in plan.train] == ["resume"]
    run_study(plan, log=lambda _: None)
    assert len(ckpt.read_history(checkpoints_dir(older) / "ce_small_vit_demo_s7")) == 2


def test_a_sweep_settings_seconds_are_the_full_estimates_seconds():
    """The plan times each sensitivity setting from its pass count alone (no memory count):
    the same seconds ``estimate_cost`` gives that setting, for every setting of the sweep."""
    from types import SimpleNamespace

    import torch

    from coherence.analysis.request import AnalysisRequest
    from coherence.dashboard import sweeps
    from coherence.study_plan import _analysis_cost, _analysis_seconds, _setting_request
    from coherence.surrogates.registry import build_model

    model = build_model("vit", "demo", channels=4, resolution=16)
    example = torch.zeros(1, 4, 16, 16)
    probe = SimpleNamespace(forward_seconds=0.013)
    base = AnalysisRequest(
        checkpoints=("a", "b"), data="d", classes=("x", "y"), t_start=0, n_steps=3,
        trajectories=(0, 1), responses=("smse",),
    )  # fmt: skip
    settings = [s for s in sweeps.SWEEP_ESTIMATORS if not s.on_demand]
    assert len({s.estimator for s in settings}) > 1  # the sweep's estimators differ in cost
    for setting in settings:
        request = _setting_request(base, setting)
        full = _analysis_cost(probe, request, model, example)[0]
        assert _analysis_seconds(probe, request) == pytest.approx(full, rel=1e-12), setting


def test_a_study_whose_analysis_will_not_fit_is_refused_before_training(tmp_path, monkeypatch):
    """The plan noted that the analysis would not fit ('analyze would refuse it … and the
    study stop there'), and the run then trained for half an hour before stopping there."""
    from typer.testing import CliRunner

    from coherence import study_plan
    from coherence.cli import app

    root = tmp_path / "ws"
    make_dataset(root)
    plan = plan_study(spec(), root)  # this machine's memory: everything fits
    assert not plan.analyses_over_memory
    need = plan.analyses[0].peak_bytes
    monkeypatch.setattr(study_plan, "available_bytes", lambda device: int(need))  # 4/5 < need
    base = ["study", "--data", "ce_small", "--workspace", str(root), "--archs", "vit"]
    base += ["--seeds", "7", "--batches", "1", "--epochs", "1", "--batch-size", "8"]
    said = CliRunner().invoke(app, base, env={"COLUMNS": "200"})
    assert said.exit_code == 2, said.output
    assert "would not fit in memory here" in said.output and "nothing was started" in said.output
    assert not (checkpoints_dir(root) / "ce_small_vit_demo_s7").exists()


# ------------------------------------------ a mutation campaign's survivors (study*.py) -----

FOUR_CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI", "CE-KH")


def test_a_plan_takes_the_batches_asked_the_first_three_classes_and_seeds_in_order(tmp_path):
    """Every earlier dataset had one test trajectory, so `--batches` ignored (every test
    trajectory analysed: hours at paper size), all classes instead of the paper's three, and
    seeds in the order given (not the dashboard's, whose cache key it looks up) all passed."""
    from coherence.simulation.dataset import SimulationRequest, generate_dataset

    request = SimulationRequest(
        family="euler",
        classes=FOUR_CLASSES,
        trajectories=5,
        resolution=16,
        snapshots=5,
        t_end=0.2,
        split=(0.4, 0.2, 0.4),  # two test trajectories per class
        dataset_name="ce_small",
    )
    generate_dataset(request, datasets_dir(tmp_path) / "ce_small")
    plan = plan_study(spec(batches=1, seeds=(2, 1)), tmp_path)
    (step,) = plan.analyses
    assert step.units == 2  # 2 seeds × the 1 batch asked for
    assert step.query["classes"].split(",") == list(FOUR_CLASSES[:3])
    assert step.checkpoints == ("ce_small_vit_demo_s1", "ce_small_vit_demo_s2")
    assert [t.seed for t in plan.train] == [2, 1]
    assert not [n for n in plan.notes if n.startswith("--batches")]  # 1 of 2: nothing to say
    more = plan_study(spec(batches=3, seeds=(1,)), tmp_path)
    assert more.analyses[0].units == 2
    assert any(n.startswith("--batches 3: the test split has 2 trajectories") for n in more.notes)


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_a_resume_costs_its_remaining_epochs_and_a_replaced_checkpoint_starts_afresh(tmp_path):
    make_dataset(tmp_path)
    run_study(plan_study(spec(), tmp_path), log=lambda _: None)  # 1 epoch at batch size 8
    out = checkpoints_dir(tmp_path) / "ce_small_vit_demo_s7"
    # one plan, one probe: a resume after 1 of 2 epochs costs half a new run of 2
    resume, new = plan_study(spec(epochs=2, seeds=(7, 8)), tmp_path).train
    assert (resume.state, new.state) == ("resume", "new")
    assert resume.seconds == pytest.approx(new.seconds / 2)
    # the cached analysis is of the 1-epoch weights the resume replaces: not the study's
    (analysis,) = plan_study(spec(epochs=2), tmp_path).analyses
    assert (analysis.state, analysis.cached_units) == ("pending", 0)
    plan = plan_study(spec(batch_size=4, replace_foreign=True), tmp_path)
    assert [t.state for t in plan.train] == ["retrain"]
    run_study(plan, log=lambda _: None)
    assert ckpt.read_config(out).training["args"]["batch_size"] == 4
    assert len(ckpt.read_history(out)) == 1  # from scratch, not resumed onto the old weights
    assert [t.state for t in plan_study(spec(batch_size=4), tmp_path).train] == ["done"]


@pytest.mark.slow
def test_a_rerun_sweep_says_what_is_cached_and_analyses_only_the_rest(tmp_path):
    from coherence.dashboard import sweeps
    from coherence.dashboard.selection import default_selection

    root = tmp_path / "ws"
    make_dataset(root)
    chosen = spec(epochs=2, dynamics_archs=("vit",), keep_epochs=(1, 2))
    plan = plan_study(chosen, root)
    assert not [n for n in plan.notes if n.startswith("--keep-epochs")]  # 2 is trained
    run_study(plan, log=lambda _: None)
    runner = JobRunner(root)
    dynamics, _ = sweeps.dynamics_points(root, default_selection(scan_workspace(root)), runner)
    assert [p.x for p in dynamics] == [1.0, 2.0]
    runner.store.delete(dynamics[0].key)  # epoch 1 lost; epoch 2 is the cached main analysis
    replan = plan_study(chosen, root)
    # only a sweep point left: still work (a cluster is needed), its time in the total
    assert [t.state for t in replan.train] == ["done"] and replan.analyses[0].state == "cached"
    assert replan.has_work and replan.seconds > 0
    assert replan.seconds == sum(s.seconds for s in replan.sweeps)
    lines, again = [], []
    run_study(replan, log=lines.append)
    assert "dynamics vit: 1 of 2 cached" in lines, lines
    assert [line for line in lines if line.startswith("  analysing vit")] == [
        "  analysing vit epoch 1"
    ], lines
    run_study(plan_study(chosen, root), log=again.append)
    assert "dynamics vit: 2 of 2 cached" in again, again  # all cached: nothing analysed
    # the main analysis lost too: the sweep counts only epoch 1 (the main step has 2)
    runner.store.delete(dynamics[0].key)
    runner.store.delete(dynamics[1].key)
    (sweep,) = plan_study(chosen, root).sweeps
    assert (sweep.requests, sweep.what) == (1, ("1",))


def test_a_resume_over_memory_is_not_told_to_change_its_batch_size(tmp_path):
    from coherence.study_plan import GIB, _memory_notes
    from coherence.study_spec import TrainStep
    from coherence.surrogates.training import TrainingArgs

    args = TrainingArgs(arch="vit", batch_size=32)
    step = TrainStep(
        "vit", 10, tmp_path / "v", args, 3, "resume", 60.0, int(22.6 * GIB), int(0.6 * GIB)
    )
    (note,) = _memory_notes([step], [], int(19.5 * GIB))
    assert "--limit" in note and "--batch-size" not in note  # a resume keeps its batch size
