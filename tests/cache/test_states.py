"""Job states are one enum (``JobState``, a StrEnum): records on disk keep their bytes, records
written before the enum read back, and a state still compares and formats as its string (the
dashboard compares ``status.state == "done"``)."""

from __future__ import annotations

import json

import pytest

from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.status import JobStatus
from coherence.cache.store import ResultStore

KEY = "0123456789abcdef" * 4
# A progress record as the code before JobState wrote it (json.dumps of the dataclass).
OLD_RECORD = (
    b'{"state": "failed", "fraction": 0.5, "stage": "subspace JVPs", "started": 10.0, '
    b'"updated": 12.0, "eta_seconds": null, "error": "boom", "pid": 42, "log": "x.log", '
    b'"units_done": 1, "units_total": 4, "units_cached": 0}'
)


def test_a_record_from_before_the_enum_reads_back_and_is_written_identically(tmp_path):
    with ResultStore(tmp_path / "cache") as store:
        store._cache.set(f"progress:{KEY}", OLD_RECORD, retry=True)
        record = store.get_progress(KEY)
        assert record.state is JobState.FAILED and record.state == "failed"
        assert (record.fraction, record.error, record.units_total) == (0.5, "boom", 4)
        store.set_progress(KEY, record)
        assert store._cache.get(f"progress:{KEY}") == OLD_RECORD


def test_states_compare_format_and_serialize_as_their_strings():
    record = ProgressRecord("running", 0.25, "x", 1.0, 2.0)
    assert record.state is JobState.RUNNING
    assert json.loads(record.to_json())["state"] == "running"
    status = JobStatus(KEY, "done")
    assert status.state is JobState.DONE and status.state == "done"
    assert f"{status.state}" == "done" and str(status.state) == "done"
    assert {"done": 1}[status.state] == 1
    assert [s.value for s in JobState] == ["running", "done", "failed", "cancelled", "missing"]


@pytest.mark.parametrize("state", ["missing", "finished", ""])
def test_a_record_holds_only_a_job_record_state(state, tmp_path):
    with pytest.raises(ValueError):
        ProgressRecord(state)
    with ResultStore(tmp_path / "cache") as store:  # refused on read, deleted: a miss
        store._cache.set(f"progress:{KEY}", OLD_RECORD.replace(b'"failed"', f'"{state}"'.encode()))
        assert store.get_progress(KEY) is None
        assert f"progress:{KEY}" not in store._cache


def test_a_record_from_a_newer_coherence_is_read_without_its_new_fields(tmp_path):
    """A field a newer version added (as this one added ``note``) must not make an older
    reader refuse and delete a running job's record: the job then showed as missing."""
    newer = json.loads(OLD_RECORD) | {"state": "running", "note": "crowded", "gpu": "cuda:0"}
    with ResultStore(tmp_path / "cache") as store:
        store._cache.set(f"progress:{KEY}", json.dumps(newer).encode(), retry=True)
        record = store.get_progress(KEY)
        assert record is not None and record.state is JobState.RUNNING
        assert (record.fraction, record.note, record.units_total) == (0.5, "crowded", 4)
        assert f"progress:{KEY}" in store._cache
