"""The demo workspace: a scaled-down instance of the paper's setup that builds on 2 CPU cores.

Paper: 128², 3 CE classes, UNet ≈ 13M and ViT ≈ 4.5M parameters, 150 epochs, seeds
{10, 35, 42}. Demo: the same classes, seeds and pipeline at 32² with small models and a few
epochs, so `make run` has something real to show within minutes. It is the study
(``coherence.study``) with the demo preset on simulated data: idempotent, a complete, valid
dataset or checkpoint is kept, a partial checkpoint resumes, cached analyses are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coherence.cache import slots
from coherence.errors import CoherenceError
from coherence.simulation.dataset import SimulationRequest, generate_dataset, open_dataset
from coherence.study import StudySpec, plan_study, run_study
from coherence.surrogates.training import TrainingArgs
from coherence.workspace import checked_workspace, datasets_dir

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSpec:
    """What the demo builds (the defaults keep the whole build within ~10 minutes)."""

    dataset: str = "ce_demo"
    classes: tuple[str, ...] = ("CE-RP", "CE-CRP", "CE-RPUI")
    resolution: int = 32
    trajectories: int = 20  # per class: 13 train, 1 valid, 6 test (the paper's 6 batches)
    snapshots: int = 21
    seeds: tuple[int, ...] = (10, 35, 42)
    architectures: tuple[str, ...] = ("unet", "vit")
    epochs: int = 12
    batch_size: int = 32
    data_seed: int = 0
    # The paper analyses 6 test trajectories per seed; 1 keeps the precompute (default
    # ekfac-krylov estimator) within the demo's 10-minute budget on 2 CPU cores (the
    # dashboard's default view: dashboard.selection.DEFAULT_BATCHES); more are a pick away.
    batches: int = 1
    # The 'Training dynamics' and 'Sensitivity' panels: training keeps snapshots of epochs
    # 1, 4 and 12 (fewer than `coherence train`'s powers of two plus the last: each snapshot
    # analysed costs a whole analysis), and the demo analyses them, and a small λ sweep
    # (ekfac-krylov at 1e-4, 1e-2; euclidean), for the ViT only: 4 ViT analyses besides the
    # default ones, ≈ 45 CPU-seconds each (the UNet's ≈ 4× more). The rest of the λ grid
    # and the UNet's are one click away in each panel; cg is on demand everywhere.
    keep_epochs: tuple[int, ...] = (1, 4, 12)
    dynamics_archs: tuple[str, ...] = ("vit",)
    sweep_archs: tuple[str, ...] = ("vit",)
    sweep_dampings: tuple[float, ...] = (1e-4, 1e-2)

    def checkpoint_name(self, arch: str, seed: int) -> str:
        return f"{arch}_demo_s{seed}"

    def simulation_request(self) -> SimulationRequest:
        return SimulationRequest(
            family="euler",
            classes=self.classes,
            trajectories=self.trajectories,
            resolution=self.resolution,
            snapshots=self.snapshots,
            seed=self.data_seed,
            dataset_name=self.dataset,
        )

    def training_args(self, arch: str, seed: int) -> TrainingArgs:
        return TrainingArgs(
            arch=arch,
            preset="demo",
            classes=self.classes,
            seed=seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            keep_epochs=self.keep_epochs,
            device="cpu",
        )

    def study_spec(self) -> StudySpec:
        return StudySpec(
            dataset=self.dataset,
            preset="demo",
            archs=self.architectures,
            seeds=self.seeds,
            batches=self.batches,
            classes=self.classes,
            epochs=self.epochs,
            batch_size=self.batch_size,
            device="cpu",
            naming="{arch}_demo_s{seed}",
            replace_foreign=True,  # the demo's own names: retrain on regenerated data
            adopt=False,  # and only those: a study's would bring other snapshots
            keep_epochs=self.keep_epochs,
            dynamics_archs=self.dynamics_archs,
            sweep_archs=self.sweep_archs,
            sweep_dampings=self.sweep_dampings,
        )


def _dataset_ready(root: Path, spec: DemoSpec) -> bool:
    try:
        info = open_dataset(root)
    except CoherenceError:
        return False
    return (
        info.height == spec.resolution
        and len(info.times) == spec.snapshots
        and all(
            c in info.files.get(s, {}) for s in ("train", "valid", "test") for c in spec.classes
        )
    )


def build_demo(
    workspace: str | Path | None = None, spec: DemoSpec | None = None, log: Log = print
) -> Path:
    """Build (or complete) the demo workspace; returns its root."""
    spec = spec or DemoSpec()
    root = checked_workspace(workspace)
    started = time.perf_counter()
    data_dir = datasets_dir(root) / spec.dataset
    if _dataset_ready(data_dir, spec):
        log(f"dataset {data_dir} is ready")
    else:
        log(f"simulating dataset {data_dir} ({len(spec.classes)} classes × {spec.trajectories})")
        # as `coherence simulate` does
        with slots.compute_slot("simulate-demo", on_crowded=lambda line: log(f"  {line}")) as slot:
            request = spec.simulation_request()
            generate_dataset(request, data_dir, overwrite=True, max_workers=slot.threads)
        log(f"  done in {time.perf_counter() - started:.0f} s")
    plan = plan_study(spec.study_spec(), root)
    for line in plan.describe():
        log(line)
    run_study(plan, log=log)
    log(f"demo workspace {root} ready in {time.perf_counter() - started:.0f} s")
    return root
