"""A plain-language reading of the headline scores: what a visitor should take away in ten
seconds, with each score's reference marks and unit.

The thresholds are reading aids chosen on the scores' own scales (diagonal dominance: 0.5 is
a flat map, 1 a perfectly local one; inter/intra: 0 no transfer across classes, 1 full
transfer), not results of the paper. Pure: no streamlit, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from coherence.analysis.scores import Score, Scores
from coherence.analysis.vocabulary import PAPER_BATCHES

if TYPE_CHECKING:
    from coherence.analysis.results import AnalysisResult

K = TypeVar("K", bound=Hashable)  # a model group's label or cache key

LOCAL, TRANSFER = 0.75, 0.6  # diagonal dominance above: time-local; below: transfers
CLASS_TRANSFER, CLASS_SPECIFIC = 0.5, 0.2  # inter/intra ratio above / below
# the residual correction's norm over the Galerkin map's above which the SMSE map is mostly
# EK-FAC's reading: 0.7–1.4 on the small dense-reference models, 50–170 on the demo models
CORRECTION_DOMINATES = 10.0


@dataclass(frozen=True)
class Reference:
    """How to read one headline score: its title (with its unit), the values that anchor it
    (``marks``), and the same in a few words for a narrow metric cell (``short``)."""

    name: str
    title: str
    marks: str  # e.g. "0.5 flat · 1 perfectly local"
    short: str  # e.g. "0.5 flat · 1 local"


def response_note(response: str) -> str | None:
    """Why scores read another map than SMSE's, or None for SMSE's: without SMSE among the
    responses they read the first one selected, and the scores' names do not say so (a
    walk-through found the mass map's scores shown as the headline)."""
    if response == "smse":
        return None
    return (
        f"the scores read the {response} map, not SMSE's: SMSE is not among the selected responses"
    )


REFERENCES = (
    Reference(
        "diagonal_dominance",
        "Diagonal dominance",
        "0.5 flat · 1 perfectly local",
        "0.5 flat · 1 local",
    ),
    Reference(
        "decay_length",
        "Lag decay (steps)",
        "1 − 1/e ≈ 0.63: perfectly local · ≥ T − 1 (the last lag of the window): never decays",
        "0.63 local, T−1 flat",
    ),
    Reference(
        "inter_intra_ratio",
        "Inter / intra class",
        "0 class-specific · 1 full transfer across classes",
        "0 none · 1 full",
    ),
    Reference("toeplitz_defect", "Toeplitz defect", "0 depends on the lag only", "0 lag only"),
)


def _spec(score: Score) -> tuple[int, str]:
    """One number format for a score's median and quartiles, as (digits, kind): the shortest
    that keeps distinct values apart and prints no non-zero value as zero: 2, 3 or 4 decimals
    ("f") below 10 ('0.913 [0.911, 0.917]', not '0.91 [0.91, 0.93]'), else significant
    digits ("g": '2e-05', '10.42')."""
    values = [v for v in (score.q1, score.median, score.q3) if math.isfinite(v)]
    distinct = len({round(v, 12) for v in values})

    def works(digits: int, kind: str) -> bool:
        texts = [format(v, f".{digits}{kind}") for v in values]
        zero = any(v != 0 and float(t) == 0 for v, t in zip(values, texts, strict=True))
        return len(set(texts)) == distinct and not zero

    if all(abs(v) < 10 for v in values):
        for decimals in (2, 3, 4):
            if works(decimals, "f"):
                return decimals, "f"
    for digits in range(3, 8):
        if works(digits, "g"):
            return digits, "g"
    return 8, "g"


def _formatter(score: Score, peers: Sequence[Score | None] = ()) -> Callable[[float], str]:
    """The score's format (``_spec``), widened to its ``peers`` (the same score of the other
    model groups on the page) when all use the same kind, so two groups' values line up:
    '0.620' beside '0.913', not '0.62' beside '0.913'."""
    digits, kind = _spec(score)
    others = [_spec(p) for p in peers if p is not None and math.isfinite(p.median)]
    if all(k == kind for _, k in others):
        digits = max([digits] + [d for d, _ in others])
    return lambda v: format(v, f".{digits}{kind}")


def score_peers(by_group: Mapping[K, Scores], own: K) -> dict[str, list[Score | None]]:
    """Per score name, the same score of every group in ``by_group`` but ``own``: the
    ``peers`` whose format a group's values share (compare mode, the report's table)."""
    tables = [{s.name: s for s in scores.as_list()} for g, scores in by_group.items() if g != own]
    return {ref.name: [t.get(ref.name) for t in tables] for ref in REFERENCES}


def format_score(score: Score | None, peers: Sequence[Score | None] = ()) -> str:
    """'0.82' (or '≥ 5.0' where the median is a lower bound: censored decay lengths it
    depends on; '—' when undefined), in the format its quartiles share (``quartile_band``),
    as wide as its ``peers``' (other groups)."""
    if score is None or not math.isfinite(score.median):
        return "—"
    text = _formatter(score, peers)(score.median)
    return f"≥ {text}" if score.bounds()[0] else text


def quartile_band(score: Score | None, peers: Sequence[Score | None] = ()) -> str:
    """'[0.911, 0.917]': Q1 and Q3 in the median's format ('undefined' without one); '≥'
    before a quartile that is a lower bound ('[2.18, ≥ 5.72]')."""
    if score is None or not math.isfinite(score.median):
        return "undefined"
    number = _formatter(score, peers)
    _, low, high = score.bounds()
    q1, q3 = ("≥ " if b else "" for b in (low, high))
    return f"[{q1}{number(score.q1)}, {q3}{number(score.q3)}]"


def spread_of(score: Score) -> str:
    """What the quartiles are taken over: '3 seeds (each the mean of its 6 batches)', '3
    seeds', or '6 batches of one checkpoint'."""
    batches = score.values.shape[1]
    count = len(score.summarized()[0])  # the seeds (or batches) with a value
    if not score.across_seeds:
        return f"{count} batch{'es' if count != 1 else ''} of one checkpoint"
    seeds = f"{count} seed{'s' if count != 1 else ''}"
    return seeds + (f" (each the mean of its {batches} batches)" if batches > 1 else "")


def uncertainty(score: Score | None, peers: Sequence[Score | None] = ()) -> str:
    """'Q1–Q3 [0.78, 0.86] over 3 seeds (each the mean of its 2 batches)'."""
    if score is None or not math.isfinite(score.median):
        return "undefined for this selection"
    return f"Q1–Q3 {quartile_band(score, peers)} over {spread_of(score)}"


def verdict(scores: Scores) -> str:
    """One sentence: time-local memorization vs transfer across time, then across classes."""
    table = {s.name: s for s in scores.as_list()}
    dd = table.get("diagonal_dominance")
    parts = []
    if dd is not None and math.isfinite(dd.median):
        if dd.median >= LOCAL:
            parts.append("time-local: memorizes step by step (each time step learns for itself)")
        elif dd.median <= TRANSFER:
            parts.append("transfers across time: a step at one time moves the others too")
        else:
            parts.append("partly time-local: some learning transfers to nearby times")
    ratio = table.get("inter_intra_ratio")
    if ratio is not None and math.isfinite(ratio.median):
        if ratio.median >= CLASS_TRANSFER:
            parts.append("transfers across initial-condition classes")
        elif ratio.median <= -CLASS_SPECIFIC:  # −0.28 read as "little transfer" (a review)
            parts.append("classes interfere (a step on one class worsens the others' predictions)")
        elif ratio.median <= CLASS_SPECIFIC:
            parts.append("class-specific (little transfer between classes)")
        else:
            parts.append("some transfer between classes")
    if not parts:
        return "not enough time steps or classes for a reading"
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def caveats(
    *, batches: int, correction_share: float | None = None, response: str = "smse"
) -> list[str]:
    """Why the verdict is to be read with care, in a few words each: the map is mostly
    EK-FAC's residual correction (``correction_share``, the median of ``residual_correction``
    over the solves; it corrects the SMSE map only), or each seed's scores rest on fewer test
    trajectories per class than the paper's 6 (``batches``). Why: a walk-through read a flat
    "memorizes" above a page whose residual line said the map was 103× the correction, from
    one trajectory per class."""
    found = []
    share = correction_share if response == "smse" else None
    if share is not None and share >= CORRECTION_DOMINATES:
        found.append(
            f"the map is mostly EK-FAC's correction ({share:.3g}× the solved part): a deeper "
            "Krylov depth or cg at the paper's rtol says whether the reading holds"
        )
    if batches < PAPER_BATCHES:
        found.append(
            f"{batches} test trajector{'y' if batches == 1 else 'ies'} per class and seed "
            f"(the paper: {PAPER_BATCHES})"
        )
    return found


def result_caveats(result: AnalysisResult) -> list[str]:
    """``caveats`` of a result: its batches per seed, its SMSE map's correction share."""
    from coherence.analysis.diagnostics import correction_share

    return caveats(
        batches=int(result.H[result.primary].shape[1]),
        correction_share=correction_share(result.diagnostics),
        response=result.primary,
    )


def caveat_line(found: Sequence[str]) -> str:
    """'Read with care: …; ….' or '' without caveats."""
    return f"Read with care: {'; '.join(found)}." if found else ""
