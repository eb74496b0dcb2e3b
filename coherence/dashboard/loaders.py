"""Cached loaders: everything the dashboard reads from disk or derives from a result.

Module level, as Streamlit's caches want. ``st.cache_resource`` for objects shared read-only
by every session (models, results, catalog: never copied, never mutated but for the
catalog's memo of model groups, immutable tuples a race at worst builds twice), ``st.cache_data``
for small arrays (copied per call). File-backed loaders take the path plus a cheap
signature (size and mtime), so a retrained checkpoint or regenerated dataset is re-read;
results are cached by request key, which already hashes every input file's bytes.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from coherence import report
from coherence.analysis.pipeline import AnalysisResult, prepare
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import result_file_pair
from coherence.analysis.scores import Scores, compute_scores
from coherence.analysis.summaries import DistanceCurve, influence_vs_distance
from coherence.cache.jobs import JobRunner
from coherence.dashboard.selection import Selection
from coherence.dashboard.workspace_scan import Catalog, scan_signature, scan_workspace
from coherence.simulation.dataset import DatasetInfo, dataset_files, open_dataset, stat_signature
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.registry import parameter_count
from coherence.surrogates.training import trained_transitions
from coherence.workspace import cache_dir, secure_tree


def file_signature(*paths: str | os.PathLike) -> tuple:
    """(path, size, mtime, inode) of each file: changes when a file is rewritten."""
    return stat_signature(paths)


# --------------------------------------------------------------------------- workspace ---


@st.cache_resource(show_spinner=False, max_entries=4)
def _catalog(root: str, signature: tuple) -> Catalog:
    return scan_workspace(root)


def catalog(root: str | os.PathLike) -> Catalog:
    """The workspace catalog, rescanned only when a dataset or checkpoint file changed."""
    return _catalog(str(root), scan_signature(root))


@st.cache_resource(show_spinner=False)
def job_runner(root: str) -> JobRunner:
    """One runner (one diskcache connection pool) per workspace, shared by all sessions.
    Its cache directory is checked first (``secure_tree``): entries of another user are
    refused (WorkspacePathError), group/other write permission is removed."""
    secure_tree(cache_dir(root))
    return JobRunner(root)


def is_cached(root: str | os.PathLike) -> Callable[[Selection], bool]:
    """Whether a selection's analysis (group A) shows without computing: how the default
    view prefers a computed result (``selection.default_selection(cached=…)``)."""
    return report.cached_in(root, job_runner(str(root)))


class _NotCached(LookupError):
    """Raised inside the cached loader so that a miss is never cached."""


@st.cache_resource(show_spinner=False, max_entries=16)
def _result(root: str, key: str, request_json: str) -> AnalysisResult:
    request = AnalysisRequest.from_dict(json.loads(request_json))
    result = job_runner(root).result(key, request)
    if result is None:
        raise _NotCached(key)
    return result


def result(root: str | os.PathLike, key: str, request: AnalysisRequest) -> AnalysisResult | None:
    """The cached analysis for ``key`` relabelled with ``request``'s names, or None."""
    try:
        return _result(str(root), key, json.dumps(request.to_dict(), sort_keys=True))
    except _NotCached:
        return None


@st.cache_resource(show_spinner=False, max_entries=32)
def _artifact(root: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    found = job_runner(root).artifact(key)
    if found is None:
        raise _NotCached(key)
    return found


def artifact(root: str | os.PathLike, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, metadata) of a finished background job of another kind (the counterfactual
    check), shared read-only by every session; None if not cached."""
    try:
        return _artifact(str(root), key)
    except _NotCached:
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _stored_request(root: str, key: str, stored: float) -> dict[str, Any] | None:
    return job_runner(root).store.peek_request(key)  # a listing: not a use (LRU order kept)


CACHED_LISTED = 50  # entries the sidebar lists: each costs a metadata read (≈ 2.5 ms)


def cached_result_count(root: str | os.PathLike) -> int:
    """How many results the workspace's cache holds (the listing shows CACHED_LISTED)."""
    return len(job_runner(str(root)).store.entries())


def cached_analyses(
    root: str | os.PathLike, limit: int | None = None
) -> list[tuple[str, float, dict]]:
    """The workspace's cached analyses, most recently used first, at most ``limit``
    (default CACHED_LISTED): (key, stored unix time, request as a dict). Each request is
    read once (from its result's JSON metadata only), and reading it is not a use."""
    runner = job_runner(str(root))
    out = []
    for entry in runner.store.entries()[: CACHED_LISTED if limit is None else limit]:
        request = _stored_request(str(root), entry["key"], float(entry["stored"] or 0.0))
        if request is not None:
            out.append((entry["key"], float(entry["stored"] or 0.0), request))
    return out


# ----------------------------------------------------------------------------- data -----


@st.cache_resource(show_spinner=False, max_entries=8)
def _dataset(path: str, signature: tuple) -> DatasetInfo:
    return open_dataset(path)


def dataset(path: str | os.PathLike) -> DatasetInfo:
    return _dataset(str(path), stat_signature(dataset_files(path)))


@st.cache_data(show_spinner=False, max_entries=64)
def _trajectory(path: str, signature: tuple, split: str, class_name: str, index: int):
    return dataset(path).load(split, class_name, [index])[0]


def trajectory(path: str | os.PathLike, split: str, class_name: str, index: int) -> np.ndarray:
    """States [T, F, H, W] of one trajectory (re-read when its file changes)."""
    info = dataset(path)
    signature = file_signature(info.file(split, class_name).path)
    return _trajectory(str(path), signature, split, class_name, int(index))


@st.cache_resource(show_spinner="Loading the analysis batches…", max_entries=8)
def _batch_inputs(request_json: str, signature: tuple) -> np.ndarray:
    request = AnalysisRequest.from_dict(json.loads(request_json))
    _, batches = prepare(request)
    return np.stack([b.inputs.double().numpy() for b in batches])


def batch_inputs(request: AnalysisRequest) -> np.ndarray:
    """Raw inputs [B, N, F, H, W] of every batch of the request (for the distance panel)."""
    text = json.dumps(request.to_dict(), sort_keys=True)
    return _batch_inputs(text, stat_signature(dataset_files(request.data, request.split)))


# --------------------------------------------------------------------------- models -----


def checkpoint_signature(path: str | os.PathLike) -> tuple:
    return file_signature(Path(path) / ckpt.CONFIG_FILE, Path(path) / ckpt.WEIGHTS_FILE)


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=12)
def _model(path: str, signature: tuple) -> tuple[torch.nn.Module, ckpt.CheckpointConfig]:
    return ckpt.load(path, device="cpu")


def model(path: str | os.PathLike) -> tuple[torch.nn.Module, ckpt.CheckpointConfig]:
    """(model in eval mode on the CPU, config); custom architectures are refused (no
    trust_code in the dashboard: importing a module runs its code)."""
    return _model(str(path), checkpoint_signature(path))


@st.cache_data(show_spinner=False, max_entries=64)
def _parameters(path: str, signature: tuple) -> int:
    return parameter_count(model(path)[0])


def parameters(path: str | os.PathLike) -> int:
    return _parameters(str(path), checkpoint_signature(path))


@st.cache_data(show_spinner=False, max_entries=64)
def _history(path: str, signature: tuple) -> list[dict[str, float]]:
    return ckpt.read_history(path)


def history(path: str | os.PathLike) -> list[dict[str, float]]:
    return _history(str(path), file_signature(Path(path) / ckpt.HISTORY_FILE))


@st.cache_data(show_spinner=False, max_entries=64)
def _trained_horizon(path: str, signature: tuple, name: str, snapshots: int) -> int | None:
    trained_here = ckpt.read_config(path).dataset.get("name") == name
    return trained_transitions(path, snapshots if trained_here else None)


def trained_horizon(path: str | os.PathLike, data: str | os.PathLike) -> int | None:
    """The last rollout horizon a checkpoint was trained to predict (its transitions per
    trajectory, the rollout starting at the first snapshot); None where its config does not
    say (nor, for an older config that left the count to the default, where it was trained
    on another dataset, whose snapshots decided it)."""
    info = dataset(data)
    signature = file_signature(Path(path) / ckpt.CONFIG_FILE)
    return _trained_horizon(str(path), signature, info.name, len(info.times))


@st.cache_resource(show_spinner=False, max_entries=8)  # shared read-only: no copy per call
def _test_states(
    path: str, signature: tuple, classes: tuple[str, ...], trajectories: tuple
) -> np.ndarray:
    return np.concatenate([dataset(path).load("test", c, list(trajectories)) for c in classes])


def test_states(path: str | os.PathLike, classes: tuple, trajectories: tuple) -> np.ndarray:
    """Whole test trajectories [C·B, T, F, H, W], class-major: the truth the rollouts of
    ``coherence.cache.tasks.ROLLOUT`` are drawn against."""
    return _test_states(str(path), stat_signature(dataset_files(path)), classes, trajectories)


# ---------------------------------------------------------------------- derived ---------


@st.cache_resource(show_spinner=False, max_entries=32)
def _scores(key: str, response: str, _result: AnalysisResult) -> Scores:
    spectra = _spectra_lists(_result)
    return compute_scores(_result.H_std[response], spectra)


def _spectra_lists(result: AnalysisResult) -> list[list[np.ndarray]] | None:
    """eig(QᵀηQ) per (checkpoint, batch) without the NaN padding; None if not computed."""
    rows = [[e[np.isfinite(e)] for e in per_batch] for per_batch in result.subspace_spectra]
    if any(e.size == 0 or not np.any(e > 0) for row in rows for e in row):
        return None
    return rows


def scores(key: str, result: AnalysisResult, response: str | None = None) -> Scores:
    """The §7 score table of one result (cached by request key, which fixes the numbers)."""
    return _scores(key, response or result.primary, result)


@st.cache_resource(show_spinner="Smoothing influence against input distance…", max_entries=16)
def _distance(key: str, response: str, _result: AnalysisResult) -> DistanceCurve:
    inputs = batch_inputs(_result.request)
    return influence_vs_distance(_result.H_std[response], inputs)


def distance_curve(key: str, result: AnalysisResult, response: str | None = None):
    return _distance(key, response or result.primary, result)


# ----------------------------------------------------------------------- downloads ------


def analysis_zip(result: AnalysisResult, stem: str) -> bytes:
    """The whole analysis as one zip: ``<stem>.npz`` (arrays) + ``<stem>.json`` (request,
    diagnostics, provenance): the result-file pair of `coherence analyze`."""
    buffer = io.BytesIO()
    arrays, metadata = result_file_pair(result)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}.npz", arrays)
        text = json.dumps(metadata, indent=2, default=_json_default)
        archive.writestr(f"{stem}.json", text + "\n")
    return buffer.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
