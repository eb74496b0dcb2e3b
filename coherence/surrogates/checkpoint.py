"""Checkpoints: a directory of JSON and safetensors, never pickles.

    <name>/config.json          architecture + arguments, channels, resolution, dataset name,
                                fingerprint and classes, seed, training arguments, versions
    <name>/model.safetensors    weights (normalization buffers included)
    <name>/history.json         per-epoch train and validation SMSE
    <name>/training_state.safetensors   AdamW state for resume (optional): optim.<i>.step,
                                        .exp_avg, .exp_avg_sq of parameter i. No RNG state
                                        is saved: epoch e's data order is re-derived from
                                        the seed (seed·100003 + e), and the built-in models
                                        draw no random numbers after initialization
    <name>/manifest.json        size and SHA-256 of each file above, epochs trained
    <name>/epochs/NNNN/         snapshots of chosen epochs, each a checkpoint (``snapshots``)

A save replaces the whole set at once (``fileset``: written into a staging directory, committed
by one rename), so a kill leaves the previous complete set or the new one, never weights of
one epoch beside the history of another. Directories written before the manifest existed
(the four files alone) still load. Every field of config.json (``checkpoint_config``) and
history.json is type-checked (``jsonfields``); the model's memory is counted on the meta
device and refused before anything is allocated when it cannot fit (``footprint``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from coherence.errors import CheckpointError, CoherenceError
from coherence.simulation.families import PHYSICAL_CONSTANTS
from coherence.surrogates import fileset, snapshots
from coherence.surrogates.checkpoint_config import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointConfig,
    new_config,
    package_versions,
)
from coherence.surrogates.footprint import check_model_fits
from coherence.surrogates.jsonfields import JsonObject, json_list
from coherence.surrogates.registry import model_from_config_dict
from coherence.wording import plural
from coherence.workspace import enclosing_dataset

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
STATE_FILE = "training_state.safetensors"
MANIFEST_FILE = fileset.MANIFEST_FILE
SET_FILES = (CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, STATE_FILE)  # what a save may write
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HISTORY_FILE",
    "MANIFEST_FILE",
    "PICKLE_SUFFIXES",
    "SET_FILES",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "CheckpointConfig",
    "check_compatible",
    "load",
    "load_training_state",
    "new_config",
    "package_versions",
    "read_config",
    "read_history",
    "recover",
    "save_checkpoint",
    "save_snapshot",
    "verify",
]


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: CheckpointConfig,
    history: list[dict[str, float]],
    training_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write (or replace) a checkpoint directory as one set: all files or none change."""
    directory = Path(directory)
    files = {
        WEIGHTS_FILE: _tensor_bytes(model.state_dict()),
        HISTORY_FILE: _json_bytes(history),
        CONFIG_FILE: _json_bytes(config.to_dict()),
    }
    if training_state is not None:
        files[STATE_FILE] = _tensor_bytes(training_state)
    fileset.write_set(directory, files, {"epochs": len(history)}, SET_FILES)
    return directory


def save_snapshot(
    directory: str | os.PathLike,
    model: nn.Module,
    config: CheckpointConfig,
    history: list[dict[str, float]],
) -> bool:
    """Keep the weights of epoch ``len(history)`` as ``<directory>/epochs/NNNN``: a checkpoint
    of its own (config, weights, history; no optimizer state), committed by one rename.
    False when that snapshot exists already (a resumed run passes the epoch again)."""
    files = {
        WEIGHTS_FILE: _tensor_bytes(model.state_dict()),
        HISTORY_FILE: _json_bytes(history),
        CONFIG_FILE: _json_bytes(config.to_dict()),
    }
    return snapshots.write_snapshot(Path(directory), len(history), files)


def recover(directory: str | os.PathLike) -> None:
    """Complete a save that was killed after its commit (writers call this before resuming);
    a save killed earlier left the previous set whole and its leftovers are removed."""
    directory = Path(directory)
    if directory.is_dir():
        _refuse_links(directory, (fileset.COMMIT_DIR, MANIFEST_FILE))
        try:
            fileset.finish_pending(directory, SET_FILES)
        except ValueError as exc:  # a damaged manifest.json (JSON or text errors included)
            raise CheckpointError(
                f"{exc}; the interrupted save cannot be completed: delete {directory} and "
                "train again"
            ) from exc


def _read_json(directory: Path, name: str) -> Any:
    path = directory / name
    try:
        return json.loads(fileset.read_bytes(directory, name))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); re-save the checkpoint") from exc


def read_config(directory: str | os.PathLike) -> CheckpointConfig:
    """Read and check config.json of a checkpoint directory (no weights loaded)."""
    directory = _checked_directory(Path(directory))
    data = _read_json(directory, CONFIG_FILE)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: must hold a JSON object; re-save the checkpoint"
        )
    return CheckpointConfig.from_dict(data, directory / CONFIG_FILE)


def read_history(directory: str | os.PathLike) -> list[dict[str, float]]:
    """Per-epoch records of history.json (empty when there is none), each checked: an
    object with ``epoch`` = its position (1, 2, …) and numeric ``train_smse``,
    ``valid_smse`` (and ``seconds`` when present)."""
    directory = Path(directory)
    path = directory / HISTORY_FILE
    _refuse_links(directory, (HISTORY_FILE,))
    if not fileset.current_path(directory, HISTORY_FILE).is_file():
        return []
    records = json_list(_read_json(directory, HISTORY_FILE), path, "per-epoch records")
    history = []
    for index, item in enumerate(records):
        record = JsonObject(item, path, f"[{index}]")
        epoch = record.integer("epoch", minimum=1)
        if epoch != index + 1:
            record.fail(f"[{index}].epoch", epoch, f"{index + 1} (records are epochs 1, 2, …)")
        record.number("train_smse")
        record.number("valid_smse")
        if record.has("seconds"):
            record.number("seconds")
        history.append(record.to_dict())
    return history


# training arguments that change the model a run ends with: seeds of one model share them
# (the study's plan compares the same ones, with the preset and the seed). The data and its
# classes are the dataset fingerprint (order-free: `--classes` omitted or listed in another
# order is the same data); the architecture's overrides are in its config; the device, the
# snapshots kept and the checkpoint cadence do not change the model.
RECIPE_ARGS = ("batch_size", "transitions", "lr", "weight_decay")


def recipe_of(config: CheckpointConfig, trained_epochs: int) -> dict[str, Any]:
    """What a run was trained with besides its seed: the recorded ``RECIPE_ARGS`` (a value
    saved as None, such as transitions before it was resolved, is unknown and left out), the
    training data's fingerprint and the epochs its weights have seen (``trained_epochs``,
    history.json's length; 0: unknown, then the epochs it was asked for). A snapshot's is its
    own epoch. Checkpoints whose recipes differ in a field both record are not seeds of one
    model."""
    training = config.training if isinstance(config.training, dict) else {}
    args = training.get("args") if isinstance(training.get("args"), dict) else {}
    recipe = {key: args[key] for key in RECIPE_ARGS if args.get(key) is not None}
    if fingerprint := config.dataset.get("fingerprint"):
        recipe["data"] = str(fingerprint)[:12]
    if epochs := trained_epochs or args.get("epochs"):
        recipe["epochs"] = epochs
    return recipe


def trained_epochs(directory: str | os.PathLike) -> int:
    """Epochs in a checkpoint's history.json (0: none, or none readable: a bad history hides
    the training curves, not the checkpoint)."""
    try:
        return len(read_history(directory))
    except (CoherenceError, OSError, ValueError):
        return 0


def training_recipe(directory: str | os.PathLike) -> dict[str, Any]:
    """``recipe_of`` for a checkpoint directory."""
    return recipe_of(read_config(directory), trained_epochs(directory))


def weights_digest(directory: str | os.PathLike) -> str:
    """SHA-256 of the weights file: the manifest's record where there is one (no rehash of
    a paper-size model), else the file's own digest (checkpoints saved without one)."""
    directory = Path(directory)
    try:
        manifest = fileset.read_manifest(directory)
    except ValueError:  # damaged: ``verify`` refuses it by name before any analysis
        manifest = None
    entry = (manifest or {}).get("files", {}).get(WEIGHTS_FILE)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return fileset.digest(fileset.read_bytes(directory, WEIGHTS_FILE))


def verify(directory: str | os.PathLike) -> None:
    """Refuse a checkpoint whose files are not the set its manifest records (a file changed
    after the save, or a save by an older version was interrupted). Resume calls this:
    continuing from weights and a history of different epochs trains an epoch twice."""
    directory = _checked_directory(Path(directory))
    try:
        manifest = fileset.read_manifest(directory)
    except ValueError as exc:  # JSON and text decoding errors are ValueErrors too
        raise CheckpointError(f"{exc}; delete {directory} and retrain") from exc
    if manifest is None:
        return  # written before manifests: nothing recorded to compare with
    contents = {}
    for name in manifest["files"]:
        try:
            contents[name] = fileset.read_bytes(directory, name)
        except FileNotFoundError:
            continue
    problems = fileset.mismatches(directory, manifest, contents)
    epochs = len(read_history(directory))
    if manifest.get("epochs") != epochs:
        problems.append(
            f"history.json has {plural(epochs, 'epoch')}, the manifest {manifest.get('epochs')}"
        )
    if problems:
        raise CheckpointError(
            f"{directory}: the checkpoint files are not the set that was saved together ("
            + "; ".join(problems)
            + "); restore the directory from a backup or delete it and retrain"
        )


def _refuse_links(directory: Path, names: tuple[str, ...]) -> None:
    for name in names:
        path = directory / name
        if path.is_symlink():
            raise CheckpointError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); checkpoint files must "
                "be regular files inside the checkpoint directory, because a link can point "
                "anywhere: replace the link with a copy of the file"
            )


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
    _refuse_links(directory, (*SET_FILES, MANIFEST_FILE, fileset.COMMIT_DIR))
    missing = [
        n for n in (CONFIG_FILE, WEIGHTS_FILE) if not fileset.current_path(directory, n).is_file()
    ]
    if missing:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = (
            f" It holds {', '.join(pickles)}: pickle files are never loaded (unpickling "
            "runs code); convert them to safetensors."
            if pickles
            else ""
        )
        if enclosing_dataset(directory) == directory.resolve():
            hint += (
                " It is a dataset (data/<split>/*.hdf5), not a checkpoint (on the command "
                "line: were --data and --checkpoint swapped?)"
            )
        kept = snapshots.list_snapshots(directory.parent)
        if directory.name == snapshots.EPOCHS_DIR and kept:
            hint += (
                f" It is the folder of {directory.parent.name}'s training snapshots: give one "
                f"of them, e.g. {next(reversed(kept.values()))} (epochs kept: "
                f"{', '.join(map(str, kept))})."
            )
        if not hint and directory.parent.name == snapshots.EPOCHS_DIR:  # named no fix
            hint = (
                f" It is a training snapshot of {directory.parent.parent.name}, which still "
                "loads itself: restore the snapshot's files from where they were copied, or "
                "retrain the checkpoint to keep its snapshots again."
            )
        elif not hint:
            hint = (
                " Restore the missing file from where the checkpoint was copied, or train it "
                "again (`coherence train`)."
            )
        raise CheckpointError(
            f"{directory}: missing {', '.join(missing)}; a checkpoint needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}.{hint}"
        )
    return directory


def _model_for(
    directory: Path, config: CheckpointConfig, device: str | torch.device, trust_code: bool
) -> nn.Module:
    """The untrained model config.json describes, after checking that it fits ``device``;
    errors name config.json."""
    where = directory / CONFIG_FILE
    try:
        check_model_fits(
            config.model,
            len(config.channels),
            config.resolution,
            device,
            where,
            trust_code=trust_code,
        )
        return model_from_config_dict(config.model, trust_code=trust_code)
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(
            message if message.startswith(str(where)) else f"{where}: {message}"
        ) from exc


def _weight_mismatches(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]
) -> list[str]:
    """Names missing or unexpected and shapes that differ (three of each at most)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        k
        for k in set(expected) & set(tensors)
        if tuple(expected[k].shape) != tuple(tensors[k].shape)
    )
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
    return details


def _read_weights(directory: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """model.safetensors, refused unless it is readable, matches ``model`` name for name and
    shape for shape, and holds only finite values."""
    weights_path = directory / WEIGHTS_FILE
    try:
        tensors = load_safetensors(fileset.read_bytes(directory, WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file ({exc}); re-save the checkpoint"
        ) from exc
    details = _weight_mismatches(model.state_dict(), tensors)
    if details:
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
    return tensors


def load(
    path: str | os.PathLike,
    *,
    trust_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, CheckpointConfig]:
    """Load a checkpoint: (the model in eval mode on ``device``, which maps a state to the
    next one; its config).

    Refuses, with the reason and the fix: missing files, pickle files, symbolic links,
    fields of the wrong type, a model too large for the free memory of ``device`` (counted
    before anything is allocated), weights that do not match the config, an untrusted
    custom architecture.
    """
    directory = Path(path)
    config = read_config(directory)
    model = _model_for(directory, config, device, trust_code)
    model.load_state_dict(_read_weights(directory, model), strict=True)
    model.to(device)
    model.eval()
    return model, config


def recorded_physics(recorded: object) -> dict[str, float]:
    """The numeric entries of a config.json's recorded physics: Δt, γ and ν (type-checked
    when the config is read) and any other number; an entry of another type (a foreign
    file's note) is not compared."""
    if not isinstance(recorded, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in recorded.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def physics_differences(trained: object, data: dict[str, float]) -> list[str]:
    """'dt 0.05 (the dataset's: 0.075)' for each quantity both record and that differs;
    ``trained``: what a config.json recorded (``recorded_physics``)."""
    numbers = recorded_physics(trained)
    return [
        f"{name} {numbers[name]:g} (the dataset's: {value:g})"
        for name, value in data.items()
        if name in numbers and not math.isclose(numbers[name], value, rel_tol=1e-5)
    ]


def unseen_constants(
    recorded: object,
    trained_classes: Sequence[str],
    class_physics: Mapping[str, Mapping[str, float]],
    classes: Sequence[str],
) -> list[str]:
    """'class CE-G16 has gamma 1.6 (the checkpoint's: 1.4)' for each of ``classes`` whose physical
    constants (γ, ν) match neither what the checkpoint recorded (``recorded``: its config's
    physics) nor any class it trained on in this dataset (``class_physics``: class →
    ``DatasetInfo.physics`` of that class). The check against the data compared the
    training classes' constants only, so a class of γ = 1.6 beside them was analysed with a
    model that had only seen 1.4."""
    seen = [recorded_physics(recorded)] + [
        recorded_physics(dict(class_physics[c])) for c in trained_classes if c in class_physics
    ]
    out = []
    for name in classes:
        if name in trained_classes or name not in class_physics:
            continue
        mine = {k: float(v) for k, v in class_physics[name].items() if k in PHYSICAL_CONSTANTS}
        if all(physics_differences(known, mine) for known in seen):
            differ = [
                f"{key} {mine[key]:g} (the checkpoint's: {seen[0][key]:g})"
                for key in sorted(mine)
                if key in seen[0] and not math.isclose(mine[key], seen[0][key], rel_tol=1e-5)
            ]
            out.append(f"class {name}, which has {', '.join(differ)}")
    return out


def check_compatible(
    config: CheckpointConfig,
    *,
    family: str,
    channels: tuple[str, ...],
    resolution: tuple[int, int],
    where: str = "checkpoint",
    physics: dict[str, float] | None = None,
    class_physics: Mapping[str, Mapping[str, float]] | None = None,
    classes: Sequence[str] = (),
) -> None:
    """Refuse a checkpoint for a dataset whose channels or grid it was not trained on, or
    (``physics``: ``DatasetInfo.physics``) whose snapshot spacing Δt or physical constants
    differ from those it learnt to step with: a one-step surrogate of Δt = 0.05 at γ = 1.4
    analysed on Δt = 0.075 or γ = 1.3 gave numbers about another map; ``classes``, the
    classes to analyse, each with constants it trained on (``unseen_constants``, from
    ``class_physics``). Checkpoints written before the physics was recorded are not checked
    for it."""
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
    unseen = unseen_constants(
        config.dataset.get("physics"), config.classes, class_physics or {}, classes
    )
    if unseen:
        raise CheckpointError(
            f"{where} never trained on the physical constants of {'; '.join(unseen)}; a "
            "one-step surrogate steps the physics it learnt: leave that class out of the "
            "selection, or analyse it with a checkpoint trained on it"
        )
    differ = physics_differences(config.dataset.get("physics"), physics or {})
    if differ:
        raise CheckpointError(
            f"{where} was trained on data with {', '.join(differ)}; a one-step surrogate "
            "steps the Δt and physics it learnt: choose a dataset made the same way (e.g. the "
            "same --downsample or simulation settings) or a checkpoint trained on this one"
        )


def load_training_state(directory: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The optimizer tensors of training_state.safetensors (None when there is none)."""
    directory = Path(directory)
    path = directory / STATE_FILE
    _refuse_links(directory, (STATE_FILE,))
    if not fileset.current_path(directory, STATE_FILE).is_file():
        return None
    try:
        return load_safetensors(fileset.read_bytes(directory, STATE_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable training state ({exc}); delete it to restart training from scratch"
        ) from exc
