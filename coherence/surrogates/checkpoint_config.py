"""A checkpoint's config.json: everything needed to rebuild and judge a model, every field
type-checked on reading (``jsonfields``). ``checkpoint`` re-exports these names.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coherence.errors import CheckpointError
from coherence.simulation.families import PHYSICAL_CONSTANTS
from coherence.surrogates.jsonfields import JsonObject
from coherence.surrogates.registry import model_config_dict

FORMAT = "coherence-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointConfig:
    """Everything needed to rebuild and judge a model, read from config.json."""

    model: dict[str, Any]
    family: str
    channels: tuple[str, ...]
    resolution: tuple[int, int]
    dataset: dict[str, Any]
    seed: int
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.model["arch"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.dataset.get("classes", ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "family": self.family,
            "channels": list(self.channels),
            "resolution": list(self.resolution),
            "dataset": self.dataset,
            "seed": self.seed,
            "training": self.training,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> CheckpointConfig:
        if data.get("format") != FORMAT:
            raise CheckpointError(
                f"{where}: not a Coherence checkpoint config (format is "
                f"{data.get('format')!r}, expected {FORMAT!r})"
            )
        version = data.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise CheckpointError(  # "re-save it" asked for what only a newer coherence can do
                f"{where}: checkpoint format version {version} was written by a newer "
                f"coherence (this one reads {FORMAT_VERSION}); upgrade coherence to load it"
            )
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: checkpoint format version {version!r} is not supported (this "
                f"version reads {FORMAT_VERSION}); retrain it, or restore its config.json"
            )
        missing = [
            k
            for k in ("model", "family", "channels", "resolution", "dataset", "seed")
            if k not in data
        ]
        if missing:
            raise CheckpointError(f"{where}: config.json lacks {', '.join(missing)}; re-save it")
        doc = JsonObject(data, where)
        model = doc.object("model")
        model.string("arch")
        model.optional_string("preset")
        model.object("config")
        dataset = doc.object("dataset")
        for name in ("name", "root", "fingerprint"):
            if dataset.has(name):
                dataset.string(name)
        if dataset.has("classes"):
            dataset.string_list("classes")
        if dataset.has("physics"):  # Δt, γ, ν: a "0.1" skipped the check against the data
            physics = dataset.object("physics")
            for name in ("dt", *PHYSICAL_CONSTANTS):
                if physics.has(name):
                    physics.number(name)
        training = doc.object("training", default={})
        if training.has("args"):
            _check_training_args(training.object("args"))
        return cls(
            model=model.to_dict(),
            family=doc.string("family"),
            channels=doc.string_list("channels"),
            resolution=doc.integer_list("resolution", length=2, minimum=1),
            dataset=dataset.to_dict(),
            seed=doc.integer("seed"),
            training=training.to_dict(),
            versions=doc.string_map("versions"),
        )


def _check_training_args(args: JsonObject) -> None:
    """The recorded training arguments that later runs compare (a resume, a study's seeds):
    each of the type TrainingArgs writes, where present ("epochs": "two" was accepted)."""
    for name in ("seed", "epochs", "batch_size", "checkpoint_every"):
        if args.has(name):
            args.integer(name, minimum=None if name == "seed" else 1)
    if args.has("transitions") and args.to_dict()["transitions"] is not None:
        args.integer("transitions", minimum=1)
    for name in ("lr", "weight_decay"):
        if args.has(name):
            args.number(name)
    for name in ("arch", "preset", "device"):
        if args.has(name):
            args.string(name)
    if args.has("classes"):
        args.string_list("classes")


def package_versions() -> dict[str, str]:
    """Versions that decide whether a result can be reproduced."""
    import numpy

    import coherence

    return {
        "coherence": coherence.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def new_config(
    model: nn.Module,
    *,
    family: str,
    channels: tuple[str, ...],
    resolution: tuple[int, int],
    dataset: dict[str, Any],
    seed: int,
    training: dict[str, Any],
) -> CheckpointConfig:
    return CheckpointConfig(
        model=model_config_dict(model),
        family=family,
        channels=channels,
        resolution=resolution,
        dataset=dataset,
        seed=seed,
        training=training,
        versions=package_versions(),
    )
