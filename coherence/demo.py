"""The demo workspace: a scaled-down instance of the paper's setup that builds on 2 CPU cores.

Paper: 128², 3 CE classes, UNet ≈ 13M and ViT ≈ 4.5M parameters, 150 epochs, seeds
{10, 35, 42}. Demo: the same classes, seeds and pipeline at 32² with small models and a few
epochs, so `make run` has something real to show within minutes. Idempotent: a complete,
valid dataset or checkpoint is kept; a partial checkpoint resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coherence.errors import CoherenceError
from coherence.simulation.dataset import SimulationRequest, generate_dataset, open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.training import TrainingArgs, train
from coherence.workspace import checkpoints_dir, datasets_dir, workspace_root

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
    epochs: dict[str, int] = field(default_factory=lambda: {"unet": 12, "vit": 12})
    batch_size: int = 32
    data_seed: int = 0

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
            epochs=self.epochs[arch],
            batch_size=self.batch_size,
            device="cpu",
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


def _checkpoint_ready(directory: Path, args: TrainingArgs, fingerprint: str) -> bool:
    try:
        config = ckpt.read_config(directory)
        history = ckpt.read_history(directory)
    except CoherenceError:
        return False
    return (
        len(history) >= args.epochs
        and config.dataset.get("fingerprint") == fingerprint
        and config.training.get("args", {}).get("seed") == args.seed
    )


def build_demo(
    workspace: str | Path | None = None, spec: DemoSpec | None = None, log: Log = print
) -> Path:
    """Build (or complete) the demo workspace; returns its root."""
    spec = spec or DemoSpec()
    root = workspace_root(workspace)
    started = time.perf_counter()
    data_dir = datasets_dir(root) / spec.dataset
    if _dataset_ready(data_dir, spec):
        log(f"dataset {data_dir} is ready")
    else:
        log(f"simulating dataset {data_dir} ({len(spec.classes)} classes × {spec.trajectories})")
        generate_dataset(spec.simulation_request(), data_dir, overwrite=True)
        log(f"  done in {time.perf_counter() - started:.0f} s")
    fingerprint = open_dataset(data_dir).fingerprint(split="train", classes=spec.classes)
    for arch in spec.architectures:
        for seed in spec.seeds:
            args = spec.training_args(arch, seed)
            out = checkpoints_dir(root) / spec.checkpoint_name(arch, seed)
            if _checkpoint_ready(out, args, fingerprint):
                log(f"checkpoint {out.name} is ready")
                continue
            if (out / ckpt.CONFIG_FILE).exists():
                config = ckpt.read_config(out)
                if config.dataset.get("fingerprint") != fingerprint:
                    log(f"checkpoint {out.name} was trained on other data: retraining")
                    for name in (
                        ckpt.CONFIG_FILE,
                        ckpt.WEIGHTS_FILE,
                        ckpt.HISTORY_FILE,
                        ckpt.STATE_FILE,
                        ckpt.MANIFEST_FILE,
                    ):
                        (out / name).unlink(missing_ok=True)
            t0 = time.perf_counter()
            log(f"training {out.name} ({args.epochs} epochs)")
            train(data_dir, out, args)
            history = ckpt.read_history(out)
            log(
                f"  done in {time.perf_counter() - t0:.0f} s, valid SMSE "
                f"{history[-1]['valid_smse']:.4g}"
            )
    precompute_default_analysis(root, log)
    log(f"demo workspace {root} ready in {time.perf_counter() - started:.0f} s")
    return root


def precompute_default_analysis(root: Path, log: Log = print) -> None:
    """Compute (or find cached) the dashboard's default view, so its first load is instant."""
    from coherence.cache import JobRunner
    from coherence.dashboard.selection import default_selection

    selection = default_selection(root)
    if selection is None:
        log("no dataset with a compatible checkpoint: nothing to precompute")
        return
    runner = JobRunner(root)
    for request in selection.to_requests(root):
        key = runner.key(request)
        if runner.status(key).state == "done":
            log(f"default analysis {key[:12]} is cached")
            continue
        t0 = time.perf_counter()
        log(
            f"precomputing the default analysis ({len(request.checkpoints)} checkpoints × "
            f"{len(request.trajectories)} batches, N = {request.n_examples})"
        )
        runner.run(request)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
