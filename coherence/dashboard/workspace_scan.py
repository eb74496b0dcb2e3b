"""What the workspace holds: datasets and checkpoints, checkpoints grouped by architecture.

Pure (no streamlit). Only directories directly under ``<workspace>/datasets`` and
``<workspace>/checkpoints`` are listed (a checkpoint's training snapshots ``epochs/NNNN`` are
its ``epochs``, not checkpoints of their own), each resolved with ``resolve_inside`` so a symlink
that leaves the workspace is skipped, never opened. A broken entry (bad HDF5, bad
config.json) becomes a one-line problem in ``Catalog.problems`` instead of an exception.

Cost: one ``open_dataset`` per dataset (≈ 4 ms per HDF5 file: metadata only) and one small
JSON read per checkpoint; the dashboard caches the catalog on ``scan_signature``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from coherence.analysis.vocabulary import ARCH_LABELS
from coherence.errors import CheckpointError, CoherenceError
from coherence.simulation.classes import CLASSES
from coherence.simulation.dataset import SPLITS, dataset_files, open_dataset, stat_signature
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import snapshots
from coherence.surrogates.registry import ARCHITECTURES, model_from_config_dict
from coherence.workspace import (
    checkpoints_dir,
    datasets_dir,
    link_out_of,
    resolve_inside,
    workspace_root,
)

ARCH_ORDER = ("unet", "vit")
CONSERVED_FAMILY = "euler"  # mass and energy responses exist for compressible Euler only


def class_order(names: Any) -> tuple[str, ...]:
    """Classes in the registry's order (CE-RP, CE-CRP, CE-RPUI, …), unknown ones after,
    alphabetically: one canonical order, so the same set always makes the same request."""
    known = list(CLASSES)
    unique = set(names)
    return tuple(sorted(unique, key=lambda c: (known.index(c) if c in known else len(known), c)))


@dataclass(frozen=True)
class DatasetEntry:
    """A checked dataset directory ``datasets/<name>``."""

    name: str  # directory name (what the URL and the sidebar use)
    well_name: str  # the files' dataset_name attribute (what checkpoints record)
    family: str  # euler | ns
    channels: tuple[str, ...]
    resolution: tuple[int, int]
    times: tuple[float, ...]
    counts: Mapping[str, Mapping[str, int]] = field(repr=False)  # split → class → trajectories
    physics: Mapping[str, float] = field(default_factory=dict)  # Δt, γ / ν (DatasetInfo.physics)
    # each test class's Δt, γ / ν (DatasetInfo.class_physics): classes may differ in γ or ν
    class_physics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # what in the files the surrogates do not assume (DatasetInfo.assumption_problems)
    problems: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        """Classes of the test split (analysis batches come from it), canonical order."""
        return class_order(self.counts.get("test", {}))

    @property
    def transitions(self) -> int:
        return len(self.times) - 1

    def n_test(self, classes: Any = None) -> int:
        """Test trajectories available in every one of ``classes`` (all classes if None)."""
        per_class = self.counts.get("test", {})
        names = self.classes if classes is None else tuple(classes)
        counts = [per_class[c] for c in names if c in per_class]
        return min(counts) if counts else 0

    @property
    def conserved(self) -> bool:
        """Whether mass and energy responses apply (compressible Euler)."""
        return self.family == CONSERVED_FAMILY


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint directory ``checkpoints/<name>`` (config only; weights not loaded)."""

    name: str
    arch: str
    family: str
    channels: tuple[str, ...]
    resolution: tuple[int, int]
    seed: int
    dataset_name: str  # dataset_name it was trained on
    model_json: str  # canonical JSON of the architecture config: the group identity
    recipe_json: str = "{}"  # and of the training recipe (ckpt.recipe_of): seeds share it
    epochs: tuple[int, ...] = ()  # training snapshots kept under epochs/NNNN (``snapshots``)
    trained_epochs: int = 0  # epochs in history.json: the last one is the weights themselves
    physics: Mapping[str, float] = field(default_factory=dict)  # what it was trained with
    classes: tuple[str, ...] = ()  # the classes it was trained on

    def fits(self, dataset: DatasetEntry) -> bool:
        """Same family, channels, grid, Δt and constants (what ``check_compatible`` demands)."""
        return (
            self.family == dataset.family
            and self.channels == dataset.channels
            and self.resolution == dataset.resolution
            and not ckpt.physics_differences(dict(self.physics), dict(dataset.physics))
        )


@dataclass(frozen=True)
class ModelGroup:
    """Checkpoints of one architecture and size (the seeds of one model), sorted by seed."""

    label: str
    arch: str
    checkpoints: tuple[str, ...]
    trained_here: bool  # every member was trained on the dataset it is grouped for


@dataclass(frozen=True)
class Catalog:
    """Everything the sidebar can offer, and why some entries were skipped."""

    root: Path
    exists: bool
    datasets: tuple[DatasetEntry, ...] = ()
    checkpoints: tuple[CheckpointEntry, ...] = ()
    problems: tuple[str, ...] = ()
    copies: Mapping[str, str] = field(default_factory=dict)  # skipped copy → the one it copies
    # dataset name → its groups, built once per scan: the sidebar asks for them per cached
    # entry, and rebuilding (every sibling's JSON parsed) took 0.17 s a rerun at 50 entries
    _groups: dict[str, tuple[ModelGroup, ...]] = field(  # not init: replace() starts afresh
        default_factory=dict, init=False, compare=False, repr=False
    )

    def dataset(self, name: str) -> DatasetEntry | None:
        return next((d for d in self.datasets if d.name == name), None)

    def checkpoint(self, name: str) -> CheckpointEntry | None:
        return next((c for c in self.checkpoints if c.name == name), None)

    def arch_of(self, names: Sequence[str]) -> str | None:
        """A group's architecture (its first seed's), None when not listed."""
        entry = self.checkpoint(names[0]) if names else None
        return entry.arch if entry is not None else None

    def groups(self, dataset: DatasetEntry | str) -> tuple[ModelGroup, ...]:
        """Model groups that fit ``dataset``: trained on it first, then UNet, ViT, others."""
        entry = self.dataset(dataset) if isinstance(dataset, str) else dataset
        if entry is None:
            return ()
        if entry.name not in self._groups:  # one dict per scan (a new scan, a new Catalog)
            fitting = [c for c in self.checkpoints if c.fits(entry)]
            self._groups[entry.name] = model_groups(fitting, entry.well_name)
        return self._groups[entry.name]

    def group_of(self, dataset: DatasetEntry | str, checkpoint: str) -> ModelGroup | None:
        return next((g for g in self.groups(dataset) if checkpoint in g.checkpoints), None)


def _label_fields(model_json: str, recipe_json: str | None = None) -> dict[str, Any]:
    """The architecture's fields, ``config`` flattened (``{"arch", "config": {…}, "preset"}``
    as checkpoints store it), so a label names ``base_width=8``, not a whole dict; then, with
    ``recipe_json``, the training recipe's (``epochs=6``)."""
    data = json.loads(model_json)
    fields = {k: v for k, v in data.items() if k != "config"}
    if isinstance(data.get("config"), dict):
        fields.update(data["config"])
    return fields | (json.loads(recipe_json) if recipe_json is not None else {})


def _group_label(
    key: tuple[str, str, str], keys: list[tuple[str, str, str]], most: int | None, recipe: bool
) -> str:
    """'ViT (epochs=6)': the architecture, and where it has sibling groups (``keys`` of its
    architecture) the first ``most`` fields (None: all) in which this group differs from any
    of them: of the architecture alone, or with ``recipe`` of the training recipe too; a
    group whose checkpoints record no recipe (imported) says so."""
    arch, model_json, recipe_json = key
    label = ARCH_LABELS.get(arch, arch)
    if len(keys) < 2:
        return label
    config = _label_fields(model_json, recipe_json if recipe else None)
    siblings = [_label_fields(k[1], k[2] if recipe else None) for k in keys]
    fields = sorted({k for sibling in siblings for k in sibling} - {"arch"})
    # said only where it tells this group apart: no sibling lacks a recipe too
    unrecorded = recipe and recipe_json == "{}" and all(k[2] != "{}" for k in keys if k != key)
    shown = ["training not recorded"] if unrecorded else []
    shown += [
        f"{k}={config[k]}"
        for k in fields
        if k in config and any(s.get(k) != config[k] for s in siblings)
    ]
    return f"{label} ({', '.join(shown[:most])})" if shown else label


def model_groups(entries: list[CheckpointEntry], dataset_name: str) -> tuple[ModelGroup, ...]:
    """Group by (architecture, architecture config, training recipe): the seeds of one model
    (ViTs trained for 6 and 12 epochs had joined one group, their difference read as the
    spread across seeds); label by the fields that differ."""
    by_key: dict[tuple[str, str, str], list[CheckpointEntry]] = {}
    for entry in entries:
        by_key.setdefault((entry.arch, entry.model_json, entry.recipe_json), []).append(entry)
    keys_per_arch: dict[str, list[tuple[str, str, str]]] = {}
    for key in by_key:
        keys_per_arch.setdefault(key[0], []).append(key)
    # the architecture's own differences first (a narrower UNet is "UNet (base_width=4)"),
    # the recipe's where they alone tell groups apart; the sidebar picks a group by its
    # label, so where two still read alike: every field, then a checkpoint's name as well
    labels = {key: _group_label(key, keys_per_arch[key[0]], 2, False) for key in by_key}
    for relabel in (
        lambda key, _: _group_label(key, keys_per_arch[key[0]], 2, True),
        lambda key, _: _group_label(key, keys_per_arch[key[0]], None, True),
        lambda key, label: f"{label} [{min(c.name for c in by_key[key])}]",
    ):
        alike = {label for label in labels.values() if list(labels.values()).count(label) > 1}
        labels = {k: relabel(k, v) if v in alike else v for k, v in labels.items()}
    groups = []
    for key, members in by_key.items():
        members = sorted(members, key=lambda c: (c.seed, c.name))
        groups.append(
            ModelGroup(
                label=labels[key],
                arch=key[0],
                checkpoints=tuple(c.name for c in members),
                trained_here=all(c.dataset_name == dataset_name for c in members),
            )
        )
    rank = {a: i for i, a in enumerate(ARCH_ORDER)}
    groups.sort(key=lambda g: (not g.trained_here, rank.get(g.arch, len(rank)), _natural(g.label)))
    return tuple(groups)


def _natural(label: str) -> tuple[tuple[int, float, str], ...]:
    """A label's sort key with its numbers as numbers: 'epochs=2' before 'epochs=12' and
    'lr=5e-05' before 'lr=0.0001' (a string sort put 1, 12, 2). Numbers are the split's
    captured parts (odd positions), so no other character is ever read as one."""
    parts = _NUMBER.split(label)
    return tuple(
        (0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(parts) if part
    )


# unsigned: a hyphen in a name ('vit-2', 'vit-10') is no minus sign
_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)")


def _entries(parent: Path, root: Path, problems: list[str]) -> list[Path]:
    """Visible subdirectories of ``parent`` that resolve inside the workspace."""
    if not parent.is_dir():
        return []
    out = []
    for path in sorted(parent.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            out.append(resolve_inside(root, path))
        except CoherenceError:
            problems.append(f"{path.relative_to(root)}: points outside the workspace; skipped")
    return out


def _dataset_entry(name: str, path: Path) -> DatasetEntry:
    info = open_dataset(path)
    counts = {
        split: MappingProxyType({c: m.n_trajectories for c, m in info.files[split].items()})
        for split in SPLITS
        if split in info.files
    }
    return DatasetEntry(
        name=name,
        well_name=info.name,
        family=info.family.value,
        channels=tuple(info.channels),
        resolution=(info.height, info.width),
        times=tuple(float(t) for t in info.times),
        counts=MappingProxyType(counts),
        physics=MappingProxyType(info.physics("test", info.classes)),
        class_physics=MappingProxyType(
            {c: MappingProxyType(p) for c, p in info.class_physics("test").items()}
        ),
        problems=tuple(info.assumption_problems),
    )


def _check_weights(path: Path, config: ckpt.CheckpointConfig) -> None:
    """Refuse weights that ``checkpoint.load`` would refuse, reading only the header: not a
    safetensors file (empty, truncated, garbage), or, for a built-in architecture, tensor
    names or shapes other than the config's model has (built on the meta device: no
    memory, no code of a custom architecture imported). Why: a checkpoint the catalog lists
    can be chosen by default, and a planted broken one must not take over the first page."""
    weights = path / ckpt.WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as file:
            shapes = {k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{ckpt.WEIGHTS_FILE} is not a readable safetensors file ({exc}); re-save it"
        ) from None
    if config.arch not in ARCHITECTURES:
        return
    with torch.device("meta"):
        model = model_from_config_dict(config.model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != expected:
        differ = sorted(set(shapes) ^ set(expected)) or sorted(
            k for k in expected if shapes[k] != expected[k]
        )
        raise CheckpointError(
            f"{ckpt.WEIGHTS_FILE} does not match the architecture in {ckpt.CONFIG_FILE} "
            f"(first difference: {differ[0]}); re-save the checkpoint's files together"
        )


def _checkpoint_entry(name: str, path: Path) -> CheckpointEntry:
    config = ckpt.read_config(path)  # also refuses a directory without weights
    _check_weights(path, config)
    trained = ckpt.trained_epochs(path)
    return CheckpointEntry(
        name=name,
        arch=config.arch,
        family=config.family,
        channels=tuple(config.channels),
        resolution=tuple(config.resolution),
        seed=config.seed,
        dataset_name=str(config.dataset.get("name", "")),
        model_json=json.dumps(config.model, sort_keys=True),
        recipe_json=json.dumps(ckpt.recipe_of(config, trained), sort_keys=True),
        epochs=tuple(snapshots.list_snapshots(path)),
        trained_epochs=trained,
        physics=MappingProxyType(ckpt.recorded_physics(config.dataset.get("physics"))),
        classes=config.classes,
    )


# each workspace's entries as its last scan read them, by the stats of the files that decide
# them (``_entry_files``): the dashboard rescans whenever any file changed (a training run
# writes a snapshot per epoch), and rereading every Well file and checkpoint of a study's
# workspace then cost ~20 ms an entry
_last_scan: dict[Path, dict[tuple, DatasetEntry | CheckpointEntry]] = {}


def scan_workspace(workspace: str | os.PathLike | None = None) -> Catalog:
    """List and check every dataset and checkpoint of the workspace (never raises on a bad
    entry: it is skipped and explained in ``problems``). An entry whose files have the same
    sizes and times as at the last scan is taken from it, not read again."""
    root = workspace_root(workspace)
    if not root.is_dir():
        return Catalog(root=root, exists=False)
    problems: list[str] = []
    datasets, checkpoints = [], []
    before, read = _last_scan.get(root, {}), {}

    def entry(kind: str, path: Path, make: Callable[[str, Path], Any]) -> Any:
        if link := link_out_of(root, path):
            raise CoherenceError(f"{link} points outside the workspace; skipped")
        signature = (kind, path.name, stat_signature(_entry_files[kind](path)))
        found = before[signature] if signature in before else make(path.name, path)
        read[signature] = found
        return found

    for path in _entries(datasets_dir(root), root, problems):
        try:
            datasets.append(entry("dataset", path, _dataset_entry))
        except (CoherenceError, OSError, KeyError, TypeError, ValueError) as error:
            problems.append(f"dataset {path.name}: {error}")
    for path in _entries(checkpoints_dir(root), root, problems):
        try:
            checkpoints.append(entry("checkpoint", path, _checkpoint_entry))
        except (CoherenceError, OSError, KeyError, TypeError) as error:
            problems.append(f"checkpoint {path.name}: {error}")
    _last_scan[root] = read  # only what is there now: a removed entry's goes
    kept, copies = _without_copies(checkpoints, checkpoints_dir(root), problems)
    return Catalog(
        root=root,
        exists=True,
        datasets=tuple(datasets),
        checkpoints=kept,
        problems=tuple(problems),
        copies=copies,
    )


def _without_copies(
    entries: list[CheckpointEntry], parent: Path, problems: list[str]
) -> tuple[tuple[CheckpointEntry, ...], dict[str, str]]:
    """Skip a checkpoint that holds the same weights as another (a backup copy under another
    name): offered both, the sidebar selected one model as two seeds, which an analysis
    refuses. Only entries of one config, seed and weights size are compared (digests from
    their manifests), so distinct seeds are never hashed; of a pair the one written first
    (weights' mtime; `cp -r` makes the copy newer) is kept, so its links keep working."""
    buckets: dict[tuple[str, int, int], list[tuple[float, str, CheckpointEntry]]] = {}
    for entry in entries:
        try:
            weights = (parent / entry.name / ckpt.WEIGHTS_FILE).stat()
        except OSError:
            continue
        key = (entry.model_json, entry.seed, weights.st_size)
        buckets.setdefault(key, []).append((weights.st_mtime, entry.name, entry))
    skipped: dict[str, str] = {}  # copy → the checkpoint it copies
    for members in buckets.values():
        if len(members) < 2:
            continue
        kept: dict[str, str] = {}  # digest → name of the first written
        for _, name, _ in sorted(members):
            try:
                digest = ckpt.weights_digest(parent / name)
            except OSError:
                continue
            if digest in kept:
                skipped[name] = kept[digest]
                problems.append(
                    f"checkpoint {name}: holds the same weights as {kept[digest]} (a copy); "
                    "skipped, so that one model is not pooled as two seeds"
                )
            else:
                kept[digest] = name
    return tuple(entry for entry in entries if entry.name not in skipped), skipped


def _checkpoint_files(entry: Path) -> list[Path]:
    """What decides a checkpoint's catalog entry: config, weights, history (its trained
    epochs), each snapshot's manifest."""
    snapshots = sorted(entry.glob("epochs/*/manifest.json"))
    files = (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.HISTORY_FILE)
    return [*(entry / name for name in files), *snapshots]


# the files that decide an entry of each kind: what the scan's reuse and the dashboard's
# rescan both watch
_entry_files: dict[str, Callable[[Path], list[Path]]] = {
    "dataset": dataset_files,
    "checkpoint": _checkpoint_files,
}


def scan_signature(workspace: str | os.PathLike | None = None) -> tuple:
    """A cheap fingerprint (names, sizes, mtimes, inodes) that changes when the catalog may:
    the cache key of the dashboard's catalog loader. A few stats per entry."""
    root = workspace_root(workspace)
    items: list[tuple] = [(str(root), root.is_dir())]
    for parent, files in (
        (datasets_dir(root), _entry_files["dataset"]),
        (checkpoints_dir(root), _entry_files["checkpoint"]),
    ):
        if not parent.is_dir():
            items.append((str(parent), None))
            continue
        for entry in sorted(parent.iterdir()):
            if entry.is_dir():
                items.extend(s for s in stat_signature(files(entry)) if s[1] is not None)
            items.append((entry.name,))
    return tuple(items)
