"""bench.reference_rows: the issue's measure on a sample of rows, from reference columns kept on
disk. References: the standardize-based whole measure, the exact dense solve of a small model,
and the symmetry of H = G A⁻¹ Gᵀ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bench.bench_fidelity import smse_gradients, spread_order
from bench.reference_rows import (
    ReferenceStore,
    block_asymmetry,
    column_solver,
    fingerprint,
    row_agreement,
    solve_columns,
    standardized_rows,
)
from coherence.analysis.autodiff import BatchJacobian
from coherence.analysis.metric_solve import CountedJacobian
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.standardization import standardize
from tests.analysis.fixtures import TinyConv, dense_reference


def _symmetric_h(n: int = 12, p: int = 30, seed: int = 0) -> torch.Tensor:
    """H = G A⁻¹ Gᵀ for a random SPD A: the shape of the SMSE map."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, p, generator=gen, dtype=torch.float64)
    root = torch.randn(p, p, generator=gen, dtype=torch.float64)
    return g @ torch.linalg.solve(root @ root.T + 1e-2 * torch.eye(p, dtype=torch.float64), g.T)


def test_all_rows_give_the_whole_measure():
    exact = _symmetric_h()
    estimate = exact + 0.3 * _symmetric_h(seed=1)
    a, b = standardize(estimate).numpy(), standardize(exact).numpy()
    whole = (
        float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
        float(np.median([spearmanr(a[i], b[i])[0] for i in range(len(a))])),
    )
    assert row_agreement(estimate, exact) == pytest.approx(whole, abs=1e-12)
    assert row_agreement(exact, exact) == pytest.approx((1.0, 1.0))
    flat = exact.clone()
    flat[3] = 2.0  # a flat reference row carries no ranking: left out, not NaN
    others = [k for k in range(12) if k != 3]
    assert row_agreement(estimate, flat)[1] == pytest.approx(
        row_agreement(estimate[others], exact[others])[1]
    )
    assert np.isfinite(row_agreement(estimate, flat)[0])
    collapsed = exact.clone()
    collapsed[1:] = 0.0  # an estimator that collapsed scores 0 on those rows, not 1
    assert row_agreement(collapsed, exact)[1] == 0.0
    noisy = torch.ones(2, 6, dtype=torch.float32)
    noisy[0, 2] += 1e-7  # float32 round-off on a constant row: flat, as standardize finds it
    assert standardized_rows(noisy)[0].tolist() == [0.0] * 6
    assert (
        standardized_rows(noisy).tolist()
        == standardize(torch.cat([noisy, torch.ones(4, 6)]))[:2].tolist()
    )
    # a row's measure is blind to its scale, as Ĥ is: the reference may be stored as H·D
    assert row_agreement(estimate[:4], 7.0 * exact[:4]) == pytest.approx(
        row_agreement(estimate[:4], exact[:4]), abs=1e-12
    )


def test_store_keeps_columns_per_system_and_reads_them_as_rows(tmp_path):
    h = _symmetric_h()
    path = tmp_path / "reference_columns_x.json"
    store = ReferenceStore(path, "key-a")
    store.add(
        {
            p: {"h": h[:, p].tolist(), "iterations": 3, "residual": 1e-4, "seconds": 1.0}
            for p in (5, 1)
        }
    )
    other = ReferenceStore(path, "key-b")
    assert other.columns == {}
    other.add({0: {"h": [0.0] * 12, "iterations": 1, "residual": 0.0, "seconds": 0.0}})
    reopened = ReferenceStore(path, "key-a")
    assert sorted(reopened.columns) == [1, 5]  # the other system's write kept these
    assert torch.equal(reopened.rows([1, 5]), h[:, [1, 5]].T)  # bit-exact through the JSON
    torch.testing.assert_close(reopened.rows([1, 5]), h[[1, 5]])  # column p of H is row p
    assert set(json.loads(path.read_text())["systems"]) == {"key-a", "key-b"}
    assert not list(tmp_path.glob("*.tmp"))


def test_block_asymmetry_is_zero_for_a_symmetric_solve():
    h = _symmetric_h()
    solved = [0, 3, 7]
    assert block_asymmetry(h[solved], solved) == pytest.approx(0.0, abs=1e-14)
    skewed = h.clone()
    skewed[0, 3] *= 1.1
    assert block_asymmetry(skewed[solved], solved) > 1e-3


def test_fingerprint_names_the_system():
    torch.manual_seed(0)
    model = TinyConv(2)
    x = torch.randn(3, 2, 4, 4)
    base = fingerprint(model, x, x, 1e-3, 100)
    assert base == fingerprint(model, x.clone(), x, 1e-3, 100)
    assert base != fingerprint(model, x, x + 1, 1e-3, 100)
    assert base != fingerprint(model, x, x, 3e-3, 100)
    assert base != fingerprint(model, x, x, 1e-3, 200)
    with torch.no_grad():
        model.conv1.bias.add_(1e-3)
    assert base != fingerprint(model, x, x, 1e-3, 100)


def test_spread_order_is_a_permutation_whose_prefixes_spread():
    order = spread_order()
    assert sorted(order) == list(range(48))
    assert {p // 3 for p in order[:16]} == set(range(16))  # every time in the first 16
    assert {p % 3 for p in order[:3]} == {0, 1, 2}  # every class in the first 3


def test_solved_columns_are_rows_of_the_exact_solve_and_are_not_solved_twice(tmp_path):
    torch.manual_seed(3)
    model = TinyConv(2, hidden=3).double()  # P = 113
    x = torch.randn(8, 2, 5, 5, dtype=torch.float64)
    y = x + 0.1 * torch.randn_like(x)
    dense = dense_reference(model, x, y)
    exact = dense.full("smse", 1e-4) * dense.d  # H·D, as the store keeps it
    store = ReferenceStore(tmp_path / "r.json", fingerprint(model, x, y, 1e-8, 500))
    kept = {"h": [1.0] * 8, "iterations": 0, "residual": 0.0, "seconds": 0.0}
    store.add({6: dict(kept)})  # already solved: must be left as it is
    fm, g = smse_gradients(model, x, y)
    messages = []
    solve_columns(store, fm, x, g, [2, 6, 5], 1e-8, 500, chunk=1, log=messages.append)
    assert store.columns[6] == kept
    assert "[2, 5]" in messages[0]
    solve_columns(store, fm, x, g, [2, 6, 5, 0, 1], 1e-8, 500, chunk=1, log=print, most=1)
    assert sorted(store.columns) == [0, 2, 5, 6]  # at most one NEW column: 0, not 1
    torch.testing.assert_close(store.rows([2, 5]), exact[[2, 5]], rtol=1e-5, atol=1e-8)
    assert max(store.columns[p]["residual"] for p in (2, 5)) <= 1e-8


@pytest.mark.slow
def test_column_solver_solves_chosen_columns_from_each_start_as_a_full_run_does():
    """The columns part (bench_fidelity) and the reference store share this solver. Each
    start must reach the exact columns; a chosen column must take the iterations it takes in
    a full N-column run, whichever columns come with it and in which order; and the warm
    starts must save iterations (a review: a solver that dropped its start passed before)."""
    torch.manual_seed(4)
    model = TinyConv(2, hidden=3).double()
    x = torch.randn(8, 2, 5, 5, dtype=torch.float64)
    y = x + 0.1 * torch.randn_like(x)
    dense = dense_reference(model, x, y)
    exact = dense.full("smse", 1e-4) * dense.d  # H·D, as the solve gives it
    fm, g = smse_gradients(model, x, y)
    iterations = {}
    for start in ("cold", "deflated", "preconditioned"):
        options = InfluenceOptions(
            estimator="cg", rtol=1e-6, cg_start=start, max_iter=500, damping=1e-4, depth=1
        )
        solve = column_solver(options, CountedJacobian(BatchJacobian(fm, x)), g, x.shape)
        full, some, shuffled = solve(list(range(8))), solve([1, 5, 3]), solve([3, 1, 5])
        assert full.converged and some.converged and shuffled.converged
        torch.testing.assert_close((g @ some.solution.T).T, exact[[1, 5, 3]], rtol=1e-4, atol=0)
        # the same iterations up to rounding: columns solved in another batch position go
        # through other BLAS kernels, and at λ = 1e-4 the 128-step solve turned 127 on one
        # AMD EPYC (its count is rounding-sensitive); coupling between columns moves far more
        for chosen, cols in ((some, (1, 5, 3)), (shuffled, (3, 1, 5))):
            alone = np.array(chosen.iterations)
            together = np.array([full.iterations[p] for p in cols])
            assert np.all(np.abs(alone - together) <= 2), (start, alone, together)
        torch.testing.assert_close((g @ shuffled.solution.T).T, exact[[3, 1, 5]], rtol=1e-4, atol=0)
        gap = torch.linalg.norm(shuffled.solution[0] - full.solution[3])
        assert gap <= 1e-5 * torch.linalg.norm(full.solution[3])  # the same solve, to its rtol
        iterations[start] = sum(full.iterations)
    assert iterations["deflated"] < iterations["cold"]
    assert iterations["preconditioned"] < iterations["cold"]


def test_the_results_report_skips_the_reference_data_beside_the_results(tmp_path, monkeypatch):
    """RESULTS.md is rendered from every bench/results/*.json: the reference columns kept
    there (no machine, no rows) made write_result fail after writing its file."""
    import bench.common as common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(common, "REPORT", tmp_path / "RESULTS.md")
    ReferenceStore(tmp_path / "reference_columns_x.json", "k").add(
        {0: {"h": [1.0], "iterations": 1, "residual": 0.0, "seconds": 0.0}}
    )
    common.write_result("t", "A table", [{"a": 1}])
    assert "## A table" in (tmp_path / "RESULTS.md").read_text()
