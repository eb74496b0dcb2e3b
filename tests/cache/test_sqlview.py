"""The private diskcache table that ``coherence.cache.sqlview`` reads still has the columns it
relies on: an upgrade of diskcache that changes them fails here, not in users' caches."""

from __future__ import annotations

import diskcache

from coherence.cache import sqlview
from coherence.cache.store import ResultStore
from tests.fixtures import synthetic_result


def test_the_diskcache_table_has_the_columns_we_read(tmp_path):
    with diskcache.Cache(str(tmp_path / "plain")) as cache:
        assert set(sqlview.COLUMNS) <= sqlview.table_columns(cache)


def test_queries_see_results_units_and_files(tmp_path):
    store = ResultStore(tmp_path / "cache")
    store.put("a" * 64, synthetic_result())
    rows = sqlview.result_rows(store._cache)
    assert [r["key"] for r in rows] == ["a" * 64] and rows[0]["bytes"] > 0
    assert sqlview.least_recently_used(store._cache, keep="result:" + "a" * 64) is None
    assert sqlview.least_recently_used(store._cache, keep="") == "result:" + "a" * 64
    assert all(name.endswith(".val") for name in sqlview.referenced_files(store._cache))
    store.close()
