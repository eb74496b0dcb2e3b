"""The Ray executor against local computation, on the demo UNet unit (N = 48 at 32², subspace,
top eigenvalue), on a local Ray cluster started here (2 CPUs, no dashboard):

1. per-unit overhead of the Ray path: the same units, warm (the tangent program traced), one
   torch thread each, computed here vs by one Ray worker (target ≤ 5 %);
2. throughput with 1 worker vs 2 workers on this machine's 2 cores (one thread each), and
   1 worker on 2 threads, as units per hour and the ratio;
3. a paper-scale projection: seconds per paper-preset unit from the cost model of
   ``coherence study`` with a forward timed here (one thread), units per hour per worker, and
   the cluster size that finishes the paper's 36 analysis units in 5 minutes.

Run: python -m bench.bench_ray [--units 2]. Needs the cluster extra (Ray).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import drifting_euler_states, write_result
from tests.fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI")
SIZE, SNAPSHOTS, TEST = 32, 17, 10
PAPER_UNITS = 2 * 3 * 6  # archs × seeds × batches (METHOD.md §5)
BUDGET_SECONDS = 300.0


def states(n: int, seed: int) -> np.ndarray:
    """Smooth positive Euler states [n, SNAPSHOTS, 4, SIZE, SIZE] that drift in time."""
    return drifting_euler_states(n, SNAPSHOTS, SIZE, seed)


def build(root: Path) -> tuple[Path, Path]:
    """A 32² dataset and a demo-preset UNet trained one epoch (a unit's cost does not depend
    on the weights' values)."""
    from coherence.simulation.wellformat import write_well_file
    from coherence.surrogates.training import TrainingArgs, train

    data = root / "ce32"
    times = np.linspace(0.0, 0.8, SNAPSHOTS)
    for c, name in enumerate(CLASSES):
        for s, (split, n) in enumerate((("train", 2), ("valid", 1), ("test", TEST))):
            write_well_file(
                data / "data" / split / f"{name}.hdf5",
                states(n, 10 * c + s),
                times,
                family="euler",
                class_name=name,
                dataset_name="ce32",
            )
    args = TrainingArgs(arch="unet", preset="demo", seed=10, epochs=1, device="cpu")
    return data, train(data, root / "unet_demo_s10", args)


def request(checkpoint: Path, data: Path, trajectories: tuple[int, ...]):
    from coherence.analysis.request import AnalysisRequest

    return AnalysisRequest(
        checkpoints=(str(checkpoint),),
        data=str(data),
        classes=CLASSES,
        n_steps=16,
        trajectories=trajectories,
        device="cpu",
    )


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@contextlib.contextmanager
def local_cluster(cpus: int):
    """`ray start --head --block` in its own process group; stopped by signalling it."""
    temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("COHERENCE_TORCH_THREADS", None)  # the executor sets threads per task
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp}",
    ]
    log = open(temp / "ray-start.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def row(what: str, value: float, unit: str, detail: str = "") -> dict:
    print(f"{what}: {value:.4g} {unit} {detail}", flush=True)
    return {"what": what, "value": value, "unit": unit, "detail": detail}


def measured_rows(units: int) -> tuple[list[dict], float]:
    """Rows of parts 1 and 2, and the Ray overhead per unit in seconds."""
    from coherence.analysis.pipeline import run_analysis
    from coherence.executors.ray_cluster import RayExecutor

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        data, checkpoint = build(Path(tmp))
        batches = tuple(range(1, 1 + units))
        torch.set_num_threads(1)
        run_analysis(request(checkpoint, data, (0,)))  # trace once
        local = timed(lambda: run_analysis(request(checkpoint, data, batches))) / units
        rows.append(row("local, per unit (1 thread, warm)", local, "s"))
        with local_cluster(2) as address:
            one_thread = {"env_vars": {"COHERENCE_TORCH_THREADS": "1"}}
            alone = RayExecutor(address, cpus=2, runtime_env=one_thread)  # 1 worker at a time
            alone.run_analysis(request(checkpoint, data, (0,)))  # start the worker, trace
            on_ray = timed(lambda: alone.run_analysis(request(checkpoint, data, batches))) / units
            computing = [t["compute_seconds"] for t in alone.timings[-units:]]
            overhead = on_ray - float(np.mean(computing))
            rows.append(row("Ray, 1 worker, per unit (1 thread, warm)", on_ray, "s"))
            rows.append(
                row(
                    "  of which compute_unit on the worker",
                    float(np.mean(computing)),
                    "s",
                    "the same function the local path runs",
                )
            )
            rows.append(
                row(
                    "Ray overhead per unit (beyond compute_unit)",
                    100 * overhead / local,
                    "%",
                    f"{overhead:.2f} s: shipping, model load, scheduling, reply (target ≤ 5 %)",
                )
            )
            rows.append(
                row(
                    "Ray / local wall per unit − 1 (direct, load-sensitive)",
                    100 * (on_ray / local - 1),
                    "%",
                )
            )
            pairs = tuple(range(1, 1 + 2 * units))
            one = timed(lambda: alone.run_analysis(request(checkpoint, data, pairs)))
            two_workers = RayExecutor(address, cpus=1)  # 2 workers, 1 thread each
            two_workers.run_analysis(request(checkpoint, data, (0, TEST - 1)))  # warm both
            two = timed(lambda: two_workers.run_analysis(request(checkpoint, data, pairs)))
            threads = RayExecutor(address, cpus=2)  # 1 worker on 2 threads
            threads.run_analysis(request(checkpoint, data, (0,)))
            wide = timed(lambda: threads.run_analysis(request(checkpoint, data, pairs)))
        n = len(pairs)
        rows.append(row("throughput, 1 worker × 1 thread", 3600 * n / one, "units/h"))
        rows.append(row("throughput, 2 workers × 1 thread", 3600 * n / two, "units/h"))
        rows.append(row("throughput, 1 worker × 2 threads", 3600 * n / wide, "units/h"))
        rows.append(row("2 workers / 1 worker", one / two, "×", "ideal 2.0 on 2 idle cores"))
    return rows, overhead


def paper_rows(overhead: float) -> list[dict]:
    """Seconds per paper-preset unit from the cost model with a forward timed here."""
    from coherence.analysis.pipeline import estimate_cost
    from coherence.analysis.request import AnalysisRequest
    from coherence.probe import probe_forward
    from coherence.surrogates.registry import build_model

    rows, total, longest = [], 0.0, 0.0
    torch.set_num_threads(1)
    example = torch.from_numpy(states(1, 0)[0, 0]).repeat_interleave(4, -1)
    example = example.repeat_interleave(4, -2)  # 128²
    for arch in ("unet", "vit"):
        torch.manual_seed(0)
        model = build_model(arch, "paper", channels=4, resolution=128).eval()
        paper = AnalysisRequest(
            checkpoints=("a", "b", "c"),
            data="-",
            classes=CLASSES,
            n_steps=16,
            trajectories=tuple(range(6)),
            responses=("smse", "mass", "energy"),
            device="cpu",
        )
        seconds = probe_forward(model, example)
        cost = estimate_cost(model, paper, example[None], forward_seconds=seconds)
        unit = cost.seconds_per_unit + overhead
        total += 3 * 6 * unit
        longest = max(longest, unit)
        rows.append(
            row(
                f"paper {arch} unit, 1 CPU thread (cost model)",
                unit,
                "s",
                f"{cost.forward_passes:.0f} forward equivalents × {seconds * 1e3:.0f} ms",
            )
        )
        rows.append(row(f"paper {arch} units per hour per 1-thread worker", 3600 / unit, "units/h"))
    if longest > BUDGET_SECONDS:
        size = f"impossible on CPU workers: one unit takes {longest:.0f} s > 300 s"
    else:
        size = f"{math.ceil(total / BUDGET_SECONDS)} workers"
    rows.append(
        row(
            "paper study analyses (36 units), 1-thread CPU workers for 5 minutes",
            float(math.ceil(total / BUDGET_SECONDS)),
            "workers",
            size,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=2, help="units per timed run")
    args = parser.parse_args()
    rows, overhead = measured_rows(args.units)
    rows += paper_rows(overhead)
    notes = (
        "Demo unit: UNet demo preset (273,300 parameters), N = 48 at 32², subspace, top "
        "eigenvalue, all warm (tangent program traced) on one torch thread. Overhead = Ray "
        "wall per unit minus the worker's own compute_unit time, over the local wall per "
        "unit: what the Ray path adds (shipping checkpoint and batch, a model load per unit, "
        "scheduling, the npz + JSON reply). The direct ratio of the two walls is also shown; "
        "on a loaded machine it is dominated by noise in the computation. The paper "
        "projection uses the cost model of `coherence study` (forward timed here, one "
        "thread) plus the measured Ray overhead; "
        "a GPU unit cost was not measured: no GPU was lent to this session (units per hour "
        "per GPU = 3600 / (GPU unit seconds + overhead) once measured). Measured on a shared "
        "2-core machine under other load: repeat on a quiet machine before quoting."
    )
    write_result("ray", "Ray executor: overhead, 1 vs 2 workers, paper projection", rows, notes)


if __name__ == "__main__":
    main()
