"""Rows of the controls' table on their own: which datasets the sidebar offers, a second
group that repeats the first, the responses offered for data without conserved quantities
(pure, on the synthetic catalog)."""

from __future__ import annotations

from dataclasses import replace

from coherence.dashboard.control_kinds import Scope
from coherence.dashboard.control_rows import Responses, offered_datasets
from coherence.dashboard.controls import CONTROLS, encode
from coherence.dashboard.selection import decode_query, default_selection

from .test_selection import synthetic_catalog


def test_only_datasets_a_checkpoint_fits_are_offered():
    assert offered_datasets(synthetic_catalog()) == ["ce_demo"]  # no model fits ns_data


def test_a_link_whose_second_group_repeats_the_first_is_explained_and_replaced():
    catalog = synthetic_catalog(snapshots=300)
    base = default_selection(catalog)
    query = encode(replace(base, compare=("vit_s10",))) | {"vs": ",".join(base.checkpoints)}
    selection, warnings = decode_query(query, catalog)
    assert selection.compare != selection.checkpoints
    assert any("it repeats the first group" in w for w in warnings), warnings


def test_mass_and_energy_are_offered_only_for_compressible_euler():
    catalog = synthetic_catalog()
    (rows,) = [row for row in CONTROLS if isinstance(row, Responses)]
    offered = {
        name: rows.options(Scope(catalog, {"dataset": name})) for name in ("ce_demo", "ns_data")
    }
    assert offered == {"ce_demo": ["smse", "mass", "energy"], "ns_data": ["smse"]}
