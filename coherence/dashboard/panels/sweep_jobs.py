"""What the sweep panels (training dynamics, sensitivity) share: cached loading of each
point's result, the status line "k of n settings cached", a button that submits the missing
ones through ``JobRunner.submit`` and a live progress bar. Nothing is computed on page load:
statuses are cache look-ups, results are read only for points that are done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult
from coherence.cache import slots
from coherence.cache.cost import confirm_seconds
from coherence.cache.jobs import JobStatus
from coherence.dashboard import compute, loaders, panel_links, sweep_views
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import STALE_ACTION, PanelContext
from coherence.dashboard.selection import Selection
from coherence.dashboard.sweeps import SweepPoint
from coherence.errors import CoherenceError
from coherence.wording import plural

POLL_SECONDS = 1.0


class _NotCached(LookupError):
    """Raised inside the cached loader so that a miss is never cached."""


@st.cache_resource(show_spinner=False, max_entries=96)
def _result(root: str, key: str, request_json: str) -> AnalysisResult:
    request = AnalysisRequest.from_dict(json.loads(request_json))
    result = loaders.job_runner(root).result(key, request)
    if result is None:
        raise _NotCached(key)
    return result


def result(root: str, point: SweepPoint) -> AnalysisResult | None:
    """The cached result of one sweep point (its own loader cache: a sweep has many points
    and must not evict the main view's results), or None."""
    try:
        return _result(root, point.key, json.dumps(point.request.to_dict(), sort_keys=True))
    except _NotCached:
        return None


@st.cache_data(show_spinner=False, max_entries=512)
def _scores(root: str, key: str, request_json: str, response: str) -> dict[str, np.ndarray]:
    request = AnalysisRequest.from_dict(json.loads(request_json))
    return sweep_views.request_scores(_result(root, key, request_json), request, response)


def scores(root: str, point: SweepPoint, response: str) -> dict[str, np.ndarray]:
    """Per-seed trend scores of a done point (``trends.point_scores``), cached by key."""
    return _scores(root, point.key, json.dumps(point.request.to_dict(), sort_keys=True), response)


def unconverged_points(root: str, done: Sequence[SweepPoint]) -> list[tuple[SweepPoint, float]]:
    """``sweep_views.unconverged_points`` through this module's cached loader."""
    return sweep_views.unconverged_points(done, lambda p: result(root, p))


def warn_unconverged(
    bad: Sequence[tuple[SweepPoint, float]],
    total: int,
    name: Callable[[SweepPoint], str],
    what: str,
) -> None:
    """A warning above the panel's charts naming the cached cg points whose solves did not
    all reach their tolerance (``unconverged_points``): they are drawn, but their influence
    values are inaccurate."""
    if text := sweep_views.unconverged_text(bad, total, name, what, escape=literal):
        st.warning(text, icon=":material/warning:")


def statuses(root: str, points: Sequence[SweepPoint]) -> list[JobStatus]:
    runner = loaders.job_runner(root)
    return [runner.status(p.key) for p in points]


@st.fragment(run_every=POLL_SECONDS)
def _progress(root: str, keys: tuple[str, ...], what: str) -> None:
    """Live progress of the sweep's jobs; reruns the page when none is running any more."""
    runner = loaders.job_runner(root)
    states = [runner.status(k) for k in keys]
    if not any(s.active for s in states):
        st.rerun(scope="app")
    done = sum(s.state == "done" for s in states)
    running = [s for s in states if s.active]
    fraction = (done + sum(min(max(s.fraction, 0.0), 1.0) for s in running)) / len(states)
    st.progress(
        min(fraction, 1.0),
        text=f"{literal(what)}: {done} of {len(states)} done · {literal(running_text(running))}",
    )


def running_text(running: Sequence[JobStatus]) -> str:
    """What the active jobs are doing: the computing one's stage first, then how many wait
    for a compute slot (a waiting job's "queued, position 1" read as if nothing ran)."""
    computing = [s for s in running if not s.queued]
    waiting = len(running) - len(computing)
    parts = []
    if computing:
        stage = next((s.stage for s in computing if s.stage), "")
        parts.append(f"{len(computing)} computing" + (f" ({stage})" if stage else ""))
    if waiting:
        parts.append(f"{waiting} queued for a free compute slot")
    return ", ".join(parts) or "starting"


def status_bar(
    root: str,
    points: Sequence[SweepPoint],
    states: Sequence[JobStatus],
    *,
    key: str,
    what: tuple[str, str],
    stale: bool = False,
) -> None:
    """'k of n cached', failures, progress of running points, and a button for the rest
    (disabled, with the reason, while the panels show ``stale`` figures); ``what``: the
    noun and its plural ("sweep setting", "sweep settings")."""
    one, many = what
    done = sum(s.state == "done" for s in states)
    active = [p.key for p, s in zip(points, states, strict=True) if s.active]
    failed = [s for s in states if s.state == "failed"]
    # the count is the page's, the progress below the fragment's (live): "4 of 6 cached"
    # sat above "1 of 2 done" for a minute
    later = " (counted again when the running jobs end)" if active else ""
    # stale: the count is the drawn selection's, which read as the sidebar's (0 of them)
    whose = " for the figures shown, not the sidebar's selection (stale: banner above)"
    st.caption(
        f"{done} of {literal(plural(len(points), one, many))} cached"
        f"{whose if stale else ''}{later}."
    )
    for status in failed[:3]:
        st.error(f"A {literal(one)} analysis failed: {literal(status.error)}")
    if active:
        _progress(root, tuple(p.key for p in points if p.key in set(active)), many)
        return
    missing = [p for p, s in zip(points, states, strict=True) if s.state != "done"]
    if not missing:
        return
    seconds = _estimate(missing)
    estimate = (
        f" (≈ {compute.format_duration(seconds * len(missing))} on this machine)"
        if seconds > 0
        else ""
    )
    if seconds <= 0 and slots.busy():
        st.caption("No time estimate while another job computes: it is timed once it is done.")
    if error := st.session_state.get("compute_error"):
        st.error(literal(error))
    if stale:
        st.caption(STALE_ACTION)
    confirmed = not stale
    if confirmed and seconds * len(missing) > confirm_seconds():
        confirmed = st.checkbox(
            f"Start jobs estimated at {compute.format_duration(seconds * len(missing))}",
            key=f"{key}_confirm",
        )
    st.button(
        f"Compute the missing {literal(plural(len(missing), one, many))}{estimate}",
        disabled=not confirmed,
        key=f"{key}_compute",
        icon=":material/play_arrow:",
        on_click=compute.submit,
        args=(root, tuple(p.request for p in missing)),
        help="Each setting is its own cached analysis: only the missing ones run, in the "
        "background worker, and every later visitor finds them in the cache.",
    )


def _estimate(missing: Sequence[SweepPoint]) -> float:
    """Mean estimated seconds per missing point: one estimate per series (estimator), so a
    cg setting (its iteration cap counted in full) is not priced like a subspace one; 0 (no
    estimate) when any series cannot be timed now (the machine busy): the others' sum alone
    read 3 minutes for 18."""
    first: dict[tuple[int, str], tuple[SweepPoint, int]] = {}
    for point in missing:
        series = (point.group, point.series)
        found, count = first.get(series, (point, 0))
        first[series] = (found, count + 1)
    each = [(compute.job_seconds(point.request), count) for point, count in first.values()]
    if any(seconds <= 0 for seconds, _ in each):
        return 0.0
    return sum(seconds * count for seconds, count in each) / max(len(missing), 1)


PointsOf = Callable[[Selection], list[SweepPoint]]  # a selection's sweep


def _filled_groups(ctx: PanelContext, points_of: PointsOf) -> list[tuple[str, Selection, int, int]]:
    """``sweep_views.filled_groups`` of this view, its statuses read through this module."""
    root = str(ctx.root)
    return sweep_views.filled_groups(
        ctx.catalog, ctx.dataset, ctx.selection, points_of, lambda ps: statuses(root, ps)
    )


def filled_view(
    ctx: PanelContext, points_of: PointsOf, *, key: str, what: tuple[str, str]
) -> PanelContext:
    """The context a sweep panel draws: its own, or, where its own sweep has at most one
    cached point, none computing and more to compute, while another model group's has more
    (``coherence demo`` precomputes the ViT's, and the page opens on the UNet), that group's
    default view under a banner that says so, with a button back to this selection's own
    (to compute it, kept for this selection only). A first visit found one point in each
    panel (an audit); now it finds the demo's curves."""
    from coherence.analysis.names import selection_tag

    own_key, view_key, tag = f"{key}_own_sweep", f"{key}_view", selection_tag(ctx.selection)
    if panel_links.from_link(view_key) == "own":  # a link made while its own was shown
        st.session_state[own_key] = {*st.session_state.get(own_key, ()), tag}
    own = tag in st.session_state.get(own_key, ())
    if own:  # in the link (`sens_view=own`), so a shared link opens the view it was made in
        st.session_state[view_key] = "own"
    else:
        st.session_state.pop(view_key, None)
    if ctx.compare or ctx.stale or own:
        return ctx
    try:
        points = points_of(ctx.selection)
    except CoherenceError:
        return ctx
    states = statuses(str(ctx.root), points)
    cached = sum(s.state == "done" for s in states)
    if cached >= 2 or cached == len(points) or any(s.active for s in states):
        return ctx  # drawn, complete, or computing: its own
    mine = compute.group_labels(ctx.catalog, ctx.selection)[0]
    # another group, not the whole of this one (a subset of seeds is the user's own choice)
    others = [found for found in _filled_groups(ctx, points_of) if found[0] != mine]
    if not others:
        return ctx
    label, selection, done, _ = others[0]
    weights = "" if ctx.selection.epoch is None else " (at its final weights)"
    # a warning, not an info: a walk-through read the other group's charts as its own
    st.warning(
        f"**Not {literal(mine)}'s charts.** **{literal(mine)}**: {plural(cached, *what)} "
        f"cached. Shown below instead: **{literal(label)}**'s default view{weights} "
        f"({plural(done, *what)} cached); the headline and the other tabs stay on the "
        "sidebar's selection.",
        icon=":material/swap_horiz:",
    )

    def show_own() -> None:
        st.session_state[own_key] = {*st.session_state.get(own_key, ()), tag}

    st.button(
        f"Show {mine}'s own (to compute it)",
        key=f"{key}_show_own",
        on_click=show_own,
        icon=":material/undo:",
    )
    states = compute.group_states(ctx.root, ctx.catalog, selection)
    # named in the files, titles and provenance: a download had read as the sidebar's group
    return PanelContext(ctx.root, ctx.catalog, selection, ctx.dataset, states, instead=label)


def elsewhere(ctx: PanelContext, points_of: PointsOf, panel: str) -> None:
    """When this view's sweep has at most one cached point per group, link the default view
    of another model group of the dataset whose sweep is cached, so a visitor who chose to
    see this selection's own sweep finds the filled one a click away.

    ``points_of(selection) -> list[SweepPoint]`` builds the sweep of a selection."""
    from urllib.parse import urlencode

    mine = set(compute.group_labels(ctx.catalog, ctx.selection))
    links = {True: [], False: []}  # a subset of seeds: its own group's full view is no other
    for label, selection, done, total in _filled_groups(ctx, points_of):
        seeds = f", all {len(selection.checkpoints)} seeds" if label in mine else ""
        links[label in mine].append(
            f"[{literal(label)}](?{urlencode(selection.to_query() | {'panel': panel})}) "
            f"({done} of {total} cached{seeds})"
        )
    said = [
        f"{lead}: {', '.join(found)}."
        for lead, found in (
            ("Cached for this model group's default view", links[True]),
            ("Cached for another model group of this dataset", links[False]),
        )
        if found
    ]
    if said:
        st.info(" ".join(said), icon=":material/arrow_forward:")
