"""The issue's fidelity measure at demo scale, a sample of rows at a time (issue 14).

Why rows need only columns: the SMSE map is H = G A⁻¹ Gᵀ (A = η + λI, G the per-example
gradients), a symmetric matrix, so a solved column p of the full solve is also its row p. The
issue's measure works on rows: Ĥ[r, :] = H[r, :] / std_p(H[r, :]), Pearson over all entries of
Ĥ and the median over rows of the per-row Spearman. Row p's standardisation and its Spearman
need that one solve alone. K solved columns thus give the measure on a sample of K of the N
rows, and all N columns give it whole; the estimators' rows are read off their own H.

The reference columns (EK-FAC-preconditioned cg to an rtol, with an iteration cap) cost minutes
each on 2 cores, so they are kept in ``bench/results/reference_columns_<label>.json`` under a
fingerprint of the weights, the batch, λ, rtol and cap, solved a chunk at a time and saved after
each chunk: a stopped run keeps what it solved, and a later run (or a GPU) adds columns.

Checks of the reference itself: on the hardest small model the sampled measure is compared with
the whole one against the exact dense H; on the demo models the solved block H[S, S], which is
symmetric for the exact solve, gives the reference's own asymmetry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.common import RESULTS_DIR
from coherence.analysis.autodiff import BatchJacobian
from coherence.analysis.estimators import CGResult, block_cg
from coherence.analysis.metric_solve import CountedJacobian, deflated_start, ekfac_preconditioner
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.standardization import standardize_rows
from coherence.analysis.vocabulary import CGStart

DAMPING = 1e-4


def standardized_rows(rows: torch.Tensor) -> np.ndarray:
    """Ĥ for K full rows [K, N] on any device, in float64 (``standardize_rows``: a flat row
    gives zeros, judged at the input's own precision)."""
    precision = rows.dtype if rows.is_floating_point() else torch.float64
    return standardize_rows(rows.detach().double().cpu(), precision=precision).numpy()


def agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Pearson over all entries and median per-row Spearman of two standardised maps (the
    issue's fidelity measure)."""
    a, b = np.asarray(a), np.asarray(b)
    rows = [_row_spearman(a[k], b[k]) for k in range(len(a)) if np.ptp(b[k]) > 0]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float(np.median(rows))


def _row_spearman(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Spearman of one row against a non-flat reference row (a flat reference carries no
    order and is left out by the caller): 0 for a flat estimate, which orders nothing, and
    NaN for a non-finite one, so neither passes for agreement."""
    if not np.all(np.isfinite(estimate)):
        return float("nan")
    if np.ptp(estimate) == 0:
        return 0.0
    return float(spearmanr(estimate, reference)[0])


def row_agreement(rows: torch.Tensor, reference_rows: torch.Tensor) -> tuple[float, float]:
    """The issue's measure on K rows [K, N]: ``agreement`` of the standardised rows. With all
    N rows it is the whole measure."""
    return agreement(standardized_rows(rows), standardized_rows(reference_rows))


def block_asymmetry(reference_rows: torch.Tensor, solved: list[int]) -> float:
    """‖B − Bᵀ‖ / ‖B + Bᵀ‖ of the solved block B = H[S, S] (rows K = len(S), columns S): zero
    for the exact solve, whose H is symmetric; the reference's own error shows here."""
    block = reference_rows[:, solved].double()
    return float((block - block.T).norm() / (block + block.T).norm())


def fingerprint(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rtol: float, cap: int
) -> str:
    """sha256 of the weights, the batch, λ, rtol and cap: a stored column is reused only for
    the very system it solved."""
    digest = hashlib.sha256(f"{DAMPING!r} {rtol!r} {cap}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ReferenceStore:
    """Solved reference columns of one system, on disk as JSON (no pickles): column index →
    {"h": H[:, p]·D as N floats, "iterations", "residual", "seconds"}. A file for another
    fingerprint is left alone and a new run starts its own columns under the new key."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        data = json.loads(path.read_text()) if path.exists() else {}
        stored = data.get("systems", {}).get(key, {})
        self.columns: dict[int, dict[str, Any]] = {int(p): c for p, c in stored.items()}
        self._data = data

    def add(self, solved: dict[int, dict[str, Any]]) -> None:
        """Keep these columns and write the file atomically (a stop mid-write loses nothing)."""
        self.columns.update(solved)
        systems = self._data.setdefault("systems", {})
        systems[self.key] = {str(p): self.columns[p] for p in sorted(self.columns)}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def rows(self, columns: Iterable[int]) -> torch.Tensor:
        """Reference rows H[p, :] = H[:, p]ᵀ (symmetry) for the given solved columns, [K, N]."""
        return torch.tensor([self.columns[p]["h"] for p in columns], dtype=torch.float64)


def column_solver(
    options: InfluenceOptions, products: CountedJacobian, g: torch.Tensor, shape: torch.Size
) -> Callable[[list[int]], CGResult]:
    """cg on chosen columns only, from the start ``options.cg_start`` names: the deflated
    start (``metric_solve.deflated_start``) is built once from all N columns, as a full run
    builds it. Columns are independent CG runs, so each column's iterations equal a full
    run's."""
    quiet = lambda fraction, stage: None  # noqa: E731
    start, project, precondition = None, None, None
    if options.cg_start is CGStart.PRECONDITIONED:
        precondition = ekfac_preconditioner(options, products, quiet)
    if options.cg_start is not CGStart.COLD:
        start = deflated_start(options, products, g, shape, 1.0, quiet, precondition)
        project = start.project
    assert options.rtol is not None

    def solve(columns: list[int]) -> CGResult:
        return block_cg(
            products.metric_rows(options.damping),
            g[columns],
            options.rtol,
            options.max_iter,
            start=None if start is None else (start.start[0][columns], start.start[1][columns]),
            deflation=project,
            precondition=precondition,
        )

    return solve


def solve_columns(
    store: ReferenceStore,
    fm: Any,
    x: torch.Tensor,
    g: torch.Tensor,
    wanted: list[int],
    rtol: float,
    cap: int,
    chunk: int,
    log: Any = print,
    most: int | None = None,
) -> None:
    """Solve the wanted columns the store lacks, at most ``most`` of them, with
    EK-FAC-preconditioned cg (deflated start of depth 4, built once from all N columns as a
    full run builds it), ``chunk`` at a time."""
    missing = [p for p in wanted if p not in store.columns][:most]
    if not missing:
        return
    options = InfluenceOptions(
        estimator="cg", rtol=rtol, cg_start="preconditioned", max_iter=cap, damping=DAMPING
    )
    clock = time.perf_counter()
    solve = column_solver(options, CountedJacobian(BatchJacobian(fm, x)), g, x.shape)
    log(f"deflated start: {time.perf_counter() - clock:.0f} s; solving {missing}")
    for first in range(0, len(missing), chunk):
        part = missing[first : first + chunk]
        clock = time.perf_counter()
        cg = solve(part)
        h = (g.double() @ cg.solution.double().T).T  # [K, N]: column p of H·D as a row
        seconds = (time.perf_counter() - clock) / len(part)
        store.add(
            {
                p: {
                    "h": h[k].tolist(),
                    "iterations": cg.iterations[k],
                    "residual": cg.residuals[k],
                    "seconds": seconds,
                }
                for k, p in enumerate(part)
            }
        )
        log(f"columns {part}: iterations {list(cg.iterations)}, {seconds:.0f} s each")


def reference_summary(store: ReferenceStore, solved: list[int], rtol: float) -> dict[str, Any]:
    """How good the stored reference is: columns that missed rtol, iterations, worst
    residual, asymmetry of H[S, S]."""
    columns = [store.columns[p] for p in solved]
    return {
        "rows": len(solved),
        # columns stopped at the cap above rtol: a rougher reference (their residuals say how)
        "unconverged": sum(c["residual"] > rtol for c in columns),
        "iterations_max": max(c["iterations"] for c in columns),
        "residual_max": max(c["residual"] for c in columns),
        "asymmetry": block_asymmetry(store.rows(solved), solved),
        "seconds_per_column": float(np.median([c["seconds"] for c in columns])),
    }


def store_path(label: str) -> Path:
    return RESULTS_DIR / f"reference_columns_{label}.json"
