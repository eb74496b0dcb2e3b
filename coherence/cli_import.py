"""`coherence import pdegym|well-euler`: public datasets into our Well layout.

Each command streams, shows MB/s and the time left, and writes all or nothing (a killed
import leaves the dataset as it was). Checks refuse bad input with one line naming the file
and the fix; warnings are printed in yellow and recorded in the files' ``import_checks``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from coherence.cli_common import all_or_nothing, console, note_unlisted, styled, warn

import_app = typer.Typer(
    help="Import public datasets (PDEgym, The Well) as Well-format datasets.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _byte_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        # off a terminal rich prints the last frame only, wrapped at 80 columns ("MB" on a
        # line of its own in a log); the summary after it says what was imported
        disable=not console.is_terminal,
    )


def _run(label: str, job) -> object:
    """Run ``job(report)`` with a byte progress bar that appears at its first report: a
    refusal found while checking the input (before a byte is read) printed under an empty
    "0/? bytes" bar."""
    bar: Progress | None = None
    task = None

    def report(done: int, total: int, message: str) -> None:
        nonlocal bar, task
        if bar is None:
            bar = _byte_bar()
            bar.start()
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total, description=message)

    try:
        return job(report)
    finally:
        if bar is not None:
            bar.stop()


def _summary(report, overwrite: bool = False) -> None:
    splits = ("train", "valid", "test")
    counts = ", ".join(f"{n} {s}" for s, n in zip(splits, report.counts, strict=True))
    console.print(
        styled(
            "imported into ",
            (str(report.root), "bold"),
            f": {counts} trajectories ({report.mb_per_s:.0f} MB/s)\nsplit: {report.split_label}",
        ),
        highlight=False,
    )
    for path in report.files:
        console.print(f"  {path}", highlight=False)
    note_unlisted(Path(report.root), "dataset")
    if overwrite:
        _warn_stale_checkpoints(report)


def _warn_stale_checkpoints(report) -> None:
    """Checkpoints trained on the class files this import replaced, by name."""
    from coherence.wording import plural

    replaced = {Path(path).stem for path in report.files}
    console.print(  # hashing a paper-size class's training file takes a minute: said
        "checking the workspace's checkpoints against the replaced classes' training files",
        highlight=False,
    )
    stale = checkpoints_trained_on_replaced(Path(report.root), replaced)
    if stale:
        warn(
            f"{plural(len(stale), 'checkpoint')} ({', '.join(p.name for p in stale)}) "
            f"trained on training files of {', '.join(sorted(replaced))} that this import "
            "replaced: their training data is no longer in this dataset, and the new files' "
            "valid or test splits may hold trajectories they learnt from, where their "
            "analyses would read them. Retrain them on the new files into new "
            "--out folders, or re-import with the options they were trained with",
            loud=True,
        )


def checkpoints_trained_on_replaced(root: Path, classes: set[str]) -> list[Path]:
    """The workspace's checkpoints trained on ``classes`` of the dataset at ``root`` whose
    training files are not the ones there now (an import with --overwrite replaced them): a
    new split can put a model's training trajectories in the test split, and the analysis
    then reads data it learnt from; without this, only `coherence study --plan` noticed.
    The workspace is the one whose datasets/ holds ``root``."""
    from coherence.simulation.dataset import open_dataset
    from coherence.surrogates import checkpoint as ckpt

    root = root.resolve()
    folder = root.parent.parent / "checkpoints"
    if root.parent.name != "datasets" or not folder.is_dir():
        return []
    info = open_dataset(root)
    stale = []
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            trained = ckpt.read_config(directory).dataset
        except (OSError, ValueError):  # its own problem (CoherenceError is a ValueError)
            continue
        own = [str(c) for c in trained.get("classes") or []]
        if trained.get("name") != info.name or not classes & set(own):
            continue
        try:
            now = info.fingerprint(split="train", classes=own)
        except (OSError, ValueError):
            continue
        if now != trained.get("fingerprint"):
            stale.append(directory)
    return stale


@import_app.command("pdegym")
@all_or_nothing
def pdegym(
    src: Annotated[Path, typer.Argument(help="Assembled `<CLASS>.nc`, or the folder of shards.")],
    class_name: Annotated[
        str, typer.Option("--class", help="CE-RP, CE-CRP, CE-RPUI, NS-BB, NS-Sines, NS-Gauss.")
    ],
    out: Annotated[Path, typer.Option(help="Dataset directory (created, or added to).")],
    limit: Annotated[
        int | None, typer.Option(help="Import only the first N trajectories (a quick look).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(help="poseidon: the published index split; random: seeded 65/5/30."),
    ] = "poseidon",
    seed: Annotated[int, typer.Option(help="Seed of --split random.")] = 0,
    keep_pressure: Annotated[
        bool, typer.Option(help="CE: store the file's pressure instead of recomputing it.")
    ] = False,
    swap_xy: Annotated[
        str, typer.Option(help="auto (NS: from the divergence), no or yes.")
    ] = "auto",
    name: Annotated[str, typer.Option(help="dataset_name (default: the --out folder's).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace this class if present.")] = False,
) -> None:
    """Import one PDEgym class (the paper's data, camlab-ethz on Hugging Face)."""
    from coherence.simulation.importers.pdegym import import_pdegym

    report = _run(
        f"{class_name}: reading",
        lambda progress: import_pdegym(
            src,
            out,
            class_name,
            limit=limit,
            split=split,
            seed=seed,
            keep_pressure=keep_pressure,
            swap_xy=swap_xy,
            overwrite=overwrite,
            name=name,
            progress=progress,
            warn=partial(warn, loud=True),
        ),
    )
    _summary(report, overwrite)
    if report.swap_xy and swap_xy == "auto":
        console.print("x and y were swapped so that 'velocity x' runs along x")
    elif report.swap_xy:  # forced: the data may say otherwise (warned above)
        console.print("x and y were swapped, as --swap-xy yes asks")


@import_app.command("well-euler")
@all_or_nothing
def well_euler(
    files: Annotated[list[Path], typer.Argument(help="euler_multi_quadrants .hdf5 files.")],
    out: Annotated[Path, typer.Option(help="Dataset directory (created, or added to).")],
    downsample: Annotated[
        int, typer.Option(help="Block-mean factor (512 → 128 with 4; conserves totals).")
    ] = 4,
    allow_open: Annotated[
        bool, typer.Option(help="Import open-boundary files too (our models are periodic).")
    ] = False,
    split: Annotated[
        str | None, typer.Option(help="train, valid or test (default: the file's folder).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N trajectories of each file.")] = None,
    name: Annotated[str, typer.Option(help="dataset_name (default: the --out folder's).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace these classes if present.")] = False,
) -> None:
    """Import The Well's euler_multi_quadrants files (one class per γ and gas)."""
    from coherence.simulation.importers.well_euler import import_well_euler

    report = _run(
        "reading",
        lambda progress: import_well_euler(
            files,
            out,
            downsample=downsample,
            allow_open=allow_open,
            split=split,
            limit=limit,
            overwrite=overwrite,
            name=name,
            progress=progress,
            warn=partial(warn, loud=True),
        ),
    )
    _summary(report, overwrite)
