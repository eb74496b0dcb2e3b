"""Analysis jobs: computed once per request key, outside the Streamlit script thread.

``JobRunner.submit`` starts a detached worker process (``python -m coherence.cache.worker``)
and returns at once; the dashboard polls ``status`` (fraction, stage, ETA from the progress
record the worker writes to the store) and reads ``result`` when it is done. ``run`` is the
blocking form for the CLI and ``coherence demo``: it computes in-process under the same lock.

One computation per key: a job holds the flock ``<cache>/locks/<key>.lock`` for its whole
run. ``submit`` takes the lock before starting the worker and hands the descriptor to it, so
a job is running exactly while its lock is held, from submit to exit; the OS frees the lock
when the worker dies, even by SIGKILL, so a stale "running" record is recognised as failed
and the next submit starts afresh.

Bounded work: a job computes only inside a machine-wide compute slot (``slots``): a worker
started while every slot is taken waits in a first-come queue, without torch loaded, and
``status`` reports it as running with its ``queue_position``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from coherence.analysis.pipeline import AnalysisResult, assemble, prepare, run_analysis
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import UnitResult
from coherence.cache import slots, tasks
from coherence.cache.keys import request_key, unit_keys, validate_key
from coherence.cache.locks import KeyLock, acquire_soon, lock_is_held
from coherence.cache.store import ProgressRecord, ResultStore
from coherence.errors import CoherenceError, RequestError
from coherence.executors import Executor, get_executor
from coherence.workspace import cache_dir, workspace_root

WORKER_MODULE = "coherence.cache.worker"
PROGRESS_INTERVAL = 0.5  # seconds between progress records
# Test hook only: seconds to sleep in every progress callback, so tests can kill or cancel a
# job mid-way on any machine. Never set it in production.
TEST_DELAY_ENV = "COHERENCE_TEST_JOB_DELAY"
JOB_STATES = ("done", "running", "failed", "cancelled", "missing")

Progress = Callable[[float, str], None]  # (fraction, stage)


class JobCancelled(CoherenceError):
    """Raised inside a job's progress callback when someone asked to cancel it."""


@dataclass(frozen=True)
class JobStatus:
    """What the dashboard shows for one key."""

    key: str
    state: str  # done | running | failed | cancelled | missing
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

    @property
    def active(self) -> bool:
        return self.state == "running"

    @property
    def queued(self) -> bool:
        return self.queue_position is not None


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

    def __call__(self, fraction: float, stage: str) -> None:
        if self.store.cancel_requested(self.key):
            raise JobCancelled(f"job {self.key[:12]} was cancelled; submit it again to recompute")
        self.fraction, self.stage = float(fraction), stage
        now = time.time()
        if now - self._written >= self.interval:
            self.write("running", now=now)
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

    def write(self, state: str, *, error: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        done = state == "done"
        record = ProgressRecord(
            state=state,
            fraction=1.0 if done else self.fraction,
            stage="done" if done else self.stage,
            started=self.started,
            updated=now,
            eta_seconds=0.0 if done else (self.eta(now) if state == "running" else None),
            error=error,
            pid=os.getpid(),
            log=self.log,
            units_done=self.units_done if self.units_total else None,
            units_total=self.units_total,
            units_cached=self.units_cached if self.units_total else None,
        )
        self.store.set_progress(self.key, record)
        self._written = now


def internal_error_message(error: BaseException, log_path: Path | None) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    where = f", see {log_path}" if log_path is not None else ""
    return f"internal error: {type(error).__name__}: {first_line}{where}"


@contextlib.contextmanager
def recorded(store: ResultStore, key: str, tracker: ProgressTracker, log_path: Path | None):
    """Run a job's body under its progress record: counted, marked running, and ended as
    done, cancelled or failed (a one-line message; the log names internal errors)."""
    store.record_computation(key)
    tracker.write("running")
    try:
        yield
    except JobCancelled as error:
        tracker.write("cancelled", error=str(error))
        store.clear_cancel(key)  # still under the lock: no newer job can own the flag yet
        raise
    except CoherenceError as error:
        tracker.write("failed", error=str(error))
        raise
    except Exception as error:
        tracker.write("failed", error=internal_error_message(error, log_path))
        raise
    tracker.write("done")
    store.clear_cancel(key)


def compute_job(
    store: ResultStore,
    key: str,
    request: AnalysisRequest,
    *,
    trust_code: bool = False,
    progress: Progress | None = None,
    log_path: Path | None = None,
    executor: Executor | None = None,
) -> AnalysisResult:
    """Compute ``request`` and store it under ``key``; the caller holds the key's lock.

    The missing units are computed by ``executor`` (default: a Ray cluster when
    COHERENCE_RAY_ADDRESS is set, else this process); each finished unit is stored here.

    Records how the job ended (done, failed with a one-line message, or cancelled). The key
    is recomputed at the end: if a checkpoint or dataset file changed while the analysis ran,
    the result is not stored (it would be served for inputs it was not computed from).
    """
    tracker = ProgressTracker(store, key, forward=progress, log_path=log_path)
    with recorded(store, key, tracker, log_path):
        keys = unit_keys(request)
        known = cached_units(store, request, keys)
        tracker.set_units(len(request.checkpoints) * len(request.trajectories), len(known))
        if known:
            tracker(tracker.units_done / tracker.units_total, f"{len(known)} units cached")

        def keep(unit: UnitResult) -> None:
            store.put_unit(keys[unit.checkpoint_index][unit.batch_index], unit)
            tracker.unit_done()

        executor = executor or get_executor()
        compute = run_analysis if executor.local else executor.run_analysis
        result = compute(
            request, progress=tracker, trust_code=trust_code, known_units=known, on_unit=keep
        )
        tracker(1.0, "checking the inputs and storing the result")
        if request_key(request) != key:
            raise RequestError(
                "a checkpoint or dataset file changed while the analysis ran, so the result "
                "was not cached; run the analysis again"
            )
        store.put(key, result)
    return result


def compute_task(
    store: ResultStore,
    key: str,
    name: str,
    spec: dict,
    *,
    progress: Progress | None = None,
    log_path: Path | None = None,
) -> tuple[dict, dict]:
    """Compute a job of another kind (``tasks``) and store its artifact under ``key``; the
    caller holds the key's lock. Ends recorded as for an analysis (done, failed, cancelled)."""
    tracker = ProgressTracker(store, key, forward=progress, log_path=log_path)
    with recorded(store, key, tracker, log_path):
        arrays, metadata = tasks.kind(name).compute(spec, tracker)
        tracker(1.0, "checking the inputs and storing the result")
        if tasks.task_key(name, spec) != key:
            raise RequestError(
                "a checkpoint or dataset file changed while the job ran, so its result was "
                "not cached; run it again"
            )
        store.put_artifact(key, arrays, {**metadata, "kind": name})
    return arrays, metadata


def cached_units(
    store: ResultStore, request: AnalysisRequest, keys: list[list[str]] | None = None
) -> dict[tuple[int, int], UnitResult]:
    """The request's units already in the store, (s, b) → unit. A unit computed with every
    response of the family (e.g. SMSE, mass and energy) serves a request for fewer: its extra
    responses are dropped."""
    keys = unit_keys(request) if keys is None else keys
    found: dict[tuple[int, int], UnitResult] = {}
    for s, row in enumerate(keys):
        for b, key in enumerate(row):
            unit = store.get_unit(key)
            if unit is not None:  # stored at its position in another request: move it
                found[s, b] = replace(unit, checkpoint_index=s, batch_index=b)
    wider = _wider_responses(request)
    if wider is not None and len(found) < len(keys) * len(request.trajectories):
        for s, row in enumerate(unit_keys(request, responses=wider)):
            for b, key in enumerate(row):
                if (s, b) not in found and (unit := store.get_unit(key)) is not None:
                    unit = replace(unit, checkpoint_index=s, batch_index=b)
                    found[s, b] = _only_responses(unit, request.responses)
    return found


def _wider_responses(request: AnalysisRequest) -> tuple[str, ...] | None:
    """The responses a wider unit may hold: SMSE, mass and energy (compressible Euler)."""
    everything = ("smse", "mass", "energy")
    return everything if set(request.responses) < set(everything) else None


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
    names = tuple(Path(c).name for c in request.checkpoints)
    provenance = dict(result.provenance)
    fingerprints = list(provenance.get("checkpoint_fingerprints", {}).values())
    if len(fingerprints) == len(names):
        provenance["checkpoint_fingerprints"] = dict(zip(names, fingerprints, strict=True))
    return replace(result, request=request, checkpoints=names, provenance=provenance)


class JobRunner:
    """Submit, watch, cancel and fetch analyses of one workspace's cache."""

    def __init__(
        self,
        workspace: str | os.PathLike | None = None,
        *,
        size_limit: int | str | None = None,
    ) -> None:
        self.workspace = workspace_root(workspace)
        self.store = ResultStore(cache_dir(self.workspace), size_limit=size_limit)

    def key(self, request: AnalysisRequest) -> str:
        """The request's content key (validates that its inputs exist)."""
        return request_key(request)

    def submit(self, request: AnalysisRequest, *, trust_code: bool = False) -> str:
        """Make sure ``request`` is cached or being computed; returns its key at once.

        Cached: nothing to do. A job for the key is running (lock held): re-attach. Else the
        request is stored and a detached worker started, holding the lock it inherits.
        """
        key = request_key(request)
        if self.store.age(key) is not None or self.materialize(request) is not None:
            return key
        return self._start(
            key, lambda: self.store.put_request(key, request), "analysis", trust_code
        )

    def task_key(self, name: str, spec: dict) -> str:
        """The content key of a job of another kind (``tasks``); validates its inputs."""
        return tasks.task_key(name, spec)

    def submit_task(self, name: str, spec: dict) -> str:
        """``submit`` for a job of another kind: its artifact cached, or a worker started
        (or joined); returns the key at once."""
        key = tasks.task_key(name, spec)
        if self.store.artifact_age(key) is not None:
            return key
        return self._start(key, lambda: self.store.put_task(key, name, spec), name, False)

    def artifact(self, key: str) -> tuple[dict, dict] | None:
        """(arrays, metadata) of a finished job of another kind, or None."""
        return self.store.get_artifact(key)

    def _done_age(self, key: str) -> float | None:
        age = self.store.age(key)
        return age if age is not None else self.store.artifact_age(key)

    def _start(self, key: str, put_spec: Callable[[], None], kind: str, trust_code: bool) -> str:
        lock = KeyLock(self.store.lock_path(key))
        if not acquire_soon(lock):
            return key  # a job for this key is running: share it
        try:
            if self._done_age(key) is not None:
                return key  # finished between the first look and the lock
            put_spec()
            self.store.clear_cancel(key)
            log_path = self.store.log_path(key)
            now = time.time()
            starting = ProgressRecord(
                "running", 0.0, "starting worker", now, now, log=str(log_path)
            )
            self.store.set_progress(key, starting)
            try:
                self._spawn(key, lock, log_path, trust_code, kind)
            except OSError as error:
                failed = replace(
                    starting, state="failed", error=internal_error_message(error, None)
                )
                self.store.set_progress(key, failed)
                raise
        finally:
            lock.release()  # the worker keeps its inherited copy of the lock
        return key

    def _spawn(
        self, key: str, lock: KeyLock, log_path: Path, trust_code: bool, kind: str = "analysis"
    ) -> None:
        command = [
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--workspace",
            str(self.workspace),
            "--key",
            key,
            "--lock-fd",
            str(lock.fd),
            "--kind",
            kind,
        ]
        if trust_code:
            command.append("--trust-code")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(lock.fd,),
            )
        # reap the child when it exits (no zombies in a long-lived server)
        threading.Thread(target=process.wait, name=f"reap-{key[:8]}", daemon=True).start()

    def status(self, key: str) -> JobStatus:
        """done / running / failed / cancelled / missing, with progress and ETA."""
        validate_key(key)
        lock_path = self.store.lock_path(key)
        held = lock_is_held(lock_path)
        record = self.store.get_progress(key)
        if not held or (record is not None and record.state == "done"):
            age = self._done_age(key)
            if age is not None:
                return _status(key, "done", record, age_seconds=age)
        if held:
            position = slots.queue_position(key)
            if position is not None:
                return JobStatus(
                    key,
                    "running",
                    stage=f"queued, position {position}: waiting for a free compute slot",
                    started=record.started if record else None,
                    updated=record.updated if record else None,
                    log=record.log if record else None,
                    queue_position=position,
                )
            if record is None or record.state != "running":
                return JobStatus(key, "running", stage="running")
            return _status(key, "running", record)
        if record is None or record.state == "done":
            return JobStatus(key, "missing")  # never computed, or evicted / cleared
        if record.state == "running":
            if lock_is_held(lock_path):  # a new job started while we looked
                return _status(key, "running", record)
            where = f"; its log is {record.log}" if record.log else ""
            error = (
                "the job stopped before finishing (its worker was killed or crashed)"
                f"{where}; submit the analysis again to recompute it"
            )
            return _status(key, "failed", record, error=error)
        return _status(key, record.state, record)

    def cancel(self, key: str) -> bool:
        """Ask the running job for ``key`` to stop at its next progress step (a queued
        worker stops waiting at once); False if none is running."""
        if not lock_is_held(self.store.lock_path(validate_key(key))):
            return False
        self.store.request_cancel(key)
        slots.cancel_waiter(key)
        return True

    def result(self, key: str, request: AnalysisRequest | None = None) -> AnalysisResult | None:
        """The cached result (relabelled with ``request``'s names when given), or None."""
        result = self.store.get(key)
        if result is None or request is None:
            return result
        return relabel(result, request)

    def cached_unit_count(self, request: AnalysisRequest) -> tuple[int, int]:
        """(units of ``request`` already cached, all its units): what a job would resume
        from. Key lookups only, no unit is read."""
        total = len(request.checkpoints) * len(request.trajectories)
        try:
            rows = unit_keys(request)
            wider = _wider_responses(request)
            wide = unit_keys(request, responses=wider) if wider else rows
        except CoherenceError:
            return 0, total
        found = sum(
            self.store.has_unit(k) or self.store.has_unit(w)
            for row, wide_row in zip(rows, wide, strict=True)
            for k, w in zip(row, wide_row, strict=True)
        )
        return found, total

    def materialize(self, request: AnalysisRequest) -> AnalysisResult | None:
        """The result of ``request`` assembled from cached units when every unit is there
        (a subset of a cached selection: fewer seeds, batches or responses), stored under the
        request's key so its status is "done"; None when a unit is missing. Cheap on a miss
        (a few key lookups), so the dashboard asks it before offering to compute."""
        key = request_key(request)
        cached = self.store.get(key)
        if cached is not None:
            return relabel(cached, request)
        units = cached_units(self.store, request)
        if len(units) < len(request.checkpoints) * len(request.trajectories):
            return None
        started = time.perf_counter()
        info, batches = prepare(request)
        result = assemble(
            request,
            info,
            batches,
            list(units.values()),
            device="(assembled from cached units)",
            seconds=time.perf_counter() - started,
        )
        self.store.put(key, result)
        return result

    def run(
        self,
        request: AnalysisRequest,
        *,
        progress: Progress | None = None,
        trust_code: bool = False,
        executor: Executor | None = None,
    ) -> AnalysisResult:
        """Blocking: the cached result, or wait for the job computing it, or compute it here
        (under the key's lock, in a compute slot: see ``slots``) and store it. ``executor``:
        where the units compute (default ``get_executor()``); a cluster needs no local slot."""
        key = request_key(request)
        cached = self.materialize(request)
        if cached is not None:
            return cached
        lock = KeyLock(self.store.lock_path(key))

        def show_other_job() -> None:
            record = self.store.get_progress(key)
            if progress is not None and record is not None and record.state == "running":
                progress(record.fraction, f"computed by another process: {record.stage}")

        def show_queue(position: int) -> None:
            if progress is not None:
                progress(0.0, f"queued, position {position}: waiting for a free compute slot")

        lock.acquire(blocking=True, on_wait=show_other_job)
        try:
            cached = self.store.get(key)
            if cached is not None:
                return relabel(cached, request)
            self.store.clear_cancel(key)
            executor = executor or get_executor()
            slot = slots.compute_slot(key, on_wait=show_queue) if executor.local else nullcontext()
            with slot:  # after the key lock, always
                return compute_job(
                    self.store,
                    key,
                    request,
                    trust_code=trust_code,
                    progress=progress,
                    executor=executor,
                )
        finally:
            lock.release()


def _status(
    key: str,
    state: str,
    record: ProgressRecord | None,
    *,
    age_seconds: float | None = None,
    error: str | None = None,
) -> JobStatus:
    if record is None:
        return JobStatus(
            key,
            state,
            fraction=1.0 if state == "done" else 0.0,
            stage=state,
            age_seconds=age_seconds,
            error=error,
        )
    done = state == "done"
    return JobStatus(
        key=key,
        state=state,
        fraction=1.0 if done else record.fraction,
        stage="done" if done else record.stage,
        eta_seconds=record.eta_seconds if state == "running" else (0.0 if done else None),
        error=error if error is not None else (None if done else record.error),
        started=record.started,
        updated=record.updated,
        age_seconds=age_seconds,
        log=record.log,
        units_done=record.units_done,
        units_total=record.units_total,
        units_cached=record.units_cached,
    )
