"""The dashboard ships inside the package: a wheel built from the checkout, installed into a
fresh virtual environment and run from outside the checkout, serves the dashboard; and
stopping `coherence serve` leaves nothing listening on its port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.fixtures import REPO, free_port


def wait_healthy(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    url = f"http://127.0.0.1:{port}/_stcore/health"
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited before answering its health check"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no health answer on port {port} within {seconds} s")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("coherence_explorer-*.whl")
    return path


def test_the_wheel_holds_the_dashboard_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "coherence/dashboard/app.py" in names
    assert "app.py" not in names  # the root shim stays in the checkout


@pytest.mark.slow
def test_an_installed_wheel_serves_the_dashboard_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies (torch, streamlit, …) come from this environment's site-packages, added
    # as a plain path: its .pth files (the editable install of the checkout) are not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import coherence; print(coherence.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=elsewhere,
    ).stdout
    assert str(venv) in where and str(REPO) not in where

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(venv / "bin" / "coherence"), "serve", "--workspace", str(tmp_path / "ws")]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(port, process)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 10
    while not port_is_free(port):  # nothing may stay behind listening
        assert time.monotonic() < deadline, f"port {port} still answers after serve stopped"
        time.sleep(0.2)
