"""A running job's progress: the callback it hands the computation, and how it ends.

``ProgressTracker`` is the ``progress(fraction, stage)`` a job passes to ``run_analysis`` (or
a task): it checks the cancel flag, writes a ``ProgressRecord`` at most twice a second with an
ETA, and forwards to the CLI's bar. ``recorded`` runs a job's body under its record and ends
it as done, cancelled or failed with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from coherence.cache import slots
from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.store import ResultStore
from coherence.errors import CoherenceError

PROGRESS_INTERVAL = 0.5  # seconds between progress records
# Test hook only: seconds to sleep in every progress callback, so tests can kill or cancel a
# job mid-way on any machine. Never set it in production.
TEST_DELAY_ENV = "COHERENCE_TEST_JOB_DELAY"

Progress = Callable[[float, str], None]  # (fraction, stage)


class JobCancelled(CoherenceError):
    """Raised inside a job's progress callback when someone asked to cancel it."""


class ProgressTracker:
    """The ``progress`` callback a job passes to ``run_analysis``: checks the cancel flag on
    every call (a SELECT), writes a progress record at most every ``interval`` seconds, and
    forwards to ``forward`` (the CLI's progress bar).

    ETA: once a (checkpoint, batch) unit has been computed, from the unit durations (mean of
    the last few: the first of a model includes loading and tracing) times the units left,
    less the time already spent in the current unit; before that, from the pace of the
    fraction of the work to compute (cached units excluded). Each new figure is blended with
    the last one counted down (``SMOOTHING``), so the estimate does not swing with the
    uneven pace inside a unit (gradients fast, JVPs slow)."""

    SMOOTHING = 0.3  # weight of a new raw estimate
    RECENT_UNITS = 5

    def __init__(
        self,
        store: ResultStore,
        key: str,
        *,
        forward: Progress | None = None,
        log_path: Path | None = None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.store, self.key, self.forward = store, key, forward
        self.log = str(log_path) if log_path is not None else None
        self.interval = interval
        self.started = time.time()
        self.fraction, self.stage = 0.0, "starting"
        self.units_total: int | None = None
        self.units_cached = 0
        self.units_done = 0
        self.unit_seconds: list[float] = []
        self._unit_started = self.started
        self._eta: tuple[float, float] | None = None  # (eta, when)
        self._written = float("-inf")
        self._delay = float(os.environ.get(TEST_DELAY_ENV) or 0.0)
        slot = slots.held_slot()  # the job's page says why it computes on fewer threads
        self.note = slot.crowded_note() if slot is not None else None

    def set_units(self, total: int, cached: int) -> None:
        """The job has ``total`` units, ``cached`` of them already in the cache."""
        self.units_total, self.units_cached, self.units_done = total, cached, cached
        self._unit_started = time.time()

    def unit_done(self) -> None:
        """One more unit computed (not counted for cached units)."""
        now = time.time()
        self.unit_seconds.append(now - self._unit_started)
        self._unit_started = now
        self.units_done += 1
        self._eta = None  # the first per-unit figure replaces the fraction-based one
        self.write(JobState.RUNNING, now=now)  # the count shows at once, not at the next step

    def setup_seconds(self, before: float, now: float | None = None) -> float | None:
        """Seconds of this job outside its units' steady work: ``before`` (worker start and
        imports, measured by the worker) plus what the job took beyond its computed units at
        the pace of all but the first (loading, tracing, storing). None with fewer than two
        computed units (the first one's tracing cannot be told apart)."""
        if len(self.unit_seconds) < 2:
            return None
        now = time.time() if now is None else now
        later = sorted(self.unit_seconds[1:])
        steady = later[len(later) // 2]
        extra = (now - self.started) - steady * len(self.unit_seconds)
        return before + max(extra, 0.0)

    def __call__(self, fraction: float, stage: str) -> None:
        if self.store.cancel_requested(self.key):
            raise JobCancelled(f"job {self.key[:12]} was cancelled; submit it again to recompute")
        self.fraction, self.stage = float(fraction), stage
        now = time.time()
        if now - self._written >= self.interval:
            self.write(JobState.RUNNING, now=now)
        if self.forward is not None:
            self.forward(fraction, stage)
        if self._delay > 0:
            time.sleep(self._delay)

    def raw_eta(self, now: float) -> float | None:
        """Seconds left by the unit durations, else by the pace of the computed fraction."""
        total = self.units_total
        if total and self.unit_seconds:
            recent = self.unit_seconds[-self.RECENT_UNITS :]
            if len(recent) > 1:
                recent = recent[1:] if len(self.unit_seconds) <= self.RECENT_UNITS else recent
            per_unit = sum(recent) / len(recent)
            left = max(total - self.units_done, 0)
            in_unit = min(now - self._unit_started, 0.95 * per_unit)
            return max(left * per_unit - in_unit, 0.0)
        cached = self.units_cached / total if total else 0.0
        fraction = (self.fraction - cached) / (1.0 - cached) if cached < 1.0 else 1.0
        if fraction < 0.01:
            return None
        return (now - self._unit_started) * (1.0 - fraction) / fraction

    def eta(self, now: float) -> float | None:
        raw = self.raw_eta(now)
        if raw is None:
            return None
        if self._eta is not None:
            previous, when = self._eta
            counted_down = max(previous - (now - when), 0.0)
            raw = self.SMOOTHING * raw + (1.0 - self.SMOOTHING) * counted_down
        self._eta = (raw, now)
        return raw

    def write(self, state: JobState, *, error: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        done = state == JobState.DONE
        running = state == JobState.RUNNING
        record = ProgressRecord(
            state=state,
            fraction=1.0 if done else self.fraction,
            stage="done" if done else self.stage,
            started=self.started,
            updated=now,
            eta_seconds=0.0 if done else (self.eta(now) if running else None),
            error=error,
            pid=os.getpid(),
            log=self.log,
            units_done=self.units_done if self.units_total else None,
            units_total=self.units_total,
            units_cached=self.units_cached if self.units_total else None,
            note=self.note,
        )
        self.store.set_progress(self.key, record)
        self._written = now


def internal_error_message(error: BaseException, log_path: Path | None) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    where = f", see {log_path}" if log_path is not None else ""
    return f"internal error: {type(error).__name__}: {first_line}{where}"


@contextlib.contextmanager
def recorded(
    store: ResultStore, key: str, tracker: ProgressTracker, log_path: Path | None
) -> Iterator[None]:
    """Run a job's body under its progress record: counted, marked running, and ended as
    done, cancelled or failed (a one-line message; the log names internal errors)."""
    store.record_computation(key)
    tracker.write(JobState.RUNNING)
    try:
        yield
    except JobCancelled as error:
        tracker.write(JobState.CANCELLED, error=str(error))
        store.clear_cancel(key)  # still under the lock: no newer job can own the flag yet
        raise
    except CoherenceError as error:
        tracker.write(JobState.FAILED, error=str(error))
        raise
    except Exception as error:
        tracker.write(JobState.FAILED, error=internal_error_message(error, log_path))
        raise
    tracker.write(JobState.DONE)
    store.clear_cancel(key)
