"""Tiny real datasets for training tests: Well files of smooth advected Euler states."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.simulation.dataset import SPLITS
from coherence.simulation.wellformat import write_well_file
from coherence.surrogates.training import TrainingArgs

TINY_OVERRIDES = {"base_width": 8, "channel_mult": (1, 2), "n_down": 1, "groups": 4}


def tiny_args(**changes) -> TrainingArgs:
    """A tiny UNet trained for 2 epochs on 4 transitions (≈ 1 s on the tiny dataset)."""
    base = dict(
        arch="unet",
        seed=3,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        transitions=4,
        device="cpu",
        overrides=TINY_OVERRIDES,
    )
    return TrainingArgs(**{**base, **changes})


def advected_states(n: int, steps: int, size: int, seed: int) -> np.ndarray:
    """Smooth positive Euler states translated one cell per snapshot (a learnable map)."""
    rng = np.random.default_rng(seed)
    x = np.arange(size) / size
    xx, yy = np.meshgrid(x, x)
    out = np.empty((n, steps, 4, size, size), dtype=np.float32)
    for b in range(n):
        k = rng.integers(1, 3, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=4)
        rho = 1.0 + 0.3 * np.sin(2 * np.pi * (k[0] * xx + k[1] * yy) + phase[0])
        u = 0.5 + 0.2 * np.cos(2 * np.pi * k[1] * yy + phase[1])
        v = 0.2 * np.sin(2 * np.pi * k[0] * xx + phase[2])
        p = 1.0 + 0.2 * np.cos(2 * np.pi * (xx - yy) + phase[3])
        base = np.stack([rho, rho * u, rho * v, p / 0.4 + 0.5 * rho * (u**2 + v**2)])
        for t in range(steps):
            out[b, t] = np.roll(base, t, axis=-1)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """2 classes × (4 train, 1 valid, 2 test) trajectories, 5 snapshots at 16²."""
    root = tmp_path_factory.mktemp("tiny_ds")
    times = np.linspace(0, 0.2, 5)
    for c, name in enumerate(("CE-RP", "CE-CRP")):
        for s, (split, n) in enumerate(zip(SPLITS, (4, 1, 2), strict=True)):
            write_well_file(
                root / "data" / split / f"{name}.hdf5",
                advected_states(n, 5, 16, seed=10 * c + s),
                times,
                family="euler",
                class_name=name,
                dataset_name="tiny",
            )
    return root
