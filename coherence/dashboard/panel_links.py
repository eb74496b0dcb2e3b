"""The panels' own choices (class pair, single seed, colour scale, the drill-down's cell, the
Conservation panel's response tab, rollout and field settings, the Validation check's example)
in the URL, so that a shared link shows the same figure.

The URL holds the choices of the open panel only (the other tabs' widgets do not exist in a
run, and their state goes with them; ``recall`` gives a tab back its last choices when it is
opened again, and ``kept_choice`` answers for a closed one). On a session's first run
``restore`` puts the link's values into the widgets' state; a malformed value (not a whole
number where one is due) is refused at once. After the open panel has run, ``settle`` compares
each restored value with what its widget kept: a selectbox resets a value it does not offer (a
seed that is not selected, a class pair of other classes), and that is explained in a warning
naming the parameter and the value used instead, exactly as for the sidebar's keys. Then the
open panel's current choices are written back into the address bar.

A panel with choices of its own lists its widget keys in ``PANEL_PARAMS`` (key → type). A key
in ``UNSET`` is left out of the URL while it holds its "nothing picked" value, and a key in
``REQUIRES`` only goes in with the key it refines (the drill-down's class, trajectory and
channel mean nothing until a cell is picked): the default link stays short.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

# the tabs, in their order (``panels.PANELS`` pairs each with its render): a link's panel=
PANEL_LABELS = (
    "Overview",
    "Two-time influence",
    "Class transfer",
    "Time lag",
    "Input distance",
    "NTK spectrum",
    "Conservation",
    "Rollout",
    "Validation",
    "Training dynamics",
    "Sensitivity",
    "Scores",
)
DEFAULT_PANEL = "Two-time influence"  # the headline figure greets a first visit
PANEL_PARAMS: dict[str, dict[str, type]] = {
    "Overview": {"ov_class": str, "ov_traj": int, "ov_channel": str},
    "Two-time influence": {
        "two_time_pair": str,
        "two_time_seed": str,
        "zscale_two_time": str,
        "two_time_cell": str,
        "two_time_cell_class": str,
        "two_time_cell_batch": int,
        "two_time_cell_channel": str,
    },
    "Class transfer": {"zscale_transfer": str},
    "Time lag": {"lag_y": str},
    "Conservation": {
        "cons_response": str,
        "cons_pair": str,
        "zscale_mass": str,
        "zscale_energy": str,
    },
    "Training dynamics": {"dyn_group": str, "dyn_vs_damping": str, "dyn_view": str},
    "Sensitivity": {"sens_pair": str, "sens_view": str},
    "Rollout": {
        "field_ckpt": str,
        "field_class": str,
        "field_traj": int,
        "field_channel": str,
        "field_h": int,
    },
    "Validation": {"cf_ckpt": str, "cf_traj": int, "cf_p": int, "cf_response": str},
}
UNSET = {
    "two_time_cell": "none",  # the drill-down before a cell is clicked
    "dyn_vs_damping": "none",  # training dynamics at the selection's λ only
    "lag_y": "whole",  # the lag chart's whole curve
}
REQUIRES = {
    "two_time_cell_class": "two_time_cell",
    "two_time_cell_batch": "two_time_cell",
    "two_time_cell_channel": "two_time_cell",
}
# values a link may spell in another case: the Conservation tab by its response's name,
# lower-case as in resp=smse,mass,energy, opens the tab labelled "Energy"
SPELLINGS = {"cons_response": str.capitalize}
_PENDING = "_panel_link_pending"
_KEPT = "_panel_choices_kept"  # each panel's last choices: its widgets' state goes with its tab
_INT = re.compile(r"[0-9]{1,9}")
MAX_TEXT = 200


def _all_params() -> dict[str, type]:
    return {key: kind for params in PANEL_PARAMS.values() for key, kind in params.items()}


def _shown(raw: str) -> str:
    return raw if len(raw) <= 60 else raw[:57] + "…"


def restore() -> list[str]:
    """A session's first run: the link's panel choices into the widgets' state; returns a
    warning per malformed value (its widget then starts at its default)."""
    warnings, pending = [], {}
    for key, kind in _all_params().items():
        raw = st.query_params.get(key)
        if raw is None:
            continue
        if kind is int:
            if not _INT.fullmatch(raw):
                warnings.append(
                    f"URL parameter {key}={_shown(raw)!r}: not a whole number; using the "
                    "panel's default instead"
                )
                continue
            value: Any = int(raw)
        elif len(raw) > MAX_TEXT:
            warnings.append(f"URL parameter {key}={_shown(raw)!r}: too long; using the default")
            continue
        else:
            value = SPELLINGS.get(key, str)(raw)
        st.session_state[key] = value
        pending[key] = value
    st.session_state[_PENDING] = pending
    return warnings


def from_link(key: str) -> Any:
    """The value the link gave ``key`` on this session's first run (None: none, or a later
    run): for a choice that is no widget's (a sweep tab's "own view" button)."""
    return st.session_state.get(_PENDING, {}).get(key)


def recall(panel: str) -> None:
    """Before ``panel`` is drawn: the choices it had when last shown, where its widgets have
    no state (Streamlit drops a widget's state in a run that does not draw it, so a visit
    to another tab reset the colour scale and the drill-down's cell). A link's values,
    restored on the first run, are in the state already and stay."""
    kept = st.session_state.get(_KEPT, {})
    for key in PANEL_PARAMS.get(panel, {}):
        if key not in st.session_state and key in kept:
            st.session_state[key] = kept[key]


def kept_choice(key: str) -> Any:
    """A panel choice as its widget holds it, or as it was when its tab was last shown
    (None: never chosen): what the report asks of the tabs that are not open."""
    if key in st.session_state:
        return st.session_state[key]
    return st.session_state.get(_KEPT, {}).get(key)


def _keep(panel: str) -> None:
    kept = dict(st.session_state.get(_KEPT, {}))
    for key in PANEL_PARAMS.get(panel, {}):
        if key in st.session_state:
            kept[key] = st.session_state[key]
    st.session_state[_KEPT] = kept


def forget(key: str) -> None:
    """Drop a choice the open panel does not offer in this view (the seed in compare mode):
    it is not given back when the view offers it again."""
    st.session_state.get(_KEPT, {}).pop(key, None)
    st.session_state.pop(key, None)


def settle(panel: str | None) -> list[str]:
    """After the open ``panel`` ran: a warning per restored value its widget did not keep,
    then the panel's choices into the URL (and other panels' choices out of it)."""
    pending = st.session_state.pop(_PENDING, {})
    params = PANEL_PARAMS.get(panel or "", {})
    _keep(panel or "")
    warnings = []
    for key, value in pending.items():
        if key not in params:
            continue
        kept = st.session_state.get(key)
        if kept != value:
            instead = "the panel's default" if kept is None else repr(kept)
            warnings.append(
                f"URL parameter {key}={_shown(str(value))!r}: not offered for this "
                f"selection; using {instead} instead"
            )
    written: dict[str, Any] = {}
    for key in _all_params():
        value = st.session_state.get(key) if key in params else None
        if value is not None and key in UNSET and value == UNSET[key]:
            value = None
        if key in REQUIRES and written.get(REQUIRES[key]) is None:
            value = None
        written[key] = value
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)
    return warnings


def keep_in_range(key: str, low: int, high: int, default: int) -> None:
    """A slider's state within [low, high] before it is drawn (Streamlit raises on a value
    outside its range, e.g. from a link made for a longer trajectory)."""
    value = st.session_state.get(key)
    if value is not None and not (isinstance(value, int) and low <= value <= high):
        st.session_state[key] = default
