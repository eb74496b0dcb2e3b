"""The `coherence` command line: simulate, import, train, analyze, study, demo, serve, report,
cache.

Every long command shows progress; every user error is one line that names the bad input and
the fix (exit status 2), never a traceback. Larger commands live beside this file:
``cli_analyze``, ``cli_study``, ``cli_cache`` and ``cli_import`` (shared parts: ``cli_common``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from coherence.cli_analyze import analyze, named_in
from coherence.cli_cache import cache_app
from coherence.cli_common import (
    INTERRUPTED_STATUS,
    RayAddress,
    all_or_nothing,
    compute_slot,
    console,
    friendly_errors,
    log_line,
    note_unlisted,
    progress_bar,
    report_errors,
    split_list,
    styled,
    warn,
)
from coherence.cli_import import import_app
from coherence.cli_study import study
from coherence.errors import RequestError
from coherence.io import atomic_write_bytes, check_folder_for
from coherence.wording import demo_command, plural

app = typer.Typer(
    name="coherence",
    help="Coherence Explorer: influence diagnostics for autoregressive PDE surrogates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstrings' line breaks joined ("rich" kept them: mid-sentence breaks at 80 columns)
    rich_markup_mode="markdown",
)
app.add_typer(import_app, name="import")


@app.command()
@all_or_nothing
def simulate(
    out: Annotated[Path, typer.Option(help="Dataset directory to create (Well layout).")],
    family: Annotated[str, typer.Option(help="PDE family: euler or ns.")] = "euler",
    classes: Annotated[
        str,
        typer.Option(
            help="Comma-separated initial-condition classes (default: the family's first "
            "three: CE-RP,CE-CRP,CE-RPUI for euler, NS-Sines,NS-Gauss,NS-BB for ns)."
        ),
    ] = "",
    trajectories: Annotated[int, typer.Option(help="Trajectories per class.")] = 32,
    resolution: Annotated[int, typer.Option(help="Grid points per side.")] = 64,
    snapshots: Annotated[int, typer.Option(help="Snapshots uniform on [0, t-end].")] = 21,
    t_end: Annotated[float, typer.Option(help="Final time.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for initial states and splits.")] = 0,
    name: Annotated[
        str,
        typer.Option(help="dataset_name attribute (default: the --out folder's name)."),
    ] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace existing class files.")] = False,
) -> None:
    """Simulate PDE trajectories and write them as a Well-format dataset."""
    from coherence.simulation.classes import classes_for
    from coherence.simulation.dataset import SimulationRequest, generate_dataset, open_dataset
    from coherence.simulation.families import Family
    from coherence.simulation.generate import check_simulation_room

    request = SimulationRequest(
        family=family,
        # the family's own: CE-RP was the default whatever --family said (a walk-through)
        classes=split_list(classes, "--classes") or tuple(classes_for(family)[:3]),
        trajectories=trajectories,
        resolution=resolution,
        snapshots=snapshots,
        t_end=t_end,
        seed=seed,
        dataset_name=name,
    )
    # before the slot wait and the bar: a refusal came after "simulating 0%"
    check_simulation_room(request, Family(request.family), out)
    start = time.perf_counter()
    with compute_slot("simulate") as slot, progress_bar() as bar:
        task = bar.add_task("simulating", total=len(request.classes) * trajectories)

        def report(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, description=message)

        # at most its share of the cores (COHERENCE_TORCH_THREADS included: it had used every
        # core whenever one job may run); the generator decides by size within it
        generate_dataset(
            request, out, progress=report, overwrite=overwrite, max_workers=slot.threads
        )
        bar.update(task, description=f"{bar.tasks[0].total:g} trajectories simulated and written")
    well_name = open_dataset(out).name  # an existing dataset's own, classes added
    folder = out.resolve().name  # `--out .` has no name of its own
    console.print(
        styled(
            "wrote dataset ",
            (folder, "bold"),  # the folder's name: the one the dashboard lists
            f" ({'' if well_name == folder else f'Well name {well_name}; '}"
            f"{plural(len(request.classes), 'class', 'classes')} × "
            f"{plural(trajectories, 'trajectory', 'trajectories')}, {resolution}², "
            f"{snapshots} snapshots) to ",
            (str(out.resolve()), "bold"),
            f" in {time.perf_counter() - start:.1f} s",
        )
    )
    note_unlisted(out, "dataset")


@app.command("train")
@friendly_errors
def train_command(
    data: Annotated[
        Path,
        typer.Option(
            help="Dataset directory (Well layout), or a dataset's name in the workspace "
            "(--workspace, else COHERENCE_WORKSPACE, else ./workspace)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (or resume).")],
    classes: Annotated[str, typer.Option(help="Comma-separated classes (default: all).")] = "",
    arch: Annotated[str, typer.Option(help="unet, vit or package.module:factory.")] = "unet",
    preset: Annotated[str, typer.Option(help="Size preset: demo or paper.")] = "demo",
    seed: Annotated[int, typer.Option(help="Seed for initialization and shuffling.")] = 42,
    epochs: Annotated[int, typer.Option(help="Epochs to train (resume extends).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    transitions: Annotated[
        int | None,
        typer.Option(help="One-step pairs per trajectory (default: all there are, up to 16)."),
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Save every k epochs.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    keep_epochs: Annotated[
        str,
        typer.Option(
            help="Epochs whose weights are kept as snapshots under `<out>/epochs/NNNN`, e.g. "
            "1,2,4,8,16; 'default': powers of two plus the last; 'none': no snapshots."
        ),
    ] = "default",
    ray_address: RayAddress = None,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Workspace whose datasets --data names (default: COHERENCE_WORKSPACE)."),
    ] = None,
) -> None:
    """Train a surrogate one step at a time (teacher forcing) and save a checkpoint."""
    from coherence.executors import TrainRun, get_executor
    from coherence.surrogates.checkpoint import trained_epochs
    from coherence.surrogates.snapshots import list_snapshots, parse_keep_epochs
    from coherence.surrogates.training import TrainingArgs, check_checkpoint_folder
    from coherence.workspace import checked_workspace, workspace_root

    # an explicit --workspace is checked; the variable only where a name needs it (a stale
    # COHERENCE_WORKSPACE must not stop a run given a dataset's path)
    root = checked_workspace(workspace) if workspace is not None else workspace_root()
    data = named_in(root, data, "--data")  # a name, as analyze and study take
    args = TrainingArgs(
        arch=arch,
        preset=preset,
        classes=split_list(classes, "--classes"),
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        transitions=transitions,
        checkpoint_every=checkpoint_every,
        keep_epochs=parse_keep_epochs(keep_epochs),
        device=device,
    )
    check_checkpoint_folder(out)  # before any wait for a slot (training checks it again)
    executor = get_executor(ray_address)
    executor.connect()  # an unreachable cluster fails here, in seconds
    slot = compute_slot("train") if executor.local else nullcontext()
    with slot, progress_bar() as bar:
        # read once the slot is ours: a run queued behind another into the same --out said
        # "checkpoint written" for the epochs the other had written
        before = trained_epochs(out)
        for warning in _keep_epochs_warnings(args.keep_epochs, epochs, before, out):
            warn(warning, to=bar.console)
        task = bar.add_task("training", total=epochs, visible=False)  # shown by an epoch

        def report(epoch: int, total: int, fraction: float, loss: float) -> None:
            bar.update(
                task,
                completed=epoch + fraction,
                description=f"epoch {epoch + 1}/{total} SMSE {loss:.4g}",
                visible=True,
            )

        def log(line: str) -> None:
            log_line(line, to=bar.console)

        executor.train([TrainRun(data, out, args, progress=report)], log=log)
    if trained_epochs(out) != before:  # a finished one is not written again: its log said so
        console.print(styled("checkpoint written to ", (str(out.resolve()), "bold")))
        note_unlisted(out, "checkpoint", root)
        kept = ", ".join(map(str, list_snapshots(out))) or "none"
        console.print(f"snapshots kept (epochs/NNNN): {kept}", highlight=False)


def _keep_epochs_warnings(
    keep: tuple[int, ...] | None, epochs: int, trained: int, out: Path
) -> list[str]:
    """What --keep-epochs cannot do in this run, said before it starts: epochs past --epochs
    (kept only by a resumed run that reaches them and names them: each run's --keep-epochs,
    'default' included, is its own), and epochs a resumed run has already passed without
    keeping them (their weights are gone); ``keep`` None is the default policy, whose
    epochs count too (a run kept 1, 2, 3, 6, resumed to 8 with the default 1, 2, 4, 8, had
    passed its 4 in silence)."""
    from coherence.surrogates.snapshots import default_keep, list_snapshots

    if trained >= epochs:  # nothing to train: the run says so, and keeps nothing
        return []
    option = "--keep-epochs" if keep is not None else "--keep-epochs default (powers of two)"
    keep = default_keep(epochs) if keep is None else keep
    said = []
    if beyond := [e for e in keep if e > epochs]:
        said.append(
            f"--keep-epochs {','.join(map(str, beyond))}: beyond --epochs {epochs}; kept only "
            f"by a resumed run that reaches {'it' if len(beyond) == 1 else 'them'} and names "
            f"{'it' if len(beyond) == 1 else 'them'} (train again with --epochs {max(beyond)} "
            "and the same --keep-epochs)"
        )
    kept = list_snapshots(out) if trained else {}
    # the epoch trained so far is the checkpoint's own weights: the resume keeps it
    if passed := [e for e in keep if e < trained and e not in kept]:
        said.append(
            f"{option} {','.join(map(str, passed))}: {out.name} is already trained past "
            f"{'that epoch' if len(passed) == 1 else 'those epochs'} ({trained} epochs), so "
            f"no snapshot of them can be kept; the snapshots kept so far stay "
            f"({', '.join(map(str, kept)) or 'none'})"
        )
    return said


app.command()(analyze)
app.command(
    short_help="Train what is missing, then cache the paper's analyses (and any sweeps asked for)."
)(study)


@app.command()
@friendly_errors
def demo(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Build or complete the demo workspace: CE data, UNet and ViT for three seeds, the
    default analyses, the ViT dynamics and λ sweep. Keeps what matches; replaces its own
    dataset and checkpoints where they do not (other files are never touched)."""
    from coherence.demo import build_demo

    build_demo(workspace, log=console.print)


@app.command()
@friendly_errors
def serve(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.", min=1, max=65535)] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the dashboard (Streamlit) on the workspace.

    The process becomes Streamlit (exec), so stopping `coherence serve` stops the server: no
    child is left listening on the port.
    """
    import os

    import coherence.dashboard
    from coherence.workspace import ENV_VAR, checked_workspace

    env = dict(os.environ)
    env[ENV_VAR] = str(checked_workspace(workspace))
    _check_serve_target(Path(env[ENV_VAR]), address, port)
    app_file = Path(coherence.dashboard.__file__).resolve().parent / "app.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_file),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--server.fileWatcherType",
        "none",
        "--theme.base",
        "light",
        "--theme.primaryColor",
        "#1F77B4",
    ]
    host = f"[{address}]" if ":" in address else address or "0.0.0.0"  # a URL's form
    console.print(f"serving Coherence Explorer on http://{host}:{port} (workspace {env[ENV_VAR]})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


def _check_report_path(out: Path) -> None:
    """Refuse an --out the report must not be written to: a folder, a path under a file, a
    file that is not an earlier report (`--out <checkpoint>/config.json` replaced a
    checkpoint's config with the page) or a path inside a checkpoint."""
    from coherence.workspace import refuse_inside_inputs

    if out.is_dir():
        raise RequestError(
            f"--out {out}: that is a folder; give a file, e.g. {out / 'report.html'}"
        )
    if out.suffix.lower() not in (".html", ".htm"):
        raise RequestError(f"--out {out}: a report is an HTML file; give a name ending in .html")
    refuse_inside_inputs(out, "the report")  # before the folder's write probe
    check_folder_for(out)  # a missing folder is made when the report is written
    if out.exists():
        from coherence.report import TITLE

        with open(out, "rb") as existing:
            head = existing.read(512).lstrip().lower()
        # only an earlier report is replaced: a page of one's own notes was, in silence
        if f"<title>{TITLE}".lower().encode() not in head:
            kind = "HTML page" if head.startswith((b"<!doctype html", b"<html")) else "file"
            raise RequestError(
                f"--out {out}: the {kind} exists and is not a Coherence Explorer report; "
                "writing the report would replace it. Choose another name"
            )


def _refuse_link_problems(problems: list[str]) -> None:
    """A report is the file that gets sent on: where the dashboard would replace a bad link
    value by its default and say so, the report is not written (it showed other weights,
    classes or models than the link's, and exited 0)."""
    import re

    if not problems:
        return
    lines = "\n".join(
        "  - " + re.sub(r"; using (.+?)(?: instead)?$", r" (the dashboard would show \1)", p)
        for p in problems
    )
    raise RequestError(
        f"the link has values the dashboard would replace or ignore, so no report was "
        f"written:\n"
        f"{lines}\nCorrect these parameters, or leave them out for the default"
    )


def _check_serve_target(root: Path, address: str, port: int) -> None:
    """Refuse what Streamlit would meet with a traceback (an address that does not resolve
    or is not this machine's, a port in use or not ours; a workspace that is a file is
    ``checked_workspace``'s to refuse); a missing workspace is only said, since the page
    tells how to fill it.
    The port is tried as Streamlit binds it: IPv6 only for an address with a colon, "" for
    every interface."""
    import errno
    import socket

    if not root.exists():
        warn(f"the workspace {root} does not exist yet; `{demo_command(root)}` builds one there")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        where = socket.getaddrinfo(address or "0.0.0.0", port, family, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError) as error:
        raise RequestError(
            f"--address {address}: not an address this machine can bind ({error}); use "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(where)
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:  # resolves, but names another machine
                raise RequestError(
                    f"--address {address}: not an address of this machine "
                    f"({error.strerror}); use 127.0.0.1 (this machine only), 0.0.0.0 (every "
                    "interface) or one of this machine's own addresses (`hostname -I`)"
                ) from None
            if error.errno not in (errno.EADDRINUSE, errno.EACCES):
                return  # anything else: Streamlit's own attempt decides and says so
            raise RequestError(
                f"--address {address} --port {port}: cannot listen there ({error.strerror}); "
                "choose another --port (another server may use this one) or address"
            ) from None


@app.command(short_help="Write a selection's report as one offline HTML file.")
@report_errors
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    link: Annotated[
        str, typer.Option(help="A dashboard link (http://…/?data=…) or its query string.")
    ] = "",
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A URL parameter as KEY=VALUE, repeatable: data, ckpt, vs, epoch, classes, "
            "traj, window (START:STEPS), resp, est, damping, depth, rtol, device, panel (the "
            "open tab, by its label: panel=Sensitivity), or a panel's own "
            "(zscale_two_time, zscale_transfer, zscale_mass, zscale_energy: a heatmap's colour "
            "scale; two_time_pair, e.g. 'CE-RP ← CE-CRP', and two_time_seed; lag_y=tails, the "
            "Time lag chart zoomed to Δ ≠ 0; cons_pair, the "
            "Conservation maps' class pair; dyn_vs_damping, "
            "the Training dynamics overlay λ; sens_pair, the Sensitivity agreement's pair, "
            "e.g. 'ekfac-krylov vs euclidean', in compare mode 'ViT: ekfac-krylov vs "
            "euclidean'). A link's other keys (the drill-down's two_time_cell…, cons_response, "
            "dyn_group, dyn_view, sens_view, the Overview, Rollout and Validation tabs' own) "
            "are read and have no part in the report. Values as typed, not URL-encoded: give a "
            "link "
            "copied from the address bar to --link."
        ),
    ] = None,
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Write the selection's report (its influence figures, its cached Training dynamics and
    Sensitivity sweeps, scores, provenance) as one offline HTML file, from cached results;
    with no link, the dashboard's default selection."""
    from urllib.parse import parse_qs, urlsplit

    from coherence.dashboard.selection import default_selection
    from coherence.dashboard.workspace_scan import scan_workspace
    from coherence.report import (
        NOT_IN_REPORT,
        build_report,
        cached_in,
        load_groups,
        panel_value_problems,
        scales_from_params,
        selection_from_link,
        unknown_params,
        used_link,
    )
    from coherence.report_panels import link_value
    from coherence.workspace import checked_workspace, named_by

    root = checked_workspace(workspace)
    if not root.is_dir():  # reading a report must not create a workspace (or its cache)
        raise RequestError(f"{named_by(workspace)}: no such directory; give --workspace of a study")
    _check_report_path(out)  # before building the page, not after
    catalog = scan_workspace(root)
    params = parse_qs(urlsplit(link).query if "://" in link else link.lstrip("?"))
    if link.strip() and not params:  # "not a url at all" printed the default report
        raise RequestError(
            f"--link {link!r}: no dashboard parameters in it; copy the page's address (it "
            "ends in ?data=…&ckpt=…) or leave --link out for the default selection"
        )
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RequestError(f"--param {item!r}: write KEY=VALUE, e.g. --param est=cg")
        params[key] = [value]
    problems: list[str] = []
    if params:
        selection, replaced = selection_from_link(params, catalog, cached=cached_in(root))
        problems += unknown_params(params) + replaced
        problems += panel_value_problems(params, selection)
    else:
        selection = default_selection(catalog, cached=cached_in(root))
        if selection is None:
            raise RequestError(
                f"the workspace {root} has no analysis to report; run `{demo_command(root)}`"
            )
    scales, bad_scales = scales_from_params(params)
    _refuse_link_problems(problems + bad_scales)
    groups = load_groups(root, catalog, selection)
    shown = used_link(link, selection, params) if params else ""  # the view drawn, not as typed
    built = build_report(
        root, catalog, selection, groups=groups, link=shown, scales=scales, params=params
    )
    _refuse_link_problems(list(built.link_problems))  # a sens_pair that names nothing cached
    out.parent.mkdir(parents=True, exist_ok=True)  # as analyze makes its result's folder
    atomic_write_bytes(out, built.page)  # a kill mid-write leaves the old report, not half
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): opens offline in any browser")
    for item in built.left_out:  # a sweep left out, and what to compute for it
        console.print(item.cli_text, markup=False, highlight=False)
    panel = link_value(params, "panel") or ""
    if panel in NOT_IN_REPORT:
        warn(
            f"the link opens the {panel} panel, which the report does not hold (it holds the "
            "selection's own analysis and its cached sweeps); export that panel's chart and "
            "CSV from the dashboard"
        )
    elif panel and any(item.tab == panel for item in built.left_out):
        warn(f"the link opens the {panel} panel, which this report leaves out (see above)")
    elif panel == "Conservation" and not {"mass", "energy"} & set(selection.responses):
        warn(  # a Navier–Stokes link: the report held no conservation section, unsaid
            "the link opens the Conservation panel, but the selection has no mass or energy "
            "response (they exist for compressible Euler data only), so the report holds no "
            "conservation maps"
        )


app.add_typer(cache_app, name="cache")


def main() -> None:
    """The `coherence` console entry point. After Ctrl-C (our line printed, status 130) the
    process ends at once, streams flushed, skipping the interpreter's teardown. Why: an
    interrupt while torch traced a model's JVP left C++ state whose destruction at exit
    aborted ("terminate called without an active exception", status 134, in about one try
    of three at that moment); by then every file is committed or was never begun."""
    try:
        app()
    except SystemExit as stop:
        if stop.code != INTERRUPTED_STATUS:
            raise
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a reader gone: nothing to keep
                stream.flush()
        os._exit(INTERRUPTED_STATUS)


if __name__ == "__main__":  # pragma: no cover - `python -m coherence.cli`
    main()
