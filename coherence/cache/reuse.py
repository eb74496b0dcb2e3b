"""Serving a request from what is cached: its units found under their keys (or wider ones,
computed with more responses), and a cached result relabelled with this request's names."""

from __future__ import annotations

from dataclasses import replace

from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.cache.keys import unit_keys
from coherence.cache.store import ResultStore
from coherence.errors import CoherenceError
from coherence.surrogates.snapshots import checkpoint_labels

WIDEST_RESPONSES = ("smse", "mass", "energy")  # what a unit of compressible Euler may hold


def cached_units(
    store: ResultStore, request: AnalysisRequest, keys: list[list[str]] | None = None
) -> dict[tuple[int, int], UnitResult]:
    """The request's units already in the store, (s, b) → unit. A unit computed with every
    response of the family (e.g. SMSE, mass and energy) serves a request for fewer: its extra
    responses are dropped."""
    keys = unit_keys(request) if keys is None else keys
    found: dict[tuple[int, int], UnitResult] = {}
    for s, row in enumerate(keys):
        for b, key in enumerate(row):
            unit = store.get_unit(key)
            if unit is not None:  # stored at its position in another request: move it
                found[s, b] = replace(unit, checkpoint_index=s, batch_index=b)
    wider = wider_responses(request)
    if wider is not None and len(found) < len(keys) * len(request.trajectories):
        for s, row in enumerate(unit_keys(request, responses=wider)):
            for b, key in enumerate(row):
                if (s, b) not in found and (unit := store.get_unit(key)) is not None:
                    unit = replace(unit, checkpoint_index=s, batch_index=b)
                    found[s, b] = _only_responses(unit, request.responses)
    return found


def cached_unit_count(store: ResultStore, request: AnalysisRequest) -> tuple[int, int]:
    """(units of ``request`` already cached, all its units): what a job would resume from.
    Key lookups only, no unit is read."""
    total = request.n_units
    try:
        rows = unit_keys(request)
        wider = wider_responses(request)
        wide = unit_keys(request, responses=wider) if wider else rows
    except CoherenceError:
        return 0, total
    found = sum(
        store.has_unit(k) or store.has_unit(w)
        for row, wide_row in zip(rows, wide, strict=True)
        for k, w in zip(row, wide_row, strict=True)
    )
    return found, total


def wider_responses(request: AnalysisRequest) -> tuple[str, ...] | None:
    """The responses a wider unit may hold: SMSE, mass and energy (compressible Euler)."""
    return WIDEST_RESPONSES if set(request.responses) < set(WIDEST_RESPONSES) else None


def _only_responses(unit: UnitResult, responses: tuple[str, ...]) -> UnitResult:
    return replace(
        unit,
        H={r: unit.H[r] for r in responses},
        H_std={r: unit.H_std[r] for r in responses},
    )


def relabel(result: AnalysisResult, request: AnalysisRequest) -> AnalysisResult:
    """A cached result shown for ``request``: same content hash, so the same numbers, but
    the checkpoint names, paths and device of this request (provenance keeps the device the
    result was computed on)."""
    names = checkpoint_labels(request.checkpoints)
    provenance = dict(result.provenance)
    fingerprints = list(provenance.get("checkpoint_fingerprints", {}).values())
    if len(fingerprints) == len(names):
        provenance["checkpoint_fingerprints"] = dict(zip(names, fingerprints, strict=True))
    return replace(result, request=request, checkpoints=names, provenance=provenance)
