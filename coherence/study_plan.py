"""``plan_study``: what a study finds, what it will run, and what each step costs here.

Costs are measured, not guessed: each architecture is probed on this device
(``coherence.probe``) and the probe's timings and memory feed the training and analysis
estimates. Analyses are planned from the dashboard's own ``Selection``, so their cache keys
are the ones the dashboard looks up.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from coherence.analysis.pipeline import estimate_cost, unit_seconds
from coherence.analysis.request import AnalysisRequest
from coherence.cache import slots
from coherence.cache.states import JobState
from coherence.errors import CoherenceError, RequestError
from coherence.io import resolve_device
from coherence.probe import ModelProbe, probe_model
from coherence.resources import USABLE_SHARE
from coherence.simulation.dataset import DatasetInfo, open_dataset
from coherence.study_spec import (
    GIB,
    PAPER_CLASSES_PER_BATCH,
    AnalysisStep,
    StudyPlan,
    StudySpec,
    SweepStep,
    TrainStep,
    over_memory,
)
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.footprint import (
    available_bytes,
    batch_size_that_fits,
    training_step_bytes,
)
from coherence.surrogates.registry import build_model
from coherence.surrogates.training import (
    DEFAULT_TRANSITIONS,
    TrainingArgs,
    resolve_transitions,
    stored_arguments,
)
from coherence.wording import plural
from coherence.workspace import (
    cache_dir,
    checked_workspace,
    checkpoints_dir,
    datasets_dir,
    link_out_of,
)


def dataset_dir(root: Path, dataset: str) -> Path:
    """The study's dataset: a folder directly in <workspace>/datasets (the ones the dashboard
    lists), given by name or by path. Why its name matters: the checkpoints are named after
    it, and a path there put them under datasets/ (and missed the trained ones)."""
    parent = datasets_dir(root).resolve()
    candidate = Path(dataset).expanduser()
    resolved = (candidate if candidate.is_absolute() else parent / candidate).resolve()
    here = candidate.resolve()  # a relative path from the current directory also names it
    if not candidate.is_absolute() and here.parent == parent and here.is_dir():
        resolved = here
    names = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    have = f"the workspace has {', '.join(names)}" if names else "the workspace has none yet"
    if resolved.parent != parent:
        raise RequestError(
            f"--data {dataset}: a study's dataset is a folder directly in {parent}, given by "
            f"its name ({have}); import or simulate it there first "
            f"(coherence import … --out {parent / (resolved.name or 'NAME')})"
        )
    if not resolved.is_dir():
        close = difflib.get_close_matches(resolved.name, names, n=1)
        hint = f"did you mean {close[0]}? {have}" if close else have
        raise RequestError(
            f"--data {dataset}: no dataset {resolved} ({hint}); import or simulate it there "
            f"first (coherence import … --out {resolved})"
        )
    return resolved


def _open(root: Path, spec: StudySpec) -> tuple[DatasetInfo, StudySpec]:
    """The dataset, and ``spec`` with the dataset given by its name."""
    directory = dataset_dir(root, spec.dataset)
    if link := link_out_of(root, directory):  # as the scan skips it: before reading a file
        raise RequestError(
            f"--data {spec.dataset}: {link} points outside the workspace, so the dashboard "
            "would not list this dataset's analyses; copy or import the files into the workspace"
        )
    return open_dataset(directory), replace(spec, dataset=directory.name)


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


# training arguments a checkpoint must share to be the study's model: the preset, the seed and
# the recipe seeds of one model share (ckpt.RECIPE_ARGS; the data and classes are in the
# dataset fingerprint; the epochs decide done or resume)
SAME_TRAINING = ("preset", "seed", *ckpt.RECIPE_ARGS)


def training_difference(
    config: ckpt.CheckpointConfig, args: TrainingArgs, fingerprint: str, fields=SAME_TRAINING
) -> str | None:
    """How a checkpoint's training differs from ``args`` ('transitions 4, not 16'), or None;
    the stored arguments read as the resume check reads them (``stored_arguments``: a field
    saved before it existed at its default, transitions None as every pair), so a plan that
    says resume is not refused by the trainer."""
    if config.dataset.get("fingerprint") != fingerprint:
        return "other training data or classes"
    assert args.transitions is not None  # the study's count: every pair, at most 16
    stored = stored_arguments(config.training.get("args", {}), args.transitions)
    for name in fields:
        value = stored.get(name)
        if value != getattr(args, name):
            return f"{name.replace('_', ' ')} {value}, not {getattr(args, name)}"
    return None


def _checkpoint_state(out: Path, args: TrainingArgs, fingerprint: str) -> tuple[str, int, str]:
    """(done | resume | new | retrain, epochs already trained, why retrain)."""
    if not (out / ckpt.CONFIG_FILE).exists():
        return "new", 0, ""
    config = ckpt.read_config(out)
    history = ckpt.read_history(out)
    differs = training_difference(config, args, fingerprint)
    if differs is None and len(history) > args.epochs:  # not the study's model: its seeds
        differs = f"{len(history)} epochs, not {args.epochs}"  # would not pool with it
    if differs is not None:
        return "retrain", 0, differs
    return ("done" if len(history) == args.epochs else "resume"), len(history), ""


def adopt_trained(ctx: _Context, notes: list[str]) -> StudySpec:
    """The spec with every (arch, seed) that has no checkpoint under the study's name but a
    finished one under another: same architecture, preset, seed, batch size and training
    data, trained for the study's epochs (the demo's vit_demo_s10 in a study of ce_demo).
    Why: the study would train a duplicate, and the dashboard list both. Only finished ones,
    and they are never resumed or retrained: they are not the study's to change."""
    spec, directory = ctx.spec, checkpoints_dir(ctx.root)
    if not directory.is_dir():
        return spec
    epochs = spec.epochs_for(ctx.family)
    missing = [
        (arch, seed)
        for arch in spec.archs
        for seed in spec.seeds
        if not (directory / spec.checkpoint_name(arch, seed) / ckpt.CONFIG_FILE).exists()
    ]
    finished = {}  # (arch, seed) → the first checkpoint, by name, of this study's training
    if missing:
        for candidate in sorted(directory.iterdir()):  # each config read once
            trained = _finished_training(candidate, spec, ctx.fingerprint, epochs, ctx.transitions)
            if trained is not None:
                finished.setdefault(trained, candidate.name)
    adopted = [
        (arch, seed, finished[arch, seed]) for arch, seed in missing if (arch, seed) in finished
    ]
    for arch in dict.fromkeys(a for a, _, _ in adopted):
        names = [name for a, _, name in adopted if a == arch]
        notes.append(
            f"{arch}: uses the trained {', '.join(names)} (this data, the same settings, "
            f"{plural(epochs, 'epoch')}) instead of training {plural(len(names), 'duplicate')}"
        )
    return replace(spec, adopted=tuple(adopted)) if adopted else spec


def _finished_training(
    directory: Path, spec: StudySpec, fingerprint: str, epochs: int, transitions: int
) -> tuple[str, int] | None:
    """(arch, seed) of a checkpoint trained as this study trains (its preset, batch size,
    transitions and optimizer, this data, exactly ``epochs`` epochs, all done); None for any
    other directory."""
    if not (directory / ckpt.CONFIG_FILE).is_file():
        return None
    try:
        config = ckpt.read_config(directory)
        history = ckpt.read_history(directory)
    except (CoherenceError, OSError):
        return None  # unreadable: the workspace scan reports it
    stored = config.training.get("args", {})
    study_args = TrainingArgs(
        preset=spec.preset, batch_size=spec.batch_size, transitions=transitions, epochs=epochs
    )
    fields = tuple(f for f in SAME_TRAINING if f != "seed")  # any seed: it is returned
    same = (
        training_difference(config, study_args, fingerprint, fields) is None
        and stored.get("epochs") == epochs
        and len(history) == epochs
    )
    if not same or not _loads(directory):
        return None
    return config.arch, stored.get("seed")


def _loads(directory: Path) -> bool:
    """Whether a checkpoint the study would adopt is whole: its files the set saved together
    and its weights the architecture's. A copy with an edited config was adopted, and the
    study then failed on a checkpoint the user never named."""
    try:
        ckpt.verify(directory)
        ckpt.load(directory, device="cpu")
    except (CoherenceError, OSError):
        return False
    return True


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
    """Seconds for the remaining epochs; peak bytes: one optimizer step's
    (``training_step_bytes``, at most as many examples as there are pairs) and, on a CPU,
    the pairs in memory (none past the budget of ``pairs.memory_budget``: then they are
    streamed; on a GPU they stay in the host's memory). ``coherence train`` warns by the
    same count."""
    train_pairs, valid_pairs = pairs
    epoch = train_pairs * probe.train_step_seconds + valid_pairs * probe.forward_seconds
    itemsize = 4
    batch = min(args.batch_size, train_pairs)
    peak = training_step_bytes(probe.n_params, batch, probe.activation_bytes, itemsize)
    if probe.device == "cpu":
        peak += _pairs_in_memory(2 * train_pairs * state * itemsize)
        peak += _pairs_in_memory(2 * valid_pairs * state * itemsize)
    return remaining * epoch, int(peak)


def _pairs_in_memory(nbytes: int) -> int:
    from coherence.surrogates.pairs import memory_budget

    return nbytes if nbytes <= memory_budget() else 0


def selection_for(spec: StudySpec, root: Path, info: DatasetInfo, arch: str, classes):
    """The dashboard's ``Selection`` for one architecture's analysis (all seeds)."""
    from coherence.dashboard.selection import RESPONSES, Selection
    from coherence.dashboard.workspace_scan import scan_workspace

    catalog = scan_workspace(root)
    entry = catalog.dataset(info.root.name)
    if entry is None:  # _open found it; the scan's reason, where it gives one
        reasons = [p for p in catalog.problems if p.startswith(f"dataset {info.root.name}:")]
        raise RequestError(
            f"{info.root}: the workspace scan does not list this dataset"
            + (f" ({'; '.join(reasons)})" if reasons else "")
        )
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


def _analysis_seconds(probe: ModelProbe, request: AnalysisRequest) -> float:
    """``_analysis_cost``'s seconds alone: the pass count needs the request, not the model,
    so a sweep setting's time costs no memory count."""
    return unit_seconds(request, probe.forward_seconds) * request.n_units


class _KeysOnly:
    """The runner of a workspace with no cache yet: keys, and nothing cached. A plan (--plan
    above all) reads the cache and must not create the workspace's cache/."""

    def key(self, request: AnalysisRequest) -> str:
        from coherence.cache.keys import request_key

        return request_key(request)

    def is_done(self, key: str) -> bool:
        return False

    def cached_units(self, request: AnalysisRequest) -> int:
        return 0


class _Runner:
    """The workspace's cache, read (``JobRunner``'s keys and states)."""

    def __init__(self, root: Path) -> None:
        from coherence.cache import JobRunner

        self.runner = JobRunner(root)

    def key(self, request: AnalysisRequest) -> str:
        return self.runner.key(request)

    def is_done(self, key: str) -> bool:
        return self.runner.status(key).state == JobState.DONE

    def cached_units(self, request: AnalysisRequest) -> int:
        return self.runner.cached_unit_count(request)[0]


def _read_runner(root: Path) -> _KeysOnly | _Runner:
    return _Runner(root) if cache_dir(root).is_dir() else _KeysOnly()


def _request_state(root: Path, selection) -> tuple[str, int]:
    """'cached' or 'pending', and how many of its units are cached already (a killed study
    left some: the rerun resumes from them, so the plan costs only the others)."""
    try:
        request = selection.to_request(root)
        runner = _read_runner(root)
        if runner.is_done(runner.key(request)):
            return "cached", request.n_units
        return "pending", runner.cached_units(request)
    except CoherenceError:
        return "pending", 0  # checkpoints not trained yet: nothing can be cached


@dataclass(frozen=True)
class _Context:
    """What every step of a plan is planned against: the workspace, the dataset and its
    shape, the classes and the device."""

    root: Path
    spec: StudySpec
    info: DatasetInfo
    classes: tuple[str, ...]
    device: torch.device
    transitions: int  # one-step pairs per trajectory (at most 16)
    fingerprint: str  # of the training data, as a checkpoint records it
    pairs: tuple[int, int]  # (train, valid) one-step pairs
    state_size: int  # values in one snapshot

    @property
    def family(self) -> str:
        return self.info.family.value


def _context(spec: StudySpec, workspace: str | Path | None) -> _Context:
    root = checked_workspace(workspace)
    info, spec = _open(root, spec)
    classes = _classes(info, spec)
    if not classes:
        raise RequestError(
            f"{info.root}: no class has train, valid and test files; a study needs all three"
        )
    device = resolve_device(spec.device)
    transitions = resolve_transitions(TrainingArgs(), info).transitions
    counts = {s: sum(info.file(s, c).n_trajectories for c in classes) for s in ("train", "valid")}
    return _Context(
        root=root,
        spec=spec,
        info=info,
        classes=classes,
        device=device,
        transitions=transitions,
        fingerprint=info.fingerprint(split="train", classes=classes),
        pairs=(counts["train"] * transitions, counts["valid"] * transitions),
        state_size=len(info.channels) * info.height * info.width,
    )


def plan_study(spec: StudySpec, workspace: str | Path | None = None) -> StudyPlan:
    """What exists, what will run, and its cost on this device (probes the real models)."""
    ctx = _context(spec, workspace)
    notes = []
    if ctx.spec.adopt:
        ctx = replace(ctx, spec=adopt_trained(ctx, notes))
    spec = ctx.spec  # the dataset by its name, adopted checkpoints named
    if ctx.transitions < DEFAULT_TRANSITIONS:
        notes.append(
            f"trajectories have {len(ctx.info.times)} snapshots: {ctx.transitions} transitions"
        )
    epochs = spec.epochs_for(ctx.family)
    if beyond := [e for e in spec.keep_epochs or () if e > epochs]:  # accepted in silence
        notes.append(
            f"--keep-epochs {','.join(map(str, beyond))}: beyond the {plural(epochs, 'epoch')} "
            f"trained, so no snapshot of {'it' if len(beyond) == 1 else 'them'} is kept (give "
            f"--epochs {max(beyond)} to train that far)"
        )
    steps, analyses, series_seconds, crowded = [], [], {}, False
    timed_on, taken = slots.core_share(), 0  # threads the probes ran on; cores others kept
    for arch in spec.archs:
        with slots.measuring_slot() as quiet:
            # the reading measuring_slot just took (reused): the one its threads came from
            threads, others = slots.threads_and_taken()
            probe = _probe(arch, spec, ctx.info, ctx.device)
            if quiet and others and threads < timed_on:  # a count the user set reads none
                timed_on, taken = threads, others
        crowded |= not quiet
        trains = [_train_step(ctx, probe, arch, seed) for seed in spec.seeds]
        steps.extend(trains)
        trained = all(step.state == "done" for step in trains)
        analysis, series_seconds[arch] = _analysis_step(ctx, probe, arch, trained)
        analyses.append(analysis)
    used = min((a.units // len(spec.seeds) for a in analyses), default=spec.batches)
    if used < spec.batches:  # one batch per test trajectory: there are no more
        notes.append(
            f"--batches {spec.batches}: the test split has "
            f"{plural(used, 'trajectory', 'trajectories')} in every class, so "
            f"{plural(used, 'batch', 'batches')} per seed"
        )
    if crowded:
        notes.append(
            "the models were timed while another job computes on this machine: the times "
            "below are likely over-estimates"
        )
    elif ctx.device.type == "cpu" and timed_on < slots.core_share():
        notes.append(
            f"other processes keep {taken} of "
            f"{plural(slots.visible_cpus(), 'core')} busy: the models were timed on "
            f"{plural(timed_on, 'torch thread')}, as each job will compute on the cores "
            "left when it starts (the times below hold while that load lasts)"
        )
    sweep_steps = _sweep_steps(ctx, analyses, series_seconds, notes)
    available = available_bytes(ctx.device)
    notes.extend(_memory_notes(steps, analyses, available, ctx.transitions))
    return StudyPlan(
        workspace=ctx.root,
        spec=spec,
        dataset=ctx.info.root,
        device=str(ctx.device),
        available_bytes=available,
        train=tuple(steps),
        analyses=tuple(analyses),
        notes=tuple(notes),
        sweeps=sweep_steps,
    )


def _train_step(ctx: _Context, probe: ModelProbe, arch: str, seed: int) -> TrainStep:
    """One (architecture, seed) run: new, resumed, done or (with ``replace_foreign``)
    retrained, and the cost of the epochs left."""
    spec = ctx.spec
    args = TrainingArgs(
        arch=arch,
        preset=spec.preset,
        classes=ctx.classes,
        seed=seed,
        epochs=spec.epochs_for(ctx.family),
        batch_size=spec.batch_size,
        transitions=ctx.transitions,
        keep_epochs=spec.keep_epochs,
        device=spec.device,
    )
    out = checkpoints_dir(ctx.root) / spec.checkpoint_name(arch, seed)
    state, done, differs = _checkpoint_state(out, args, ctx.fingerprint)
    if state == "retrain" and not spec.replace_foreign:
        raise RequestError(
            f"checkpoint {out} exists but was trained otherwise ({differs}); remove it, or "
            "choose other --seeds (names follow the seed)"
        )
    remaining = args.epochs - (done if state in ("done", "resume") else 0)
    seconds, peak = _train_cost(probe, args, ctx.pairs, remaining, ctx.state_size)
    per_example = 2 * probe.activation_bytes  # as _train_cost counts a batch
    return TrainStep(arch, seed, out, args, done, state, seconds, peak, per_example, ctx.pairs[0])


def _analysis_step(
    ctx: _Context, probe: ModelProbe, arch: str, trained: bool
) -> tuple[AnalysisStep, dict[str, float]]:
    """One architecture's analysis over every seed, costed on a placeholder request of the
    same shape (the checkpoints may not be trained yet), and the cost of the same request
    with each setting of the default sensitivity sweep, by its series label (a sweep point
    costs its own estimator's time: euclidean is a fraction of the default's)."""
    from coherence.dashboard import sweeps

    spec, info = ctx.spec, ctx.info
    selection = selection_for(spec, ctx.root, info, arch, ctx.classes)
    _check_test_batches(info, selection)
    model = build_model(arch, spec.preset, channels=len(info.channels), resolution=info.height)
    model = model.to(ctx.device)
    request = AnalysisRequest(
        checkpoints=tuple(f"planned-{i}" for i in range(len(spec.seeds))),
        data=str(info.root),
        classes=selection.classes,
        t_start=selection.t_start,
        n_steps=selection.n_steps,
        trajectories=selection.trajectories,
        responses=selection.responses,
        device=spec.device,
    )
    example = torch.from_numpy(
        info.load("test", ctx.classes[0], trajectories=[0], steps=slice(0, 1))[0]
    ).to(ctx.device)
    seconds, peak = _analysis_cost(probe, request, model, example)
    series_seconds = {
        setting.label(): _analysis_seconds(probe, _setting_request(request, setting))
        for setting in sweeps.SWEEP_ESTIMATORS
        if not setting.on_demand
    }
    units = len(spec.seeds) * len(selection.trajectories)
    # what is cached belongs to today's weights: a resumed or retrained seed replaces them
    state, cached = _request_state(ctx.root, selection) if trained else ("pending", 0)
    step = AnalysisStep(
        arch=arch,
        checkpoints=selection.checkpoints,
        query=selection.to_query(),
        units=units,
        n_examples=selection.n_examples,
        state=state,
        seconds=seconds * (units - min(cached, units)) / units,
        peak_bytes=peak,
        cached_units=cached,
        whole_seconds=seconds,
    )
    return step, series_seconds


def _check_test_batches(info: DatasetInfo, selection) -> None:
    """Read the test states the analyses will use, before any training: a NaN in a test
    trajectory was found only after the models had trained (hours with the paper preset).
    The reader refuses it with the file, the trajectory and the fix."""
    window = slice(selection.t_start, selection.t_start + selection.n_steps + 1)
    for name in selection.classes:
        info.load("test", name, trajectories=list(selection.trajectories), steps=window)


def _setting_request(request: AnalysisRequest, setting) -> AnalysisRequest:
    """``request`` with a sensitivity setting's estimator and options (for its cost)."""
    return replace(
        request,
        estimator=setting.estimator,
        depth=setting.depth,
        rtol=setting.rtol,
        energy_threshold=setting.energy_threshold,
    )


def _memory_notes(
    steps: list[TrainStep],
    analyses: list[AnalysisStep],
    available: int,
    transitions: int = DEFAULT_TRANSITIONS,
) -> list[str]:
    """What will not fit, with the fix that makes it fit: for training the --batch-size
    that does where a batch's activations are the excess (--limit only shrinks the pairs
    held in memory); for an analysis, which `analyze` would refuse mid-study."""
    notes = []
    for step in steps:
        if step.state == "done" or step.peak_bytes <= USABLE_SHARE * available:
            continue
        need = f"training {step.out.name} needs ≈ {step.peak_bytes / GIB:.1f} GiB of "
        need += f"{available / GIB:.1f} GiB"
        per_example = step.per_example_bytes
        examples = min(step.args.batch_size, step.pairs or step.args.batch_size)
        fixed = step.peak_bytes - examples * per_example
        fits = batch_size_that_fits(fixed, per_example, USABLE_SHARE * available)
        if fits >= 1 and step.state != "resume":  # a resume keeps its batch size
            peak = (fixed + fits * per_example) / GIB
            notes.append(f"{need}: use --batch-size {fits} (≈ {peak:.1f} GiB) or a larger machine")
        else:
            notes.append(f"{need}: import fewer trajectories (--limit) or use a larger machine")
    notes += [
        f"analysing {a.arch} needs ≈ {a.peak_bytes / GIB:.1f} GiB of {available / GIB:.1f} "
        "GiB: analyze would refuse it (it keeps a fifth free), so the study does not start; "
        f"analyse fewer classes (--classes: N = classes × {transitions} transitions) or on a "
        "machine with more memory (a GPU: --device cuda)"
        for a in analyses
        if over_memory(a, available)
    ]
    return notes


def _sweep_steps(
    ctx: _Context,
    analyses: list[AnalysisStep],
    series_seconds: dict[str, dict[str, float]],
    notes: list[str],
) -> tuple[SweepStep, ...]:
    """The sweeps' uncached analyses (the main analysis excluded: it is one of their points;
    before training, every planned one) and their cost: a snapshot costs the main analysis's
    estimate, a sensitivity point its own setting's (``series_seconds``). A dynamics sweep
    with nothing to trace is refused before training, or noted (in ``notes``) where the
    checkpoints exist already."""
    from coherence.dashboard import sweeps
    from coherence.surrogates.snapshots import resolve_keep

    spec = ctx.spec
    per_arch = {a.arch: a.whole_seconds or a.seconds for a in analyses}
    epochs = spec.epochs_for(ctx.family)
    out = []
    for kind, archs in (("dynamics", spec.dynamics_archs), ("sensitivity", spec.sweep_archs)):
        for arch in archs:
            if arch not in per_arch or (kind == "sensitivity" and not spec.sweep_dampings):
                continue
            if kind == "dynamics":
                what = [f"{e}" for e in resolve_keep(spec.keep_epochs, epochs) if e != epochs]
                series = [""] * len(what)
            else:
                planned = [
                    (s.label(), d, s.uses_damping)
                    for s in sweeps.SWEEP_ESTIMATORS
                    if not s.on_demand
                    for d in (spec.sweep_dampings if s.uses_damping else (None,))
                    # the main analysis: the default estimator at the paper's λ
                    if not (s == sweeps.SWEEP_ESTIMATORS[0] and d == sweeps.PAPER_DAMPING)
                ]
                what = [_setting_label(*p) for p in planned]
                series = [label for label, _, _ in planned]
            n = len(what)
            found = _pending(spec, ctx.root, ctx.info, arch, ctx.classes, kind)
            if found is not None:
                n, points, what, series = found
                if kind == "dynamics":
                    notes.extend(_kept_epochs_notes(spec, ctx.root, arch, epochs, points))
            elif kind == "dynamics" and not n:
                raise RequestError(
                    f"--dynamics {arch}: --keep-epochs {_keep_text(spec)} keeps no epoch "
                    f"before the last of the {epochs} trained, so there is no epoch to "
                    "compare; keep earlier ones (e.g. 'default', powers of two plus the last)"
                )
            costs = series_seconds.get(arch, {})
            seconds = sum(costs.get(label, per_arch[arch]) for label in series)
            out.append(SweepStep(kind, arch, n, seconds, tuple(what)))
    return tuple(out)


def _keep_text(spec: StudySpec) -> str:
    return "default" if spec.keep_epochs is None else ",".join(map(str, spec.keep_epochs)) or "none"


def kept_epochs(spec: StudySpec, root: Path, arch: str) -> tuple[int, list[int]]:
    """(epochs trained, the snapshot epochs before the last that every seed kept) of an
    architecture's trained checkpoints: the epochs its Training dynamics can compare."""
    from coherence.surrogates.snapshots import common_epochs

    names = [checkpoints_dir(root) / spec.checkpoint_name(arch, s) for s in spec.seeds]
    trained = min(len(ckpt.read_history(n)) for n in names)
    return trained, [e for e in common_epochs(names) if e < trained]


def _kept_epochs_notes(
    spec: StudySpec, root: Path, arch: str, epochs: int, points: int
) -> list[str]:
    """What a dynamics sweep over trained checkpoints will trace when their snapshots are
    not the ones --keep-epochs asks for: it applies to training still to run, and a rerun
    with other epochs would otherwise look as if it had traced them."""
    from coherence.surrogates.snapshots import resolve_keep

    trained, kept = kept_epochs(spec, root, arch)
    wanted = [e for e in resolve_keep(spec.keep_epochs, epochs) if e < trained]
    if not points:
        return [
            f"dynamics {arch}: its checkpoints kept no snapshot before their last epoch, so "
            "there is no epoch to compare; --keep-epochs applies to training still to run "
            "(new checkpoints: another workspace or other --seeds)"
        ]
    if kept != wanted:
        asked = f"epochs {', '.join(map(str, wanted))}" if wanted else "none"
        return [
            f"dynamics {arch}: the trained checkpoints kept epochs {', '.join(map(str, kept))} "
            f"before their last (all seeds); --keep-epochs {_keep_text(spec)} keeps {asked} "
            "there, but it applies to training still to run: the dynamics trace the kept ones"
        ]
    return []


def sweep_points(spec: StudySpec, root: Path, info: DatasetInfo, arch: str, classes, kind, runner):
    """The sweep's points, keyed as the dashboard's panels key them."""
    from coherence.dashboard import sweeps

    selection = selection_for(spec, root, info, arch, classes)
    if kind == "dynamics":
        return sweeps.dynamics_points(root, selection, runner)
    return sweeps.sensitivity_points(root, selection, runner, dampings=spec.sweep_dampings)


def point_label(kind: str, point) -> str:
    """'1' (an epoch) or the setting's label (``_setting_label``)."""
    if kind == "dynamics":
        return f"{point.x:g}"
    return _setting_label(point.series, point.x, point.uses_damping)


def _setting_label(series: str, damping: float | None, uses_damping: bool) -> str:
    """'ekfac-krylov λ=0.01'; 'euclidean' alone: no λ, which it ignores."""
    return series + (f" λ={damping:g}" if uses_damping else "")


def _pending(spec, root, info, arch, classes, kind) -> tuple[int, int, list[str], list[str]] | None:
    """(uncached, all, the uncached ones' labels, their series) points of a sweep whose
    checkpoints exist, the main analysis excluded (the main step counts it); None before
    they are trained."""
    names = [spec.checkpoint_name(arch, s) for s in spec.seeds]
    if not all((checkpoints_dir(root) / n / ckpt.CONFIG_FILE).is_file() for n in names):
        return None
    try:
        runner = _read_runner(root)
        points, problems = sweep_points(spec, root, info, arch, classes, kind, runner)
        main = runner.key(selection_for(spec, root, info, arch, classes).to_request(root))
    except CoherenceError:
        return None
    if problems:
        return None
    others = [p for p in points if p.key != main]
    todo = [p for p in others if not runner.is_done(p.key)]
    return len(todo), len(others), [point_label(kind, p) for p in todo], [p.series for p in todo]
