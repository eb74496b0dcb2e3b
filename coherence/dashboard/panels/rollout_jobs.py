"""The Rollout panel's background jobs: started on the first visit of a selection, read from
the cache after, and withdrawn while still queued when the page moves on.

Why withdrawn: the panel starts its selection's rollouts on its own (no button), so browsing
selections with the tab open queued one job per selection, and each then ran in turn in the
machine's compute slots (seconds each on the demo, minutes at paper size), ahead of whatever
the user asked for next. A job this page started on its own and no longer shows is cancelled
while it still waits for a slot (nothing computed is lost); one already computing finishes
and is cached. Shown again, a withdrawn selection starts afresh instead of reporting the
cancellation. (Another page that joined the same job sees it cancelled and may start it
again with its button.)"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import streamlit as st

from coherence.cache.tasks import ROLLOUT
from coherence.dashboard import compute, loaders
from coherence.dashboard.compute import GroupState
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import STALE_ACTION, PanelContext
from coherence.workspace import datasets_dir, resolve_inside

AUTO_KEY = "ro_auto"  # the keys this session started on its own
WAITING_KEY = "ro_waiting"  # of those, the ones not yet seen finished (may still be queued)
WITHDRAWN_KEY = "ro_withdrawn"  # cancelled by this page on leaving their selection


def rollout_runs(ctx: PanelContext) -> dict[str, tuple[GroupState, list]] | None:
    """Every group's rollouts from the cache, one dict per seed (one_step, rollout,
    prediction, truth); None while they compute: a background job per group (progress,
    cancel, a slot of the machine's own like any job), started on the first visit. The
    cached ones come from memory; a status is asked only for the others."""
    jobs = _rollout_jobs(ctx)
    root = str(ctx.root)
    withdraw_left_behind(root, {key for _, _, key in jobs})
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
    specs, keys = tuple(spec for _, spec, _ in missing), tuple(key for _, _, key in missing)
    returned = _returned_to(keys)
    ended = {
        status.state
        for (_, _, key), status in zip(missing, statuses, strict=True)
        if key not in returned
    }
    error = st.session_state.get(_error_key(keys))
    if ctx.stale:
        st.info("No rollouts are cached for these figures' selection.")
        st.caption(STALE_ACTION)
    elif ended & {"failed", "cancelled"} or error or _asked_before(keys):
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
        st.rerun(scope="app")
    return None


def withdraw_left_behind(root: str, shown: Collection[str]) -> list[str]:
    """Cancel the rollouts this session started on its own for a selection other than
    ``shown`` while they still wait for a compute slot; returns their keys. A job already
    computing is left to finish (and be cached), and forgotten once it has."""
    waiting: set[str] = st.session_state.setdefault(WAITING_KEY, set())
    withdrawn: set[str] = st.session_state.setdefault(WITHDRAWN_KEY, set())
    runner = loaders.job_runner(root)
    cancelled = []
    for key in sorted(waiting - set(shown)):
        status = runner.status(key)
        if status.queued:
            if runner.cancel(key):
                withdrawn.add(key)
                cancelled.append(key)
            waiting.discard(key)
        elif not status.active:
            waiting.discard(key)  # finished (or failed): nothing to withdraw
        # else: computing, or its worker has not queued yet (looked at again next time)
    return cancelled


def _returned_to(keys: Sequence[str]) -> set[str]:
    """The keys among ``keys`` that this page withdrew: shown again, they are started
    afresh (as on a first visit), not reported as cancelled."""
    withdrawn: set[str] = st.session_state.setdefault(WITHDRAWN_KEY, set())
    returned = withdrawn & set(keys)
    withdrawn -= returned
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
    st.session_state.setdefault(WAITING_KEY, set()).update(keys)


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
