"""What the dashboard shows for one key: its ``JobState`` with progress, ETA and error.

The state comes from three facts: whether the key's lock is held (a job runs exactly while
it is), the job's last progress record, and whether a result (or task artifact) is cached. A
"running" record whose lock is free is a worker that died (even by SIGKILL): failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from coherence.cache import slots
from coherence.cache.layout import validate_key
from coherence.cache.locks import lock_is_held
from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.store import ResultStore


@dataclass(frozen=True)
class JobStatus:
    """What the dashboard shows for one key."""

    key: str
    state: JobState  # done | running | failed | cancelled | missing
    fraction: float = 0.0
    stage: str = ""
    eta_seconds: float | None = None
    error: str | None = None  # one sentence, for failed (and cancelled) jobs
    started: float | None = None  # unix time the computation started
    updated: float | None = None  # unix time of the last progress record
    age_seconds: float | None = None  # of the cached result, when done
    log: str | None = None  # the worker's log file
    queue_position: int | None = None  # running but waiting for a compute slot: 1 = next
    units_done: int | None = None  # (checkpoint, batch) units finished, cached ones included
    units_total: int | None = None
    units_cached: int | None = None  # found in the cache when the job started (resumed)
    note: str | None = None  # why a running job computes on fewer threads than its share

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))

    @property
    def active(self) -> bool:
        return self.state == JobState.RUNNING

    @property
    def queued(self) -> bool:
        return self.queue_position is not None


def done_age(store: ResultStore, key: str) -> float | None:
    """Seconds since the key's result (or task artifact) was stored; None if neither is."""
    age = store.age(key)
    return age if age is not None else store.artifact_age(key)


def job_status(store: ResultStore, key: str) -> JobStatus:
    """done / running / failed / cancelled / missing, with progress and ETA."""
    validate_key(key)
    lock_path = store.lock_path(key)
    held = lock_is_held(lock_path)
    record = store.get_progress(key)
    if not held or (record is not None and record.state == JobState.DONE):
        age = done_age(store, key)
        if age is not None:
            return from_record(key, JobState.DONE, record, age_seconds=age)
    if held:
        return _held_status(key, record)
    if record is None or record.state == JobState.DONE:
        return JobStatus(key, JobState.MISSING)  # never computed, or evicted / cleared
    if record.state == JobState.RUNNING:
        if lock_is_held(lock_path):  # a new job started while we looked
            return from_record(key, JobState.RUNNING, record)
        where = f"; its log is {record.log}" if record.log else ""
        error = (
            "the job stopped before finishing (its worker was killed or crashed)"
            f"{where}; submit the analysis again to recompute it"
        )
        return from_record(key, JobState.FAILED, record, error=error)
    return from_record(key, record.state, record)


def _held_status(key: str, record: ProgressRecord | None) -> JobStatus:
    """A job holds the key's lock: queued for a compute slot, or computing."""
    position = slots.queue_position(key)
    if position is not None:
        return JobStatus(
            key,
            JobState.RUNNING,
            stage=f"queued, position {position}: waiting for a free compute slot",
            started=record.started if record else None,
            updated=record.updated if record else None,
            log=record.log if record else None,
            queue_position=position,
        )
    if record is None or record.state != JobState.RUNNING:
        return JobStatus(key, JobState.RUNNING, stage="running")
    return from_record(key, JobState.RUNNING, record)


def from_record(
    key: str,
    state: JobState,
    record: ProgressRecord | None,
    *,
    age_seconds: float | None = None,
    error: str | None = None,
) -> JobStatus:
    """The status in ``state``, with the progress of ``record`` when there is one."""
    done = state == JobState.DONE
    if record is None:
        return JobStatus(
            key,
            state,
            fraction=1.0 if done else 0.0,
            stage=str(state),
            age_seconds=age_seconds,
            error=error,
        )
    return JobStatus(
        key=key,
        state=state,
        fraction=1.0 if done else record.fraction,
        stage="done" if done else record.stage,
        eta_seconds=record.eta_seconds if state == JobState.RUNNING else (0.0 if done else None),
        error=error if error is not None else (None if done else record.error),
        started=record.started,
        updated=record.updated,
        age_seconds=age_seconds,
        log=record.log,
        units_done=record.units_done,
        units_total=record.units_total,
        units_cached=record.units_cached,
        note=record.note if state == JobState.RUNNING else None,
    )
