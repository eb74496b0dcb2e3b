"""Checks on checkpoints and their neighbours that earlier tests left unchecked: the manifest's
digests, missing files and format; snapshot listing (a linked folder, one without a manifest,
epoch 0, epochs common to several checkpoints); what a recipe and the physics check compare;
consent to import custom code; the training footprint's arithmetic; rollout bounds. Each was
added where a mutant of coherence/surrogates passed every earlier test."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from coherence.errors import CheckpointError, RequestError
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import fileset, snapshots
from coherence.surrogates.footprint import Footprint, check_fits, training_step_bytes
from coherence.surrogates.registry import build_model, model_from_config_dict
from coherence.surrogates.rollout import rollout, rollout_errors
from coherence.surrogates.training import train
from tests.fixtures import tiny_args


def test_verify_catches_a_same_size_edit_a_missing_file_and_a_foreign_manifest(
    tiny_dataset, tmp_path
):
    base = train(tiny_dataset, tmp_path / "base", tiny_args(epochs=1, keep_epochs=()))
    same_size = shutil.copytree(base, tmp_path / "same_size")
    text = (same_size / ckpt.HISTORY_FILE).read_text()
    edited = text.replace('"epoch": 1', '"epoch": 1 ', 1)[:-1]  # one byte moved, none added
    (same_size / ckpt.HISTORY_FILE).write_text(edited)
    assert len(edited.encode()) == len(text.encode())
    with pytest.raises(CheckpointError, match="sha256"):
        ckpt.verify(same_size)
    missing = shutil.copytree(base, tmp_path / "missing")
    (missing / ckpt.STATE_FILE).unlink()  # a resume would restart AdamW in silence
    with pytest.raises(CheckpointError, match=r"listed in manifest\.json but absent"):
        ckpt.verify(missing)
    foreign = shutil.copytree(base, tmp_path / "foreign")
    manifest = json.loads((foreign / fileset.MANIFEST_FILE).read_text())
    manifest["format"] = "something-else"
    (foreign / fileset.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a coherence-file-set manifest"):
        ckpt.verify(foreign)


def test_a_manifest_counting_other_epochs_than_the_history_is_refused(tiny_dataset, tmp_path):
    out = train(tiny_dataset, tmp_path / "c", tiny_args(epochs=1, keep_epochs=()))
    manifest = json.loads((out / fileset.MANIFEST_FILE).read_text())
    manifest["epochs"] = 3  # the files themselves unchanged: their digests all match
    (out / fileset.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"history\.json has 1 epoch, the manifest 3"):
        ckpt.verify(out)


def _snapshot(checkpoint, epoch: int) -> None:
    folder = snapshots.snapshot_dir(checkpoint, epoch)
    folder.mkdir(parents=True)
    (folder / fileset.MANIFEST_FILE).write_text("{}")


def test_snapshot_listing_and_parsing_boundaries(tmp_path):
    with pytest.raises(RequestError, match="--keep-epochs"):
        snapshots.parse_keep_epochs("0,2")
    zero = tmp_path / "ck" / snapshots.EPOCHS_DIR / "0000"
    assert snapshots.split_snapshot(zero) == (zero, None)  # epoch 0 is no snapshot
    (tmp_path / "ck" / snapshots.EPOCHS_DIR / "0003").mkdir(parents=True)  # no manifest
    assert snapshots.list_snapshots(tmp_path / "ck") == {}


def test_a_linked_epochs_folder_lists_no_snapshots(tmp_path):
    _snapshot(tmp_path / "other", 2)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / snapshots.EPOCHS_DIR).symlink_to(tmp_path / "other" / snapshots.EPOCHS_DIR)
    assert snapshots.list_snapshots(tmp_path / "ck") == {}


def test_common_epochs_are_those_every_checkpoint_keeps(tmp_path):
    for name, epochs in (("a", (1, 2, 4)), ("b", (2, 4, 8))):
        for epoch in epochs:
            _snapshot(tmp_path / name, epoch)
    assert snapshots.common_epochs([tmp_path / "a", tmp_path / "b"]) == (2, 4)


def _config(**changes) -> ckpt.CheckpointConfig:
    base = dict(
        model={"arch": "unet", "config": {}},
        family="euler",
        channels=("density",),
        resolution=(16, 16),
        dataset={},
        seed=1,
    )
    return ckpt.CheckpointConfig(**{**base, **changes})


def test_a_recipe_leaves_unset_arguments_out():
    config = _config(training={"args": {"transitions": None, "lr": 1e-3}})
    assert ckpt.recipe_of(config, 2) == {"lr": 1e-3, "epochs": 2}


def test_small_checkpoint_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="trained on euler data"):
        ckpt.check_compatible(_config(), family="ns", channels=("density",), resolution=(16, 16))
    assert ckpt.recorded_physics({"dt": True, "gamma": 1.4}) == {"gamma": 1.4}  # no bool
    (tmp_path / "model.PT").write_bytes(b"x")  # the suffix in capitals is still a pickle
    with pytest.raises(CheckpointError, match="pickle-based"):
        ckpt.load(tmp_path / "model.PT")


def test_a_class_with_the_constants_of_one_trained_class_is_not_unseen():
    physics = {"A": {"dt": 0.05, "gamma": 1.4}, "B": {"dt": 0.05, "gamma": 1.6}}
    physics["C"] = {"dt": 0.05, "gamma": 1.6}
    assert ckpt.unseen_constants({"dt": 0.05, "gamma": 1.4}, ["A", "B"], physics, ["C"]) == []


def test_zero_channels_are_refused_and_custom_code_imported_only_on_consent(monkeypatch):
    with pytest.raises(RequestError, match="channels = 0"):
        build_model("unet", channels=0, resolution=16)
    monkeypatch.setenv("COHERENCE_TRUST_CODE", "0")  # "0" is no consent
    with pytest.raises(CheckpointError, match="importing it runs that module's code"):
        model_from_config_dict({"arch": "tests.surrogates.test_models:make", "config": {}})


def test_the_training_footprint_arithmetic():
    # weights, gradients, AdamW's two moments (4 × 1000 float32), 2 × a batch's activations
    assert training_step_bytes(1000, 2, 10, 4) == 4 * 1000 * 4 + 2 * 2 * 10
    with pytest.raises(CheckpointError, match="held twice"):  # 2 × 100 bytes > 199
        check_fits(Footprint(10, 100, 0), "cpu", "w", limit=199)
    check_fits(Footprint(10, 100, 0), "cpu", "w", limit=200)  # fits exactly


def test_rollout_bounds():
    model = torch.nn.Identity()
    assert rollout(model, torch.zeros(2, 1, 4, 4), 0).shape == (2, 1, 1, 4, 4)
    with pytest.raises(RequestError, match=r"choose 1\.\.3"):
        rollout_errors(model, torch.zeros(2, 5, 1, 4, 4), start=1, horizon=4)
