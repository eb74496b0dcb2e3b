"""What a study trains and analyses (``StudySpec``) and the plan made of it (``StudyPlan``:
one step per training run, analysis and sweep, each with its estimated cost)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coherence.analysis.request import MAX_DAMPING
from coherence.analysis.vocabulary import PAPER_BATCHES
from coherence.cache.cost import format_seconds
from coherence.errors import RequestError
from coherence.resources import USABLE_SHARE
from coherence.surrogates.training import TrainingArgs
from coherence.wording import plural

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
    batches: int = PAPER_BATCHES  # test trajectories analysed per seed
    classes: tuple[str, ...] = ()  # empty: the first 3 test classes of the dataset
    epochs: int | None = None  # None: demo 12, paper 150 (CE) / 100 (NS)
    batch_size: int = 32
    device: str = "auto"
    naming: str = "{dataset}_{arch}_{preset}_s{seed}"  # checkpoint directory names
    replace_foreign: bool = False  # retrain a same-named checkpoint trained otherwise
    keep_epochs: tuple[int, ...] | None = None  # training snapshots; None: powers of 2 + last
    # Sweeps precomputed for the dashboard's 'Training dynamics' and 'Sensitivity' panels,
    # on the same selection as the main analysis (``dashboard.sweeps``): the architectures
    # whose snapshot epochs are analysed, and those swept over ``sweep_dampings`` with the
    # default estimators of ``sweeps.SWEEP_ESTIMATORS`` (cg stays on demand).
    dynamics_archs: tuple[str, ...] = ()
    sweep_archs: tuple[str, ...] = ()
    sweep_dampings: tuple[float, ...] = ()
    # Trained checkpoints of other names that are this study's own, (arch, seed, name): set
    # by planning (``study_plan.adopt_trained``), e.g. the demo's vit_demo_s10 in a study of
    # ce_demo; ``adopt`` False keeps every checkpoint under ``naming`` (the demo's own).
    adopted: tuple[tuple[str, int, str], ...] = ()
    adopt: bool = True

    def __post_init__(self) -> None:
        if self.preset not in ("demo", "paper"):
            raise RequestError(f"--preset {self.preset!r}: choose demo or paper")
        if not self.archs:
            raise RequestError("--archs is empty: give unet, vit or both, e.g. unet,vit")
        from coherence.surrogates.registry import ARCHITECTURES

        if unknown := [a for a in self.archs if a not in ARCHITECTURES and ":" not in a]:
            raise RequestError(
                f"--archs {','.join(unknown)}: unknown architecture; choose among "
                f"{', '.join(ARCHITECTURES)} (or a custom 'package.module:factory')"
            )
        if len(set(self.archs)) != len(self.archs):  # twice: two runs into one checkpoint
            raise RequestError(
                f"--archs {','.join(self.archs)}: name each architecture once, e.g. unet,vit"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise RequestError(
                f"--seeds {','.join(map(str, self.seeds))}: give distinct seeds, e.g. 10,35,42"
            )
        if self.batches < 1:
            raise RequestError(f"--batches {self.batches}: give at least 1 (paper: 6)")
        if self.epochs is not None and self.epochs < 1:
            raise RequestError(f"--epochs {self.epochs}: give at least 1")
        if self.batch_size < 1:
            raise RequestError(f"--batch-size {self.batch_size}: give at least 1 (default 32)")
        self._check_sweeps()

    def _check_sweeps(self) -> None:
        """A sweep names architectures the study trains, and the λ sweep positive λ values;
        the dynamics need snapshots to analyse. Why here: a typo would otherwise skip its
        sweep silently after hours of training."""
        for flag, archs in (("--dynamics", self.dynamics_archs), ("--sweep", self.sweep_archs)):
            if unknown := [a for a in archs if a not in self.archs]:
                raise RequestError(
                    f"{flag} {','.join(unknown)}: not among the study's --archs "
                    f"{','.join(self.archs)}; name architectures the study trains"
                )
        if self.dynamics_archs and self.keep_epochs == ():
            raise RequestError(
                f"--dynamics {','.join(self.dynamics_archs)} with --keep-epochs none: the "
                "training dynamics analyse the kept snapshots; keep some (e.g. 'default')"
            )
        bad = [d for d in self.sweep_dampings if not (math.isfinite(d) and 0 < d <= MAX_DAMPING)]
        if bad:
            raise RequestError(
                f"--sweep-dampings {','.join(f'{d:g}' for d in bad)}: λ must be a finite "
                f"number in (0, {MAX_DAMPING:g}] (e.g. 1e-6,1e-4,1e-2)"
            )
        if self.sweep_archs and not self.sweep_dampings:
            raise RequestError(
                f"--sweep {','.join(self.sweep_archs)} with no --sweep-dampings: give the λ "
                "values to sweep (e.g. 1e-6,1e-5,1e-4,1e-3,1e-2,1e-1)"
            )

    def checkpoint_name(self, arch: str, seed: int) -> str:
        for adopted_arch, adopted_seed, name in self.adopted:
            if (adopted_arch, adopted_seed) == (arch, seed):
                return name
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
    per_example_bytes: int = 0  # of peak_bytes, what each example of a batch adds
    pairs: int | None = None  # training pairs, a batch holds at most these (None: unknown)


@dataclass(frozen=True)
class AnalysisStep:
    """One architecture's analyses: all seeds × batches of the window, one cache entry."""

    arch: str
    checkpoints: tuple[str, ...]  # names under <workspace>/checkpoints
    query: dict[str, str]  # the dashboard's URL parameters for this selection
    units: int  # checkpoints × batches
    n_examples: int
    state: str  # cached | pending
    seconds: float  # of the units not cached yet
    peak_bytes: int
    cached_units: int = 0  # a killed study's finished units: the rerun resumes from them
    # all its units, cached or not: what one more like it costs (a dynamics snapshot); the
    # plan priced snapshots at 0 s once the main analysis was cached (a walk-through)
    whole_seconds: float = 0.0


@dataclass(frozen=True)
class SweepStep:
    """One architecture's sweep for a dashboard panel: ``requests`` more analyses like the
    main one (snapshot epochs, or other λ and estimators), each its own cache entry."""

    kind: str  # dynamics | sensitivity
    arch: str
    requests: int  # analyses in the sweep besides the main one (an upper bound if untrained)
    seconds: float  # each point at its own setting's estimate (a snapshot: the main one's)
    what: tuple[str, ...] = ()  # their labels: epochs, or 'ekfac-krylov λ=0.01', 'euclidean'


def over_memory(step: AnalysisStep, available: int) -> bool:
    """An uncached analysis `analyze` would refuse on ``available`` bytes: over four fifths
    of them, its own rule (the plan's note and the study's refusal read it alike)."""
    return step.state != "cached" and step.peak_bytes > USABLE_SHARE * available


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
    def has_work(self) -> bool:
        """Whether anything is left to train or analyse (not only to read from the cache)."""
        return (
            any(s.state != "done" for s in self.train)
            or any(a.state != "cached" for a in self.analyses)
            or any(s.requests > 0 for s in self.sweeps)
        )

    @property
    def analyses_over_memory(self) -> tuple[AnalysisStep, ...]:
        """The uncached analyses that `analyze` would refuse here: a run trained for half an
        hour, then stopped there."""
        return tuple(a for a in self.analyses if over_memory(a, self.available_bytes))

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
                "done": f"done ({plural(step.done_epochs, 'epoch')})",
                "resume": f"resume after epoch {step.done_epochs} of {step.args.epochs}",
                "new": plural(step.args.epochs, "epoch"),
                "retrain": f"retrain {plural(step.args.epochs, 'epoch')} (trained otherwise)",
            }[step.state]
            cost = "" if step.state == "done" else _cost(step.seconds, step.peak_bytes)
            lines.append(f"  train {step.out.name}: {what}{cost}")
        for a in self.analyses:
            done = f" ({a.cached_units} cached)" if 0 < a.cached_units < a.units else ""
            units = f"{plural(a.units, 'unit')}{done}, N = {a.n_examples}"
            what = "cached" if a.state == "cached" else units
            cost = "" if a.state == "cached" else _cost(a.seconds, a.peak_bytes)
            seeds = plural(len(a.checkpoints), "seed")
            lines.append(f"  analyse {a.arch} ({seeds}): {what}{cost}")
        if self.analyses:  # the Rollout panel's job, as the dashboard keys it
            lines.append(
                "  roll out each analysed model group over its test trajectories (seconds at "
                "demo size; cached ones skipped)"
            )
        for sweep in self.sweeps:
            what = "snapshot epochs" if sweep.kind == "dynamics" else "λ / estimator settings"
            count = plural(sweep.requests, "analysis", "analyses")
            shown = sweep.what if len(sweep.what) <= 8 else (*sweep.what[:6], "…", sweep.what[-1])
            which = f" ({', '.join(shown)})" if sweep.what else ""
            lines.append(
                f"  {sweep.kind} {sweep.arch}: up to {count} of {what}{which} (cached ones "
                f"skipped) — ≈ {format_seconds(sweep.seconds)} if none is cached"
                if sweep.requests
                else f"  {sweep.kind} {sweep.arch}: nothing to compute (cached)"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  total to run: ≈ {format_seconds(self.seconds)}")
        return lines


def _cost(seconds: float, peak: int) -> str:
    return f" — ≈ {format_seconds(seconds)}, peak ≈ {peak / GIB:.2f} GiB"
