"""Two different analyses submitted at once vs one after the other (issue 13).

Both go through the dashboard's path (``JobRunner.submit``: one worker process each). With
the compute-slot rule (coherence.cache.slots) the second waits for a slot instead of fighting
the first for the cores, so "at once" should cost no more than "one after the other" plus the
queue's polling. Target: concurrent / sequential ≤ 1.3 (before the rule: about 3–10× on
2 cores, two torch processes each spinning a thread per core).

Settings: ``--scale demo`` (default) uses the demo workspace (``coherence demo``; pass
``--workspace``), its default selection with two dampings per run so no result comes from the
cache; ``--scale tiny`` builds a throwaway 16² dataset and a one-epoch UNet (a smoke test of
the script, not a figure). The machine's COHERENCE_MAX_JOBS / COHERENCE_TORCH_THREADS apply.

Run: python -m bench.bench_concurrency [--scale tiny|demo] [--workspace W]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import write_result
from coherence.analysis.request import AnalysisRequest
from coherence.cache import JobRunner, slots
from coherence.workspace import workspace_root

TARGET_RATIO = 1.3


def tiny_requests(root: Path) -> AnalysisRequest:
    """A 16² two-class dataset and a one-epoch demo UNet (seconds to build)."""
    from coherence.simulation.dataset import SimulationRequest, generate_dataset
    from coherence.surrogates.training import TrainingArgs, train

    classes = ("CE-RP", "CE-CRP")
    data = root / "data"
    simulation = SimulationRequest(
        family="euler", classes=classes, trajectories=6, resolution=16, snapshots=6, seed=0
    )
    generate_dataset(simulation, data, workers=1)
    checkpoint = root / "unet"
    args = TrainingArgs(
        arch="unet", preset="demo", classes=classes, epochs=1, batch_size=8, transitions=4
    )
    train(data, checkpoint, args)
    return AnalysisRequest(
        checkpoints=(str(checkpoint),),
        data=str(data),
        classes=classes,
        n_steps=4,
        trajectories=(0,),
        device="cpu",
    )


def demo_request(workspace: Path) -> AnalysisRequest:
    from coherence.dashboard.selection import default_selection

    selection = default_selection(workspace)
    if selection is None:
        raise SystemExit(f"{workspace} has no demo data; run `coherence demo` first")
    return selection.to_requests(workspace)[0]


def run_jobs(runner: JobRunner, requests: list[AnalysisRequest], at_once: bool) -> float:
    """Wall seconds until every request is done (submitted together, or one by one)."""
    start = time.perf_counter()
    pending = list(requests)
    while pending:
        batch = pending if at_once else pending[:1]
        keys = [runner.submit(r) for r in batch]
        while any(runner.status(k).active for k in keys):
            time.sleep(0.2)
        for key in keys:
            status = runner.status(key)
            if status.state != "done":
                raise RuntimeError(f"job {key[:12]} ended {status.state}: {status.error}")
        pending = pending[len(batch) :]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "demo"), default="demo")
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.scale == "tiny":
            base = tiny_requests(Path(tmp))
            workspace = Path(tmp) / "workspace"
        else:
            workspace = workspace_root(args.workspace)
            base = demo_request(workspace)
        runner = JobRunner(workspace)
        stamp = time.time_ns() % 997  # fresh keys on every run: nothing from the cache
        dampings = [base.damping * (1 + (stamp + i) * 1e-6) for i in range(4)]
        requests = [replace(base, damping=d) for d in dampings]
        sequential = run_jobs(runner, requests[:2], at_once=False)
        concurrent = run_jobs(runner, requests[2:], at_once=True)
    ratio = concurrent / sequential
    jobs = slots.max_jobs()
    rows = [
        {
            "scale": args.scale,
            "analysis": f"{len(base.checkpoints)} ckpt × {len(base.trajectories)} batches, "
            f"N = {base.n_examples}, {base.estimator}",
            "max_jobs": jobs,
            "threads_per_job": slots.threads_per_job(jobs),
            "sequential_s": sequential,
            "concurrent_s": concurrent,
            "ratio": ratio,
            "target": TARGET_RATIO,
            "meets_target": ratio <= TARGET_RATIO,
        }
    ]
    notes = (
        "Two analyses of the same size (dampings differ, so both are computed) submitted "
        "through JobRunner.submit one after the other, then at once; ratio = at once / one "
        "after the other. Compute slots: COHERENCE_MAX_JOBS jobs at once, each on its share "
        "of the cores; the rest queue."
    )
    path = write_result("concurrency", "Concurrent analyses (compute slots)", rows, notes)
    print(f"{rows[0]} -> {path}")


if __name__ == "__main__":
    main()
