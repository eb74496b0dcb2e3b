"""Ctrl-C stops `coherence simulate` promptly: the solver's worker threads see it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("trajectories", [4, 32])  # in this process; two worker processes
def test_ctrl_c_stops_simulate_at_once_and_leaves_no_dataset(tmp_path, trajectories):
    """SIGINT during the Euler solve waited for the whole run (43 s at 128², for ever with
    a long --t-end: the pool's exit waited for blocks that never looked at the stop flag),
    and a second Ctrl-C aborted the interpreter. One Ctrl-C now ends it in seconds with the
    interrupted line and status 130, and the unfinished dataset is not committed. With
    worker processes (32 trajectories: two chunks) it waited for their chunks (33 s in a
    walk-through): they are ended now."""
    out = tmp_path / "sim"
    command = [sys.executable, "-m", "coherence.cli", "simulate", "--out", str(out)]
    # minutes of solving: the longest --t-end at a fine grid (1e6 at 64² is refused now)
    command += ["--trajectories", str(trajectories), "--resolution", "256", "--snapshots", "3"]
    command += ["--t-end", "10", "--classes", "CE-RP"]
    env = {**os.environ, "COHERENCE_TORCH_THREADS": "2", "COLUMNS": "300"}
    env["PYTHONFAULTHANDLER"] = "1"  # a hang below is shown: SIGABRT dumps every thread
    process = subprocess.Popen(  # Ctrl-C as a terminal gives it: a shell's `cmd &` (a CI
        command,  # runner's) leaves SIGINT ignored, and Python then keeps it ignored
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120  # imports, then the staging folder, then the solve
        while not list(tmp_path.glob(".sim.staging-*")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        time.sleep(3)  # the solve under way
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, err = process.communicate(timeout=30)
            pytest.fail(f"no exit 60 s after Ctrl-C; its threads:\n{err[-6000:]}")
    finally:
        process.kill()
    assert time.monotonic() - sent < 15, err
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "terminate called" not in err
    assert "nothing was written" in " ".join(err.split())  # not "checkpoint epochs, …"
    assert not (out / "data" / "train" / "CE-RP.hdf5").exists()
    assert not list(tmp_path.glob(".sim.staging-*"))  # the unfinished files are gone
