"""Training, checkpoints and rollouts on real (tiny) Well datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from coherence.errors import CheckpointError, RequestError
from coherence.simulation.dataset import open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.losses import scaled_residual, smse
from coherence.surrogates.pairs import TransitionPairs
from coherence.surrogates.rollout import rollout, rollout_errors
from coherence.surrogates.training import train, trained_transitions
from tests.fixtures import link_into_a_folder_refusing_locks, tiny_args


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "unet_s3"
    train(tiny_dataset, out, tiny_args(keep_epochs=()))  # snapshots: test_snapshots.py
    return out


def test_smse_matches_its_definition():
    rng = torch.Generator().manual_seed(0)
    y = torch.randn(3, 2, 5, 5, generator=rng, dtype=torch.float64)
    yhat = torch.randn(3, 2, 5, 5, generator=rng, dtype=torch.float64)
    rms = np.sqrt((y.numpy() ** 2).mean(axis=(-2, -1), keepdims=True))
    expected = ((yhat.numpy() - y.numpy()) / (rms + 1e-6)) ** 2
    np.testing.assert_allclose(float(smse(yhat, y)), expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(scaled_residual(y, y).numpy(), 0.0)


def test_checkpoint_layout_history_and_bit_exact_round_trip(trained, tiny_dataset):
    # manifest.json added by issue 13: the set a save commits together
    assert sorted(p.name for p in trained.iterdir()) == sorted(
        [
            ckpt.CONFIG_FILE,
            ckpt.WEIGHTS_FILE,
            ckpt.HISTORY_FILE,
            ckpt.STATE_FILE,
            ckpt.MANIFEST_FILE,
        ]
    )
    config = json.loads((trained / ckpt.CONFIG_FILE).read_text())
    assert config["model"]["arch"] == "unet" and config["seed"] == 3
    assert config["channels"] == ["density", "momentum_x", "momentum_y", "energy"]
    assert config["dataset"]["classes"] == ["CE-CRP", "CE-RP"]
    assert config["dataset"]["fingerprint"] == open_dataset(tiny_dataset).fingerprint(
        split="train", classes=["CE-CRP", "CE-RP"]
    )
    history = ckpt.read_history(trained)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_smse"]) and np.isfinite(h["valid_smse"]) for h in history)

    model, loaded_config = ckpt.load(trained)
    again, _ = ckpt.load(trained)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    resaved = trained.parent / "resaved"
    ckpt.save_checkpoint(resaved, model, loaded_config, history)
    assert (resaved / ckpt.WEIGHTS_FILE).read_bytes() == (trained / ckpt.WEIGHTS_FILE).read_bytes()
    # normalization lives inside the module: it maps physical states with nothing else loaded
    assert not torch.allclose(model.state_mean, torch.zeros(4))


@pytest.mark.slow
def test_training_learns_and_is_deterministic(tiny_dataset, tmp_path):
    args = tiny_args(epochs=12, seed=5)
    train(tiny_dataset, tmp_path / "a", args)
    history = ckpt.read_history(tmp_path / "a")
    assert history[-1]["train_smse"] < 0.5 * history[0]["train_smse"]
    train(tiny_dataset, tmp_path / "b", tiny_args(epochs=12, seed=5))
    assert (tmp_path / "a" / ckpt.WEIGHTS_FILE).read_bytes() == (
        tmp_path / "b" / ckpt.WEIGHTS_FILE
    ).read_bytes()


def test_resume_equals_uninterrupted_run(tiny_dataset, tmp_path):
    train(tiny_dataset, tmp_path / "full", tiny_args(epochs=3))
    train(tiny_dataset, tmp_path / "part", tiny_args(epochs=1))
    train(tiny_dataset, tmp_path / "part", tiny_args(epochs=3))
    full, _ = ckpt.load(tmp_path / "full")
    part, _ = ckpt.load(tmp_path / "part")
    for (name, a), (_, b) in zip(full.state_dict().items(), part.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert len(ckpt.read_history(tmp_path / "part")) == 3


def test_resume_with_other_arguments_is_refused(trained, tiny_dataset):
    with pytest.raises(RequestError, match="other arguments"):
        train(tiny_dataset, trained, tiny_args(lr=1e-2))


def test_a_resume_without_classes_of_a_run_that_named_them_all_goes_on(tiny_dataset, tmp_path):
    """No --classes means every training class: a run that named them all, in the data's
    order, resumed without --classes was refused ("classes: [...] → []"). Another order
    trains otherwise (the pairs' order): without --classes the resume takes the
    checkpoint's own (a demo checkpoint's order was refused); named, it is refused."""
    info = open_dataset(tiny_dataset)
    every = tuple(c for c in info.classes if c in info.files["train"])
    named = tmp_path / "named"
    train(tiny_dataset, named, tiny_args(epochs=1, classes=every))
    train(tiny_dataset, named, tiny_args(epochs=2))  # goes on
    assert len(ckpt.read_history(named)) == 2
    swapped = tmp_path / "swapped"
    train(tiny_dataset, swapped, tiny_args(epochs=1, classes=every[::-1]))
    train(tiny_dataset, swapped, tiny_args(epochs=2))  # its own order: goes on
    assert ckpt.read_config(swapped).dataset["classes"] == list(every[::-1])
    expected = rf"classes: {list(every[::-1])!r} → {list(every)!r}".replace("[", r"\[")
    with pytest.raises(RequestError, match=expected.replace("]", r"\]")) as refused:
        train(tiny_dataset, swapped, tiny_args(epochs=3, classes=every))
    assert f"(--classes {','.join(every[::-1])})" in str(refused.value)
    subset = tmp_path / "subset"  # trained on one class: no --classes (all of them) differs
    train(tiny_dataset, subset, tiny_args(epochs=1, classes=every[:1]))
    with pytest.raises(RequestError, match=r"classes: "):
        train(tiny_dataset, subset, tiny_args(epochs=2))
    # fewer classes of the same data: named as other classes, not as other data
    with pytest.raises(RequestError, match=r"classes: ") as refused:
        train(tiny_dataset, named, tiny_args(epochs=3, classes=every[:1]))
    assert "differs in its training files" not in str(refused.value)
    # a class named twice trained on its pairs twice (analyze and simulate refused it)
    with pytest.raises(RequestError, match=r"classes CE-RP,CE-RP: name each class once"):
        tiny_args(epochs=1, classes=("CE-RP", "CE-RP"))


def test_a_dataset_without_train_files_is_refused_by_name(tiny_dataset, tmp_path):
    """An emptied train/ folder ended `coherence train` in a traceback (no arrays to
    concatenate); a missing valid/ one was already refused with the fix."""
    copy = tmp_path / "no_train"
    shutil.copytree(tiny_dataset, copy)
    for path in (copy / "data" / "train").iterdir():
        path.unlink()
    with pytest.raises(RequestError, match=r"no_train has no 'train' split; it has: valid, test"):
        train(copy, tmp_path / "out", tiny_args(epochs=1))
    assert not (tmp_path / "out").exists()
    # an --out below a file was said as "File exists" of our lock file beside it
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RequestError, match=r"a_file/ck: .*a_file is a file, not a folder"):
        train(tiny_dataset, tmp_path / "a_file" / "ck", tiny_args(epochs=1))


def test_resume_on_other_training_data_is_refused(trained, tiny_dataset, tmp_path):
    """Same grid and classes, other training trajectories: resuming would train its first
    epochs on one dataset and its later ones on another, and config.json name the second."""
    import shutil

    from coherence.simulation.wellformat import write_well_file
    from tests.fixtures import TINY_CLASSES, advected_states

    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    write_well_file(
        other / "data" / "train" / f"{TINY_CLASSES[0]}.hdf5",
        advected_states(4, 5, 16, seed=99),
        np.linspace(0, 0.2, 5),
        family="euler",
        class_name=TINY_CLASSES[0],
        dataset_name="tiny",
    )
    copy = tmp_path / "ckpt"
    shutil.copytree(trained, copy)
    before = (copy / ckpt.CONFIG_FILE).read_bytes()
    with pytest.raises(RequestError, match=r"trained on other data \('tiny'.*Resume with the"):
        train(other, copy, tiny_args(epochs=3))
    assert (copy / ckpt.CONFIG_FILE).read_bytes() == before  # nothing written


def test_training_into_a_folder_of_other_files_is_refused(tiny_dataset, tmp_path):
    """`--out` pointed at a dataset (or any folder of other files) wrote the checkpoint in
    among them; an empty folder, or one a killed run began, is still trained into."""
    import shutil

    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dataset)
    listing = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    with pytest.raises(RequestError, match=r"--out .*dataset: a dataset; a checkpoint needs"):
        train(tiny_dataset, dataset, tiny_args(epochs=1))
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == listing
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    with pytest.raises(RequestError, match=r"--out .*project: the folder holds other files"):
        train(tiny_dataset, project, tiny_args(epochs=1))
    assert [p.name for p in project.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    (empty / "epochs").mkdir(parents=True)  # a run killed before its first checkpoint
    train(tiny_dataset, empty, tiny_args(epochs=1))
    assert (empty / ckpt.CONFIG_FILE).is_file()
    # a file as --out failed only at the first save, after an epoch, and left a lock file
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(RequestError, match=r"--out .*passwd: a file, not a folder"):
        train(tiny_dataset, a_file, tiny_args(epochs=1))
    assert sorted(tmp_path.iterdir()) == before and a_file.read_text() == "root:x:0:0"


def test_training_rejects_bad_arguments(tiny_dataset, tmp_path):
    with pytest.raises(RequestError, match="lr="):
        tiny_args(lr=-1.0)
    # an unknown architecture or preset, before any work (it came after the transitions line)
    with pytest.raises(RequestError, match=r"unknown architecture 'unett'; choose one of"):
        tiny_args(arch="unett")
    with pytest.raises(RequestError, match=r"unknown vit preset 'tiny'; choose one of"):
        tiny_args(arch="vit", preset="tiny")
    with pytest.raises(RequestError, match="epochs="):
        tiny_args(epochs=0)
    with pytest.raises(RequestError, match=r"^batch_size=100000000: too large; give a batch of"):
        tiny_args(batch_size=100_000_000)  # the one value at fault, named alone
    with pytest.raises(RequestError, match="class 'NS-Gauss' is not in the train split"):
        train(tiny_dataset, tmp_path / "x", tiny_args(classes=("NS-Gauss",)))
    with pytest.raises(RequestError, match="transitions=9 needs 10 snapshots"):
        train(tiny_dataset, tmp_path / "y", tiny_args(transitions=9))
    # refused before writing: no checkpoint, and no lock file left beside where it would be
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".x", ".y"))]


def test_load_refuses_pickles_and_missing_files(tmp_path, trained):
    pickle_file = tmp_path / "model.pt"
    pickle_file.write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="never loaded"):
        ckpt.load(pickle_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.pth").write_bytes(b"x")
    with pytest.raises(
        CheckpointError,
        match=r"missing config\.json, model\.safetensors.*"
        r"weights\.pth: pickle files are never loaded",
    ):
        ckpt.load(empty)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt.load(tmp_path / "nope")


def _copy_checkpoint(src, dst):
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


def test_load_refuses_weights_that_do_not_match_config(trained, tmp_path):
    broken = _copy_checkpoint(trained, tmp_path / "broken")
    config = json.loads((broken / ckpt.CONFIG_FILE).read_text())
    config["model"]["config"]["base_width"] = 16
    (broken / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights do not match the architecture"):
        ckpt.load(broken)


def test_load_refuses_nan_weights_and_corrupt_files(trained, tmp_path):
    nan = _copy_checkpoint(trained, tmp_path / "nan")
    model, _ = ckpt.load(trained)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[first][0] = float("nan")
    save_file(tensors, str(nan / ckpt.WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="NaN or inf"):
        ckpt.load(nan)
    (nan / ckpt.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ckpt.load(nan)
    (nan / ckpt.CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ckpt.load(nan)


def test_load_refuses_untrusted_custom_factory(trained, tmp_path, monkeypatch):
    custom = _copy_checkpoint(trained, tmp_path / "custom")
    config = json.loads((custom / ckpt.CONFIG_FILE).read_text())
    config["model"]["arch"] = "os.path:join"
    (custom / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    monkeypatch.delenv("COHERENCE_TRUST_CODE", raising=False)
    with pytest.raises(CheckpointError, match="--trust-code"):
        ckpt.load(custom)


def test_checkpoint_dataset_mismatch_is_refused(trained):
    _, config = ckpt.load(trained)
    ckpt.check_compatible(config, family="euler", channels=config.channels, resolution=(16, 16))
    with pytest.raises(CheckpointError, match="trained on euler data"):
        ckpt.check_compatible(
            config, family="ns", channels=("velocity_x", "velocity_y"), resolution=(16, 16)
        )
    with pytest.raises(CheckpointError, match="trained at 16×16"):
        ckpt.check_compatible(config, family="euler", channels=config.channels, resolution=(32, 32))


def test_rollout_shapes_and_errors(trained, tiny_dataset):
    model, _ = ckpt.load(trained)
    truth = torch.from_numpy(open_dataset(tiny_dataset).load("test", "CE-RP"))
    states = rollout(model, truth[:, 0], 3)
    assert states.shape == (2, 4, 4, 16, 16)
    torch.testing.assert_close(states[:, 0], truth[:, 0])
    errors = rollout_errors(model, truth, start=1)
    assert errors.one_step.shape == errors.rollout.shape == (2, 3)
    assert errors.prediction.shape == (2, 4, 4, 16, 16)
    # first horizon: rollout and one-step both start from the true state
    np.testing.assert_allclose(errors.rollout[:, 0], errors.one_step[:, 0], rtol=1e-5)
    with torch.no_grad():
        direct = smse(model(truth[:1, 2]), truth[:1, 3])
    np.testing.assert_allclose(errors.one_step[0, 1], float(direct), rtol=1e-5)
    with pytest.raises(RequestError, match=r"choose 1\.\.3"):
        rollout_errors(model, truth, start=1, horizon=7)
    with pytest.raises(RequestError, match="start=4"):
        rollout_errors(model, truth, start=4)


def test_a_second_run_into_the_same_checkpoint_is_refused_while_one_trains(tiny_dataset, tmp_path):
    """Two runs into one --out both finished: the checkpoint from one, the snapshots from the
    other. The lock beside the checkpoint refuses the second while the first holds it, and
    goes with the first (a killed run's too: flock)."""
    from coherence.cache.locks import KeyLock

    out = tmp_path / "ckpt"
    held = KeyLock(tmp_path / ".ckpt.train.lock")  # what a run in progress holds
    assert held.acquire()
    try:
        with pytest.raises(RequestError, match=r"another `coherence train` or study is training"):
            train(tiny_dataset, out, tiny_args())
        assert not out.exists()  # nothing written
    finally:
        held.release()
    assert train(tiny_dataset, out, tiny_args()) == out  # free again
    link = tmp_path / "link"
    link.symlink_to(out)  # the same checkpoint through a link: the same lock (a review)
    held = KeyLock(tmp_path / ".ckpt.train.lock")
    assert held.acquire()
    try:
        with pytest.raises(RequestError, match=r"another `coherence train` or study is training"):
            train(tiny_dataset, link, tiny_args(epochs=2))
    finally:
        held.release()


def test_a_link_into_a_folder_it_cannot_write_locks_beside_the_link(tmp_path, monkeypatch):
    """Training writes only inside the checkpoint, so a link into a read-only shared folder
    worked until the lock moved beside the target (a review): the lock goes beside the link
    when the target's folder refuses it."""
    from coherence.surrogates.training import training_lock

    link, _ = link_into_a_folder_refusing_locks(tmp_path, monkeypatch, "ckpt")
    with training_lock(link):
        assert (link.parent / ".link.train.lock").exists()


def test_cli_turns_a_path_error_into_one_line(tiny_dataset, tmp_path, monkeypatch):
    """An --out that cannot be made: one red line naming the path, exit status 2 (it was a
    traceback, then it named our lock file beside --out); COHERENCE_DEBUG=1 gives the
    traceback back."""
    from typer.testing import CliRunner

    from coherence.cli import app

    out = Path("/proc/coherence-test/ckpt")  # no folder can be made there, even by root
    command = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    monkeypatch.delenv("COHERENCE_DEBUG", raising=False)
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert f"{out}; check the paths given" in result.output  # --out, not the lock file
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(app, command, env={"COHERENCE_DEBUG": "1"})
    assert isinstance(debug.exception, OSError)


def test_fewer_epochs_than_trained_says_nothing_is_to_do(trained, tiny_dataset):
    lines: list[str] = []
    before = ckpt.read_history(trained)
    train(tiny_dataset, trained, tiny_args(epochs=1), log=lines.append)
    assert lines == [f"{trained} is trained for {len(before)} epochs (--epochs 1): nothing to do"]
    assert ckpt.read_history(trained) == before


def test_cli_rerun_of_a_finished_training_writes_nothing_and_says_so(tiny_dataset, tmp_path):
    """The rerun said "nothing to do", then drew a 0 % bar and "checkpoint written to"."""
    from typer.testing import CliRunner

    from coherence.cli import app

    out = tmp_path / "ckpt"
    command = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    command += ["--batch-size", "8", "--transitions", "4", "--device", "cpu"]
    first = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert first.exit_code == 0 and "checkpoint written to" in first.output, first.output
    weights = (out / ckpt.WEIGHTS_FILE).read_bytes()
    again = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert "is trained for 1 epoch (--epochs 1): nothing to do" in again.output
    assert "checkpoint written" not in again.output and "0%" not in again.output
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == weights


def test_the_transitions_a_checkpoint_was_trained_on(trained, tmp_path):
    """What the rollout panel marks as the trained horizon: the stored count, the default
    for this dataset where the config left it unset, nothing where it records no training."""
    assert trained_transitions(trained, 21) == 4  # tiny_args: 4 transitions
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    config = json.loads((copy / ckpt.CONFIG_FILE).read_text())
    config["training"]["args"]["transitions"] = None  # saved before it was resolved
    (copy / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    assert trained_transitions(copy, 21) == 16 and trained_transitions(copy, 6) == 5
    assert trained_transitions(copy, None) is None  # trained on data whose length is unknown
    assert trained_transitions(trained, None) == 4  # a resolved count needs no dataset
    config["training"] = {}
    (copy / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    assert trained_transitions(copy, 21) is None


def test_training_warns_before_a_step_that_may_not_fit_with_the_batch_size_that_does(
    tiny_dataset, tmp_path, monkeypatch
):
    """With the free memory set between what batches of 3 and 4 need, a run at batch 8 is
    warned before its first epoch and told --batch-size 3; at 3 it is not warned, at 4 it
    is; plenty of memory says nothing. A resume keeps its batch size: the fix is a machine."""
    from coherence.probe import activation_bytes
    from coherence.surrogates import footprint
    from coherence.surrogates.registry import build_model

    info = open_dataset(tiny_dataset)
    args = tiny_args(epochs=1)
    model = build_model(
        args.arch, args.preset, channels=len(info.channels), resolution=info.height,
        **args.overrides,
    )  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    per_example = 2 * activation_bytes(model, torch.zeros(1, len(info.channels), 16, 16))
    classes = list(info.classes)
    held = sum(TransitionPairs(info, s, classes, 4).nbytes for s in ("train", "valid"))
    # a step: weights, gradients, two AdamW moments, the batch's activations and the pairs,
    # within four fifths of the memory before the weights and pairs were loaded
    step_of_3_and_a_half = 4 * 4 * n_params + held + 3.5 * per_example
    free = step_of_3_and_a_half / 0.8 - (4 * n_params + held)
    monkeypatch.setattr(footprint, "available_bytes", lambda device: int(free))

    def warnings(batch_size: int, out: str) -> list[str]:
        lines: list[str] = []
        train(
            tiny_dataset,
            tmp_path / out,
            tiny_args(epochs=1, batch_size=batch_size),
            log=lines.append,
        )
        return [line for line in lines if line.startswith("warning: one training step")]

    (warned,) = warnings(8, "b8")
    assert "one training step of 8 examples needs" in warned
    assert "train with --batch-size 3 (≈" in warned
    assert warnings(3, "b3") == []
    assert "train with --batch-size 3" in warnings(4, "b4")[0]
    lines: list[str] = []
    train(tiny_dataset, tmp_path / "b8", tiny_args(epochs=2, batch_size=8), log=lines.append)
    assert "train on a machine with more memory" in "\n".join(lines)  # resumed: no batch fix
    from typer.testing import CliRunner

    from coherence.cli import app

    command = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "cli"), "--epochs"]
    command += ["1", "--batch-size", "8", "--transitions", "4", "--device", "cpu"]
    shown = CliRunner().invoke(app, command, env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "warning: one training step of 8 examples" in shown.output  # before epoch 1
    assert shown.output.index("warning:") < shown.output.index("epoch 1/1")
    monkeypatch.setattr(footprint, "available_bytes", lambda device: 2**40)
    assert warnings(8, "plenty") == []
    # a batch larger than the pairs holds only the pairs: counted at what a step holds
    n_pairs = len(TransitionPairs(info, "train", classes, 4))
    assert n_pairs < 64
    monkeypatch.setattr(footprint, "available_bytes", lambda device: int(free))
    assert warnings(n_pairs + 56, "huge") == warnings(n_pairs, "exact")


def test_a_diverged_epoch_stops_training_before_it_is_saved(tiny_dataset, tmp_path):
    """--lr 1e6 made the loss NaN: it was saved as a finished checkpoint whose history.json
    held a bare NaN (not JSON), refused by every analysis later. Training stops at that
    epoch with the fix, and what was saved before stays as it was."""
    out = tmp_path / "diverged"
    with pytest.raises(
        RequestError,
        match=r"epoch 1: the .* (is|are) nan \(training diverged\); "
        r"nothing was saved .* smaller --lr \(this run: 1e\+06\) \(the same --out will do\)",
    ):
        train(tiny_dataset, out, tiny_args(epochs=1, lr=1e6))
    assert not (out / ckpt.CONFIG_FILE).exists()


def test_a_diverged_resumed_epoch_leaves_the_saved_epochs_as_they_were(
    tiny_dataset, tmp_path, monkeypatch
):
    """The refusal comes before the save: a run resumed from epoch 1 whose epoch 2 diverges
    (its validation loss made NaN here) keeps epoch 1's files byte for byte."""
    from coherence.surrogates import training

    good = tmp_path / "good"
    train(tiny_dataset, good, tiny_args(epochs=1))
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}
    monkeypatch.setattr(training, "validation", lambda pairs, device: lambda m: float("nan"))
    with pytest.raises(
        RequestError, match=rf"epoch 2: the valid smse is nan .*{good} keeps epoch 1"
    ):
        train(tiny_dataset, good, tiny_args(epochs=2))
    assert {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()} == before
    # saved every 5 epochs: epoch 1 trained but never written, so it is not said to be kept
    calls = iter([0.5, float("nan")])
    monkeypatch.setattr(training, "validation", lambda pairs, device: lambda m: next(calls))
    sparse = tmp_path / "sparse"
    with pytest.raises(RequestError, match=r"epoch 2: .*nothing was saved to"):
        train(tiny_dataset, sparse, tiny_args(epochs=2, checkpoint_every=5))


def test_a_vit_on_a_non_square_grid_is_refused_with_what_to_do(tmp_path):
    """A ViT's positional embedding is L×L: on a 16×8 grid it failed at the first batch,
    telling the user to run the very command that failed. Refused up front, with the UNet
    (which trains on any grid divisible by its depth) as the way on."""
    from coherence.simulation.wellformat import write_well_file
    from coherence.surrogates.vit import ViT, ViTConfig
    from tests.fixtures import TINY_CLASSES, advected_states

    wide = advected_states(3, 5, 16, seed=1)[..., :8]  # height 16, width 8
    for split in ("train", "valid", "test"):
        write_well_file(
            tmp_path / "wide" / "data" / split / f"{TINY_CLASSES[0]}.hdf5",
            wide,
            np.linspace(0, 0.2, 5),
            family="euler",
            class_name=TINY_CLASSES[0],
            dataset_name="wide",
        )
    with pytest.raises(RequestError, match=r"a 16×8 grid \(height × width\); --arch vit needs"):
        train(tmp_path / "wide", tmp_path / "vit", tiny_args(arch="vit", overrides={}))
    assert not (tmp_path / "vit" / ckpt.CONFIG_FILE).exists()
    vit = ViT(ViTConfig(channels=4, resolution=16, patch=4, width=8, depth=1, heads=2))
    with pytest.raises(RequestError, match=r"got a 16×8 grid .*use a UNet \(`--arch unet`\)"):
        vit.check_spatial(16, 8)
    train(tmp_path / "wide", tmp_path / "unet", tiny_args(epochs=1))  # a UNet trains on it
    assert (tmp_path / "unet" / ckpt.CONFIG_FILE).is_file()


def test_training_on_open_boundary_data_says_its_models_are_periodic(tiny_dataset, tmp_path):
    """Data imported with --allow-open trained without a word that the models are periodic."""
    import h5py

    copy = tmp_path / "open"
    shutil.copytree(tiny_dataset, copy)
    for path in (copy / "data").rglob("*.hdf5"):
        with h5py.File(path, "a") as f:
            for group in f["boundary_conditions"].values():
                group.attrs["bc_type"] = "open"
    said: list[str] = []
    train(copy, tmp_path / "ckpt", tiny_args(epochs=1), log=said.append)
    (line,) = [s for s in said if "open boundaries" in s]
    assert line.startswith("warning: ") and "the surrogates are periodic" in line
    said.clear()
    train(tiny_dataset, tmp_path / "periodic", tiny_args(epochs=1), log=said.append)
    assert not [s for s in said if "open boundaries" in s]
    # walls (or uneven snapshots): refused before any pair is read, nothing written
    for path in (copy / "data").rglob("*.hdf5"):
        with h5py.File(path, "a") as f:
            for group in f["boundary_conditions"].values():
                group.attrs["bc_type"] = "wall"
    with pytest.raises(RequestError, match=r"boundaries wall; the surrogates .*periodic"):
        train(copy, tmp_path / "walls", tiny_args(epochs=1))
    assert not (tmp_path / "walls" / ckpt.CONFIG_FILE).exists()
