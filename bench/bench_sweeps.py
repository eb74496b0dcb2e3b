"""The sweeps behind the 'Training dynamics' and 'Sensitivity' panels on the demo workspace:
seconds per setting (one analysis request each), and what cache reuse saves when a sweep is
extended (a λ sweep of 3 values, then the full grid: only the new values run).

Works on a copy of the workspace's datasets and checkpoints with an empty cache, so every
setting is really computed and the workspace's own cache is untouched. The selection is the
dashboard's default view of each model group (as ``coherence demo`` precomputes it).

Run: python -m bench.bench_sweeps [--workspace workspace] [--archs vit]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import write_result
from coherence.cache.jobs import JobRunner
from coherence.dashboard import sweeps
from coherence.dashboard.selection import group_defaults
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.workspace import checkpoints_dir, datasets_dir, workspace_root

FIRST_GRID = (1e-6, 1e-4, 1e-2)  # the sweep before it is extended to sweeps.DAMPING_GRID


def _copy(root: Path, target: Path) -> None:
    shutil.copytree(datasets_dir(root), datasets_dir(target))
    shutil.copytree(checkpoints_dir(root), checkpoints_dir(target))


def _run(runner: JobRunner, points) -> list[tuple[object, float, bool]]:
    """(point, seconds, computed) for each point; a cached point costs a status look-up."""
    out = []
    for point in points:
        started = time.perf_counter()
        cached = runner.status(point.key).state == "done"
        if not cached:
            runner.run(point.request)
        out.append((point, time.perf_counter() - started, not cached))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", default=None, help="a built demo workspace")
    parser.add_argument("--archs", default="unet,vit", help="model groups to measure")
    options = parser.parse_args()
    source = workspace_root(options.workspace)
    rows, shape = [], "no group measured"
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        root = Path(tmp) / "workspace"
        _copy(source, root)
        catalog = scan_workspace(root)
        entry = catalog.dataset("ce_demo") or catalog.datasets[0]
        runner = JobRunner(root)
        for group in catalog.groups(entry):
            if group.arch not in options.archs.split(","):
                continue
            selection = group_defaults(entry, group)
            shape = (
                f"{len(selection.checkpoints)} seeds × {len(selection.trajectories)} batch(es), "
                f"N = {selection.n_examples}"
            )
            points, _ = sweeps.dynamics_points(root, selection, runner)
            for point, seconds, computed in _run(runner, points):
                rows.append(
                    {"group": group.label, "sweep": "dynamics", "setting": f"epoch {point.x:g}",
                     "seconds": round(seconds, 2), "computed": computed}
                )  # fmt: skip
            for grid, stage in ((FIRST_GRID, "λ sweep"), (sweeps.DAMPING_GRID, "extended")):
                points, _ = sweeps.sensitivity_points(
                    root, selection, catalog, runner, dampings=grid
                )
                for point, seconds, computed in _run(runner, points):
                    if stage == "extended" or computed:
                        rows.append(
                            {"group": group.label, "sweep": stage,
                             "setting": f"{point.series} λ={point.x:g}",
                             "seconds": round(seconds, 3), "computed": computed}
                        )  # fmt: skip
    write_result(
        "sweeps",
        "Dynamics and sensitivity sweeps on the demo (seconds per setting)",
        rows,
        notes=f"Each setting is one cached analysis of the default selection ({shape}, "
        "SMSE + mass + energy, top eigenvalue). 'extended' rows with computed = False were "
        "found in the cache: extending a sweep runs only new settings. 2 quiet cores, "
        "torch threads as the worker's default.",
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
