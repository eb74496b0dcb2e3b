"""Cache entries as bytes: one uncompressed npz of arrays plus ``__metadata__`` (UTF-8 JSON).

Results, units and task artifacts share this safe form: loaded with ``allow_pickle=False``,
the metadata must name the entry's key and its creation time (a blob copied under another key
is refused), and a result's metadata is checked against the expected schema. Anything else
raises ``CacheCorruptionError``; the store then reports, deletes and treats it as a miss.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import replace
from typing import IO, Any

import numpy as np
import torch

from coherence.analysis.results import (
    RESULT_SCHEMA,
    AnalysisResult,
    UnitResult,
    result_arrays,
    result_from_parts,
)
from coherence.cache.safedisk import CacheCorruptionError, NewerEntryError
from coherence.errors import CoherenceError

METADATA_ARRAY = "__metadata__"
NPZ_MAGIC = b"PK\x03\x04"  # an npz is a zip archive
PICKLE_PROTOCOL_2_OR_LATER = b"\x80"


def _pack(arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> bytes:
    """``arrays`` plus the JSON ``metadata`` as the last member, in one uncompressed npz."""
    arrays[METADATA_ARRAY] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _check_cache_field(metadata: Any, key: str) -> None:
    cache = metadata.get("cache") if isinstance(metadata, dict) else None
    if not isinstance(cache, dict) or cache.get("key") != key:
        raise CacheCorruptionError("metadata does not name this key")
    if not isinstance(cache.get("created"), float | int):
        raise CacheCorruptionError("metadata has no creation time")


def encode_result(key: str, result: AnalysisResult, created: float) -> bytes:
    """One npz blob (uncompressed: float64 influence values barely compress and loading
    stays a memcpy). ``H``/``H_std`` are dropped: they repeat ``H__<first response>``."""
    arrays = result_arrays(result)
    arrays.pop("H")
    arrays.pop("H_std")
    metadata = {
        "schema": RESULT_SCHEMA,
        "request": result.request.to_dict(),
        "diagnostics": result.diagnostics,
        "provenance": result.provenance,
        "cache": {"key": key, "created": created},
    }
    return _pack(arrays, metadata)


def read_entry_metadata(archive: Any, key: str) -> dict[str, Any]:
    """Any entry's metadata (result, unit or task artifact) from its open npz, without
    reading its arrays; it must name ``key`` and its creation time."""
    if METADATA_ARRAY not in archive.files:
        raise CacheCorruptionError(f"npz has no {METADATA_ARRAY}")
    raw = archive[METADATA_ARRAY]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CacheCorruptionError(f"{METADATA_ARRAY} is {raw.dtype}{list(raw.shape)}")
    metadata = json.loads(raw.tobytes().decode())
    _check_cache_field(metadata, key)
    return metadata


def read_metadata(archive: Any, key: str) -> dict[str, Any]:
    """A result's metadata from its open npz, checked against the result schema."""
    metadata = read_entry_metadata(archive, key)
    expected = {"schema": int, "request": dict, "diagnostics": list, "provenance": dict}
    for name, kind in expected.items():
        if not isinstance(metadata.get(name), kind):
            raise CacheCorruptionError(f"metadata field {name!r} should be a {kind.__name__}")
    _check_schema(metadata["schema"], "result")
    return metadata


def _check_schema(schema: Any, what: str) -> None:
    """A result's or unit's schema: a newer one is NewerEntryError (kept for the newer
    coherence), any other than ours CacheCorruptionError."""
    if isinstance(schema, int) and schema > RESULT_SCHEMA:
        raise NewerEntryError(
            f"written by a newer coherence ({what} schema {schema}, this one reads "
            f"{RESULT_SCHEMA}); upgrade coherence to read it"
        )
    if schema != RESULT_SCHEMA:
        raise CacheCorruptionError(f"{what} schema {schema!r} is not {RESULT_SCHEMA}")


# what reading a damaged npz raises: a truncated or bit-flipped blob fails in zipfile (bad
# archive, CRC mismatch) or zlib, not only in numpy's own checks
READ_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


def open_npz(source: bytes | IO[bytes]) -> Any:
    """np.load of a cached entry's bytes, without pickles, refusing what is no npz at all
    with what it is: numpy reads any other bytes as a pickle and says "This file contains
    pickled (object) data", which named a damaged or written-over file a pickled entry."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    start = handle.read(len(NPZ_MAGIC))
    handle.seek(0)
    if start != NPZ_MAGIC:
        what = "a pickle stream" if start.startswith(PICKLE_PROTOCOL_2_OR_LATER) else "no npz"
        raise CacheCorruptionError(
            f"{what} (it starts {start!r}, an npz {NPZ_MAGIC!r}): damaged or written over"
        )
    return np.load(handle, allow_pickle=False)


def keyed(result: AnalysisResult, key: str) -> AnalysisResult:
    """``result`` with its cache key in the provenance: a result read from the cache has it,
    so one just computed and stored gets it too (their .json files differed)."""
    return replace(result, provenance={**result.provenance, "cache_key": key})


def decode_result(key: str, blob: bytes) -> AnalysisResult:
    """Parse a blob written by ``encode_result`` (no pickle); CacheCorruptionError if not."""
    try:
        with open_npz(blob) as archive:
            metadata = read_metadata(archive, key)
            arrays = {name: archive[name] for name in archive.files if name != METADATA_ARRAY}
        fields = metadata["request"]
        if fields.get("device") == "cuda" and not torch.cuda.is_available():
            # computed on a GPU elsewhere; the device is not part of the key
            metadata["request"] = {**fields, "device": "auto"}
        return keyed(result_from_parts(arrays, metadata), key)
    except CacheCorruptionError:
        raise
    except READ_ERRORS as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None


def encode_unit(key: str, unit: UnitResult, created: float) -> bytes:
    """A unit as one npz blob with its JSON metadata (same safe form as a result)."""
    arrays, metadata = unit.to_parts()
    return _pack(arrays, {**metadata, "cache": {"key": key, "created": created}})


def encode_artifact(
    key: str, arrays: dict[str, np.ndarray], metadata: dict, created: float
) -> bytes:
    """A task's named numeric arrays and JSON object as one blob (same safe form)."""
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    if METADATA_ARRAY in payload or any(v.dtype.hasobject for v in payload.values()):
        raise TypeError("artifact arrays must be plain numeric arrays")
    return _pack(payload, {**metadata, "cache": {"key": key, "created": created}})


def unpack_blob(key: str, blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) of a unit or artifact blob (npz + JSON, no pickle); the metadata
    must name ``key`` and its creation time. CacheCorruptionError otherwise."""
    try:
        with open_npz(blob) as archive:
            if METADATA_ARRAY not in archive.files:
                raise CacheCorruptionError(f"npz has no {METADATA_ARRAY}")
            metadata = json.loads(archive[METADATA_ARRAY].tobytes().decode())
            arrays = {name: archive[name] for name in archive.files if name != METADATA_ARRAY}
    except CacheCorruptionError:
        raise
    except READ_ERRORS as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None
    _check_cache_field(metadata, key)
    return arrays, metadata


def decode_unit(key: str, blob: bytes) -> UnitResult:
    """Parse a blob written by ``encode_unit`` (no pickle); CacheCorruptionError if not, and
    NewerEntryError for a unit of a newer coherence (its RequestError escaped ``get_unit``)."""
    arrays, metadata = unpack_blob(key, blob)
    _check_schema(metadata.get("schema"), "unit")
    try:
        return UnitResult.from_parts(arrays, metadata)
    except CacheCorruptionError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None


def identify_blob(blob: bytes) -> tuple[str, str, float] | None:
    """(kind, key, created) of a value file written by a coherence store: kind "result",
    "unit" or "artifact" as its metadata says, its key and creation time; None for anything
    else (damaged, cut short, not ours). The file is checked whole (every member's CRC) but
    not parsed with this version's readers, so an entry of another version is kept too. Why:
    an entry's file names its own key, so a cache whose database was lost can take its
    files back instead of deleting them."""
    from coherence.cache.keys import validate_key

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            if archive.testzip() is not None:  # a member whose CRC does not match
                return None
        with open_npz(blob) as npz:
            metadata = json.loads(npz[METADATA_ARRAY].tobytes().decode())
        cache = metadata["cache"]
        key, created = validate_key(str(cache["key"])), float(cache["created"])
    except (CoherenceError, KeyError, TypeError, *READ_ERRORS):
        return None
    if "request" in metadata:
        return "result", key, created
    if "checkpoint_index" in metadata:
        return "unit", key, created
    return "artifact", key, created
