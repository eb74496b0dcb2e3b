"""`coherence study`: train every missing (architecture, seed), then compute the paper's
analyses into the cache (``coherence.study``), under one progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coherence.cli_common import (
    PlainProgress,
    RayAddress,
    confirm_long_job,
    connect_early,
    console,
    friendly_errors,
    log_line,
    product,
    progress_bar,
    say_cluster_faults,
    split_list,
    warn,
)
from coherence.errors import RequestError

# the Sensitivity panel's λ grid (dashboard.sweeps.DAMPING_GRID), written out so that --help
# needs no import of the dashboard
DAMPING_GRID_TEXT = "1e-6,1e-5,1e-4,1e-3,1e-2,1e-1"


@friendly_errors
def study(
    data: Annotated[str, typer.Option(help="Dataset: a name under `<workspace>/datasets`.")],
    preset: Annotated[str, typer.Option(help="Model size preset: demo or paper.")] = "demo",
    archs: Annotated[str, typer.Option(help="Comma-separated architectures.")] = "unet,vit",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (paper: 10,35,42).")] = (
        "10,35,42"
    ),
    batches: Annotated[int, typer.Option(help="Test trajectories analysed per seed.")] = 6,
    classes: Annotated[
        str, typer.Option(help="Comma-separated classes (default: the dataset's first 3).")
    ] = "",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: demo 12, paper 150 CE / 100 NS).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="Print the plan and stop.")] = False,
    keep_epochs: Annotated[
        str,
        typer.Option(
            help="Training snapshots kept per model, e.g. 1,2,4,8,16; 'default': powers of "
            "two plus the last; 'none': no snapshots."
        ),
    ] = "default",
    dynamics: Annotated[
        str,
        typer.Option(
            help="Comma-separated architectures whose kept epochs are analysed too, with the "
            "main analysis's request (the dashboard's Training dynamics panel), e.g. vit."
        ),
    ] = "",
    sweep: Annotated[
        str,
        typer.Option(
            help="Comma-separated architectures whose main analysis is repeated over "
            "--sweep-dampings with the sweep's default estimators (the dashboard's "
            "Sensitivity panel; its on-demand settings, cg among them, stay in the "
            "dashboard)."
        ),
    ] = "",
    sweep_dampings: Annotated[
        str | None,
        typer.Option(
            help=f"The λ values of --sweep, comma-separated (default {DAMPING_GRID_TEXT})."
        ),
    ] = None,
    ray_address: RayAddress = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Start without asking when the plan's total is over COHERENCE_CONFIRM_MINUTES "
            "(default 30).",
        ),
    ] = False,
) -> None:
    """Train every missing (architecture, seed), then compute the paper's analyses into the
    cache, so the dashboard opens on the finished study; with --dynamics and --sweep also its
    Training dynamics and Sensitivity panels. Rerun after a kill to resume."""
    from coherence.cache.cost import confirm_seconds
    from coherence.executors import get_executor
    from coherence.study import StudySpec, plan_study
    from coherence.surrogates.snapshots import parse_keep_epochs

    seed_items = split_list(seeds, "--seeds")
    try:
        seed_list = tuple(int(s) for s in seed_items)
    except ValueError:
        raise RequestError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    if sweep_dampings is not None and not sweep:
        raise RequestError(
            f"--sweep-dampings {sweep_dampings!r}: it sets the λ values of --sweep, which is not "
            "given; add --sweep ARCHS (e.g. --sweep vit)"
        )
    text = DAMPING_GRID_TEXT if sweep_dampings is None else sweep_dampings
    items = split_list(text, "--sweep-dampings")
    try:  # an explicit '' is a mistake, not a request for the default grid
        dampings = tuple(float(d) for d in items)
    except ValueError:
        dampings = ()
    if not dampings:
        raise RequestError(
            f"--sweep-dampings {sweep_dampings!r}: expected comma-separated numbers, e.g. "
            f"{DAMPING_GRID_TEXT}"
        )
    spec = StudySpec(
        dataset=data,
        preset=preset,
        archs=split_list(archs, "--archs"),
        seeds=seed_list,
        batches=batches,
        classes=split_list(classes, "--classes"),
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        keep_epochs=parse_keep_epochs(keep_epochs),
        dynamics_archs=_distinct(split_list(dynamics, "--dynamics")),
        sweep_archs=_distinct(split_list(sweep, "--sweep")),
        sweep_dampings=_distinct(dampings) if sweep else (),
    )
    executor = get_executor(ray_address)
    unreachable = None if plan_only else connect_early(executor)
    console.print("planning (probing the models on this device)…")
    plan = plan_study(spec, workspace)
    for line in plan.describe():
        (product if plan_only else console).print(line, highlight=False)
    if plan_only:
        return
    if unreachable is not None and plan.has_work:
        raise unreachable
    if executor.local and (over := plan.analyses_over_memory):  # a cluster's workers check
        # their own; here the plan knew before training that the study would stop there
        names = ", ".join(a.arch for a in over)
        raise RequestError(
            f"the analysis of {names} would not fit in memory here (see the plan's note), so "
            "the study would train and then stop there: nothing was started. Analyse fewer "
            "classes (--classes), or run on a machine with more memory (a GPU: --device cuda)"
        )
    if plan.has_work and not yes and plan.seconds > confirm_seconds():  # before any training
        confirm_long_job(
            plan.seconds,
            what="this study",
            smaller="fewer --seeds, --classes or --batches, fewer --epochs, or --preset demo",
        )
    if plan.has_work:
        say_cluster_faults(executor)
    if unreachable is not None:  # all cached: the cluster is not needed
        warn(f"{unreachable}; not needed: every training and analysis is cached")
    links = _run(plan, executor)
    root = plan.workspace
    # what the study leaves the user, on stdout (as --plan's plan): `> links.txt` keeps it
    product.print(
        f"study done: dataset {plan.dataset}, checkpoints in {root / 'checkpoints'}, results "
        f"in {root / 'cache'}.\nShow it with:  coherence serve --workspace {root}",
        highlight=False,
    )
    for arch, link in zip((a.arch for a in plan.analyses), links, strict=True):
        product.print(f"  {arch}: http://127.0.0.1:8501/?{link}", highlight=False)
    _print_panels(plan)


def _print_panels(plan) -> None:
    """Where each sweep shows; a dynamics sweep with no snapshot before the last epoch has
    nothing to show there, which the plan's note explained."""
    from coherence.study_plan import kept_epochs

    panels = {"dynamics": "Training dynamics", "sensitivity": "Sensitivity"}
    for kind in dict.fromkeys(s.kind for s in plan.sweeps):
        archs = [s.arch for s in plan.sweeps if s.kind == kind]
        if kind == "dynamics":
            empty = [a for a in archs if not kept_epochs(plan.spec, plan.workspace, a)[1]]
            archs = [a for a in archs if a not in empty]
            if empty:
                product.print(
                    f"  dynamics ({', '.join(empty)}): nothing to show, the checkpoints kept "
                    "no snapshot before their last epoch (see the plan's note)",
                    highlight=False,
                )
        if archs:
            shown = ", ".join(archs)
            product.print(
                f"  {kind} ({shown}): the {panels[kind]} tab of the view above", highlight=False
            )


def _distinct(values: tuple) -> tuple:
    """In the given order, each once: 'vit,vit' would plan (and print) its sweep twice."""
    return tuple(dict.fromkeys(values))


def _run(plan, executor) -> list[str]:
    """``run_study`` under one progress bar: each training's epochs, then each analysis. The bar
    goes when the study ends: its last frame would name a finished (or, fully cached, never
    started) stage after the log's own "done" lines."""
    from coherence.study import run_study

    with progress_bar(transient=True) as bar:
        task = bar.add_task("study", total=1.0, visible=False)  # shown by the first step

        def fit(text: str) -> str:
            """The description's share of the line, so that the bar and times fit; cut at
            the front, where the model's name is, not at the stage's end."""
            width = max(20, bar.console.width - 45)
            return text if len(text) <= width else "…" + text[-(width - 1) :]

        def on_train(step):
            # each run starts its own count: elapsed and time left are the run's, not the study's
            name = step.out.name
            bar.reset(task, total=1.0, description=fit(f"{name}: starting"), visible=True)

            def report(epoch: int, total: int, fraction: float, loss: float) -> None:
                description = fit(f"{name} epoch {epoch + 1}/{total} SMSE {loss:.3g}")
                bar.update(
                    task,
                    completed=(epoch + fraction) / total,
                    description=description,
                    visible=True,
                )

            return report

        def on_analysis(step):
            bar.reset(task, total=1.0, description=fit(f"{step.arch}: starting"), visible=True)
            # off a terminal (a log, CI) its waits and tenths in lines: a study's log was
            # silent through a slot wait and a whole analysis
            say = lambda line: log_line(f"  {line}", to=bar.console)  # noqa: E731
            plain = PlainProgress(say, console.is_terminal)

            def report(fraction: float, stage: str) -> None:
                description = fit(f"{step.arch}: {stage}")
                bar.update(task, completed=fraction, description=description, visible=True)
                plain(fraction, stage)

            return report

        def log(message: str) -> None:
            """A line of the study's log (a training's warning, a worker's too, as one), then
            no bar until the next report: after a step's "done" line the bar still named that
            step's last stage until the next began."""
            log_line(message, to=bar.console)
            bar.update(task, visible=False)

        return run_study(
            plan,
            log=log,
            train_progress=on_train,
            analysis_progress=on_analysis,
            executor=executor,
        )
