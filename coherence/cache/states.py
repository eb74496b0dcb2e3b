"""A job's state and the progress record it writes, importable without torch.

``JobState`` is a ``StrEnum``: a state compares equal to its string (``status.state ==
"done"`` keeps working in the dashboard) and serializes as that string, so the JSON records
already on disk read back unchanged and new ones are byte for byte what they were.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields


class JobState(enum.StrEnum):
    """Where a job for one key stands. A progress record holds the first four; ``MISSING``
    is only a status: nothing was ever computed for the key, or its result was evicted."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSING = "missing"


RECORD_STATES = (JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELLED)

_OPTIONAL = {
    "eta_seconds": float,
    "error": str,
    "pid": int,
    "log": str,
    "units_done": int,
    "units_total": int,
    "units_cached": int,
    "note": str,
}


@dataclass(frozen=True)
class ProgressRecord:
    """What a job reports while it runs, and how it ended (JSON in the store)."""

    state: JobState  # running | done | failed | cancelled
    fraction: float = 0.0
    stage: str = ""
    started: float = 0.0  # unix time
    updated: float = 0.0  # unix time
    eta_seconds: float | None = None
    error: str | None = None
    pid: int | None = None
    log: str | None = None  # worker log path
    units_done: int | None = None  # (checkpoint, batch) units finished, cached ones included
    units_total: int | None = None
    units_cached: int | None = None  # found in the cache when the job started
    note: str | None = None  # why the job computes on fewer threads (``Slot.crowded_note``)

    def __post_init__(self) -> None:
        state = JobState(self.state)  # ValueError for anything else
        if state not in RECORD_STATES:
            raise ValueError(f"a progress record cannot be {state!s}")
        object.__setattr__(self, "state", state)

    def to_json(self) -> bytes:
        fields = asdict(self)
        if fields["note"] is None:  # written as before the field existed: older readers
            del fields["note"]  # (a downgraded worker) still read it
        return json.dumps(fields).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProgressRecord:
        fields = json.loads(data.decode())
        if not isinstance(fields, dict) or fields.get("state") not in RECORD_STATES:
            raise ValueError("not a progress record")
        # a field a newer coherence added (as this one added ``note``) is left unread: the
        # record of a running job is not refused and deleted for it
        known = {f.name for f in dataclass_fields(cls)}
        record = cls(**{k: v for k, v in fields.items() if k in known})
        return replace(
            record,
            fraction=float(record.fraction),
            stage=str(record.stage),
            started=float(record.started),
            updated=float(record.updated),
            **{
                k: None if getattr(record, k) is None else t(getattr(record, k))
                for k, t in _OPTIONAL.items()
            },
        )
