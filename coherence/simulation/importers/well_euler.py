"""Import The Well's euler_multi_quadrants files, down-sampled by block means.

Each file (``data/<split>/euler_multi_quadrants_<BC>_gamma_<γ>_<gas>.hdf5``) becomes our
``data/<split>/<file stem>.hdf5``: one class per γ and gas. Fields are read by name (the
metadata lists them in another order). Down-sampling averages k×k blocks of the conserved
variables (ρ, ρu, ρv, E), which keeps every total exactly (× k²); the pressure is recomputed
from them with the file's γ. Open boundaries are refused unless asked: our models are periodic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from coherence.errors import RequestError, SchemaError
from coherence.simulation.dataset import PERIODIC_OR_OPEN, SPLITS, open_dataset, uneven_times
from coherence.simulation.families import Family
from coherence.simulation.importers.common import (
    BLOCK_BYTES,
    ByteProgress,
    ImportReport,
    Meter,
    Warn,
    as_json,
    check_finite_positive,
    check_gamma,
    check_room,
    check_trajectory_fits,
    gamma_hat,
    refuse_sources_inside,
    target_dataset_name,
)
from coherence.simulation.importers.sniff import open_hdf5, read_errors
from coherence.simulation.staging import Stage, dataset_transaction
from coherence.simulation.wellformat import WellWriter

LICENCE = "CC-BY-4.0"
SCALAR_FIELDS = ("density", "energy", "pressure")


def block_mean(values: np.ndarray, k: int, axes: tuple[int, int]) -> np.ndarray:
    """Mean over k×k blocks of two adjacent axes (float64 sums: totals kept to round-off)."""
    if k == 1:
        return values
    a, b = axes
    shape = list(values.shape)
    new = [*shape[:a], shape[a] // k, k, shape[b] // k, k, *shape[b + 1 :]]
    return values.astype(np.float64).reshape(new).mean(axis=(a + 1, a + 3))


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    """The HDF5 dataset ``name``, or a SchemaError naming what is there instead."""
    found = f.get(name)
    if not isinstance(found, h5py.Dataset):
        what = "missing" if found is None else f"a {type(found).__name__}, not an array"
        raise SchemaError(
            f"{path}: {name} is {what}; not a euler_multi_quadrants file as The Well publishes "
            "it (re-download it, or check that the path names the right file)"
        )
    return found


def _numbers(dataset: h5py.Dataset, path: Path, float_only: bool = False) -> None:
    """Refuse an array that does not hold numbers (strings, compounds), or integers where the
    physics needs floats (a field), naming it and its type."""
    kind = dataset.dtype.kind
    if kind not in ("f" if float_only else "fiu"):
        wanted = "floating-point" if float_only else "numeric"
        raise SchemaError(
            f"{path}: {dataset.name} holds {dataset.dtype} values, not {wanted} ones; "
            "the file is not as The Well publishes it (re-download it)"
        )


def _gamma(f: h5py.File, path: Path) -> float:
    """γ of the file: the root attribute keeps it exactly, ``scalars/gamma`` in float32
    (1.4 → 1.39999998); where both exist they must agree, and γ must be a finite number > 1."""
    scalars = _dataset(f, "scalars/gamma", path)
    _numbers(scalars, path)
    values = np.asarray(scalars[()], dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise SchemaError(f"{path}: scalars/gamma is empty; γ must come from the file")
    stored = float(values[0])
    if not np.isfinite(stored):
        raise SchemaError(f"{path}: scalars/gamma is {stored}; γ must be a finite number > 1")
    gamma = round(stored, 6)
    if "gamma" in f.attrs:
        try:
            gamma = float(np.asarray(f.attrs["gamma"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            raise SchemaError(
                f"{path}: the root attribute gamma is {f.attrs['gamma']!r}, not a number"
            ) from None
        if abs(gamma - stored) > 1e-6 * max(abs(gamma), 1.0):
            raise SchemaError(
                f"{path}: γ is {gamma} in the root attribute but {stored:.7g} in scalars/gamma; "
                "the file contradicts itself (re-download it)"
            )
    if not (np.isfinite(gamma) and gamma > 1):
        raise SchemaError(f"{path}: γ = {gamma}; an ideal gas needs a finite γ > 1")
    return gamma


def _gamma_of_name(path: Path, gamma: float, warn: Warn) -> None:
    """The Well names each gas's file by its γ (``…_gamma_1.4_Dry_air``) and the class takes
    the file's name: a renamed or mislabelled file would import under another gas's name.
    Its published γ are written in full (1.365, 1.4, 1.404: three Dry_air files 0.04 apart),
    so the name must give the file's γ to 1e-3; said, not refused."""
    named = re.search(r"gamma_([0-9]+(?:\.[0-9]+)?)", path.stem)
    if named is None:
        return
    if abs(float(named.group(1)) - gamma) > NAME_GAMMA_TOLERANCE:
        warn(
            f"{path}: its name says γ = {named.group(1)} but the file holds γ = {gamma:g} "
            "(scalars/gamma, confirmed by its channels); the class is named after the file, "
            "so rename the file to its gas's name before importing, or re-download it"
        )


NAME_GAMMA_TOLERANCE = 1e-3


def _boundaries(f: h5py.File, path: Path) -> dict[str, str]:
    """bc_type of each boundary group, lower case ('periodic', 'open', 'wall', …)."""
    groups = f.get("boundary_conditions")
    if groups is None:
        raise SchemaError(
            f"{path}: no boundary_conditions group; The Well's files name their boundaries "
            "(x_periodic, y_periodic or x_open, y_open): re-download the file"
        )
    if not isinstance(groups, h5py.Group):
        raise SchemaError(f"{path}: boundary_conditions is not a group")
    types = {}
    for name, group in groups.items():
        raw = getattr(group, "attrs", {}).get("bc_type", b"")
        types[name] = str(np.asarray(raw).astype(str)).lower()
    return types


def _times(f: h5py.File, path: Path) -> np.ndarray:
    """The time axis, checked before any data is read: ≥ 2 finite, strictly increasing values
    (found only after the whole file had streamed, and then blamed on our own staging file)."""
    dataset = _dataset(f, "dimensions/time", path)
    _numbers(dataset, path)
    times = np.asarray(dataset[()], dtype=np.float64).reshape(-1)
    if times.size < 2 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise SchemaError(
            f"{path}: dimensions/time holds {times.size} value(s) "
            f"({', '.join(f'{t:g}' for t in times[:4])}{', …' if times.size > 4 else ''}); "
            "a trajectory needs at least 2 finite, strictly increasing times"
        )
    eps = np.finfo(dataset.dtype).eps if dataset.dtype.kind == "f" else 0.0
    if problem := uneven_times(path, times, eps):  # refused here, naming the source file
        raise SchemaError(problem)
    return times


def _odd_fields(shapes: dict, momentum: tuple, snapshots: int) -> str:
    """Which fields break the common shape (the refusal listed every shape and left the
    reader to find the odd one out): those unlike the most common scalar field's shape, a
    momentum that is not that shape plus its 2 components, or a time axis of other length."""
    values = list(shapes.values())
    common = max(values, key=values.count)
    odd = [name for name, shape in shapes.items() if shape != common]
    odd += ["momentum"] if momentum != (*common, 2) else []
    said = [f"not on the common shape {common}: {', '.join(odd)}"] if odd else []
    if len(common) != 4:
        said.append("the fields should be 4-D (trajectories, snapshots, x, y)")
    elif common[1] != snapshots:
        said.append(f"dimensions/time has {snapshots} values for {common[1]} snapshots")
    text = "; ".join(said) or "the fields disagree"
    return text[0].upper() + text[1:]


def _read_info(path: Path, allow_open: bool, warn: Warn) -> dict:
    with open_hdf5(path) as f, read_errors(path):
        missing = [f"t0_fields/{n}" for n in SCALAR_FIELDS if f"t0_fields/{n}" not in f]
        missing += [] if "t1_fields/momentum" in f else ["t1_fields/momentum"]
        if missing:
            pdegym = [v for v in ("data", "velocity") if isinstance(f.get(v), h5py.Dataset)]
            hint = (
                f"; its '{pdegym[0]}' variable is PDEgym's layout: import it with `coherence "
                "import pdegym FILE --class <CLASS>`"
                if pdegym
                else ""
            )
            if not hint and isinstance(f.get("t1_fields/velocity"), h5py.Dataset):
                hint = (  # a Well file of another family needs no import
                    "; it is a Well file of velocity fields (Navier–Stokes), which needs no "
                    "import: lay it out as <dataset>/data/{train,valid,test}/<class>.hdf5 and "
                    "give the dataset folder to --data"
                )
            raise SchemaError(
                f"{path}: not a euler_multi_quadrants file: missing {', '.join(missing)} "
                f"(it holds {', '.join(sorted(f.keys()))}){hint}"
            )
        fields = {n: _dataset(f, f"t0_fields/{n}", path) for n in SCALAR_FIELDS}
        fields["momentum"] = _dataset(f, "t1_fields/momentum", path)
        for dataset in fields.values():
            _numbers(dataset, path, float_only=True)
        dtype = ", ".join(sorted({str(d.dtype) for d in fields.values()}))
        if min(d.dtype.itemsize for d in fields.values()) < 4:  # said, as PDEgym's importer does
            warn(
                f"{path}: fields stored as {dtype} (published: float32): imported as float32, "
                "with the source's ≈3 significant digits"
            )
        gamma = _gamma(f, path)
        _gamma_of_name(path, gamma, warn)
        bc_types = _boundaries(f, path)
        times = _times(f, path)
        shapes = {n: d.shape for n, d in fields.items()}
        momentum = shapes.pop("momentum")
    shape = shapes["density"]
    if (
        len(shape) != 4
        or len(set(shapes.values())) != 1
        or momentum != (*shape, 2)
        or times.shape != (shape[1],)
    ):
        odd = _odd_fields(shapes, momentum, times.size)
        raise SchemaError(
            f"{path}: field shapes {shapes}, momentum {momentum}; expected one (trajectories, "
            f"{times.size} snapshots, x, y) for density, energy and pressure and (…, 2) for "
            f"momentum. {odd}: the file is not one euler_multi_quadrants file as published "
            "(rewrite those fields on the common grid, or re-download it)"
        )
    if min(shape[0], shape[2], shape[3]) < 1:
        raise SchemaError(
            f"{path}: {shape[0]} trajectories on a {shape[2]}×{shape[3]} (x × y) grid; there is "
            "nothing to import (an empty or truncated file: re-download it)"
        )
    open_bcs = sorted(n for n, t in bc_types.items() if t == "open")
    other = sorted(  # the types a dataset accepts (open only with --allow-open, below)
        f"{n} ({t or 'no bc_type'})" for n, t in bc_types.items() if t not in PERIODIC_OR_OPEN
    )
    if other or not bc_types:
        raise SchemaError(
            f"{path}: boundaries {', '.join(other) or 'none named'}; our surrogates and "
            "responses assume a periodic domain (open ones with --allow-open): import the "
            "_periodicBC files"
        )
    if open_bcs:
        if not allow_open:
            raise SchemaError(
                f"{path}: open boundaries ({', '.join(open_bcs)}); our surrogates and "
                "responses assume a periodic domain, so these data would be learned wrongly. "
                "Import the _periodicBC files, or pass --allow-open to import anyway"
            )
        warn(f"{path}: importing open-boundary data (--allow-open); models are periodic")
    return {
        "gamma": gamma,
        "shape": shape,
        "times": times,
        "bc": "open" if open_bcs else "periodic",
        "bc_types": bc_types,
        "dtype": dtype,
    }


def _split_of(path: Path, split: str | None) -> str:
    if split is not None and split not in SPLITS:
        raise RequestError(f"--split {split!r}: choose {', '.join(SPLITS)}")
    chosen = split or path.parent.name
    if chosen not in SPLITS:
        raise RequestError(
            f"{path}: cannot tell its split from the folder {path.parent.name!r} (The Well "
            f"keeps files in data/train, data/valid, data/test); pass --split {'|'.join(SPLITS)}"
        )
    return chosen


def _check_files(
    sources: list[Path],
    infos: list[dict],
    keys: list[tuple[str, str]],
    downsample: int,
    split: str | None = None,
) -> None:
    """Refuse a file named twice, a grid the down-sampling does not divide, or files that
    differ in grid, time axis or γ (one dataset shares them; the dataset's own check found
    a grid mismatch only after the commit, and left a dataset that opened nowhere)."""
    seen: dict[tuple[str, str], Path] = {}
    for path, key in zip(sources, keys, strict=True):
        if key in seen:
            if path.resolve() == seen[key].resolve():
                same = "the same file given twice"
            elif split is not None and path.parent.name != seen[key].parent.name:
                same = f"--split {split} puts every file into that split"
            else:
                same = f"two files named {path.name} in folders named {path.parent.name}"
            raise RequestError(
                f"{seen[key]} and {path} would both become data/{key[0]}/{key[1]}.hdf5 "
                f"({same}); give each file once, or import these into separate datasets"
            )
        seen[key] = path
    for path, info in zip(sources, infos, strict=True):
        nx, ny = info["shape"][2:]
        if nx % downsample or ny % downsample:
            raise RequestError(
                f"{path}: grid {nx}×{ny} (x × y) is not divisible by --downsample {downsample}"
            )
        first, times = infos[0], info["times"]
        if times.shape != first["times"].shape or not np.allclose(
            times, first["times"], rtol=1e-6, atol=1e-9
        ):
            raise SchemaError(
                f"{path}: {times.size} snapshots on [{times[0]:g}, {times[-1]:g}], but "
                f"{sources[0]} has {first['times'].size} on [{first['times'][0]:g}, "
                f"{first['times'][-1]:g}]; files of one dataset must share the time axis"
            )
        if tuple(info["shape"][2:]) != tuple(first["shape"][2:]):
            raise SchemaError(
                f"{path}: grid {nx}×{ny} (x × y), but {sources[0]} has "
                f"{'×'.join(map(str, first['shape'][2:]))}; files of one dataset share one "
                "grid: import the other resolution into another --out"
            )
        if not np.isclose(info["gamma"], first["gamma"], rtol=1e-6):
            raise SchemaError(
                f"{path}: γ = {info['gamma']:g}, but {sources[0]} has γ = {first['gamma']:g}; "
                "one dataset holds one gas: import each γ into its own --out"
            )


def _import_all(
    stage: Stage,
    sources: list[Path],
    infos: list[dict],
    keys: list[tuple[str, str]],
    counts: list[int],
    meter: Meter,
    *,
    downsample: int,
    overwrite: bool,
    name: str,
    split_rule: str,
) -> tuple[list[Path], dict[str, dict]]:
    """Write every source into the stage; returns the final paths and each source's checks."""
    nx, ny = (n // downsample for n in infos[0]["shape"][2:])
    dataset_name = target_dataset_name(
        stage,
        family=Family.EULER,
        nx=nx,
        ny=ny,
        times=infos[0]["times"],
        files=[(s, f"{stem}.hdf5") for s, stem in keys],
        overwrite=overwrite,
        name=name,
        scalars={"gamma": infos[0]["gamma"]},
    )
    files, all_checks = [], {}
    for path, info, (split_name, stem), n in zip(sources, infos, keys, counts, strict=True):
        checks = _import_file(
            path,
            info,
            stage.path(split_name, f"{stem}.hdf5"),
            stem,
            n,
            downsample,
            dataset_name,
            meter,
            split_rule,
        )
        all_checks[str(path)] = checks
        files.append(stage.final(split_name, f"{stem}.hdf5"))
    return files, all_checks


def import_well_euler(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    downsample: int = 4,
    allow_open: bool = False,
    split: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    name: str = "",
    progress: ByteProgress | None = None,
    warn: Warn | None = None,
) -> ImportReport:
    """Import every file of ``paths`` into ``out`` in one all-or-nothing transaction."""
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn:
            warn(message)

    if not paths:
        raise RequestError("name at least one euler_multi_quadrants .hdf5 file")
    if downsample < 1:
        raise RequestError(f"--downsample {downsample}: use a positive integer (1 keeps 512²)")
    if limit is not None and limit < 1:  # 0 wrote empty class files that training then broke on
        raise RequestError(f"--limit {limit}: keep at least 1 trajectory of each file")
    sources = [Path(p) for p in paths]
    refuse_sources_inside(out, sources)
    infos = [_read_info(p, allow_open, note) for p in sources]
    splits = [_split_of(p, split) for p in sources]
    keys = [(s, p.stem) for s, p in zip(splits, sources, strict=True)]
    _check_files(sources, infos, keys, downsample, split)
    counts = [info["shape"][0] if limit is None else min(limit, info["shape"][0]) for info in infos]
    for path, info in zip(sources, infos, strict=True):
        if limit is not None and limit > info["shape"][0]:  # said, not silently fewer
            note(f"--limit {limit}: {path} holds {info['shape'][0]} trajectories; importing all")
    traj_bytes = [int(np.prod(info["shape"][1:])) * 4 * 5 for info in infos]  # ρ, E, p, m
    for path, info, size in zip(sources, infos, traj_bytes, strict=True):
        # the block-averaged trajectory, one time block read at full resolution (at least one
        # snapshot, however large: _trajectory's per_block) and the float64 temporaries of its
        # checks and means, about twice the block (a 4096² grid peaked at 1.06 GB where
        # 3 × BLOCK_BYTES had allowed 232 MiB)
        step = int(np.prod(info["shape"][2:])) * 4 * 5
        block = max(1, BLOCK_BYTES // step) * step
        held = size // downsample**2 + 3 * block
        check_trajectory_fits(path, (*info["shape"][1:], 5), held, "101 × 512²")
    written = sum(c * b // downsample**2 for c, b in zip(counts, traj_bytes, strict=True))
    per_trajectory = written // max(sum(counts), 1)
    check_room(out, sum(counts), per_trajectory, "these Well files", files=len(sources))
    meter = Meter(
        total=sum(c * b for c, b in zip(counts, traj_bytes, strict=True)), progress=progress
    )
    split_rule = (
        "The Well's own train/valid/test files (each file's folder)"
        if split is None
        else f"--split {split}: every file given into {split}"
    )
    with dataset_transaction(out) as stage:
        for line in stage.recovered:
            note(f"{stage.root}: {line}")
        files, all_checks = _import_all(
            stage,
            sources,
            infos,
            keys,
            counts,
            meter,
            downsample=downsample,
            overwrite=overwrite,
            name=name,
            split_rule=split_rule,
        )
    imported = open_dataset(stage.root).files
    for class_name in sorted({stem for _, stem in keys}):  # per class: training reads both
        missing = [x for x in ("train", "valid") if class_name not in imported.get(x, {})]
        if missing:  # said now, not at `coherence train` (which trains on the others)
            note(
                f"{stage.root} has no {' or '.join(missing)} split yet for {class_name}, "
                f"which training needs: import The Well's {missing[0]}/ file of the same "
                "name into it too (the split is the file's folder; --split names it for a "
                "file kept elsewhere)"
            )
    return ImportReport(
        root=stage.root,
        files=files,
        counts=tuple(sum(c for c, s in zip(counts, splits, strict=True) if s == x) for x in SPLITS),
        split_label=split_rule,
        swap_xy=False,
        checks=all_checks,
        warnings=warnings,
        mb_per_s=meter.mb_per_s,
    )


def _trajectory(
    t0: h5py.Group,
    mom: h5py.Dataset,
    i: int,
    path: Path,
    info: dict,
    k: int,
    checks: dict,
    progress: tuple[Meter, str],
) -> np.ndarray:
    """Trajectory ``i`` checked (finite, positive, γ̂ per time block of ≈ BLOCK_BYTES) and
    block-averaged k×k: (1, T, 4, x/k, y/k) conserved channels."""
    gamma, (_, n_steps, nx, ny) = info["gamma"], info["shape"]
    per_block = max(1, BLOCK_BYTES // (nx * ny * 4 * 5))
    meter, message = progress
    out = np.empty((1, n_steps, 4, nx // k, ny // k), dtype=np.float32)
    for lo in range(0, n_steps, per_block):
        hi = min(lo + per_block, n_steps)
        with read_errors(path):
            rho, energy, p = (np.asarray(t0[name][i, lo:hi]) for name in SCALAR_FIELDS)
            m = np.asarray(mom[i, lo:hi])
        named = {"density": rho, "pressure": p, "energy": energy, "momentum": m}
        check_finite_positive(
            f"{path} (time {lo}..{hi - 1})",
            i,
            {k_: v[None] for k_, v in named.items()},
            ("density", "pressure"),
            time_offset=lo,
            one_of_many=True,
        )
        fit = gamma_hat(rho, m[..., 0], m[..., 1], p, energy)
        check_gamma(str(path), i, fit, gamma, "density, energy, pressure, momentum", checks)
        for c, values in enumerate((rho, m[..., 0], m[..., 1], energy)):
            out[0, lo:hi, c] = block_mean(values, k, (1, 2))
        meter.add(sum(v.nbytes for v in named.values()), message)
    return out


IMPORTED_FIELDS = {"t0_fields/density", "t0_fields/energy", "t0_fields/pressure"}
IMPORTED_FIELDS |= {"t1_fields/momentum"}


def _dropped(f: h5py.File) -> dict[str, str]:
    """The source's other fields, which the import leaves out, named in the mapping (they
    vanished without a record; PDEgym's importer names its dropped tracer)."""
    others = [
        f"{group}/{name}"
        for group in ("t0_fields", "t1_fields", "t2_fields")
        if isinstance(f.get(group), h5py.Group)
        for name in f[group]
        if f"{group}/{name}" not in IMPORTED_FIELDS
    ]
    return {"dropped": ", ".join(others)} if others else {}


def _provenance(
    f: h5py.File, path: Path, n: int, k: int, checks: dict, split_rule: str
) -> dict[str, object]:
    """Root attributes recording where the imported file came from and how it was mapped."""
    return {
        "source": f"The Well: {f.attrs.get('dataset_name', 'euler_multi_quadrants')}",
        "source_url": "https://polymathic-ai.org/the_well/",
        "licence": LICENCE,
        "source_files": [path.name],
        "source_file_index": np.zeros(n, dtype=np.int32),
        "source_index": np.arange(n, dtype=np.int32),
        "channel_mapping": as_json(
            {
                "density": f"t0_fields/density, {k}×{k} block mean",
                "momentum_x": f"t1_fields/momentum[..., 0], {k}×{k} block mean",
                "momentum_y": f"t1_fields/momentum[..., 1], {k}×{k} block mean",
                "energy": f"t0_fields/energy, {k}×{k} block mean",
                "pressure (t0 field)": "(γ−1)(E − |m|²/2ρ) of the block means",
            }
            | _dropped(f)
        ),
        "import_checks": as_json(checks),
        "split_rule": split_rule,
        "imported_with": "coherence import well-euler",
    }


def _import_file(
    path: Path,
    info: dict,
    target: Path,
    class_name: str,
    n: int,
    k: int,
    dataset_name: str,
    meter: Meter,
    split_rule: str,
) -> dict:
    """Stream one file, one trajectory at a time, time blocks of ≈ BLOCK_BYTES."""
    gamma, (_, _, nx, ny) = info["gamma"], info["shape"]
    checks: dict[str, object] = {
        "container": "HDF5",
        "gamma_file": gamma,
        "source_dtype": info["dtype"],
        "boundary": info["bc_types"],
        "finite": True,
        "positive_density_pressure": True,
        "downsample": k,
    }
    with (
        open_hdf5(path) as f,
        WellWriter(
            target,
            family=Family.EULER,
            class_name=class_name,
            dataset_name=dataset_name,
            n_trajectories=n,
            times=info["times"],
            nx=nx // k,
            ny=ny // k,
            scalars={"gamma": gamma},
            bc_type=info["bc"],
        ) as writer,
    ):
        t0, mom = f["t0_fields"], f["t1_fields/momentum"]
        for i in range(n):
            progress = (meter, f"{class_name}: {i + 1}/{n}")
            writer.write(i, _trajectory(t0, mom, i, path, info, k, checks, progress))
        writer.file.attrs.update(_provenance(f, path, n, k, checks, split_rule))
    return checks
