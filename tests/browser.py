"""Debian's chromium for browser tests and benchmarks (never a downloaded browser).

The flags keep a headless root run off the closed network: without the background-networking
flags chromium retries blocked connections many at a time.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
