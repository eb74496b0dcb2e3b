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

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from coherence.analysis.batch import AnalysisBatch
from coherence.analysis.pipeline import assemble, prepare, run_analysis
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.cache import slots, tasks
from coherence.cache.blobs import keyed
from coherence.cache.keys import request_key, unit_keys, validate_key
from coherence.cache.locks import KeyLock, acquire_soon, lock_is_held
from coherence.cache.progress import (  # noqa: F401 (re-exported: jobs.TEST_DELAY_ENV, …)
    TEST_DELAY_ENV,
    JobCancelled,
    Progress,
    ProgressTracker,
    internal_error_message,
    recorded,
)
from coherence.cache.reuse import cached_unit_count, cached_units, relabel
from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.status import JobStatus, done_age, job_status
from coherence.cache.store import ResultStore
from coherence.errors import RequestError
from coherence.executors import Executor, get_executor
from coherence.simulation.dataset import DatasetInfo
from coherence.workspace import cache_dir, workspace_root

WORKER_MODULE = "coherence.cache.worker"
STARTING_STAGE = "starting worker"  # a spawned job's stage until its worker reports progress
Prepared = tuple[DatasetInfo, list[AnalysisBatch]]  # ``pipeline.prepare``'s (info, batches)


def compute_job(
    store: ResultStore,
    key: str,
    request: AnalysisRequest,
    *,
    trust_code: bool = False,
    progress: Progress | None = None,
    log_path: Path | None = None,
    executor: Executor | None = None,
    prepared: Prepared | None = None,
    startup_seconds: float | None = None,
) -> AnalysisResult:
    """Compute ``request`` and store it under ``key``; the caller holds the key's lock.

    The missing units are computed by ``executor`` (default: a Ray cluster when
    COHERENCE_RAY_ADDRESS is set, else this process); each finished unit is stored here.

    Records how the job ended (done, failed with a one-line message, or cancelled). The key
    is recomputed at the end: if a checkpoint or dataset file changed while the analysis ran,
    the result is not stored (it would be served for inputs it was not computed from).

    ``startup_seconds``: a background worker's start before this call (imports); with it, a
    local job of two or more computed units records its setup time for the next estimates.
    """
    tracker = ProgressTracker(store, key, forward=progress, log_path=log_path)
    with recorded(store, key, tracker, log_path):
        keys = unit_keys(request)
        known = cached_units(store, request, keys)
        tracker.set_units(request.n_units, len(known))
        if known:
            # the stage the CLI shows (the dashboard's line also counts them): brief until the
            # first unit to compute reports its own
            tracker(
                tracker.units_done / tracker.units_total,
                f"resuming: {len(known)} of {tracker.units_total} units from the cache",
            )

        def keep(unit: UnitResult) -> None:
            store.put_unit(keys[unit.checkpoint_index][unit.batch_index], unit)
            tracker.unit_done()

        executor = executor or get_executor()
        compute = run_analysis if executor.local else executor.run_analysis
        result = compute(
            request,
            progress=tracker,
            trust_code=trust_code,
            known_units=known,
            on_unit=keep,
            prepared=prepared,
        )
        tracker(1.0, "checking the inputs and storing the result")
        if request_key(request) != key:
            raise RequestError(
                "a checkpoint or dataset file changed while the analysis ran, so the result "
                "was not cached; run the analysis again"
            )
        store.put(key, result)
    if startup_seconds is not None and executor.local:
        setup = tracker.setup_seconds(startup_seconds)
        if setup is not None:
            store.record_job_setup(setup)
    return keyed(result, key)


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
        metadata = {**metadata, "kind": name}
        store.put_artifact(key, arrays, metadata)
    return arrays, metadata


# the provenance "device" of a result assembled from cached units (no computation of its
# own), after the devices its units ran on: "cpu (assembled from cached units)"
ASSEMBLED = "(assembled from cached units)"

# how a wait is reported to ``progress`` (its stage text starts so): the CLI says each off a
# terminal, where the bar that shows them is not drawn
WAITING_FOR_OTHER = "computed by another process"
WAITING_FOR_SLOT = "queued, position"


def is_assembled(result: AnalysisResult) -> bool:
    """Whether ``result`` was assembled from cached units rather than computed as a whole."""
    return str(result.provenance.get("device", "")).endswith(ASSEMBLED)


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

    def run_task(self, name: str, spec: dict) -> tuple[dict, dict]:
        """Blocking ``submit_task``: the cached artifact, or compute it here (under the key's
        lock, in a compute slot) and store it; what `coherence study` (and so the demo)
        precomputes for the dashboard's panels."""
        key = tasks.task_key(name, spec)
        found = self.store.get_artifact(key)
        if found is not None:
            return found
        lock = KeyLock(self.store.lock_path(key))
        lock.acquire(blocking=True)
        try:
            found = self.store.get_artifact(key)
            if found is not None:
                return found
            self.store.clear_cancel(key)
            with slots.compute_slot(key):
                return compute_task(self.store, key, name, spec)
        finally:
            lock.release()

    def artifact(self, key: str) -> tuple[dict, dict] | None:
        """(arrays, metadata) of a finished job of another kind, or None."""
        return self.store.get_artifact(key)

    def _start(self, key: str, put_spec: Callable[[], None], kind: str, trust_code: bool) -> str:
        lock = KeyLock(self.store.lock_path(key))
        if not acquire_soon(lock):
            return key  # a job for this key is running: share it
        try:
            if done_age(self.store, key) is not None:
                return key  # finished between the first look and the lock
            put_spec()
            self.store.clear_cancel(key)
            log_path = self.store.log_path(key)
            now = time.time()
            starting = ProgressRecord(
                JobState.RUNNING, 0.0, STARTING_STAGE, now, now, log=str(log_path)
            )
            self.store.set_progress(key, starting)
            try:
                self._spawn(key, lock, log_path, trust_code, kind)
            except OSError as error:
                failed = replace(
                    starting, state=JobState.FAILED, error=internal_error_message(error, None)
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
            "--spawned",
            repr(time.time()),
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
        return job_status(self.store, key)

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
        return cached_unit_count(self.store, request)

    def available(self, request: AnalysisRequest) -> bool:
        """Whether ``request``'s result shows without computing: stored, or missing with every
        unit of it cached so that ``materialize`` assembles it (a result file lost or damaged,
        its units kept), as the dashboard's page and the report do. Key lookups only."""
        state = self.status(request_key(request)).state
        if state != JobState.MISSING:  # done, or a job's own state (a failed or cancelled
            return state == JobState.DONE  # one is shown as such, not assembled)
        done, total = self.cached_unit_count(request)
        return total > 0 and done == total

    def materialize(
        self, request: AnalysisRequest, *, prepared: Prepared | None = None
    ) -> AnalysisResult | None:
        """The result of ``request`` assembled from cached units when every unit is there
        (a subset of a cached selection: fewer seeds, batches or responses), stored under the
        request's key so its status is "done"; None when a unit is missing. Cheap on a miss
        (a few key lookups), so the dashboard asks it before offering to compute.
        ``prepared``: the request's ``pipeline.prepare`` if the caller already has it."""
        key = request_key(request)
        cached = self.store.get(key)
        if cached is not None:
            return relabel(cached, request)
        units = cached_units(self.store, request)
        if len(units) < request.n_units:
            return None
        started = time.perf_counter()
        info, batches = prepare(request) if prepared is None else prepared
        # the devices the units ran on stay in the provenance ("cpu (assembled …)")
        ran_on = sorted(
            {str(u.diagnostics["device"]) for u in units.values() if u.diagnostics.get("device")}
        )
        result = assemble(
            request,
            info,
            batches,
            list(units.values()),
            device=" ".join([", ".join(ran_on), ASSEMBLED]).strip(),
            seconds=time.perf_counter() - started,
        )
        self.store.put(key, result)
        return keyed(result, key)

    def run(
        self,
        request: AnalysisRequest,
        *,
        progress: Progress | None = None,
        trust_code: bool = False,
        executor: Executor | None = None,
        prepared: Prepared | None = None,
        say: Callable[[str], None] | None = None,
    ) -> AnalysisResult:
        """Blocking: the cached result, or wait for the job computing it, or compute it here
        (under the key's lock, in a compute slot: see ``slots``) and store it. ``executor``:
        where the units compute (default ``get_executor()``); a cluster needs no local slot.
        ``prepared``: the request's ``pipeline.prepare`` if the caller already made it.
        ``say``: a log line's sink, told when other processes' work leaves the job fewer
        threads than its share (``Slot.crowded_note``)."""
        key = request_key(request)
        cached = self.materialize(request, prepared=prepared)
        if cached is not None:
            return cached
        lock = KeyLock(self.store.lock_path(key))

        def show_other_job() -> None:
            record = self.store.get_progress(key)
            if progress is not None and record is not None and record.state == JobState.RUNNING:
                progress(record.fraction, f"{WAITING_FOR_OTHER}: {record.stage}")

        def show_queue(position: int) -> None:
            if progress is not None:
                progress(0.0, f"{WAITING_FOR_SLOT} {position}: waiting for a free compute slot")

        lock.acquire(blocking=True, on_wait=show_other_job)
        try:
            cached = self.store.get(key)
            if cached is not None:
                return relabel(cached, request)
            self.store.clear_cancel(key)
            executor = executor or get_executor()
            slot = (
                slots.compute_slot(key, on_wait=show_queue, on_crowded=say)
                if executor.local
                else nullcontext()
            )
            with slot:  # after the key lock, always
                return compute_job(
                    self.store,
                    key,
                    request,
                    trust_code=trust_code,
                    progress=progress,
                    executor=executor,
                    prepared=prepared,
                )
        finally:
            lock.release()
