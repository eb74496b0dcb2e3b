"""Datasets on disk: the simulation request, open and check them, fingerprint them (they are
generated from the solvers in ``generate``, whose names are re-exported here).

Layout (The Well): ``<dataset>/data/{train,valid,test}/<class>.hdf5``, one file per class and
split, all files sharing one dataset_name, family, grid and time axis.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from coherence.digests import file_digest
from coherence.errors import RequestError, SchemaError
from coherence.lazy import lazy_exports
from coherence.simulation.families import (
    FAMILIES,
    PHYSICAL_CONSTANTS,
    SPLITS,
    Family,
    family_spec,
)
from coherence.simulation.staging import pending_commit
from coherence.simulation.wellformat import WellMetadata, read_metadata, read_well_file
from coherence.workspace import enclosing_checkpoint

MAX_RESOLUTION = 1024
MAX_TRAJECTORIES = 100_000
MAX_T_END = 10.0  # ten times the paper's horizon; the solver's steps grow with it

Progress = Callable[[int, int, str], None]  # (done, total, message)

# generation lives in ``generate`` (which imports this module), loaded on first use
_GENERATE = "coherence.simulation.generate"
__getattr__ = lazy_exports(
    __name__,
    {
        "PARALLEL_MIN_CELLS": _GENERATE,
        "evolve_states": _GENERATE,
        "generate_dataset": _GENERATE,
        "simulate_chunk": _GENERATE,
    },
)


@dataclass(frozen=True)
class SimulationRequest:
    """What `coherence simulate` builds: trajectories per class, split per class."""

    family: str
    classes: tuple[str, ...]
    trajectories: int = 32  # per class, before the split
    resolution: int = 64
    snapshots: int = 21  # uniform on [0, t_end], the first one the initial state
    t_end: float = 1.0
    seed: int = 0
    split: tuple[float, float, float] = (0.65, 0.05, 0.30)  # train, valid, test
    dataset_name: str = ""

    def __post_init__(self) -> None:
        spec = family_spec(self.family)
        from coherence.simulation.classes import get_class

        if not self.classes:
            raise RequestError("classes is empty; name at least one initial-condition class")
        for name in self.classes:
            ic = get_class(name)
            if ic.family is not spec.family:
                raise RequestError(
                    f"class {name!r} belongs to family {ic.family.value!r}, not "
                    f"{spec.family.value!r}; CE and NS are never mixed in one dataset"
                )
        if len(set(self.classes)) != len(self.classes):
            raise RequestError(f"classes {','.join(self.classes)} name a class twice")
        if not 3 <= self.trajectories <= MAX_TRAJECTORIES:
            raise RequestError(
                f"trajectories={self.trajectories}: need 3..{MAX_TRAJECTORIES} per class so "
                "that train, valid and test each get at least one"
            )
        if not 8 <= self.resolution <= MAX_RESOLUTION or self.resolution % 8:
            raise RequestError(
                f"resolution={self.resolution}: use a multiple of 8 between 8 and "
                f"{MAX_RESOLUTION} (the demo surrogates downsample by up to 8; the paper-preset "
                "UNet by 16, so its data needs a multiple of 16)"
            )
        if not 2 <= self.snapshots <= 10_000:
            raise RequestError(f"snapshots={self.snapshots}: need between 2 and 10000")
        if not (np.isfinite(self.t_end) and self.t_end > 0):
            raise RequestError(f"t_end={self.t_end}: must be a positive number")
        if self.t_end > MAX_T_END:  # 1e30 ran at 0 % until interrupted
            raise RequestError(
                f"t_end={self.t_end:g}: at most {MAX_T_END:g} (the paper's data span t ∈ [0, 1], "
                "and the solver's steps grow with t_end)"
            )
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise RequestError(f"split={self.split}: three non-negative fractions summing to 1")

    @property
    def name(self) -> str:
        return self.dataset_name or f"{Family(self.family).value}_{self.resolution}"

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.t_end, self.snapshots)

    def to_dict(self) -> dict:
        return asdict(self)


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Trajectories per split: rounded fractions, each split at least one, summing to n."""
    n_valid = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_train = n - n_valid - n_test
    if n_train < 1:
        raise RequestError(f"{n} trajectories cannot fill train, valid and test; use at least 3")
    return n_train, n_valid, n_test


def class_seed(seed: int, class_name: str) -> int:
    """A per-class seed that does not change when other classes are added or removed."""
    digest = hashlib.sha256(f"{seed}:{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class DatasetInfo:
    """A checked dataset: every file shares one name, family, grid and time axis."""

    root: Path
    name: str
    family: Family
    height: int
    width: int
    times: np.ndarray = field(repr=False)
    files: dict[str, dict[str, WellMetadata]] = field(repr=False)  # split -> class -> meta

    @property
    def classes(self) -> list[str]:
        names = {c for per_class in self.files.values() for c in per_class}
        return sorted(names)

    @property
    def channels(self) -> tuple[str, ...]:
        return FAMILIES[self.family].channels

    @property
    def open_boundaries(self) -> bool:
        """Whether a file has open boundaries (imported with --allow-open, or a folder of
        one's own): training says that its models are periodic."""
        return any("open" in meta.bc_types for meta in self._metas())

    @property
    def assumption_problems(self) -> list[str]:
        """What in these files the surrogates do not assume: boundaries other than periodic
        or open, snapshots not evenly spaced. Training refuses such a dataset, and analysis
        warns (a dataset that opened before these checks stays readable, its models too)."""
        walls: dict[str, list[Path]] = {}  # one line per reason: six files said it six times
        for meta in self._metas():
            if reason := boundary_problem(meta.bc_types):
                walls.setdefault(reason, []).append(meta.path)
        problems = [f"{_files_named(paths, self.root)}: {why}" for why, paths in walls.items()]
        first = next(iter(self._metas()), None)
        if first is not None and (uneven := uneven_times(first.path, self.times)):
            problems.append(uneven)  # every file shares the time axis (open_dataset)
        return problems

    def _metas(self) -> list[WellMetadata]:
        return [m for per_class in self.files.values() for m in per_class.values()]

    def file(self, split: str, class_name: str) -> WellMetadata:
        """The metadata of one split/class file, or a RequestError listing what exists."""
        if split not in self.files:
            raise RequestError(
                f"dataset {self.root} has no '{split}' split; it has: {', '.join(self.files)}; "
                f"import a {split} file into it (coherence import … --out {self.root}; for The "
                f"Well, the {split}/ file of the same name)"
            )
        per_class = self.files[split]
        if class_name not in per_class:
            raise RequestError(
                f"class {class_name!r} is not in the {split} split of {self.root}; available: "
                f"{', '.join(sorted(per_class))}"
            )
        return per_class[class_name]

    def load(
        self,
        split: str,
        class_name: str,
        trajectories: Sequence[int] | None = None,
        steps: slice | None = None,
    ) -> np.ndarray:
        """States [B, T, F, H, W] of one class in one split."""
        states, _ = read_well_file(
            self.file(split, class_name).path, trajectories=trajectories, steps=steps
        )
        return states

    def physics(self, split: str, classes: Sequence[str]) -> dict[str, float]:
        """What a one-step surrogate is tied to beyond channels and grid: the snapshot
        spacing ``dt`` and the physical constants of the files (gamma, nu: of the first of
        ``classes`` in ``split``, or of any file there). Recorded with a checkpoint and
        compared when it meets a dataset (``checkpoint.check_compatible``)."""
        out = {"dt": float(self.times[1] - self.times[0])} if len(self.times) > 1 else {}
        per_class = self.files.get(split, {})
        meta = next((per_class[c] for c in classes if c in per_class), None)
        if meta is None and per_class:
            meta = next(iter(per_class.values()))
        return out | (dict(meta.scalars) if meta is not None else {})

    def class_physics(self, split: str) -> dict[str, dict[str, float]]:
        """``physics`` of each class of ``split``: classes may differ in γ or ν (The Well's
        one class per γ and gas), and a checkpoint is checked against each class it meets."""
        return {name: self.physics(split, [name]) for name in self.files.get(split, {})}

    def fingerprint(self, split: str | None = None, classes: Sequence[str] | None = None) -> str:
        """Content hash of the files (optionally one split / some classes) for cache keys."""
        paths = [
            meta.path
            for s, per_class in sorted(self.files.items())
            if split is None or s == split
            for c, meta in sorted(per_class.items())
            if classes is None or c in classes
        ]
        return files_fingerprint(paths)


WELL_SUFFIXES = (".hdf5", ".h5")


def dataset_files(root: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The Well files of a dataset (``data/<split>/<class>.hdf5`` or ``.h5``), one split or
    all, sorted: the one definition every reader, cache key and signature uses."""
    data_dir = Path(root) / "data"
    splits = SPLITS if split is None else (split,)
    return sorted(
        path
        for s in splits
        for suffix in WELL_SUFFIXES
        for path in (data_dir / s).glob(f"*{suffix}")
        if not path.name.startswith(".")
    )


def stat_signature(paths: Sequence[str | os.PathLike]) -> tuple:
    """(path, size, mtime, inode) of each file, (path, None, None, None) if missing: changes
    whenever a file is rewritten, for a few stats (the key of in-memory caches; content keys
    use ``files_fingerprint``). The inode: a file replaced by a rename (as checkpoints are
    saved) within the clock's tick, at the same size, still differs."""
    out = []
    for path in paths:
        try:
            stat = Path(path).stat()
            out.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            out.append((str(path), None, None, None))
    return tuple(out)


def open_dataset(root: str | os.PathLike) -> DatasetInfo:
    """Find and validate every ``data/<split>/<class>.hdf5`` under root; check consistency."""
    root = Path(root)
    data_dir = root / "data"
    if not data_dir.is_dir():
        swapped = (
            " This folder is a checkpoint, not a dataset (on the command line: were --data "
            "and --checkpoint swapped?)"
            if enclosing_checkpoint(root) == root.resolve()
            else ""
        )
        raise SchemaError(
            f"{root}: no 'data' directory; a Well dataset is laid out as "
            "<dataset>/data/{train,valid,test}/<class>.hdf5 (create one with `coherence "
            f"simulate`).{swapped}"
        )
    staging = pending_commit(root)
    if staging is not None:
        raise SchemaError(
            f"{root}: a write into this dataset was interrupted while committing "
            f"({staging.name}); rerun the `coherence simulate` or `coherence import` command "
            "that wrote it (it finishes the commit first)"
        )
    files: dict[str, dict[str, WellMetadata]] = {}
    for split in SPLITS:
        for path in dataset_files(root, split):
            meta = read_metadata(path)
            files.setdefault(split, {})[meta.class_name] = meta
    if not files:
        raise SchemaError(f"{data_dir}: no .hdf5 files in train/, valid/ or test/")
    metas = [m for per_class in files.values() for m in per_class.values()]
    first = metas[0]
    for meta in metas[1:]:
        for attr in ("dataset_name", "family", "height", "width"):
            if getattr(meta, attr) != getattr(first, attr):
                raise SchemaError(
                    f"{meta.path}: {attr} is {getattr(meta, attr)!r} but {first.path} has "
                    f"{getattr(first, attr)!r}; all files of one dataset must agree"
                )
        if meta.times.shape != first.times.shape or not np.allclose(meta.times, first.times):
            raise SchemaError(
                f"{meta.path}: its time axis differs from {first.path}; all files of one "
                "dataset must share the snapshot times"
            )
    _check_class_constants(files)
    return DatasetInfo(
        root=root,
        name=first.dataset_name,
        family=first.family,
        height=first.height,
        width=first.width,
        times=first.times,
        files=files,
    )


PERIODIC_OR_OPEN = ("periodic", "open")  # open: imported with --allow-open, or one's own


def _files_named(paths: Sequence[Path], root: Path) -> str:
    """One file by its path; several by their number, folder and first names."""
    if len(paths) == 1:
        return str(paths[0])
    names = [
        str(p.relative_to(root / "data")) if p.is_relative_to(root / "data") else str(p)
        for p in paths
    ]
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(paths)} files of {root} ({shown})"


def boundary_problem(bc_types: Sequence[str]) -> str | None:
    """Why the boundaries are not what the surrogates assume (None when they are periodic or
    open): a wall, or no boundary named, was refused by the importer but trained on without a
    word when the folder was given to --data directly."""
    other = sorted({t or "no bc_type" for t in bc_types if t not in PERIODIC_OR_OPEN})
    if not other and bc_types:
        return None
    return (
        f"boundaries {', '.join(other) or 'none named'}; the surrogates and responses "
        "assume a periodic domain: use data with periodic boundaries (for The Well's Euler "
        "data, its _periodicBC files)"
    )


def even_tolerance(times: np.ndarray, eps: float = 1.2e-7) -> float:
    """How far apart a clock's steps may lie and still be one Δt: 1 % of the step (a clock
    written rounded, to 3 decimals at Δt ≈ 0.17, was refused at 0.1 %) or the stored type's
    rounding (a float16 clock on [0, 1] is even to ≈ 1e-2 Δt), whichever is larger. Uneven
    clocks seen so far differ by a third (Δt 0.015 beside 0.02)."""
    times = np.asarray(times, dtype=np.float64)
    return max(1e-2 * float(np.mean(np.diff(times))), 8 * eps * float(np.abs(times).max()))


def uneven_times(path: Path, times: np.ndarray, eps: float = 1.2e-7) -> str | None:
    """Why ``times`` is not one constant Δt (None when it is): a surrogate steps by one Δt,
    and a checkpoint records the first step as its Δt (uneven snapshots were trained on
    without a word). ``eps``: the stored type's (float32 by default), whose rounding the
    tolerance allows: float32 times on [0, 1.5] are even to ≈ 1e-7."""
    times = np.asarray(times, dtype=np.float64)
    steps = np.diff(times)
    if steps.size < 2 or np.ptp(steps) <= even_tolerance(times, eps):
        return None
    shown = ", ".join(f"{d:.4g}" for d in steps[:6]) + (", …" if steps.size > 6 else "")
    return (
        f"{path}: its snapshots are not evenly spaced in time (steps {shown}); the "
        "surrogates step by one constant Δt: resample the trajectories to a constant "
        "Δt, or keep only an evenly spaced run of snapshots"
    )


def _check_class_constants(files: dict[str, dict[str, WellMetadata]]) -> None:
    """One class's files agree on their physical constants (γ, ν) across splits: classes
    may differ (The Well's one class per γ and gas), but a test file of γ = 1.67 beside a
    train file of 1.4 was analysed with the model trained at 1.4, without a word."""
    seen: dict[str, WellMetadata] = {}
    for per_class in files.values():
        for name, meta in per_class.items():
            first = seen.setdefault(name, meta)
            for key in PHYSICAL_CONSTANTS:
                value, other = meta.scalars.get(key), first.scalars.get(key)
                if None not in (value, other) and not math.isclose(value, other, rel_tol=1e-5):
                    raise SchemaError(
                        f"{meta.path}: {key} is {value:g} but {first.path} (the same class) "
                        f"has {other:g}; a class's files must agree on its constants across "
                        "splits: re-import or re-simulate the file that is wrong"
                    )


def files_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """One digest over several files' contents and their split/file names (order-independent)."""
    digest = hashlib.sha256()
    entries = sorted(f"{Path(p).parent.name}/{Path(p).name}:{file_digest(p)}" for p in paths)
    for entry in entries:
        digest.update(entry.encode())
    return digest.hexdigest()
