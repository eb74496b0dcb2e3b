"""Each stage exports its contract (ARCHITECTURE.md) from its package, and the exports are
the real objects of their modules (no copies that could drift), or lazy wrappers with their
target's exact signature."""

from __future__ import annotations

import errno
import importlib
import inspect
import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CONTRACTS = {
    "coherence.simulation": ("open_dataset", "generate_dataset", "write_well_file"),
    "coherence.surrogates": ("load",),
    "coherence.analysis": ("influence_matrix", "standardize", "run_analysis", "AnalysisResult"),
    "coherence.cache": ("JobRunner", "ResultStore", "request_key", "unit_keys"),
}

# exports that are thin lazy wrappers (importing torch only when called), with their target
LAZY = {("coherence.surrogates", "load"): "coherence.surrogates.checkpoint"}


@pytest.mark.parametrize("package", sorted(CONTRACTS))
def test_stage_packages_export_their_contracts(package):
    module = importlib.import_module(package)
    for name in CONTRACTS[package]:
        exported = getattr(module, name)
        assert callable(exported), f"{package}.{name}"
        home = exported.__module__
        if (package, name) in LAZY:  # a wrapper that imports its target on first call
            target = getattr(importlib.import_module(LAZY[package, name]), name)
            assert inspect.signature(exported) == inspect.signature(target), name
            continue
        assert home.startswith(package + "."), f"{package}.{name} is defined in {home}"
        # the stage's own object, not a wrapper or copy that could drift from it
        assert getattr(importlib.import_module(home), name) is exported, f"{package}.{name}"
    for name in getattr(module, "__all__", ()):
        getattr(module, name)  # every advertised name resolves


def test_contract_functions_behave_as_documented():
    from coherence.simulation import euler, navier_stokes

    assert callable(euler.evolve) and callable(navier_stokes.evolve)
    from coherence.analysis import standardize

    torch = pytest.importorskip("torch")
    H = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    # a perfectly local row standardizes to √N (METHOD.md §4)
    torch.testing.assert_close(torch.diag(standardize(H)), torch.full((4,), 2.0, dtype=H.dtype))


def test_cli_lists_refuse_an_empty_item_between_two_others():
    """`--sweep-dampings 1e-3,,1e-2` was read as two values: one was likely lost. A trailing
    comma, or a list read from a dashboard link, is still accepted."""
    from coherence.cli_common import split_list
    from coherence.errors import RequestError

    assert split_list(" a, b ,") == ("a", "b") == split_list("a,,b")
    assert split_list("a,b,", "--classes") == ("a", "b") and split_list("", "--seeds") == ()
    assert split_list("a,,", "--classes") == ("a",) == split_list(",,a", "--classes")
    with pytest.raises(RequestError, match=r"--seeds '1,,2': an empty item between two commas"):
        split_list("1,,2", "--seeds")
    # commas alone named nothing, and `simulate --classes ,` took the default in silence
    with pytest.raises(RequestError, match=r"--classes ' , ': names nothing; write the values"):
        split_list(" , ", "--classes")
    assert split_list(" , ") == ()  # a link's empty list, as before


def test_ctrl_c_says_what_is_kept_and_how_to_go_on():
    """Ctrl-C ended a command with status 130 and not a word."""
    import typer

    from coherence.cli_common import INTERRUPTED, friendly_errors

    @friendly_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        interrupted()
    assert stopped.value.exit_code == 130 and "rerun the same command" in INTERRUPTED


def test_ctrl_c_in_report_says_no_report_was_written(tmp_path, monkeypatch, capsys):
    """`report` saves no checkpoint epoch or cached unit, yet its Ctrl-C said they were
    saved; it writes its file whole or not at all, and says that."""
    import typer

    from coherence import cli

    monkeypatch.setattr(
        cli, "_check_report_path", lambda out: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(typer.Exit) as stopped:
        cli.report(out=tmp_path / "r.html", link="", param=None, workspace=tmp_path)
    printed = capsys.readouterr()
    said = " ".join((printed.out + printed.err).split())
    assert stopped.value.exit_code == 130 and "no report was written" in said
    assert "checkpoint epochs" not in said and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("status", [130, 2])
def test_the_console_entry_ends_at_once_after_ctrl_c(tmp_path, status):
    """After Ctrl-C the process skipped to its end (its line flushed, status 130) without the
    interpreter's teardown, where torch's state from an interrupted JVP trace aborted with
    status 134 in about one try of three; any other exit keeps the teardown (atexit runs)."""
    marker = tmp_path / "teardown"
    script = f"""
import atexit, sys
from coherence import cli
atexit.register(lambda: open({str(marker)!r}, "w").close())
def app():
    print("interrupted: the line before the exit")
    sys.exit({status})
cli.app = app
cli.main()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == status, done.stderr
    assert "the line before the exit" in done.stdout  # flushed into a pipe
    assert marker.exists() == (status != 130)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_or_exhausted_memory_ends_in_one_line_not_a_traceback(capfd, monkeypatch):
    """A full disk (h5py says so only in its message) and numpy's allocation error printed
    tracebacks; /dev/full answers every write with ENOSPC, as a full disk does."""
    import typer

    from coherence.cli_common import DEBUG_ENV, friendly_errors

    monkeypatch.delenv(DEBUG_ENV, raising=False)

    @friendly_errors
    def write_to_a_full_disk() -> None:
        with open("/dev/full", "wb") as sink:
            sink.write(b"x" * 4096)
            sink.flush()

    @friendly_errors
    def h5py_on_a_full_disk() -> None:
        raise OSError(
            "Can't synchronously write data (file write failed: errno = 28, "
            "error message = 'No space left on device')"
        )

    @friendly_errors
    def h5py_closes_on_a_full_disk() -> None:  # the disk fills while a file is flushed
        raise RuntimeError(
            "Disable slist on flush dest failure failed (file write failed: errno = 28, "
            "error message = 'No space left on device')"
        )

    @friendly_errors
    def allocate_too_much() -> None:
        np.empty(2**62, dtype=np.uint8)

    @friendly_errors
    def torch_allocates_too_much() -> None:
        import torch

        torch.empty(2**52, dtype=torch.uint8)  # a RuntimeError from DefaultCPUAllocator

    @friendly_errors
    def another_runtime_error() -> None:
        raise RuntimeError("shape mismatch")

    @friendly_errors
    def another_os_error() -> None:
        raise OSError(5, "Input/output error")

    @friendly_errors
    def write_on_a_read_only_mount() -> None:  # `train` in a read-only workspace: its lock
        raise OSError(errno.EROFS, "Read-only file system", "/ws/checkpoints/.u.train.lock")

    commands = (write_to_a_full_disk, h5py_on_a_full_disk, h5py_closes_on_a_full_disk)
    commands += (allocate_too_much,)
    for command in (*commands, torch_allocates_too_much, write_on_a_read_only_mount):
        with pytest.raises(typer.Exit) as stopped:
            command()
        assert stopped.value.exit_code == 2
    out = " ".join(capfd.readouterr().err.split())  # messages go to stderr; rich wraps them
    assert out.count("the disk is full") == 3 and "free space there" in out
    assert out.count("out of memory") == 2 and "--batch-size" in out and "Traceback" not in out
    assert "the file system is read-only writing /ws/checkpoints/.u.train.lock; write to" in out
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not memory: unchanged
        another_runtime_error()
    # an import writes all or nothing: "what was finished is kept" was wrong for it
    from coherence.cli_common import all_or_nothing

    importing = all_or_nothing(h5py_closes_on_a_full_disk.__wrapped__)
    with pytest.raises(typer.Exit):
        importing()
    said = " ".join(capfd.readouterr().err.split())
    assert "the disk is full" in said and "nothing was written" in said
    assert "what was finished is kept" not in said
    with pytest.raises(OSError, match="Input/output"):  # not a disk-full error: unchanged
        another_os_error()


def test_results_checkpoints_and_datasets_get_the_modes_open_and_mkdir_would(tmp_path):
    """Temporary names (mkstemp 0600, mkdtemp 0700) became the final files: a result, a
    checkpoint folder and an imported dataset were unreadable to the rest of a group
    sharing the workspace, whatever its umask."""
    import stat

    from coherence.io import DIR_MODE, FILE_MODE, atomic_write_bytes
    from coherence.simulation.wellwriter import WellWriter
    from coherence.surrogates.fileset import write_new_directory

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    result = atomic_write_bytes(tmp_path / "R.npz", b"arrays")
    assert mode(result) == FILE_MODE
    folder = tmp_path / "checkpoint"
    write_new_directory(folder, {"config.json": b"{}"}, {})
    assert mode(folder) == DIR_MODE and mode(folder / "config.json") == FILE_MODE
    writer = WellWriter(
        tmp_path / "train" / "CE-RP.hdf5",
        family="euler",
        class_name="CE-RP",
        dataset_name="d",
        n_trajectories=1,
        times=np.linspace(0, 1, 3),
        nx=4,
        ny=4,
        scalars={"gamma": 1.4},
    )
    density = np.ones((1, 3, 1, 4, 4))
    writer.write(0, np.concatenate([density, 0 * density, 0 * density, 2.5 * density], axis=2))
    assert mode(writer.close()) == FILE_MODE


def test_serve_refuses_what_streamlit_would_meet_with_a_traceback(tmp_path, monkeypatch):
    """A port out of range, an address that does not resolve or is another machine's, a port
    another server listens on and a workspace that is a file: one line each and exit status
    2, before Streamlit starts (it printed an OverflowError, gaierror or EADDRNOTAVAIL
    traceback)."""
    import socket

    from typer.testing import CliRunner

    from coherence.cli import app

    def streamlit_started(*args):  # serve execs Streamlit: that would replace this process
        raise AssertionError("serve went on to start Streamlit")

    monkeypatch.setattr("os.execve", streamlit_started)
    a_file = tmp_path / "passwd"
    a_file.write_text("not a workspace")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        cases = {
            ("--port", "99999"): "--port",
            ("--address", "999.1.1.1"): "--address 999.1.1.1: not an address",
            ("--port", taken): f"--port {taken}: cannot listen there",
            ("--workspace", str(a_file)): "a file, not a folder",
        }
        foreign = "198.51.100.7"  # resolves, but no interface here holds it (RFC 5737)
        with socket.socket() as probe:
            try:
                probe.bind((foreign, 0))  # allowed where net.ipv4.ip_nonlocal_bind is set
            except OSError:
                cases[("--address", foreign)] = f"--address {foreign}: not an address of this"
        busy6 = None
        if socket.has_ipv6:  # the IPv6 form is tried as IPv6, as Streamlit binds it
            try:
                busy6 = socket.socket(socket.AF_INET6)
                busy6.bind(("::1", 0))
                busy6.listen()
                port6 = str(busy6.getsockname()[1])
                cases[("--address", "::1", "--port", port6)] = f"--port {port6}: cannot listen"
            except OSError:
                busy6 = None  # no IPv6 loopback here
        for options, message in cases.items():
            shown = CliRunner().invoke(app, ["serve", *options], env={"COLUMNS": "300"})
            assert shown.exit_code == 2, (options, shown.output)
            assert message in " ".join(shown.output.split()), (options, shown.output)
            assert "Traceback" not in shown.output
        if busy6 is not None:
            busy6.close()


def test_messages_print_paths_as_they_are_not_as_markup(tmp_path):
    """Errors went through rich markup: a path holding "[/x]" crashed the error line itself
    (MarkupError), "run[gas]" lost its brackets, and the hint "pip install -e '.[cluster]'"
    lost its extra."""
    from typer.testing import CliRunner

    from coherence.cli import app

    for folder in ("weird[/x]", "run[gas]"):
        missing = tmp_path / folder / "train" / "f.hdf5"
        shown = CliRunner().invoke(
            app,
            ["import", "well-euler", str(missing), "--out", str(tmp_path / "o")],
            env={"COLUMNS": "300"},
        )
        assert shown.exit_code == 2, shown.output
        assert f"error: {missing}: no such file" in shown.output, shown.output
        assert "Traceback" not in shown.output


def test_an_interrupted_import_says_that_nothing_was_imported(tmp_path, monkeypatch):
    """Ctrl-C on an import said "what was finished is saved … rerun to go on from there"; an
    import keeps all its files or none, and a rerun starts again (or finishes its commit)."""
    from typer.testing import CliRunner

    from coherence.cli import app
    from coherence.simulation.importers import pdegym, well_euler

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(well_euler, "import_well_euler", interrupted)
    monkeypatch.setattr(pdegym, "import_pdegym", interrupted)
    source = tmp_path / "data" / "train" / "f.hdf5"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"")
    for command in (["well-euler", str(source)], ["pdegym", str(source), "--class", "CE-RP"]):
        shown = CliRunner().invoke(
            app, ["import", *command, "--out", str(tmp_path / "o")], env={"COLUMNS": "300"}
        )
        assert shown.exit_code == 130, shown.output
        assert "nothing was written unless the commit had begun" in shown.output


def test_a_training_warning_line_is_shown_as_a_warning_by_train_and_study():
    """`coherence train` coloured a training's warning line, a study printed it plainly (a
    worker's relayed memory warning among them): both now go through one log_line."""
    import io

    from rich.console import Console

    from coherence import cli, cli_study
    from coherence.cli_common import log_line
    from coherence.surrogates.training import WARNING

    out = io.StringIO()
    screen = Console(file=out, force_terminal=True, color_system="standard", width=200)
    log_line(f"{WARNING}training unet_s7: one step may not fit", to=screen)
    log_line("resuming run[gas] after epoch 1", to=screen)
    text = out.getvalue()
    assert "\x1b[33mwarning:\x1b[0m training unet_s7: one step may not fit" in text, repr(text)
    assert "resuming run[gas] after epoch 1" in text  # as it is, brackets kept
    assert "log_line" in vars(cli) and "log_line" in vars(cli_study)  # both commands use it


def test_a_checks_field_name_is_shown_as_the_commands_flag():
    """Library checks name request fields (``batch_size=0: …``); the CLI shows the flag that
    set it, and leaves alone what the command has no parameter for, or any other message."""
    from coherence.cli_common import as_flag

    options = {"batch_size": 0, "epochs": 1}
    assert as_flag("batch_size=0: must be positive", options) == "--batch-size 0: must be positive"
    assert as_flag("lr=0.0: must be positive", options) == "lr=0.0: must be positive"
    assert as_flag("/a/b=c: no such file", options) == "/a/b=c: no such file"


def test_every_help_page_reads_whole_at_80_columns():
    """At 80 columns `analyze --help` cut an option to `--energy-thresh…` (a --trust-code /
    --no-trust-code pair widened the name columns), and `coherence --help` broke the demo's
    text mid-sentence (the docstrings' line breaks were kept)."""
    import click
    import typer
    from typer.testing import CliRunner

    from coherence.cli import app

    def commands(group: click.Group, path: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            yield (*path, name), command
            if isinstance(command, click.Group):
                yield from commands(command, (*path, name))

    root = typer.main.get_command(app)
    for path, command in [((), root), *commands(root)]:
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert shown.exit_code == 0, (path, shown.output)
        assert not re.search(r"-[\w-]+…", shown.output), (path, shown.output)  # a name cut
        for param in (p for p in command.params if not getattr(p, "hidden", False)):
            for flag in param.opts:
                if flag.startswith("--"):
                    assert flag in shown.output, (path, flag)
        breaks = early_breaks(shown.output)
        assert not breaks, (path, breaks)


def early_breaks(page: str) -> list[str]:
    """Lines of a help page's boxes cut before the next line's first word, which would
    have fitted: a line break kept from the source, not a wrap (a `[default: …]` or
    `[required]` line stands on its own by design)."""
    rows = [line[1:-1] for line in page.splitlines() if line.startswith("│") and line.endswith("│")]
    found = []
    for line, following in itertools.pairwise(rows):
        text, after = line.rstrip(), following.strip()
        indent = len(following) - len(following.lstrip())
        if not text.strip() or not after or after.startswith("["):
            continue
        continues = indent > 2 and not after.startswith(("-", "*"))  # not a new entry
        if continues and len(text) + 1 + len(after.split()[0]) <= len(line) - 1:
            found.append(f"{text.strip()!r} / {after.split()[0]!r}")
    return found


def test_plain_progress_says_each_wait_once_and_each_tenth_where_no_bar_is_drawn():
    """Off a terminal a study's log was silent through a slot wait and a whole analysis
    (analyze said both); one reader of progress now serves both commands."""
    from coherence.cache.jobs import WAITING_FOR_OTHER, WAITING_FOR_SLOT
    from coherence.cli_common import PlainProgress

    lines: list[str] = []
    plain = PlainProgress(lines.append, terminal=False)
    for fraction, stage in (
        (0.0, f"{WAITING_FOR_SLOT} 1: waiting for a free compute slot"),
        (0.0, f"{WAITING_FOR_SLOT} 1: waiting for a free compute slot"),
        (0.05, "unit 1/4"),
        (0.26, "unit 2/4"),
        (0.27, "unit 2/4"),
        (0.55, "unit 3/4"),
    ):
        plain(fraction, stage)
    assert lines == [
        "waiting for a free compute slot (another job is computing here)",
        " 26%  unit 2/4",
        " 55%  unit 3/4",
    ]
    assert plain.seen == {WAITING_FOR_SLOT, "here"}
    served = PlainProgress(lines.append, terminal=True)  # a bar shows it: no lines
    served(0.5, f"{WAITING_FOR_OTHER}: another process")
    assert served.seen == {WAITING_FOR_OTHER} and len(lines) == 3
