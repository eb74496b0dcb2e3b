"""Cache keys: a content hash of everything that decides an analysis result.

key = sha256(canonical JSON of {request fields except paths and device, checkpoint content
fingerprints in request order, dataset fingerprint of the files used, code versions}).
Renaming or moving a checkpoint or dataset keeps the key; one changed byte of a checkpoint's
weights or config, of a dataset file used, or any request field changes it. The device is left
out (the same math on any device) and recorded in the result's provenance instead.

Cost: one sha256 pass over the checkpoint and dataset files the first time a process sees
them (memoized on path, size and mtime by ``file_digest``), then a few file stats.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coherence
from coherence.analysis.batch import check_window
from coherence.analysis.precision import tf32_allowed
from coherence.analysis.request import AnalysisRequest
from coherence.cache.layout import validate_key  # noqa: F401 (re-exported: keys.validate_key)
from coherence.errors import CheckpointError
from coherence.simulation.dataset import (
    DatasetInfo,
    dataset_files,
    file_digest,
    open_dataset,
    stat_signature,
)
from coherence.surrogates import checkpoint as ckpt

# Bump whenever the numbers an analysis produces would change (estimators, observables,
# standardization, batch assembly, result layout): every older cache entry then misses.
ANALYSIS_CODE_VERSION = "1"
# An estimator whose numbers changed gets a revision here instead: only its entries miss.
# ekfac-krylov 2: block 1 holds span(G) beside M̃⁻¹G (its spectrum; issue 14)
# ekfac-krylov 3: the SMSE map adds the residual correction R M̃⁻¹Rᵀ (krylov.residual_correction)
# cg 2: the true residual is refreshed every 50 iterations and decides convergence (f713e1f)
# ekfac 2: factors accumulated in float64, probes from the inputs' shape, a frozen bias keeps
#   its weight's block (fa921aa, 62a7389); also the preconditioner of `cg --cg-start
#   preconditioned`, which cg's revision covers
# krylov 2, cg 3: the reported spectrum is span(G)'s at 1 − 1e-4 (as subspace's), not of the
#   fuller block 1 the solve uses (the dominant-eigenvalue share no longer moves with them)
ESTIMATOR_REVISIONS = {"ekfac-krylov": 3, "cg": 3, "ekfac": 2, "krylov": 2}


def _checkpoint_digest(directory: str) -> str:
    path = Path(directory)
    missing = [n for n in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE) if not (path / n).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {directory}: missing {', '.join(missing)}; a checkpoint directory "
            f"holds {ckpt.CONFIG_FILE} and {ckpt.WEIGHTS_FILE} (train one with `coherence "
            "train`)"
        )
    # file_digest of each file, not pipeline.checkpoint_fingerprint: that one also hashes the
    # directory name, and renaming a checkpoint must keep its key
    digests = [
        f"{name}:{file_digest(path / name)}" for name in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE)
    ]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


_DATASETS: dict[tuple, DatasetInfo] = {}


def _open_dataset_memo(root: str) -> DatasetInfo:
    """open_dataset reads and validates every file's metadata (≈ 4 ms a file); the dashboard
    keys a request on every rerun, so reuse the result while no file's size or mtime moved."""
    stats = stat_signature(dataset_files(root))
    if any(size is None for _, size, *_ in stats):  # a file vanished while listing: no memo
        return open_dataset(root)
    signature = (str((Path(root) / "data").resolve()), *stats)
    if signature not in _DATASETS:
        if len(_DATASETS) >= 16:
            _DATASETS.clear()
        _DATASETS[signature] = open_dataset(root)
    return _DATASETS[signature]


def key_material(
    request: AnalysisRequest, *, code_version: str = ANALYSIS_CODE_VERSION
) -> dict[str, Any]:
    """The JSON object that ``request_key`` hashes; also validates that the inputs exist
    (every class in the split, the time window, the checkpoint files), so a bad request
    fails here with a RequestError instead of later in a background worker."""
    info = _open_dataset_memo(request.data)
    for class_name in request.classes:
        info.file(request.split, class_name)  # raises, listing the available classes
    check_window(info, request.t_start, request.n_steps)
    fields = request.to_dict()
    for name in ("checkpoints", "data", "device"):
        del fields[name]
    if fields["estimator"] in ESTIMATOR_REVISIONS:  # absent for the others: keys unchanged
        fields["estimator_revision"] = ESTIMATOR_REVISIONS[fields["estimator"]]
    if tf32_allowed():  # COHERENCE_TF32=1: results from TF32 products never serve IEEE ones
        fields["float32"] = "tf32"
    return {
        "request": fields,
        "checkpoints": [_checkpoint_digest(c) for c in request.checkpoints],
        "dataset": info.fingerprint(split=request.split, classes=request.classes),
        "code_version": code_version,
        "package_version": coherence.__version__,
    }


def canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace, non-finite floats refused: one text per value."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def request_key(request: AnalysisRequest, *, code_version: str = ANALYSIS_CODE_VERSION) -> str:
    """sha256 hex digest of ``key_material`` (see the module docstring)."""
    material = key_material(request, code_version=code_version)
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def unit_keys(
    request: AnalysisRequest,
    *,
    responses: tuple[str, ...] | None = None,
    code_version: str = ANALYSIS_CODE_VERSION,
) -> list[list[str]]:
    """Content keys of the request's units, ``[s][b]`` for checkpoint s and batch b.

    A unit (one checkpoint × one test trajectory) depends on everything a request key does
    except the other checkpoints and trajectories, so the same unit key comes back for any
    request that contains it: a subset of seeds or batches is assembled from cached units, and
    a killed job resumes from its finished ones. ``responses`` overrides the request's (a
    unit computed with more responses serves a request for fewer).
    """
    return unit_keys_of_responses(request, [responses], code_version=code_version)[0]


def unit_keys_of_responses(
    request: AnalysisRequest,
    options: Sequence[tuple[str, ...] | None],
    *,
    code_version: str = ANALYSIS_CODE_VERSION,
) -> list[list[list[str]]]:
    """``unit_keys`` for each tuple of responses in ``options`` (None: the request's own),
    reading the checkpoints' and the dataset's fingerprints once."""
    material = key_material(request, code_version=code_version)
    out = []
    for responses in options:
        fields = dict(material["request"])
        del fields["trajectories"]
        if responses is not None:
            fields["responses"] = list(responses)
        out.append(_unit_rows(request, material, fields))
    return out


def _unit_rows(
    request: AnalysisRequest, material: dict[str, Any], fields: dict[str, Any]
) -> list[list[str]]:
    keys = []
    for digest in material["checkpoints"]:
        row = []
        for trajectory in request.trajectories:
            unit = {
                "unit": fields,
                "checkpoint": digest,
                "trajectory": trajectory,
                "dataset": material["dataset"],
                "code_version": material["code_version"],
                "package_version": material["package_version"],
            }
            row.append(hashlib.sha256(canonical_json(unit).encode()).hexdigest())
        keys.append(row)
    return keys
