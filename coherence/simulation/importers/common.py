"""What the importers share: physics checks, split plans, the target check, block streaming.

Every refusal is a SchemaError/RequestError naming the source file (and trajectory) and the fix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coherence.errors import CoherenceError, RequestError, SchemaError
from coherence.resources import free_disk, free_memory, size_text
from coherence.simulation.dataset import (
    SPLITS,
    class_seed,
    dataset_files,
    open_dataset,
    split_counts,
)
from coherence.simulation.families import FAMILIES, Family
from coherence.simulation.staging import Stage
from coherence.simulation.wellformat import WellWriter
from coherence.wording import plural

ByteProgress = Callable[[int, int, str], None]  # (bytes read, bytes to read, message)
Warn = Callable[[str], None]
BLOCK_BYTES = 64 * 2**20  # source bytes per block: memory stays bounded whatever N is
GAMMA_TOLERANCE = 0.01
# relative scatter of the cells around p = (γ̂ − 1) e: float32 round-off gives ≈ 1e-7, a
# density↔pressure swap ≈ 0.16; room left for data averaged onto a coarser grid after the
# fact (p and E averaged apart break the identity where the velocity varies within a cell)
GAMMA_SCATTER = 0.05
PAIRING_RATIO = 0.1  # one axis pairing must have < 10 % of the other's divergence


# ---------------------------------------------------------------------------------------------
# room: checked before anything is written

DISK_MARGIN = 8 * 2**20  # HDF5 metadata and the provenance, beside 1 % of the data's size


def room_needed(data_bytes: int) -> int:
    """Free bytes an import of ``data_bytes`` of arrays needs: the arrays, their HDF5
    metadata and the file system's share (a fixed 64 MB margin refused a 21 MB import on a
    disk with 84 MB free)."""
    return data_bytes + DISK_MARGIN + data_bytes // 100


def check_room(
    out: str | Path,
    n: int,
    written_per_trajectory: int,
    what: str,
    *,
    files: int = 1,
    minimum: int = 1,
) -> None:
    """Refuse an import the disk under ``out`` cannot hold, before writing: a full disk used
    to stop it half way (the staging is removed, but an hour is lost) with h5py's traceback.
    The hint's --limit caps each of ``files`` source files, and is offered only from
    ``minimum`` trajectories (PDEgym needs 3 for its splits; 1 everywhere else)."""
    per = max(written_per_trajectory, 1)
    needed, free = room_needed(n * per), free_disk(out)
    if needed <= free:
        return
    total = max(0, (free - DISK_MARGIN) * 100 // (101 * per))  # room_needed(total · per) ≤ free
    while total > 0 and room_needed(total * per) > free:  # the estimate, made exact
        total -= 1
    while room_needed((total + 1) * per) <= free:
        total += 1
    fits = total // max(files, 1)
    elsewhere = "free space there, or import into a workspace on a larger disk"
    if fits >= minimum:
        fix = f"import fewer trajectories (--limit {fits} fits), {elsewhere}"
    elif total >= minimum:  # --limit caps each file: even --limit 1 takes one from each
        fix = (
            f"import fewer files ({total} trajectories fit, but --limit takes at least one "
            f"from each of the {files}), {elsewhere}"
        )
    elif minimum == 1:
        fix = f"not even one trajectory fits: {elsewhere}"
    else:
        fix = f"not even the {minimum} trajectories an import needs fit: {elsewhere}"
    raise RequestError(
        f"{out}: importing {what} ({plural(n, 'trajectory', 'trajectories')}) writes ≈ "
        f"{size_text(n * per)} and needs "
        f"≈ {size_text(needed)} free with its metadata, but {size_text(free)} are free on "
        f"that disk; {fix}"
    )


def check_trajectory_fits(
    src: str | Path, shape: tuple[int, ...], held_bytes: int, published: str
) -> None:
    """Refuse a source of which one trajectory's working set (``held_bytes``: what the
    importer holds at once for it) cannot be held in memory, naming its shape, instead of
    numpy's allocation error."""
    free = free_memory()
    if held_bytes <= free:
        return
    dims = " × ".join(str(d) for d in shape)
    raise SchemaError(
        f"{src}: one trajectory is {dims} values and importing it holds ≈ "
        f"{size_text(held_bytes)} at once, but {size_text(free)} of memory are free; check "
        f"that this is the file you meant (its time axis or grid is far beyond the published "
        f"{published}), or import on a machine with more memory"
    )


# ---------------------------------------------------------------------------------------------
# physics checks


def _which(first: int, row: int, file_first: int | None) -> str:
    """'trajectory 5', or in a shard 'trajectory 5 (row 0 of this file)'."""
    local = "" if file_first is None else f" (row {file_first + row} of this file)"
    return f"trajectory {first + row}{local}"


def check_finite_positive(
    source: str,
    first: int,
    named: dict[str, np.ndarray],
    positive: tuple[str, ...],
    *,
    file_first: int | None = None,
    time_offset: int = 0,
    one_of_many: bool = False,
) -> None:
    """Refuse NaN/inf anywhere and non-positive values in ``positive`` fields.

    Arrays are [b, T, ...]; ``first`` is the index of row 0 among all the source's trajectories
    (what --limit counts), ``file_first`` its row in ``source`` when that is one shard,
    ``time_offset`` the snapshot index of axis 1's first entry (a time block's start);
    ``one_of_many``: ``source`` is one of several files that --limit caps each of.
    """
    for name, values in named.items():
        bad = ~np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise SchemaError(
                f"{source}: {_which(first, row, file_first)} has NaN or inf in {name}; the "
                f"file is damaged: download it again{_limit_hint(first + row, one_of_many)}"
            )
    rows = next(iter(named.values())).shape[0] if named else 0
    for row in range(rows):  # every field exactly 0: never written (no family's real state)
        zero = _zero_snapshots(named, row) + time_offset
        if zero.size:
            shown = ", ".join(str(t) for t in zero[:5]) + (", …" if zero.size > 5 else "")
            raise SchemaError(
                f"{source}: {_which(first, row, file_first)} is all zeros in every field at "
                f"snapshot(s) {shown}: data never written (a truncated or partly downloaded "
                "file); download it again"
            )
    for name in positive:
        values = named[name]
        bad = ~(values > 0).reshape(values.shape[0], -1).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            which = _which(first, row, file_first)
            raise SchemaError(
                f"{source}: {which} has {name} ≤ 0 (min {float(values[row].min()):.3g}); a "
                f"physical state has positive {name}: check that the channels are in the "
                f"documented order{_limit_hint(first + row, one_of_many)}"
            )


def _limit_hint(index: int, one_of_many: bool = False) -> str:
    """How to import the trajectories before a bad one (none before the first: --limit 0
    imports nothing); where --limit caps every file given (The Well's importer), that file
    alone, or the others would be cut too."""
    if index <= 0:
        return ""
    if one_of_many:
        return f", or import this file alone with --limit {index} (--limit caps every file given)"
    return f", or import the trajectories before it with --limit {index}"


def _zero_snapshots(named: dict[str, np.ndarray], row: int) -> np.ndarray:
    """Indices along axis 1 (time) where every field of trajectory ``row`` is exactly 0."""
    zero = None
    for values in named.values():
        here = ~np.asarray(values[row]).reshape(values.shape[1], -1).any(axis=1)
        zero = here if zero is None else zero & here
    return np.flatnonzero(zero) if zero is not None else np.zeros(0, dtype=int)


@dataclass(frozen=True)
class GammaFit:
    """γ̂ of p = (γ − 1) e over the cells, and how far the cells are from that one line
    (‖p − (γ̂ − 1) e‖ / ‖p‖): a density↔pressure swap keeps γ̂ near 1.4 where ρ and p have
    similar ranges, but scatters the cells around it (0.16 on such data, 4e-8 when right)."""

    estimate: float
    residual: float


def gamma_hat(
    rho: np.ndarray, mx: np.ndarray, my: np.ndarray, p: np.ndarray, energy: np.ndarray
) -> GammaFit:
    """γ̂ = 1 + p / e with e = E − |m|²/(2ρ), fitted by least squares over all cells."""
    rho, p = rho.astype(np.float64), p.astype(np.float64)
    internal = (
        energy.astype(np.float64)
        - 0.5 * (mx.astype(np.float64) ** 2 + my.astype(np.float64) ** 2) / rho
    )
    slope = float(np.sum(p * internal) / max(float(np.sum(internal**2)), 1e-300))
    scatter = float(np.linalg.norm(p - slope * internal) / max(float(np.linalg.norm(p)), 1e-300))
    return GammaFit(1.0 + slope, scatter)


def check_gamma(
    source: str,
    first: int,
    fit: GammaFit,
    gamma: float,
    order: str,
    checks: dict,
    *,
    file_first: int | None = None,
) -> None:
    """Refuse channels that are not ``order`` with ``gamma`` (γ̂ off, or cells scattered
    around the fitted line), and record the extremes seen in ``checks``."""
    local = "" if file_first is None else f" (rows from {file_first} of this file)"
    if not abs(fit.estimate - gamma) <= GAMMA_TOLERANCE:
        raise SchemaError(
            f"{source}: trajectories from {first}{local}: γ recovered from the stored channels is "
            f"{fit.estimate:.4f}, expected {gamma} (±{GAMMA_TOLERANCE}); the channels are not "
            f"({order}) with that γ: check the variable and the dataset version"
        )
    if not fit.residual <= GAMMA_SCATTER:
        raise SchemaError(
            f"{source}: trajectories from {first}{local}: the stored channels fit "
            f"p = (γ − 1)(E − ½ρ|v|²) only to {fit.residual:.1%} (γ̂ {fit.estimate:.4f}; "
            f"consistent channels fit to float round-off, and {GAMMA_SCATTER:.0%} is allowed): "
            f"the fields are mislabelled or inconsistent (density and pressure swapped?), not "
            f"({order}): check the variable and the dataset version"
        )
    checks["gamma_hat_min"] = min(checks.get("gamma_hat_min", np.inf), fit.estimate)
    checks["gamma_hat_max"] = max(checks.get("gamma_hat_max", -np.inf), fit.estimate)
    checks["gamma_fit_residual_max"] = max(checks.get("gamma_fit_residual_max", 0.0), fit.residual)


def _spectral_derivative(field: np.ndarray, axis: int) -> np.ndarray:
    n = field.shape[axis]
    k = 2j * np.pi * np.fft.fftfreq(n, d=1.0 / n)
    shape = [1] * field.ndim
    shape[axis] = n
    return np.real(np.fft.ifft(np.fft.fft(field, axis=axis) * k.reshape(shape), axis=axis))


@dataclass(frozen=True)
class Pairing:
    """Relative periodic divergence of (u, v) for both pairings of components with axes."""

    div_as_stored: float  # u along axis -2 (named x), v along axis -1
    div_swapped: float  # u along axis -1, v along axis -2

    @property
    def verdict(self) -> str:
        """'as-stored', 'swapped' or 'ambiguous'."""
        if self.div_as_stored < PAIRING_RATIO * self.div_swapped:
            return "as-stored"
        if self.div_swapped < PAIRING_RATIO * self.div_as_stored:
            return "swapped"
        return "ambiguous"


def velocity_pairing(u: np.ndarray, v: np.ndarray) -> Pairing:
    """Which spatial axis each velocity component runs along: the divergence-free pairing.

    ``u, v`` are [..., X, Y] on the periodic unit square; derivatives are spectral.
    """
    u, v = u.astype(np.float64), v.astype(np.float64)
    du = [_spectral_derivative(u, -2), _spectral_derivative(u, -1)]
    dv = [_spectral_derivative(v, -2), _spectral_derivative(v, -1)]
    scale = np.sqrt(sum(float(np.sum(d**2)) for d in (*du, *dv))) or 1.0
    return Pairing(
        div_as_stored=float(np.linalg.norm(du[0] + dv[1])) / scale,
        div_swapped=float(np.linalg.norm(du[1] + dv[0])) / scale,
    )


# ---------------------------------------------------------------------------------------------
# splits


@dataclass(frozen=True)
class SplitPlan:
    """Which split each source trajectory goes to (0 train, 1 valid, 2 test) and why."""

    split_of: np.ndarray  # int8 [n]
    label: str

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(int(np.sum(self.split_of == s)) for s in range(3))  # type: ignore[return-value]

    def rows(self) -> np.ndarray:
        """Row of each source trajectory inside its split's file (source order kept)."""
        rows = np.zeros(self.split_of.size, dtype=np.int64)
        for s in range(3):
            mask = self.split_of == s
            rows[mask] = np.arange(int(mask.sum()))
        return rows


def poseidon_split(n: int, n_published: int, valid: int = 120, test: int = 240) -> SplitPlan:
    """Poseidon's index split: test = the last 240, valid = the 120 before, train = the rest.

    Exact when all ``n_published`` trajectories are imported; on a subset (``--limit``, fewer
    shards) the same fractions of the end are used, labelled as not the published test set.
    """
    if n == n_published:
        n_valid, n_test, label = valid, test, f"poseidon: index split, test = last {test}, "
        label += f"valid = the {valid} before, train = the first {n - valid - test}"
    else:
        n_valid = max(1, round(n * valid / n_published))
        n_test = max(1, round(n * test / n_published))
        label = (
            f"poseidon-scaled: {n} of {n_published} trajectories, so the last {n_test} are "
            f"test and the {n_valid} before valid; NOT the published test set"
        )
    if n - n_valid - n_test < 1:
        raise RequestError(f"{n} trajectories cannot fill train, valid and test; use at least 3")
    split_of = np.zeros(n, dtype=np.int8)
    split_of[n - n_test - n_valid : n - n_test] = 1
    split_of[n - n_test :] = 2
    return SplitPlan(split_of, label)


def random_split(n: int, seed: int, class_name: str) -> SplitPlan:
    """A seeded 65/5/30 split (the paper's ratios; its Julia permutation is not reproducible)."""
    counts = split_counts(n, (0.65, 0.05, 0.30))
    order = np.random.default_rng(class_seed(seed, class_name)).permutation(n)
    split_of = np.zeros(n, dtype=np.int8)
    split_of[order[counts[0] : counts[0] + counts[1]]] = 1
    split_of[order[counts[0] + counts[1] :]] = 2
    label = (
        f"random: seeded 65/5/30 % split (seed {seed}) with the paper's ratios; NOT the "
        "paper's exact permutation (Julia Xoshiro, not reproducible in Python)"
    )
    return SplitPlan(split_of, label)


# ---------------------------------------------------------------------------------------------
# the target dataset


def target_dataset_name(
    stage: Stage,
    *,
    family: Family,
    nx: int,
    ny: int,
    times: np.ndarray,
    files: list[tuple[str, str]],
    overwrite: bool,
    name: str,
    command: str = "import",
    scalars: Mapping[str, float] | None = None,
) -> str:
    """Check that the new files fit the dataset at ``stage.root``; return its dataset_name.

    ``files`` are (split, file name). An import (or a simulation: ``command``) adds class
    files to an existing dataset, so family, grid, time axis and physical constants
    (``scalars``, default the family's: γ, ν) must match it; an existing class is replaced
    only on request. Why the constants: a checkpoint records one γ for its dataset, and a
    γ = 1.6 class beside γ = 1.4 ones was trained on as if it were 1.4.
    """
    root = stage.root
    existing = dataset_files(root) if root.is_dir() else []
    if not existing:
        chosen = name or root.name
        _refuse_a_taken_name(root, chosen, given=bool(name))
        return chosen
    new = "the simulation" if command == "simulate" else f"the {command}"
    info = open_dataset(root)
    problems = []
    if info.family is not family:
        problems.append(f"family {info.family.value}, {new} is {family.value}")
    if (info.height, info.width) != (ny, nx):
        problems.append(f"grid {info.width}×{info.height} (x × y), {new} is {nx}×{ny}")
    if info.times.shape != times.shape or not np.allclose(info.times, times, atol=1e-6):
        problems.append(
            f"{info.times.size} snapshots on [0, {info.times[-1]:g}], {new} has "
            f"{times.size} on [0, {times[-1]:g}]"
        )
    problems += _constant_clashes(info, FAMILIES[family].scalars | dict(scalars or {}), new)
    if problems:
        raise RequestError(
            f"{root} already holds a dataset with " + "; ".join(problems) + f"; {command} "
            "into another --out"
        )
    if name and name != info.name:
        raise RequestError(
            f"--name {name!r}: {root} is the dataset {info.name!r}; omit --name to add to it"
        )
    if not overwrite:
        for split, filename in files:
            if stage.final(split, filename).exists():
                raise RequestError(
                    f"{stage.final(split, filename)} already exists"
                    + (
                        " (the interrupted write that was finished just now completed it)"
                        if stage.finished_a_commit
                        else ""
                    )
                    + f"; pass --overwrite to replace it, or {command} into another --out"
                )
    return info.name


def _refuse_a_taken_name(root: Path, chosen: str, *, given: bool) -> None:
    """A new dataset's name must be its folder's alone: models record the dataset_name they
    were trained on, so a second folder with one name made the workspace count them as
    trained on both (an import with --name of another dataset's name)."""
    for other in sorted(root.parent.iterdir()) if root.parent.is_dir() else []:
        if other == root or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            taken = bool(dataset_files(other)) and open_dataset(other).name == chosen
        except (CoherenceError, OSError):  # a damaged neighbour is its own problem
            continue
        if taken:
            fix = "give another --name" if given else f"give --name another name than {chosen!r}"
            raise RequestError(
                f"{root}: the dataset {other} is already named {chosen!r}, and checkpoints "
                f"record the name of the dataset they were trained on; {fix}, move {other.name} "
                f"out of {root.parent}, or add to {other} instead"
            )


def refuse_sources_inside(out: str | os.PathLike, sources: list[Path]) -> None:
    """Refuse an import whose source lies in the --out dataset's own data/ folder: The Well's
    download is a dataset in our layout, and importing it into itself (with --overwrite)
    replaced the downloaded file by the converted one."""
    data = Path(out).expanduser().resolve() / "data"
    for source in sources:
        if source.expanduser().resolve().is_relative_to(data):
            raise RequestError(
                f"{source}: it lies in --out {data.parent}'s own data folder, so the import "
                "would write over its own source; choose another --out"
            )


def _constant_clashes(info, scalars: Mapping[str, float], new: str) -> list[str]:
    """The physical constants (γ, ν) where the existing files differ from the new ones."""
    found = {}
    for per_class in info.files.values():
        for meta in per_class.values():
            for key, value in meta.scalars.items():
                if key in scalars and not np.isclose(value, scalars[key], rtol=1e-6):
                    found[key] = value
    symbol = {"gamma": "γ", "nu": "ν"}
    return [
        f"{symbol.get(key, key)} = {value:g}, {new} has {scalars[key]:g}"
        for key, value in found.items()
    ]


# ---------------------------------------------------------------------------------------------
# streaming


@dataclass
class ImportReport:
    """What an import did: for the CLI's summary and the tests."""

    root: Path
    files: list[Path]
    counts: tuple[int, int, int]
    split_label: str
    swap_xy: bool
    checks: dict[str, object]
    warnings: list[str] = field(default_factory=list)
    mb_per_s: float = 0.0


@dataclass
class Meter:
    """Bytes read so far, reported through ``progress`` with the message of the moment."""

    total: int
    progress: ByteProgress | None = None
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, nbytes: int, message: str) -> None:
        self.done += nbytes
        if self.progress:
            self.progress(self.done, self.total, message)

    @property
    def mb_per_s(self) -> float:
        return self.done / 2**20 / max(time.perf_counter() - self.started, 1e-9)


class SplitWriters:
    """The three split files of one class, filled row block by row block in source order."""

    def __init__(self, plan: SplitPlan, make: Callable[[str, int], WellWriter]) -> None:
        self.plan = plan
        self.rows = plan.rows()
        self.writers = {s: make(SPLITS[s], n) for s, n in enumerate(plan.counts)}

    def put(self, first: int, fields: np.ndarray, pressure: np.ndarray | None = None) -> None:
        """Rows for source trajectories first..first+b: consecutive ones of a split are
        consecutive rows of its file, so each split gets one contiguous write."""
        split_of = self.plan.split_of[first : first + fields.shape[0]]
        for s, writer in self.writers.items():
            mask = split_of == s
            if mask.any():
                start = int(self.rows[first + int(np.argmax(mask))])
                writer.write(start, fields[mask], None if pressure is None else pressure[mask])

    def set_attrs(self, per_split: Callable[[int, np.ndarray], dict[str, object]]) -> None:
        """Root attributes for each file; ``per_split(s, source_indices)``."""
        for s, writer in self.writers.items():
            attrs = per_split(s, np.flatnonzero(self.plan.split_of == s))
            for key, value in attrs.items():
                writer.file.attrs[key] = value

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def discard(self) -> None:
        for writer in self.writers.values():
            writer._discard()


def as_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=float)
