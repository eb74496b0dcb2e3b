"""Which selections can be computed: one sentence per problem, naming the value and the fix.

Pure (no streamlit). Used twice: the controls' table (``controls.read_query``) explains and
replaces every bad value of a shared link, and the page lists ``problems`` of the sidebar's
selection instead of computing it (too few classes, a window past the trajectories or beyond
N ≤ 512, a trajectory that does not exist, CUDA without a GPU, a model that does not fit the
data). The rules the engine owns are asked of it, not restated: the window of
``batch.check_window``, and N, damping, rtol, estimator, responses and device of the
AnalysisRequest (``request_problem``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from coherence.analysis.batch import check_window
from coherence.analysis.request import AnalysisRequest
from coherence.dashboard.workspace_scan import Catalog, DatasetEntry
from coherence.errors import RequestError

if TYPE_CHECKING:
    from coherence.dashboard.selection import Selection

MAX_BATCHES = 64  # trajectories per analysis the dashboard accepts


def split_list(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")  # ASCII digits only, as written


def parse_ranges(text: str, limit: int) -> tuple[int, ...]:
    """'0-3,7' → (0, 1, 2, 3, 7); indices must lie in 0..limit − 1 (checked before any range
    is expanded, so an absurd '0-999999999' costs nothing)."""
    out: set[int] = set()
    for part in split_list(text):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise RequestError(f"{part!r} is not an index or a range like 0-5")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise RequestError(f"range {part!r} runs backwards")
        if hi >= limit:
            raise RequestError(f"index {hi} does not exist: {_count_trajectories(limit)}")
        out.update(range(lo, hi + 1))
    if not out:
        raise RequestError("no trajectory index given")
    return tuple(sorted(out))


def check_group(catalog: Catalog, entry: DatasetEntry, names: Sequence[str]) -> str | None:
    """None if ``names`` are checkpoints of one model group that fits the dataset."""
    if not names:
        return "no checkpoint selected; pick at least one seed"
    unknown = [n for n in names if catalog.checkpoint(n) is None]
    if unknown:  # a copy of another is in the workspace: "not in the workspace" misled
        said = [
            f"checkpoint {name} holds the same weights as {original}, which the workspace "
            f"lists in its place (one model is not pooled as two seeds): choose {original}, "
            "or remove the copy"
            for name in unknown
            if (original := catalog.copies.get(name))
        ]
        missing = [n for n in unknown if n not in catalog.copies]
        if missing:
            said.append(f"checkpoint(s) {', '.join(missing)} are not in the workspace")
        return "; ".join(said)
    misfit = [n for n in names if not catalog.checkpoint(n).fits(entry)]
    if misfit:
        first = catalog.checkpoint(misfit[0])
        return (
            f"checkpoint {misfit[0]} was trained on {first.family} data at "
            f"{first.resolution[0]}×{first.resolution[1]}, but {entry.name} is {entry.family} "
            f"at {entry.resolution[0]}×{entry.resolution[1]}; pick a model trained on it"
        )
    groups = {catalog.group_of(entry, n).label for n in names}
    if len(groups) > 1:
        return (
            f"checkpoints {', '.join(names)} mix model groups ({', '.join(sorted(groups))}); "
            "one group holds the seeds of one architecture: use compare mode for two"
        )
    return None


def earlier_epochs(catalog: Catalog, names: Sequence[str]) -> tuple[int, ...]:
    """The snapshot epochs every checkpoint of ``names`` kept, but the last epoch when every
    seed trained to it (that snapshot holds the checkpoints' own weights: the final
    analysis). The Training dynamics points follow the same rule (``sweeps.group_epochs``),
    so every epoch drawn there opens here."""
    entries = [catalog.checkpoint(n) for n in names]
    if not entries or None in entries:
        return ()
    common = set.intersection(*(set(e.epochs) for e in entries))
    final = final_epoch(catalog, names)
    return tuple(sorted(e for e in common if e != final))


def final_epoch(catalog: Catalog, names: Sequence[str]) -> int | None:
    """The epoch whose weights are the checkpoints' own: the one every seed trained to
    (None when they differ, or have no history)."""
    trained = {e.trained_epochs for n in names if (e := catalog.checkpoint(n)) is not None}
    return trained.pop() if len(trained) == 1 and 0 not in trained else None


def epoch_problem(catalog: Catalog, selection: Selection) -> str | None:
    """None when every checkpoint of every shown group kept the selection's epoch."""
    for names in selection.groups:
        offered = earlier_epochs(catalog, names) if names else ()
        if names and selection.epoch not in offered:
            return (
                f"checkpoint(s) {', '.join(names)} keep no common snapshot of epoch "
                f"{selection.epoch} (they share "
                + (", ".join(map(str, offered)) or "none")
                + "); choose another epoch, or the final weights"
            )
    return None


def min_classes(entry: DatasetEntry) -> int:
    """Class transfer and inter-class curves need 2 classes (when the dataset has them)."""
    return min(2, len(entry.classes))


def check_classes(entry: DatasetEntry, classes: Sequence[str]) -> str | None:
    unknown = [c for c in classes if c not in entry.classes]
    if unknown:
        return (
            f"class(es) {', '.join(unknown)} are not in the test split of {entry.name} "
            f"(it has {', '.join(entry.classes)})"
        )
    if len(set(classes)) < min_classes(entry):
        return (
            f"pick at least {min_classes(entry)} classes: the class transfer matrix and the "
            "inter-class curves compare classes"
        )
    return None


def check_constants(
    catalog: Catalog, entry: DatasetEntry, names: Sequence[str], classes: Sequence[str]
) -> str | None:
    """A chosen class of physical constants (γ, ν) that a seed never trained on, said
    before Compute (the analysis refuses it too): a class of γ = 1.6 beside the demo's 1.4
    was listed, offered and analysed without a word."""
    from coherence.surrogates.checkpoint import unseen_constants

    for name in names:
        found = catalog.checkpoint(name)
        if found is None:
            continue
        unseen = unseen_constants(dict(found.physics), found.classes, entry.class_physics, classes)
        if unseen:
            return (
                f"{name} never trained on the physical constants of {'; '.join(unseen)}: "
                "leave that class out, or choose a model group trained on it"
            )
    return None


def check_trajectories(entry: DatasetEntry, classes: Sequence[str], trajectories) -> str | None:
    if not classes:  # the classes' own check says so; "trajectory 0 does not exist" misled
        return None
    n_test = entry.n_test(classes)
    if not trajectories:
        return "no test trajectory selected; pick at least one (each is one batch)"
    if len(trajectories) > MAX_BATCHES:
        return f"{len(trajectories)} trajectories: the dashboard computes at most {MAX_BATCHES}"
    bad = [t for t in trajectories if not 0 <= t < n_test]
    if bad:
        return f"trajectory {bad[0]} does not exist: {_count_trajectories(n_test)}"
    return None


def _count_trajectories(n: int) -> str:
    if n == 0:
        return "the selected classes have no test trajectory"
    if n == 1:
        return "there is 1 test trajectory per class (index 0)"
    return f"there are {n} test trajectories per class (0..{n - 1})"


def request_problem(**settings: Any) -> str | None:
    """What the AnalysisRequest says about ``settings`` (None: it accepts them). The rules on
    damping, rtol, estimator, responses, device and the batch size N live once, in the
    request; the dashboard asks it instead of re-checking. Names stand in for the paths
    (a request does not read them), two classes and one step for what is not asked about."""
    try:
        AnalysisRequest(**{**_PROBE, **settings})
    except RequestError as exc:
        return str(exc)
    return None


_PROBE: dict[str, Any] = {
    "checkpoints": ("probe",),
    "data": "probe",
    "classes": ("probe-a", "probe-b"),
    "n_steps": 1,
    "trajectories": (0,),
}


def window_problem(entry: DatasetEntry, n_classes: int, t_start: int, n_steps: int) -> str | None:
    """The rules on a window, as one sentence (None: it fits): the engine's, inside the
    trajectories (``batch.check_window``) and 2 ≤ N = classes × steps ≤ MAX_EXAMPLES (the
    request's rule; not asked without classes, whose own problem is reported); and the
    dashboard's own, at least 2 steps where the dataset has them (every score, lag curve
    and the two-time map compare times; `coherence analyze` only warns)."""
    try:  # batch.check_window reads only the time axis and the directory name
        check_window(SimpleNamespace(times=entry.times, root=Path(entry.name)), t_start, n_steps)
    except RequestError as exc:
        return str(exc)
    if n_steps < 2 <= entry.transitions:  # the engine computes it, but the scores compare
        # times; a dataset of one transition keeps its one-step view (class transfer)
        return (
            f"a window of {n_steps} time step has no time structure: the scores, lag curves "
            "and two-time map compare times; choose at least 2 steps"
        )
    if n_classes < 1:
        return None
    classes = tuple(f"class-{i}" for i in range(n_classes))
    return request_problem(classes=classes, t_start=t_start, n_steps=n_steps)


def check_responses(entry: DatasetEntry, responses: Sequence[str]) -> str | None:
    if not responses:
        return (
            "no response observable selected; pick one (SMSE is the paper's, and the scores "
            "read it)"
        )
    if not entry.conserved and any(r in ("mass", "energy") for r in responses):
        return (
            f"mass and energy responses need compressible-Euler data; {entry.name} is "
            f"{entry.family}"
        )
    return None


def problems(selection: Selection, catalog: Catalog, *, cuda_available: bool = False) -> list[str]:
    """Every reason the selection cannot be computed, one sentence each (empty: valid)."""
    entry = catalog.dataset(selection.dataset)
    if entry is None:
        return [f"dataset {selection.dataset!r} is not in the workspace"]
    checks = [
        check_group(catalog, entry, selection.checkpoints),
        check_classes(entry, selection.classes),
        check_constants(catalog, entry, selection.checkpoints, selection.classes),
        check_trajectories(entry, selection.classes, selection.trajectories),
        window_problem(entry, len(selection.classes), selection.t_start, selection.n_steps),
        check_responses(entry, selection.responses),
    ]
    if selection.compare:
        error = check_group(catalog, entry, selection.compare) or check_constants(
            catalog, entry, selection.compare, selection.classes
        )
        checks.append(f"compare group: {error}" if error else None)
        if sorted(selection.compare) == sorted(selection.checkpoints):
            checks.append(  # chosen by hand or in a link: one group beside itself
                "the second model group holds the same checkpoints as the first, so the "
                "comparison would show one group beside itself; choose another group or "
                "other seeds for it, or turn compare off"
            )
    if selection.epoch is not None:
        checks.append(epoch_problem(catalog, selection))
    if selection.device == "cuda" and not cuda_available:
        checks.append("device cuda was chosen but no CUDA GPU is visible; use auto or cpu")
    return [c for c in checks if c]
