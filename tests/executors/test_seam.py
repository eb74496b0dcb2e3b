"""The executor seam without a cluster: address resolution, version refusal, address parsing
and the local executor being today's pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.analysis import pipeline
from coherence.cache import JobRunner, slots
from coherence.executors import ADDRESS_ENV, ray_address
from coherence.executors.local import LocalExecutor
from tests.fixtures import quick_request, torch_threads

ray_cluster = pytest.importorskip("coherence.executors.ray_cluster")
ray_connect = pytest.importorskip("coherence.executors.ray_connect")


def test_the_address_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert ray_address() is None
    assert ray_address("  ") is None
    monkeypatch.setenv(ADDRESS_ENV, "head:6379")
    assert ray_address() == "head:6379"
    assert ray_address("other:1") == "other:1"


def test_addresses_are_parsed_for_the_reachability_probe():
    assert ray_connect._host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_connect._host_port("ray://head:10001") == ("head", 10001)
    assert ray_connect._host_port("[::1]:6379") == ("::1", 6379)
    assert ray_connect._host_port("auto") is None


def test_a_reply_of_another_version_is_refused_naming_both():
    mine = ray_connect.worker_versions()
    ray_connect.check_versions(dict(mine), "unit x")  # the same: accepted
    other = {**mine, "coherence": "0.0.1"}
    with pytest.raises(ray_connect.VersionMismatch) as caught:
        ray_connect.check_versions(other, "unit (checkpoint a, trajectory 3)")
    message = str(caught.value)
    assert "unit (checkpoint a, trajectory 3)" in message
    assert "coherence '0.0.1'" in message and f"coherence {mine['coherence']!r}" in message
    code = {**mine, "analysis_code": "0"}
    with pytest.raises(ray_connect.VersionMismatch, match="analysis_code '0'"):
        ray_connect.check_versions(code, "unit")


def test_bad_settings_are_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv(ray_cluster.GPUS_ENV, "half")
    executor = ray_cluster.RayExecutor("head:6379")
    with pytest.raises(ray_cluster.ClusterError, match="COHERENCE_RAY_GPUS='half'"):
        executor._gpus(None, "auto")
    monkeypatch.setenv(ray_cluster.CPUS_ENV, "0")
    with pytest.raises(ray_cluster.ClusterError, match="COHERENCE_RAY_CPUS"):
        ray_cluster.RayExecutor("head:6379")


def test_the_local_executor_is_the_pipeline(checkpoint, tiny_dataset, workspace, monkeypatch):
    monkeypatch.setenv(slots.THREADS_ENV, "2")  # not the load of the moment: the same bits
    request = quick_request(checkpoint, tiny_dataset)
    via_runner = JobRunner(workspace).run(request, executor=LocalExecutor())
    with torch_threads(slots.threads_per_job()):  # the runner's slot threads: the same bits
        direct = pipeline.run_analysis(request)
    np.testing.assert_array_equal(via_runner.H["smse"], direct.H["smse"])


def test_a_nodes_copy_of_unshipped_data_must_be_the_drivers(tiny_dataset, tmp_path):
    """Data too large to ship is read on the node at the same path; a different copy there
    was trained on silently, and a study then refused the checkpoint as "trained otherwise"
    after the training."""
    import shutil

    from coherence.errors import RequestError
    from coherence.executors.ray_tasks import _check_node_copy
    from coherence.simulation.dataset import files_fingerprint

    paths, _ = ray_cluster._dataset_files(tiny_dataset, ())
    meta = {
        "data_path": str(tiny_dataset),
        "data_expected": {"files": sorted(paths), "fingerprint": files_fingerprint(paths.values())},
    }
    _check_node_copy(tiny_dataset, meta, "node-a")  # the same files: accepted
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    first = copy / sorted(paths)[0]
    first.write_bytes(first.read_bytes()[:-1] + b"\x00")  # one byte differs
    with pytest.raises(RequestError, match="on Ray worker node-b holds other files than the"):
        _check_node_copy(copy, meta, "node-b")
    first.unlink()
    with pytest.raises(RequestError, match=f"lacks {sorted(paths)[0]}"):
        _check_node_copy(copy, meta, "node-b")
