"""Compute on demand through the job runner: status per checkpoint group, submit, live
progress (stage, fraction, ETA), cancel, and re-attach.

Every request is keyed by its content (``JobRunner.key``), so a reload or a second tab with
the same URL asks ``status(key)`` and finds the running job or the cached result: nothing
here is per session. Progress is a fragment that reruns itself every second and reruns the
whole page once no job of the view is running any more.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from coherence.analysis.diagnostics import result_warnings
from coherence.analysis.influence import residual_help, residual_summary
from coherence.analysis.names import group_stem
from coherence.analysis.pipeline import AnalysisResult
from coherence.analysis.request import AnalysisRequest
from coherence.cache import slots
from coherence.cache.cost import confirm_seconds, example_seconds, time_of_job
from coherence.cache.jobs import JobStatus, is_assembled
from coherence.dashboard import loaders, watchers
from coherence.dashboard.markup import code, literal
from coherence.dashboard.selection import Selection, describe, differences
from coherence.dashboard.workspace_scan import Catalog
from coherence.errors import CoherenceError

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class GroupState:
    """One checkpoint group of the view: its request, job status and result."""

    label: str  # e.g. "UNet" (compare mode: both labels differ)
    checkpoints: tuple[str, ...]
    request: AnalysisRequest | None = None
    key: str | None = None
    status: JobStatus | None = None
    result: AnalysisResult | None = None
    error: str | None = None  # the request is invalid (one sentence)

    @property
    def stem(self) -> str:
        """A file-name-safe label for downloads."""
        return group_stem(self.label)


def group_labels(catalog: Catalog, selection: Selection) -> list[str]:
    labels = []
    for names in selection.groups:
        group = catalog.group_of(selection.dataset, names[0]) if names else None
        labels.append(group.label if group else "group")
    if len(labels) == 2 and labels[0] == labels[1]:  # same architecture, other seeds
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    return labels


def group_states(root: Path, catalog: Catalog, selection: Selection) -> tuple[GroupState, ...]:
    """Request, key, status and (when cached) result of each group; errors explained."""
    runner = loaders.job_runner(str(root))
    states = []
    for label, names in zip(group_labels(catalog, selection), selection.groups, strict=True):
        try:
            request = selection.to_request(root, names)
            key = runner.key(request)
            status = runner.status(key)
            if status.state == "missing" and runner.materialize(request) is not None:
                status = runner.status(key)  # a subset of cached work: assembled, no compute
        except CoherenceError as error:
            states.append(GroupState(label, names, error=str(error)))
            continue
        result = loaders.result(root, key, request) if status.state == "done" else None
        states.append(GroupState(label, names, request, key, status, result))
    return tuple(states)


LAST_VIEW = "last_computed_view"


def displayed(
    root: Path,
    catalog: Catalog,
    selection: Selection,
    states: Sequence[GroupState],
    problems: Sequence[str] = (),
) -> tuple[Selection, tuple[GroupState, ...], str | None]:
    """What the panels draw: the selection's own results when any is there (remembered as
    this session's last computed view); else the last computed view's figures with a
    banner saying they are stale (None when they are not)."""
    if any(g.result is not None for g in states):
        if all(g.result is not None for g in states):
            st.session_state[LAST_VIEW] = selection
        return selection, tuple(states), None
    last = st.session_state.get(LAST_VIEW)
    if not isinstance(last, Selection) or last == selection:
        return selection, tuple(states), None
    try:
        previous = group_states(root, catalog, last)
    except (CoherenceError, OSError):
        previous = ()
    if not previous or any(g.result is None for g in previous):
        st.session_state.pop(LAST_VIEW, None)  # evicted, or its files changed
        return selection, tuple(states), None
    changed = differences(last, selection)
    what = "; ".join(changed) if changed else "another selection"
    if problems:
        action = "fix the selection above to compute it"
    elif any(g.status is not None and g.status.active for g in states):
        action = "the current one is being computed"
    else:
        action = "press **Compute** above for the current one"
    banner = (
        f"**Stale figures**: showing the last computed selection ({literal(last.dataset)}, "
        f"{literal(describe(last))}), not the current one (changed: {literal(what)}); {action}. "
        "The page's link holds the current selection, not these figures."
    )
    return last, previous, banner


def _start_jobs(
    submit_one: Callable[[Any], object], items: Sequence, error_key: str, worker: str
) -> None:
    """Start (or join) a job per item; a refusal is kept under ``error_key`` for the page
    to show (``worker``: whose, in the message), a success clears it."""
    try:
        for item in items:
            submit_one(item)
        st.session_state.pop(error_key, None)
    except CoherenceError as error:
        st.session_state[error_key] = str(error)
    except OSError as error:  # the worker process could not start
        st.session_state[error_key] = f"could not start {worker}: {error}"


def submit(root: str, requests: Sequence[AnalysisRequest]) -> None:
    """Button callback: start (or join) a job per request that is not cached."""
    runner = loaders.job_runner(root)
    _start_jobs(runner.submit, requests, "compute_error", "the analysis worker")


def submit_tasks(root: str, kind: str, specs: Sequence[dict], error_key: str, worker: str) -> None:
    """Start (or join) background jobs of another kind (``coherence.cache.tasks``)."""
    runner = loaders.job_runner(root)
    _start_jobs(lambda spec: runner.submit_task(kind, spec), specs, error_key, worker)


def _cancel(root: str, keys: Sequence[str], prefix: str = "") -> None:
    runner = loaders.job_runner(root)
    for key in keys:
        runner.cancel(key)
    st.session_state[f"{prefix}cancel_requested"] = time.time()


UP_TO = " (up to: cg counted at its iteration cap)"  # after an estimate that is a bound


class MachineBusy(Exception):
    """Another process computes in every slot: a timing now would read several times slow
    (and slow that job down), so there is no estimate until it is done."""


def job_cost(request: AnalysisRequest, *, float64: bool = False) -> tuple[float, int, bool]:
    """(estimated seconds per unit, units, whether that is an upper bound: cg counted at its
    iteration cap) of the job (cache.cost); (0, 0, False) if it cannot be estimated here.
    ``float64``: timed on a float64 copy of the model (the counterfactual check's precision;
    on a CPU several times slower than float32). Timed on the device the job will use (a
    copy on the GPU for a cuda or auto request where one is visible), not on the CPU copy the
    page keeps."""
    try:
        return _job_cost(json.dumps(request.to_dict(), sort_keys=True), float64)
    except MachineBusy:  # not cached: timed once the machine is free
        return 0.0, 0, False


@st.cache_data(show_spinner=False, max_entries=64)
def _job_cost(request_json: str, float64: bool = False) -> tuple[float, int, bool]:
    request = AnalysisRequest.from_dict(json.loads(request_json))
    try:
        inputs = loaders.batch_inputs(request)[0]
        path = request.checkpoints[0]
        device = str(request.torch_device)
        signature = loaders.checkpoint_signature(path)
        grid = inputs.shape[1:]  # not N: the window's length sets N
        per_example = _example_seconds(str(path), signature, grid, device, float64, inputs)
    except CoherenceError:
        return 0.0, 0, False  # the job itself will report the problem
    job = time_of_job(request, per_example)
    return job.unit_seconds, job.units, job.upper_bound


@st.cache_data(show_spinner="Timing the model on this machine for the estimate…", max_entries=32)
def _example_seconds(
    path: str, signature: tuple, grid: tuple, device: str, float64: bool, _inputs: np.ndarray
) -> float:
    """One example's forward, timed once per model, example shape, device and precision: the
    window, λ or estimator change the passes a job makes, not a pass's time, so moving the
    window slider no longer times the model again (seconds per move at 128²). ``_inputs``
    (the first request's batch, unhashed) is what is timed: the per-example time of another
    batch size differs by up to a third on a CPU (cache effects), well within what an
    estimate promises."""
    if slots.busy():
        raise MachineBusy
    model, _ = loaders.model(path)
    target = torch.device(device)
    if float64 or target.type != "cpu":
        model = copy.deepcopy(model).to(target, torch.float64 if float64 else None)
    dtype = next(model.parameters()).dtype
    per_example, quiet = example_seconds(model, torch.from_numpy(_inputs).to(target, dtype))
    if not quiet:  # a job started (or another page timed) meanwhile: not cached
        raise MachineBusy
    return per_example


def job_seconds(request: AnalysisRequest) -> float:
    """The whole job's estimated seconds, 0 if it cannot be estimated here."""
    unit_seconds, units, _ = job_cost(request)
    return unit_seconds * units


def missing_seconds(root: Path, todo: Sequence[GroupState]) -> tuple[float, bool]:
    """Estimated seconds of what Compute would run for ``todo``: only the units not cached
    yet (a job resumes from the cached ones), and whether that is an upper bound."""
    runner = loaders.job_runner(str(root))
    seconds, bound = 0.0, False
    for group in todo:
        unit_seconds, _, upper = job_cost(group.request)
        cached, total = runner.cached_unit_count(group.request)
        seconds += unit_seconds * (total - cached)
        bound |= upper
    return seconds, bound


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


SILENT_AFTER_S = 15.0  # a running job that reported nothing for this long is in a silent phase


def progress_text(label: str, status: JobStatus, now: float | None = None) -> str:
    """'**UNet** · <stage> · 40% · 2 of 6 units done (1 from the cache) · about 3 min left';
    the time left counts down from the job's last report (a figure that stood still for a
    silent phase read as a hang) and, once spent, says so; a job quiet for a while says so
    (trace, Lanczos, assembly and storing report no steps)."""
    now = time.time() if now is None else now
    parts = [f"**{literal(label)}**", literal(status.stage or "starting")]
    if not status.queued:
        parts.append(f"{100 * status.fraction:.0f}%")
    if status.units_total:
        units = f"{status.units_done or 0} of {status.units_total} units done"
        if status.units_cached:
            units += f" ({status.units_cached} from the cache)"
        parts.append(units)
    quiet = 0.0 if status.updated is None else max(now - status.updated, 0.0)
    if status.eta_seconds is not None and not status.queued:
        left = status.eta_seconds - quiet  # counted down since the job last reported
        if left >= 1:
            parts.append(f"about {format_duration(left)} left")
        else:
            parts.append("taking longer than estimated")
    if quiet > SILENT_AFTER_S and not status.queued:
        parts.append(f"still working: this phase reports no steps ({format_duration(quiet)})")
    return " · ".join(parts)


@st.fragment(run_every=POLL_SECONDS)
def progress_panel(
    root: str, labels: tuple[str, ...], keys: tuple[str, ...], prefix: str = ""
) -> None:
    """Live progress of the running jobs of this view; reruns the page when they end.
    ``prefix`` keeps the widget keys of several panels apart (analysis jobs, the check)."""
    runner = loaders.job_runner(root)
    statuses = [runner.status(key) for key in keys]
    if not any(s.active for s in statuses):
        st.rerun(scope="app")
    watchers.mark_shown(keys)  # this page still shows them (another may not cancel them)
    for label, status in zip(labels, statuses, strict=True):
        if status.active:
            st.progress(min(max(status.fraction, 0.0), 1.0), text=progress_text(label, status))
            if status.note:  # why it runs slower than its estimate may have said
                st.caption(literal(f"{label}: {status.note}"))
        else:
            st.caption(literal(f"{label}: {status.state}"))
    asked = st.session_state.get(f"{prefix}cancel_requested")
    cancelling = asked is not None and time.time() - asked < 30
    st.button(
        "Cancelling…" if cancelling else "Cancel",
        key=f"{prefix}cancel_jobs",
        disabled=cancelling,
        on_click=_cancel,
        args=(root, tuple(k for k, s in zip(keys, statuses, strict=True) if s.active), prefix),
        help="Stops the job at its next progress step; finished (checkpoint, batch) units "
        "stay cached, so a later Compute resumes from them.",
    )


def render_status(root: Path, states: Sequence[GroupState], problems: Sequence[str]) -> None:
    """The compute bar above the panels: cached age, progress, errors and the button."""
    if problems:
        st.error(
            "This selection cannot be computed:\n"
            + "\n".join(f"- {literal(problem)}" for problem in problems),
            icon=":material/block:",
        )
        return
    for group in states:
        if group.error:
            st.error(f"**{literal(group.label)}**: {literal(group.error)}", icon=":material/error:")
    running = [g for g in states if g.status is not None and g.status.active]
    if running:
        st.session_state.pop("compute_error", None)
        progress_panel(str(root), tuple(g.label for g in running), tuple(g.key for g in running))
        return
    st.session_state.pop("cancel_requested", None)
    todo = [g for g in states if g.status is not None and not _group_status(root, g)]
    if error := st.session_state.get("compute_error"):
        st.error(literal(error))
    if todo:
        _compute_button(root, todo)


def _group_status(root: Path, group: GroupState) -> bool:
    """One group's line: its cached result (True), or why it is still to compute (False)."""
    status = group.status
    if status.state == "done" and group.result is not None:
        result = group.result
        how = "assembled from cached units (no computation)" if is_assembled(result) else "computed"
        residuals = residual_summary(
            result.diagnostics,
            brief=True,
            arch=loaders.catalog(root).arch_of(group.checkpoints),
            smse_map="smse" in result.H_std,
        )
        # one caption, not two, its numbers only (their meaning in its help): every line
        # above the tabs pushes the heatmap down; a cache icon, not a check mark, which read
        # as a pass beside residuals that miss the rtol
        st.caption(
            f":material/database: **{literal(group.label)}**: cached result, {how} "
            f"{format_duration(status.age_seconds)} ago "
            f"(key {code(group.key[:12])})" + (f" · {literal(residuals)}" if residuals else ""),
            help=literal(residual_help(result.diagnostics)) if residuals else None,
        )
        for warning in result_warnings(
            result.diagnostics, result.checkpoints, result.request.trajectories
        ):
            st.warning(f"**{group.label}**: {warning}", icon=":material/warning:")
        return True
    if status.state == "failed":
        st.error(f"**{literal(group.label)}**: the analysis failed: {literal(status.error)}")
        return False
    cached, total = loaders.job_runner(str(root)).cached_unit_count(group.request)
    resume = f" {cached} of {total} units cached: Compute computes only the rest." if cached else ""
    if status.state == "cancelled":
        st.warning(
            f"**{literal(group.label)}**: the analysis was cancelled; compute it again.{resume}"
        )
    else:
        changed = _files_changed(root, group)
        st.info(
            f"**{literal(group.label)}**: not computed yet for this selection.{resume}{changed}",
            icon=":material/info:",
        )
    return False


def _by_names(request: dict) -> dict:
    """A request's fields with its checkpoints and dataset by name, not path: a workspace
    moved or copied keeps its cache (keys name contents, not paths)."""
    from coherence.surrogates.snapshots import checkpoint_labels

    checkpoints = checkpoint_labels(request.get("checkpoints", ()))
    return request | {"checkpoints": checkpoints, "data": Path(str(request.get("data"))).name}


def _files_changed(root: Path, group: GroupState) -> str:
    """Why a selection computed before reads "not computed": the cache holds a result of
    the same request whose key, which names the files' contents and the analysis code's
    version, differs (a checkpoint retrained or restored, a dataset re-imported, an
    upgrade), said instead of left to guess."""
    wanted = _by_names(group.request.to_dict())
    cached = loaders.cached_analyses(root)
    if any(_by_names(req) == wanted and key != group.key for key, _, req in cached):
        return (
            " A result of this selection is cached for other contents: a checkpoint or the "
            "dataset changed since (retrained, restored or re-imported), or the analysis "
            "code did (an upgrade); Compute computes it for them as they are now."
        )
    return ""


# a job's start outside its units (worker, imports, loading, tracing) on a 2-core machine,
# until a job in this workspace has measured it (``ResultStore.job_setup``)
DEFAULT_SETUP_SECONDS = 5.0


def setup_seconds(root: Path) -> tuple[float, bool]:
    """Seconds each background job spends outside its units, and whether that was measured
    in this workspace (else a first guess): on small models it outweighs the units."""
    measured = loaders.job_runner(str(root)).store.job_setup()
    return (DEFAULT_SETUP_SECONDS, False) if measured is None else (measured, True)


def _compute_button(root: Path, todo: Sequence[GroupState]) -> None:
    """The estimated time (a confirmation past the threshold) and the Compute button."""
    seconds, bound = missing_seconds(root, todo)
    confirmed = True
    if seconds == 0 and slots.busy():  # nothing to confirm against: ask before queuing
        st.caption(
            "Another job is computing on this machine: this one is estimated once it is "
            "done (timing it now would read slow and slow that job down)."
        )
        confirmed = st.checkbox("Queue it behind that job without an estimate", key="unestimated")
    if seconds > 0:
        setup, measured = setup_seconds(root)
        setup *= len(todo)  # one worker per analysis
        seconds += setup
        limit = UP_TO if bound else ""
        how = "as measured on the last jobs here" if measured else "a first guess"
        st.caption(
            f"Estimated time of what Compute runs: {format_duration(seconds)}{limit}, "
            f"{format_duration(setup)} of it to start the worker"
            f"{'s' if len(todo) > 1 else ''} and load the models ({how})."
        )
    if seconds > confirm_seconds():
        confirmed = st.checkbox(
            f"Start a job estimated at {'up to ' if bound else ''}{format_duration(seconds)}",
            key="confirm_long_job",
        )
    st.button(
        "Compute" if len(todo) == 1 else f"Compute {len(todo)} analyses",
        type="primary",
        key="compute",
        icon=":material/play_arrow:",
        disabled=not confirmed,
        on_click=submit,
        args=(str(root), tuple(g.request for g in todo)),
        help="Runs in a background worker; progress shows here, and the result is "
        "cached for everyone who asks for the same analysis.",
    )
