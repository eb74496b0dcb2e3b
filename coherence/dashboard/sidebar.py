"""The sidebar: widgets → a frozen Selection, and the Selection ↔ URL round trip.

Widget values live in ``st.session_state`` under ``sb_*`` keys. A new session (a page load,
a shared link) fills them from the URL through ``selection.decode_query``, which explains
and replaces bad values; afterwards the widgets own the state and ``sync_url`` writes the
selection back into the address bar. ``prepare`` validates the state and returns the
Selection before anything is drawn; ``draw`` draws the widgets last, so the panels (the
heatmap) reach the browser first. Every widget offers only what the workspace holds, so
the remaining invalid combinations (too few classes, a window too long for N ≤ 512, CUDA
without a GPU) are explained by ``selection.problems``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import streamlit as st

from coherence.dashboard import loaders
from coherence.dashboard.markup import code
from coherence.dashboard.selection import (
    DAMPING_RANGE,
    DEFAULT_DAMPING,
    DEVICES,
    ESTIMATORS,
    QUERY_KEYS,
    RESPONSES,
    RTOL_RANGE,
    Selection,
    dataset_defaults,
    decode_query,
    default_rtol,
    describe,
    from_request,
    with_dataset,
)
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry

ESTIMATOR_LABELS = {
    "subspace": "subspace (exact, default)",
    "krylov": "krylov (span{G, ηG, …}, closer to the full solve)",
    "cg": "cg (paper v2, iterative)",
    "euclidean": "euclidean (gradient dot product)",
}
RESPONSE_LABELS = {"smse": "SMSE (scaled MSE)", "mass": "mass", "energy": "energy"}


def _group_label(catalog: Catalog, dataset: str, checkpoints: Sequence[str]) -> str | None:
    group = catalog.group_of(dataset, checkpoints[0]) if checkpoints else None
    return group.label if group else None


def load_state(selection: Selection, catalog: Catalog) -> None:
    """Put a selection into the widgets' session state (before they are drawn)."""
    state = st.session_state
    groups = catalog.groups(selection.dataset)
    state.sb_dataset = selection.dataset
    state.sb_group = _group_label(catalog, selection.dataset, selection.checkpoints)
    state.sb_ckpts = list(selection.checkpoints)
    state.sb_compare = bool(selection.compare)
    other = next((g for g in groups if g.label != state.sb_group), None)
    if selection.compare:
        state.sb_group_b = _group_label(catalog, selection.dataset, selection.compare)
        state.sb_ckpts_b = list(selection.compare)
    else:
        state.sb_group_b = other.label if other else state.sb_group
        state.sb_ckpts_b = list(other.checkpoints) if other else list(selection.checkpoints)
    state.sb_classes = list(selection.classes)
    state.sb_traj = list(selection.trajectories)
    state.sb_window = (selection.t_start, selection.t_start + selection.n_steps)
    state.sb_resp = list(selection.responses)
    state.sb_est = selection.estimator
    state.sb_damping = float(selection.damping)
    arch = catalog.checkpoint(selection.checkpoints[0]).arch if selection.checkpoints else ""
    state.sb_rtol = float(selection.rtol) if selection.rtol is not None else default_rtol(arch)
    state.sb_device = selection.device


def init_from_url(catalog: Catalog, *, cuda_available: bool) -> list[str]:
    """On a session's first run: the URL's selection into the widgets; returns warnings."""
    params = {key: st.query_params.get_all(key) for key in QUERY_KEYS if key in st.query_params}
    selection, warnings = decode_query(
        params, catalog, cuda_available=cuda_available, cached=loaders.is_cached(catalog.root)
    )
    if selection is not None:
        load_state(selection, catalog)
    return warnings


def sync_url(selection: Selection) -> None:
    """Write the selection into the address bar (only keys that changed)."""
    wanted = selection.to_query()
    for key in QUERY_KEYS:
        if key in wanted:
            if st.query_params.get(key) != wanted[key]:
                st.query_params[key] = wanted[key]
        elif key in st.query_params:
            del st.query_params[key]


# ------------------------------------------------------------------------- callbacks ---


def _on_dataset(catalog: Catalog) -> None:
    name = st.session_state.sb_dataset
    cached = loaders.is_cached(catalog.root)
    defaults = dataset_defaults(catalog, name, cached=cached)
    if defaults is not None:
        current = current_selection_or_none(catalog)
        chosen = with_dataset(catalog, current, name, cached=cached) if current else defaults
        load_state(chosen, catalog)
        st.session_state.sb_dataset = name


def _on_group(catalog: Catalog, group_key: str, ckpt_key: str) -> None:
    dataset = st.session_state.sb_dataset
    label = st.session_state[group_key]
    group = next((g for g in catalog.groups(dataset) if g.label == label), None)
    st.session_state[ckpt_key] = list(group.checkpoints) if group else []


def current_selection_or_none(catalog: Catalog) -> Selection | None:
    try:
        return _selection_from_state(catalog)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------- widgets ---


def _keep_valid(key: str, options: Sequence[Any], default: Any, *, multi: bool = False) -> None:
    """Reset a widget's stale session value (the workspace changed) before drawing it."""
    state = st.session_state
    if key not in state:
        state[key] = default
        return
    value = state[key]
    if multi:
        kept = [v for v in (value or []) if v in options]
        if kept != list(value or []):
            state[key] = kept
    elif value not in options:
        state[key] = default


def _dataset_label(catalog: Catalog):
    def label(name: str) -> str:
        entry = catalog.dataset(name)
        h, w = entry.resolution
        size = f"{h}²" if h == w else f"{h}×{w}"
        return f"{name} · {entry.family} {size}, {len(entry.classes)} classes"

    return label


def plural(n: int, noun: str) -> str:
    """'1 dataset', '2 datasets'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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


def _prepare_group(catalog: Catalog, entry: DatasetEntry, suffix: str) -> None:
    groups = catalog.groups(entry)
    labels = [g.label for g in groups]
    group_key, ckpt_key = f"sb_group{suffix}", f"sb_ckpts{suffix}"
    first = st.session_state.get("sb_group") if suffix else None
    default = next((label for label in labels if label != first), labels[0])
    if group_key not in st.session_state:  # the second group was just switched on
        st.session_state[ckpt_key] = list(groups[labels.index(default)].checkpoints)
    _keep_valid(group_key, labels, default)
    group = groups[labels.index(st.session_state[group_key])]
    _keep_valid(ckpt_key, group.checkpoints, list(group.checkpoints), multi=True)


def prepare(catalog: Catalog) -> Selection | None:
    """Make the widgets' session state valid for the workspace as it is now (it may have
    changed since the values were chosen) and return the Selection they describe.

    Runs before any widget is drawn, so the page can draw the panels first and the sidebar
    last: the heatmap reaches the browser before the sidebar's widgets.
    """
    state = st.session_state
    names = [d.name for d in catalog.datasets if catalog.groups(d)]
    _keep_valid("sb_dataset", names, names[0])
    entry = catalog.dataset(state.sb_dataset)
    _prepare_group(catalog, entry, "")
    if len(catalog.groups(entry)) < 2 and not state.get("sb_compare"):
        state.sb_compare = False
    state.setdefault("sb_compare", False)
    if state.sb_compare:
        _prepare_group(catalog, entry, "_b")
    _keep_valid("sb_classes", entry.classes, list(entry.classes[:3]), multi=True)
    trajectories = list(range(entry.n_test(state.sb_classes or None)))
    _keep_valid("sb_traj", trajectories, trajectories[:6], multi=True)
    transitions = entry.transitions
    window = state.get("sb_window")
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or not 0 <= window[0] < window[1] <= transitions
        or transitions < 2
    ):
        state.sb_window = (0, min(16, transitions))
    allowed = [r for r in RESPONSES if entry.conserved or r == "smse"]
    _keep_valid("sb_resp", allowed, allowed, multi=True)
    _keep_valid("sb_est", ESTIMATORS, "subspace")
    damping = state.get("sb_damping")
    if not isinstance(damping, float) or not DAMPING_RANGE[0] <= damping <= DAMPING_RANGE[1]:
        state.sb_damping = DEFAULT_DAMPING
    rtol = state.get("sb_rtol")
    if state.sb_est == "cg" and (  # dropped while cg was not chosen, or out of the range
        not isinstance(rtol, float) or not RTOL_RANGE[0] <= rtol <= RTOL_RANGE[1]
    ):
        group = catalog.group_of(entry, (state.sb_ckpts or [""])[0])
        state.sb_rtol = default_rtol(group.arch if group else "")
    _keep_valid("sb_device", DEVICES, "auto")
    return current_selection_or_none(catalog)


def _group_widgets(catalog: Catalog, entry: DatasetEntry, suffix: str, title: str) -> None:
    groups = catalog.groups(entry)
    labels = [g.label for g in groups]
    group_key, ckpt_key = f"sb_group{suffix}", f"sb_ckpts{suffix}"
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
        "Seeds" if not suffix else "Seeds (second group)",
        list(group.checkpoints),
        key=ckpt_key,
        format_func=_checkpoint_label(catalog, group.checkpoints),
        help="Bands in the panels are median and Q1–Q3 across the selected seeds.",
    )


def draw(catalog: Catalog, *, cuda_available: bool) -> None:
    """Draw the sidebar's widgets on the state ``prepare`` made valid in this run."""
    state = st.session_state
    with st.sidebar:
        st.header("Analysis", anchor=False)
        names = [d.name for d in catalog.datasets if catalog.groups(d)]
        st.selectbox(
            "Dataset",
            names,
            key="sb_dataset",
            format_func=_dataset_label(catalog),
            on_change=_on_dataset,
            args=(catalog,),
            help="Datasets under `<workspace>/datasets` with at least one fitting checkpoint.",
        )
        entry = catalog.dataset(state.sb_dataset)
        _group_widgets(catalog, entry, "", "Model group (architecture)")
        if len(catalog.groups(entry)) > 1 or state.sb_compare:
            st.toggle(
                "Compare with a second model group",
                key="sb_compare",
                help="Side by side on one colour scale, e.g. UNet vs ViT.",
            )
        if state.sb_compare:
            _group_widgets(catalog, entry, "_b", "Second model group")

        st.divider()
        st.multiselect(
            "Classes",
            list(entry.classes),
            key="sb_classes",
            help="Initial-condition classes; one test trajectory of each forms a batch.",
        )
        n_test = entry.n_test(state.sb_classes or None)
        st.multiselect(
            "Test trajectories (one batch each)",
            list(range(n_test)),
            key="sb_traj",
            help=f"{n_test} test trajectories per selected class; the paper uses 6 batches.",
        )
        if entry.transitions >= 2:
            st.slider(
                "Time window (snapshot indices)",
                min_value=0,
                max_value=entry.transitions,
                key="sb_window",
                help="Transitions from the first to the last selected snapshot; N = classes "
                "× steps examples per batch.",
            )
        start, end = state.sb_window
        n_classes = len(state.sb_classes)
        st.caption(
            f"{end - start} steps, t = {entry.times[start]:.3g} … {entry.times[end]:.3g}; "
            f"N = {n_classes} × {end - start} = {n_classes * (end - start)} examples per batch"
        )

        st.divider()
        st.multiselect(
            "Response observables",
            [r for r in RESPONSES if entry.conserved or r == "smse"],
            key="sb_resp",
            format_func=RESPONSE_LABELS.get,
            help="The influence panels use SMSE; mass and energy feed the conservation panel "
            "(compressible Euler only). All are computed in one pass.",
        )
        st.selectbox(
            "Estimator of M⁻¹",
            ESTIMATORS,
            key="sb_est",
            format_func=ESTIMATOR_LABELS.get,
            help="subspace: exact Galerkin solve on the span of the gradients; krylov: the "
            "same in span{G, ηG, η²G, η³G} (≈ 4× the cost, closer to the full solve); cg: "
            "conjugate gradients to a tolerance (the paper's v2); euclidean: M = I.",
        )
        st.number_input(
            "Damping λ",
            min_value=DAMPING_RANGE[0],
            max_value=DAMPING_RANGE[1],
            key="sb_damping",
            format="%.1e",
            step=1e-4,
            help="λ in η + λI (default 1e-4).",
        )
        if state.sb_est == "cg":
            st.number_input(
                "CG relative tolerance",
                min_value=RTOL_RANGE[0],
                max_value=RTOL_RANGE[1],
                key="sb_rtol",
                format="%.1e",
                step=1e-3,
                help="Paper: 1.5e-2 for UNet, 5e-2 for ViT.",
            )
        st.selectbox(
            "Device",
            DEVICES,
            key="sb_device",
            format_func=_device_label(cuda_available),
            help="Where the background job computes; auto uses a GPU when one is visible.",
        )
        _cached_analyses(catalog)
        st.caption(
            f"Workspace {code(catalog.root)} · {plural(len(catalog.datasets), 'dataset')} · "
            f"{plural(len(catalog.checkpoints), 'checkpoint')}"
        )


def _switch(catalog: Catalog, choices: dict[str, Selection]) -> None:
    """Callback: the chosen cached analysis into the widgets (device kept)."""
    chosen = choices.get(st.session_state.get("cached_pick"))
    if chosen is None:
        return
    current = current_selection_or_none(catalog)
    if current is not None:
        chosen = replace(chosen, device=current.device)
    load_state(chosen, catalog)


def _cached_analyses(catalog: Catalog) -> None:
    """The workspace's cached analyses (any visitor's, the CLI's, the demo's), one pick and
    a button away: switching to one draws it from the cache, no computation."""
    choices: dict[str, Selection] = {}
    for key, _stored, request in loaders.cached_analyses(catalog.root):
        selection = from_request(catalog, request)
        if selection is None:
            continue
        group = _group_label(catalog, selection.dataset, selection.checkpoints) or "?"
        label = f"{selection.dataset} · {group} · {describe(selection)} · {key[:8]}"
        choices.setdefault(label, selection)
    with st.expander(f"Cached analyses ({len(choices)})", icon=":material/history:"):
        if not choices:
            st.caption("Nothing is cached in this workspace yet.")
            return
        current = current_selection_or_none(catalog)
        labels = list(choices)
        st.selectbox(
            "Cached analysis",
            labels,
            key="cached_pick",
            help="Every analysis in this workspace's cache, most recently used first.",
        )
        picked = choices.get(st.session_state.get("cached_pick"))
        st.button(
            "Show it" if picked != current else "Shown",
            key="cached_switch",
            icon=":material/swap_horiz:",
            disabled=picked == current,
            on_click=_switch,
            args=(catalog, choices),
            width="stretch",
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _device_label(cuda_available: bool):
    def label(device: str) -> str:
        if device == "auto":
            return f"auto (→ {'cuda' if cuda_available else 'cpu'})"
        if device == "cuda" and not cuda_available:
            return "cuda (no GPU visible)"
        return device

    return label


def _selection_from_state(catalog: Catalog) -> Selection:
    state = st.session_state
    start, end = state.sb_window
    return Selection(
        dataset=state.sb_dataset,
        checkpoints=_in_group_order(catalog, state.sb_dataset, state.sb_ckpts),
        classes=tuple(state.sb_classes),
        trajectories=tuple(state.sb_traj),
        t_start=int(start),
        n_steps=int(end - start),
        responses=tuple(state.sb_resp),
        estimator=state.sb_est,
        damping=float(state.sb_damping),
        rtol=float(state.sb_rtol) if state.sb_est == "cg" else None,
        device=state.sb_device,
        compare=_in_group_order(catalog, state.sb_dataset, state.sb_ckpts_b)
        if state.get("sb_compare")
        else (),
    )


def _in_group_order(catalog: Catalog, dataset: str, names: Sequence[str]) -> tuple[str, ...]:
    if not names:
        return ()
    group = catalog.group_of(dataset, names[0])
    order = group.checkpoints if group else tuple(names)
    return tuple(n for n in order if n in names) + tuple(n for n in names if n not in order)
