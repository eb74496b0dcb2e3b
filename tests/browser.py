"""Debian's chromium (never a downloaded browser) and a dashboard server, for browser tests
and benchmarks alike.

The flags keep a headless root run off the closed network: without the background-networking
flags chromium retries blocked connections many at a time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from coherence.workspace import ENV_VAR
from tests.fixtures import REPO, free_port

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


def start_streamlit(
    workspace: Path,
    log_path: Path,
    app: Path = REPO / "app.py",
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """`streamlit run app` on a free loopback port, as `coherence serve` runs it, once it
    answers its health check: (process, URL). Its output goes to ``log_path``."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(app)]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    command += ["--client.toolbarMode", "viewer", "--server.fileWatcherType", "none"]
    environment = dict(os.environ, **{ENV_VAR: str(workspace)}, **(env or {}))
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_streamlit(process)
                raise RuntimeError(f"streamlit did not start; see {log_path}") from None
            time.sleep(0.25)


def stop_streamlit(process: subprocess.Popen) -> None:
    """Terminate, and kill what has not exited 30 s later."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def streamlit_served(workspace: Path, log_path: Path, **options) -> Iterator[str]:
    """A server's URL for the block (start_streamlit); stopped however the block ends."""
    process, url = start_streamlit(workspace, log_path, **options)
    try:
        yield url
    finally:
        stop_streamlit(process)
