"""The demo's recipe: what `make run` builds on a fresh machine. No test imported
coherence.demo, so a mutant of any of its choices passed (a campaign found 7): the study it
runs must train into the names the demo lists, rebuild on regenerated data without adopting a
study's checkpoints, analyse one batch, keep the snapshots and sweeps its panels need; and a
dataset is reused only when it is the one the demo would simulate."""

from __future__ import annotations

import shutil

from coherence.demo import DemoSpec, _dataset_ready
from tests.fixtures import CE_CLASSES, simulate


def test_the_demo_study_is_the_demo_and_trains_into_its_own_names():
    demo = DemoSpec()
    spec = demo.study_spec()
    for arch in demo.architectures:
        for seed in demo.seeds:
            assert spec.checkpoint_name(arch, seed) == demo.checkpoint_name(arch, seed)
            args = demo.training_args(arch, seed)
            assert (args.preset, args.epochs, args.batch_size, args.keep_epochs) == (
                spec.preset,
                spec.epochs,
                spec.batch_size,
                spec.keep_epochs,
            )
    # regenerated data: retrain the demo's own names; never adopt a study's checkpoints
    assert spec.replace_foreign is True and spec.adopt is False
    assert (spec.batches, spec.device) == (demo.batches, "cpu") == (1, "cpu")
    assert (spec.archs, spec.seeds, spec.classes) == (demo.architectures, demo.seeds, demo.classes)
    assert (spec.dynamics_archs, spec.sweep_archs, spec.sweep_dampings) == (
        demo.dynamics_archs,
        demo.sweep_archs,
        demo.sweep_dampings,
    )


def test_a_dataset_is_reused_only_when_it_is_the_one_the_demo_would_simulate(tmp_path):
    data = simulate(tmp_path, "ce_demo", "euler", CE_CLASSES, snapshots=5, t_end=0.2)
    spec = DemoSpec(classes=CE_CLASSES, resolution=16, snapshots=5)
    assert _dataset_ready(data, spec)
    assert not _dataset_ready(tmp_path / "missing", spec)
    assert not _dataset_ready(data, DemoSpec(classes=CE_CLASSES, resolution=32, snapshots=5))
    assert not _dataset_ready(data, DemoSpec(classes=CE_CLASSES, resolution=16, snapshots=21))
    more = DemoSpec(classes=(*CE_CLASSES, "CE-KH"), resolution=16, snapshots=5)
    assert not _dataset_ready(data, more)
    partial = tmp_path / "no_valid"
    shutil.copytree(data, partial)
    for file in (partial / "data" / "valid").glob("CE-RP*"):
        file.unlink()  # a class without its valid split: training would refuse it
    assert not _dataset_ready(partial, spec)
