"""What every panel shares: its context, captions from the figure builders, charts and the
download row (figure as HTML, PNG where kaleido works, data as CSV or npz)."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from coherence.analysis.exports import figure_html, figure_png
from coherence.analysis.figures import influence_range, side_by_side
from coherence.dashboard import loaders
from coherence.dashboard.compute import GroupState
from coherence.dashboard.markup import literal
from coherence.dashboard.selection import Selection
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
FIRST_CHART_PAUSE_S = 0.1  # see _first_chart_pause
_FIRST_CHART_SENT = "_first_chart_sent"
Bytes = Callable[[], bytes]


@dataclass(frozen=True)
class PanelContext:
    """Everything a panel's render function reads: the selection, the workspace, and each
    checkpoint group's request and (when cached) result."""

    root: Path
    catalog: Catalog
    selection: Selection
    dataset: DatasetEntry
    groups: tuple[GroupState, ...]

    @property
    def ready(self) -> tuple[GroupState, ...]:
        return tuple(g for g in self.groups if g.result is not None)

    @property
    def compare(self) -> bool:
        return len(self.groups) > 1

    @property
    def n_examples(self) -> int:
        return self.selection.n_examples

    @property
    def zrange(self) -> tuple[float, float]:
        """[0, √N]: the one colour range of every standardized-influence heatmap."""
        return influence_range(self.n_examples)

    def stem(self, panel: str, group: GroupState | None = None) -> str:
        """A download file name stem: <dataset>_<panel>[_<group>]."""
        parts = [self.selection.dataset, panel] + ([group.stem] if group else [])
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts))

    def panel_csv(self, panel: str, data: Bytes) -> tuple[str, str, Bytes, str]:
        """A panel's CSV download, named after the dataset and the panel."""
        return csv_file("Data (CSV)", f"{self.stem(panel)}.csv", data)

    def group_csv(self, panel: str, group: GroupState, data: Bytes) -> tuple[str, str, Bytes, str]:
        """One model group's CSV download: labelled by group in compare mode only."""
        label = f"Data {literal(group.label)} (CSV)" if self.compare else "Data (CSV)"
        return csv_file(label, f"{self.stem(panel, group)}.csv", data)


def how_to_read(builder: Callable) -> str:
    """The first paragraph of a figure builder's docstring, without its 'Read:' prefix:
    the builders document how to read their figure, the panels show it as the caption."""
    doc = inspect.getdoc(builder) or ""
    first = doc.split("\n\n", 1)[0]
    text = " ".join(first.split()).removeprefix("Read:").strip()
    if len(text) > 1 and text[1].islower():  # a word, not a symbol such as "x = …"
        text = text[:1].upper() + text[1:]
    return text


def need_results(ctx: PanelContext) -> bool:
    """False (with a hint) when no group of the view has a result to draw yet."""
    running = [g.label for g in ctx.groups if g.status is not None and g.status.active]
    if ctx.ready:
        for group in ctx.groups:
            if group.result is None:
                what = "is being computed" if group.label in running else "is not computed yet"
                st.info(f"**{literal(group.label)}** {what}; only the others are shown.")
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
    value = st.session_state.get(key)
    return value if value in options else options[0]


def chart(fig: go.Figure, key: str) -> None:
    """A plotly figure as the builders made it (their theme, not Streamlit's); the camera
    icon of its toolbar saves a PNG in the browser."""
    st.plotly_chart(fig, theme=None, config=PLOTLY_CONFIG, key=key)
    _first_chart_pause()


def _first_chart_pause() -> None:
    """Once per session, pause briefly after the first chart is sent (on the first run that
    draws one: a fresh page load, or the rerun that shows a first result).

    Why: a fresh page still has to fetch the frontend code of every element it shows, over
    six connections per host. Elements that arrive within the same few milliseconds are
    rendered together and their code is fetched together, so plotly's 4.7 MB chunk queued
    behind ~40 small widget chunks and the first heatmap appeared ≈ 0.2 s later (measured in
    bench/bench_dashboard.py). Pausing lets the browser start on the chart's code first; the
    sidebar and the remaining widgets follow FIRST_CHART_PAUSE_S later. Later charts and runs
    never pause.
    """
    if st.session_state.get(_FIRST_CHART_SENT):
        return
    st.session_state[_FIRST_CHART_SENT] = True
    time.sleep(FIRST_CHART_PAUSE_S)


def pair_figure(
    figures: Sequence[go.Figure], labels: Sequence[str], *, zrange=None, title: str = ""
) -> go.Figure:
    """One figure, or compare mode's two side by side on one colour scale."""
    if len(figures) == 1:
        return figures[0]
    return side_by_side(figures[0], figures[1], titles=tuple(labels), zrange=zrange, title=title)


def downloads(
    key: str,
    stem: str,
    *,
    figure: go.Figure | None = None,
    files: Sequence[tuple[str, str, Bytes, str]] = (),
) -> None:
    """A row of download buttons; every payload is built only when clicked.

    files: (button label, file name, bytes factory, MIME type).
    """
    buttons: list[tuple[str, str, Bytes, str]] = []
    if figure is not None:
        buttons.append(("Figure (HTML)", f"{stem}.html", lambda: figure_html(figure), "text/html"))
        if loaders.png_available():
            buttons.append(
                ("Figure (PNG)", f"{stem}.png", lambda: figure_png(figure) or b"", "image/png")
            )
    buttons.extend(files)
    if not buttons:
        return
    columns = st.columns(len(buttons) + max(0, 4 - len(buttons)))
    for i, (column, (label, name, data, mime)) in enumerate(zip(columns, buttons, strict=False)):
        column.download_button(
            label,
            data=data,
            file_name=name,
            mime=mime,
            key=f"dl_{key}_{i}",
            on_click="ignore",
            icon=":material/download:",
            width="stretch",
        )


def csv_file(label: str, name: str, data: Bytes) -> tuple[str, str, Bytes, str]:
    return (label, name, data, "text/csv")


def npz_file(label: str, name: str, data: Bytes) -> tuple[str, str, Bytes, str]:
    return (label, name, data, "application/octet-stream")


def response_title(response: str) -> str:
    return {"smse": "SMSE", "mass": "mass", "energy": "energy"}.get(response, response)
