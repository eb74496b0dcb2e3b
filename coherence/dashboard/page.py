"""The router: page setup, empty states, sidebar → selection → jobs → tabs of panels.

Layout and state only; the work lives in ``selection`` (what to compute), ``compute`` (jobs)
and ``panels`` (figures from the analysis package's pure builders). ``run()`` is what the
repository's ``app.py`` calls, and what the AppTest tests drive.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import streamlit as st
import torch

from coherence.dashboard import compute, loaders, panel_links, sidebar
from coherence.dashboard.checks import problems
from coherence.dashboard.compute import GroupState
from coherence.dashboard.control_rows import VANISHED
from coherence.dashboard.controls import QUERY_KEYS
from coherence.dashboard.markup import code, literal
from coherence.dashboard.panels import DEFAULT_PANEL, PANELS, PanelContext, headline, rollout_jobs
from coherence.dashboard.selection import Selection
from coherence.dashboard.workspace_scan import Catalog
from coherence.errors import CoherenceError
from coherence.report import ignored_keys, unknown_panel, unknown_params
from coherence.wording import TEST_DATA_FINGERPRINT, demo_command, plural, shell_command
from coherence.workspace import ENV_VAR, checked_workspace

TITLE = "Coherence Explorer"
TAGLINE = (
    "Influence diagnostics for autoregressive PDE surrogates: did the model learn the "
    "dynamics, or memorize its training data one time step at a time?"
)
# Streamlit's wide layout leaves 6rem above the title and 5rem either side: on a 1024×768
# laptop that pushed the headline heatmap 45 px below the fold. Tighter margins (the top one
# still clears the toolbar) and a smaller title keep the verdict, the scores in one row and
# the heatmap's top in view. The panels' tab strip wraps onto a second row where the page is
# narrow (12 tabs need ≈ 1100 px): scrolled, a link's open tab (Sensitivity at 1024 px) was
# off-screen behind an arrow, and nothing showed which panel was open; its rows are lower there,
# so the heatmap's top stays above a 768 px fold.
# Accessibility (WCAG AA): captions at 0.85 opacity (Streamlit's 0.6 gave 3.9:1, its orange
# notes 2.8:1; now ≥ 4.5:1), a visible focus ring on toggles (they showed none), and the
# sidebar's collapse button shown while the sidebar holds keyboard focus (hidden until hovered,
# a keyboard user at 200 % zoom could not close the sidebar that covered the page).
COMPACT_STYLE = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 4rem; }
[data-testid="stTabs"].st-key-panel [role="tablist"] { flex-wrap: wrap; row-gap: 0.25rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 2.1rem; padding: 0.25rem 0; }
[data-testid="stCaptionContainer"] { opacity: 0.85; }
[data-testid="stCheckbox"] label:has(input:focus-visible) {
  outline: 2px solid #1F77B4; outline-offset: 2px; border-radius: 0.25rem;
}
[data-testid="stSidebar"]:focus-within [data-testid="stSidebarCollapseButton"] {
  visibility: visible;
}
@media (max-width: 1280px) {
  [data-testid="stMainBlockContainer"] { padding-left: 2rem; padding-right: 2rem; }
  [data-testid="stTabs"].st-key-panel [role="tab"] { height: 2rem; }
  [data-testid="stTabs"].st-key-panel [role="tablist"] { row-gap: 0; }
}
</style>"""


# the first run's warnings about the link, kept until the visitor moves on
# (_retire_link_notes): a panel that starts a job on its first visit (Rollout) reruns the
# page at once, and the job's end reruns it again; the warnings went with the first run,
# never seen, while the link was already repaired
LINK_NOTES = "_link_notes"
_LINK_NOTES_AT = "_link_notes_at"  # the address the notes stand beside
_startup_heap = threading.Event()


def run() -> None:
    try:
        _run()
    finally:
        if not _startup_heap.is_set():
            _freeze_startup_heap()


def _freeze_startup_heap() -> None:
    """Keep Streamlit's collection after every script run (runner.postScriptGC) cheap.

    With torch, numpy and plotly loaded a full collection walks about 250 000 objects and
    holds the GIL for 0.14 s: per page view, a third of the server's CPU, and under ten
    visitors at once the other sessions wait for it. What the first run leaves alive
    (modules, classes, shared caches) lives as long as the server, so it moves to the
    permanent generation once (``gc.freeze``); later collections scan only newer objects,
    and reference counting still frees frozen objects as before.
    """
    _startup_heap.set()
    gc.collect()
    gc.freeze()


def _run() -> None:
    st.set_page_config(
        page_title=TITLE, page_icon="🌀", layout="wide", initial_sidebar_state="auto"
    )
    st.html(COMPACT_STYLE)  # styles only: Streamlit gives it no space on the page
    header = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    header.title(TITLE, anchor=False, width="content")
    report_slot = header.container(width="content", horizontal_alignment="right")
    st.caption(TAGLINE)
    try:  # `streamlit run` with the variable set to a checkpoint made a cache/ inside it
        root = checked_workspace()
    except CoherenceError as error:
        st.error(literal(error), icon=":material/folder_off:")
        return
    catalog = loaders.catalog(root)
    if not _offers_analysis(catalog):
        empty_state(catalog)
        return
    try:
        loaders.job_runner(str(root))  # refuses a cache directory another user can write
    except CoherenceError as error:
        st.error(literal(error), icon=":material/lock:")
        return
    cuda = torch.cuda.is_available()
    if "sb_dataset" not in st.session_state:  # a new session: the URL decides
        warnings = (
            unknown_params(st.query_params.to_dict())  # a misspelled key: not silently ignored
            + unknown_panel(st.query_params.to_dict())
            + sidebar.init_from_url(catalog, cuda_available=cuda)
            + panel_links.restore()
        )
        st.session_state[LINK_NOTES] = warnings
        for key in ignored_keys(st.query_params.to_dict()):  # said ignored: so not carried on
            del st.query_params[key]
    for warning in st.session_state.get(LINK_NOTES, ()):
        st.warning(literal(warning), icon=":material/link_off:")
    selection = sidebar.prepare(catalog)
    if gone := st.session_state.pop(VANISHED, None):
        names = ", ".join(dict.fromkeys(gone))
        st.warning(
            f"Checkpoint(s) {literal(names)} left the workspace (moved, deleted, or now "
            "refused: see the skipped entries at the foot of the sidebar); the selection goes "
            "on without them.",
            icon=":material/link_off:",
        )
    if selection is None:
        st.error("The sidebar holds an incomplete selection; pick a dataset and a model.")
    else:
        sidebar.sync_url(selection)
        _main(root, catalog, selection, cuda, report_slot)
    sidebar.draw(catalog, cuda_available=cuda)  # last: the heatmap reaches the browser first
    with st.sidebar:
        _skipped_entries(catalog)
    _retire_link_notes()


def _retire_link_notes() -> None:
    """At the end of a run: the link's notes stay while the address is the one the first run
    to reach its end left (the reruns the page makes itself, as a job starts or ends), and
    go once it changes (the visitor picked something: a tab or a selection)."""
    if LINK_NOTES not in st.session_state:
        return
    # the selection's keys and the open tab: a tab's own choices enter the address once its
    # figure is drawn (the job's end), which is no step of the visitor's
    keys = (*QUERY_KEYS, "panel")
    now = {key: value for key, value in st.query_params.to_dict().items() if key in keys}
    if st.session_state.setdefault(_LINK_NOTES_AT, now) != now:
        del st.session_state[LINK_NOTES], st.session_state[_LINK_NOTES_AT]


def _main(root: Path, catalog: Catalog, selection: Selection, cuda: bool, report_slot) -> None:
    """Status and compute bar, headline scores, the tabs of panels, the analysis files;
    the report button goes to ``report_slot`` beside the title."""
    issues = problems(selection, catalog, cuda_available=cuda)
    if issues:
        labels = compute.group_labels(catalog, selection)
        states = tuple(
            GroupState(label, names) for label, names in zip(labels, selection.groups, strict=True)
        )
    else:
        states = compute.group_states(root, catalog, selection)
    st.caption(f"**{literal(selection.dataset)}** · {literal(sidebar.describe(selection))}")
    entry = catalog.dataset(selection.dataset)
    for problem in entry.problems if entry is not None else ():  # training refuses them
        st.warning(literal(problem), icon=":material/warning:")
    compute.render_status(root, states, issues)
    shown, states, stale = compute.displayed(root, catalog, selection, states, issues)
    if stale:  # the last computed figures stay until this selection is computed
        st.warning(stale, icon=":material/history:")
    ctx = PanelContext(
        root,
        catalog,
        shown,
        catalog.dataset(shown.dataset),
        states,
        stale=stale is not None,
        sidebar=selection if stale else None,
    )
    rollout_jobs.leave_rollouts(ctx)  # whatever tab is open: the selection may have moved on
    notes = st.container()  # warnings about the link's panel choices
    scores_row = st.container()  # filled after the open tab: its chart is sent first
    tabs = st.tabs(
        [label for label, _ in PANELS], key="panel", bind="query-params", default=DEFAULT_PANEL
    )
    opened = None
    for tab, (label, render) in zip(tabs, PANELS, strict=True):
        if tab.open is False:  # lazy: only the open tab runs
            continue
        opened = label
        panel_links.recall(label)
        with tab:
            _guarded(render, ctx)
    for warning in panel_links.settle(opened):
        notes.warning(literal(warning), icon=":material/link_off:")
    if ctx.ready:
        with scores_row:
            _guarded(lambda c: headline(c, report_slot), ctx)
    _details(ctx)


def _guarded(render, ctx: PanelContext) -> None:
    """A user-facing error (bad file, impossible request) as one sentence, not a traceback."""
    try:
        render(ctx)
    except CoherenceError as error:
        st.error(literal(error), icon=":material/error:")


def _offers_analysis(catalog: Catalog) -> bool:
    return any(catalog.groups(d) and d.classes for d in catalog.datasets)


def empty_state(catalog: Catalog) -> None:
    """Say what is missing and the one command that fixes it."""
    root = catalog.root
    if not catalog.exists:
        st.info(
            f"### No workspace yet\nThere is no workspace at {code(root)}.\n\n"
            "Build the demo workspace (Euler data, UNet and ViT for three seeds, and the "
            f"default analysis) with\n\n```\n{demo_command(root)}\n```\n\nor `make run`, "
            f"which also serves this dashboard. To use another directory, set `{ENV_VAR}`.",
            icon=":material/folder_off:",
        )
    elif not catalog.datasets and (skipped := _skipped(catalog, "dataset ")):
        st.error(  # a truncated file said "no datasets" and advised building a new demo
            "### No dataset can be read\nEvery dataset under "
            f"{code(root / 'datasets')} was skipped; each line names the file and its fix:"
            f"\n\n{skipped}",
            icon=":material/dataset:",
        )
        return
    elif not catalog.datasets:
        simulate = shell_command("coherence", "simulate", "--out", root / "datasets" / "my_data")
        st.info(
            f"### The workspace has no datasets\n{code(root)} holds no dataset under "
            f"`datasets/`.\n\nRun {code(demo_command(root))} to build the demo workspace, or "
            f"simulate one with\n\n{code(simulate)}",
            icon=":material/dataset:",
        )
    else:
        names = literal(", ".join(d.name for d in catalog.datasets))
        first = catalog.datasets[0].name
        train = shell_command(
            "coherence", "train", "--data", root / "datasets" / first,
            "--out", root / "checkpoints" / "unet_s42",
        )  # fmt: skip
        st.info(
            f"### No model fits the datasets yet\nDatasets: {names}. No checkpoint under "
            f"{code(root / 'checkpoints')} was trained on data of their family, channels and "
            f"grid.\n\nTrain one with\n\n{code(train)}\n\nor run {code(demo_command(root))}."
            + (
                f"\n\nThese checkpoints were skipped:\n\n{skipped}"
                if (skipped := _skipped(catalog, "checkpoint "))
                else ""
            ),
            icon=":material/model_training:",
        )
    _skipped_entries(catalog)


def _skipped(catalog: Catalog, kind: str) -> str:
    """The skipped entries of one ``kind`` ('dataset ', 'checkpoint ') as a markdown list:
    where they are why the page is empty, they lead it, not a folded expander."""
    return "\n".join(f"- {literal(p)}" for p in catalog.problems if p.startswith(kind))


def _skipped_entries(catalog: Catalog) -> None:
    if catalog.problems:
        with st.expander(
            f"{plural(len(catalog.problems), 'workspace entry', 'workspace entries')} skipped",
            icon="⚠️",
        ):
            st.markdown("\n".join(f"- {literal(problem)}" for problem in catalog.problems))


def _details(ctx: PanelContext) -> None:
    """The whole analysis as files, and where every number came from."""
    if not ctx.ready:
        return
    details = st.expander(
        "Analysis files and provenance",
        icon=":material/description:",
        key="details",
        on_change="rerun",  # lazy: drawn only when opened
    )
    if details.open is False:
        return
    with details:
        for i, group in enumerate(ctx.ready):
            stem = ctx.stem("analysis", group)
            result = group.result
            st.markdown(f"**{literal(group.label)}** · cache key {code(group.key)}")
            st.download_button(
                "Whole analysis (npz + JSON provenance, zip)",
                data=lambda r=result, s=stem: loaders.analysis_zip(r, s),
                file_name=f"{stem}.zip",
                mime="application/zip",
                key=f"dl_analysis_{i}",
                on_click="ignore",
                icon=":material/download:",
            )
            seconds = result.provenance.get("seconds")
            fingerprint = str(result.provenance.get("dataset_fingerprint", "?"))[:16]
            st.caption(
                f"Computed on {literal(result.provenance.get('device', '?'))}"
                + (f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
                + f"; {TEST_DATA_FINGERPRINT} "
                f"{code(fingerprint)}"
            )
            st.json(
                {
                    "request": result.request.to_dict(),
                    "provenance": result.provenance,
                    "diagnostics (checkpoint × batch)": result.diagnostics,
                },
                expanded=False,
            )
