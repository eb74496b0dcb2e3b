"""What every panel shares: its context, captions from the figure builders, charts and the
download row (figure as HTML with caption and provenance footer, PNG and SVG at publication
resolution where kaleido and a Chromium work, data as CSV with a parameter header, or npz).
File names encode the selection (analysis.names.selection_tag)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from coherence.analysis.exports import (
    figure_html,
    figure_image,
    image_export_problem,
    with_header,
)
from coherence.analysis.figures import (
    SCALES,
    clipped_text,
    heatmap_scale,
    influence_range,
    side_by_side,
)
from coherence.analysis.names import (
    ROLLOUT_KEYS,
    TRAINING_KEYS,
    groups_tag,
    models_tag,
    safe_name,
    selection_tag,
)
from coherence.dashboard import first_paint
from coherence.dashboard.compute import GroupState
from coherence.dashboard.markup import literal
from coherence.dashboard.panel_links import kept_choice
from coherence.dashboard.selection import Selection
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry
from coherence.report import how_to_read as how_to_read  # re-exported for the panels
from coherence.report import provenance
from coherence.report_panels import INTRA
from coherence.wording import TEST_DATA_FINGERPRINT

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
# panels that read no analysis (no window, estimator or λ in their names): what they read
MODEL_PANELS = {
    "training": TRAINING_KEYS,
    "rollout": ROLLOUT_KEYS,
    "fields": ROLLOUT_KEYS,
    "snapshots": ("data",),  # the Overview's trajectories: the dataset alone
}
# provenance rows of an analysis, left out of a model panel's (a training curve's CSV named
# the estimator, λ and cache key as if they mattered to it)
ANALYSIS_ROWS = ("window", "responses", "estimator", "damping λ", "cg rtol", "Krylov depth")
# the provenance rows of the link keys a model panel may not read (MODEL_PANELS' keys)
KEY_ROWS = {"classes": "classes", "traj": "test trajectories (batches)", "epoch": "weights"}
ANALYSIS_GROUP_ROWS = (": cache key", ": computed on", f": {TEST_DATA_FINGERPRINT}")
Bytes = Callable[[], bytes]


@dataclass(frozen=True)
class PanelContext:
    """Everything a panel's render function reads: the selection, the workspace, and each
    checkpoint group's request and (when cached) result. ``stale``: the panels draw the last
    computed selection, not the sidebar's (compute.displayed), so they start no work."""

    root: Path
    catalog: Catalog
    selection: Selection
    dataset: DatasetEntry
    groups: tuple[GroupState, ...]
    stale: bool = False
    choices: tuple[tuple[str, str], ...] = ()  # the panel's own non-default choices
    settings: tuple[tuple[str, str], ...] = ()  # its choices, defaults named, for provenance
    sidebar: Selection | None = None  # the sidebar's selection where it differs (stale)
    instead: str | None = None  # the model group whose default view a sweep tab shows instead

    @property
    def chosen(self) -> Selection:
        """The sidebar's selection: what advice to change a control acts on (stale pages
        show another, the last computed)."""
        return self.sidebar or self.selection

    @property
    def ready(self) -> tuple[GroupState, ...]:
        return tuple(g for g in self.groups if g.result is not None)

    @property
    def compare(self) -> bool:
        return len(self.groups) > 1

    @property
    def lone(self) -> str | None:
        """The one group drawn in compare mode while the other is not computed (its figure
        then names it: an unlabelled map read as group A's), else None."""
        ready = self.ready
        return ready[0].label if self.compare and len(ready) == 1 else None

    @property
    def n_examples(self) -> int:
        return self.selection.n_examples

    @property
    def zrange(self) -> tuple[float, float]:
        """[0, √N]: the one colour range of every standardized-influence heatmap."""
        return influence_range(self.n_examples)

    def with_choices(
        self, defaults: Mapping[str, str] | None = None, **choices: str | None
    ) -> PanelContext:
        """This context with the panel's own choices (class pair, seed, colour scale, …; None
        for a default) in its export names, so two views of one panel never download under
        one name, and in its provenance. A default is left out of the name (short names for
        the common view) but named in the provenance (a CSV header, a PNG's metadata) when
        ``defaults`` says what it is, so a file says which view it holds on its own."""
        defaults = {"colour_scale": DEFAULT_SCALE} | dict(defaults or {})
        chosen = tuple((name, value) for name, value in choices.items() if value is not None)
        settings = tuple(
            (name, value if value is not None else defaults[name])
            for name, value in choices.items()
            if value is not None or name in defaults
        )
        return replace(self, choices=chosen, settings=settings)

    def stem(self, panel: str, group: GroupState | None = None) -> str:
        """A download file name stem that encodes the selection and the panel's choices:
        <dataset>_w<window>_<estimator>_lam<λ>_<hash>_<groups>_<panel>[_<choice>…], where
        <groups> names the view's model groups ('UNet', 'UNet-vs-ViT'; another group's view
        shown instead: that group), or a ``group``'s own file ends in _<group> instead; a panel
        that reads no analysis (``MODEL_PANELS``) names <dataset>_<hash> for the tag. Why the
        groups: two groups' single-mode files differed by a hash alone (a walk-through)."""
        if panel in MODEL_PANELS:
            tag = models_tag(self.selection, MODEL_PANELS[panel])
        else:
            tag = selection_tag(self.selection)
        drawn = self.groups if panel in MODEL_PANELS else (self.ready or self.groups)
        if group or panel == "snapshots":  # a group's own file; the dataset's, no group's
            shown = []
        elif self.instead:  # another group's view: said
            shown = [self.instead]
        else:  # the groups drawn: compare mode with one group computed names that one
            shown = [groups_tag([g.label for g in drawn])]
        choices = (pair_tag(value) if " ← " in value else value for _, value in self.choices)
        parts = [tag, *shown, panel, *choices]
        return safe_name("_".join(parts + ([group.stem] if group else [])))

    def meta(self, panel: str | None = None) -> dict[str, Any]:
        """Parameters and provenance of the view (dataset, checkpoints, estimator, λ, cache
        keys, the panel's choices): the footer of HTML exports, PNG/SVG metadata and the CSV
        header. A panel that reads no analysis (``MODEL_PANELS``) gets no analysis rows."""
        chosen = {name.replace("_", " "): value for name, value in self.settings}
        if self.instead:
            chosen["shown instead of the sidebar's selection"] = f"{self.instead}'s default view"
        meta = provenance(self.selection, self.ready)
        if panel in MODEL_PANELS:
            unread = {row for key, row in KEY_ROWS.items() if key not in MODEL_PANELS[panel]}
            meta = {
                key: value
                for key, value in meta.items()
                if key not in (*ANALYSIS_ROWS, *unread) and not key.endswith(ANALYSIS_GROUP_ROWS)
            }
            if panel != "snapshots":
                for group in self.groups:  # its checkpoints, whether analysed or not
                    meta.setdefault(f"{group.label}: checkpoints", list(group.checkpoints))
            else:  # a dataset's trajectory: no checkpoint, weights, class or batch
                meta = {"dataset": self.selection.dataset}
        return meta | chosen

    def panel_csv(
        self, panel: str, data: Bytes, meta: dict[str, Any] | None = None
    ) -> tuple[str, str, Bytes, str]:
        """A panel's CSV download (parameter header first: ``meta``, default the view's),
        named after the selection."""
        if meta is None:
            return csv_file(
                "Data (CSV)", f"{self.stem(panel)}.csv", self._headed(data, panel=panel)
            )
        return csv_file("Data (CSV)", f"{self.stem(panel)}.csv", lambda: with_header(data(), meta))

    def group_csv(self, panel: str, group: GroupState, data: Bytes) -> tuple[str, str, Bytes, str]:
        """One model group's CSV download: labelled and named by group in compare mode only
        (with one group its name matches the figure's HTML/PNG/SVG beside it)."""
        label = f"Data {literal(group.label)} (CSV)" if self.compare else "Data (CSV)"
        stem = self.stem(panel, group if self.compare else None)
        return csv_file(label, f"{stem}.csv", self._headed(data, group))

    def view_csv(
        self, label: str, stem: str, data: Bytes, holds: str
    ) -> tuple[str, str, Bytes, str]:
        """A CSV of what the view derives from every group (a difference map), under the
        view's parameter header and a line saying what its values are (``holds``)."""
        return csv_file(
            label, f"{stem}.csv", lambda: with_header(data(), self.meta() | {"values of": holds})
        )

    def _headed(
        self, data: Bytes, group: GroupState | None = None, panel: str | None = None
    ) -> Bytes:
        """The CSV under its parameter header (``meta(panel)``); a group's file also says
        whose values it holds (the provenance above it names every group of the view)."""
        values_of = {"values of": group.label} if group is not None else {}
        return lambda: with_header(data(), self.meta(panel) | values_of)

    def scale(self, key: str) -> str:
        """The colour-scale mode (theme.SCALES) chosen for the heatmap panel ``key``, read
        before its selector is drawn (see widget_value)."""
        return widget_value(f"zscale_{key}", list(SCALES))

    def scale_range(self, mode: str, maps: Sequence[Any]) -> tuple[float, float]:
        """One colour range over every group's map for ``mode`` (compare mode shares it)."""
        values = np.concatenate([np.ravel(np.asarray(m, dtype=np.float64)) for m in maps])
        lo, hi, _ = heatmap_scale(mode, values, self.n_examples)
        return lo, hi


DEFAULT_SCALE = next(iter(SCALES))  # the paper's [0, √N]


def scale_choice(scale: str) -> str | None:
    """A colour scale as a panel choice for ``with_choices``: None for the default."""
    return None if scale == DEFAULT_SCALE else scale


STALE_ACTION = (
    "These figures are stale (banner above): compute the sidebar's selection with **Compute** "
    "above first; work started here would be for the old selection."
)


def scale_text(mode: str, zrange: Sequence[float]) -> str:
    """The colour range a heatmap is drawn on, in words, for the scale ``mode`` in use (a
    caption that named [0, √N] under a diverging map misread it)."""
    lo, hi = zrange
    if mode == DEFAULT_SCALE:
        return (
            f"Colour range [0, √N] = [0, {hi:.2f}], the paper's: a perfectly local row reaches √N."
        )
    if mode == "diverging":
        return f"Diverging colour range [−{hi:.3g}, {hi:.3g}]: negative influence shows in blue."
    return f"Colour range from the data: [{lo:.3g}, {hi:.3g}]."


def clipped_note(maps: Sequence[Any], zrange: Sequence[float]) -> str:
    """A warning, or '', for heatmap cells beyond the colour range they are drawn on: the
    paper's fixed [0, √N] drew a map whose cells all lay above it as one flat square, and a
    negative map as black, with no word (a walkthrough at 128², after one epoch)."""
    text = clipped_text(maps, zrange)
    if not text:
        return ""
    return (
        f":orange[{text}] and are drawn at its ends: choose **auto** or **diverging** "
        "under Colour scale to see them."
    )


def note_clipped(maps: Sequence[Any], zrange: Sequence[float]) -> None:
    """``clipped_note`` as a caption under the chart, where there is one."""
    text = clipped_note(maps, zrange)
    if text:
        st.caption(text)


def scale_selector(key: str, container=None) -> None:
    """The colour-scale control of a heatmap panel: the paper's [0, √N], the data's range,
    or a symmetric diverging scale (negative influence in blue)."""
    where = container if container is not None else st
    where.selectbox(
        "Colour scale",
        list(SCALES),
        format_func=SCALES.get,
        key=f"zscale_{key}",
        help="[0, √N]: the paper's fixed range, comparable across runs (√N = a perfectly local "
        "row). Auto: this map's own range. Diverging: symmetric around 0, so negative "
        "influence (a step on p that worsens r) shows in blue.",
    )


def settle_imports(names: Sequence[str] = ("pandas",)) -> None:
    """Wait until a pandas import that another script thread has in progress is complete.

    Why: with Streamlit's fast reruns, a click (another tab) starts the new script run while
    the old one may still be importing pandas (≈ 3 s, for its first st.dataframe); plotly's
    validators peek at sys.modules['pandas'] and fail on the half-initialized module
    ("partially initialized module 'pandas' has no attribute 'Series'"). An import statement
    waits for the other thread's import; nothing happens (and no pandas is loaded) when no
    thread has started one, so the first chart is never delayed.
    """
    for name in names:
        if name in sys.modules:
            importlib.import_module(name)  # blocks on the module's import lock until complete


def need_results(ctx: PanelContext) -> bool:
    """False (with a hint) when no group of the view has a result to draw yet."""
    running = [g.label for g in ctx.groups if g.status is not None and g.status.active]
    if ctx.ready:
        for group in ctx.groups:
            if group.result is None:
                what = "is being computed" if group.label in running else "is not computed yet"
                shown = ", ".join(f"**{literal(g.label)}**" for g in ctx.ready)
                verb = "is" if len(ctx.ready) == 1 else "are"
                st.info(f"**{literal(group.label)}** {what}; only {shown} {verb} shown.")
        return True
    if running:
        st.info(
            "Computing… the figures appear here when the job above finishes.",
            icon=":material/hourglass_top:",
        )
        return False
    if all(g.status is None for g in ctx.groups):  # not computable: no Compute button
        st.info(
            "Nothing to show: this selection cannot be computed as it stands; fix what the "
            "message above names in the sidebar (or pick a cached analysis there).",
            icon=":material/block:",
        )
        return False
    st.info(
        "Nothing to show yet: compute this selection with the **Compute** button above "
        "(or pick a cached one in the sidebar).",
        icon=":material/hourglass_empty:",
    )
    return False


def widget_value(key: str, options: Sequence[str]) -> str:
    """A keyed selectbox's value before the widget is drawn: its state from the last run
    when still among ``options``, else the first option, the one the selectbox itself falls
    back to (and then tells the browser about) when it is drawn with these options.

    Why: a panel can then send its chart before the selectors that configure it (drawn
    above it through a container), so the chart's frontend code is fetched first.
    """
    value = kept_choice(key)  # a closed tab's too (the report reads every tab's scale)
    return value if value in options else options[0]


def chart(fig: go.Figure, key: str, *, clickable: bool = False) -> None:
    """A plotly figure as the builders made it (their theme, not Streamlit's); the camera
    icon of its toolbar saves a PNG in the browser. ``clickable``: a click on a point or
    cell reruns the page with it in ``st.session_state[key].selection`` (see clicked_point)."""
    # a figure that sets its own width (a square map with its colour bar) is drawn at it,
    # or narrower where the column is; the others fill their column
    width = "content" if fig.layout.width else "stretch"
    if clickable:
        st.plotly_chart(
            fig,
            theme=None,
            config=PLOTLY_CONFIG,
            key=key,
            width=width,
            on_select="rerun",
            selection_mode="points",
        )
    else:
        st.plotly_chart(fig, theme=None, config=PLOTLY_CONFIG, key=key, width=width)
    first_paint.after_chart()


def shared_figure(ctx: PanelContext, key: tuple, build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``build()`` makes for the shown results and ``key`` (the panel's own
    options), built once per server and shared by every session: building a plotly figure
    (validation, templates) is most of a page view's script time, and most visitors open
    the same default view. Keyed on the groups' content-addressed cache keys, so another
    result never reuses it; a group without a key builds afresh. Never mutate the figure.
    """
    groups = tuple((g.key, g.label) for g in ctx.ready)
    if any(k is None for k, _ in groups):
        return build()
    return _shared_figure((groups, ctx.compare, ctx.n_examples, *key), build)


@st.cache_resource(show_spinner=False, max_entries=64)
def _shared_figure(key: tuple, _build: Callable[[], go.Figure]) -> go.Figure:
    return _build()


def clicked_point(key: str) -> dict[str, Any] | None:
    """The point last clicked in the clickable chart ``key`` (its x, y, …), or None."""
    state = st.session_state.get(key)
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    return dict(points[0]) if points else None


def pair_figure(
    figures: Sequence[go.Figure],
    labels: Sequence[str],
    *,
    zrange=None,
    title: str = "",
    lone: str | None = None,
) -> go.Figure:
    """One figure, or compare mode's two side by side on one colour scale; ``lone``: the
    group of compare mode's one computed figure, named in its title (``PanelContext.lone``)."""
    if len(figures) == 1:
        if lone:
            shown = figures[0].layout.title.text or title
            figures[0].update_layout(title_text=f"{lone}: {shown}")
        return figures[0]
    return side_by_side(figures[0], figures[1], titles=tuple(labels), zrange=zrange, title=title)


def downloads(
    key: str,
    stem: str,
    *,
    figure: go.Figure | None = None,
    files: Sequence[tuple[str, str, Bytes, str]] = (),
    caption: str = "",
    meta: Mapping[str, Any] | None = None,
    what: str = "Figure",
) -> None:
    """A row of download buttons (wrapping on narrow screens); every payload is built only
    when clicked. The figure comes as HTML (title, ``caption``, ``meta`` footer) and, where
    kaleido finds a Chromium, as PNG and SVG at publication resolution with caption and
    ``meta`` embedded; otherwise one sentence says what PNG/SVG export needs.

    files: (button label, file name, bytes factory, MIME type). what: the buttons' word for
    the figure ("Table" where the figure draws a table).
    """
    buttons: list[tuple[str, str, Bytes, str]] = []
    problem = None
    if figure is not None:
        title = figure.layout.title.text or stem
        info = {"Title": title, "Description": caption, **(meta or {})}
        buttons.append(
            (
                f"{what} (HTML)",
                f"{stem}.html",
                lambda: figure_html(figure, title=title, caption=caption, meta=meta),
                "text/html",
            )
        )
        problem = image_export_problem()
        if problem is None:
            for fmt, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
                buttons.append(
                    (
                        f"{what} ({fmt.upper()})",
                        f"{stem}.{fmt}",
                        lambda fmt=fmt: figure_image(figure, fmt, meta=info),
                        mime,
                    )
                )
    buttons.extend(files)
    if not buttons:
        return
    row = st.container(horizontal=True, gap="small")
    for i, (label, name, data, mime) in enumerate(buttons):
        row.download_button(
            label,
            data=data,
            file_name=name,
            mime=mime,
            key=f"dl_{key}_{i}",
            on_click="ignore",
            icon=":material/download:",
        )
    if problem is not None:
        st.caption(literal(problem))


def csv_file(label: str, name: str, data: Bytes) -> tuple[str, str, Bytes, str]:
    return (label, name, data, "text/csv")


def npz_file(label: str, name: str, data: Bytes) -> tuple[str, str, Bytes, str]:
    return (label, name, data, "application/octet-stream")


def response_title(response: str) -> str:
    return {"smse": "SMSE", "mass": "mass", "energy": "energy"}.get(response, response)


def pair_choice(option: str) -> str:
    """The class pair in the selectbox: short enough for the column beside the map (a cut
    label could show another pair); its label says rows = response, columns = perturbation."""
    return "intra-class mean" if option == INTRA else option


def pair_tag(option: str) -> str:
    """'CE-CRP ← CE-RP' as a file-name part: 'CE-CRP-from-CE-RP' (``stem`` writes a class
    pair chosen in a panel so; its provenance keeps the pair as the page shows it)."""
    response, perturbation = option.split(" ← ")
    return f"{response}-from-{perturbation}"
