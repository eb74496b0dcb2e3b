"""The page's checks one by one, at their boundaries: which trajectory indices, classes,
windows, responses, groups and epochs a selection may hold, and the sentence a bad one gets
(pure, on the synthetic catalog: no files, no streamlit)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coherence.analysis.request import MAX_EXAMPLES
from coherence.dashboard.checks import (
    MAX_BATCHES,
    check_group,
    check_responses,
    check_trajectories,
    earlier_epochs,
    final_epoch,
    parse_ranges,
    problems,
    window_problem,
)
from coherence.dashboard.selection import default_selection
from coherence.errors import RequestError

from .test_selection import synthetic_catalog


def with_epochs(catalog, epochs: dict[str, tuple[tuple[int, ...], int]]):
    """The catalog with each named checkpoint's (snapshot epochs, trained epochs) set."""
    checkpoints = tuple(
        replace(c, epochs=epochs[c.name][0], trained_epochs=epochs[c.name][1])
        if c.name in epochs
        else c
        for c in catalog.checkpoints
    )
    return replace(catalog, checkpoints=checkpoints)


def test_a_range_of_one_index_is_taken_and_an_empty_list_is_refused():
    assert parse_ranges("3-3", 6) == (3,)
    assert parse_ranges("5", 6) == (5,)  # the last index exists
    with pytest.raises(RequestError, match="runs backwards"):
        parse_ranges("4-2", 6)
    with pytest.raises(RequestError, match="no trajectory index given"):
        parse_ranges(" , ", 6)


@pytest.mark.parametrize(
    ("limit", "said"),
    [
        (6, r"index 6 does not exist: there are 6 test trajectories per class \(0\.\.5\)"),
        (1, r"index 6 does not exist: there is 1 test trajectory per class \(index 0\)"),
        (0, r"index 6 does not exist: the selected classes have no test trajectory"),
    ],
)
def test_an_index_past_the_trajectories_names_the_ones_there_are(limit, said):
    with pytest.raises(RequestError, match=said):
        parse_ranges("6", limit)


def test_no_checkpoint_is_a_problem_of_its_own():
    catalog = synthetic_catalog()
    entry = catalog.dataset("ce_demo")
    assert check_group(catalog, entry, ()) == "no checkpoint selected; pick at least one seed"
    assert check_group(catalog, entry, ("unet_s10", "unet_s42")) is None


def test_a_copy_and_a_missing_checkpoint_are_both_named():
    catalog = replace(synthetic_catalog(), copies={"unet_copy": "unet_s10"})
    said = check_group(catalog, catalog.dataset("ce_demo"), ("unet_copy", "ghost"))
    assert said.startswith("checkpoint unet_copy holds the same weights as unet_s10")
    assert said.endswith("; checkpoint(s) ghost are not in the workspace")


def test_the_final_epoch_is_the_trained_one_and_not_an_earlier_epoch():
    catalog = with_epochs(
        synthetic_catalog(), {"unet_s10": ((1, 2, 3), 3), "unet_s42": ((1, 2, 3), 3)}
    )
    names = ("unet_s10", "unet_s42")
    assert final_epoch(catalog, names) == 3
    assert earlier_epochs(catalog, names) == (1, 2)  # epoch 3 is the final weights


def test_seeds_without_a_history_have_no_final_epoch():
    catalog = with_epochs(synthetic_catalog(), {"unet_s10": ((1, 2), 0), "unet_s42": ((1, 2), 0)})
    names = ("unet_s10", "unet_s42")
    assert final_epoch(catalog, names) is None
    assert earlier_epochs(catalog, names) == (1, 2)


def test_an_epoch_the_seeds_did_not_keep_is_refused_with_the_ones_they_share():
    catalog = with_epochs(
        synthetic_catalog(snapshots=300),
        {"unet_s10": ((1, 2, 3), 3), "unet_s35": ((1, 2, 3), 3), "unet_s42": ((2, 3), 3)},
    )
    base = default_selection(catalog)
    assert problems(replace(base, epoch=2), catalog) == []
    said = problems(replace(base, epoch=1), catalog)
    assert len(said) == 1 and "keep no common snapshot of epoch 1 (they share 2)" in said[0]
    final = problems(replace(base, epoch=3), catalog)  # the weights themselves: no snapshot
    assert "(they share 2)" in final[0]


def test_at_most_max_batches_trajectories_and_each_one_must_exist():
    entry = synthetic_catalog(n_test=100).dataset("ce_demo")
    classes = entry.classes[:2]
    assert check_trajectories(entry, classes, tuple(range(MAX_BATCHES))) is None
    too_many = check_trajectories(entry, classes, tuple(range(MAX_BATCHES + 1)))
    assert too_many == f"{MAX_BATCHES + 1} trajectories: the dashboard computes at most 64"
    entry = synthetic_catalog(n_test=6).dataset("ce_demo")
    assert check_trajectories(entry, classes, (5,)) is None
    assert check_trajectories(entry, classes, (6,)) == (
        "trajectory 6 does not exist: there are 6 test trajectories per class (0..5)"
    )


def test_one_step_is_refused_where_the_trajectories_have_more():
    long = synthetic_catalog(snapshots=21).dataset("ce_demo")
    assert "choose at least 2 steps" in window_problem(long, 2, 0, 1)
    assert window_problem(long, 2, 0, 2) is None
    one = synthetic_catalog(snapshots=2).dataset("ce_demo")  # one transition: its one step
    assert window_problem(one, 2, 0, 1) is None


def test_one_class_of_too_many_steps_is_refused_for_its_n():
    entry = synthetic_catalog(snapshots=MAX_EXAMPLES + 10).dataset("ce_demo")
    assert window_problem(entry, 1, 0, MAX_EXAMPLES) is None
    assert f"2 ≤ N ≤ {MAX_EXAMPLES}" in window_problem(entry, 1, 0, MAX_EXAMPLES + 1)
    assert window_problem(entry, 0, 0, MAX_EXAMPLES + 1) is None  # the classes' own problem


def test_mass_and_energy_are_refused_on_data_without_conserved_quantities():
    catalog = synthetic_catalog()
    ce, ns = catalog.dataset("ce_demo"), catalog.dataset("ns_data")
    assert check_responses(ce, ("smse", "mass", "energy")) is None
    assert check_responses(ns, ("smse",)) is None
    assert check_responses(ns, ("smse", "energy")) == (
        "mass and energy responses need compressible-Euler data; ns_data is ns"
    )


def test_a_compare_group_beside_itself_and_a_bad_compare_group_are_named():
    catalog = synthetic_catalog(snapshots=300)
    base = default_selection(catalog)
    itself = problems(replace(base, compare=tuple(reversed(base.checkpoints))), catalog)
    assert len(itself) == 1 and "one group beside itself" in itself[0]
    assert problems(replace(base, compare=("vit_s10",)), catalog) == []
    ghost = problems(replace(base, compare=("ghost",)), catalog)
    assert ghost == ["compare group: checkpoint(s) ghost are not in the workspace"]


def test_cuda_is_refused_only_without_a_gpu():
    catalog = synthetic_catalog(snapshots=300)
    cuda = replace(default_selection(catalog), device="cuda")
    assert problems(cuda, catalog, cuda_available=True) == []
    assert problems(cuda, catalog) == [
        "device cuda was chosen but no CUDA GPU is visible; use auto or cpu"
    ]


def test_a_class_the_compare_group_never_trained_on_is_named_for_that_group():
    catalog = synthetic_catalog(snapshots=300)
    base = default_selection(catalog)  # CE-RP, CE-CRP, CE-RPUI with the UNet seeds
    physics = {c: {"gamma": 1.4} for c in base.classes} | {"CE-RPUI": {"gamma": 1.6}}
    entry = replace(catalog.dataset("ce_demo"), class_physics=physics)
    checkpoints = tuple(
        replace(c, physics={"gamma": 1.4}, classes=("CE-RP", "CE-CRP"))
        if c.name == "vit_s10"
        else c
        for c in catalog.checkpoints
    )
    catalog = replace(catalog, datasets=(entry, *catalog.datasets[1:]), checkpoints=checkpoints)
    said = problems(replace(base, compare=("vit_s10",)), catalog)
    assert len(said) == 1
    assert said[0].startswith("compare group: vit_s10 never trained on the physical constants")
    assert problems(replace(base, compare=("vit_s10",), classes=("CE-RP", "CE-CRP")), catalog) == []
