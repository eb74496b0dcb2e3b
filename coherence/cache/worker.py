"""The background worker: ``python -m coherence.cache.worker --workspace W --key K``.

Started detached by ``JobRunner.submit`` (its stdout/stderr go to ``<cache>/logs/<K>.log``).
It holds the key's lock for the whole job (inherited via ``--lock-fd``, or taken here; if
another worker holds it, this one exits quietly), reads the request stored under the key,
checks that it still hashes to the key, computes, stores the result and records how it
ended. ``--trust-code`` comes only from the command line, never from the cache directory.

Exit status: 0 done (or nothing to do), 1 failed, 3 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from coherence.cache.jobs import JobCancelled, acquire_soon, compute_job, internal_error_message
from coherence.cache.keys import request_key, validate_key
from coherence.cache.locks import KeyLock
from coherence.cache.store import ProgressRecord, ResultStore
from coherence.errors import CoherenceError
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
    return parser.parse_args(argv)


def _fail(store: ResultStore, key: str, message: str) -> int:
    now = time.time()
    log_path = str(store.log_path(key))
    store.set_progress(
        key, ProgressRecord("failed", 0.0, "", now, now, error=message, log=log_path)
    )
    log.error("%s", message)
    return 1


def work(store: ResultStore, key: str, *, trust_code: bool) -> int:
    """The job itself; the caller holds the key's lock."""
    if store.age(key) is not None:
        log.info("%s is already cached; nothing to do", key)
        return 0
    request = store.get_request(key)
    if request is None:
        return _fail(store, key, "no request is stored for this key; submit the analysis again")
    try:
        current = request_key(request)
    except CoherenceError as error:
        return _fail(store, key, str(error))
    if current != key:
        return _fail(
            store,
            key,
            "the stored request no longer matches its key (a checkpoint or dataset file "
            "changed since it was submitted); submit the analysis again",
        )
    log.info("computing %s: %s", key, request.to_dict())
    started = time.perf_counter()
    compute_job(store, key, request, trust_code=trust_code, log_path=store.log_path(key))
    log.info("done in %.1f s", time.perf_counter() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    key = validate_key(args.key)
    store = ResultStore(cache_dir(args.workspace))
    lock_path = store.lock_path(key)
    if args.lock_fd is not None:
        lock = KeyLock.inherited(lock_path, args.lock_fd)
    else:
        lock = KeyLock(lock_path)
        if not acquire_soon(lock):
            log.info("another worker is computing %s; nothing to do", key)
            return 0
    try:
        return work(store, key, trust_code=args.trust_code)
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
        lock.release()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
