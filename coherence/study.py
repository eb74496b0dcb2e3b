"""The paper's whole study in one command: train every (architecture, seed) that is missing,
then compute the paper's analyses into the workspace cache, so the dashboard opens on it.

``plan_study`` looks before it leaps: what exists, what will run, and the estimated seconds
and peak memory of every step on this device, measured by a probe of the real model
(``coherence.probe``) rather than guessed. ``run_study`` carries the plan out. Each step is
resumable on its own: training resumes from its last atomic checkpoint, an analysis is one
content-addressed cache entry, so a killed study rerun with the same command redoes nothing
that finished. The analyses are built from the dashboard's own ``Selection``, so their cache
keys are exactly the ones the dashboard looks up, and the closing message gives the link.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import torch

from coherence.analysis.pipeline import available_memory, estimate_cost
from coherence.analysis.request import AnalysisRequest
from coherence.cache.cost import format_seconds
from coherence.errors import CoherenceError, RequestError
from coherence.executors import Executor, TrainRun
from coherence.io import resolve_device
from coherence.probe import ModelProbe, probe_model
from coherence.simulation.dataset import DatasetInfo, open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.registry import build_model
from coherence.surrogates.training import TrainingArgs, train
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside, workspace_root

Log = Callable[[str], None]
PAPER_SEEDS = (10, 35, 42)
PAPER_EPOCHS = {"euler": 150, "ns": 100}  # METHOD.md §3
DEMO_EPOCHS = 12
PAPER_CLASSES_PER_BATCH = 3  # METHOD.md §5: one trajectory of each of 3 classes
GIB = 1024**3


@dataclass(frozen=True)
class StudySpec:
    """What a study trains and analyses (defaults: the paper's protocol, METHOD.md §3–5)."""

    dataset: str  # directory name under <workspace>/datasets
    preset: str = "demo"  # model size preset: demo | paper
    archs: tuple[str, ...] = ("unet", "vit")
    seeds: tuple[int, ...] = PAPER_SEEDS
    batches: int = 6  # test trajectories analysed per seed (paper: 6)
    classes: tuple[str, ...] = ()  # empty: the first 3 test classes of the dataset
    epochs: int | None = None  # None: demo 12, paper 150 (CE) / 100 (NS)
    batch_size: int = 32
    device: str = "auto"
    naming: str = "{dataset}_{arch}_{preset}_s{seed}"  # checkpoint directory names
    replace_foreign: bool = False  # retrain a same-named checkpoint trained on other data
    keep_epochs: tuple[int, ...] | None = None  # training snapshots; None: powers of 2 + last
    # Sweeps precomputed for the dashboard's 'Training dynamics' and 'Sensitivity' panels,
    # on the same selection as the main analysis (``dashboard.sweeps``): the architectures
    # whose snapshot epochs are analysed, and those swept over ``sweep_dampings`` with the
    # default estimators of ``sweeps.SWEEP_ESTIMATORS`` (cg stays on demand).
    dynamics_archs: tuple[str, ...] = ()
    sweep_archs: tuple[str, ...] = ()
    sweep_dampings: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in ("demo", "paper"):
            raise RequestError(f"--preset {self.preset!r}: choose demo or paper")
        if not self.archs:
            raise RequestError("--archs is empty: give unet, vit or both, e.g. unet,vit")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise RequestError(f"--seeds {list(self.seeds)}: give distinct seeds, e.g. 10,35,42")
        if self.batches < 1:
            raise RequestError(f"--batches {self.batches}: give at least 1 (paper: 6)")
        if self.epochs is not None and self.epochs < 1:
            raise RequestError(f"--epochs {self.epochs}: give at least 1")

    def checkpoint_name(self, arch: str, seed: int) -> str:
        return self.naming.format(dataset=self.dataset, arch=arch, preset=self.preset, seed=seed)

    def epochs_for(self, family: str) -> int:
        if self.epochs is not None:
            return self.epochs
        return DEMO_EPOCHS if self.preset == "demo" else PAPER_EPOCHS.get(family, 100)


@dataclass(frozen=True)
class TrainStep:
    """One (architecture, seed) training run and what it will cost."""

    arch: str
    seed: int
    out: Path
    args: TrainingArgs
    done_epochs: int
    state: str  # done | resume | new | retrain
    seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class AnalysisStep:
    """One architecture's analyses: all seeds × batches of the window, one cache entry."""

    arch: str
    checkpoints: tuple[str, ...]  # names under <workspace>/checkpoints
    query: dict[str, str]  # the dashboard's URL parameters for this selection
    units: int  # checkpoints × batches
    n_examples: int
    state: str  # cached | pending
    seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class SweepStep:
    """One architecture's sweep for a dashboard panel: ``requests`` more analyses like the
    main one (snapshot epochs, or other λ and estimators), each its own cache entry."""

    kind: str  # dynamics | sensitivity
    arch: str
    requests: int  # analyses in the sweep besides the main one (an upper bound if untrained)
    seconds: float  # ≈ requests × the main analysis's estimate


@dataclass(frozen=True)
class StudyPlan:
    workspace: Path
    spec: StudySpec
    dataset: Path
    device: str
    available_bytes: int
    train: tuple[TrainStep, ...]
    analyses: tuple[AnalysisStep, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    sweeps: tuple[SweepStep, ...] = ()

    @property
    def seconds(self) -> float:
        todo = [s.seconds for s in self.train if s.state != "done"]
        analyses = sum(a.seconds for a in self.analyses if a.state != "cached")
        return sum(todo) + analyses + sum(s.seconds for s in self.sweeps)

    def describe(self) -> list[str]:
        """The plan as lines for a terminal: one per step, then the total."""
        lines = [
            f"study of {self.dataset.name} on {self.device} "
            f"({self.available_bytes / GIB:.1f} GiB available), workspace {self.workspace}"
        ]
        for step in self.train:
            what = {
                "done": f"done ({step.done_epochs} epochs)",
                "resume": f"resume after epoch {step.done_epochs} of {step.args.epochs}",
                "new": f"train {step.args.epochs} epochs",
                "retrain": f"retrain {step.args.epochs} epochs (trained on other data)",
            }[step.state]
            cost = "" if step.state == "done" else _cost(step.seconds, step.peak_bytes)
            lines.append(f"  train {step.out.name}: {what}{cost}")
        for a in self.analyses:
            what = "cached" if a.state == "cached" else f"{a.units} units, N = {a.n_examples}"
            cost = "" if a.state == "cached" else _cost(a.seconds, a.peak_bytes)
            lines.append(f"  analyse {a.arch} ({len(a.checkpoints)} seeds): {what}{cost}")
        for sweep in self.sweeps:
            what = "snapshot epochs" if sweep.kind == "dynamics" else "λ / estimator settings"
            lines.append(
                f"  {sweep.kind} {sweep.arch}: up to {sweep.requests} analyses of {what} (cached "
                f"ones skipped) — ≈ {format_seconds(sweep.seconds)} if none is cached"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  total to run: ≈ {format_seconds(self.seconds)}")
        return lines


def _cost(seconds: float, peak: int) -> str:
    return f" — ≈ {format_seconds(seconds)}, peak ≈ {peak / GIB:.2f} GiB"


# --------------------------------------------------------------------------- planning ----


def _open(root: Path, spec: StudySpec) -> DatasetInfo:
    directory = resolve_inside(datasets_dir(root), spec.dataset)
    if not directory.is_dir():
        raise RequestError(
            f"--data {spec.dataset}: no dataset {directory}; import or simulate it into "
            f"{datasets_dir(root)} first (coherence import … --out {directory})"
        )
    return open_dataset(directory)


def _classes(info: DatasetInfo, spec: StudySpec) -> tuple[str, ...]:
    from coherence.dashboard.workspace_scan import class_order

    test = class_order(info.files.get("test", {}))
    if spec.classes:
        missing = [c for c in spec.classes if c not in test]
        if missing:
            raise RequestError(
                f"--classes {','.join(missing)}: not in the test split of {info.root} "
                f"(it holds {', '.join(test) or 'no class'})"
            )
        return class_order(spec.classes)
    for split in ("train", "valid", "test"):
        if not info.files.get(split):
            raise RequestError(
                f"{info.root} has no {split} split; a study needs train, valid and test files"
            )
    usable = [c for c in test if all(c in info.files.get(s, {}) for s in ("train", "valid"))]
    return tuple(usable[:PAPER_CLASSES_PER_BATCH])


def _checkpoint_state(out: Path, args: TrainingArgs, fingerprint: str) -> tuple[str, int]:
    """(done | resume | new | retrain, epochs already trained)."""
    if not (out / ckpt.CONFIG_FILE).exists():
        return "new", 0
    config = ckpt.read_config(out)
    history = ckpt.read_history(out)
    if config.dataset.get("fingerprint") != fingerprint:
        return "retrain", 0
    stored = config.training.get("args", {})
    if stored.get("seed") != args.seed or stored.get("preset") != args.preset:
        return "retrain", 0
    return ("done" if len(history) >= args.epochs else "resume"), len(history)


def _probe(arch: str, spec: StudySpec, info: DatasetInfo, device: torch.device) -> ModelProbe:
    torch.manual_seed(0)
    model = build_model(arch, spec.preset, channels=len(info.channels), resolution=info.height)
    model.to(device)
    split, name = next((s, c) for s in ("train", "test") for c in info.files.get(s, {}))
    example = torch.from_numpy(info.load(split, name, trajectories=[0], steps=slice(0, 1))[0, 0])
    return probe_model(model, example.to(device))


def _train_cost(
    probe: ModelProbe, args: TrainingArgs, pairs: tuple[int, int], remaining: int, state: int
) -> tuple[float, int]:
    """Seconds for the remaining epochs; peak bytes: weights, grads and AdamW moments, one
    batch's activations (kept for backward, ≈ 2× the forward outputs) and the pairs in
    memory (none past the budget of ``pairs.memory_budget``: then they are streamed)."""
    train_pairs, valid_pairs = pairs
    epoch = train_pairs * probe.train_step_seconds + valid_pairs * probe.forward_seconds
    itemsize = 4
    peak = (
        4 * probe.n_params * itemsize
        + 2 * args.batch_size * probe.activation_bytes
        + _pairs_in_memory(2 * train_pairs * state * itemsize)
        + _pairs_in_memory(2 * valid_pairs * state * itemsize)
    )
    return remaining * epoch, int(peak)


def _pairs_in_memory(nbytes: int) -> int:
    from coherence.surrogates.pairs import memory_budget

    return nbytes if nbytes <= memory_budget() else 0


def _selection(spec: StudySpec, root: Path, info: DatasetInfo, arch: str, classes):
    from coherence.dashboard.selection import RESPONSES, Selection
    from coherence.dashboard.workspace_scan import scan_workspace

    catalog = scan_workspace(root)
    entry = catalog.dataset(info.root.name)
    if entry is None:  # pragma: no cover - _open found it
        raise RequestError(f"{info.root}: the workspace scan does not list this dataset")
    from coherence.dashboard.selection import default_window

    n_test = entry.n_test(classes)
    if n_test == 0:
        raise RequestError(f"{info.root}: no test trajectory in every class of {classes}")
    t_start, n_steps = default_window(entry, len(classes))
    return Selection(
        dataset=info.root.name,
        checkpoints=tuple(spec.checkpoint_name(arch, s) for s in sorted(spec.seeds)),  # as grouped
        classes=classes,
        trajectories=tuple(range(min(spec.batches, n_test))),
        t_start=t_start,
        n_steps=n_steps,
        responses=RESPONSES if entry.conserved else ("smse",),
        device=spec.device,
    )


def _analysis_cost(
    probe: ModelProbe, request: AnalysisRequest, model: torch.nn.Module, example: torch.Tensor
) -> tuple[float, int]:
    cost = estimate_cost(model, request, example, forward_seconds=probe.forward_seconds)
    return float(cost.seconds or 0.0), cost.memory_bytes


def _request_state(root: Path, selection) -> str:
    from coherence.cache import JobRunner

    try:
        request = selection.to_request(root)
        runner = JobRunner(root)
        return "cached" if runner.status(runner.key(request)).state == "done" else "pending"
    except CoherenceError:
        return "pending"  # checkpoints not trained yet: nothing can be cached


def plan_study(spec: StudySpec, workspace: str | Path | None = None) -> StudyPlan:
    """What exists, what will run, and its cost on this device (probes the real models)."""
    root = workspace_root(workspace)
    info = _open(root, spec)
    classes = _classes(info, spec)
    if not classes:
        raise RequestError(
            f"{info.root}: no class has train, valid and test files; a study needs all three"
        )
    family = info.family.value
    device = resolve_device(spec.device)
    transitions = min(16, len(info.times) - 1)
    notes = []
    if transitions < 16:
        notes.append(f"trajectories have {len(info.times)} snapshots: {transitions} transitions")
    fingerprint = info.fingerprint(split="train", classes=classes)
    counts = {s: sum(info.file(s, c).n_trajectories for c in classes) for s in ("train", "valid")}
    pairs = (counts["train"] * transitions, counts["valid"] * transitions)
    state_size = len(info.channels) * info.height * info.width
    steps, analyses = [], []
    for arch in spec.archs:
        probe = _probe(arch, spec, info, device)
        for seed in spec.seeds:
            args = TrainingArgs(
                arch=arch,
                preset=spec.preset,
                classes=classes,
                seed=seed,
                epochs=spec.epochs_for(family),
                batch_size=spec.batch_size,
                transitions=transitions,
                keep_epochs=spec.keep_epochs,
                device=spec.device,
            )
            out = checkpoints_dir(root) / spec.checkpoint_name(arch, seed)
            state, done = _checkpoint_state(out, args, fingerprint)
            if state == "retrain" and not spec.replace_foreign:
                raise RequestError(
                    f"checkpoint {out} exists but was trained with other data or arguments; "
                    "remove it, or choose other --seeds (names follow the seed)"
                )
            remaining = args.epochs - (done if state in ("done", "resume") else 0)
            seconds, peak = _train_cost(probe, args, pairs, remaining, state_size)
            steps.append(TrainStep(arch, seed, out, args, done, state, seconds, peak))
        selection = _selection(spec, root, info, arch, classes)
        model = build_model(arch, spec.preset, channels=len(info.channels), resolution=info.height)
        request = AnalysisRequest(
            checkpoints=("planned",),
            data=str(info.root),
            classes=selection.classes,
            t_start=selection.t_start,
            n_steps=selection.n_steps,
            trajectories=selection.trajectories,
            responses=selection.responses,
            device=spec.device,
        )
        request = _with_units(request, len(spec.seeds))
        example = torch.from_numpy(
            info.load("test", classes[0], trajectories=[0], steps=slice(0, 1))[0]
        )
        seconds, peak = _analysis_cost(probe, request, model.to(device), example.to(device))
        analyses.append(
            AnalysisStep(
                arch=arch,
                checkpoints=selection.checkpoints,
                query=selection.to_query(),
                units=len(spec.seeds) * len(selection.trajectories),
                n_examples=selection.n_examples,
                state=_request_state(root, selection),
                seconds=seconds,
                peak_bytes=peak,
            )
        )
    sweep_steps = _sweep_steps(spec, family, analyses, root, info, classes)
    available = available_memory(device)
    for step in steps:
        if step.state != "done" and step.peak_bytes > 0.8 * available:
            notes.append(
                f"training {step.out.name} needs ≈ {step.peak_bytes / GIB:.1f} GiB of "
                f"{available / GIB:.1f} GiB: import fewer trajectories (--limit) or use a "
                "larger machine"
            )
    return StudyPlan(
        workspace=root,
        spec=spec,
        dataset=info.root,
        device=str(device),
        available_bytes=available,
        train=tuple(steps),
        analyses=tuple(analyses),
        notes=tuple(notes),
        sweeps=sweep_steps,
    )


def _sweep_steps(
    spec: StudySpec,
    family: str,
    analyses: list[AnalysisStep],
    root: Path,
    info: DatasetInfo,
    classes: tuple[str, ...],
) -> tuple[SweepStep, ...]:
    """The sweeps' uncached analyses (the main analysis excluded: it is one of their points;
    before training, every planned one) and their cost at the main analysis's estimate per
    request (euclidean counted as a full one)."""
    from coherence.dashboard import sweeps
    from coherence.surrogates.snapshots import resolve_keep

    per_arch = {a.arch: a.seconds for a in analyses}
    epochs = spec.epochs_for(family)
    out = []
    for kind, archs in (("dynamics", spec.dynamics_archs), ("sensitivity", spec.sweep_archs)):
        for arch in archs:
            if arch not in per_arch or (kind == "sensitivity" and not spec.sweep_dampings):
                continue
            if kind == "dynamics":
                n = len([e for e in resolve_keep(spec.keep_epochs, epochs) if e != epochs])
            else:
                n = sum(
                    len(spec.sweep_dampings) if s.uses_damping else 1
                    for s in sweeps.SWEEP_ESTIMATORS
                    if not s.on_demand
                )
                n -= sweeps.PAPER_DAMPING in spec.sweep_dampings  # the main analysis
            pending = _pending(spec, root, info, arch, classes, kind)
            n = n if pending is None else pending
            out.append(SweepStep(kind, arch, n, n * per_arch[arch]))
    return tuple(out)


def _sweep_points(spec: StudySpec, root: Path, info: DatasetInfo, arch: str, classes, kind, runner):
    """The sweep's points, keyed as the dashboard's panels key them."""
    from coherence.dashboard import sweeps

    selection = _selection(spec, root, info, arch, classes)
    if kind == "dynamics":
        return sweeps.dynamics_points(root, selection, runner)
    return sweeps.sensitivity_points(
        root, selection, _catalog(root), runner, dampings=spec.sweep_dampings
    )


def _pending(spec, root, info, arch, classes, kind) -> int | None:
    """Uncached points of a sweep whose checkpoints exist (the main analysis excluded, as
    the main step counts it); None before the checkpoints are trained."""
    from coherence.cache import JobRunner

    names = [spec.checkpoint_name(arch, s) for s in spec.seeds]
    if not all((checkpoints_dir(root) / n / ckpt.CONFIG_FILE).is_file() for n in names):
        return None
    try:
        runner = JobRunner(root)
        points, problems = _sweep_points(spec, root, info, arch, classes, kind, runner)
        main = runner.key(_selection(spec, root, info, arch, classes).to_request(root))
    except CoherenceError:
        return None
    if problems:
        return None
    return sum(1 for p in points if p.key != main and runner.status(p.key).state != "done")


def _with_units(request: AnalysisRequest, seeds: int) -> AnalysisRequest:
    """The request's shape with ``seeds`` placeholder checkpoints (for the cost estimate)."""
    from dataclasses import replace

    return replace(request, checkpoints=tuple(f"planned-{i}" for i in range(seeds)))


# ---------------------------------------------------------------------------- running ----


def run_study(
    plan: StudyPlan,
    *,
    log: Log = print,
    train_progress=None,
    analysis_progress=None,
    executor: Executor | None = None,
) -> list[str]:
    """Carry the plan out; returns the dashboard URLs (query strings) of its analyses.

    ``executor`` (default: here, one step after another): on a Ray cluster every pending
    training runs at once as its own task, then each analysis's units do."""
    from coherence.cache import JobRunner

    root, spec = plan.workspace, plan.spec
    pending = [step for step in plan.train if step.state != "done"]
    for step in pending:
        if step.state == "retrain":
            shutil.rmtree(step.out)  # ours by name, trained on other data (demo only)
    if executor is not None and not executor.local and pending:
        runs = [
            TrainRun(plan.dataset, s.out, s.args, train_progress(s) if train_progress else None)
            for s in pending
        ]
        executor.train(runs, log=log)
        pending = []
    for step in pending:
        started = time.perf_counter()
        log(f"training {step.out.name} ({step.args.epochs} epochs)")
        progress = train_progress(step) if train_progress else None
        train(plan.dataset, step.out, step.args, progress=progress, log=log)
        history = ckpt.read_history(step.out)
        log(
            f"  done in {time.perf_counter() - started:.0f} s, valid SMSE "
            f"{history[-1]['valid_smse']:.4g}"
        )
    runner = JobRunner(root)
    links = []
    info = open_dataset(plan.dataset)
    for step in plan.analyses:
        classes = tuple(step.query["classes"].split(","))
        selection = _selection(spec, root, info, step.arch, classes)
        request = selection.to_request(root)
        key = runner.key(request)
        if runner.status(key).state == "done":
            log(f"analysis of {step.arch} is cached ({key[:12]})")
        else:
            started = time.perf_counter()
            log(f"analysing {step.arch}: {step.units} units, N = {step.n_examples}")
            progress = analysis_progress(step) if analysis_progress else None
            runner.run(request, progress=progress, executor=executor)
            log(f"  done in {time.perf_counter() - started:.0f} s")
        links.append(urlencode(selection.to_query()))
    for sweep in plan.sweeps:
        _run_sweep(plan, sweep, runner, info, log, analysis_progress)
    return links


def _run_sweep(plan: StudyPlan, sweep: SweepStep, runner, info, log: Log, progress) -> None:
    """Compute the sweep's uncached points, keyed exactly as the dashboard's panels ask."""

    root, spec = plan.workspace, plan.spec
    step = next(a for a in plan.analyses if a.arch == sweep.arch)
    classes = tuple(step.query["classes"].split(","))
    points, problems = _sweep_points(spec, root, info, sweep.arch, classes, sweep.kind, runner)
    for problem in problems:
        log(f"  {sweep.kind} {sweep.arch}: {problem}")
    todo = [p for p in points if runner.status(p.key).state != "done"]
    started = time.perf_counter()
    log(f"{sweep.kind} {sweep.arch}: {len(points) - len(todo)} of {len(points)} cached")
    for point in todo:
        what = f"epoch {point.x:g}" if sweep.kind == "dynamics" else f"{point.series} λ={point.x:g}"
        log(f"  analysing {sweep.arch} {what}")
        runner.run(point.request, progress=progress(step) if progress else None)
    if todo:
        log(f"  done in {time.perf_counter() - started:.0f} s")


def _catalog(root: Path):
    from coherence.dashboard.workspace_scan import scan_workspace

    return scan_workspace(root)
