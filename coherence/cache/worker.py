"""The background worker: ``python -m coherence.cache.worker --workspace W --key K``.

Started detached by ``JobRunner.submit`` (its stdout/stderr go to ``<cache>/logs/<K>.log``).
It holds the key's lock for the whole job (inherited via ``--lock-fd``, or taken here; if
another worker holds it, this one exits quietly), then waits for a compute slot (``slots``:
a first-come queue, torch not yet imported; SIGUSR1 from ``JobRunner.cancel`` ends the wait),
reads the request stored under the key, checks that it still hashes to the key, computes on
the slot's torch threads, stores the result and records how it ended. With
COHERENCE_RAY_ADDRESS set the units compute on that Ray cluster instead, without a slot.
``--trust-code`` comes only from the command line, never from the cache directory.

``--kind`` names a job of another kind (``coherence.cache.tasks``): its spec is read from
``task:<K>`` and its result stored as an npz + JSON artifact; everything else is the same.

Exit status: 0 done (or nothing to do), 1 failed, 3 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from coherence.cache import layout, slots
from coherence.cache.locks import KeyLock, acquire_soon
from coherence.cache.states import JobState, ProgressRecord
from coherence.executors import ray_address
from coherence.workspace import cache_dir

log = logging.getLogger("coherence.cache.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m coherence.cache.worker",
        description="Compute one stored analysis request and cache its result.",
    )
    parser.add_argument("--workspace", required=True, help="workspace directory")
    parser.add_argument("--key", required=True, help="request key (64 hex digits)")
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited lock descriptor")
    parser.add_argument(
        "--trust-code", action="store_true", help="allow custom architecture modules"
    )
    parser.add_argument(
        "--spawned", type=float, default=None, help="unix time the runner started this process"
    )
    parser.add_argument(
        "--kind", default="analysis", help="job kind: analysis, or one of coherence.cache.tasks"
    )
    return parser.parse_args(argv)


def _record(store: Any, key: str, state: JobState, message: str) -> None:
    now = time.time()
    log_path = str(store.log_path(key))
    store.set_progress(key, ProgressRecord(state, 0.0, "", now, now, error=message, log=log_path))


def _fail(store: Any, key: str, message: str) -> int:
    _record(store, key, JobState.FAILED, message)
    log.error("%s", message)
    return 1


def _stale(store: Any, key: str, current_key: Any, what: str) -> int | None:
    """1 (recorded as failed) when the stored job's inputs no longer give ``key`` (a file
    changed since it was submitted, or its key cannot be computed); None when they do."""
    from coherence.errors import CoherenceError

    try:
        current = current_key()
    except CoherenceError as error:
        return _fail(store, key, str(error))
    if current != key:
        return _fail(
            store,
            key,
            f"the stored {what} no longer matches its key (a checkpoint or dataset file "
            f"changed since it was submitted); submit {'it' if what == 'job' else 'the analysis'}"
            " again",
        )
    return None


def work_task(store: Any, key: str, kind: str) -> int:
    """A job of another kind (``tasks``): its stored spec, checked against the key."""
    from coherence.cache.jobs import compute_task
    from coherence.cache.tasks import task_key

    if store.artifact_age(key) is not None:
        log.info("%s is already cached; nothing to do", key)
        return 0
    found = store.get_task(key)
    if found is None or found[0] != kind:
        return _fail(store, key, f"no {kind} job is stored for this key; submit it again")
    if (failed := _stale(store, key, lambda: task_key(kind, found[1]), "job")) is not None:
        return failed
    log.info("computing %s %s: %s", kind, key, found[1])
    started = time.perf_counter()
    compute_task(store, key, kind, found[1], log_path=store.log_path(key))
    log.info("done in %.1f s", time.perf_counter() - started)
    return 0


def work(
    store: Any, key: str, *, trust_code: bool, kind: str = "analysis", spawned: float | None = None
) -> int:
    """The job itself; the caller holds the key's lock and a compute slot. ``spawned``: when
    the runner spawned this worker, less its wait for the slot (the job's setup counts from
    there: interpreter, imports, loading, tracing); None when not known."""
    from coherence.cache.jobs import compute_job
    from coherence.cache.keys import request_key

    if kind != "analysis":
        return work_task(store, key, kind)
    if store.age(key) is not None:
        log.info("%s is already cached; nothing to do", key)
        return 0
    request = store.get_request(key)
    if request is None:
        return _fail(store, key, "no request is stored for this key; submit the analysis again")
    if (failed := _stale(store, key, lambda: request_key(request), "request")) is not None:
        return failed
    log.info("computing %s: %s", key, request.to_dict())
    startup = None if spawned is None else max(time.time() - spawned, 0.0)
    started = time.perf_counter()
    compute_job(
        store,
        key,
        request,
        trust_code=trust_code,
        log_path=store.log_path(key),
        startup_seconds=startup,
    )
    log.info("done in %.1f s", time.perf_counter() - started)
    return 0


def compute(
    workspace: str,
    key: str,
    slot: slots.Slot | None,
    *,
    trust_code: bool,
    kind: str = "analysis",
    spawned: float | None = None,
) -> int:
    """Open the store and run the job, mapping how it ended to the exit status (``slot``
    None: the units compute on the Ray cluster of COHERENCE_RAY_ADDRESS)."""
    from coherence.cache.jobs import JobCancelled, internal_error_message
    from coherence.cache.store import ResultStore
    from coherence.errors import CoherenceError

    if slot is None:
        log.info("computing on the Ray cluster at %s", ray_address())
    else:
        log.info(
            "compute slot %d of %d, %d torch threads", slot.index + 1, slot.max_jobs, slot.threads
        )
    store = ResultStore(cache_dir(workspace))
    try:
        return work(store, key, trust_code=trust_code, kind=kind, spawned=spawned)
    except JobCancelled as error:
        log.info("%s", error)
        return 3
    except CoherenceError as error:
        log.error("%s", error)  # recorded by compute_job
        return 1
    except Exception as error:
        log.exception("%s", internal_error_message(error, store.log_path(key)))
        return 1
    finally:
        store.close()


def cancelled_while_queued(workspace: str, key: str, kind: str = "analysis") -> int:
    """Record the cancellation (still under the key's lock) and clear the cancel flag."""
    from coherence.cache.store import ResultStore

    message = f"{kind} {key[:12]} was cancelled while queued; submit it again to compute it"
    with ResultStore(cache_dir(workspace)) as store:
        _record(store, key, JobState.CANCELLED, message)
        store.clear_cancel(key)
    log.info("%s", message)
    return 3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    key = layout.validate_key(args.key)
    lock_path = layout.lock_path(cache_dir(args.workspace), key)
    if args.lock_fd is not None:
        lock = KeyLock.inherited(lock_path, args.lock_fd)
    else:
        lock = KeyLock(lock_path)
        if not acquire_soon(lock):
            log.info("another worker is computing %s; nothing to do", key)
            return 0
    slots.install_cancel_handler()
    last = [0]

    def show_queue(position: int) -> None:
        if position != last[0]:
            log.info("queued, position %d: waiting for a free compute slot", position)
            last[0] = position

    try:
        if ray_address() is not None:  # the cluster schedules the units: no local slot
            return compute(args.workspace, key, None, trust_code=args.trust_code, kind=args.kind)
        waiting = time.time()
        with slots.compute_slot(
            key, on_wait=show_queue, cancellable=True, on_crowded=lambda line: log.info(line)
        ) as slot:
            # the wait for a slot is not part of the job's setup
            spawned = None if args.spawned is None else args.spawned + time.time() - waiting
            return compute(
                args.workspace,
                key,
                slot,
                trust_code=args.trust_code,
                kind=args.kind,
                spawned=spawned,
            )
    except slots.QueueCancelled:
        return cancelled_while_queued(args.workspace, key, args.kind)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
