"""Training's arithmetic and bookkeeping that earlier tests left unchecked: the absolute value
of the logged losses, each epoch's own batch order, the floor on a constant channel's std, the
last epoch saved off the checkpoint cadence, resumes (a partial last batch, another batch size,
an optimizer behind its history, the preset kept), and the argument boundaries. Each was added
where a mutant of coherence/surrogates passed every earlier test."""

from __future__ import annotations

import shutil

import pytest
import torch

from coherence.errors import CheckpointError, RequestError
from coherence.simulation.dataset import open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import snapshots, training
from coherence.surrogates.losses import evaluate_smse
from coherence.surrogates.pairs import TransitionPairs
from coherence.surrogates.training import train
from tests.fixtures import TINY_OVERRIDES, tiny_args


def test_the_logged_losses_are_means_over_the_pairs(tiny_dataset, tmp_path):
    """History's train and valid SMSE against the per-pair mean computed apart: a sum over
    batches, or a count of batches for pairs, went unseen (only epochs were compared)."""
    out = train(tiny_dataset, tmp_path / "t", tiny_args(epochs=1, lr=1e-12, batch_size=5))
    model, _ = ckpt.load(out)  # lr 1e-12: the weights the train loss was summed over
    info = open_dataset(tiny_dataset)
    record = ckpt.read_history(out)[0]
    for split, key in (("train", "train_smse"), ("valid", "valid_smse")):
        pairs = TransitionPairs(info, split, list(info.classes), 4)
        per_pair = evaluate_smse(model, pairs.inputs, pairs.targets, batch_size=1)
        assert record[key] == pytest.approx(per_pair, rel=1e-4), key


def test_each_epoch_draws_its_own_seeded_order(tiny_dataset, tmp_path, monkeypatch):
    seen = []
    real_get = TransitionPairs.get

    def spy(self, index):
        if self.split == "train":
            seen.append(index.clone())
        return real_get(self, index)

    monkeypatch.setattr(TransitionPairs, "get", spy)
    train(tiny_dataset, tmp_path / "o", tiny_args(epochs=2))  # 32 pairs, 4 batches of 8
    for epoch in range(2):
        generator = torch.Generator().manual_seed(3 * 100003 + epoch)  # seed 3 (tiny_args)
        order = torch.cat(seen[4 * epoch : 4 * epoch + 4])
        assert torch.equal(order, torch.randperm(32, generator=generator))


def test_a_constant_channel_trains_with_a_floored_std(tiny_dataset, tmp_path, monkeypatch):
    real_stats = TransitionPairs.channel_stats

    def constant_first_channel(self):
        mean, std = real_stats(self)
        std = std.clone()
        std[0] = 0.0
        return mean, std

    monkeypatch.setattr(TransitionPairs, "channel_stats", constant_first_channel)
    model, _ = ckpt.load(train(tiny_dataset, tmp_path / "c", tiny_args(epochs=1)))
    assert float(model.state_std[0]) == pytest.approx(1e-6)


def test_transitions_as_many_as_the_snapshots_are_refused(tiny_dataset):
    info = open_dataset(tiny_dataset)  # 5 snapshots: at most 4 transitions
    with pytest.raises(RequestError, match="transitions=5 needs 6 snapshots"):
        TransitionPairs(info, "train", list(info.classes), 5)


def test_the_last_epoch_is_saved_off_the_checkpoint_cadence(tiny_dataset, tmp_path):
    out = train(tiny_dataset, tmp_path / "c", tiny_args(epochs=3, checkpoint_every=2))
    assert len(ckpt.read_history(out)) == 3


def test_a_fresh_run_replaces_the_snapshots_a_killed_run_left(tiny_dataset, tmp_path):
    other = train(tiny_dataset, tmp_path / "other", tiny_args(epochs=1, seed=9, keep_epochs=(1,)))
    out = tmp_path / "out"
    shutil.copytree(other / snapshots.EPOCHS_DIR, out / snapshots.EPOCHS_DIR)
    train(tiny_dataset, out, tiny_args(epochs=1, keep_epochs=(1,)))
    kept = snapshots.snapshot_dir(out, 1) / ckpt.WEIGHTS_FILE
    assert kept.read_bytes() == (out / ckpt.WEIGHTS_FILE).read_bytes()


def test_a_resume_after_a_partial_last_batch_goes_on(tiny_dataset, tmp_path):
    out = train(tiny_dataset, tmp_path / "p", tiny_args(epochs=1, batch_size=5))  # 7 steps
    train(tiny_dataset, out, tiny_args(epochs=2, batch_size=5))
    assert len(ckpt.read_history(out)) == 2


def test_a_resume_with_another_batch_size_is_refused_by_name(tiny_dataset, tmp_path):
    out = train(tiny_dataset, tmp_path / "b", tiny_args(epochs=1))
    with pytest.raises(RequestError, match="batch_size: 8 → 16"):
        train(tiny_dataset, out, tiny_args(epochs=2, batch_size=16))


def test_an_optimizer_behind_its_history_is_refused(tiny_dataset, tmp_path):
    """Only an optimizer ahead of the history was tested; one behind it (an older version's
    save killed between files) resumed AdamW from the wrong step."""
    two = train(tiny_dataset, tmp_path / "two", tiny_args(epochs=2))
    one = train(tiny_dataset, tmp_path / "one", tiny_args(epochs=1))
    (two / ckpt.MANIFEST_FILE).unlink()
    shutil.copy(one / ckpt.STATE_FILE, two / ckpt.STATE_FILE)
    with pytest.raises(CheckpointError, match=r"taken 4 steps .* records 2 epochs \(8 steps\)"):
        train(tiny_dataset, two, tiny_args(epochs=3))


def test_a_resumed_checkpoint_keeps_its_preset(tiny_dataset, tmp_path):
    """A load that dropped the preset rewrote config.json with "preset": null on resume,
    which changed the checkpoint's cache key."""
    out = train(tiny_dataset, tmp_path / "p", tiny_args(epochs=1, keep_epochs=()))
    model, config = ckpt.load(out)
    assert model.preset == "demo" and config.model["preset"] == "demo"
    train(tiny_dataset, out, tiny_args(epochs=2, keep_epochs=()))
    assert ckpt.read_config(out).model["preset"] == "demo"


def test_a_stored_null_transitions_means_the_default():
    assert training.stored_arguments({"transitions": None}, 4)["transitions"] == 4


def test_argument_boundaries():
    with pytest.raises(RequestError, match="keep_epochs="):
        tiny_args(keep_epochs=(0, 2))
    with pytest.raises(RequestError, match="lr="):
        tiny_args(lr=0.0)
    assert tiny_args(weight_decay=0.0).weight_decay == 0.0  # plain Adam is allowed
    # build_model's own arguments: its raw TypeError came out before
    for name in ("channels", "resolution", "arch", "preset"):
        with pytest.raises(RequestError, match=rf"overrides \['{name}'\]: the architecture"):
            tiny_args(overrides={**TINY_OVERRIDES, name: 3})
