"""The selection's own rules at their edges: epochs, the canonical forms, the first page's
classes, window and responses, what a change of dataset keeps, the caption and the
'what changed' lines, and which stored requests are offered back as selections (pure, on
the synthetic catalog: no files, no streamlit)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from coherence.analysis.request import MAX_EXAMPLES
from coherence.dashboard.selection import (
    DEFAULT_DAMPING,
    Selection,
    default_selection,
    default_window,
    describe,
    differences,
    from_request,
    group_defaults,
    with_dataset,
)
from coherence.errors import RequestError

from .test_selection import synthetic_catalog

BASE = dict(
    dataset="d", checkpoints=("c",), classes=("CE-RP",), trajectories=(0,), t_start=0, n_steps=2
)


def test_an_epoch_is_one_or_later():
    assert Selection(**BASE, epoch=1).epoch == 1
    with pytest.raises(RequestError, match=r"Selection\.epoch=0: give an epoch ≥ 1, or None"):
        Selection(**BASE, epoch=0)


def test_euclidean_keeps_one_damping_and_a_default_depth_is_none():
    assert Selection(**BASE, estimator="euclidean", damping=1e-2).damping == DEFAULT_DAMPING
    assert Selection(**BASE, estimator="krylov", damping=1e-2).damping == 1e-2
    default = Selection(**BASE, estimator="krylov").resolved_depth
    assert Selection(**BASE, estimator="krylov", depth=default).depth is None
    assert Selection(**BASE, estimator="krylov", depth=default + 1).depth == default + 1


def test_compare_mode_shows_two_groups():
    one = Selection(**BASE)
    assert one.groups == (("c",),)
    assert replace(one, compare=("b",)).groups == (("c",), ("b",))


def test_the_caption_names_lambda_except_for_euclidean_and_the_seeds_of_each_group():
    base = Selection(**{**BASE, "checkpoints": ("a1", "a2")}, estimator="cg", rtol=0.05)
    said = describe(base)
    assert ", λ = 0.0001, rtol 0.05" in said
    assert describe(replace(base, compare=("b1", "b2"))).startswith("2 seeds × 1 batch")
    assert describe(replace(base, compare=("b1",))).startswith("2 and 1 seed × 1 batch")
    assert describe(replace(base, epoch=3)).endswith(", weights of epoch 3")


def test_what_changed_names_the_depth_each_runs_at_and_the_final_weights():
    base = Selection(**BASE, estimator="krylov")
    assert differences(base, replace(base, depth=2)) == [f"Krylov depth {base.resolved_depth} → 2"]
    # an estimator without a depth: the estimator line says it, no "depth 4 → none"
    assert differences(base, replace(base, estimator="subspace")) == ["estimator krylov → subspace"]
    assert differences(base, replace(base, epoch=2)) == ["weights of epoch final → 2"]


def test_the_first_page_takes_three_classes_a_window_within_n_and_conserved_responses():
    catalog = synthetic_catalog(snapshots=300)
    entry = catalog.dataset("ce_demo")
    assert default_window(entry, 64) == (0, MAX_EXAMPLES // 64)
    selection = default_selection(catalog)
    assert selection.classes == ("CE-RP", "CE-CRP", "CE-RPUI")
    assert selection.responses == ("smse", "mass", "energy")
    ns = catalog.dataset("ns_data")
    # data without conserved quantities: SMSE alone (group_defaults does not check the fit)
    group = catalog.groups("ce_demo")[0]
    assert group_defaults(ns, group).responses == ("smse",)


def test_a_window_of_one_example_is_no_default():
    catalog = synthetic_catalog(snapshots=2)  # one transition
    entry = catalog.dataset("ce_demo")
    group = catalog.groups("ce_demo")[0]
    one_class = dataclasses.replace(entry, counts={"test": {"CE-RP": 3}, "train": {}})
    assert group_defaults(one_class, group) is None  # N = 1 class × 1 step
    assert group_defaults(entry, group).n_steps == 1  # 3 classes × 1 step


def test_the_first_page_is_ce_demo_before_any_other_dataset():
    catalog = synthetic_catalog()
    ce, ns = catalog.datasets
    early = dataclasses.replace(ce, name="a_first", well_name="ce_demo")
    catalog = dataclasses.replace(catalog, datasets=(early, ce, ns))
    assert default_selection(catalog).dataset == "ce_demo"


def test_another_dataset_keeps_the_estimator_settings_that_apply():
    catalog = synthetic_catalog()
    ce, ns = catalog.datasets
    copy = dataclasses.replace(ce, name="ce_copy")
    catalog = dataclasses.replace(catalog, datasets=(ce, copy, ns))
    chosen = replace(
        default_selection(catalog), estimator="cg", rtol=0.05, damping=1e-3, device="cpu"
    )
    moved = with_dataset(catalog, chosen, "ce_copy")
    assert moved.dataset == "ce_copy"
    assert (moved.estimator, moved.rtol, moved.damping, moved.device) == ("cg", 0.05, 1e-3, "cpu")


def stored(selection: Selection, catalog, **changes) -> dict:
    return selection.to_request(catalog.root).to_dict() | changes


def test_a_stored_request_is_offered_only_when_the_page_would_make_it():
    catalog = synthetic_catalog(snapshots=300)
    base = default_selection(catalog)
    assert from_request(catalog, stored(base, catalog)) == base
    assert from_request(catalog, stored(base, catalog, split="train")) is None
    assert from_request(catalog, stored(base, catalog, top_eigenvalue=False)) is None
    one_class = stored(base, catalog, classes=["CE-RP"])  # the page refuses one class of three
    assert from_request(catalog, one_class) is None
    euclidean = stored(replace(base, estimator="euclidean"), catalog, damping=1e-2)
    assert from_request(catalog, euclidean) is None  # the page makes euclidean at λ = 1e-4


def test_a_stored_request_of_the_final_epochs_snapshot_opens_as_the_final_weights():
    catalog = synthetic_catalog(snapshots=300)
    checkpoints = tuple(
        replace(c, epochs=(1, 2, 3), trained_epochs=3) if c.name.startswith("unet_s") else c
        for c in catalog.checkpoints
    )
    catalog = replace(catalog, checkpoints=checkpoints)
    base = default_selection(catalog)
    assert from_request(catalog, stored(replace(base, epoch=2), catalog)).epoch == 2
    final = from_request(catalog, stored(replace(base, epoch=3), catalog))
    assert final is not None and final.epoch is None
