"""Serving a request from what is cached: its units found under their keys (or wider ones,
computed with more responses), and a cached result relabelled with this request's names."""

from __future__ import annotations

import itertools
from dataclasses import replace

from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.cache.keys import unit_keys, unit_keys_of_responses
from coherence.cache.store import ResultStore
from coherence.errors import CoherenceError
from coherence.surrogates.snapshots import checkpoint_labels

WIDEST_RESPONSES = ("smse", "mass", "energy")  # what a unit of compressible Euler may hold


def cached_units(
    store: ResultStore, request: AnalysisRequest, keys: list[list[str]] | None = None
) -> dict[tuple[int, int], UnitResult]:
    """The request's units already in the store, (s, b) → unit. A unit computed with more
    responses of the family (SMSE with mass, or all three), or with the same ones in another
    order, serves a request for fewer: its extra responses are dropped."""
    keys = unit_keys(request) if keys is None else keys
    found: dict[tuple[int, int], UnitResult] = {}
    for s, row in enumerate(keys):
        for b, key in enumerate(row):
            unit = store.get_unit(key)
            if unit is not None:  # stored at its position in another request: move it
                found[s, b] = replace(unit, checkpoint_index=s, batch_index=b)
    options = wider_responses(request)
    if not options or len(found) == len(keys) * len(request.trajectories):
        return found
    for rows in unit_keys_of_responses(request, options):
        for s, row in enumerate(rows):
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
        every = unit_keys_of_responses(request, [None, *wider_responses(request)])
    except CoherenceError:
        return 0, total
    found = sum(
        any(store.has_unit(rows[s][b]) for rows in every)
        for s in range(len(request.checkpoints))
        for b in range(len(request.trajectories))
    )
    return found, total


def wider_responses(request: AnalysisRequest) -> list[tuple[str, ...]]:
    """The responses of units that hold the request's too: every ordering of every set of
    SMSE, mass and energy (compressible Euler) that contains them, the request's own tuple
    excepted. Why all: a unit computed for (smse, mass) served no request for smse alone, only
    the full three did (a walk-through recomputed it)."""
    wanted = {str(r) for r in request.responses}
    if not wanted <= set(WIDEST_RESPONSES):
        return []
    own = tuple(str(r) for r in request.responses)
    return [
        combo
        for size in range(len(wanted), len(WIDEST_RESPONSES) + 1)
        for combo in itertools.permutations(WIDEST_RESPONSES, size)
        if wanted <= set(combo) and combo != own
    ]


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
