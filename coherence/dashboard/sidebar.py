"""The sidebar: widgets → a frozen Selection, and the Selection ↔ URL round trip.

Widget values live in ``st.session_state`` under ``sb_*`` keys, one control of the table in
``controls`` each. A new session (a page load, a shared link) fills them from the URL
through ``decode_query``, which explains and replaces bad values; afterwards the widgets own
the state and ``sync_url`` writes the selection back into the address bar. ``prepare``
validates the state and returns the Selection before anything is drawn; ``draw`` draws the
widgets last, so the panels (the heatmap) reach the browser first. Every widget offers only
what the workspace holds, so the remaining invalid combinations (too few classes, a window
too long for N ≤ 512, CUDA without a GPU) are explained by ``checks.problems``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import streamlit as st

from coherence.cache.keys import request_key
from coherence.dashboard import controls, loaders
from coherence.dashboard.control_kinds import Control, Number, Scope
from coherence.dashboard.control_rows import Dataset, Group, group_label, offered_datasets
from coherence.dashboard.controls import QUERY_KEYS
from coherence.dashboard.markup import code, literal
from coherence.dashboard.selection import (
    RESPONSES,
    Selection,
    dataset_defaults,
    depth_text,
    describe,
    from_request,
    plural,
    with_dataset,
)
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry
from coherence.errors import CoherenceError
from coherence.wording import format_ranges, shell_command

__all__ = ["current_selection_or_none", "describe", "draw", "init_from_url", "prepare"]


def _into_widgets(selection: Selection, catalog: Catalog) -> None:
    """Put a selection into the widgets' session state (before they are drawn)."""
    controls.load_state(st.session_state, selection, catalog)


def init_from_url(catalog: Catalog, *, cuda_available: bool) -> list[str]:
    """On a session's first run: the URL's selection into the widgets; returns warnings."""
    params = {key: st.query_params.get_all(key) for key in QUERY_KEYS if key in st.query_params}
    selection, warnings = controls.read_query(
        params, catalog, cuda_available=cuda_available, cached=loaders.is_cached(catalog.root)
    )
    if selection is not None:
        _into_widgets(selection, catalog)
    return warnings


def sync_url(selection: Selection) -> None:
    """Write the selection into the address bar (only keys that changed), in one update:
    each assignment is a message the browser handles before the first chart."""
    wanted = selection.to_query()
    changed = {
        key: wanted[key]
        for key in QUERY_KEYS
        if key in wanted and st.query_params.get(key) != wanted[key]
    }
    if changed:
        st.query_params.update(changed)
    for key in QUERY_KEYS:
        if key not in wanted and key in st.query_params:
            del st.query_params[key]


# ------------------------------------------------------------------------- callbacks ---


def _on_dataset(catalog: Catalog) -> None:
    name = st.session_state.sb_dataset
    cached = loaders.is_cached(catalog.root)
    defaults = dataset_defaults(catalog, name, cached=cached)
    if defaults is not None:
        current = current_selection_or_none(catalog)
        chosen = with_dataset(catalog, current, name, cached=cached) if current else defaults
        _into_widgets(chosen, catalog)
        st.session_state.sb_dataset = name


def _on_group(catalog: Catalog, group_key: str, ckpt_key: str) -> None:
    """A group chosen: all its seeds. Group A moved onto group B's model: B moves to
    another one, so compare mode does not open on a group beside itself (switching A to
    the ViT and then comparing showed ViT (A) against an identical ViT (B))."""
    state, dataset = st.session_state, st.session_state.sb_dataset
    groups = catalog.groups(dataset)
    label = state[group_key]
    group = next((g for g in groups if g.label == label), None)
    state[ckpt_key] = list(group.checkpoints) if group else []
    if group_key == "sb_group" and state.get("sb_group_b") == label:
        other = next((g for g in groups if g.label != label), None)
        if other is not None:
            state["sb_group_b"], state["sb_ckpts_b"] = other.label, list(other.checkpoints)


def current_selection_or_none(catalog: Catalog) -> Selection | None:
    try:
        return controls.read_state(st.session_state, catalog)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------- widgets ---


def _dataset_label(catalog: Catalog):
    def label(name: str) -> str:
        entry = catalog.dataset(name)
        h, w = entry.resolution
        size = f"{h}²" if h == w else f"{h}×{w}"
        return f"{name} · {entry.family} {size}, {len(entry.classes)} classes"

    return label


def _checkpoint_label(catalog: Catalog, names: Sequence[str] = ()):
    """A seed chip's text: 'seed 42' when that tells the group's checkpoints apart (the
    sidebar's chips are narrow: 'unet_demo_s42 (seed 42)' was cut to 'unet_dem…'), else
    the checkpoint name."""
    seeds = [e.seed if (e := catalog.checkpoint(n)) else None for n in names]
    unique = None not in seeds and len(set(seeds)) == len(seeds)

    def label(name: str) -> str:
        entry = catalog.checkpoint(name)
        if entry is None:
            return name
        return f"seed {entry.seed}" if unique else f"{name} (seed {entry.seed})"

    return label


def prepare(catalog: Catalog) -> Selection | None:
    """Make the widgets' session state valid for the workspace as it is now (it may have
    changed since the values were chosen) and return the Selection they describe.

    Runs before any widget is drawn, so the page can draw the panels first and the sidebar
    last: the heatmap reaches the browser before the sidebar's widgets.
    """
    controls.prepare_state(st.session_state, catalog)
    return current_selection_or_none(catalog)


def _group_widgets(catalog: Catalog, entry: DatasetEntry, control: Group, title: str) -> None:
    groups = catalog.groups(entry)
    labels = [g.label for g in groups]
    group_key, ckpt_key = control.group_key, control.state
    st.selectbox(
        title,
        labels,
        key=group_key,
        on_change=_on_group,
        args=(catalog, group_key, ckpt_key),
        help="Checkpoints are grouped by architecture and size; a group holds its seeds.",
    )
    group = groups[labels.index(st.session_state[group_key])]
    st.multiselect(
        control.label,
        list(group.checkpoints),
        key=ckpt_key,
        format_func=_checkpoint_label(catalog, group.checkpoints),
        help=control.help,
    )


def draw(catalog: Catalog, *, cuda_available: bool) -> None:
    """Draw the sidebar's widgets on the state ``prepare`` made valid in this run: one per
    control of the table, in its order."""
    with st.sidebar:
        st.header("Analysis", anchor=False)
        controls.walk(st.session_state, catalog, _draw, cuda_available=cuda_available)
        _cached_analyses(catalog)
        st.caption(
            f"Workspace {code(catalog.root)} · {plural(len(catalog.datasets), 'dataset')} · "
            f"{plural(len(catalog.checkpoints), 'checkpoint')}"
        )


def _draw(control: Control, scope: Scope) -> None:
    """One control's widget (the kind's, or the sidebar's own for dataset and groups)."""
    if control.divider:
        st.divider()
    if isinstance(control, Group):
        _group_control(control, scope)
    elif isinstance(control, Dataset):
        _dataset_widget(control, scope)
    elif control.drawn(scope):
        draw_widget = getattr(st, control.widget)
        args = control.widget_args(scope)
        if isinstance(control, Number) and control.decades:
            control.remember(st.session_state)
            args |= {"on_change": control.step_decade, "args": (st.session_state,)}
        draw_widget(control.label, key=control.state, **args)
    caption = control.caption(st.session_state, scope)
    if caption:
        st.caption(caption)


def _dataset_widget(control: Control, scope: Scope) -> None:
    catalog = scope.catalog
    st.selectbox(
        control.label,
        offered_datasets(catalog),
        key=control.state,
        format_func=_dataset_label(catalog),
        on_change=_on_dataset,
        args=(catalog,),
        help=control.help,
    )


def _group_control(control: Group, scope: Scope) -> None:
    """Group A's widgets; for group B the compare toggle, then its widgets when on."""
    state, entry = st.session_state, scope.entry
    if not control.second:
        _group_widgets(scope.catalog, entry, control, "Model group (architecture)")
        return
    if len(scope.catalog.groups(entry)) > 1 or state.sb_compare:
        st.toggle(
            "Compare with a second model group",
            key="sb_compare",
            help="Side by side on one colour scale, e.g. UNet vs ViT.",
        )
    if state.sb_compare:
        _group_widgets(scope.catalog, entry, control, "Second model group")


FOLLOWED = "_cached_pick_follows"  # the selection the picker last followed


def _follow_selection(choices: dict[str, tuple[Selection, str]], current: Selection | None) -> None:
    """When the sidebar's selection changed to one of the cached entries, the picker shows
    that entry (its button then reads "Shown"); a pick of another entry stays until the
    selection changes again. Why: switching the group to the ViT left the picker on the
    UNet's entry with "Show it" offered, which read as the ViT's not being shown."""
    if current is None or st.session_state.get(FOLLOWED) == current:
        return
    st.session_state[FOLLOWED] = current
    for label, (selection, _key) in choices.items():
        if replace(selection, device=current.device) == current:
            st.session_state["cached_pick"] = label
            return


def _switch(catalog: Catalog, choices: dict[str, tuple[Selection, str]]) -> None:
    """Callback: the chosen cached analysis into the widgets (device kept). Its files are
    checked here, on the click, not for every listed entry on every page load (that hashes
    each entry's checkpoints and dataset files: minutes for a large dataset that was moved)."""
    entry = choices.get(st.session_state.get("cached_pick"))
    if entry is None:
        return
    chosen, key = entry
    st.session_state.pop("cached_note", None)
    if not _same_files(catalog, chosen, key):
        st.session_state.cached_note = (
            "The files behind this entry changed since it was analysed (a checkpoint or "
            "dataset rewritten under the same name), so its cached result is not served for "
            "them: Compute analyses the files as they are now."
        )
    current = current_selection_or_none(catalog)
    if current is not None:
        chosen = replace(chosen, device=current.device)
    _into_widgets(chosen, catalog)


def _same_files(catalog: Catalog, selection: Selection, key: str) -> bool:
    """The selection made here has the stored entry's key: its files are the ones analysed
    (a moved workspace's entries match; a checkpoint retrained under the same name does not).
    The device is not part of the key: an entry computed on a GPU matches on a CPU machine."""
    try:
        return request_key(replace(selection, device="auto").to_request(catalog.root)) == key
    except (CoherenceError, OSError):
        return False


def _cached_label(catalog: Catalog, selection: Selection, key: str) -> str:
    """What tells cached entries apart first (a narrow sidebar cuts the end): the model
    group (with the seeds where not all of it: a subset assembled from a larger analysis
    read like the whole), estimator and λ, its Krylov depth; then the dataset, seeds,
    batches, responses where not all, window and key."""
    group = group_label(catalog, selection.dataset, selection.checkpoints) or "?"
    members = catalog.group_of(selection.dataset, selection.checkpoints[0])
    if members is not None and len(selection.checkpoints) < len(members.checkpoints):
        group += " " + ", ".join(_seed_names(members.checkpoints, selection.checkpoints))
    if selection.epoch is not None:  # a training snapshot's analysis (Training dynamics)
        group += f" epoch {selection.epoch}"
    # first–last snapshot, as the slider shows it (a colon is the link's START:STEPS, and
    # "window 3:16" here beside "window=3:13" in the link read as two windows)
    window = f"{selection.t_start}–{selection.t_start + selection.n_steps}"
    depth = depth_text(selection).strip()
    entry = catalog.dataset(selection.dataset)
    every = RESPONSES if entry is not None and entry.conserved else ("smse",)
    responses = (
        ""
        if set(selection.responses) >= set(every)
        else " · " + "+".join("SMSE" if r == "smse" else r for r in selection.responses)
    )
    # euclidean ignores λ; batches by number, as the sidebar picks them (two one-batch
    # entries of trajectories 0 and 1 read the same); classes where not all of them
    damping = "" if selection.estimator == "euclidean" else f" λ={selection.damping:g}"
    batches = format_ranges(selection.trajectories)  # 0-29, not thirty numbers
    classes = (
        ""
        if entry is None or set(selection.classes) >= set(entry.classes)
        else " · " + ",".join(selection.classes)
    )
    return (
        f"{group} · {selection.estimator}{damping} · "
        f"{depth + ' · ' if depth else ''}{selection.dataset}{classes} · "
        f"{plural(len(selection.checkpoints), 'seed')} × "
        f"{'batch' if len(selection.trajectories) == 1 else 'batches'} {batches}{responses} · "
        f"snapshots {window} · {key[:8]}"
    )


def _seed_names(group: Sequence[str], chosen: Sequence[str]) -> list[str]:
    """The chosen checkpoints' names without the prefix their whole group shares, cut at an
    underscore ('s10' of unet_demo_s10 among unet_demo_s35, …); whole names otherwise."""
    parts = [name.split("_") for name in group]
    shared = 0  # leading underscore-separated words every name shares, one word left each
    while shared < min(map(len, parts)) - 1 and len({p[shared] for p in parts}) == 1:
        shared += 1
    return ["_".join(name.split("_")[shared:]) for name in chosen]


def _cached_analyses(catalog: Catalog) -> None:
    """The workspace's cached analyses (any visitor's, the CLI's, the demo's), one pick and
    a button away: switching to one draws it from the cache, no computation."""
    choices: dict[str, tuple[Selection, str]] = {}  # label → (selection, its cache key)
    others = 0  # results no selection of this page makes (one class, a removed checkpoint)
    for key, _stored, request in loaders.cached_analyses(catalog.root):
        selection = from_request(catalog, request)
        if selection is None:
            others += 1
            continue
        choices.setdefault(_cached_label(catalog, selection, key), (selection, key))
    with st.expander(f"Cached analyses ({len(choices)})", icon=":material/history:"):
        total = loaders.cached_result_count(catalog.root)
        capped = total > loaders.CACHED_LISTED  # the rest were left out without a word
        why = (
            "the command line's: one class, another split, cg start or cap, or energy "
            "threshold; or of files no longer here"
        )
        said = ""
        if capped:
            said = f"Listed: the {loaders.CACHED_LISTED} most recently used of {total} results"
            said += f", of which {others} ({why}) cannot be shown on this page" if others else ""
        elif others:
            said = f"{plural(others, 'other cached result')} ({why}) cannot be shown on this page"
        if said:
            listing = code(shell_command("coherence", "cache", "info", "--workspace", catalog.root))
            st.caption(f"{said}; {listing} lists every one.")
        if not choices:
            if not others:  # "nothing cached" beside "1 other cached result" contradicted it
                st.caption("Nothing is cached in this workspace yet.")
            return
        current = current_selection_or_none(catalog)
        labels = list(choices)
        _follow_selection(choices, current)
        st.selectbox(
            "Cached analysis",
            labels,
            key="cached_pick",
            help=(
                f"The {loaders.CACHED_LISTED} analyses of this workspace's cache used most "
                "recently, most recent first."
                if capped
                else "Every analysis in this workspace's cache, most recently used first."
            ),
        )
        picked, _ = choices.get(st.session_state.get("cached_pick"), (None, None))
        if picked is not None:  # whole: the box cuts a long label (a group's recipe fields)
            st.caption(literal(st.session_state["cached_pick"]))
        shown = picked is not None and current is not None
        shown = shown and replace(picked, device=current.device) == current  # any device
        st.button(
            "Shown" if shown else "Show it",
            key="cached_switch",
            icon=":material/swap_horiz:",
            disabled=shown,
            on_click=_switch,
            args=(catalog, choices),
            width="stretch",
        )
        if note := st.session_state.get("cached_note"):
            st.warning(note, icon=":material/warning:")
