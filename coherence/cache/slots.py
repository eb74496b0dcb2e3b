"""Compute slots: at most ``COHERENCE_MAX_JOBS`` heavy computations at once on a machine,
each on its share of the cores.

Why: two torch processes that each spin a thread per core run many times slower side by side
than one after the other (a demo UNet trained in 37 s alone and 396 s beside one other job on
2 cores), and every dashboard session could start a worker. So every process that computes
(a dashboard job worker, ``coherence analyze|train|simulate``) first takes one of
``max_jobs()`` slots, waiting in a first-come queue while all are taken, and then runs torch
on ``threads_per_job()`` threads: its share of the cores, less those other programs keep
busy when it starts (slots cannot see them: a user's own script, another user's job).

Settings: ``COHERENCE_MAX_JOBS`` (default 1 on ≤ 4 cores, else cores // 2; ``machine_cores``
counts them, a cgroup's CPU limit included),
``COHERENCE_TORCH_THREADS`` (threads per job; default cores // max jobs),
``COHERENCE_SLOTS_DIR`` (default ``$XDG_RUNTIME_DIR/coherence-slots``, else
``<tmp>/coherence-slots-<uid>``: one per user and machine; processes that should share the
rule must see the same directory and the same COHERENCE_MAX_JOBS).

Mechanism, OS file locks only (no daemon): ``slot-<i>.lock`` (i < max jobs) is flock-held by
the process computing in slot i; ``queue/<ns>-<pid>-<c|n>-<label>.ticket`` is flock-held by a
waiting process, names in arrival order. Only the oldest live ticket may take a free slot, so
waiting is first come, first served, and a ticket's rank is the queue position the dashboard
shows. The OS drops a flock when its process dies, even by SIGKILL: a killed holder frees its
slot, a killed waiter leaves the queue (its dead ticket file is removed by whoever sees it).
This module imports only the standard library until a slot is taken, so a queued job worker
costs a few MB. A waiter that passed ``cancellable=True`` (ticket flag ``c``) stops waiting on
SIGUSR1 (``cancel_waiter``), which its process must handle (``install_cancel_handler``).

One slot per process: a nested ``compute_slot`` reuses the one held. Take an analysis's key
lock before its slot, never the other way round (a slot holder waiting for a key lock whose
holder waits for a slot would deadlock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from coherence.cache.cpu_quota import quota_cores
from coherence.errors import CoherenceError, RequestError
from coherence.wording import plural

MAX_JOBS_ENV = "COHERENCE_MAX_JOBS"
THREADS_ENV = "COHERENCE_TORCH_THREADS"
DIR_ENV = "COHERENCE_SLOTS_DIR"
POLL_SECONDS = 0.25
CANCEL_SIGNAL = signal.SIGUSR1
_TICKET = re.compile(r"(\d{20})-(\d+)-([cn])-([A-Za-z0-9_.-]+)\.ticket")


class QueueCancelled(CoherenceError):
    """A waiting process was asked to stop waiting (its job was cancelled while queued)."""


@dataclass(frozen=True)
class Slot:
    """The slot this process computes in."""

    index: int
    max_jobs: int
    threads: int
    cores_taken: int = 0  # by other processes when the slot was taken (``threads_per_job``)

    def crowded_note(self) -> str | None:
        """What a log says when other processes' work left this job fewer threads than its
        share of the cores (``threads_per_job``), else None."""
        share = core_share(self.max_jobs)
        if self.threads >= share or not self.cores_taken:  # a count the user set reads none
            return None
        return (
            f"other processes keep {self.cores_taken} of {plural(visible_cpus(), 'core')} busy: "
            f"computing on {plural(self.threads, 'torch thread')}, not {share} ({share} would "
            f"compete with them for the cores; {THREADS_ENV} sets the count)"
        )


def machine_cores() -> int:
    """Cores this process may compute on: the CPUs of its affinity set (cpuset aware), fewer
    where its cgroup's CPU limit allows less (``docker run --cpus 2`` on a large host)."""
    cpus, limit = visible_cpus(), quota_cores()
    return min(cpus, limit) if limit else cpus


def visible_cpus() -> int:
    """CPUs in this process's affinity set: those other processes' load is read over."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_env(name: str, example: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise RequestError(f"{name}={text!r}: expected a whole number ≥ 1, e.g. {example}")
    return value


def max_jobs() -> int:
    """How many computations may run at once (``COHERENCE_MAX_JOBS``, else by core count)."""
    configured = _positive_env(MAX_JOBS_ENV, "1")
    if configured is not None:
        return configured
    cores = machine_cores()
    return 1 if cores <= 4 else cores // 2


def threads_per_job(jobs: int | None = None) -> int:
    """Torch threads for one computation: ``COHERENCE_TORCH_THREADS``, else its core share,
    less the cores other processes keep busy now (``cores_taken_by_others``).

    Why the second rule: slots keep this project's jobs apart, not a user's own scripts or
    another user's. Beside one busy process on 2 cores the demo UNet trained at 14.6 s an
    epoch on 2 threads and 5.7 s on 1 (bench/results/foreign_load.json), and a study's
    2-thread cost probes beside other work quoted a demo of minutes at 7.5 h."""
    return threads_and_taken(jobs)[0]


def threads_and_taken(jobs: int | None = None) -> tuple[int, int]:
    """``threads_per_job`` and the cores other processes kept busy in the reading that
    decided it (0 when ``COHERENCE_TORCH_THREADS`` decides): one reading for both, so a
    note never quotes another reading than the one the thread count came from."""
    configured = _positive_env(THREADS_ENV, "1")
    if configured is not None:
        return configured, 0
    taken = cores_taken_by_others()
    return max(1, min(core_share(jobs), visible_cpus() - taken)), taken


def core_share(jobs: int | None = None) -> int:
    """One job's share of the cores when nothing else computes: cores // max jobs."""
    return max(1, machine_cores() // (jobs or max_jobs()))


LOAD_SAMPLE_SECONDS = 0.2  # how long the CPU counters are watched
CONFIRM_GAP_SECONDS = 0.3  # before a second sample confirms a busy first one
LOAD_REUSE_SECONDS = 5.0  # a reading this recent is reused (a plan probes, then its job starts)
TAKEN_SHARE = 0.7  # others' use of a core, over the sample, that makes it theirs
_load_reading: list[tuple[float, int]] = []  # [(monotonic time, cores taken)] once read


def cores_taken_by_others(sample_seconds: float = LOAD_SAMPLE_SECONDS) -> int:
    """How many of this process's cores other processes kept busy over a short sample: the
    busy time of those CPUs in /proc/stat less this process's own CPU time, in cores, a
    fraction of TAKEN_SHARE and more counting as a whole core. A busy sample is confirmed by
    a second one CONFIRM_GAP_SECONDS later and the smaller kept, so a passing burst (the
    previous slot holder's exit, a page's rerun) does not halve a job's threads for its whole
    run. 0 where /proc/stat cannot be read (not Linux)."""
    now = time.monotonic()
    with _state_lock:
        if _load_reading and now - _load_reading[0][0] < LOAD_REUSE_SECONDS:
            return _load_reading[0][1]
    cpus = _affinity()
    taken = _sample_taken(cpus, sample_seconds)
    if taken:  # a slot handed over as its last holder exits, a page's rerun: passing
        time.sleep(CONFIRM_GAP_SECONDS)
        taken = min(taken, _sample_taken(cpus, sample_seconds))
    with _state_lock:
        _load_reading[:] = [(time.monotonic(), taken)]
    return taken


def _sample_taken(cpus: set[int] | None, seconds: float) -> int:
    """One sample of ``cores_taken_by_others``: others' CPU time over ``seconds``, in cores."""
    before, own_before = busy_cpu_seconds(cpus), _own_cpu_seconds()
    if before is None:
        return 0
    start = time.monotonic()
    time.sleep(seconds)
    after, own_after = busy_cpu_seconds(cpus), _own_cpu_seconds()
    elapsed = time.monotonic() - start
    if after is None or elapsed <= 0:
        return 0
    others = max(0.0, (after - before) - (own_after - own_before)) / elapsed
    return min(len(cpus) if cpus else visible_cpus(), int(others + 1 - TAKEN_SHARE))


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def busy_cpu_seconds(cpus: set[int] | None) -> float | None:
    """Seconds the CPUs in ``cpus`` (all when None) spent neither idle nor waiting for I/O,
    from /proc/stat's per-CPU lines, or None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy: dict[int, int] = {}
    for line in lines:
        name, *fields = line.split() or [""]
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy[int(name[3:])] = sum(values) - values[3] - values[4]
    # lxcfs numbers a container's CPUs from 0 whatever the host's ids in the affinity set
    chosen = [t for cpu, t in busy.items() if cpus is None or cpu in cpus] or busy.values()
    return sum(chosen) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def slots_dir() -> Path:
    """The per-user, per-machine directory of slot and ticket locks (created 0700)."""
    configured = os.environ.get(DIR_ENV)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if configured:
        path = Path(configured)
    elif runtime and Path(runtime).is_dir():
        path = Path(runtime) / "coherence-slots"
    else:
        path = Path(tempfile.gettempdir()) / f"coherence-slots-{os.getuid()}"
    (path / "queue").mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise CoherenceError(
            f"compute slot directory {path} is not a directory owned by you; point "
            f"{DIR_ENV} at a private directory"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def _try_lock(path: Path, *, create: bool = True) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None if it is held."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Ticket:
    """One live waiter: its file, process, label and whether SIGUSR1 cancels its wait."""

    path: Path
    pid: int
    label: str
    cancellable: bool


def waiting(directory: Path | None = None) -> list[Ticket]:
    """Live tickets, oldest first; dead ones (their process is gone) are removed."""
    queue = (directory or slots_dir()) / "queue"
    live = []
    for path in sorted(queue.glob("*.ticket")):
        match = _TICKET.fullmatch(path.name)
        if match is None:
            continue
        try:
            fd = _try_lock(path, create=False)
        except FileNotFoundError:
            continue  # its waiter took a slot while we looked
        if fd is None:
            ticket = Ticket(path, int(match[2]), match[4], match[3] == "c")
            live.append(ticket)
        else:
            path.unlink(missing_ok=True)  # its process died while waiting
            os.close(fd)
    return live


def queue_position(label: str) -> int | None:
    """1-based place in the queue of the oldest waiter with ``label``; None if none waits."""
    for rank, ticket in enumerate(waiting(), start=1):
        if ticket.label == label:
            return rank
    return None


def cancel_waiter(label: str) -> bool:
    """Tell the cancellable waiter with ``label`` to stop waiting (SIGUSR1); False if none."""
    for ticket in waiting():
        if ticket.label == label and ticket.cancellable:
            try:
                os.kill(ticket.pid, CANCEL_SIGNAL)
            except ProcessLookupError:
                return False
            return True
    return False


_cancel_requested = threading.Event()


def install_cancel_handler() -> None:
    """Make SIGUSR1 stop this process's wait for a slot (main thread, before waiting; the
    handler stays for the process's life, so a late signal cannot kill it)."""
    signal.signal(CANCEL_SIGNAL, lambda _signum, _frame: _cancel_requested.set())


def _ticket(directory: Path, label: str, cancellable: bool) -> tuple[Path, int]:
    """Join the queue: lock a fresh file, then rename it into place (never seen unlocked)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label) or "job"
    flag = "c" if cancellable else "n"
    name = f"{time.time_ns():020d}-{os.getpid()}-{flag}-{safe}.ticket"
    staging = directory / f".{name}.new"
    fd = _try_lock(staging)
    assert fd is not None  # a fresh, unique name
    target = directory / "queue" / name
    os.rename(staging, target)
    return target, fd


def _take_free_slot(directory: Path, jobs: int) -> tuple[int, int] | None:
    for index in range(jobs):
        fd = _try_lock(directory / f"slot-{index}.lock")
        if fd is not None:
            return index, fd
    return None


def acquire(
    label: str,
    *,
    on_wait: Callable[[int], None] | None = None,
    cancellable: bool = False,
    poll_seconds: float = POLL_SECONDS,
) -> tuple[Slot, int]:
    """Wait in the queue for a slot; returns it and the descriptor that holds it.

    ``on_wait(position)`` is called on every poll while waiting (position 1 = next).
    Raises QueueCancelled if this process got SIGUSR1 (with ``cancellable``).
    """
    directory = slots_dir()
    jobs = max_jobs()
    ticket, ticket_fd = _ticket(directory, label, cancellable)
    try:
        while True:
            if cancellable and _cancel_requested.is_set():
                raise QueueCancelled(f"{label}: cancelled while waiting for a compute slot")
            queue = waiting(directory)
            position = next((r for r, t in enumerate(queue, 1) if t.path == ticket), 1)
            if position == 1:
                taken = _take_free_slot(directory, jobs)
                if taken is not None:
                    index, fd = taken
                    # once the slot is ours: the load may have changed during the wait
                    return Slot(index, jobs, *threads_and_taken(jobs)), fd
            if on_wait is not None:
                on_wait(position)
            time.sleep(poll_seconds)
    finally:
        ticket.unlink(missing_ok=True)
        os.close(ticket_fd)


_state_lock = threading.Lock()
_measuring = threading.RLock()  # one cost probe at a time per process (``measuring_slot``)
_probe_holds_slot = threading.Event()  # set while this process's probe holds a slot
MEASURING_WAIT_SECONDS = 60.0  # a probe times one batch's forward twice: seconds, not minutes
_held: list = []  # [Slot, descriptor, depth, torch threads before] while this process holds one


@contextlib.contextmanager
def compute_slot(
    label: str,
    *,
    on_wait: Callable[[int], None] | None = None,
    cancellable: bool = False,
    on_crowded: Callable[[str], None] | None = None,
) -> Iterator[Slot]:
    """Hold a compute slot (waiting for one if needed) and run torch on the slot's threads;
    the previous thread count is restored and the slot freed on exit. Re-entrant.
    ``on_crowded``: told the slot's ``crowded_note`` once the slot is taken, when there is
    one (other processes' work left the job fewer threads than its share)."""
    with _state_lock:
        if _held:
            _held[2] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield _held[0]
        finally:
            with _state_lock:
                _held[2] -= 1
        return
    slot, fd = acquire(label, on_wait=on_wait, cancellable=cancellable)
    import torch  # only now: a waiting process stays small

    before = torch.get_num_threads()
    torch.set_num_threads(slot.threads)
    with _state_lock:
        _held[:] = [slot, fd, 1, before]
    try:
        if on_crowded is not None and (crowded := slot.crowded_note()):
            on_crowded(crowded)
        yield slot
    finally:
        with _state_lock:
            _held.clear()
        torch.set_num_threads(before)
        os.close(fd)


def queue_notice(say: Callable[[str], None]) -> Callable[[int], None]:
    """An ``on_wait`` for ``compute_slot`` that says each new queue position once (the wait
    polls every POLL_SECONDS; the line would repeat at that rate)."""
    said = [0]

    def on_wait(position: int) -> None:
        if position != said[0]:
            say(f"queued, position {position}: waiting for a free compute slot")
            said[0] = position

    return on_wait


def _free_slot_now() -> tuple[int, int] | None:
    """A free slot taken without queuing (index, descriptor), or None when every slot is
    held or other processes queue for the next one (they go first)."""
    directory = slots_dir()
    return None if waiting(directory) else _take_free_slot(directory, max_jobs())


def busy() -> bool:
    """Whether other processes hold every compute slot (or queue for one) right now. A slot
    this process holds, for a job or for another thread's cost probe (a dashboard rerun that
    overlaps the one before it), is not another process's: reading it so told the page that
    another job was computing and greyed out Compute."""
    if held_slot() is not None or _probe_holds_slot.is_set():
        return False
    taken = _free_slot_now()
    if taken is None:
        return True
    os.close(taken[1])
    return False


@contextlib.contextmanager
def measuring_slot() -> Iterator[bool]:
    """Hold a free compute slot, without queuing, while a cost probe times a model, on the
    job's share of the threads; yields whether it could (or this process holds one already);
    a probe in another thread of this process is waited for, not read as another job.

    Why: a probe beside another process's computation runs oversubscribed (on 2 cores 5-10×
    slow), and the estimate it gave (a 25 s analysis quoted at 26 min) asked for a
    confirmation or refused the job. A False yield says the timing is not to be trusted; the
    probe never waits for a slot, so a plan is not held up by a long job."""
    if held_slot() is not None:
        yield True
        return
    # another thread of this process times now (two pages of one dashboard, or a rerun
    # overlapping the one before it): the thread count is the process's own, so wait for it
    if not _measuring.acquire(timeout=MEASURING_WAIT_SECONDS):
        yield False
        return
    try:
        if _probe_holds_slot.is_set():  # this thread's own probe, nested (an RLock)
            yield True
            return
        taken = _free_slot_now()
        if taken is None:  # every slot computes, or others queue for the next one
            yield False
            return
        _probe_holds_slot.set()
        try:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads_per_job())
            try:
                yield True
            finally:
                torch.set_num_threads(before)
        finally:
            _probe_holds_slot.clear()
            os.close(taken[1])
    finally:
        _measuring.release()


def held_slot() -> Slot | None:
    """The slot this process holds, if any."""
    with _state_lock:
        return _held[0] if _held else None
