"""A small real workspace for the dashboard tests: Well datasets from the real solvers,
trained checkpoints, and the default analysis already in the cache (as `coherence demo`
leaves the demo workspace).

tiny_ce: 3 CE classes × 5 trajectories (3 train, 1 valid, 1 test) × 6 snapshots at 16².
tiny_ns: 2 NS classes, no checkpoint fits it (a dataset the sidebar must not offer).
Checkpoints: two 1-epoch tiny UNets (seeds 1, 2) and one tiny ViT, all on tiny_ce.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coherence.cache.jobs import JobRunner
from coherence.dashboard.selection import default_selection
from coherence.simulation.dataset import SimulationRequest, generate_dataset
from coherence.surrogates.training import TrainingArgs, train
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.surrogates.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CE_CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI")
NS_CLASSES = ("NS-Sines", "NS-Gauss")
VIT_OVERRIDES = {"patch": 4, "width": 16, "depth": 1, "heads": 2}
COMPARE = ("vit_tiny_s1",)


def simulate(root: Path, name: str, family: str, classes: tuple[str, ...]) -> Path:
    request = SimulationRequest(
        family=family,
        classes=classes,
        trajectories=5,
        resolution=16,
        snapshots=6,
        t_end=0.25,
        split=(0.6, 0.2, 0.2),
        dataset_name=name,
    )
    return generate_dataset(request, root / name)


def build_workspace(root: Path) -> Path:
    """Datasets, checkpoints, and the default analyses cached (≈ 30 s on 2 busy cores)."""
    data = simulate(datasets_dir(root), "tiny_ce", "euler", CE_CLASSES)
    simulate(datasets_dir(root), "tiny_ns", "ns", NS_CLASSES)
    common = dict(epochs=1, batch_size=8, transitions=4, device="cpu", lr=3e-3)
    for seed in (1, 2):
        args = TrainingArgs(arch="unet", seed=seed, overrides=TINY_OVERRIDES, **common)
        train(data, checkpoints_dir(root) / f"unet_tiny_s{seed}", args)
    args = TrainingArgs(arch="vit", seed=1, overrides=VIT_OVERRIDES, **common)
    train(data, checkpoints_dir(root) / "vit_tiny_s1", args)
    selection = default_selection(root)
    runner = JobRunner(root)
    for request in replace(selection, compare=COMPARE).to_requests(root):
        runner.run(request)  # the default view and its UNet-vs-ViT comparison
    return root


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("dashboard") / "workspace")
