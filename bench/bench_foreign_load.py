"""Training beside another program: a fixed thread count against the load-aware one.

Compute slots keep this project's jobs apart; they cannot see a user's own script or another
user's job. Before, a job took its share of the cores whatever else ran (2 threads on 2
cores); now ``slots.threads_per_job`` leaves out the cores other processes keep busy when the
job starts. This measures what that buys: ``coherence train`` of the demo UNet (3 epochs, a
fresh checkpoint each time) alone, then beside one pure-Python busy loop (another program on
one core) with COHERENCE_TORCH_THREADS=<cores> (the fixed count of before) and with the
variable unset (the load-aware count). Figure: the median seconds of epochs 2–3 (the first
warms up). Target: load-aware ≤ 0.5 × fixed beside the busy loop. Needs a quiet machine and
the demo dataset (``coherence demo``).

Run: python -m bench.bench_foreign_load [--workspace W] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import write_result
from coherence.cache.slots import THREADS_ENV, machine_cores
from coherence.workspace import workspace_root

TARGET_RATIO = 0.5
SPINNER = "print('spinning', flush=True)\nwhile True:\n    pass\n"


def train_epochs(data: Path, out: Path, epochs: int, threads: str | None) -> list[float]:
    """Seconds of each epoch of one ``coherence train`` run (its history file)."""
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    if threads is not None:
        env[THREADS_ENV] = threads
    command = [sys.executable, "-m", "coherence.cli", "train", "--arch", "unet"]
    command += ["--data", str(data)]
    command += ["--out", str(out), "--epochs", str(epochs), "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"coherence train failed: {done.stderr[-2000:]}")
    history = json.loads((out / "history.json").read_text())
    return [float(entry["seconds"]) for entry in history]


def measure(data: Path, root: Path, name: str, epochs: int, threads: str | None, busy: bool):
    spinner = None
    if busy:
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE)
        assert spinner.stdout is not None and spinner.stdout.readline().strip() == b"spinning"
    try:
        seconds = train_epochs(data, root / name, epochs, threads)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {
        "setting": name,
        "beside_busy_loop": busy,
        THREADS_ENV: threads or "(unset)",
        "epoch_seconds": [round(s, 2) for s in seconds],
        "median_s": statistics.median(seconds[1:] or seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    data = workspace_root(args.workspace) / "datasets" / "ce_demo"
    if not data.is_dir():
        raise SystemExit(f"{data} is missing; run `coherence demo` first")
    cores = str(machine_cores())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [
            measure(data, root, "alone", args.epochs, None, busy=False),
            measure(data, root, "fixed", args.epochs, cores, busy=True),
            measure(data, root, "load-aware", args.epochs, None, busy=True),
        ]
    by_name = {row["setting"]: row["median_s"] for row in rows}
    ratio = by_name["load-aware"] / by_name["fixed"]
    for row in rows:
        row["vs_alone"] = round(row["median_s"] / by_name["alone"], 2)
        row["vs_fixed"] = round(row["median_s"] / by_name["fixed"], 3)
    notes = (
        f"`coherence train` of the demo UNet ({args.epochs} epochs, median of epochs 2 on) "
        f"alone, then beside one pure-Python busy loop with {THREADS_ENV}={cores} (every "
        "core: the fixed count of before) and unset (the load-aware count: the job leaves out "
        f"the core the loop keeps busy). Target: load-aware / fixed ≤ {TARGET_RATIO}: "
        f"{ratio:.3f}, {'met' if ratio <= TARGET_RATIO else 'missed'}."
    )
    path = write_result("foreign_load", "Training beside another program", rows, notes)
    print(json.dumps(rows, indent=1), "->", path)


if __name__ == "__main__":
    main()
