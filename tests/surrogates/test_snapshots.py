"""Training snapshots (epochs/NNNN): bit-exact, loadable wherever a checkpoint is, atomic,
and kept right across resumes and killed runs."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from coherence.analysis.pipeline import load_checked, run_analysis
from coherence.analysis.request import AnalysisRequest
from coherence.cache.keys import request_key
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.errors import RequestError
from coherence.simulation.dataset import open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import fileset, snapshots
from coherence.surrogates.training import TrainingArgs, train
from tests.fixtures import tiny_args


def _weights(directory: Path) -> bytes:
    return (directory / ckpt.WEIGHTS_FILE).read_bytes()


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    """5 epochs with the default keep rule: snapshots 1, 2, 4, 5."""
    out = tmp_path_factory.mktemp("snap") / "ckpt"
    return train(tiny_dataset, out, tiny_args(epochs=5))


def test_default_keep_is_powers_of_two_plus_the_last():
    assert snapshots.default_keep(12) == (1, 2, 4, 8, 12)
    assert snapshots.default_keep(16) == (1, 2, 4, 8, 16)
    assert snapshots.default_keep(1) == (1,)
    assert snapshots.resolve_keep((1, 2, 4, 8, 16), 5) == (1, 2, 4)
    assert snapshots.parse_keep_epochs("8,1,2") == (1, 2, 8)
    assert snapshots.parse_keep_epochs("default") is None
    assert snapshots.parse_keep_epochs("none") == ()
    with pytest.raises(RequestError, match="--keep-epochs"):
        snapshots.parse_keep_epochs("1,x")


def test_snapshots_are_bit_exact_checkpoints(trained, tiny_dataset, tmp_path):
    found = snapshots.list_snapshots(trained)
    assert list(found) == [1, 2, 4, 5]
    assert not list((trained / snapshots.EPOCHS_DIR).glob(".*"))  # no staging left
    # the last epoch's snapshot is the checkpoint's own files (hence one cache entry)
    for name in (ckpt.WEIGHTS_FILE, ckpt.CONFIG_FILE):
        assert (found[5] / name).read_bytes() == (trained / name).read_bytes()
    # an independent run stopped after 2 epochs ends with exactly snapshot 2's weights
    short = train(tiny_dataset, tmp_path / "short", tiny_args(epochs=2))
    assert _weights(found[2]) == _weights(short)
    for epoch, path in found.items():
        ckpt.verify(path)  # the manifest matches its files
        assert len(ckpt.read_history(path)) == epoch
        assert ckpt.load_training_state(path) is None
        model, config = ckpt.load(path)
        stored = load_safetensors(_weights(path))
        for key, value in model.state_dict().items():
            assert torch.equal(value, stored[key]), key
        assert config.seed == 3


def test_a_snapshot_or_checkpoint_missing_its_weights_is_named_with_the_fix(trained, tmp_path):
    """The message 'missing model.safetensors' said what was wrong but not what to do; a
    snapshot's also says that its checkpoint still loads."""
    from coherence.errors import CheckpointError

    copy = tmp_path / "ckpt"
    shutil.copytree(trained, copy)
    snapshot = snapshots.list_snapshots(copy)[2]
    (snapshot / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"training snapshot of ckpt, which still loads"):
        ckpt.load(snapshot)
    ckpt.load(copy)  # as said
    (copy / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"Restore the missing file .*\(`coherence train`\)"):
        ckpt.load(copy)


def _request(data, *checkpoints) -> AnalysisRequest:
    """The cheapest analysis of ``checkpoints`` on the tiny dataset."""
    return AnalysisRequest(
        checkpoints=tuple(str(c) for c in checkpoints),
        data=str(data),
        classes=("CE-RP", "CE-CRP"),
        n_steps=2,
        trajectories=(0,),
        device="cpu",
        top_eigenvalue=False,
    )


def test_snapshots_load_through_every_checkpoint_path(trained, tiny_dataset, tmp_path):
    snap = snapshots.snapshot_dir(trained, 2)
    info = open_dataset(tiny_dataset)
    load_checked(snap, info, torch.device("cpu"))  # what `coherence analyze` loads
    request = _request(tiny_dataset, snap)
    stages = []
    result = run_analysis(request, progress=lambda fraction, stage: stages.append(stage))
    assert result.H["smse"].shape == (1, 1, 2, 2, 2, 2)
    # progress names the model and the epoch, not the snapshot's folder "0002" alone
    assert f"{trained.name} epoch 2, batch 1/1 done" in stages
    # same files → same cache key as the checkpoint at that epoch
    last = replace(request, checkpoints=(str(trained),))
    as_snapshot = replace(request, checkpoints=(str(snapshots.snapshot_dir(trained, 5)),))
    assert request_key(last) == request_key(as_snapshot)
    # the workspace lists the checkpoint once, with its epochs, never the snapshots
    root = tmp_path / "ws"
    shutil.copytree(trained, root / "checkpoints" / "model")
    catalog = scan_workspace(root)
    assert [c.name for c in catalog.checkpoints] == ["model"]
    assert catalog.checkpoints[0].epochs == (1, 2, 4, 5)


def test_checkpoints_that_share_a_folder_name_keep_distinct_labels(trained, tiny_dataset, tmp_path):
    """Two seeds' snapshots of one epoch ('0002') or two folders named 'a' gave one label,
    and the provenance kept one fingerprint for two models (a walk-through)."""
    labels = snapshots.checkpoint_labels
    assert labels(["w/vit_s10/epochs/0002", "w/vit_s35/epochs/0002"]) == (
        "vit_s10 epoch 2",
        "vit_s35 epoch 2",
    )
    assert labels(["x/a", "y/a", "z/b"]) == ("x/a", "y/a", "b")
    assert labels(["p/x/a", "q/x/a"]) == ("p/x/a", "q/x/a")
    # two seeds at one epoch (seeds of one model share a training recipe)
    first = shutil.copytree(snapshots.snapshot_dir(trained, 2), tmp_path / "x" / "a")
    second = train(tiny_dataset, tmp_path / "y" / "a", tiny_args(seed=4))  # 2 epochs
    result = run_analysis(_request(tiny_dataset, first, second))
    assert result.checkpoints == ("x/a", "y/a")
    fingerprints = result.provenance["checkpoint_fingerprints"]
    assert list(fingerprints) == ["x/a", "y/a"] and len(set(fingerprints.values())) == 2


def test_resume_keeps_the_snapshot_list_right(trained, tiny_dataset, tmp_path):
    out = tmp_path / "ckpt"
    train(tiny_dataset, out, tiny_args(epochs=2))
    assert list(snapshots.list_snapshots(out)) == [1, 2]
    # a run killed after writing snapshot 4 but before its checkpoint save of epoch 4,
    # and one killed while staging a snapshot
    shutil.copytree(snapshots.snapshot_dir(trained, 4), snapshots.snapshot_dir(out, 4))
    (out / snapshots.EPOCHS_DIR / (fileset.STAGING_PREFIX + "x")).mkdir()
    (snapshots.snapshot_dir(out, 4) / ckpt.WEIGHTS_FILE).write_bytes(b"stale")
    train(tiny_dataset, out, tiny_args(epochs=5))
    found = snapshots.list_snapshots(out)
    assert list(found) == [1, 2, 4, 5]
    assert not list((out / snapshots.EPOCHS_DIR).glob(".*"))
    for epoch in (1, 2, 4, 5):  # bit-identical to the uninterrupted run
        assert _weights(found[epoch]) == _weights(snapshots.snapshot_dir(trained, epoch))
    assert _weights(out) == _weights(trained)


def test_keep_none_and_explicit_lists(tiny_dataset, tmp_path):
    none = train(tiny_dataset, tmp_path / "none", tiny_args(epochs=2, keep_epochs=()))
    assert snapshots.list_snapshots(none) == {}
    chosen = train(tiny_dataset, tmp_path / "some", tiny_args(epochs=3, keep_epochs=(2, 9)))
    assert list(snapshots.list_snapshots(chosen)) == [2]
    assert ckpt.read_config(chosen).training["args"]["keep_epochs"] == [2, 9]


def test_a_snapshot_commit_is_one_rename(tmp_path):
    """write_new_directory: a failure while staging leaves no snapshot and no staging."""
    target = tmp_path / "epochs" / "0003"

    class Boom(dict):
        def items(self):
            yield "a.bin", b"1"
            raise OSError("disk full")

    with pytest.raises(OSError):
        fileset.write_new_directory(target, Boom(), {})
    assert not target.exists() and not list(target.parent.iterdir())
    assert fileset.write_new_directory(target, {"a.bin": b"1"}, {"epochs": 3})
    assert not fileset.write_new_directory(target, {"a.bin": b"2"}, {"epochs": 3})  # kept
    assert (target / "a.bin").read_bytes() == b"1"


def test_keep_epochs_beyond_the_run_are_named(tiny_dataset, tmp_path):
    """`--epochs 2 --keep-epochs 5` kept nothing and said nothing (a walk-through)."""
    from typer.testing import CliRunner

    from coherence.cli import app

    out = tmp_path / "m"
    command = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    result = CliRunner().invoke(app, [*command, "--keep-epochs", "1,5", "--transitions", "2"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "--keep-epochs 5: beyond --epochs 1; kept only by a resumed run that reaches it" in said
    assert "(train again with --epochs 5 and the same --keep-epochs)" in said
    assert "snapshots kept (epochs/NNNN): 1" in said
    assert sorted(snapshots.list_snapshots(out)) == [1]
    # resumed to epoch 5 with the same list, it keeps epoch 5 ...
    result = CliRunner().invoke(
        app, [*command[:-1], "5", "--keep-epochs", "1,5", "--transitions", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "snapshots kept (epochs/NNNN): 1, 5" in " ".join(result.output.split())
    # ... and a resumed run with a new list says which epochs it has passed already
    result = CliRunner().invoke(
        app, [*command[:-1], "6", "--keep-epochs", "3,6", "--transitions", "2"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "--keep-epochs 3: m is already trained past that epoch (5 epochs), so no" in said
    assert "the snapshots kept so far stay (1, 5)" in said
    assert sorted(snapshots.list_snapshots(out)) == [1, 5, 6]
    # the default policy (1, 2, 4, 8 for 8 epochs) names passed epochs too: it was silent
    result = CliRunner().invoke(app, [*command[:-1], "8", "--transitions", "2"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "--keep-epochs default (powers of two) 2,4: m is already trained past those" in said
    assert sorted(snapshots.list_snapshots(out)) == [1, 5, 6, 8]


def test_train_takes_a_dataset_name_in_the_workspace(tiny_dataset, tmp_path, monkeypatch):
    """`train --data ce_demo` (a name, as analyze and study take it) said "no 'data'
    directory", as did a path that does not exist."""
    import shutil

    from typer.testing import CliRunner

    from coherence.cli import app
    from coherence.surrogates.checkpoint import read_config
    from coherence.workspace import ENV_VAR

    root = tmp_path / "ws"
    shutil.copytree(tiny_dataset, root / "datasets" / "tiny")
    monkeypatch.setenv(ENV_VAR, str(root))
    out = root / "checkpoints" / "m"
    command = ["train", "--out", str(out), "--epochs", "1", "--transitions", "2"]
    result = CliRunner().invoke(app, [*command, "--data", "tiny"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert read_config(out).dataset["root"] == str(root / "datasets" / "tiny")
    result = CliRunner().invoke(app, [*command, "--data", "nope"], env={"COLUMNS": "300"})
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "--data nope: no such folder, nor a dataset of that" in said
    assert "one of the names there (tiny)" in said
    # --workspace, as analyze, study and report take it, over the variable: names resolve in
    # it, and the note on an unlisted checkpoint names its checkpoints/ (train had no option)
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other / "datasets" / "mine")
    elsewhere = tmp_path / "elsewhere" / "m"
    command = ["train", "--out", str(elsewhere), "--epochs", "1", "--transitions", "2"]
    result = CliRunner().invoke(
        app, [*command, "--data", "mine", "--workspace", str(other)], env={"COLUMNS": "300"}
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert read_config(elsewhere).dataset["root"] == str(other / "datasets" / "mine")
    assert f"note: the dashboard lists the checkpoints in {other / 'checkpoints'}/" in said
    result = CliRunner().invoke(
        app, [*command, "--data", "mine", "--workspace", str(out)], env={"COLUMNS": "300"}
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "is a checkpoint, not a workspace" in said, said
    # a stale variable naming a checkpoint does not stop a run given the dataset's path
    monkeypatch.setenv(ENV_VAR, str(out))
    path = ["train", "--out", str(tmp_path / "by_path"), "--epochs", "1", "--transitions", "2"]
    result = CliRunner().invoke(app, [*path, "--data", str(tiny_dataset)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output


def test_training_into_a_snapshot_or_inside_a_checkpoint_or_dataset_is_refused(
    trained, tiny_dataset, tmp_path
):
    """`--out ckpt/epochs/0002` resumed the snapshot with fresh optimizer moments and
    replaced its weights; a model trained into `ckpt/epochs/0009` became a snapshot of
    another model, and one inside a dataset's folder sat among its files."""
    copy = shutil.copytree(trained, tmp_path / "copy")
    snapshot = copy / "epochs" / snapshots.snapshot_name(2)
    before = _weights(snapshot)
    with pytest.raises(RequestError, match=r"a snapshot of the checkpoint .*copy .* resume"):
        train(tiny_dataset, snapshot, tiny_args(epochs=3))
    assert _weights(snapshot) == before and not (snapshot / "epochs").exists()
    with pytest.raises(RequestError, match=r"in the snapshots folder of the checkpoint"):
        train(tiny_dataset, copy / "epochs" / "0009", tiny_args(epochs=1))
    with pytest.raises(RequestError, match=r"inside the checkpoint .*copy; a new model needs"):
        train(tiny_dataset, copy / "inner", tiny_args(epochs=1))
    assert sorted(snapshots.list_snapshots(copy)) == [1, 2, 4, 5]
    data = shutil.copytree(tiny_dataset, tmp_path / "ws" / "datasets" / "d")
    with pytest.raises(RequestError, match=r"inside the workspace dataset .*d; a checkpoint"):
        train(data, data / "ck", tiny_args(epochs=1))
    with pytest.raises(RequestError, match=r"inside the data folder of the dataset .*d;"):
        train(data, data / "data" / "train" / "ck", tiny_args(epochs=1))
    with pytest.raises(RequestError, match=r"--out .*d: a dataset; a checkpoint"):
        train(data, data, tiny_args(epochs=1))
    assert not (data / "ck").exists() and not (data / "data" / "train" / "ck").exists()
    # a project holding its data/ and its checkpoints side by side is no dataset's folder
    project = shutil.copytree(tiny_dataset, tmp_path / "project")
    train(project, project / "unet", tiny_args(epochs=1))
    assert (project / "unet" / ckpt.CONFIG_FILE).is_file()
    # a snapshot reached through a symlink is named as a snapshot
    (tmp_path / "link").symlink_to(snapshot)
    with pytest.raises(RequestError, match=r"a snapshot of the checkpoint .*copy \(its weights"):
        train(tiny_dataset, tmp_path / "link", tiny_args(epochs=3))


def test_a_resume_keeps_the_epoch_it_starts_from(tiny_dataset, tmp_path):
    """Trained to 2 with --keep-epochs none, resumed to 3 with the default (1, 2, 3): epoch 2
    was the checkpoint's own weights when the run began, yet it was said to be passed and
    lost; it is kept now (those very weights), and only epoch 1 is said to be passed."""
    from typer.testing import CliRunner

    from coherence.cli import app

    out = tmp_path / "m"
    command = ["train", "--data", str(tiny_dataset), "--out", str(out), "--transitions", "2"]
    run = CliRunner().invoke(app, [*command, "--epochs", "2", "--keep-epochs", "none"])
    assert run.exit_code == 0, run.output
    epoch_two = _weights(out)
    run = CliRunner().invoke(app, [*command, "--epochs", "3"])
    said = " ".join(run.output.split())
    assert run.exit_code == 0, run.output
    assert "(powers of two) 1: m is already trained past that epoch" in said
    assert sorted(snapshots.list_snapshots(out)) == [2, 3]
    assert _weights(snapshots.snapshot_dir(out, 2)) == epoch_two
    # a run with nothing to train warns about no epoch and writes nothing
    run = CliRunner().invoke(app, [*command, "--epochs", "3", "--keep-epochs", "1,2,3,9"])
    said = " ".join(run.output.split())
    assert run.exit_code == 0 and "warning" not in said and "checkpoint written" not in said
    assert "nothing to do" in said


def test_a_run_that_waited_for_its_slot_does_not_claim_the_other_runs_epochs(
    tiny_dataset, tmp_path, monkeypatch
):
    """A second `train` into one --out, queued behind the first, printed "checkpoint written"
    after "nothing to do": it had read the epochs before waiting. The other run finishes
    while this one waits for its compute slot (as that run would)."""
    import contextlib

    from typer.testing import CliRunner

    from coherence import cli
    from coherence.cli import app

    out = tmp_path / "m"

    @contextlib.contextmanager
    def slot_after_the_other_run(kind):
        train(tiny_dataset, out, TrainingArgs(epochs=2, transitions=2))  # the CLI's defaults
        yield

    monkeypatch.setattr(cli, "compute_slot", slot_after_the_other_run)
    command = ["train", "--data", str(tiny_dataset), "--out", str(out), "--transitions", "2"]
    run = CliRunner().invoke(app, [*command, "--epochs", "2"])
    said = " ".join(run.output.split())
    assert run.exit_code == 0, run.output
    assert "nothing to do" in said and "checkpoint written" not in said
