"""The plain-language verdict on synthetic influence with a known structure."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.analysis.scores import compute_scores, decay_length
from coherence.analysis.verdict import (
    CORRECTION_DOMINATES,
    REFERENCES,
    caveat_line,
    caveats,
    format_score,
    uncertainty,
    verdict,
)
from coherence.analysis.vocabulary import PAPER_BATCHES


def _h(diagonal: float, off: float, inter: float, T: int = 6, C: int = 2) -> np.ndarray:
    h = np.full((2, 1, T, C, T, C), inter)
    for c in range(C):
        h[:, :, :, c, :, c] = off
        for t in range(T):
            h[:, :, t, c, t, c] = diagonal
    return h


def test_local_maps_read_as_memorization_and_flat_ones_as_transfer():
    local = compute_scores(_h(diagonal=4.0, off=0.0, inter=0.0))
    assert local.diagonal_dominance.median == 1.0
    assert verdict(local).startswith("Time-local: memorizes step by step")
    assert "class-specific" in verdict(local)
    flat = compute_scores(_h(diagonal=1.0, off=1.0, inter=1.0))
    assert flat.diagonal_dominance.median == 0.5
    assert verdict(flat).startswith("Transfers across time")
    assert "transfers across initial-condition classes" in verdict(flat)
    # a negative ratio is interference, not "little transfer" (it read so at −0.28)
    opposed = compute_scores(_h(diagonal=1.0, off=1.0, inter=-1.0))
    assert opposed.inter_intra_ratio.median < -0.2
    assert "classes interfere" in verdict(opposed) and "class-specific" not in verdict(opposed)


def test_formatting_units_censoring_and_marks():
    scores = compute_scores(_h(diagonal=1.0, off=1.0, inter=1.0))
    assert format_score(scores.decay_length) == "≥ 5.00"  # never decays: censored at T − 1
    assert format_score(None) == "—"
    assert uncertainty(scores.diagonal_dominance).startswith("Q1–Q3 [0.50, 0.50] over 2")
    assert [r.name for r in REFERENCES] == [
        "diagonal_dominance",
        "decay_length",
        "inter_intra_ratio",
        "toeplitz_defect",
    ]
    assert "0.5 flat" in REFERENCES[0].marks and "1 perfectly local" in REFERENCES[0].marks
    assert REFERENCES[1].title == "Lag decay (steps)"  # the unit on the metric
    local, _ = decay_length(np.array([0.0, 0.0, 1.0, 0.0, 0.0]))  # a perfectly local map
    assert f"{local:.2f} local" in REFERENCES[1].short and f"{local:.2f}" in REFERENCES[1].marks
    assert all(len(r.short) <= 20 for r in REFERENCES)  # fits a 150 px metric cell


def test_a_score_and_its_quartiles_share_the_decimals_that_tell_them_apart():
    from coherence.analysis.scores import Score
    from coherence.analysis.verdict import quartile_band

    def score(values):
        v = np.asarray(values, dtype=float).reshape(1, -1)
        return Score("diagonal_dominance", "", v, np.zeros(v.shape, dtype=bool))

    close = score([0.9061, 0.9128, 0.9130, 0.9282])  # Q1 0.9111, median 0.9129, Q3 0.9168
    assert format_score(close) == "0.913" and quartile_band(close) == "[0.911, 0.917]"
    apart = score([0.5, 0.6, 0.7, 0.8])
    assert format_score(apart) == "0.65" and quartile_band(apart) == "[0.57, 0.72]"
    small = score([-0.0269, -0.0125, -0.0112, 0.00641])  # Q1 −0.0161, median −0.0119, Q3 −0.0068
    assert format_score(small) == "-0.012" and quartile_band(small) == "[-0.016, -0.007]"
    assert quartile_band(None) == "undefined"
    tiny = score([1e-5, 3e-5, 5e-5, 7e-5])  # e.g. the inter/intra ratio of unrelated classes
    assert format_score(tiny) == "4e-05" and quartile_band(tiny) == "[2.5e-05, 5.5e-05]"
    assert "0.0000" not in quartile_band(score([-1e-5, -2e-5, -3e-5]))
    large = score([10.41, 10.43, 10.45])  # above 10: significant digits, still apart
    assert format_score(large) == "10.43" and quartile_band(large) == "[10.42, 10.44]"


def test_two_groups_show_a_score_with_the_same_decimals():
    """Compare mode: each group's score as wide as the other's ('0.650' beside '0.913'), the
    wider one unchanged; formats of another kind (significant digits) are left alone."""
    from coherence.analysis.scores import Score
    from coherence.analysis.verdict import quartile_band

    def score(values):
        v = np.asarray(values, dtype=float).reshape(1, -1)
        return Score("diagonal_dominance", "", v, np.zeros(v.shape, dtype=bool))

    close = score([0.9061, 0.9128, 0.9130, 0.9282])
    apart = score([0.5, 0.6, 0.7, 0.8])
    assert format_score(apart, [close]) == "0.650"
    assert quartile_band(apart, [close]) == "[0.575, 0.725]"
    assert format_score(close, [apart]) == "0.913"  # already the wider
    assert uncertainty(apart, [close]).startswith("Q1–Q3 [0.575, 0.725]")
    tiny = score([1e-5, 3e-5, 5e-5, 7e-5])
    assert format_score(apart, [tiny, None]) == "0.65"  # another kind: own format
    assert format_score(tiny, [apart]) == "4e-05"


def test_a_verdict_from_a_correction_dominated_map_or_few_trajectories_is_qualified():
    """The map mostly EK-FAC's correction, or fewer trajectories per class than the paper's
    6: each said; neither, nothing (a walk-through read a flat "memorizes" above a page whose
    residual line said the map was 103× the correction, from one trajectory per class)."""
    assert caveats(batches=PAPER_BATCHES) == [] and caveat_line([]) == ""
    assert caveats(batches=PAPER_BATCHES, correction_share=1.4) == []  # the small models'
    dominated = caveats(batches=PAPER_BATCHES, correction_share=103.0)
    assert (
        len(dominated) == 1
        and "mostly EK-FAC's correction (103× the solved part)" in (dominated[0])
    )
    assert len(caveats(batches=PAPER_BATCHES, correction_share=CORRECTION_DOMINATES)) == 1
    assert caveats(batches=PAPER_BATCHES, correction_share=9.9) == []
    # only the SMSE map carries the correction: a mass map's reading is not flagged by it
    assert caveats(batches=PAPER_BATCHES, correction_share=103.0, response="mass") == []
    one, two = caveats(batches=1), caveats(batches=2)
    assert one == ["1 test trajectory per class and seed (the paper: 6)"]
    assert two == ["2 test trajectories per class and seed (the paper: 6)"]
    both = caveat_line(caveats(batches=1, correction_share=61.0))
    assert both.startswith("Read with care: the map is mostly EK-FAC's correction (61×")
    assert both.endswith("; 1 test trajectory per class and seed (the paper: 6).")


def _scores_with(dominance: float, ratio: float):
    from coherence.analysis.scores import DEFINITIONS, Score, Scores

    def score(name: str, value: float) -> Score:
        values = np.full((3, 1), value)  # three seeds of one value: the median is it exactly
        return Score(name, DEFINITIONS[name], values, np.zeros(values.shape, dtype=bool))

    return Scores(
        score("diagonal_dominance", dominance),
        score("decay_length", 1.0),
        score("inter_intra_ratio", ratio),
        score("toeplitz_defect", 0.0),
    )


@pytest.mark.parametrize(
    ("dominance", "reading"),
    [
        (0.75, "Time-local"),  # the README's thresholds, each at its edge and just inside
        (0.7499, "Partly time-local"),
        (0.6001, "Partly time-local"),
        (0.6, "Transfers across time"),
    ],
)
def test_the_time_reading_changes_at_the_documented_dominance(dominance, reading):
    assert verdict(_scores_with(dominance, 0.3)).startswith(reading + ":")


@pytest.mark.parametrize(
    ("ratio", "reading"),
    [
        (0.5, "transfers across initial-condition classes"),
        (0.4999, "some transfer between classes"),
        (0.2001, "some transfer between classes"),
        (0.2, "class-specific"),
        (-0.1999, "class-specific"),
        (-0.2, "classes interfere"),
    ],
)
def test_the_class_reading_changes_at_the_documented_ratio(ratio, reading):
    assert f"; {reading}" in verdict(_scores_with(0.8, ratio))
