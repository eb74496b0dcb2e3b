"""Each stage exports its contract (ARCHITECTURE.md) from its package, and the exports are
the real objects of their modules (no copies that could drift)."""

from __future__ import annotations

import importlib

import pytest

CONTRACTS = {
    "coherence.simulation": ("open_dataset", "generate_dataset", "write_well_file"),
    "coherence.surrogates": ("load",),
    "coherence.analysis": ("influence_matrix", "standardize", "run_analysis", "AnalysisResult"),
    "coherence.cache": ("JobRunner", "ResultStore", "request_key", "unit_keys"),
}


@pytest.mark.parametrize("package", sorted(CONTRACTS))
def test_stage_packages_export_their_contracts(package):
    module = importlib.import_module(package)
    for name in CONTRACTS[package]:
        assert callable(getattr(module, name)), f"{package}.{name}"
    for name in getattr(module, "__all__", ()):
        getattr(module, name)  # every advertised name resolves


def test_contract_functions_behave_as_documented():
    from coherence.simulation import euler, navier_stokes

    assert callable(euler.evolve) and callable(navier_stokes.evolve)
    from coherence.analysis import standardize

    torch = pytest.importorskip("torch")
    H = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    # a perfectly local row standardizes to √N (METHOD.md §4)
    torch.testing.assert_close(torch.diag(standardize(H)), torch.full((4,), 2.0, dtype=H.dtype))
