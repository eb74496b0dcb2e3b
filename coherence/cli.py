"""The `coherence` command line: simulate, import, train, analyze, study, demo, serve, report,
cache.

Every long command shows progress; every user error is one line that names the bad input and
the fix (exit status 2), never a traceback.
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from coherence.cli_common import (
    compute_slot,
    confirm_long_job,
    console,
    friendly_errors,
    progress_bar,
    split_list,
)
from coherence.cli_import import import_app
from coherence.errors import ConvergenceWarning, RequestError

app = typer.Typer(
    name="coherence",
    help="Coherence Explorer: influence diagnostics for autoregressive PDE surrogates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(import_app, name="import")

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Compute on this Ray cluster (HOST:PORT); default $COHERENCE_RAY_ADDRESS, else here.",
    ),
]


@app.command()
@friendly_errors
def simulate(
    out: Annotated[Path, typer.Option(help="Dataset directory to create (Well layout).")],
    family: Annotated[str, typer.Option(help="PDE family: euler or ns.")] = "euler",
    classes: Annotated[
        str, typer.Option(help="Comma-separated initial-condition classes.")
    ] = "CE-RP,CE-CRP,CE-RPUI",
    trajectories: Annotated[int, typer.Option(help="Trajectories per class.")] = 32,
    resolution: Annotated[int, typer.Option(help="Grid points per side.")] = 64,
    snapshots: Annotated[int, typer.Option(help="Snapshots uniform on [0, t-end].")] = 21,
    t_end: Annotated[float, typer.Option(help="Final time.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for initial states and splits.")] = 0,
    name: Annotated[str, typer.Option(help="dataset_name attribute (default from family).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace existing class files.")] = False,
) -> None:
    """Simulate PDE trajectories and write them as a Well-format dataset."""
    from coherence.simulation.dataset import SimulationRequest, generate_dataset

    request = SimulationRequest(
        family=family,
        classes=split_list(classes),
        trajectories=trajectories,
        resolution=resolution,
        snapshots=snapshots,
        t_end=t_end,
        seed=seed,
        dataset_name=name,
    )
    start = time.perf_counter()
    with compute_slot("simulate") as slot, progress_bar() as bar:
        task = bar.add_task("simulating", total=len(request.classes) * trajectories)

        def report(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, description=message)

        workers = None if slot.max_jobs == 1 else slot.threads  # its share of the cores
        generate_dataset(request, out, progress=report, overwrite=overwrite, workers=workers)
    console.print(
        f"wrote dataset [bold]{request.name}[/] ({len(request.classes)} classes × "
        f"{trajectories} trajectories, {resolution}², {snapshots} snapshots) to "
        f"[bold]{out.resolve()}[/] in {time.perf_counter() - start:.1f} s"
    )


@app.command("train")
@friendly_errors
def train_command(
    data: Annotated[Path, typer.Option(help="Dataset directory (Well layout).")],
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
            help="Epochs whose weights are kept as snapshots under <out>/epochs/NNNN, e.g. "
            "1,2,4,8,16; 'default': powers of two plus the last; 'none': no snapshots."
        ),
    ] = "default",
    ray_address: RayAddress = None,
) -> None:
    """Train a surrogate one step at a time (teacher forcing) and save a checkpoint."""
    from coherence.executors import TrainRun, get_executor
    from coherence.surrogates.snapshots import parse_keep_epochs
    from coherence.surrogates.training import TrainingArgs

    args = TrainingArgs(
        arch=arch,
        preset=preset,
        classes=split_list(classes),
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
    executor = get_executor(ray_address)
    executor.connect()  # an unreachable cluster fails here, in seconds
    slot = compute_slot("train") if executor.local else nullcontext()
    with slot, progress_bar() as bar:
        task = bar.add_task("training", total=epochs)

        def report(epoch: int, total: int, fraction: float, loss: float) -> None:
            bar.update(
                task,
                completed=epoch + fraction,
                description=f"epoch {epoch + 1}/{total} SMSE {loss:.4g}",
            )

        executor.train([TrainRun(data, out, args, progress=report)], log=bar.console.print)
    console.print(f"checkpoint written to [bold]{out.resolve()}[/]")


@app.command()
@friendly_errors
def analyze(
    checkpoint: Annotated[
        list[Path], typer.Option(help="Checkpoint directory (repeat for several seeds).")
    ],
    data: Annotated[Path, typer.Option(help="Dataset directory (Well layout).")],
    out: Annotated[Path, typer.Option(help="Result file R.npz (a sidecar R.json is written).")],
    classes: Annotated[str, typer.Option(help="Comma-separated classes (2+ for transfer).")],
    window: Annotated[str, typer.Option(help="START:STEPS transitions per batch.")] = "0:16",
    trajectories: Annotated[
        str, typer.Option(help="Comma-separated test trajectory indices, one batch each.")
    ] = "0",
    response: Annotated[
        list[str], typer.Option(help="smse, mass or energy (repeat for several).")
    ] = ["smse"],  # noqa: B006 - typer reads the default, never mutates it
    estimator: Annotated[str, typer.Option(help="subspace, krylov, cg or euclidean.")] = "subspace",
    damping: Annotated[float, typer.Option(help="λ in η + λI.")] = 1e-4,
    rtol: Annotated[float | None, typer.Option(help="CG relative tolerance (cg only).")] = None,
    depth: Annotated[int, typer.Option(help="krylov: blocks of span{G, ηG, …}.")] = 4,
    cg_start: Annotated[
        str, typer.Option(help="cg: deflated (from the subspace solution) or cold.")
    ] = "deflated",
    energy_threshold: Annotated[float, typer.Option(help="Share of Σσ² of G kept in span(Q).")] = 1
    - 1e-4,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    split: Annotated[str, typer.Option(help="Dataset split the batches come from.")] = "test",
    trust_code: Annotated[
        bool, typer.Option(help="Allow checkpoints that name a custom architecture module.")
    ] = False,
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace whose cache/ stores and serves results.")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Start a long job without asking.")
    ] = False,
    ray_address: RayAddress = None,
) -> None:
    """Compute influence matrices for checkpoints × batches and write the result file.

    Results are cached in the workspace (content-addressed): repeating a request with the
    same checkpoints and data is served from the cache.
    """
    from coherence.analysis.influence import convergence_summary
    from coherence.analysis.pipeline import load_checked, prepare
    from coherence.analysis.request import AnalysisRequest, parse_window
    from coherence.analysis.results import save_result
    from coherence.cache import JobRunner
    from coherence.cache.cost import estimate_job
    from coherence.executors import get_executor

    t_start, n_steps = parse_window(window)
    try:
        trajectory_list = tuple(int(t) for t in split_list(trajectories))
    except ValueError:
        raise RequestError(
            f"--trajectories {trajectories!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    request = AnalysisRequest(
        checkpoints=tuple(str(c) for c in checkpoint),
        data=str(data),
        classes=split_list(classes),
        t_start=t_start,
        n_steps=n_steps,
        trajectories=trajectory_list,
        responses=tuple(response),
        estimator=estimator,
        damping=damping,
        rtol=rtol,
        energy_threshold=energy_threshold,
        depth=depth,
        cg_start=cg_start,
        device=device,
        split=split,
    )
    executor = get_executor(ray_address)
    executor.connect()  # an unreachable cluster fails here, in seconds
    info, batches = prepare(request)
    runner = JobRunner(workspace)
    if runner.store.age(runner.key(request)) is not None:
        console.print("cached result: served without computing")
    else:
        model, _ = load_checked(checkpoint[0], info, request.torch_device, trust_code=trust_code)
        cost = estimate_job(model, request, batches[0].inputs.to(request.torch_device))
        console.print(f"cost estimate: {cost.describe()}")
        if not cost.fits and executor.local:  # on a cluster, each worker checks its own
            raise RequestError(
                "this analysis would not fit in memory; shrink the window (--window) or the "
                "number of classes, or use a device with more memory"
            )
        if cost.needs_confirmation and not yes:
            confirm_long_job(cost.total_seconds)
    with progress_bar() as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # summarised below, cached or not
        task = bar.add_task("analyzing", total=1.0)

        def report(fraction: float, stage: str) -> None:
            bar.update(task, completed=fraction, description=stage[:60])

        result = runner.run(request, progress=report, trust_code=trust_code, executor=executor)
    path = save_result(result, out)
    if unconverged := convergence_summary(result.diagnostics, result.checkpoints):
        console.print(f"[bold yellow]warning:[/] {unconverged}", highlight=False, soft_wrap=True)
    seconds = result.provenance["seconds"]
    console.print(
        f"wrote [bold]{path.resolve()}[/] and its sidecar .json "
        f"({len(request.checkpoints)} checkpoints × {len(batches)} batches, N = "
        f"{request.n_examples}, {seconds:.1f} s)"
    )


@app.command()
@friendly_errors
def study(
    data: Annotated[str, typer.Option(help="Dataset: a name under <workspace>/datasets.")],
    preset: Annotated[str, typer.Option(help="Model size preset: demo or paper.")] = "demo",
    archs: Annotated[str, typer.Option(help="Comma-separated architectures.")] = "unet,vit",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (paper: 10,35,42).")] = (
        "10,35,42"
    ),
    batches: Annotated[int, typer.Option(help="Test trajectories analysed per seed.")] = 6,
    classes: Annotated[str, typer.Option(help="Comma-separated classes (default: 3).")] = "",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: demo 12, paper 150 CE / 100 NS).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="Print the plan and stop.")] = False,
    ray_address: RayAddress = None,
) -> None:
    """Train every missing (architecture, seed), then compute the paper's analyses into the
    cache, so the dashboard opens on the finished study. Rerun after a kill to resume."""
    from coherence.executors import get_executor
    from coherence.study import StudySpec, plan_study, run_study

    try:
        seed_list = tuple(int(s) for s in split_list(seeds))
    except ValueError:
        raise RequestError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    spec = StudySpec(
        dataset=data,
        preset=preset,
        archs=split_list(archs),
        seeds=seed_list,
        batches=batches,
        classes=split_list(classes),
        epochs=epochs,
        batch_size=batch_size,
        device=device,
    )
    executor = get_executor(ray_address)
    if not plan_only:
        executor.connect()  # an unreachable cluster fails here, in seconds
    console.print("planning (probing the models on this device)…")
    plan = plan_study(spec, workspace)
    for line in plan.describe():
        console.print(line, highlight=False)
    if plan_only:
        return
    with progress_bar() as bar:
        task = bar.add_task("study", total=1.0)

        def on_train(step):
            def report(epoch: int, total: int, fraction: float, loss: float) -> None:
                bar.update(
                    task,
                    completed=(epoch + fraction) / total,
                    description=f"{step.out.name} epoch {epoch + 1}/{total} SMSE {loss:.3g}",
                )

            return report

        def on_analysis(step):
            def report(fraction: float, stage: str) -> None:
                bar.update(task, completed=fraction, description=f"{step.arch}: {stage}"[:60])

            return report

        links = run_study(
            plan,
            log=bar.console.print,
            train_progress=on_train,
            analysis_progress=on_analysis,
            executor=executor,
        )
    root = plan.workspace
    console.print(
        f"study done: dataset {plan.dataset}, checkpoints in {root / 'checkpoints'}, results "
        f"in {root / 'cache'}.\nShow it with:  coherence serve --workspace {root}"
    )
    for arch, link in zip((a.arch for a in plan.analyses), links, strict=True):
        console.print(f"  {arch}: http://127.0.0.1:8501/?{link}", highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def demo(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Build the demo workspace (CE data, UNet and ViT for three seeds); skips what exists."""
    from coherence.demo import build_demo

    build_demo(workspace, log=console.print)


@app.command()
@friendly_errors
def serve(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the dashboard (Streamlit) on the workspace.

    The process becomes Streamlit (exec), so stopping `coherence serve` stops the server: no
    child is left listening on the port.
    """
    import os

    import coherence.dashboard
    from coherence.workspace import ENV_VAR, workspace_root

    env = dict(os.environ)
    env[ENV_VAR] = str(workspace_root(workspace))
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
    console.print(
        f"serving Coherence Explorer on http://{address}:{port} (workspace {env[ENV_VAR]})"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


@app.command()
@friendly_errors
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    link: Annotated[
        str, typer.Option(help="A dashboard link (http://…/?data=…) or its query string.")
    ] = "",
    param: Annotated[
        list[str] | None,
        typer.Option(help="A URL parameter as KEY=VALUE (data, ckpt, vs, est, …); repeatable."),
    ] = None,
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Write the selection's report (figures, scores, provenance) as one offline HTML file,
    from cached results; with no link, the dashboard's default selection."""
    from urllib.parse import parse_qs, urlsplit

    from coherence.dashboard.selection import default_selection
    from coherence.dashboard.workspace_scan import scan_workspace
    from coherence.report import build_report, cached_in, load_groups, selection_from_link
    from coherence.workspace import workspace_root

    root = workspace_root(workspace)
    catalog = scan_workspace(root)
    params = parse_qs(urlsplit(link).query if "://" in link else link.lstrip("?"))
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RequestError(f"--param {item!r}: write KEY=VALUE, e.g. --param est=cg")
        params[key] = [value]
    if params:
        selection, warnings = selection_from_link(params, catalog, cached=cached_in(root))
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    else:
        selection = default_selection(catalog, cached=cached_in(root))
        if selection is None:
            raise RequestError(
                f"the workspace {root} has no analysis to report; run `coherence demo`"
            )
    groups = load_groups(root, catalog, selection)
    out.write_bytes(build_report(root, catalog, selection, groups=groups, link=link))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): opens offline in any browser")


cache_app = typer.Typer(help="Inspect or clear the workspace's result cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
@friendly_errors
def cache_info(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Show where the cache lives, its size and limit, and its entries."""
    from coherence.cache import ResultStore
    from coherence.workspace import cache_dir

    store = ResultStore(cache_dir(workspace))
    info = store.info()
    mib = 1024**2
    print(f"cache: {info['directory']}")
    print(
        f"entries: {info['entries']} results, {info['records']} job records, "
        f"{info['bytes'] / mib:.1f} MiB of {info['limit'] / mib:.0f} MiB"
        + (f", {info['unsafe']} unsafe entries refused" if info.get("unsafe") else "")
    )
    for entry in store.entries():
        minutes = (time.time() - entry["stored"]) / 60
        print(
            f"  {entry['key'][:16]}…  {entry['bytes'] / mib:7.2f} MiB  stored {minutes:.0f} min ago"
        )


@cache_app.command("clear")
@friendly_errors
def cache_clear(
    workspace: Annotated[Path | None, typer.Option(help="Workspace directory.")] = None,
) -> None:
    """Delete every cached result and job record (results are recomputed on demand)."""
    from coherence.cache import ResultStore
    from coherence.workspace import cache_dir

    removed = ResultStore(cache_dir(workspace)).clear()
    print(f"removed {removed} cache entries")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m coherence.cli`
    main()
