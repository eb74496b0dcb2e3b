"""The result store and cache keys: exact round trips, no pickles, LRU eviction, permissions,
and keys that follow content (not paths)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import stat
import time
from pathlib import Path

import diskcache
import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from coherence.cache.keys import key_material, request_key, validate_key
from coherence.cache.locks import KeyLock
from coherence.cache.store import (
    ORPHAN_GRACE_SECONDS,
    CacheCorruptionError,
    ProgressRecord,
    ResultStore,
    SafeDisk,
    decode_result,
    parse_size,
)
from coherence.errors import CheckpointError, RequestError
from tests.fixtures import quick_request, synthetic_result

KEY = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4


class Planted:
    """Unpickling this creates ``path``: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "cache") as opened:
        yield opened


# ---------------------------------------------------------------------- round trips ------


def test_result_round_trip_is_exact(store):
    result = synthetic_result()
    store.put(KEY, result)
    back = store.get(KEY)
    assert back is not None
    for response in result.request.responses:
        np.testing.assert_array_equal(back.H[response], result.H[response])
        np.testing.assert_array_equal(back.H_std[response], result.H_std[response])
    for name in ("steps", "times", "distances", "top_eigenvalues", "subspace_spectra"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.request == result.request
    assert back.classes == result.classes and back.checkpoints == result.checkpoints
    assert back.diagnostics == result.diagnostics
    assert back.provenance == {**result.provenance, "cache_key": KEY}
    assert 0 <= store.age(KEY) < 60
    assert store.get(OTHER) is None and store.age(OTHER) is None


def test_bad_keys_are_refused(store):
    for bad in ("../../etc/passwd", KEY.upper(), KEY[:-1], KEY + "0"):
        with pytest.raises(RequestError, match="64 lowercase hexadecimal"):
            store.get(bad)
    assert validate_key(KEY) == KEY


def test_job_records_round_trip(store):
    record = ProgressRecord("running", 0.25, "subspace JVPs", 10.0, 12.0, 6.0, None, 42, "x.log")
    store.set_progress(KEY, record)
    assert store.get_progress(KEY) == record
    assert store.get_progress(OTHER) is None
    request = synthetic_result().request
    store.put_request(KEY, request)
    assert store.get_request(KEY) == request
    assert not store.cancel_requested(KEY)
    store.request_cancel(KEY)
    assert store.cancel_requested(KEY) and not store.cancel_requested(OTHER)
    store.clear_cancel(KEY)
    assert not store.cancel_requested(KEY)
    assert [store.record_computation(KEY) for _ in range(3)] == [1, 2, 3]
    assert store.computations(KEY) == 3 and store.computations(OTHER) == 0


def test_the_measured_job_setup_is_folded_and_validated(store, caplog):
    """The workspace's job setup figure: the mean of the last figure and a new measurement,
    nothing recorded for a value that is not a duration, a broken record refused."""
    assert store.job_setup() is None
    assert store.record_job_setup(10.0) == 10.0
    assert store.record_job_setup(20.0) == pytest.approx(15.0)
    for bad in (float("nan"), -1.0, float("inf")):
        assert store.record_job_setup(bad) == pytest.approx(15.0)
    assert store.job_setup() == pytest.approx(15.0)
    store._cache.set("timing:job_setup", b'{"seconds": -4}')
    with caplog.at_level("WARNING"):
        assert store.job_setup() is None
    assert "timing:job_setup refused" in caplog.text
    assert "timing:job_setup" not in store._cache  # deleted, measured afresh by the next job
    store._cache.set("timing:job_setup", b"not json")
    assert store.job_setup() is None


def test_only_bytes_values_and_str_keys(store):
    with pytest.raises(TypeError, match="values must be bytes"):
        store._cache.set("result:x", {"x": 1})
    with pytest.raises(TypeError, match="values must be bytes"):
        store._cache.set("result:x", "text")
    with pytest.raises(TypeError, match="keys must be str"):
        store._cache.set(("a", "tuple"), b"data")
    assert store.info()["entries"] == 0


# --------------------------------------------------------------------- no pickles ------


@pytest.mark.parametrize("size", ["inline", "file"])  # < 32 kB in SQLite, else a .val file
def test_planted_pickle_is_refused_not_executed(store, tmp_path, caplog, size):
    marker = tmp_path / "pwned"
    payload = Planted(marker) if size == "inline" else (Planted(marker), b"x" * 100_000)
    plain = diskcache.Cache(str(store.directory / "store"))  # the attacker's view: pickles
    plain.set(f"result:{KEY}", payload)
    plain.set(f"progress:{KEY}", Planted(marker))
    plain.set(f"request:{KEY}", Planted(marker))
    plain.close()
    assert not marker.exists()  # pickling does not run __reduce__'s callable

    with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
        assert store.get(KEY) is None
        assert store.get_progress(KEY) is None
        assert store.get_request(KEY) is None
        assert store.age(KEY) is None
    assert not marker.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"result:{KEY}" in m and "not in the safe form" in m for m in messages)
    assert any("Python pickle" in m and "CVE-2025-69872" in m for m in messages)
    assert f"result:{KEY}" not in store._cache  # deleted: the next request recomputes
    assert store.info()["entries"] == 0


def test_planted_pickled_key_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "pwned"
    plain = diskcache.Cache(str(store.directory / "store"))
    plain.set((Planted(marker),), b"value")  # a tuple key is pickled by plain diskcache
    plain.close()
    info = store.info()  # lists keys: must not unpickle
    assert info["unsafe"] == 1 and info["entries"] == 0
    assert not marker.exists()
    store.clear()
    assert store.info()["unsafe"] == 0
    assert not marker.exists()


def test_entries_not_in_the_result_form_are_refused(store, caplog):
    plain = diskcache.Cache(str(store.directory / "store"), disk=SafeDisk)
    plain.set(f"result:{KEY}", b"not an npz at all")
    with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
        assert store.get(KEY) is None
    assert "not in the safe form" in caplog.text
    # said as what it is: numpy took the bytes for a pickle ("contains pickled (object) data")
    assert "no npz (it starts b'not ', an npz b'PK\\x03\\x04'): damaged or written over" in (
        caplog.text
    )
    assert "pickled (object) data" not in caplog.text
    assert "CVE" not in caplog.text  # damaged bytes are no security matter: no pickle met
    caplog.clear()
    for reader in (store.get, store.peek_request, store.get_unit, store.get_artifact):
        kind = {store.get_unit: "unit", store.get_artifact: "artifact"}.get(reader, "result")
        plain.set(f"{kind}:{KEY}", pickle.dumps({"a": 1}))  # raw bytes holding a pickle
        with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
            assert reader(KEY) is None, reader
        assert f"{kind}:{KEY}" not in plain
    assert caplog.text.count("a pickle stream (it starts b'\\x80") == 4
    caplog.clear()  # ≥ 32 KiB: a file of its own, which the readers get as an open handle
    for reader in (store.get, store.peek_request):
        plain.set(f"result:{KEY}", b"garbage " * 9000)
        with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
            assert reader(KEY) is None, reader
        assert f"result:{KEY}" not in plain
    assert caplog.text.count("no npz (it starts b'garb'") == 2
    assert not list((store.directory / "store").glob("*/*/*.val"))  # the files went too
    # a genuine result stored under another key is refused too (metadata names its key)
    store.put(KEY, synthetic_result())
    blob = plain.get(f"result:{KEY}")
    plain.set(f"result:{OTHER}", blob)
    assert store.get(OTHER) is None and store.get(KEY) is not None
    plain.close()


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_blob_is_refused_not_raised(store, caplog, damage):
    """A truncated or bit-flipped npz fails in zipfile (BadZipFile, a CRC mismatch), which
    reached `analyze` and `report` as a traceback on every rerun. The entry is refused
    (deleted, so the next run recomputes or reassembles it), through every reader."""
    plain = diskcache.Cache(str(store.directory / "store"), disk=SafeDisk)
    store.put(KEY, synthetic_result())
    blob = bytearray(plain.get(f"result:{KEY}"))
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:
        middle = len(blob) // 2
        blob[middle : middle + 100] = bytes(b ^ 0xFF for b in blob[middle : middle + 100])
    readers = [store.get, store.get_unit]  # the metadata alone may survive a flip elsewhere
    readers += [store.peek_request] if damage == "truncated" else []
    for reader in readers:
        name = "unit" if reader == store.get_unit else "result"
        plain.set(f"{name}:{KEY}", bytes(blob))
        with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
            assert reader(KEY) is None, reader
        assert f"{name}:{KEY}" not in plain  # refused: gone, so a rerun rebuilds it
    assert "not in the safe form" in caplog.text
    plain.close()


def test_an_entry_of_a_newer_version_is_kept_not_called_damaged(tmp_path, caplog):
    """A result written by a newer coherence (a container and a local install sharing a
    workspace) was called damaged and deleted by `cache info`: it is kept, and said."""
    import io

    from typer.testing import CliRunner

    from coherence.cache.blobs import METADATA_ARRAY, _pack, encode_result
    from coherence.cli import app

    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as store:
        with np.load(io.BytesIO(encode_result(KEY, synthetic_result(), 1.0))) as archive:
            arrays = {n: archive[n] for n in archive.files if n != METADATA_ARRAY}
            metadata = json.loads(archive[METADATA_ARRAY].tobytes().decode())
        store._cache.set(f"result:{KEY}", _pack(arrays, metadata | {"schema": 2}))
        with caplog.at_level(logging.INFO):
            assert store.get(KEY) is None  # not read
        assert store.contains(KEY) and "written by a newer coherence" in caplog.text
        assert store.newer == {f"result:{KEY}"}
    listed = CliRunner().invoke(app, ["cache", "info", "--workspace", str(workspace)])
    assert listed.exit_code == 0, listed.output
    assert "(written by a newer coherence: upgrade to read it; kept)" in listed.output
    # lines in the order eviction follows, each with the time that orders it (the stored
    # times alone read as out of order)
    assert "results, most recently used first (of these, the last is evicted first):" in (
        listed.output
    )
    assert re.search(r"MiB  used \d+ min ago, stored \d+ min ago  ", listed.output)
    with ResultStore(workspace / "cache") as store:
        assert store.contains(KEY)  # still there after the listing


def test_decode_refuses_object_arrays_and_bad_metadata(tmp_path):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, H=np.array([{"a": 1}], dtype=object))  # needs pickle to load
    with pytest.raises(CacheCorruptionError):
        decode_result(KEY, buffer.getvalue())
    buffer = io.BytesIO()
    meta = json.dumps({"schema": 1, "cache": {"key": KEY, "created": 1.0}}).encode()
    np.savez(buffer, __metadata__=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(CacheCorruptionError, match="request"):
        decode_result(KEY, buffer.getvalue())


# ------------------------------------------------------------ limits and upkeep ------


def test_eviction_keeps_volume_within_limit_least_recently_used_first(tmp_path):
    limit = 500_000  # room for three results of ≈ 125 kB plus the SQLite pages
    store = ResultStore(tmp_path / "cache", size_limit=limit)
    keys = [f"{i:064x}" for i in range(7)]

    def result(seed):  # 4 arrays of [1, 3, 16, 2, 16, 2] float64 + distances
        return synthetic_result(n_checkpoints=1, n_steps=16, seed=seed)

    order: list[str] = []  # least recently used first
    for i, key in enumerate(keys):
        store.put(key, result(i))
        order.append(key)
        if i == 0:
            assert 100_000 < store.entries()[0]["bytes"] < 150_000  # a value file
        if i == 2:  # read key 0: now keys 1 and 2 are older uses than key 0
            assert store.get(keys[0]) is not None
            order.append(order.pop(0))
        assert store.info()["bytes"] <= limit
        present = [k for k in order if store.contains(k)]  # `in` does not count as a use
        assert present == order[len(order) - len(present) :], i  # the most recent survive
        if i == 3:
            assert keys[0] in present and keys[1] not in present
    assert 2 <= len(present) < len(keys) and keys[-1] in present
    store.close()


def test_size_limit_parsing_and_environment(tmp_path, monkeypatch):
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("12345") == 12345 and parse_size(4096) == 4096
    for bad in ("lots", "5XB", "-3MB", "0"):
        with pytest.raises(RequestError, match=r"COHERENCE_CACHE_SIZE_LIMIT|positive"):
            parse_size(bad)
    monkeypatch.setenv("COHERENCE_CACHE_SIZE_LIMIT", "3MB")
    assert ResultStore(tmp_path / "a").size_limit == 3_000_000
    assert ResultStore(tmp_path / "b", size_limit="1GB").size_limit == 10**9
    monkeypatch.setenv("COHERENCE_CACHE_SIZE_LIMIT", "500")  # meant as 500 MB: refused
    with pytest.raises(RequestError, match=r"'500' is 500 bytes, too small.*e\.g\. 500MB"):
        ResultStore(tmp_path / "d")
    monkeypatch.delenv("COHERENCE_CACHE_SIZE_LIMIT")
    assert ResultStore(tmp_path / "c").size_limit == 2_000_000_000


def test_directory_is_private(tmp_path):
    loose = tmp_path / "cache"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    store = ResultStore(loose)
    for path in (loose, loose / "store", loose / "locks", loose / "logs"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    store.close()
    fresh = tmp_path / "deep" / "new_cache"
    ResultStore(fresh).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_info_and_clear(store):
    store.put(KEY, synthetic_result())
    store.set_progress(KEY, ProgressRecord("done", 1.0, "done", 1.0, 2.0))
    store.log_path(KEY).write_text("log\n")
    orphan = store.directory / "store" / "ab" / "cd" / "orphan.val"  # a killed writer's file
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 1000)
    info = store.info()
    assert info["entries"] == 1 and info["records"] == 1 and info["unsafe"] == 0
    assert info["units"] == 0 and info["artifacts"] == 0
    assert info["limit"] == 2_000_000_000 and info["directory"] == str(store.directory)
    assert store.clear() == 2
    assert store.info()["entries"] == 0 and store.get(KEY) is None
    assert not orphan.exists() and not store.log_path(KEY).exists()


def test_clear_removes_the_lock_files_no_job_holds_and_keeps_a_running_jobs(store):
    """One empty lock file stayed for every key ever computed, a clear included. A clear now
    deletes those it can take; a running job's stays, and stays held."""
    running = "fedcba9876543210" * 4
    idle = KeyLock(store.lock_path(KEY))
    assert idle.acquire()
    idle.release()
    held = KeyLock(store.lock_path(running))  # another open file: as a worker holds it
    assert held.acquire()
    store.clear()
    assert not store.lock_path(KEY).exists()
    assert store.lock_path(running).exists()
    assert not KeyLock(store.lock_path(running)).acquire()  # still the holder's
    held.release()
    again = KeyLock(store.lock_path(KEY))  # the next job for the key locks a new file
    assert again.acquire() and store.lock_path(KEY).exists()
    again.release()


def test_listing_what_results_hold_is_not_a_use(store):
    """`cache info` reads each result's request to say what it holds; diskcache's
    least-recently-used reads marked each one used, so after a listing the oldest result was
    the newest and the next eviction removed the results used most recently."""
    other = "fedcba9876543210" * 4
    store.put(KEY, synthetic_result())
    time.sleep(0.01)
    store.put(other, synthetic_result())
    assert store.get(KEY) is not None  # KEY used last: the other result is the oldest
    order = [entry["key"] for entry in store.entries()]
    assert order == [KEY, other]
    for key in order:  # as the listing reads them: newest use first
        assert store.peek_request(key) is not None
    assert [entry["key"] for entry in store.entries()] == order  # as before the listing
    assert store.get(other) is not None  # a real read is a use, as before
    assert [entry["key"] for entry in store.entries()] == [other, KEY]


def test_orphan_value_files_are_removed_after_a_grace_period(tmp_path):
    """A writer killed between writing a value file and committing its row leaves a file no
    entry points to; it must not outlive the grace period (it escapes the size limit)."""
    store = ResultStore(tmp_path / "cache")
    store.put(KEY, synthetic_result(n_checkpoints=1, n_steps=16))  # ≈ 125 kB: a value file
    store_dir = store.directory / "store"
    (kept,) = list(store_dir.glob("*/*/*.val"))
    old, young = store_dir / "ab" / "cd" / "old.val", store_dir / "ef" / "01" / "young.val"
    for orphan in (old, young):
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"x" * 200_000)
    past = time.time() - ORPHAN_GRACE_SECONDS - 60
    for path in (old, kept):
        os.utime(path, (past, past))
    store.close()

    reopened = ResultStore(tmp_path / "cache")  # opening removes old orphans only
    assert not old.exists() and young.exists() and kept.exists()
    assert reopened.get(KEY) is not None
    os.utime(young, (past, past))
    reopened.put("f" * 64, synthetic_result(n_checkpoints=1, n_steps=4))  # eviction pass
    assert not young.exists() and kept.exists()
    assert reopened.remove_orphans() == 0
    reopened.close()


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_database_takes_its_entries_back_from_their_files(tmp_path, caplog, loss):
    """cache.db deleted or emptied (a disk fault, a user's `rm`): a fresh database named no
    file, so the orphan sweep deleted every result silently. Each file names its own key:
    whole entries are indexed again (results, units, task artifacts), junk is removed."""
    from coherence.analysis.results import UnitResult

    rng = np.random.default_rng(0)
    unit = UnitResult(
        checkpoint_index=0,
        batch_index=1,
        H={"smse": rng.normal(size=(32, 2, 32, 2))},  # 64 kB: a value file, not a row
        H_std={"smse": rng.normal(size=(32, 2, 32, 2))},
        top_eigenvalue=3.5,
        spectrum=np.linspace(9, 1, 40),
        diagnostics={"estimator": "subspace"},
        checkpoint_fingerprint="ab" * 32,
    )
    artifact = {"rollout": rng.normal(size=(64, 64, 8))}
    result = synthetic_result(n_checkpoints=1, n_steps=16)
    with ResultStore(tmp_path / "cache") as store:
        store.put(KEY, result)
        store.put_unit(OTHER, unit)
        store.put_artifact("a" * 64, artifact, {"kind": "rollout", "spec": {}})
        store_dir = store.directory / "store"
    files = list(store_dir.glob("*/*/*.val"))
    assert len(files) == 3
    junk = store_dir / "ab" / "cd" / "junk.val"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"x" * 200_000)
    past = time.time() - ORPHAN_GRACE_SECONDS - 60
    for path in [*files, junk]:
        os.utime(path, (past, past))
    database = store_dir / "cache.db"
    if loss == "deleted":
        for path in store_dir.glob("cache.db*"):
            path.unlink()
    else:
        database.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="coherence.cache.store"):
        reopened = ResultStore(tmp_path / "cache")
    assert "did not name 3 whole entries" in caplog.text
    back = reopened.get(KEY)
    assert back is not None and np.array_equal(back.H["smse"], result.H["smse"])
    again = reopened.get_unit(OTHER)
    assert again is not None and np.array_equal(again.H_std["smse"], unit.H_std["smse"])
    arrays, metadata = reopened.get_artifact("a" * 64)
    assert np.array_equal(arrays["rollout"], artifact["rollout"])
    assert metadata["kind"] == "rollout"
    assert not junk.exists() and reopened.info()["entries"] == 1
    reopened.close()


def test_the_sweep_keeps_entries_of_other_versions_and_their_times_but_not_a_cut_clear(
    tmp_path,
):
    """A lost database's files are taken back without this version's readers (a newer
    unit's RequestError had made it junk, deleted), with their own stored time; the files
    of a clear cut short (its marker left) are removed, not taken back."""
    import io

    from coherence.cache.blobs import METADATA_ARRAY, _pack, encode_result
    from coherence.cache.store import CLEARING

    store_dir = tmp_path / "cache" / "store"
    with ResultStore(tmp_path / "cache") as store:
        blob = encode_result(KEY, synthetic_result(n_checkpoints=1, n_steps=16), 1234.0)
        with np.load(io.BytesIO(blob)) as archive:
            arrays = {n: archive[n] for n in archive.files if n != METADATA_ARRAY}
            metadata = json.loads(archive[METADATA_ARRAY].tobytes().decode())
        store._cache.set(f"result:{KEY}", blob)
        unit = {"H__smse": np.ones((32, 2, 32, 2))}
        newer = {"schema": 99, "checkpoint_index": 0, "cache": {"key": OTHER, "created": 5.0}}
        store._cache.set(f"unit:{OTHER}", _pack(unit, newer))
    past = time.time() - ORPHAN_GRACE_SECONDS - 60
    for path in store_dir.glob("*/*/*.val"):
        os.utime(path, (past, past))
    for path in store_dir.glob("cache.db*"):
        path.unlink()
    with ResultStore(tmp_path / "cache") as store:
        (row,) = store.entries()  # its own time, not the moment it was taken back
        assert row["stored"] == row["used"] == metadata["cache"]["created"] == 1234.0
        assert store.get(KEY) is not None and store.has_unit(OTHER) and arrays
        assert store.get_unit(OTHER) is None and f"unit:{OTHER}" in store.newer  # kept
        assert store.has_unit(OTHER)
    # a clear cut short: rows gone, files left, the marker standing
    for path in store_dir.glob("*/*/*.val"):
        os.utime(path, (past, past))
    for path in store_dir.glob("cache.db*"):
        path.unlink()
    marker = tmp_path / "cache" / CLEARING
    marker.touch()
    os.utime(marker, (past, past))
    with ResultStore(tmp_path / "cache") as store:
        assert store.get(KEY) is None and not store.has_unit(OTHER)
    assert not list(store_dir.glob("*/*/*.val")) and not marker.exists()


def test_a_busy_database_skips_the_orphan_sweep_not_the_open(tmp_path, monkeypatch, caplog):
    """The sweep is upkeep: a database busy beyond diskcache's timeout (another process
    writing) must not fail opening the store or reading a result; a later open sweeps."""
    import sqlite3

    from coherence.cache import sqlview

    store = ResultStore(tmp_path / "cache")
    store.put(KEY, synthetic_result(n_checkpoints=1, n_steps=4))
    store.close()
    orphan = tmp_path / "cache" / "store" / "ab" / "cd" / "old.val"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 100)
    past = time.time() - ORPHAN_GRACE_SECONDS - 60
    os.utime(orphan, (past, past))

    def busy(cache):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlview, "referenced_files", busy)
    with caplog.at_level(logging.INFO, logger="coherence.cache.store"):
        reopened = ResultStore(tmp_path / "cache")
    assert reopened.get(KEY) is not None and orphan.exists()
    assert "skipped the orphan file sweep" in caplog.text
    reopened.close()
    monkeypatch.undo()
    ResultStore(tmp_path / "cache").close()
    assert not orphan.exists()


# ------------------------------------------------------------------------- keys ------


def test_every_setting_that_changes_a_result_changes_its_keys(
    checkpoint, tiny_dataset, tmp_path, monkeypatch
):
    """A mutation campaign: dropping energy_threshold, rtol, cg_start or the checkpoints'
    order from the request key, or the dataset, code or package version from the unit keys,
    passed every test; each would have served a result computed otherwise. And a class the
    request does not use leaves its key alone (an import of one class kept the others')."""
    import coherence
    from coherence.cache.keys import unit_keys

    def key(**change) -> str:
        return request_key(quick_request(checkpoint, tiny_dataset, **change))

    for a, b in (  # two settings of one estimator (an estimator drops others' options)
        ({"estimator": "subspace", "energy_threshold": 0.99}, {"energy_threshold": 0.9999}),
        ({"estimator": "cg", "rtol": 1e-2}, {"rtol": 1e-1}),
        ({"estimator": "cg", "rtol": 5e-2}, {"cg_start": "preconditioned"}),
        ({"estimator": "cg", "rtol": 5e-2}, {"cg_start": "cold"}),
        ({"estimator": "cg", "rtol": 5e-2}, {"max_iter": 100}),
        ({"estimator": "krylov", "depth": 2}, {"depth": 4}),
        ({}, {"split": "valid"}),
    ):
        assert key(**a) != key(**(a | b)), (a, b)
    other = tmp_path / "other"  # another seed: other weights
    shutil.copytree(checkpoint, other)
    tensors = load_file(other / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(1e-3)
    save_file(tensors, other / "model.safetensors")
    pair = (str(checkpoint), str(other))
    assert key(checkpoints=pair) != key(checkpoints=pair[::-1])  # results are indexed [s]

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    request = quick_request(checkpoint, data, classes=("CE-RP",))  # CE-CRP not used
    units, whole = unit_keys(request), request_key(request)
    assert unit_keys(request, code_version="2") != units
    with monkeypatch.context() as patched:
        patched.setattr(coherence, "__version__", "99.0")
        assert unit_keys(request) != units
    unused = data / "data" / "test" / "CE-CRP.hdf5"
    with h5py.File(unused, "r+") as f:  # a class of the split the request does not ask for
        f["t0_fields/density"][0, 0, 0, 0] += 1e-3
    assert request_key(request) == whole and unit_keys(request) == units
    with h5py.File(data / "data" / "test" / f"{request.classes[0]}.hdf5", "r+") as f:
        f["t0_fields/density"][0, 0, 0, 0] += 1e-3  # a file it uses: its cached units go too
    assert request_key(request) != whole and unit_keys(request)[0][0] != units[0][0]


def test_key_follows_content_not_paths(checkpoint, tiny_dataset, tmp_path):
    request = quick_request(checkpoint, tiny_dataset)
    key = request_key(request)
    assert validate_key(key) == key
    material = key_material(request)
    assert str(checkpoint) not in json.dumps(material) and "device" not in material["request"]

    # moving / renaming the checkpoint or the dataset keeps the key; so does the device
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(checkpoint, moved)
    data_copy = tmp_path / "data_copy"
    shutil.copytree(tiny_dataset, data_copy)
    same = quick_request(moved, data_copy, device="auto")
    assert request_key(same) == key

    # any request field changes it
    for change in (
        {"damping": 2e-4},
        {"n_steps": 3},
        {"t_start": 1},
        {"classes": ("CE-CRP", "CE-RP")},
        {"responses": ("smse", "mass")},
        {"estimator": "subspace"},
        {"top_eigenvalue": True},
        {"trajectories": (1,)},
    ):
        assert request_key(quick_request(moved, data_copy, **change)) != key, change
    assert request_key(same, code_version="2") != key

    # one weight changed in model.safetensors
    weights_path = moved / "model.safetensors"
    original = weights_path.read_bytes()
    tensors = load_file(weights_path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nextafter(tensors[name].flat[0], np.float32(np.inf))
    save_file(tensors, weights_path)
    assert request_key(same) != key
    weights_path.write_bytes(original)
    assert request_key(same) == key

    # the config
    config = moved / "config.json"
    text = config.read_text()
    config.write_text(text + " ")  # one byte more
    assert request_key(same) != key
    config.write_text(text)
    assert request_key(same) == key

    # a dataset file the request uses changes the key; one it does not use does not
    used = data_copy / "data" / "test" / "CE-RP.hdf5"
    with h5py.File(used, "r+") as f:
        f["t0_fields/density"][0, 0, 0, 0] += 1e-3
    assert request_key(same) != key
    unused = tiny_dataset / "data" / "train" / "CE-RP.hdf5"
    moved_key = request_key(same)
    shutil.copy(unused, data_copy / "data" / "train" / "CE-RP.hdf5")
    with h5py.File(data_copy / "data" / "train" / "CE-RP.hdf5", "r+") as f:
        f["t0_fields/density"][0, 0, 0, 0] += 1e-3
    assert request_key(same) == moved_key


def test_key_refuses_missing_inputs(checkpoint, tiny_dataset, tmp_path):
    with pytest.raises(RequestError, match="CE-KH"):
        request_key(quick_request(checkpoint, tiny_dataset, classes=("CE-RP", "CE-KH")))
    with pytest.raises(RequestError, match="window"):
        request_key(quick_request(checkpoint, tiny_dataset, n_steps=9))
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        request_key(quick_request(empty, tiny_dataset))


@pytest.mark.slow  # diskcache retries a locked database for 60 s before it gives up
def test_a_locked_database_is_not_called_damaged_and_clear_removes_nothing(tmp_path):
    """A database another process holds locked (or one on a read-only mount) was reported as
    damaged, and the advice, `cache clear`, deleted a healthy cache. Now `cache clear`
    names it as busy or unwritable, says it is not damaged, and leaves every file."""
    import sqlite3

    from typer.testing import CliRunner

    from coherence.cli import app

    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as opened:
        opened.put(KEY, synthetic_result())
    store_dir = workspace / "cache" / "store"
    files = {p: p.read_bytes() for p in store_dir.rglob("*") if p.is_file()}
    holder = sqlite3.connect(store_dir / "cache.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # as a long write of another process would
    try:
        cleared = CliRunner().invoke(
            app, ["cache", "clear", "--workspace", str(workspace), "--yes"]
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cleared.exit_code == 2, cleared.output
    assert "database is locked" in cleared.output and "not damaged" in cleared.output
    assert "removed" not in cleared.output
    assert all(p.read_bytes() == data for p, data in files.items())  # nothing deleted
    with ResultStore(workspace / "cache") as reopened:
        assert reopened.get(KEY) is not None  # the cache was fine all along


def test_a_damaged_database_is_named_and_cache_clear_starts_afresh(tmp_path):
    """Bytes of cache.db overwritten (a disk fault): every command ended in sqlite's
    traceback, `cache clear` too. Opening names the file and the fix; clear removes the
    store, keeps the rest of the workspace, and leaves a working cache."""
    from typer.testing import CliRunner

    from coherence.cache.store import DamagedCacheError
    from coherence.cli import app

    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as opened:
        opened.put(KEY, synthetic_result())
    database = workspace / "cache" / "store" / "cache.db"
    data = bytearray(database.read_bytes())
    data[100:4000] = bytes(3900)
    database.write_bytes(bytes(data))
    (workspace / "datasets").mkdir()  # the workspace beside the cache: never touched
    with pytest.raises(DamagedCacheError, match=r"cache.db: the cache's database is damaged"):
        ResultStore(workspace / "cache")
    info = CliRunner().invoke(app, ["cache", "info", "--workspace", str(workspace)])
    assert info.exit_code == 2 and "coherence cache clear --workspace" in info.output
    asked = CliRunner().invoke(app, ["cache", "clear", "--workspace", str(workspace)])
    assert asked.exit_code == 2 and "pass --yes to remove it" in " ".join(asked.output.split())
    assert database.exists()  # no terminal to ask on: nothing removed
    cleared = CliRunner().invoke(app, ["cache", "clear", "--workspace", str(workspace), "--yes"])
    assert cleared.exit_code == 0, cleared.output
    assert "damaged" in cleared.output and (workspace / "datasets").is_dir()
    with ResultStore(workspace / "cache") as fresh:  # works again, empty
        assert fresh.get(KEY) is None
        fresh.put(KEY, synthetic_result())
        assert fresh.get(KEY) is not None


def test_a_database_damaged_past_its_first_pages_is_still_cleared(tmp_path, capsys):
    """Pages of cache.db beyond those its opening reads written over: it opened, then
    `cache clear --yes`, the way out the tool names, ended in sqlite's traceback. It starts
    the cache afresh; any other command names the damage and that way out."""
    import sqlite3

    import typer
    from typer.testing import CliRunner

    from coherence.cli import app
    from coherence.cli_common import friendly_errors

    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as opened:
        for i in range(6):
            opened.put(f"{i:064x}", synthetic_result(n_checkpoints=1, n_steps=4, seed=i))
    database = workspace / "cache" / "store" / "cache.db"
    data = bytearray(database.read_bytes())
    data[4096 + 50 : 4096 + 250] = bytes(200)  # page 2: an index the deletes walk
    database.write_bytes(bytes(data))
    with ResultStore(workspace / "cache") as opened, pytest.raises(sqlite3.DatabaseError):
        opened.clear()  # what `cache clear` met
    cleared = CliRunner().invoke(app, ["cache", "clear", "--workspace", str(workspace), "--yes"])
    assert cleared.exit_code == 0, cleared.output
    assert "the cache's database was damaged; removed it" in cleared.output
    with ResultStore(workspace / "cache") as fresh:
        assert fresh.info()["entries"] == 0
        fresh.put(KEY, synthetic_result())
        assert fresh.get(KEY) is not None

    @friendly_errors
    def command(workspace: Path) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    with pytest.raises(typer.Exit) as ended:
        command(workspace=workspace)
    said = " ".join(capsys.readouterr().err.split())
    assert ended.value.exit_code == 2 and "result cache database is damaged" in said
    assert f"coherence cache clear --workspace {workspace} --yes" in said

    @friendly_errors
    def full(workspace: Path) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(typer.Exit):
        full(workspace=workspace)
    said = " ".join(capsys.readouterr().err.split())
    assert "the disk is full (the result cache could not record" in said

    @friendly_errors
    def misuse(workspace: Path) -> None:  # a bug of ours, not damage: no advice to clear
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    with pytest.raises(sqlite3.ProgrammingError):
        misuse(workspace=workspace)


def test_damaged_and_full_cache_databases_are_said_with_the_way_out(tmp_path):
    from coherence.cli_common import damaged_cache_message

    said = damaged_cache_message(Exception("database disk image is malformed"), tmp_path / "w s")
    assert "result cache database is damaged (database disk image is malformed)" in said
    assert f"`coherence cache clear --workspace '{tmp_path / 'w s'}' --yes`" in said


def test_cache_info_tells_results_of_other_options_apart():
    """Three subspace results at three energy thresholds, and euclidean at two λ, read
    alike: every option the estimator uses is named (and λ not for euclidean, which
    ignores it)."""
    from coherence.analysis.request import AnalysisRequest
    from coherence.cli_cache import _described

    def said(**options) -> str:
        base = dict(data="/w/datasets/ce", checkpoints=("/w/checkpoints/u_s1",), classes=("CE-RP",))
        return _described(AnalysisRequest(**base, **options).to_dict())

    thresholds = {said(estimator="subspace", energy_threshold=e) for e in (0.99, 0.9999, 0.999999)}
    assert len(thresholds) == 3 and any("subspace energy 0.99 λ=0.0001" in t for t in thresholds)
    assert said(estimator="krylov").endswith("krylov depth 4 λ=0.0001")
    cg = said(estimator="cg", rtol=0.05, max_iter=100, cg_start="cold")
    assert cg.endswith("cg rtol 0.05 cold start cap 100 λ=0.0001")  # cold: no Krylov depth
    assert said(estimator="cg", rtol=0.05).endswith("cg depth 4 rtol 0.05 λ=0.0001")
    assert said(estimator="euclidean").endswith("· batch 0 · smse · euclidean")
    assert _described(None) == "(unreadable: dropped from the cache)"


def test_a_missing_workspace_is_named_by_where_it_came_from(tmp_path, monkeypatch):
    """`COHERENCE_WORKSPACE=/missing coherence cache info` said "--workspace /missing", an
    option nobody typed."""
    from typer.testing import CliRunner

    from coherence.cli import app
    from coherence.workspace import ENV_VAR

    missing = tmp_path / "nows"
    said = CliRunner().invoke(app, ["cache", "info", "--workspace", str(missing)])
    assert said.exit_code == 2 and f"--workspace {missing}: no such folder" in said.output
    monkeypatch.setenv(ENV_VAR, str(missing))
    said = CliRunner().invoke(app, ["cache", "info"])
    flat = " ".join(said.output.split())
    assert said.exit_code == 2 and f"{ENV_VAR}={missing}: no such folder" in flat


def test_a_workspace_or_cache_folder_that_is_a_file_is_named_with_the_fix(tmp_path):
    """`--workspace` naming a file said "Not a directory: …/afile/cache", and a file where
    the cache folder belongs "File exists: …/cache; check the paths given"."""
    from typer.testing import CliRunner

    from coherence.cli import app

    afile = tmp_path / "afile"
    afile.write_text("")
    said = CliRunner().invoke(app, ["cache", "info", "--workspace", str(afile)])
    assert said.exit_code == 2
    assert "is a file, not a folder; name the folder that holds" in " ".join(said.output.split())
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "cache").write_text("")
    said = CliRunner().invoke(app, ["cache", "info", "--workspace", str(workspace)])
    assert said.exit_code == 2
    assert "cache should be a folder of the result cache but is a file: move it away" in (
        " ".join(said.output.split())
    )


def test_cache_info_says_when_the_cache_is_over_its_limit(tmp_path, monkeypatch):
    """A 7.4 MiB cache under a 3 MiB limit was listed as '7.4 MiB of 3 MiB' and the next
    analysis evicted results without a word; a limit of 5.5 MB read '5 MiB'."""
    from typer.testing import CliRunner

    from coherence.cache.store import SIZE_ENV
    from coherence.cli import app

    workspace = tmp_path / "ws"
    with ResultStore(workspace / "cache") as opened:
        opened.put(KEY, synthetic_result(n_batches=6, n_steps=40))  # a few MB of arrays
    monkeypatch.setenv(SIZE_ENV, "5.5MB")
    within = " ".join(
        CliRunner().invoke(app, ["cache", "info", "--workspace", str(workspace)]).output.split()
    )
    assert "of 5.25 MiB" in within and "over the limit" not in within
    with ResultStore(workspace / "cache") as opened:
        used = opened.info()["bytes"]
    assert used > 2_000_000  # over a limit of 1 MB, the smallest accepted
    monkeypatch.setenv(SIZE_ENV, "1MB")
    over = CliRunner().invoke(app, ["cache", "info", "--workspace", str(workspace)]).output
    assert "of 0.954 MiB; over the limit: the next result computed evicts" in " ".join(over.split())
