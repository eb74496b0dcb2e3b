"""The paper's whole study in one command: train every (architecture, seed) that is missing,
then compute the paper's analyses into the workspace cache, so the dashboard opens on it.

``plan_study`` (``study_plan``) looks before it leaps: what exists, what will run, and the
estimated seconds and peak memory of every step on this device, measured by a probe of the
real model (``coherence.probe``) rather than guessed. ``run_study`` carries the plan out. Each
step is resumable on its own: training resumes from its last atomic checkpoint, an analysis is
one content-addressed cache entry, so a killed study rerun with the same command redoes nothing
that finished. The analyses are built from the dashboard's own ``Selection``, so their cache
keys are exactly the ones the dashboard looks up, and the closing message gives the link.
"""

from __future__ import annotations

import shutil
import time
from urllib.parse import urlencode

from coherence.cache import slots
from coherence.cache.states import JobState
from coherence.cache.tasks import ROLLOUT
from coherence.executors import Executor, TrainRun
from coherence.simulation.dataset import open_dataset
from coherence.study_plan import plan_study, point_label, selection_for, sweep_points
from coherence.study_spec import (
    DEMO_EPOCHS,
    PAPER_EPOCHS,
    PAPER_SEEDS,
    AnalysisStep,
    Log,
    StudyPlan,
    StudySpec,
    SweepStep,
    TrainStep,
)
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.training import train
from coherence.wording import plural

__all__ = [
    "DEMO_EPOCHS",
    "PAPER_EPOCHS",
    "PAPER_SEEDS",
    "AnalysisStep",
    "StudyPlan",
    "StudySpec",
    "SweepStep",
    "TrainStep",
    "plan_study",
    "run_study",
]


def run_study(
    plan: StudyPlan,
    *,
    log: Log = print,
    train_progress=None,
    analysis_progress=None,
    executor: Executor | None = None,
) -> list[str]:
    """Carry the plan out; returns the dashboard URLs (query strings) of its analyses.

    ``executor`` (default: here, one step after another): on a Ray cluster every pending
    training runs at once as its own task, then each analysis's units do."""
    from coherence.cache import JobRunner

    _train(plan, log, train_progress, executor)
    runner = JobRunner(plan.workspace)
    info = open_dataset(plan.dataset)
    links = [
        _analyse(plan, step, runner, info, log, analysis_progress, executor)
        for step in plan.analyses
    ]
    for sweep in plan.sweeps:
        _run_sweep(plan, sweep, runner, info, log, analysis_progress, executor)
    return links


def _train(plan: StudyPlan, log: Log, train_progress, executor: Executor | None) -> None:
    """Train (or resume) every step not done: on a Ray cluster all at once, else in turn."""
    pending = [step for step in plan.train if step.state != "done"]
    for step in pending:
        if step.state == "retrain":
            shutil.rmtree(step.out)  # ours by name, trained otherwise (demo only)
    if executor is not None and not executor.local and pending:
        runs = [
            TrainRun(plan.dataset, s.out, s.args, train_progress(s) if train_progress else None)
            for s in pending
        ]
        executor.train(runs, log=log)
        return
    for step in pending:
        log(f"training {step.out.name} ({plural(step.args.epochs, 'epoch')})")
        progress = train_progress(step) if train_progress else None
        # in a compute slot, as `coherence train` trains: beside a dashboard job or another
        # study, two trainings on all cores each ran several times slower than in turn
        waiting = slots.queue_notice(lambda line: log(f"  {line}"))
        with slots.compute_slot(
            f"train-{step.out.name}", on_wait=waiting, on_crowded=lambda line: log(f"  {line}")
        ):
            started = time.perf_counter()
            train(plan.dataset, step.out, step.args, progress=progress, log=log)
        history = ckpt.read_history(step.out)
        log(
            f"  done in {time.perf_counter() - started:.0f} s, valid SMSE "
            f"{history[-1]['valid_smse']:.4g}"
        )


def _analyse(
    plan: StudyPlan, step: AnalysisStep, runner, info, log: Log, progress, executor
) -> str:
    """Compute one architecture's analysis unless cached; returns its dashboard query."""
    root, spec = plan.workspace, plan.spec
    classes = tuple(step.query["classes"].split(","))
    selection = selection_for(spec, root, info, step.arch, classes)
    request = selection.to_request(root)
    key = runner.key(request)
    if runner.status(key).state == JobState.DONE:
        log(f"analysis of {step.arch} is cached ({key[:12]})")
    else:
        started = time.perf_counter()
        done = f" ({step.cached_units} cached)" if 0 < step.cached_units < step.units else ""
        log(f"analysing {step.arch}: {plural(step.units, 'unit')}{done}, N = {step.n_examples}")
        report = progress(step) if progress else None
        runner.run(request, progress=report, executor=executor, say=lambda line: log(f"  {line}"))
        log(f"  done in {time.perf_counter() - started:.0f} s")
    # its rollouts too (seconds, here): the dashboard's Rollout panel then opens at once
    rollout = selection.rollout_spec(root)
    if runner.store.artifact_age(runner.task_key(ROLLOUT.name, rollout)) is None:
        started = time.perf_counter()
        log(f"rolling out {step.arch} over its test trajectories")
        runner.run_task(ROLLOUT.name, rollout)
        log(f"  done in {time.perf_counter() - started:.0f} s")
    return urlencode(selection.to_query())


def _run_sweep(
    plan: StudyPlan, sweep: SweepStep, runner, info, log: Log, progress, executor
) -> None:
    """Compute the sweep's uncached points, keyed exactly as the dashboard's panels ask, on
    the study's executor (a Ray cluster's workers take each point's units, as they take the
    main analysis's)."""

    root, spec = plan.workspace, plan.spec
    step = next(a for a in plan.analyses if a.arch == sweep.arch)
    classes = tuple(step.query["classes"].split(","))
    points, problems = sweep_points(spec, root, info, sweep.arch, classes, sweep.kind, runner)
    for problem in problems:
        log(f"  {sweep.kind} {sweep.arch}: {problem}")
    todo = [p for p in points if runner.status(p.key).state != JobState.DONE]
    started = time.perf_counter()
    log(f"{sweep.kind} {sweep.arch}: {len(points) - len(todo)} of {len(points)} cached")
    for point in todo:
        label = point_label(sweep.kind, point)
        what = f"epoch {label}" if sweep.kind == "dynamics" else label
        log(f"  analysing {sweep.arch} {what}")
        runner.run(point.request, progress=progress(step) if progress else None, executor=executor)
    if todo:
        log(f"  done in {time.perf_counter() - started:.0f} s")
