"""`coherence cache info|clear`: inspect or empty the workspace's result cache."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Annotated

import typer

from coherence.cli_common import friendly_errors

cache_app = typer.Typer(
    help="Inspect or clear the workspace's result cache.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _existing(workspace: Path | None) -> Path:
    """The workspace, which must exist: a mistyped path made an empty cache there and
    reported nothing cached (a walk-through)."""
    from coherence.errors import RequestError
    from coherence.workspace import checked_workspace, named_by

    root = checked_workspace(workspace)
    if not root.is_dir():
        raise RequestError(
            f"{named_by(workspace)}: no such folder; name the workspace that holds the cache "
            "(it has checkpoints/, datasets/ and cache/)"
        )
    return root


@cache_app.command("info")
@friendly_errors
def cache_info(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Show where the cache lives, its size and limit, and what each result holds."""
    from coherence.cache import ResultStore
    from coherence.workspace import cache_dir

    store = ResultStore(cache_dir(_existing(workspace)))
    info = store.info()
    mib = 1024**2
    print(f"cache: {info['directory']}")
    over = info["bytes"] > info["limit"]
    print(
        f"entries: {held_text(info)}, {info['bytes'] / mib:.1f} MiB of {_mib(info['limit'])}"
        + (f", {info['unsafe']} unsafe entries refused" if info.get("unsafe") else "")
        + (  # eviction came without a word, at the next computation
            "; over the limit: the next result computed evicts the least recently used"
            if over
            else ""
        )
    )
    entries = store.entries()
    if entries:  # the order eviction follows (read as stored times out of order, unsaid)
        print("results, most recently used first (of these, the last is evicted first):")
    for entry in entries:
        minutes = (time.time() - entry["stored"]) / 60
        used = (time.time() - (entry["used"] or entry["stored"])) / 60
        metadata = store.peek_metadata(entry["key"])
        described = _described(metadata and metadata["request"], _weights(metadata))
        if f"result:{entry['key']}" in store.newer:  # unread, kept
            described = "(written by a newer coherence: upgrade to read it; kept)"
        print(
            f"  {entry['key'][:16]}…  {entry['bytes'] / mib:7.2f} MiB  used {used:.0f} min ago, "
            f"stored {minutes:.0f} min ago  {described}"
        )


def held_text(info: dict) -> str:
    """'9 results, 17 analysis units, 5 rollouts or checks and 28 job records': the units and
    task artifacts (most of the bytes) were counted as job records."""
    from coherence.wording import plural

    parts = [
        plural(info["entries"], "result"),
        plural(info.get("units", 0), "analysis unit"),
        plural(info.get("artifacts", 0), "rollout or check", "rollouts or checks"),
    ]
    return f"{', '.join(parts)} and {plural(info['records'], 'job record')}"


def _mib(size: int) -> str:
    """A limit in MiB, not rounded down (1 MB read '1 MiB', 2.5 MB '2 MiB')."""
    mib = size / 1024**2
    return f"{mib:.0f} MiB" if mib >= 100 or mib == int(mib) else f"{mib:.3g} MiB"


def _weights(metadata: dict | None) -> list[str]:
    """The first 8 hex digits of each checkpoint's fingerprint (config and weights) the
    result was computed from: two results of one checkpoint name, before and after it was
    retrained, read alike."""
    prints = ((metadata or {}).get("provenance") or {}).get("checkpoint_fingerprints") or {}
    return [str(value)[:8] for value in prints.values()] if isinstance(prints, dict) else []


def _described(request: dict | None, weights: list[str] | None = None) -> str:
    """What a cached result holds, in the dashboard's words (a key alone told nothing):
    checkpoints, dataset, classes, snapshots first–last, batches, responses, and the
    estimator with every option that sets it apart (three subspace results at three energy
    thresholds read alike); ``weights``, the checkpoints' fingerprints, last."""
    from coherence.surrogates.snapshots import checkpoint_labels
    from coherence.wording import format_ranges

    if request is None:
        return "(unreadable: dropped from the cache)"
    start, steps = request.get("t_start", 0), request.get("n_steps", 0)
    batches = request.get("trajectories", ())
    return (
        f"{','.join(checkpoint_labels(request.get('checkpoints', ())))} · "
        f"{Path(str(request.get('data', '?'))).name} · {','.join(request.get('classes', ()))} · "
        f"snapshots {start}–{start + steps} · "
        f"{'batch' if len(batches) == 1 else 'batches'} {format_ranges(batches)} · "
        f"{'+'.join(request.get('responses', ()))} · {_estimator_text(request)}"
        + (f" · weights {','.join(weights)}" if weights else "")
    )


def _estimator_text(request: dict) -> str:
    """``cg depth 4 rtol 0.015 cap 100 λ=0.0001``: the estimator and the options it uses (a
    stored request records None for the ones it does not)."""
    estimator = request.get("estimator")
    parts = [str(estimator)]
    if request.get("depth") is not None:
        parts.append(f"depth {request['depth']}")
    if request.get("rtol") is not None:
        parts.append(f"rtol {request['rtol']:g}")
    if request.get("cg_start") not in (None, "deflated"):
        parts.append(f"{request['cg_start']} start")
    if request.get("max_iter") is not None:
        parts.append(f"cap {request['max_iter']}")
    if request.get("energy_threshold") not in (None, 1, 1.0):
        parts.append(f"energy {request['energy_threshold']:g}")
    if estimator != "euclidean":  # its Ĥ ignores λ
        parts.append(f"λ={request.get('damping'):g}")
    return " ".join(parts)


@cache_app.command("clear")
@friendly_errors
def cache_clear(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Clear without asking.")] = False,
) -> None:
    """Delete every cached result and job record (results are recomputed on demand). Asks
    first on a terminal; elsewhere it needs --yes."""
    from coherence.cache import ResultStore
    from coherence.cache.store import DamagedCacheError
    from coherence.cli_common import ask_or_refuse, damaged_database
    from coherence.workspace import cache_dir

    workspace = _existing(workspace)
    database = cache_dir(workspace) / "store" / "cache.db"
    try:
        store = ResultStore(cache_dir(workspace))
        info = store.info()
    # damaged: at the open (its first pages), or past them when read; clear must still work
    except (DamagedCacheError, sqlite3.DatabaseError) as error:
        if isinstance(error, sqlite3.DatabaseError) and not damaged_database(error):
            raise  # locked, read-only, or a bug of ours: nothing to clear
        _start_afresh(workspace, database, yes)
        return
    kinds = ("entries", "units", "artifacts", "records", "unsafe")
    held = sum(info.get(kind, 0) for kind in kinds)
    if held and not yes:  # hours of computing went with one mistyped command
        size = f"{info['bytes'] / 1024**2:.1f} MiB"
        what = f"{held_text(info)} ({size})"
        ask_or_refuse(
            f"remove {what} from {info['directory']}?",
            f"{info['directory']} holds {what}; pass --yes to remove them",
        )
    try:
        removed = store.clear()
    except sqlite3.DatabaseError as error:
        if not damaged_database(error):
            raise
        store.close()
        _start_afresh(workspace, database, yes=True)  # asked above already
        return
    print(f"removed {removed} cache entries")


def _start_afresh(workspace: Path, database: Path, yes: bool) -> None:
    """Remove a damaged cache's store (asking first, as clear does) and open a fresh one."""
    from coherence.cache import ResultStore
    from coherence.cache.store import discard_damaged
    from coherence.cli_common import ask_or_refuse
    from coherence.workspace import cache_dir

    if not yes:
        ask_or_refuse(
            f"{database}: the cache's database is damaged; remove the cache?",
            f"{database}: the cache's database is damaged; pass --yes to remove it",
        )
    files = discard_damaged(cache_dir(workspace))
    print(f"{database}: the cache's database was damaged; removed it and its {files} files")
    ResultStore(cache_dir(workspace)).close()  # a working, empty cache
