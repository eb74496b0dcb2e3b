"""Import a PDEgym class (camlab-ethz/<CLASS>, the paper's data) into our Well layout.

Source: an assembled ``<CLASS>.nc`` or a directory of shards, read in lexicographic name order
(the order of the dataset's own assembly script, which every published index refers to).
Variable ``data`` (CE: density, vx, vy, pressure[, energy]) or ``velocity`` (NS: vx, vy,
tracer), axes (sample, time, channel, x, y), float32. CE becomes (ρ, ρu, ρv, E) with γ = 1.4,
NS becomes (u, v). Trajectories stream in blocks of ≈ 64 MB straight into the staged split
files, so memory does not grow with the class size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coherence.errors import RequestError, SchemaError
from coherence.simulation.families import EULER_GAMMA, Family
from coherence.simulation.importers.common import (
    BLOCK_BYTES,
    ByteProgress,
    ImportReport,
    Meter,
    SplitPlan,
    SplitWriters,
    Warn,
    as_json,
    check_finite_positive,
    check_gamma,
    check_room,
    check_trajectory_fits,
    gamma_hat,
    poseidon_split,
    random_split,
    refuse_sources_inside,
    target_dataset_name,
    velocity_pairing,
)
from coherence.simulation.importers.pdegym_source import (
    CLASSES,
    PUBLISHED,
    PUBLISHED_SHARDS,
    PUBLISHED_SNAPSHOTS,
    VARIABLE,
    PdegymSource,
    Shard,
    class_family,
    open_source,
    shard_paths,
)
from coherence.simulation.importers.sniff import open_hdf5, read_errors
from coherence.simulation.staging import Stage, dataset_transaction
from coherence.simulation.wellformat import WellWriter

__all__ = [
    "CLASSES",
    "PUBLISHED",
    "VARIABLE",
    "PdegymSource",
    "Shard",
    "class_family",
    "import_pdegym",
    "open_source",
    "shard_paths",
]

CE_ORDER = "density, velocity x, velocity y, pressure, energy"
LICENCE = "CC-BY-NC-4.0"
SPLIT_MODES = ("poseidon", "random")
SWAP_MODES = ("auto", "no", "yes")
GAMMA_STRIDE = 4


def _blocks(source: PdegymSource, limit: int):
    """(global index of row 0, shard, local start, block) in source order, ≈ BLOCK_BYTES each."""
    per_block = max(1, BLOCK_BYTES // source.trajectory_bytes)
    first = 0
    for file_index, shard in enumerate(source.shards):
        with open_hdf5(shard.path) as f:
            ds = f[source.variable]
            for start in range(0, shard.n, per_block):
                stop = min(start + per_block, shard.n, start + limit - first)
                if stop <= start:
                    return
                with read_errors(shard.path):
                    block = np.asarray(ds[start:stop], dtype=np.float32)
                yield first, file_index, start, block
                first += stop - start


def _convert_ce(
    source: PdegymSource,
    where: str,
    first: int,
    block: np.ndarray,
    checks: dict,
    file_first: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(fields, pressure) of a block; ``first``: its first trajectory's index in the class
    (what --limit counts), ``file_first``: its row in ``where`` when that is one shard."""
    rho, u, v, p = (block[:, :, c] for c in range(4))
    if source.n_channels == 5:
        energy = block[:, :, 4]
    else:
        energy = (p / (EULER_GAMMA - 1.0) + 0.5 * rho * (u * u + v * v)).astype(np.float32)
    check_finite_positive(
        where,
        first,
        {"density": rho, "pressure": p, "energy": energy, "velocity": block[:, :, 1:3]},
        ("density", "pressure"),
        file_first=file_first,
    )
    if source.n_channels == 5:
        # fitted on every GAMMA_STRIDE-th cell in x and y: a wrong channel order moves γ̂ far,
        # and the float64 fit over every cell would cost a third of the import
        cells = (..., slice(None, None, GAMMA_STRIDE), slice(None, None, GAMMA_STRIDE))
        r, uu, vv = rho[cells], u[cells], v[cells]
        fit = gamma_hat(r, r * uu, r * vv, p[cells], energy[cells])
        check_gamma(where, first, fit, EULER_GAMMA, CE_ORDER, checks, file_first=file_first)
    fields = np.stack([rho, rho * u, rho * v, energy], axis=2)
    return fields, p


# a relative divergence above this, for both pairings, is no incompressible velocity: a
# solver's is ≈ 1e-6, a random smooth field's ≈ 0.7
NOT_SOLENOIDAL = 0.3


def _pairing_swap(
    source: PdegymSource, block: np.ndarray, swap_xy: str, checks: dict, warn: Warn
) -> bool:
    """Decide --swap-xy from the first block (NS: the divergence-free pairing)."""
    if source.family is not Family.NS:
        checks["velocity_axis_pairing"] = "not checked (CE is not divergence-free)"
        if swap_xy == "auto":
            return False
        return swap_xy == "yes"
    pairing = velocity_pairing(block[:, :, 0], block[:, :, 1])
    checks["divergence_as_stored"] = pairing.div_as_stored
    checks["divergence_swapped"] = pairing.div_swapped
    checks["velocity_axis_pairing"] = pairing.verdict
    detected = pairing.verdict == "swapped"
    if min(pairing.div_as_stored, pairing.div_swapped) > NOT_SOLENOIDAL:
        warn(  # said as what it is, not only as axes the data could not tell apart
            f"{source.shards[0].path}: the velocity is far from divergence-free whichever way "
            f"its axes run (relative divergence {pairing.div_as_stored:.3g} as stored, "
            f"{pairing.div_swapped:.3g} swapped; an incompressible flow's is ≈ 0): check that "
            "the file holds a Navier–Stokes velocity on the periodic unit square"
        )
    if swap_xy == "auto":
        if pairing.verdict == "ambiguous":
            warn(
                f"{source.shards[0].path}: the periodic divergence does not tell which axis "
                f"'velocity x' runs along (relative divergence {pairing.div_as_stored:.3g} as "
                f"stored, {pairing.div_swapped:.3g} swapped); keeping the stored axes: pass "
                "--swap-xy yes if you know otherwise"
            )
        return detected
    forced = swap_xy == "yes"
    if pairing.verdict != "ambiguous" and forced != detected:
        warn(
            f"--swap-xy {swap_xy} contradicts the data: the velocity is divergence-free "
            f"{'with' if detected else 'without'} swapping x and y (relative divergence "
            f"{pairing.div_as_stored:.3g} as stored, {pairing.div_swapped:.3g} swapped); "
            "use --swap-xy auto unless you are sure"
        )
    return forced


@dataclass(frozen=True)
class _Options:
    """The choices of one import, checked before any file is opened."""

    limit: int | None
    split: str
    seed: int
    keep_pressure: bool
    swap_xy: str
    overwrite: bool
    name: str

    def __post_init__(self) -> None:
        if self.split not in SPLIT_MODES:
            raise RequestError(f"--split {self.split!r}: choose one of {', '.join(SPLIT_MODES)}")
        if self.swap_xy not in SWAP_MODES:
            raise RequestError(f"--swap-xy {self.swap_xy!r}: choose one of {', '.join(SWAP_MODES)}")
        if self.limit is not None and self.limit < 3:
            raise RequestError(f"--limit {self.limit}: need at least 3 (train, valid and test)")


def _plan(src: str | os.PathLike, source: PdegymSource, options: _Options) -> tuple[int, SplitPlan]:
    """How many trajectories to import and which split each one goes to."""
    n = source.total if options.limit is None else min(options.limit, source.total)
    if n < 3:
        raise SchemaError(
            f"{src}: holds {n} trajectories; an import needs at least 3, one each for train, "
            "valid and test"
        )
    plan: SplitPlan = (
        poseidon_split(n, PUBLISHED[source.family])
        if options.split == "poseidon"
        else random_split(n, options.seed, source.class_name)
    )
    return n, plan


def _initial_checks(source: PdegymSource) -> dict[str, object]:
    """The checks recorded in the provenance before any block is read (blocks add γ̂ and the
    velocity axis pairing)."""
    checks: dict[str, object] = {
        "container": "HDF5/netCDF4",
        "variable": source.variable,
        "source_dtype": source.dtype,
        "shape": [source.total, source.n_steps, source.n_channels, source.nx, source.ny],
        "finite": True,
        "positive_density_pressure": (
            True if source.family is Family.EULER else "not applicable (no density or pressure)"
        ),
    }
    if source.family is Family.EULER:
        checks["gamma_expected"] = EULER_GAMMA
        checks["gamma_fit"] = (
            f"least squares over every {GAMMA_STRIDE}th cell in x and y, per block"
            if source.n_channels == 5
            else "not checked: 4-channel file, energy computed with γ = 1.4"
        )
    return checks


def _write_blocks(
    writers: SplitWriters,
    blocks: Iterator[tuple[int, int, int, np.ndarray]],
    source: PdegymSource,
    n: int,
    swap: bool,
    keep_pressure: bool,
    checks: dict,
    meter: Meter,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert, check and store every block; returns each trajectory's shard and row there."""
    file_index = np.zeros(n, dtype=np.int32)
    local_index = np.zeros(n, dtype=np.int32)
    for first, f_index, start, block in blocks:
        b = block.shape[0]
        file_index[first : first + b] = f_index
        local_index[first : first + b] = np.arange(start, start + b)
        where = str(source.shards[f_index].path)
        # the class's index (what --limit counts) and, across shards, the row in this one
        local = start if len(source.shards) > 1 else None
        if source.family is Family.EULER:
            fields, pressure = _convert_ce(source, where, first, block, checks, local)
        else:
            fields, pressure = block[:, :, :2], None
            check_finite_positive(where, first, {"velocity": fields}, (), file_first=local)
        if swap:
            fields = np.swapaxes(fields, -1, -2)
            pressure = None if pressure is None else np.swapaxes(pressure, -1, -2)
        writers.put(first, fields, pressure if keep_pressure else None)
        meter.add(block.nbytes, f"{source.class_name}: {first + b}/{n} trajectories")
    return file_index, local_index


def _split_writer(
    stage: Stage, source: PdegymSource, dataset_name: str, times: np.ndarray, grid: tuple[int, int]
) -> Callable[[str, int], WellWriter]:
    """The factory of one split's staged Well file (``SplitWriters`` calls it per split)."""

    def make(split_name: str, rows: int) -> WellWriter:
        return WellWriter(
            stage.path(split_name, f"{source.class_name}.hdf5"),
            family=source.family,
            class_name=source.class_name,
            dataset_name=dataset_name,
            n_trajectories=rows,
            times=times,
            nx=grid[0],
            ny=grid[1],
        )

    return make


def snapshot_times(source: PdegymSource, note: Warn) -> np.ndarray:
    """The file's own times where its 'time' scale holds them, else the published clock:
    uniform on [0, 1], Δt = 1/(T−1). A float16 source is said: its rounding reaches the
    data (imported as float32, it stays at about 3 significant digits)."""
    published = np.linspace(0.0, 1.0, source.n_steps)
    if np.dtype(source.dtype).itemsize < 4:
        note(
            f"'{source.variable}' is {source.dtype} (published: float32): imported as float32, "
            "with the source's ≈3 significant digits"
        )
    if source.times is None:  # none held, or the published clock as stored
        if source.n_steps != PUBLISHED_SNAPSHOTS:  # [0, 1] is then an assumption: say it
            note(
                f"{source.n_steps} snapshots per trajectory (published: "
                f"{PUBLISHED_SNAPSHOTS}), and no times in the files' 'time' scale that say "
                f"otherwise: taken as uniform on [0, 1], Δt = {published[1]:g} (the published "
                f"Δt is {1 / (PUBLISHED_SNAPSHOTS - 1):g}); if the files hold another clock, "
                "write their times into the 'time' scale and import again"
            )
        return published
    times = source.times  # another clock (``pdegym_source._file_times``)
    note(
        f"snapshot times from the files' 'time' scale: t ∈ [{times[0]:g}, {times[-1]:g}], "
        f"Δt = {(times[-1] - times[0]) / (len(times) - 1):g} (the published classes: "
        f"[0, 1], Δt = {published[1]:g})"
    )
    return times


def _import_into(
    stage: Stage,
    source: PdegymSource,
    plan: SplitPlan,
    n: int,
    options: _Options,
    checks: dict,
    meter: Meter,
    note: Warn,
) -> bool:
    """Stream the first ``n`` trajectories into the staged split files; returns whether x and
    y were swapped (decided from the first block)."""
    times = snapshot_times(source, note)
    filename = f"{source.class_name}.hdf5"
    blocks = _blocks(source, n)
    first_block = next(blocks)
    swap = _pairing_swap(source, first_block[3], options.swap_xy, checks, note)
    # what was done, beside what the data said (velocity_axis_pairing is the detection: read
    # alone, "swapped" looked like the stored data were, under --swap-xy no)
    checks["axes_swapped_on_import"] = swap
    nx, ny = (source.ny, source.nx) if swap else (source.nx, source.ny)
    dataset_name = target_dataset_name(
        stage,
        family=source.family,
        nx=nx,
        ny=ny,
        times=times,
        files=[(s, filename) for s in ("train", "valid", "test")],
        overwrite=options.overwrite,
        name=options.name,
    )
    writers = SplitWriters(plan, _split_writer(stage, source, dataset_name, times, (nx, ny)))
    try:
        rows = _chain(first_block, blocks)
        file_index, local_index = _write_blocks(
            writers, rows, source, n, swap, options.keep_pressure, checks, meter
        )
        attrs = _provenance(source, plan, swap, options.keep_pressure, checks)
        writers.set_attrs(
            lambda s, idx: {
                **attrs,
                "source_file_index": file_index[idx],
                "source_index": local_index[idx],
                "pdegym_index": idx.astype(np.int32),
            }
        )
        writers.close()
    except BaseException:
        writers.discard()
        raise
    return swap


def import_pdegym(
    src: str | os.PathLike,
    out: str | os.PathLike,
    class_name: str,
    *,
    limit: int | None = None,
    split: str = "poseidon",
    seed: int = 0,
    keep_pressure: bool = False,
    swap_xy: str = "auto",
    overwrite: bool = False,
    name: str = "",
    progress: ByteProgress | None = None,
    warn: Warn | None = None,
) -> ImportReport:
    """Import one PDEgym class into ``out`` (one file per split), all or nothing.

    ``keep_pressure`` stores the source's pressure channel (CE) instead of the pressure
    recomputed from (ρ, m, E) with γ; ``swap_xy`` 'auto' transposes x and y when the NS
    velocity is divergence-free only that way.
    """
    options = _Options(limit, split, seed, keep_pressure, swap_xy, overwrite, name)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn:
            warn(message)

    refuse_sources_inside(out, [Path(src)])
    source = open_source(src, class_name)
    published = PUBLISHED_SHARDS[source.family]
    if Path(src).is_dir() and len(source.shards) < published:  # their order is not the same
        note(
            f"{src}: {len(source.shards)} of the {published} published shards; pdegym_index "
            "counts the trajectories of these shards in their name order, which is the "
            "published index only where no shard before them is missing (source_files and "
            "source_index name each trajectory's own file and row)"
        )
    n, plan = _plan(src, source, options)
    if limit is not None and limit > source.total:  # said, not silently fewer
        note(f"--limit {limit}: {src} holds {source.total} trajectories; importing all of them")
    shape = (source.n_steps, source.n_channels, source.nx, source.ny)
    # a block of whole trajectories is read, then converted: two copies of one at least
    check_trajectory_fits(src, shape, 2 * source.trajectory_bytes, "21 × 128²")
    check_room(out, n, source.trajectory_bytes, f"{class_name} from {src}", minimum=3)
    checks = _initial_checks(source)
    if source.family is Family.EULER and source.n_channels == 4:  # said, not only recorded
        note(
            f"{src}: 4 channels (no energy): the energy is computed from the pressure with "
            f"γ = {EULER_GAMMA:g}, so the γ check that catches a wrong channel order cannot "
            "run; make sure the channels are density, velocity x, velocity y, pressure"
        )
    meter = Meter(total=n * source.trajectory_bytes, progress=progress)
    with dataset_transaction(out) as stage:
        for line in stage.recovered:
            note(f"{stage.root}: {line}")
        swap = _import_into(stage, source, plan, n, options, checks, meter, note)
    filename = f"{class_name}.hdf5"
    return ImportReport(
        root=stage.root,
        files=[stage.final(s, filename) for s in ("train", "valid", "test")],
        counts=plan.counts,
        split_label=plan.label,
        swap_xy=bool(swap),
        checks=checks,
        warnings=warnings,
        mb_per_s=meter.mb_per_s,
    )


def _chain(first, rest):
    yield first
    yield from rest


def _provenance(
    source: PdegymSource, plan: SplitPlan, swap: bool, keep_pressure: bool, checks: dict
) -> dict[str, object]:
    if source.family is Family.EULER:
        energy = (
            "energy = data[:, :, 4]"
            if source.n_channels == 5
            else ("energy = pressure/(γ−1) + ½ρ|v|² (4-channel file, γ = 1.4)")
        )
        mapping = {
            "density": "data[:, :, 0]",
            "momentum_x": "data[:, :, 0] * data[:, :, 1]",
            "momentum_y": "data[:, :, 0] * data[:, :, 2]",
            "energy": energy,
            "pressure (t0 field)": "data[:, :, 3] (--keep-pressure)"
            if keep_pressure
            else "(γ−1)(E − |m|²/2ρ), recomputed; source pressure dropped",
        }
    else:
        mapping = {
            "velocity_x": "velocity[:, :, 0]",
            "velocity_y": "velocity[:, :, 1]",
            "dropped": "velocity[:, :, 2] (passive tracer)",
        }
    return {
        "source": f"PDEgym camlab-ethz/{source.class_name} (Hugging Face)",
        "source_url": f"https://huggingface.co/datasets/camlab-ethz/{source.class_name}",
        "licence": LICENCE,
        "source_files": [s.path.name for s in source.shards],
        "source_order": "shards in lexicographic name order (the dataset's assembly order)",
        "channel_mapping": as_json(mapping),
        "swap_xy": bool(swap),
        "split_rule": plan.label,
        "import_checks": as_json(checks),
        "imported_with": "coherence import pdegym",
    }
