"""One local Ray cluster per test session (2 CPUs, no dashboard), started with `ray start
--head --block` in its own process group and stopped by signalling that group only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures import REPO, free_port


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited ({process.returncode}): {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not open port {port} in {timeout} s: {log.read_text()}")


@contextlib.contextmanager
def local_head(env: dict[str, str] | None = None):
    """HOST:PORT of a fresh local Ray head (2 CPUs) whose workers import this checkout, in
    the environment ``env`` (default: this one), stopped on exit."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    base = dict(os.environ if env is None else env)
    pythonpath = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH")) if p)
    env = {
        **base,
        "PYTHONPATH": pythonpath,
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "COHERENCE_TORCH_THREADS": "1",
    }
    env.pop("COHERENCE_RAY_ADDRESS", None)
    command = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp}",
    ]
    log = temp / "ray-start.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_for_port(port, process, log, timeout=90)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address():
    """HOST:PORT of the session's local Ray cluster; this process disconnects at the end."""
    with local_head() as address:
        try:
            yield address
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the cluster's own process group (ray start --block stops its children),
    then SIGKILL to whatever of that group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
