"""`coherence cache info|clear`: what a mutation campaign over ``coherence.cli_cache`` found
no test to check (the times' unit, rollouts and refused unsafe entries counted, a window not
starting at 0, and a clear that asks before removing unsafe entries)."""

from __future__ import annotations

import time

import diskcache
import numpy as np
from typer.testing import CliRunner

from coherence.analysis.request import AnalysisRequest
from coherence.cache import ResultStore, sqlview
from coherence.cli import app
from coherence.cli_cache import _described
from tests.fixtures import synthetic_result

KEY = "0123456789abcdef" * 4


def _said(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result, " ".join(result.output.split())


def _plant_unsafe(workspace) -> None:
    """A pickled (tuple) key, as plain diskcache writes one: never read, only counted."""
    plain = diskcache.Cache(str(workspace / "cache" / "store"))
    plain.set(("planted",), b"value")
    plain.close()


def test_cache_info_gives_times_in_minutes_and_counts_unsafe_entries(tmp_path):
    """An entry stored two hours ago and used half an hour ago reads so (in minutes); a
    rollout artifact is counted as one, and a planted pickled key is said as refused."""
    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as store:
        store.put(KEY, synthetic_result())
        store.put_artifact("f" * 64, {"values": np.zeros(3)}, {"kind": "rollout"})
        now = time.time()
        sqlview.set_stored_time(store._cache, f"result:{KEY}", now - 7200)
        sqlview.set_access_time(store._cache, f"result:{KEY}", now - 1800)
    _plant_unsafe(workspace)
    result, said = _said(["cache", "info", "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    assert "entries: 1 result, 0 analysis units, 1 rollout or check and " in said
    assert ", 1 unsafe entries refused" in said
    assert f"{KEY[:16]}…" in said
    assert "used 30 min ago, stored 120 min ago" in said


def test_cache_clear_asks_before_removing_entries_other_than_results(tmp_path):
    """A cache holding no result but an unsafe entry is not empty: clear without --yes
    (no terminal to ask on) refuses and removes nothing; with --yes it removes it."""
    workspace = tmp_path / "ws"
    ResultStore(workspace / "cache").close()
    _plant_unsafe(workspace)
    clear = ["cache", "clear", "--workspace", str(workspace)]
    asked, said = _said(clear)
    assert asked.exit_code == 2, asked.output
    assert "holds 0 results, 0 analysis units" in said and "pass --yes to remove them" in said
    with ResultStore(workspace / "cache") as store:
        assert store.info()["unsafe"] == 1  # still there
    cleared, said = _said([*clear, "--yes"])
    assert cleared.exit_code == 0 and "removed 1 cache entries" in said, cleared.output
    with ResultStore(workspace / "cache") as store:
        assert store.info()["unsafe"] == 0


def test_cache_info_describes_a_window_past_the_first_snapshot():
    """`snapshots START–END` names the window's last snapshot, not its length (every other
    test's window starts at 0, where the two read alike)."""
    base = dict(data="/w/datasets/ce", checkpoints=("/w/checkpoints/u_s1",), classes=("CE-RP",))
    window = _described(AnalysisRequest(**base, t_start=1, n_steps=2).to_dict())
    assert " · snapshots 1–3 · " in window
