"""Which pages (browser sessions) of this server show a job now.

Why: a page that moves on from a job it started on its own may cancel it while it waits
(``panels/rollout_jobs``), but not when another page shows the same job, since a job's key is
its content and every page that asks for the same thing joins it. A page shows a waiting or
running job through ``compute.progress_panel``, which polls every second and marks the job
shown, so a mark younger than ``SEEN_SECONDS`` is a page still open: a page closed or
reloaded drops out by itself. One server process's pages only (another server on the same
workspace is not seen: its jobs may be withdrawn under it, and its page offers them again).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import streamlit as st

SEEN_SECONDS = 10.0  # ten polls of the progress panel
PAGE_KEY = "watch_page"  # this page's name among the watchers


@dataclass
class Registry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # key → page → when


@st.cache_resource(show_spinner=False)
def registry() -> Registry:
    """The server's one registry (shared by its sessions)."""
    return Registry()


def page_name() -> str:
    return st.session_state.setdefault(PAGE_KEY, uuid.uuid4().hex)


def mark_shown(keys: Iterable[str]) -> None:
    """This page shows ``keys``' jobs now."""
    page, shared, now = page_name(), registry(), time.monotonic()
    with shared.lock:
        for key in keys:
            shared.seen.setdefault(key, {})[page] = now


def shown_elsewhere(key: str) -> bool:
    """Whether another open page showed ``key``'s job within ``SEEN_SECONDS``; forgets
    this page's mark of it and the marks gone stale."""
    page, shared, now = page_name(), registry(), time.monotonic()
    with shared.lock:
        pages = shared.seen.get(key, {})
        pages.pop(page, None)
        for other in [p for p, when in pages.items() if now - when > SEEN_SECONDS]:
            del pages[other]
        if not pages:
            shared.seen.pop(key, None)
        return bool(pages)
