"""The order of a new page's first paint: the headline chart before the rest of the page.

Why a pause: a fresh page has to fetch the frontend code of every element it shows, over six
connections per host, and parse and run it on one thread. Elements that arrive together are
fetched and parsed together: plotly's 4.7 MB chunk then shared the connections and the parser
with ~40 widget chunks (sidebar, scores) and took ≈ 0.6 s instead of 0.14 s to arrive. So the
first run of a session pauses once after its first chart is sent; the sidebar and the other
widgets follow FIRST_CHART_PAUSE_S later. Page load → first heatmap, side by side on 2 cores
(bench_dashboard's workspace, an earlier build): 0.1 s → 3.7 s, 0.5 s → 3.0 s, 0.8 s →
2.8–3.1 s, 1.2 s → 2.3–2.9 s.

Why 1.4 s: a CPU profile of the page with a 1 s pause showed the rest of the page arriving
while plotly was still compiling, and its rendering ran before the chart's draw. Side by side
on the demo workspace (median of 9, interleaved, Streamlit 1.67): 1.0 s → 2.05 s, 1.2 s →
1.88 s, 1.4 s → 1.84 s, 1.6 s → 1.85 s; the whole first view (scores, sidebar) at 2.38 s for
1.0 s and 2.63 s for 1.4 s. bench_dashboard's pause rows repeat this on every run. A fixed
pause is a compromise: Streamlit tells the server nothing when a chart has been drawn, so a
faster browser waits longer than it needs for the sidebar.
"""

from __future__ import annotations

import math
import os
import time

import streamlit as st

FIRST_CHART_PAUSE_S = 1.4
FIRST_CHART_PAUSE_ENV = "COHERENCE_FIRST_CHART_PAUSE"  # seconds; the tests set 0
_FIRST_CHART_SENT = "_first_chart_sent"


def after_chart() -> None:
    """Call after sending a chart: pauses once per session, after its first chart (the first
    run that draws one: a fresh page load, or the rerun that shows a first result). Later
    charts and runs never pause. AppTest has no browser to wait for: the tests set 0."""
    if st.session_state.get(_FIRST_CHART_SENT):
        return
    st.session_state[_FIRST_CHART_SENT] = True
    time.sleep(pause_seconds())


def pause_seconds() -> float:
    """FIRST_CHART_PAUSE_S, or ``COHERENCE_FIRST_CHART_PAUSE`` clamped to 0..5 s (a bad value
    is ignored)."""
    try:
        value = float(os.environ.get(FIRST_CHART_PAUSE_ENV, FIRST_CHART_PAUSE_S))
    except ValueError:
        return FIRST_CHART_PAUSE_S
    return min(max(value, 0.0), 5.0) if math.isfinite(value) else FIRST_CHART_PAUSE_S
