"""Result files: an npz of arrays plus a JSON sidecar (request, diagnostics, provenance).

npz keys: ``H`` and ``H_std`` [checkpoints, batches, T, C, T, C] for the first response, and
``H__<response>`` / ``H_std__<response>`` for every response; ``times``, ``steps``, ``classes``,
``checkpoints``, ``distances`` [B, N, N], ``top_eigenvalues`` [S, B], ``subspace_spectra``
[S, B, N]. Strings are stored as fixed-width unicode, so loading never needs pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coherence.errors import RequestError
from coherence.io import atomic_write_bytes, check_folder_for
from coherence.workspace import refuse_inside_inputs

if TYPE_CHECKING:  # request.py imports torch; result data and exports do not need it
    from coherence.analysis.request import AnalysisRequest

RESULT_SCHEMA = 1


@dataclass(frozen=True)
class AnalysisResult:
    """Everything a result file holds (npz arrays + JSON metadata, see below)."""

    request: AnalysisRequest
    H: dict[str, np.ndarray]  # response -> [S, B, T, C, T, C] raw
    H_std: dict[str, np.ndarray]  # response -> standardized, same shape
    steps: np.ndarray  # [T] snapshot index of each input
    times: np.ndarray  # [T] physical time of each input
    classes: tuple[str, ...]
    checkpoints: tuple[str, ...]  # checkpoint names (directory names)
    distances: np.ndarray  # [B, N, N] input distance d(n, m) (METHOD.md §6.4)
    top_eigenvalues: np.ndarray  # [S, B] largest eigenvalue of η + λI (NaN if not asked)
    subspace_spectra: np.ndarray  # [S, B, N] eig(QᵀηQ) descending, NaN-padded
    diagnostics: list[list[dict[str, Any]]]  # [S][B] estimator diagnostics
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.request.responses[0]


@dataclass(frozen=True)
class UnitResult:
    """One (checkpoint s, batch b) of a request: the piece a worker computes and sends back
    (as npz arrays + JSON, never a pickle); ``assemble`` stacks them into an AnalysisResult."""

    checkpoint_index: int
    batch_index: int
    H: dict[str, np.ndarray]  # response -> [T, C, T, C] raw
    H_std: dict[str, np.ndarray]  # response -> standardized
    top_eigenvalue: float  # NaN if not asked
    spectrum: np.ndarray  # eig(QᵀηQ) descending (empty for estimators without a subspace)
    diagnostics: dict[str, Any]
    checkpoint_fingerprint: str = ""

    def to_parts(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"spectrum": np.asarray(self.spectrum, dtype=np.float64)}
        for response in self.H:
            arrays[f"H__{response}"] = self.H[response]
            arrays[f"H_std__{response}"] = self.H_std[response]
        metadata = {
            "schema": RESULT_SCHEMA,
            "checkpoint_index": self.checkpoint_index,
            "batch_index": self.batch_index,
            "responses": list(self.H),
            "top_eigenvalue": self.top_eigenvalue,
            "diagnostics": self.diagnostics,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
        }
        return arrays, metadata

    @classmethod
    def from_parts(cls, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> UnitResult:
        if metadata.get("schema") != RESULT_SCHEMA:
            raise RequestError(
                f"unit result schema {metadata.get('schema')!r} is not {RESULT_SCHEMA}; "
                "the worker runs another version of coherence"
            )
        responses = metadata["responses"]
        return cls(
            checkpoint_index=int(metadata["checkpoint_index"]),
            batch_index=int(metadata["batch_index"]),
            H={r: arrays[f"H__{r}"] for r in responses},
            H_std={r: arrays[f"H_std__{r}"] for r in responses},
            top_eigenvalue=float(metadata["top_eigenvalue"]),
            spectrum=arrays["spectrum"],
            diagnostics=metadata["diagnostics"],
            checkpoint_fingerprint=str(metadata.get("checkpoint_fingerprint", "")),
        )


ARRAYS_DIGEST = "npz_sha256"  # the sidecar's record of the R.npz it describes


def sidecar_path(npz_path: str | os.PathLike) -> Path:
    path = Path(npz_path)
    return path.with_suffix(".json")


def result_arrays(result: AnalysisResult) -> dict[str, np.ndarray]:
    arrays = {
        "H": result.H[result.primary],
        "H_std": result.H_std[result.primary],
        "times": result.times,
        "steps": result.steps,
        "classes": np.asarray(result.classes, dtype=str),
        "checkpoints": np.asarray(result.checkpoints, dtype=str),
        "distances": result.distances,
        "top_eigenvalues": result.top_eigenvalues,
        "subspace_spectra": result.subspace_spectra,
    }
    for response in result.request.responses:
        arrays[f"H__{response}"] = result.H[response]
        arrays[f"H_std__{response}"] = result.H_std[response]
    return arrays


def result_metadata(result: AnalysisResult) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "request": result.request.to_dict(),
        "diagnostics": result.diagnostics,
        "provenance": result.provenance,
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def check_result_path(path: str | os.PathLike) -> Path:
    """The result file's path, refused when it cannot be written as one: checked before a
    job starts, so a typo is not found only after minutes of computing."""
    path = Path(path)
    if path.suffix != ".npz":
        raise RequestError(f"--out {path}: result files end in .npz (e.g. results.npz)")
    if path.is_dir():
        raise RequestError(f"--out {path}: that is a folder; give a file, e.g. {path / 'R.npz'}")
    refuse_inside_inputs(path, "results")
    check_folder_for(path)
    sidecar = sidecar_path(path)
    kind = _sidecar_kind(sidecar) if sidecar.exists() else "result"
    if kind != "result":  # --out <dir>/config.npz replaced a checkpoint's config.json
        what = "folder" if sidecar.is_dir() else "file"
        raise RequestError(
            f"--out {path}: its sidecar {sidecar} exists and {kind}; writing the result "
            f"would replace it. Choose another file name, or remove that {what} if it is an "
            "old result's"
        )
    if path.exists() and not _holds_a_result(path):  # a user's own arrays were replaced
        raise RequestError(
            f"--out {path}: the file exists and is not a result (no result's arrays in it); "
            "writing the result would replace it. Choose another file name, or remove that "
            "file if it is no longer needed"
        )
    return path


def _holds_a_result(path: Path) -> bool:
    """Whether an existing R.npz is a result's (an earlier run's, which a rerun replaces):
    an npz archive holding a result's arrays, read without unpickling."""
    try:
        loaded = np.load(path, allow_pickle=False)  # an .npy's bare array, or an archive
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return False
    with loaded:
        return {"steps", "times", "classes", "checkpoints"} <= set(loaded.files)


def _sidecar_kind(path: Path) -> str:
    """'result' when ``path`` holds a result's JSON metadata (this version's or an older
    one's), else what it is, as the refusal says it."""
    if path.is_dir():
        return "is a folder"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError):
        return "cannot be read as JSON"
    if isinstance(metadata, dict) and {"request", "provenance"} <= set(metadata):
        return "result"
    return "is not a result's"


def result_file_pair(result: AnalysisResult) -> tuple[bytes, dict[str, Any]]:
    """The bytes of R.npz and the metadata of R.json, which records the digest of those
    bytes (``ARRAYS_DIGEST``): what `coherence analyze` writes and the dashboard's zip
    holds, so that either pair is checked the same way by ``load_result``."""
    arrays = npz_bytes(result_arrays(result))
    return arrays, {**result_metadata(result), ARRAYS_DIGEST: hashlib.sha256(arrays).hexdigest()}


def save_result(result: AnalysisResult, path: str | os.PathLike) -> Path:
    """Write R.npz and R.json atomically (each to a temporary name, then renamed)."""
    path = check_result_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, metadata = result_file_pair(result)
    # a kill between the two writes leaves the new R.npz beside the old R.json, which
    # ``load_result`` refuses by the digest the sidecar records (one without it goes first)
    sidecar = sidecar_path(path)  # none, or a result's (check_result_path): replaced below
    try:
        if ARRAYS_DIGEST not in json.loads(sidecar.read_text()):
            sidecar.unlink()
    except (OSError, ValueError, TypeError):
        pass
    atomic_write_bytes(path, arrays)
    atomic_write_bytes(sidecar, (json.dumps(metadata, indent=2) + "\n").encode())
    return path


def result_from_parts(arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> AnalysisResult:
    """Rebuild an AnalysisResult from its arrays and JSON metadata (cache and files alike)."""
    if metadata.get("schema") != RESULT_SCHEMA:
        raise RequestError(
            f"result schema {metadata.get('schema')!r} is not {RESULT_SCHEMA}; recompute it"
        )
    from coherence.analysis.request import AnalysisRequest

    request = AnalysisRequest.from_dict(metadata["request"])
    return AnalysisResult(
        request=request,
        H={r: arrays[f"H__{r}"] for r in request.responses},
        H_std={r: arrays[f"H_std__{r}"] for r in request.responses},
        steps=arrays["steps"],
        times=arrays["times"],
        classes=tuple(str(c) for c in arrays["classes"]),
        checkpoints=tuple(str(c) for c in arrays["checkpoints"]),
        distances=arrays["distances"],
        top_eigenvalues=arrays["top_eigenvalues"],
        subspace_spectra=arrays["subspace_spectra"],
        diagnostics=metadata["diagnostics"],
        provenance=metadata["provenance"],
    )


def load_result(path: str | os.PathLike) -> AnalysisResult:
    """Read R.npz + R.json (never unpickling)."""
    path = Path(path)
    side = sidecar_path(path)
    for item in (path, side):
        if not item.is_file():
            raise RequestError(f"{item}: missing; a result is R.npz plus its sidecar R.json")
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        metadata = json.loads(side.read_text())
    except (ValueError, OSError) as exc:
        raise RequestError(f"{path}: unreadable result ({exc}); recompute it") from exc
    recorded = metadata.get(ARRAYS_DIGEST) if isinstance(metadata, dict) else None
    if recorded is not None and recorded != hashlib.sha256(raw).hexdigest():
        raise RequestError(
            f"{side} does not describe {path} (a write of the pair was interrupted, or one "
            "file was replaced); rerun the `coherence analyze` that wrote them to write both "
            "again (in its workspace the result is cached and served in seconds)"
        )
    return result_from_parts(arrays, metadata)
