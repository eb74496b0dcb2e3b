"""What every `coherence` sub-command shares: the console, one-line errors, progress bars,
compute slots, the confirmation of long jobs and the --ray-address option."""

from __future__ import annotations

import errno
import functools
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from coherence.errors import CoherenceError, RequestError

# markup off: messages carry paths and user text ("run[gas]/…", "[/x]"), which markup ate or
# crashed on; styled parts are rich Text (``styled``).
# console: messages and progress (stderr: stdout stays for a command's product);
# product: what a command was asked for, e.g. `study --plan`'s plan (redirectable)
# soft_wrap: no line breaks of rich's own (at 80 columns off a terminal), which split the
# commands and links a message suggests, and a redirected plan's phrases, when copied
console = Console(stderr=True, markup=False, soft_wrap=True)
product = Console(markup=False, soft_wrap=True)
F = TypeVar("F", bound=Callable)

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Compute on this Ray cluster (HOST:PORT); default $COHERENCE_RAY_ADDRESS, else here.",
    ),
]


def connect_early(executor) -> CoherenceError | None:
    """Connect to the executor's cluster now, so that an unreachable one is known in seconds;
    the error is returned, not raised: a request the cache serves needs no cluster (a
    cached analysis failed when the cluster was down)."""
    try:
        executor.connect()
    except CoherenceError as error:
        return error
    return None


def say_cluster_faults(executor) -> None:
    """Before computing on a Ray cluster: what happens if it goes down. Ray itself ends the
    driver when its node's object store vanishes (status 1, no message of ours: measured
    with `ray stop` mid-unit), so the one place to say it is before."""
    if not executor.local:
        console.print(
            f"computing on the Ray cluster at {executor.address}: each unit is cached as it "
            "finishes; should the cluster go down, Ray may end this command at once (exit "
            "status 1, after its own log line): rerun it to resume from the cached units",
            highlight=False,
        )


DEBUG_ENV = "COHERENCE_DEBUG"  # set: a file-system error shows its traceback too


def all_or_nothing(func: F) -> F:
    """``friendly_errors`` for a command that commits all its files or none (an import, a
    simulation): its Ctrl-C says that nothing was written, not that a rerun goes on from
    there (a simulate's spoke of checkpoint epochs and cached units)."""
    return friendly_errors(func, interrupted=IMPORT_INTERRUPTED, after_full=AFTER_FULL_IMPORT)


_FIELD = re.compile(r"([a-z][a-z0-9_]*)=(\S+?):")


def as_flag(message: str, options: Collection[str]) -> str:
    """A message that opens with a request's field (``epochs=0: …``, the words of the
    library's checks) opened with the command's own flag instead (``--epochs 0: …``), where
    the command has a parameter of that name (``options``: its function's; Typer spells the
    flag with dashes); any other message as it is."""
    match = _FIELD.match(message)
    if match is None or match.group(1) not in options:
        return message
    flag = "--" + match.group(1).replace("_", "-")
    return f"{flag} {match.group(2)}:{message[match.end() :]}"


def friendly_errors(func: F, interrupted: str | None = None, after_full: str | None = None) -> F:
    """Turn CoherenceError into one red line and exit status 2; a file-system error the
    checks did not foresee (an --out that is a file, a folder that is missing) too, naming
    the path, rather than a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CoherenceError as exc:
            line = styled(("error:", "bold red"), f" {as_flag(str(exc), kwargs)}")
            console.print(line, highlight=False)
            raise typer.Exit(code=2) from None
        except (
            FileExistsError,
            FileNotFoundError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
        ) as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            console.print(
                styled(
                    ("error:", "bold red"),
                    f" {exc.strerror or exc}{where}; check the paths given "
                    f"(set {DEBUG_ENV}=1 for the traceback)",
                ),
                highlight=False,
            )
            raise typer.Exit(code=2) from None
        except OSError as exc:  # after the subclasses above
            if os.environ.get(DEBUG_ENV):
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            if disk_full(exc):
                message = f"{DISK_FULL}{where}; {after_full or AFTER_FULL}"
            elif exc.errno == errno.EROFS:  # a read-only mount (a shared or archived workspace)
                message = f"the file system is read-only{where}; {AFTER_READ_ONLY}"
            else:
                raise
            console.print(styled(("error:", "bold red"), f" {message}"))
            raise typer.Exit(code=2) from None
        except (MemoryError, RuntimeError) as exc:  # torch's allocators raise RuntimeError
            if os.environ.get(DEBUG_ENV):
                raise
            if disk_full(exc):  # HDF5 closing a file on a full disk raises a RuntimeError
                tail = after_full or AFTER_FULL
                console.print(styled(("error:", "bold red"), f" {DISK_FULL}; {tail}"))
                raise typer.Exit(code=2) from None
            if not out_of_memory(exc):
                raise
            what = str(exc).splitlines()[0][:200] if str(exc) else "an allocation failed"
            console.print(styled(("error:", "bold red"), f" out of memory ({what}); {AFTER_OOM}"))
            raise typer.Exit(code=2) from None
        except sqlite3.DatabaseError as exc:  # the result cache's, met while in use
            if os.environ.get(DEBUG_ENV):
                raise
            if "full" in str(exc):  # "database or disk is full"
                message = f"{DISK_FULL} (the result cache could not record: {exc}); "
                message += after_full or AFTER_FULL
            elif not damaged_database(exc):
                raise
            else:  # pages of cache.db written over: only its opening checked it
                message = damaged_cache_message(exc, kwargs.get("workspace"))
            console.print(styled(("error:", "bold red"), f" {message}"), highlight=False)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            console.print(interrupted or INTERRUPTED, highlight=False)
            raise typer.Exit(code=INTERRUPTED_STATUS) from None

    return wrapper  # type: ignore[return-value]


INTERRUPTED_STATUS = 130  # a command ended by Ctrl-C (128 + SIGINT, as shells report it)


def damaged_database(error: BaseException) -> bool:
    """sqlite's plain DatabaseError ("malformed", "file is not a database"): the database
    is damaged. Its subclasses are not: locked or read-only (OperationalError), or a bug of
    ours (ProgrammingError, IntegrityError), which must never lead to clearing the cache."""
    return type(error) is sqlite3.DatabaseError


def damaged_cache_message(error: BaseException, workspace: object = None) -> str:
    """What a damaged cache database means and the command that starts it afresh (the
    workspace as the command was given it). Why: a database damaged past its first pages
    opened fine and failed later, in sqlite's traceback, `cache clear` included."""
    from coherence.wording import shell_command
    from coherence.workspace import checked_workspace

    try:
        root = checked_workspace(workspace if isinstance(workspace, str | Path) else None)
    except CoherenceError:
        root = None
    clear = ["coherence", "cache", "clear", *(["--workspace", root] if root else []), "--yes"]
    return (
        f"the workspace's result cache database is damaged ({error}); "
        f"`{shell_command(*clear)}` starts it afresh (results are recomputed on demand; "
        f"checkpoints and data are not touched) (set {DEBUG_ENV}=1 for the traceback)"
    )


DISK_FULL = "the disk is full"
AFTER_FULL = (
    "free space there, or write to another disk (--workspace, --out); what was finished is "
    f"kept and a rerun goes on from it (set {DEBUG_ENV}=1 for the traceback)"
)
AFTER_FULL_IMPORT = (
    "free space there, or write to another disk (--out); the dataset is written all at once "
    "or not at all, so nothing was written: rerun the same command once there is room (set "
    f"{DEBUG_ENV}=1 for the traceback)"
)
AFTER_READ_ONLY = (
    "write to a place you can write (--out, --workspace, COHERENCE_WORKSPACE) (set "
    f"{DEBUG_ENV}=1 for the traceback)"
)
AFTER_OOM = (
    "this step needs more memory than is free: use smaller pieces (import --limit, train "
    "--batch-size, analyze a shorter --window or fewer --trajectories) or a machine with more "
    f"memory (set {DEBUG_ENV}=1 for the traceback)"
)


def out_of_memory(exc: BaseException) -> bool:
    """MemoryError (numpy, Python), torch's CPU allocator failing (a RuntimeError naming
    DefaultCPUAllocator) and CUDA's OutOfMemoryError (a RuntimeError subclass)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return "DefaultCPUAllocator: can't allocate memory" in text or "CUDA out of memory" in text


def disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also where h5py reports it only in its message (errno None, or a
    RuntimeError when the disk fills while a file is flushed on close)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


# what Ctrl-C leaves: every command saves whole pieces (checkpoints, cached units, staged
# datasets committed in one rename), so a rerun goes on from the last one
INTERRUPTED = (
    "interrupted: what was finished is saved (checkpoint epochs, cached units, committed "
    "files); rerun the same command to go on from there"
)
IMPORT_INTERRUPTED = (
    "interrupted: a dataset is written all at once or not at all, so nothing was written "
    "unless the commit had begun; rerun the same command: it finishes a begun commit, or "
    "starts again"
)

# a report computes nothing and writes its file in one rename (atomic_write_bytes)
REPORT_INTERRUPTED = (
    "interrupted: no report was written (the file is written whole or not at all, and an "
    "earlier one at --out is kept); rerun the same command"
)


def report_errors(func: F) -> F:
    """``friendly_errors`` for `report`: its Ctrl-C said that checkpoint epochs and cached
    units were saved, of a command that saves neither."""
    return friendly_errors(func, interrupted=REPORT_INTERRUPTED)


def warn(message: str, *, loud: bool = False, to: Console = console) -> None:
    """One warning line on the console (stderr): yellow "warning:", bold where it qualifies
    a result (an unconverged solve), the message printed as it is (no markup read in it)."""
    style = "bold yellow" if loud else "yellow"
    to.print(styled(("warning:", style), f" {message}"), highlight=False, soft_wrap=True)


def log_line(line: str, *, to: Console = console) -> None:
    """A training's log line as the CLI shows it: one marked as a warning (training.WARNING,
    a worker's relayed ones too) as ``warn`` does, the rest as it is."""
    from coherence.surrogates.training import WARNING

    if line.startswith(WARNING):
        warn(line.removeprefix(WARNING), to=to)
    else:
        to.print(line, markup=False, highlight=False, soft_wrap=True)


def note_unlisted(out: Path, kind: str, workspace: Path | None = None) -> None:
    """A note where ``out`` (a dataset or checkpoint just written) is not a folder of the
    workspace's ``datasets/`` or ``checkpoints/``: the dashboard lists only those, and an
    import to ``/data/ce`` was accepted in silence, then missing from every selector."""
    from coherence.workspace import ENV_VAR, workspace_root

    folder = (workspace_root(workspace) / f"{kind}s").resolve()
    where = out.resolve()
    if where.parent == folder or where.parent.name == f"{kind}s":
        return  # this workspace's, or another workspace's that `serve --workspace` lists
    console.print(
        f"note: the dashboard lists the {kind}s in {folder}/, so it will not list this one; "
        f"move it there, or serve a workspace whose {kind}s/ folder holds it "
        f"(`coherence serve --workspace DIR` or {ENV_VAR}); the CLI reads it where it is",
        highlight=False,
    )


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and (text, style) pairs: styles without markup, so nothing in
    a path or message is read as markup."""
    return Text.assemble(*parts)


def progress_bar(transient: bool = False) -> Progress:
    """A bar for one command's work; ``transient`` removes it when done (for commands whose
    log lines already say what finished, where a last frame would repeat a stale stage)."""
    return Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def compute_slot(label: str, *, say_crowded: bool = True):
    """Hold one of the machine's compute slots while a command computes (coherence.cache.slots:
    COHERENCE_MAX_JOBS at once, each on its share of the cores); says so while it waits, and
    (``say_crowded``) when other processes' work leaves it fewer threads than its share."""
    from coherence.cache.slots import compute_slot as slot
    from coherence.cache.slots import queue_notice

    crowded = log_line if say_crowded else None
    return slot(label, on_wait=queue_notice(console.print), on_crowded=crowded)


class PlainProgress:
    """A job's progress as plain lines where no bar is drawn (off a terminal: a log, CI): each
    wait said once (a log showed a silent wait, then another process's time as this one's),
    and a line per tenth of the job, counted afresh when the work changes hands (another
    process stopped at 90 %: this one's own tenths were lost). ``seen``: the waits met and
    "here" once this process computes, said or not (analyze tells a served result by it)."""

    def __init__(self, say: Callable[[str], None], terminal: bool) -> None:
        from coherence.cache.jobs import WAITING_FOR_OTHER, WAITING_FOR_SLOT

        self.waits = {
            WAITING_FOR_OTHER: "another process is computing this selection: waiting for its "
            "result (served from the cache when it is done)",
            WAITING_FOR_SLOT: "waiting for a free compute slot (another job is computing here)",
        }
        self.say, self.quiet = say, terminal
        self.seen: set[str] = set()
        self.tenths, self.origin = 0, ""

    def __call__(self, fraction: float, stage: str) -> None:
        wait = next((start for start in self.waits if stage.startswith(start)), "here")
        if wait not in self.seen and wait in self.waits and not self.quiet:
            self.say(self.waits[wait])
        self.seen.add(wait)
        if wait != self.origin:
            self.origin, self.tenths = wait, int(10 * fraction) if wait != "here" else 0
        if not self.quiet and int(10 * fraction) > self.tenths:
            self.tenths = int(10 * fraction)
            self.say(f"{fraction:4.0%}  {stage}")


def confirm_long_job(
    seconds: float,
    *,
    what: str = "this job",
    smaller: str = "fewer checkpoints, trajectories or steps",
) -> None:
    """Ask before a job estimated above COHERENCE_CONFIRM_MINUTES; without a terminal, refuse
    unless --yes was given. ``smaller``: how to shrink it, in the refusal."""
    from coherence.cache.cost import CONFIRM_ENV, confirm_seconds, format_seconds

    limit = format_seconds(confirm_seconds())
    ask_or_refuse(
        f"{what} is estimated at {format_seconds(seconds)} (over {limit}); start it?",
        f"{what} is estimated at {format_seconds(seconds)}, over the {limit} that needs a "
        f"confirmation ({CONFIRM_ENV}); pass --yes to start it, or make it smaller "
        f"({smaller})",
    )


def ask_or_refuse(question: str, refusal: str) -> None:
    """Ask ``question`` on a terminal (no: abort); without one nobody can answer, so
    refuse with ``refusal``, which names --yes."""
    if sys.stdin.isatty():
        typer.confirm(question, abort=True, err=True)
        return
    raise RequestError(refusal)


def split_list(value: str, option: str | None = None) -> tuple[str, ...]:
    """The comma-separated items of ``value``. With ``option`` (a CLI flag), an empty item
    between two others is refused (in ``1e-3,,1e-2`` a value was likely lost), and so is a
    value of commas alone."""
    items = [v.strip() for v in value.split(",")]
    filled = [i for i, item in enumerate(items) if item]
    gaps = [i for i in range(filled[0], filled[-1]) if not items[i]] if filled else []
    if option and gaps:
        raise RequestError(
            f"{option} {value!r}: an empty item between two commas; remove the extra comma "
            "or write the missing value"
        )
    if option and value.strip() and not filled:  # "--classes ," took the default in silence
        raise RequestError(
            f"{option} {value!r}: names nothing; write the values, or leave {option} out for "
            "its default"
        )
    return tuple(v for v in items if v)
