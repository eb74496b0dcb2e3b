"""`coherence analyze`: influence matrices for checkpoints × batches, through the cache.

The request is prepared once (dataset opened, every batch assembled: bad classes or windows
fail here, before anything loads) and that preparation serves the cost estimate and the run.
A cached result is served without an estimate; a long job asks first (``--yes`` skips it).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from coherence.cli_common import (
    PlainProgress,
    RayAddress,
    compute_slot,
    confirm_long_job,
    connect_early,
    console,
    friendly_errors,
    log_line,
    product,
    progress_bar,
    say_cluster_faults,
    split_list,
    styled,
    warn,
)
from coherence.errors import ConvergenceWarning, RequestError
from coherence.surrogates import snapshots
from coherence.wording import plural
from coherence.workspace import checkpoints_dir, datasets_dir, named_by


@friendly_errors
def analyze(
    checkpoint: Annotated[
        list[Path],
        typer.Option(
            help="Checkpoint directory, or a checkpoint's name in the workspace (repeat for "
            "several seeds)."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(help="Dataset directory (Well layout), or a dataset's name in the workspace."),
    ],
    out: Annotated[Path, typer.Option(help="Result file R.npz (a sidecar R.json is written).")],
    classes: Annotated[str, typer.Option(help="Comma-separated classes (2+ for transfer).")],
    window: Annotated[str, typer.Option(help="START:STEPS transitions per batch.")] = "0:16",
    trajectories: Annotated[
        str, typer.Option(help="Comma-separated trajectory indices in --split, one batch each.")
    ] = "0",
    response: Annotated[
        list[str], typer.Option(help="smse, mass or energy (repeat for several).")
    ] = ["smse"],  # noqa: B006 - typer reads the default, never mutates it
    estimator: Annotated[
        str,
        typer.Option(
            help="ekfac-krylov (Galerkin in span(G) + the EK-FAC-preconditioned Krylov space), "
            "subspace (span(G) alone), krylov, cg, ekfac or euclidean."
        ),
    ] = "ekfac-krylov",
    damping: Annotated[float, typer.Option(help="λ in η + λI.")] = 1e-4,
    rtol: Annotated[
        float | None,
        typer.Option(
            help="CG relative tolerance, required with --estimator cg (paper: 1.5e-2 "
            "UNet, 5e-2 ViT)."
        ),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            help="krylov, ekfac-krylov, cg with a deflated or preconditioned start: blocks of the "
            "Krylov space; default 1 for ekfac-krylov, 4 for the others."
        ),
    ] = None,
    cg_start: Annotated[
        str | None,
        typer.Option(
            help="cg: deflated (from the Galerkin solution in --depth blocks; the default), "
            "preconditioned (the same from the EK-FAC-preconditioned space, "
            "EK-FAC-preconditioned iterations) or cold."
        ),
    ] = None,
    max_iter: Annotated[
        int | None,
        typer.Option(
            help="cg: iterations per column before it stops unconverged (default 500; "
            "reported, and warned about, when a column reaches it)."
        ),
    ] = None,
    energy_threshold: Annotated[
        float | None,
        typer.Option(
            help="Share of Σσ² kept when a Krylov block is orthonormalized: of G for "
            "subspace (default 1 − 1e-4), krylov and deflated cg (default 1); for ekfac-krylov "
            "of its M̃⁻¹G block (default 1), while its span(G) block stays at 1 − 1e-4."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    split: Annotated[str, typer.Option(help="Dataset split the batches come from.")] = "test",
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code", help="Allow checkpoints that name a custom architecture module."
        ),
    ] = False,
    # the old --trust-code/--no-trust-code pair's second half, kept for scripts; hidden, as
    # its column cut option names at 80 columns
    no_trust_code: Annotated[bool, typer.Option("--no-trust-code", hidden=True)] = False,
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
    from coherence.analysis.pipeline import check_request, prepare
    from coherence.analysis.request import AnalysisRequest, check_new_damping, parse_window
    from coherence.analysis.results import check_result_path
    from coherence.analysis.vocabulary import CG_MAX_ITER
    from coherence.cache import JobRunner
    from coherence.cache.reuse import relabel
    from coherence.executors import get_executor
    from coherence.simulation.dataset import open_dataset
    from coherence.workspace import checked_workspace

    root = checked_workspace(workspace)
    check_new_damping(damping)
    trust_code = trust_code and not no_trust_code
    t_start, n_steps = parse_window(window)
    request = AnalysisRequest(
        checkpoints=tuple(str(named_in(root, c, "--checkpoint")) for c in checkpoint),
        data=str(named_in(root, data, "--data")),
        classes=split_list(classes, "--classes"),
        t_start=t_start,
        n_steps=n_steps,
        trajectories=_trajectory_list(trajectories),
        responses=tuple(response),
        estimator=estimator,
        damping=damping,
        rtol=rtol,
        energy_threshold=energy_threshold,
        depth=depth,
        cg_start=cg_start or "deflated",
        max_iter=CG_MAX_ITER if max_iter is None else max_iter,
        device=device,
        split=split,
    )
    check_result_path(out)
    given = {
        "depth": depth,
        "cg_start": cg_start,
        "energy_threshold": energy_threshold,
        "max_iter": max_iter,
    }
    executor = get_executor(ray_address)
    unreachable = connect_early(executor)  # raised below if anything must be computed
    info = open_dataset(request.data)
    # configs and manifests first: a checkpoint of another PDE was refused for its window
    # (the dataset's length) before its channels; and all of it before the estimate
    check_request(request, info)
    for warning in _option_warnings(request, rtol, given):  # of a request that can run: a
        warn(warning)  # window past the data was warned about as one step, then refused
    for problem in info.assumption_problems:  # training refuses such data; analysed, said
        warn(
            f"{problem} (`coherence train` refuses such data; its models learned them as "
            "periodic and evenly stepped)"
        )
    prepared = prepare(request, info)  # once: for the estimate and for the run
    if not root.exists():  # a mistyped --workspace computed afresh into a new, empty one
        warn(
            f"the workspace {root} does not exist yet: it is created for this result's "
            f"cache, and nothing cached elsewhere is reused (it is {named_by(workspace)}: "
            "check it for a typo)"
        )
    runner = JobRunner(workspace)
    # read, not only looked up: a damaged entry is dropped here, so what is left to compute
    # goes through the cost check and the cluster's notices like any other job
    stored = runner.store.get(runner.key(request))
    result = relabel(stored, request) if stored is not None else None
    if result is not None:
        said = "cached result: served without computing"
    else:
        result = runner.materialize(request, prepared=prepared)  # None: a unit is missing
        total = request.n_units
        said = f"every unit is cached ({plural(total, 'unit')}): assembled without computing"
    if result is not None:
        if unreachable is not None:
            warn(f"{unreachable}; not needed: the result is in the cache")
        console.print(said)
    else:
        if unreachable is not None:
            raise unreachable
        say_cluster_faults(executor)
        cached, _ = runner.cached_unit_count(request)  # a damaged unit was dropped just now
        _check_cost(
            request, prepared, trust_code=trust_code, local=executor.local, yes=yes, cached=cached
        )
        result, joined = _run(runner, request, prepared, trust_code=trust_code, executor=executor)
        stored = stored if not joined else result  # another process computed it: served
    _write(result, request, out, batches=len(prepared[1]), served=stored is not None)
    # where the cache is: without --workspace it is ./workspace, which a user may not expect
    console.print(f"cached in {runner.store.directory}", highlight=False)


def named_in(root: Path, path: Path, flag: str) -> Path:
    """``path`` as given, or, where nothing is there and it is relative, the workspace's
    dataset (``--data``) or checkpoint (``--checkpoint``) there, as ``study --data`` takes a
    name (``unet_s10``, or a snapshot ``unet_s10/epochs/0004``, its epoch also written
    ``epochs/4``); a path that is neither is refused naming the flag (and a swap of the
    two), a snapshot that is not kept listing the epochs that are."""
    if path.exists():
        return path
    kind, folder, other = (
        ("dataset", datasets_dir(root), checkpoints_dir(root))
        if flag == "--data"
        else ("checkpoint", checkpoints_dir(root), datasets_dir(root))
    )
    if not path.is_absolute() and (folder / path).is_dir():  # a name, or name/epochs/0004
        return folder / path
    other_kind = "checkpoint" if kind == "dataset" else "dataset"
    swapped = len(path.parts) == 1 and (other / path).is_dir()
    checkpoint, epoch = snapshots.split_snapshot(path)
    if flag == "--checkpoint" and epoch is not None:
        found = next((p for p in (checkpoint, folder / checkpoint) if p.is_dir()), None)
        if found is not None and snapshots.snapshot_dir(found, epoch).is_dir():
            return snapshots.snapshot_dir(found, epoch)  # epochs/4 for epochs/0004
        if found is not None:  # a snapshot of a checkpoint that is there: say which are
            kept = ", ".join(map(str, snapshots.list_snapshots(found))) or "none"
            raise RequestError(
                f"{flag} {path}: {found.name} keeps no snapshot of epoch {epoch} (epochs "
                f"kept: {kept}); give one of those, or the checkpoint itself for its last epoch"
            )
    raise RequestError(
        f"{flag} {path}: no such folder, nor a {kind} of that name in {folder}; "
        + (
            f"the workspace has a {other_kind} of that name: were --data and --checkpoint swapped?"
            if swapped
            else "give the folder's path" + _names_in(folder)
        )
    )


def _names_in(folder: Path, shown: int = 8) -> str:
    """', or one of the names there (a, b, …)' for the first ``shown`` folders in ``folder``
    (hidden ones left out); '' when it holds none."""
    if not folder.is_dir():
        return ""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        return ""
    more = f", … {len(names) - shown} more" if len(names) > shown else ""
    return f", or one of the names there ({', '.join(names[:shown])}{more})"


def _option_warnings(request, rtol: float | None, given: dict | None = None) -> list[str]:
    """Options that will not do what they say, said before the job starts: a 1-step
    --window (no score reads it), an --rtol, a
    --depth, a --cg-start, a --max-iter or an --energy-threshold (``given``: as typed, None
    when not) the
    estimator ignores, or an --rtol below what float32 residuals reach (cg then runs to its
    iteration cap: ≈ 100 s on the demo UNet, and only then said it had not converged)."""
    from coherence.analysis.vocabulary import rtol_out_of_reach

    out = []
    if request.n_steps < 2:  # the dashboard refuses it; a file for other uses is still wanted
        out.append(
            f"--window {request.t_start}:{request.n_steps} has 1 time step: the result holds "
            "the class-to-class map only; the scores, lag curves and two-time map need at "
            "least 2 steps"
        )
    estimator = request.estimator.value
    record = request.to_dict()  # each option recorded only where the estimator uses it
    for name, value in (given or {}).items():
        # max_iter is recorded only where it is not the default: cg is what uses it
        used = request.estimator == "cg" if name == "max_iter" else record.get(name) is not None
        if value is not None and not used:
            flag = "--" + name.replace("_", "-")
            out.append(f"{flag} {value} does not apply to {estimator}; it is ignored")
    if rtol is not None and request.estimator != "cg":
        out.append(
            f"--rtol {rtol:g} applies to the cg estimator only; {request.estimator} ignores it"
        )
    elif request.estimator == "cg" and rtol is not None and (why := rtol_out_of_reach(rtol)):
        out.append(f"--rtol {why}")
    return out


def _trajectory_list(trajectories: str) -> tuple[int, ...]:
    items = split_list(trajectories, "--trajectories")
    try:
        return tuple(int(t) for t in items)
    except ValueError:
        raise RequestError(
            f"--trajectories {trajectories!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None


def _check_cost(
    request, prepared, *, trust_code: bool, local: bool, yes: bool, cached: int = 0
) -> None:
    """Print the job's estimate of the units left (``cached`` are assembled from the cache);
    refuse one that cannot fit here, ask before a long one."""
    from dataclasses import replace

    from coherence.analysis.pipeline import load_checked
    from coherence.cache.cost import estimate_job

    info, batches = prepared
    device = request.torch_device
    model, _ = load_checked(
        request.checkpoints[0], info, device, trust_code=trust_code, split=request.split
    )
    inputs = batches[0].inputs.to(device)
    cost = replace(estimate_job(model, request, inputs), cached_units=cached)
    if cost.beside_other_job and local and cost.needs_confirmation and not yes:
        # timed oversubscribed, and the figure would ask: wait our turn and time it alone
        console.print("another job is computing: waiting for it to time this one's estimate")
        # no key lock is held here (slot after key lock); the job's own slot says if crowded
        with compute_slot("estimate", say_crowded=False):
            cost = replace(estimate_job(model, request, inputs), cached_units=cached)
    console.print(f"cost estimate: {cost.describe()}")
    if not cost.fits and local:  # on a cluster, each worker checks its own
        raise RequestError(
            "this analysis would not fit in memory; shrink the window (--window) or the "
            "number of classes, or use a device with more memory"
        )
    if cost.needs_confirmation and not yes:
        confirm_long_job(cost.total_seconds)


def _run(runner, request, prepared, *, trust_code: bool, executor):
    """The result, cached or computed, under a progress bar that goes when it is done (a
    cached result left it at 0 %; the "wrote …" line says what was done), and whether
    another process computed it (this one waited); convergence warnings are summarised
    afterwards, not printed as they come. Off a terminal, where the bar is not drawn, the
    waits are said in one plain line each (a log showed a silent wait, then another
    process's time as this one's), and the progress in a line per tenth of the job (a log
    of an interrupted run said nothing of how far it got)."""
    from coherence.cache.jobs import WAITING_FOR_OTHER

    with progress_bar(transient=True) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # summarised below, cached or not
        task = bar.add_task("analyzing", total=1.0)
        plain = PlainProgress(lambda line: log_line(line, to=bar.console), console.is_terminal)

        def report(fraction: float, stage: str) -> None:
            bar.update(task, completed=fraction, description=stage[:60])
            plain(fraction, stage)

        result = runner.run(
            request,
            progress=report,
            trust_code=trust_code,
            executor=executor,
            prepared=prepared,
            say=lambda line: log_line(line, to=bar.console),
        )
    return result, WAITING_FOR_OTHER in plain.seen and "here" not in plain.seen


def _write(result, request, out: Path, *, batches: int, served: bool = False) -> None:
    """Write the result file and its sidecar; warn about unconverged solves."""
    from coherence.analysis.diagnostics import RESIDUAL_POINTER, correction_note, result_warnings
    from coherence.analysis.influence import residual_summary
    from coherence.analysis.results import save_result
    from coherence.cache.jobs import is_assembled
    from coherence.surrogates.checkpoint import read_config

    replaced = Path(out).exists()  # said: a result there was overwritten without a word
    path = save_result(result, out)
    for warning in result_warnings(
        result.diagnostics, result.checkpoints, result.request.trajectories
    ):
        warn(warning, loud=True)
    if residuals := residual_summary(
        result.diagnostics, arch=read_config(request.checkpoints[0]).arch, brief=True
    ):
        console.print(f"{residuals}; {RESIDUAL_POINTER}", highlight=False)
    correction = correction_note(result.diagnostics) if "smse" in request.responses else ""
    if correction:  # how much of the SMSE map it is
        console.print(f"{correction}.", highlight=False)
    seconds = result.provenance["seconds"]
    # a result served from the cache took its seconds when it was computed, not now
    timing = f"computed earlier in {seconds:.1f} s" if served else f"{seconds:.1f} s"
    if not served and is_assembled(result):
        timing = f"assembled from cached units in {seconds:.1f} s"
    console.print(
        styled("wrote ", (str(path.resolve()), "bold")),
        f"and its sidecar .json ({plural(len(request.checkpoints), 'checkpoint')} × "
        f"{plural(batches, 'batch', 'batches')}, N = "
        f"{request.n_examples}, {timing})" + ("; it replaced the file there" if replaced else ""),
    )
    for line in score_lines(result):  # the result, on stdout (`> scores.txt` keeps it)
        product.print(line, highlight=False)


def score_lines(result) -> list[str]:
    """The headline scores with their Q1–Q3 and the verdict, as the dashboard's row reads
    them (a researcher on the command line had to call compute_scores in Python); none for
    a 1-step window, whose scores are undefined."""
    from coherence.analysis.verdict import (
        REFERENCES,
        caveat_line,
        format_score,
        response_note,
        result_caveats,
        uncertainty,
    )
    from coherence.analysis.verdict import verdict as verdict_of
    from coherence.report_panels import result_scores

    if result.request.n_steps < 2:
        return []
    scores = result_scores(result)
    table = {s.name: s for s in scores.as_list()}
    lines = [f"scores of Ĥ_{result.primary}:"]
    for ref in REFERENCES:
        score = table.get(ref.name)
        lines.append(f"  {ref.title}: {format_score(score)}  {uncertainty(score)}  ({ref.short})")
    if (share := scores.dominant_share) is not None:  # METHOD.md §7's fifth, of the spectrum
        lines.append(
            f"  Dominant-eigenvalue share: {format_score(share)}  {uncertainty(share)}  "
            "(λ_max / Σλ of QᵀηQ on span(G))"
        )
    lines.append(f"  verdict: {verdict_of(scores)}")
    if care := caveat_line(result_caveats(result)):
        lines.append(f"  {care}")
    if note := response_note(result.primary):
        lines.append(f"  {note}")
    return lines
