"""The one place that reads diskcache's SQLite table directly (``Cache._sql``, private API).

Why not the public API: diskcache's own eviction ("cull") deletes the least recently used rows
of any kind, job records and the entry just written included, and its public API exposes
neither a row's access time nor its value file. We need both: eviction that removes only
results and units, oldest use first; ``coherence cache info`` listing results with their sizes
and times; and finding value files that no row points to (left by a writer killed mid-write).
So every such query lives here, against the columns of diskcache 5.6's ``Cache`` table, and
``tests/cache/test_sqlview.py`` checks those columns exist, so an upgrade that changes them
fails a test instead of the cache. diskcache is pinned in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

import diskcache

COLUMNS = ("key", "raw", "size", "value", "store_time", "access_time", "filename")
EVICTABLE = ("result:", "unit:", "artifact:")


def table_columns(cache: diskcache.Cache) -> set[str]:
    return {row[1] for row in cache._sql("PRAGMA table_info(Cache)").fetchall()}


def least_recently_used(cache: diskcache.Cache, keep: str) -> str | None:
    """The evictable row (a result, a unit or a task artifact) used longest ago, never
    ``keep``."""
    kinds = " OR ".join(f"key LIKE '{prefix}%'" for prefix in EVICTABLE)
    rows = cache._sql(
        f"SELECT key FROM Cache WHERE raw = 1 AND key != ? AND ({kinds})"
        " ORDER BY access_time LIMIT 1",
        (keep,),
    ).fetchall()
    return rows[0][0] if rows else None


def result_rows(cache: diskcache.Cache) -> list[dict[str, Any]]:
    """Every result: key, bytes on disk, stored and last-used unix times (newest use first)."""
    rows = cache._sql(
        "SELECT key, size, length(value), store_time, access_time FROM Cache"
        " WHERE raw = 1 AND key LIKE 'result:%' ORDER BY access_time DESC"
    ).fetchall()
    return [
        {"key": k.split(":", 1)[1], "bytes": size or inline or 0, "stored": s, "used": a}
        for k, size, inline, s, a in rows
    ]


def referenced_files(cache: diskcache.Cache) -> set[str]:
    """Value files (relative to the cache directory) that some row points to."""
    rows = cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL").fetchall()
    return {name for (name,) in rows}


def access_time(cache: diskcache.Cache, name: str) -> float | None:
    """A row's last-use time (None: no such row)."""
    rows = cache._sql("SELECT access_time FROM Cache WHERE key = ? AND raw = 1", (name,))
    found = rows.fetchall()
    return found[0][0] if found else None


def set_access_time(cache: diskcache.Cache, name: str, when: float) -> None:
    """Put back a row's last-use time after a read that only looked at it (diskcache's
    least-recently-used ``get`` marks every read as a use, and eviction goes by it)."""
    cache._sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (when, name))


def set_stored_time(cache: diskcache.Cache, name: str, when: float) -> None:
    """A row's store and last-use times, both ``when``: an entry taken back from its file
    after the database was lost keeps the time it was first stored."""
    cache._sql(
        "UPDATE Cache SET store_time = ?, access_time = ? WHERE key = ? AND raw = 1",
        (when, when, name),
    )
