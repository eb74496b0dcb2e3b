"""Import throughput: `coherence import pdegym` on a synthetic class of the published size.

The source is one file in PDEgym's CE layout (``data``: 128², 21 snapshots, 5 channels
float32, chunks (1, 1, 5, 128, 128); 6.9 MB per trajectory), with N = 200 trajectories
(1.4 GB) by default: physically valid states (ρ, p > 0, E with γ = 1.4) so every check runs.
The import runs as the real CLI in a child process; we report source MB/s (wall clock,
including start-up) and the child's peak RSS, which must not grow with N (streaming).
It is I/O-bound: the figure depends on the disk and the page cache.

Run: python -m bench.bench_import [--trajectories 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bench.common import RESULTS_DIR, machine

RES, STEPS, CHANNELS, GAMMA = 128, 21, 5, 1.4


def write_source(path: Path, n: int, seed: int = 0) -> int:
    """A CE file in the published layout, written 8 trajectories at a time; returns bytes."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 2 * np.pi, RES, endpoint=False)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "data", shape=(n, STEPS, CHANNELS, RES, RES), dtype=np.float32,
            chunks=(1, 1, CHANNELS, RES, RES),
        )  # fmt: skip
        for name, size in (("sample", n), ("time", STEPS), ("channel", CHANNELS)):
            f.create_dataset(name, data=np.arange(size, dtype=np.float64)).make_scale(name)
        for name in ("x", "y"):
            f.create_dataset(name, data=x / (2 * np.pi)).make_scale(name)
        for axis, name in enumerate(("sample", "time", "channel", "x", "y")):
            ds.dims[axis].attach_scale(f[name])
        for start in range(0, n, 8):
            b = min(8, n - start)
            phase = rng.uniform(0, 2 * np.pi, (b, STEPS, 4, 1, 1))
            wave = np.sin(x[None, None, None, :, None] + phase) * np.cos(x[None, None, None, None])
            rho, u, v = 1.0 + 0.5 * wave[:, :, 0], wave[:, :, 1], wave[:, :, 2]
            p = 1.0 + 0.5 * wave[:, :, 3]
            energy = p / (GAMMA - 1) + 0.5 * rho * (u**2 + v**2)
            ds[start : start + b] = np.stack([rho, u, v, p, energy], axis=2).astype(np.float32)
    return n * STEPS * CHANNELS * RES * RES * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        source = Path(tmp) / "CE-RP.nc"
        nbytes = write_source(source, args.trajectories)
        env = {**os.environ, "COHERENCE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
        command = [
            sys.executable, "-c", "from coherence.cli import main; main()", "import", "pdegym",
            str(source), "--class", "CE-RP", "--out", str(Path(tmp) / "out"),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        written = sum(p.stat().st_size for p in (Path(tmp) / "out").rglob("*.hdf5"))
    rows = [
        {
            "trajectories": args.trajectories,
            "source_MB": round(nbytes / 2**20, 1),
            "written_MB": round(written / 2**20, 1),
            "seconds": round(seconds, 1),
            "MB_per_s": round(nbytes / 2**20 / seconds, 1),
            "peak_rss_MiB": round(peak_mib, 1),
            "what": "coherence import pdegym, CE 128² × 21 × 5 float32, one child process "
            "(start-up included); the source was just written, so partly in the page cache",
        }
    ]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": "import",
        "title": "Import throughput: PDEgym CE class of the published per-trajectory size",
        "machine": machine(),
        "rows": rows,
        "notes": "Streaming: peak RSS is set by the 64 MB block, not by N. A full class "
        "(10 000 trajectories, 69 GB) takes about 10 000 / N times as long.",
    }
    (RESULTS_DIR / "import.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
