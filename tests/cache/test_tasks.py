"""Jobs of another kind (coherence.cache.tasks): the counterfactual check keyed by content,
run by the same worker machinery, stored as npz + JSON (a planted entry is refused)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from coherence.analysis.verify import counterfactual_check
from coherence.cache import JobRunner
from coherence.cache.tasks import COUNTERFACTUAL, counterfactual_spec
from coherence.errors import RequestError
from tests.fixtures import TINY_CLASSES


def spec(checkpoint, data, **changes) -> dict:
    fields = dict(
        checkpoint=checkpoint,
        data=data,
        classes=TINY_CLASSES,
        trajectory=0,
        t_start=0,
        n_steps=2,
        perturbation=1,
        response="smse",
        estimator="subspace",
        damping=1e-4,
        rtol=None,
    )
    return counterfactual_spec(**{**fields, **changes})


def test_task_keys_follow_content_and_refuse_bad_specs(checkpoint, tiny_dataset, workspace):
    runner = JobRunner(workspace)
    key = runner.task_key(COUNTERFACTUAL.name, spec(checkpoint, tiny_dataset))
    moved = checkpoint.parent / "renamed"
    checkpoint.rename(moved)
    assert runner.task_key(COUNTERFACTUAL.name, spec(moved, tiny_dataset)) == key
    other = runner.task_key(COUNTERFACTUAL.name, spec(moved, tiny_dataset, perturbation=0))
    assert other != key
    with pytest.raises(RequestError, match="perturbation=9"):
        runner.task_key(COUNTERFACTUAL.name, spec(moved, tiny_dataset, perturbation=9))
    with pytest.raises(RequestError, match="job kind 'nope'"):
        runner.task_key("nope", spec(moved, tiny_dataset))


@pytest.mark.slow
def test_a_check_job_runs_in_the_worker_and_matches_the_engine(checkpoint, tiny_dataset, workspace):
    from coherence.analysis.batch import assemble_batch
    from coherence.simulation.dataset import open_dataset
    from coherence.surrogates import checkpoint as ckpt

    runner = JobRunner(workspace)
    job = spec(checkpoint, tiny_dataset)
    key = runner.submit_task(COUNTERFACTUAL.name, job)
    assert runner.submit_task(COUNTERFACTUAL.name, job) == key  # joins, no second job
    deadline = time.monotonic() + 120
    while (status := runner.status(key)).state != "done":
        assert status.state == "running", status
        assert time.monotonic() < deadline
        time.sleep(0.2)
    arrays, metadata = runner.artifact(key)
    assert metadata["kind"] == "counterfactual" and metadata["spec"] == job
    batch = assemble_batch(open_dataset(tiny_dataset), TINY_CLASSES, 0, 0, 2)
    model, _ = ckpt.load(checkpoint)
    direct = counterfactual_check(
        model, batch.inputs, batch.targets, perturbation=1, estimator="subspace"
    )
    np.testing.assert_allclose(arrays["rel_errors"], direct.rel_errors, rtol=1e-6)
    assert runner.store.computations(key) == 1


def test_a_pickled_artifact_is_never_loaded(workspace):
    runner = JobRunner(workspace)
    key = "b" * 64
    runner.store._cache.set(f"artifact:{key}", pickle.dumps({"x": 1}), retry=True)
    assert runner.artifact(key) is None
    assert runner.status(key).state == "missing"


def test_rollouts_are_keyed_by_content_and_match_the_model_rolled_out_directly(
    checkpoint, tiny_dataset, workspace
):
    """The Rollout panel's job: every seed's one-step and rollout errors over whole test
    trajectories, cached on disk (it lived in the server's memory, recomputed after every
    restart), keyed by the files' contents, computed once."""
    import shutil

    import torch

    from coherence.cache.tasks import ROLLOUT, rollout_spec
    from coherence.simulation.dataset import open_dataset
    from coherence.surrogates import checkpoint as ckpt
    from coherence.surrogates.rollout import rollout_errors

    runner = JobRunner(workspace)
    twin = checkpoint.parent / "twin"
    shutil.copytree(checkpoint, twin)  # the same weights under another name: same rollouts
    job = rollout_spec([checkpoint, twin], tiny_dataset, TINY_CLASSES, [0])
    key = runner.task_key(ROLLOUT.name, job)
    assert (
        runner.task_key(
            ROLLOUT.name, rollout_spec([twin, checkpoint], tiny_dataset, TINY_CLASSES, [0])
        )
        == key
    )
    assert (
        runner.task_key(
            ROLLOUT.name, rollout_spec([checkpoint], tiny_dataset, TINY_CLASSES[:2], [0])
        )
        != key
    )
    with pytest.raises(RequestError, match=r"CE-XX"):
        runner.task_key(ROLLOUT.name, rollout_spec([checkpoint], tiny_dataset, ["CE-XX"], [0]))
    with pytest.raises(RequestError, match="'trajectories' is missing or malformed"):
        runner.task_key(ROLLOUT.name, rollout_spec([checkpoint], tiny_dataset, TINY_CLASSES, []))
    arrays, metadata = runner.run_task(ROLLOUT.name, job)
    assert metadata["kind"] == "rollout" and runner.store.computations(key) == 1
    info = open_dataset(tiny_dataset)
    states = np.concatenate([info.load("test", c, [0]) for c in TINY_CLASSES])
    model, _ = ckpt.load(checkpoint)
    direct = rollout_errors(model, torch.from_numpy(states).float())
    for s in range(2):  # both seeds (here one model twice), rows class-major
        np.testing.assert_allclose(arrays["one_step"][s], direct.one_step, rtol=1e-5)
        np.testing.assert_allclose(arrays["rollout"][s], direct.rollout, rtol=1e-5)
        np.testing.assert_allclose(arrays["prediction"][s], direct.prediction, rtol=1e-5)
    again, _ = runner.run_task(ROLLOUT.name, job)  # from the disk cache, not recomputed
    assert runner.store.computations(key) == 1
    np.testing.assert_array_equal(again["rollout"], arrays["rollout"])


def test_a_task_status_reads_only_its_metadata(checkpoint, tiny_dataset, workspace, monkeypatch):
    """A done job's status (asked on every run of the Rollout and Validation tabs) unpacked
    its whole stored result, every seed's predicted fields; it reads the metadata alone, as
    an analysis's status does."""
    from coherence.cache import blobs, store
    from coherence.cache.tasks import ROLLOUT, rollout_spec

    runner = JobRunner(workspace)
    job = rollout_spec([checkpoint], tiny_dataset, TINY_CLASSES, [0])
    runner.run_task(ROLLOUT.name, job)
    key = runner.task_key(ROLLOUT.name, job)

    def unpacked(*args, **kwargs):
        raise AssertionError("the arrays were read")

    monkeypatch.setattr(store, "unpack_blob", unpacked)
    monkeypatch.setattr(blobs, "unpack_blob", unpacked)
    status = runner.status(key)
    assert status.state == "done" and 0 <= runner.store.artifact_age(key) < 600
    assert runner.store.artifact_age("c" * 64) is None


def test_rollouts_and_checks_refuse_weights_their_manifest_does_not_record(
    checkpoint, tiny_dataset, workspace
):
    """The rollouts and the counterfactual check loaded a checkpoint bare: weights changed
    after the save (the manifest records others) were rolled out and shown as normal,
    where the analysis refuses them (a hostile-workspace campaign)."""
    from safetensors.torch import load_file, save_file

    from coherence.cache.tasks import ROLLOUT, rollout_spec
    from coherence.errors import CheckpointError
    from coherence.surrogates import checkpoint as ckpt

    weights = checkpoint / ckpt.WEIGHTS_FILE
    save_file({k: 2 * v for k, v in load_file(weights).items()}, weights)
    runner = JobRunner(workspace)
    with pytest.raises(CheckpointError, match="not the set that was saved together"):
        runner.run_task(ROLLOUT.name, rollout_spec([checkpoint], tiny_dataset, TINY_CLASSES, [0]))
    check = spec(checkpoint, tiny_dataset, estimator="euclidean")
    with pytest.raises(CheckpointError, match="not the set that was saved together"):
        runner.run_task(COUNTERFACTUAL.name, check)
