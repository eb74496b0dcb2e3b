"""Rows of the controls' table on their own: which datasets the sidebar offers, a second
group that repeats the first, the responses offered for data without conserved quantities
(pure, on the synthetic catalog)."""

from __future__ import annotations

from dataclasses import replace

from coherence.dashboard.control_kinds import Scope
from coherence.dashboard.control_rows import (
    Responses,
    Trajectories,
    in_group_order,
    offered_datasets,
)
from coherence.dashboard.controls import CONTROLS, encode
from coherence.dashboard.selection import DEFAULT_BATCHES, decode_query, default_selection

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


def test_checkpoints_come_in_their_groups_seed_order_with_strangers_last():
    """A link may name a group's seeds in any order and a name the group lacks (renamed,
    removed): the seeds take the group's order (by seed), the stranger goes last."""
    catalog = synthetic_catalog()
    named = ("unet_s42", "gone_s7", "unet_s10")
    assert in_group_order(catalog, "ce_demo", named) == ("unet_s10", "unet_s42", "gone_s7")
    assert in_group_order(catalog, "ce_demo", ()) == ()


def test_trajectories_past_the_classes_test_split_fall_back_and_reset_takes_six():
    """A link's trajectories that the chosen classes do not have give way to the default's;
    those they have are kept; the reset button offers the paper's six batches."""
    catalog = synthetic_catalog(n_test=8)
    (row,) = [r for r in CONTROLS if isinstance(r, Trajectories)]
    values = {"dataset": "ce_demo", "classes": ("CE-RP",)}
    past = Scope(catalog, values | {"trajectories": (1, 8)})  # 8 test trajectories: 0..7
    assert row.absent(past) == row.fallback(past) == tuple(range(DEFAULT_BATCHES))
    inside = Scope(catalog, values | {"trajectories": (1, 7)})
    assert row.absent(inside) == (1, 7)
    assert row.reset(inside) == [0, 1, 2, 3, 4, 5]
