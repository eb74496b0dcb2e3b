"""Checkpoints: a directory of JSON and safetensors, never pickles.

    <name>/config.json          architecture + arguments, channels, resolution, dataset name,
                                fingerprint and classes, seed, training arguments, versions
    <name>/model.safetensors    weights (normalization buffers included)
    <name>/history.json         per-epoch train and validation SMSE
    <name>/training_state.safetensors   optimizer moments + RNG state, for resume (optional)

Every file is written under a temporary name and renamed, so a crash leaves the previous
complete file or none.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from coherence.errors import CheckpointError
from coherence.surrogates.registry import model_config_dict, model_from_config_dict

FORMAT = "coherence-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
STATE_FILE = "training_state.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


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
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: checkpoint format version "
                f"{data.get('format_version')!r} is not supported (this "
                f"version reads {FORMAT_VERSION}); re-save it"
            )
        missing = [
            k
            for k in ("model", "family", "channels", "resolution", "dataset", "seed")
            if k not in data
        ]
        if missing:
            raise CheckpointError(f"{where}: config.json lacks {', '.join(missing)}; re-save it")
        return cls(
            model=dict(data["model"]),
            family=str(data["family"]),
            channels=tuple(data["channels"]),
            resolution=tuple(int(r) for r in data["resolution"]),
            dataset=dict(data["dataset"]),
            seed=int(data["seed"]),
            training=dict(data.get("training", {})),
            versions=dict(data.get("versions", {})),
        )


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


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    _atomic_write(path, write)


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: CheckpointConfig,
    history: list[dict[str, float]],
    training_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write (or update) a checkpoint directory; weights first, config last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    if training_state is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in training_state.items()}
        _atomic_write(directory / STATE_FILE, lambda tmp: save_file(state, tmp))
    _write_json(directory / HISTORY_FILE, history)
    _write_json(directory / CONFIG_FILE, config.to_dict())
    return directory


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


def read_config(directory: str | os.PathLike) -> CheckpointConfig:
    """Read and check config.json of a checkpoint directory (no weights loaded)."""
    directory = _checked_directory(Path(directory))
    path = directory / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); re-save the checkpoint") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object; re-save the checkpoint")
    return CheckpointConfig.from_dict(data, path)


def read_history(directory: str | os.PathLike) -> list[dict[str, float]]:
    path = Path(directory) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(history, list):
        raise CheckpointError(f"{path}: must hold a JSON list of per-epoch records")
    return history


def _checked_directory(directory: Path) -> Path:
    if directory.is_file() and directory.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{directory}: pickle-based checkpoints (.pt, .pth, .ckpt, .pkl, .bin) are never "
            "loaded, because unpickling runs arbitrary code; export the weights with "
            "safetensors into a checkpoint directory (config.json + model.safetensors)"
        )
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: no such checkpoint directory; a checkpoint is a directory with "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} (train one with `coherence train`)"
        )
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / n).is_file()]
    if missing:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = (
            f" It holds {', '.join(pickles)}: pickle files are never loaded (unpickling "
            "runs code); convert them to safetensors."
            if pickles
            else ""
        )
        raise CheckpointError(
            f"{directory}: missing {', '.join(missing)}; a checkpoint needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}.{hint}"
        )
    return directory


def load(
    path: str | os.PathLike,
    *,
    trust_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, CheckpointConfig]:
    """Load a checkpoint: (model in eval mode, mapping physical state -> next state, config).

    Refuses, with the reason and the fix: missing files, pickle files, weights that do not
    match the config, an untrusted custom architecture.
    """
    directory = Path(path)
    config = read_config(directory)
    model = model_from_config_dict(config.model, trust_code=trust_code)
    weights_path = directory / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file ({exc}); re-save the checkpoint"
        ) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        k
        for k in set(expected) & set(tensors)
        if tuple(expected[k].shape) != tuple(tensors[k].shape)
    )
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        for key in wrong_shape[:3]:
            details.append(
                f"{key} has shape {tuple(tensors[key].shape)}, config implies "
                f"{tuple(expected[key].shape)}"
            )
        raise CheckpointError(
            f"{weights_path}: weights do not match the architecture in {CONFIG_FILE} ("
            + "; ".join(details)
            + "); the files come from different models: re-save them together"
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{weights_path}: weights {bad[:3]} hold NaN or inf; the training "
            "diverged or the file is corrupt: retrain or restore it"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return model, config


def check_compatible(
    config: CheckpointConfig,
    *,
    family: str,
    channels: tuple[str, ...],
    resolution: tuple[int, int],
    where: str = "checkpoint",
) -> None:
    """Refuse a checkpoint for a dataset whose channels or grid it was not trained on."""
    if config.family != family or tuple(config.channels) != tuple(channels):
        raise CheckpointError(
            f"{where} was trained on {config.family} data with channels "
            f"{list(config.channels)}, but the dataset has {family} channels {list(channels)}; "
            "pick a dataset of the same family or a checkpoint trained on it"
        )
    if tuple(config.resolution) != tuple(resolution):
        raise CheckpointError(
            f"{where} was trained at {config.resolution[0]}×{config.resolution[1]}, the "
            f"dataset is {resolution[0]}×{resolution[1]}; choose a matching dataset or retrain"
        )


def load_training_state(directory: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable training state ({exc}); delete it to restart training from scratch"
        ) from exc
