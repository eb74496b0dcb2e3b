"""The order of a new page's first paint: the headline chart before the rest of the page.

Why a pause: a fresh page fetches the frontend code of every element it shows (six
connections per host) and parses and runs it on one thread. Sent together, plotly's 4.7 MB
chunk competed with ~40 widget chunks (sidebar, scores) and arrived ≈ 0.6 s instead of
0.14 s after it was asked for. So a session's first run pauses once after its first chart;
the sidebar and the other widgets follow FIRST_CHART_PAUSE_S later.

Why 1.4 s: with 1 s, a CPU profile of the page showed the rest of the page arriving while
plotly was still compiling, so its rendering ran before the chart's draw. A longer pause only
delays the rest of the page. bench/bench_dashboard.py compares pauses side by side
(bench/RESULTS.md). Streamlit tells the server nothing when a chart has been drawn, so the
pause is fixed: a faster browser waits longer than it needs for the sidebar.
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
