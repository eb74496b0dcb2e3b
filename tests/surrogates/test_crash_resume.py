"""kill -9 of a real `coherence train` at random moments, inside checkpoint saves too: the
same command resumed until it finishes must give weights bit-for-bit equal to an
uninterrupted run (issue 13: a kill between the weights and history.json used to make the
resume train an epoch twice).

The save window is widened with the test-only COHERENCE_TEST_SAVE_DELAY (a sleep after each
file a save writes or moves), and a kill is aimed at a phase by watching the checkpoint
directory: ``staging`` (files being written, before the commit rename), ``commit`` (files
being moved into place after it) or ``random`` (any moment after start-up).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import fileset, snapshots
from coherence.surrogates.training import TrainingArgs, train
from tests.fixtures import REPO, torch_threads

EPOCHS = 4
ARGS = dict(seed=3, epochs=EPOCHS, batch_size=8, device="cpu")  # demo UNet, 4 transitions


def command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "coherence.cli", "train", "--data", str(data), "--out", str(out),
        "--seed", "3", "--epochs", str(EPOCHS), "--batch-size", "8", "--device", "cpu",
    ]  # fmt: skip


def environment(delay: float) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        COHERENCE_TORCH_THREADS="1",  # the slot's threads, else the load's: the same bits
        COHERENCE_TEST_SAVE_DELAY=str(delay),
        COLUMNS="200",
    )
    return env


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> bytes:
    """Weights of the uninterrupted run, trained in this process on one thread like the
    subprocesses (a CLI run gives the same bytes: same arguments, same code)."""
    out = tmp_path_factory.mktemp("reference") / "ckpt"
    with torch_threads(1):
        train(tiny_dataset, out, TrainingArgs(**ARGS))
    return (out / ckpt.WEIGHTS_FILE).read_bytes()


def _new_staging_with_files(out: Path, stale: set[str]) -> bool:
    return any(
        p.name not in stale and any(p.iterdir())
        for p in out.glob(fileset.STAGING_PREFIX + "*")
    )  # fmt: skip


def _wait(proc: subprocess.Popen, ready, timeout: float = 240.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            if ready():
                return True
        except OSError:  # a directory vanished between listing and reading: look again
            pass
        time.sleep(0.005)
    return False


def run_killed(data: Path, out: Path, phase: str, rng: random.Random, delay: float) -> bool:
    """Start the command and kill -9 it in ``phase``; False if it finished first."""
    proc = subprocess.Popen(
        command(data, out),
        env=environment(delay),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stale = {p.name for p in out.glob(".*")} if out.is_dir() else set()
    commit = out / fileset.COMMIT_DIR
    try:
        if phase == "staging":
            hit = _wait(proc, lambda: _new_staging_with_files(out, stale))
            pause = rng.uniform(0, 2.5 * delay)
        elif phase == "commit":
            # a commit left by the previous kill is completed first: wait for a new one
            hit = _wait(proc, lambda: not commit.is_dir()) and _wait(proc, commit.is_dir)
            pause = rng.uniform(0, 5 * delay)
        else:
            hit = _wait(proc, lambda: out.is_dir())
            pause = rng.uniform(0, 6.0)
        if hit:
            time.sleep(pause)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def campaign(
    data: Path, out: Path, phases: list[str], seed: int, delay: float, reference: bytes
) -> int:
    """Kill the command once per phase, resuming it with the next phase's kill; a run that
    finished is checked against ``reference`` and restarted. Returns the kills landed."""
    rng = random.Random(seed)
    kills = 0
    for phase in phases:
        if (out / ckpt.MANIFEST_FILE).is_file() and len(ckpt.read_history(out)) == EPOCHS:
            # read as every reader does (fileset): a kill inside the last save leaves that
            # commit in .commit (the history read already comes from there), and the next
            # writer completes it; the file at the top is then still the previous epoch's
            assert fileset.read_bytes(out, ckpt.WEIGHTS_FILE) == reference
            shutil.rmtree(out)  # finished: a new run, so every kill has work to hit
        kills += run_killed(data, out, phase, rng, delay)
    done = subprocess.run(
        command(data, out), env=environment(0.0), capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == reference
    return kills


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_kill_inside_saves_then_resume_is_bit_exact(tiny_dataset, reference, tmp_path):
    out = tmp_path / "ckpt"
    kills = campaign(tiny_dataset, out, ["staging", "commit"], 0, 0.15, reference)
    assert kills == 2
    assert [h["epoch"] for h in ckpt.read_history(out)] == list(range(1, EPOCHS + 1))
    assert not list(out.glob(".*"))  # no staging or commit directory left behind
    ckpt.verify(out)
    # training snapshots (powers of two plus the last): complete, none half-written
    assert list(snapshots.list_snapshots(out)) == [1, 2, 4]
    assert not list((out / snapshots.EPOCHS_DIR).glob(".*"))
    assert (snapshots.snapshot_dir(out, EPOCHS) / ckpt.WEIGHTS_FILE).read_bytes() == reference
    for path in snapshots.list_snapshots(out).values():
        ckpt.verify(path)


@pytest.mark.slow
def test_twenty_random_kills_then_resume_is_bit_exact(tiny_dataset, reference, tmp_path):
    rng = random.Random(13)
    phases = [rng.choice(["staging", "commit", "random"]) for _ in range(24)]
    out = tmp_path / "ckpt"
    kills = campaign(tiny_dataset, out, phases, 13, 0.05, reference)
    assert kills >= 20
    ckpt.verify(out)
