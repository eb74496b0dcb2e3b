"""The numbers the sweep panels write in their sentences (the charts are tested in
test_sweep_panels.py): each recomputed here from its inputs by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from coherence.analysis.trends import Agreement
from coherence.dashboard.sweep_views import agreement_text, cg_lines
from coherence.dashboard.sweeps import SweepPoint


def test_the_agreement_sentence_gives_the_largest_difference_as_a_share_of_the_scale():
    difference = np.array([[0.1, -0.5], [0.2, 0.0]])
    rho = np.array([[[0.9, 0.92, 0.95, 0.1]]])
    found = Agreement(rho, difference, scale=2.0, pearson=0.87)
    said = agreement_text(found, 1e-4)
    assert said == (
        "At λ = 0.0001: median per-row Spearman ρ = 0.910, Pearson over all entries 0.870; "
        "largest |ΔĤ| of the maps = 0.5 (25% of the maps' 2)."
    )


def test_cg_lines_give_the_cap_the_most_iterations_and_the_units_left_unconverged():
    """Per cached cg setting: the cap, the largest iteration count of any column (not the
    number of columns) and the (seed, batch) units that stopped short."""
    diagnostics = [
        [{"max_iter": 40, "iterations": [3, 12, 5], "converged": True}],
        [{"max_iter": 40, "iterations": [40, 7], "converged": False}],
    ]
    result = SimpleNamespace(diagnostics=diagnostics)
    cg = SweepPoint(0, 1e-2, "cg rtol 5e-2", SimpleNamespace(estimator="cg"), "k" * 64)
    other = SweepPoint(0, 1e-2, "ekfac-krylov", SimpleNamespace(estimator="ekfac-krylov"), "j")
    lines = cg_lines([cg, other], lambda point: result)
    assert lines == [
        "cg rtol 5e-2, λ = 0.01: iteration cap 40, at most 40 iterations per column; "
        "1 of 2 (seed, batch) units did not reach the tolerance"
    ]
    diagnostics[1][0].update(iterations=[2, 7], converged=True)
    assert "at most 12 iterations per column; 0 of 2" in cg_lines([cg], lambda point: result)[0]
