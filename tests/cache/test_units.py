"""Unit-level caching: every finished (checkpoint, batch) is stored under its own content key,
so a subset of a cached selection (fewer seeds, batches or responses) is assembled without
computing, and a job that stopped resumes from its finished units. Real tiny analyses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from coherence.analysis import pipeline
from coherence.cache import JobRunner
from coherence.cache.keys import request_key, unit_keys
from tests.fixtures import quick_request


@pytest.fixture
def two_checkpoints(checkpoint, tmp_path):
    other = tmp_path / "checkpoints" / "unet_tiny_copy"
    shutil.copytree(checkpoint, other)
    # a different checkpoint: perturb its weights through a real (tiny) retrain is costly;
    # a copy with the same bytes would share unit keys, so rename-invariance is tested too
    return checkpoint, other


def count_units(monkeypatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    original = pipeline.compute_unit

    def counting(model, batch, request, s, b, **kwargs):
        calls.append((s, b))
        return original(model, batch, request, s, b, **kwargs)

    monkeypatch.setattr(pipeline, "compute_unit", counting)
    return calls


def test_a_subset_of_seeds_batches_and_responses_is_assembled_without_computing(
    checkpoint, tiny_dataset, workspace, tmp_path, monkeypatch
):
    runner = JobRunner(workspace)
    full = quick_request(
        checkpoint, tiny_dataset, trajectories=(0, 1), responses=("smse", "mass", "energy")
    )
    whole = runner.run(full)
    calls = count_units(monkeypatch)

    subset = quick_request(checkpoint, tiny_dataset, trajectories=(1,), responses=("mass",))
    assert runner.status(request_key(subset)).state == "missing"
    assembled = runner.materialize(subset)
    assert calls == []  # nothing computed
    assert runner.status(request_key(subset)).state == "done"
    np.testing.assert_array_equal(assembled.H["mass"][0, 0], whole.H["mass"][0, 1])
    np.testing.assert_array_equal(assembled.H_std["mass"][0, 0], whole.H_std["mass"][0, 1])
    assert assembled.diagnostics[0][0] == whole.diagnostics[0][1]
    # the same numbers as computing the subset afresh
    fresh = pipeline.run_analysis(subset)
    np.testing.assert_allclose(assembled.H["mass"], fresh.H["mass"], rtol=1e-12, atol=0)


def test_units_of_two_responses_serve_one_and_another_order(
    checkpoint, tiny_dataset, workspace, monkeypatch
):
    """Units computed for SMSE and mass served only a request for all three responses'
    subsets; SMSE alone was recomputed (a walk-through). Any cached superset, in any
    order, serves now, and the count of cached units says so before the job."""
    runner = JobRunner(workspace)
    runner.store.clear()
    two = quick_request(checkpoint, tiny_dataset, trajectories=(0,), responses=("smse", "mass"))
    whole = runner.run(two)
    calls = count_units(monkeypatch)
    for responses in (("smse",), ("mass", "smse"), ("mass",)):
        fewer = quick_request(checkpoint, tiny_dataset, trajectories=(0,), responses=responses)
        assert runner.cached_unit_count(fewer) == (1, 1)
        assembled = runner.materialize(fewer)
        assert assembled is not None and set(assembled.H) == set(responses)
        for response in responses:
            np.testing.assert_array_equal(assembled.H[response], whole.H[response])
    assert calls == []  # nothing computed
    energy = quick_request(checkpoint, tiny_dataset, trajectories=(0,), responses=("energy",))
    assert runner.cached_unit_count(energy) == (0, 1)  # not held by the SMSE + mass units


def test_a_job_resumes_from_its_finished_units(checkpoint, tiny_dataset, workspace, monkeypatch):
    runner = JobRunner(workspace)
    first = quick_request(checkpoint, tiny_dataset, trajectories=(0,))
    part = runner.run(first)
    calls = count_units(monkeypatch)
    wider = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1))
    result = runner.run(wider)
    assert calls == [(0, 1)]  # batch 0 came from the cache
    np.testing.assert_array_equal(result.H["smse"][0, 0], part.H["smse"][0, 0])


def test_a_unit_stored_before_a_failure_is_not_recomputed(
    checkpoint, tiny_dataset, workspace, monkeypatch
):
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1))
    original = pipeline.compute_unit

    def dies_on_second(model, batch, req, s, b, **kwargs):
        if b == 1:
            raise KeyboardInterrupt  # what a kill or an interrupt looks like mid-job
        return original(model, batch, req, s, b, **kwargs)

    monkeypatch.setattr(pipeline, "compute_unit", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        runner.run(request)
    keys = unit_keys(request)
    assert runner.store.has_unit(keys[0][0]) and not runner.store.has_unit(keys[0][1])
    monkeypatch.undo()
    calls = count_units(monkeypatch)
    runner.run(request)
    assert calls == [(0, 1)]


def test_unit_keys_follow_content_not_names(two_checkpoints, tiny_dataset):
    a, b = two_checkpoints
    request = quick_request(a, tiny_dataset, checkpoints=(str(a), str(b)), trajectories=(0, 1))
    keys = unit_keys(request)
    assert keys[0] == keys[1]  # same bytes under another name: the same units
    assert len({keys[0][0], keys[0][1]}) == 2  # other trajectory: another unit
    other_lambda = unit_keys(quick_request(a, tiny_dataset, trajectories=(0, 1), damping=1e-2))
    assert not set(other_lambda[0]) & set(keys[0])
