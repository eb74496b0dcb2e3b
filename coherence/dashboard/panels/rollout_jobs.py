"""The Rollout panel's background jobs: started on the first visit of a selection, read from
the cache after, and withdrawn while still waiting when the page moves on.

Why withdrawn: the panel starts its selection's rollouts on its own (no button), so browsing
selections with the tab open queued one job per selection, and each then ran in turn in the
machine's compute slots (seconds each on the demo, minutes at paper size), ahead of whatever
the user asked for next. A job this page started on its own is cancelled when the page's
selection moves on (on any tab) while the job still waits for a slot or for its worker to
start; nothing computed is lost. One already computing finishes and is cached; one that
another open page shows is left alone (``dashboard/watchers``); one started with the button
is the user's. Shown again, a withdrawn selection starts afresh instead of reporting the
cancellation."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import streamlit as st

from coherence.cache.jobs import STARTING_STAGE
from coherence.cache.status import JobStatus
from coherence.cache.tasks import ROLLOUT
from coherence.dashboard import compute, loaders, watchers
from coherence.dashboard.compute import GroupState
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import STALE_ACTION, PanelContext
from coherence.errors import CoherenceError
from coherence.workspace import datasets_dir, resolve_inside

AUTO_KEY = "ro_auto"  # the keys this session started on its own (never restarted per rerun)
WAITING_KEY = "ro_waiting"  # of those, the ones not looked at since: may still be waiting
WITHDRAWN_KEY = "ro_withdrawn"  # cancelled by this page when its selection moved on


def rollout_runs(ctx: PanelContext) -> dict[str, tuple[GroupState, list]] | None:
    """Every group's rollouts from the cache, one dict per seed (one_step, rollout,
    prediction, truth); None while they compute: a background job per group (progress,
    cancel, a slot of the machine's own like any job), started on the first visit. The
    cached ones come from memory; a status is asked only for the others."""
    jobs = _rollout_jobs(ctx)
    root = str(ctx.root)
    found = [loaders.artifact(root, key) for _, _, key in jobs]
    if all(f is not None for f in found):
        st.session_state.pop("ro_cancel_requested", None)
        return _runs(ctx, jobs, found)
    runner = loaders.job_runner(root)
    missing = [
        (group, spec, key) for (group, spec, key), f in zip(jobs, found, strict=True) if f is None
    ]
    statuses = [runner.status(key) for _, _, key in missing]
    if any(s.active for s in statuses):
        labels = tuple(f"Rollouts of {group.label}" for group, _, _ in missing)
        compute.progress_panel(root, labels, tuple(key for _, _, key in missing), "ro_")
        return None
    st.session_state.pop("ro_cancel_requested", None)
    if ctx.stale:
        st.info("No rollouts are cached for these figures' selection.")
        st.caption(STALE_ACTION)
        return None
    specs, keys = tuple(spec for _, spec, _ in missing), tuple(key for _, _, key in missing)
    returned = _returned_to(keys, statuses)
    ended = {s.state for key, s in zip(keys, statuses, strict=True) if key not in returned}
    error = st.session_state.get(_error_key(keys))
    if ended & {"failed", "cancelled"} or error or _asked_before(keys):
        # said, and started again on a click (never resubmitted on every rerun)
        for (group, _, _), status in zip(missing, statuses, strict=True):
            if status.state == "failed":
                st.error(f"Rollouts of {literal(group.label)} failed: {literal(status.error)}")
        if "cancelled" in ended:
            st.warning("The rollouts were cancelled.")
        if error:
            st.error(literal(error))
        st.button(
            "Roll out again",
            key="ro_run",
            icon=":material/replay:",
            on_click=_submit_rollouts,
            args=(root, specs, keys),
        )
    else:  # the first visit: start them (seconds on the demo), then show their progress
        _submit_rollouts(root, specs, keys)
        st.session_state.setdefault(WAITING_KEY, set()).update(keys)
        st.rerun(scope="app")
    return None


def leave_rollouts(ctx: PanelContext) -> list[str]:
    """On every run of the page, whatever tab is open: withdraw the rollouts this page
    started on its own for a selection it no longer shows (``withdraw``). Returns their
    keys; costs nothing for a page that started none."""
    if not st.session_state.get(WAITING_KEY):
        return []
    try:
        shown = {key for _, _, key in _rollout_jobs(ctx)}
    except CoherenceError:  # a selection with no rollout (the panel says why)
        shown = set()
    return withdraw(str(ctx.root), shown)


def withdraw(root: str, shown: Collection[str]) -> list[str]:
    """Cancel the rollouts this page started on its own for keys not in ``shown`` that
    still wait for a slot or for their worker to start, unless another open page shows
    them (``watchers``). Each left job is looked at once: one computing is left to finish
    (and be cached)."""
    waiting: set[str] = st.session_state.setdefault(WAITING_KEY, set())
    withdrawn: set[str] = st.session_state.setdefault(WITHDRAWN_KEY, set())
    runner = loaders.job_runner(root)
    cancelled = []
    for key in sorted(waiting - set(shown)):
        waiting.discard(key)
        if watchers.shown_elsewhere(key) or not _still_waiting(runner.status(key)):
            continue
        if runner.cancel(key):
            withdrawn.add(key)
            cancelled.append(key)
    return cancelled


def _still_waiting(status: JobStatus) -> bool:
    """Queued for a compute slot, or spawned and not yet queued (its worker starting)."""
    return status.active and (status.queued or status.stage == STARTING_STAGE)


def _returned_to(keys: Sequence[str], statuses: Sequence[JobStatus]) -> set[str]:
    """The keys among ``keys`` that this page withdrew and that are still cancelled (or
    gone): shown again, they are started afresh, as on a first visit, not reported as
    cancelled. A later outcome (another page's job failed) is reported as usual."""
    withdrawn: set[str] = st.session_state.setdefault(WITHDRAWN_KEY, set())
    returned = set()
    for key, status in zip(keys, statuses, strict=True):
        if key in withdrawn:
            withdrawn.discard(key)
            if status.state in ("cancelled", "missing"):
                returned.add(key)
    st.session_state.setdefault(AUTO_KEY, set()).difference_update(returned)
    return returned


def _rollout_jobs(ctx: PanelContext) -> list[tuple[GroupState, dict[str, Any], str]]:
    """Each shown group's rollout job: (group, spec, key). The key is the seeds' and the
    data's contents, so it is shared by every page and survives a restart (disk cache)."""
    runner = loaders.job_runner(str(ctx.root))
    jobs = []
    for group in ctx.groups:
        spec = ctx.selection.rollout_spec(ctx.root, group.checkpoints)
        jobs.append((group, spec, runner.task_key(ROLLOUT.name, spec)))
    return jobs


def _error_key(keys: Sequence[str]) -> str:
    """Where a refused start of these jobs is kept: said for them, not for every later
    selection."""
    return "ro_error:" + ",".join(sorted(key[:16] for key in keys))


def _submit_rollouts(root: str, specs: tuple[dict[str, Any], ...], keys: tuple[str, ...]) -> None:
    compute.submit_tasks(root, ROLLOUT.name, specs, _error_key(keys), "the rollout's worker")


def _asked_before(keys: Sequence[str]) -> bool:
    """Whether this session already started these jobs on its own: a job that then neither
    runs nor is cached (its worker died at start) is offered as a button, not restarted on
    every rerun."""
    asked = st.session_state.setdefault(AUTO_KEY, set())
    if set(keys) & asked:
        return True
    asked.update(keys)
    return False


def _runs(ctx: PanelContext, jobs: list, found: list) -> dict[str, tuple[GroupState, list]]:
    """The panel's per-seed dicts from the cached rollouts and the dataset's truth."""
    truth = loaders.test_states(
        resolve_inside(datasets_dir(ctx.root), ctx.selection.dataset),
        ctx.selection.classes,
        ctx.selection.trajectories,
    )
    return {
        group.label: (
            group,
            [
                {name: arrays[name][s] for name in ("one_step", "rollout", "prediction")}
                | {"truth": truth}
                for s in range(len(group.checkpoints))
            ],
        )
        for (group, _, _), (arrays, _) in zip(jobs, found, strict=True)
    }
