"""The pure half of the dashboard: workspace catalog, default selection, URL round trip,
and every bad URL value explained and replaced (no streamlit involved)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from coherence.analysis.request import MAX_EXAMPLES
from coherence.cache.keys import request_key
from coherence.dashboard.checks import parse_ranges, problems
from coherence.dashboard.selection import (
    Selection,
    decode_query,
    default_selection,
    default_window,
    describe,
    differences,
    from_request,
)
from coherence.dashboard.workspace_scan import (
    Catalog,
    CheckpointEntry,
    DatasetEntry,
    class_order,
    scan_workspace,
)
from coherence.errors import RequestError, WorkspacePathError
from coherence.wording import format_ranges
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.fixtures import CE_CLASSES


def synthetic_catalog(snapshots: int = 21, n_test: int = 6) -> Catalog:
    """A catalog without files: one CE dataset, UNet × 3 seeds, ViT × 1, an NS dataset."""
    times = tuple(i / (snapshots - 1) for i in range(snapshots))
    counts = MappingProxyType(
        {"test": MappingProxyType({c: n_test for c in CE_CLASSES}), "train": {}}
    )
    ce = DatasetEntry(
        "ce_demo", "ce_demo", "euler", ("rho", "mx", "my", "E"), (32, 32), times, counts
    )
    ns = DatasetEntry(
        "ns_data",
        "ns_data",
        "ns",
        ("u", "v"),
        (32, 32),
        times,
        MappingProxyType({"test": MappingProxyType({"NS-Sines": 2})}),
    )

    def ckpt(name: str, arch: str, seed: int, width: int = 16) -> CheckpointEntry:
        return CheckpointEntry(
            name,
            arch,
            "euler",
            ce.channels,
            (32, 32),
            seed,
            "ce_demo",
            json.dumps({"arch": arch, "width": width}),
        )

    checkpoints = (
        ckpt("vit_s10", "vit", 10),
        ckpt("unet_s42", "unet", 42),
        ckpt("unet_s10", "unet", 10),
        ckpt("unet_s35", "unet", 35),
        ckpt("unet_wide_s1", "unet", 1, width=32),
    )
    return Catalog(Path("/nowhere"), True, (ce, ns), checkpoints)


# ---------------------------------------------------------------------------- catalog ----


def test_scan_lists_datasets_and_groups_checkpoints_by_architecture(workspace):
    catalog = scan_workspace(workspace)
    assert catalog.problems == ()
    assert [d.name for d in catalog.datasets] == ["tiny_ce", "tiny_ns"]
    ce = catalog.dataset("tiny_ce")
    assert ce.classes == CE_CLASSES  # registry order, not alphabetical
    assert ce.family == "euler" and ce.resolution == (16, 16) and len(ce.times) == 6
    assert ce.n_test() == 1
    groups = catalog.groups("tiny_ce")
    assert [(g.label, g.checkpoints) for g in groups] == [
        ("UNet", ("unet_tiny_s1", "unet_tiny_s2")),
        ("ViT", ("vit_tiny_s1",)),
    ]
    assert catalog.groups("tiny_ns") == ()  # no checkpoint fits Navier–Stokes data


def test_scan_skips_links_out_of_the_workspace_and_explains_broken_entries(workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(datasets_dir(workspace) / "tiny_ce", datasets_dir(root) / "tiny_ce")
    outside = tmp_path / "outside"
    shutil.copytree(datasets_dir(workspace) / "tiny_ce", outside)
    os.symlink(outside, datasets_dir(root) / "escape")
    broken = checkpoints_dir(root) / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{ not json")
    (broken / "model.safetensors").write_bytes(b"")
    catalog = scan_workspace(root)
    assert [d.name for d in catalog.datasets] == ["tiny_ce"]
    assert catalog.checkpoints == ()
    joined = "\n".join(catalog.problems)
    assert "escape: points outside the workspace" in joined
    assert "checkpoint broken" in joined and "not valid JSON" in joined


def test_a_rescan_reads_again_only_the_entries_whose_files_changed(
    workspace, tmp_path, monkeypatch
):
    """The dashboard rescans the workspace whenever one of its files changed (a training run
    writes a snapshot every epoch), and each entry was read again, ~20 ms apiece. An entry
    whose files kept their sizes and times is now the last scan's own."""
    from coherence.dashboard import workspace_scan

    root = tmp_path / "ws"
    for parent in (datasets_dir, checkpoints_dir):
        shutil.copytree(parent(workspace), parent(root))
    first = scan_workspace(root)
    read = []
    for name in ("_dataset_entry", "_checkpoint_entry"):
        real = getattr(workspace_scan, name)
        monkeypatch.setattr(
            workspace_scan, name, lambda n, p, real=real: read.append(n) or real(n, p)
        )
    again = scan_workspace(root)
    assert read == [] and again == first
    assert all(a is b for a, b in zip(again.checkpoints, first.checkpoints, strict=True))
    os.utime(checkpoints_dir(root) / "unet_tiny_s2" / "model.safetensors", ns=(0, 0))
    shutil.copytree(datasets_dir(root) / "tiny_ce", datasets_dir(root) / "tiny_ce_copy")
    shutil.rmtree(checkpoints_dir(root) / "vit_tiny_s1")
    changed = scan_workspace(root)
    assert sorted(read) == ["tiny_ce_copy", "unet_tiny_s2"]
    assert [d.name for d in changed.datasets] == ["tiny_ce", "tiny_ce_copy", "tiny_ns"]
    assert [c.name for c in changed.checkpoints] == ["unet_tiny_s1", "unet_tiny_s2"]
    # damaged since: found at the next scan, not served from the last
    (checkpoints_dir(root) / "unet_tiny_s1" / "model.safetensors").write_bytes(b"")
    broken = scan_workspace(root)
    assert [c.name for c in broken.checkpoints] == ["unet_tiny_s2"]
    assert "checkpoint unet_tiny_s1: model.safetensors is not a readable" in "\n".join(
        broken.problems
    )


def test_missing_workspace_is_an_empty_catalog(tmp_path):
    catalog = scan_workspace(tmp_path / "absent")
    assert not catalog.exists and catalog.datasets == ()
    assert default_selection(catalog) is None


def test_groups_of_one_architecture_are_labelled_by_what_differs():
    labels = [g.label for g in synthetic_catalog().groups("ce_demo")]
    assert labels == ["UNet (width=16)", "UNet (width=32)", "ViT"]


def test_the_first_page_prefers_a_cached_view_among_the_first_few():
    """The first candidate whose analysis is cached, looked for among the first
    MAX_CACHE_LOOKUPS (a mutation that looked at the first alone passed every test)."""
    from coherence.dashboard.selection import MAX_CACHE_LOOKUPS, prefer_cached

    names = [f"view{i}" for i in range(MAX_CACHE_LOOKUPS + 2)]
    assert prefer_cached(iter(names), lambda s: s == "view1") == "view1"
    last = names[MAX_CACHE_LOOKUPS - 1]
    assert prefer_cached(iter(names), lambda s: s == last) == last
    beyond = names[MAX_CACHE_LOOKUPS]  # past the look-ups: the first, as with none cached
    assert prefer_cached(iter(names), lambda s: s == beyond) == "view0"
    assert prefer_cached(iter(names), None) == "view0"


def test_groups_sort_their_numbers_as_numbers():
    """A lab's ViTs of 1, 2 and 12 epochs were offered as 1, 12, 2 (a string sort), and
    learning rates 5e-05 beside 0.0001 would sort as 5 after 0.0001."""
    catalog = synthetic_catalog()
    vit = catalog.checkpoint("vit_s10")
    others = tuple(c for c in catalog.checkpoints if c.arch != "vit")

    def labels(recipes: list[dict]) -> list[str]:
        runs = tuple(
            replace(vit, name=f"vit_r{i}", seed=i, recipe_json=json.dumps(r))
            for i, r in enumerate(recipes)
        )
        grouped = replace(catalog, checkpoints=others + runs).groups("ce_demo")
        return [g.label for g in grouped if g.arch == "vit"]

    epochs = labels([{"epochs": 12}, {"epochs": 2}, {"epochs": 1}])
    assert epochs == ["ViT (epochs=1)", "ViT (epochs=2)", "ViT (epochs=12)"]
    rates = labels([{"lr": 1e-3}, {"lr": 1e-4}, {"lr": 5e-5}])
    assert rates == ["ViT (lr=5e-05)", "ViT (lr=0.0001)", "ViT (lr=0.001)"]
    # a label that ends with a checkpoint's name (the last way to tell two apart) may hold
    # any character: a '²' was taken for a digit and raised, taking the page down
    from coherence.dashboard.workspace_scan import _natural

    assert _natural("ViT [vit_2²]") < _natural("ViT [vit_3]")
    assert _natural("ViT [vit-2]") < _natural("ViT [vit-10]")  # a hyphen, not a sign


def test_runs_of_another_training_recipe_are_another_group():
    """ViTs trained for 6 epochs had joined the 12-epoch seeds as more seeds of one model."""
    catalog = synthetic_catalog()
    vit = catalog.checkpoint("vit_s10")
    recipe = {"epochs": 12, "lr": 5e-4}
    runs = [
        replace(vit, name=f"vit_s{seed}", seed=seed, recipe_json=json.dumps(recipe | changes))
        for seed, changes in ((10, {}), (35, {}), (1, {"epochs": 6}))
    ]
    others = tuple(c for c in catalog.checkpoints if c.arch != "vit")
    grouped = replace(catalog, checkpoints=others + tuple(runs)).groups("ce_demo")
    vits = {g.label: g.checkpoints for g in grouped if g.arch == "vit"}
    assert vits == {"ViT (epochs=12)": ("vit_s10", "vit_s35"), "ViT (epochs=6)": ("vit_s1",)}
    # labels stay distinct where more than two fields differ (the sidebar picks by label),
    # and a checkpoint that records no recipe (imported) says so
    recipes = (
        {"batch_size": 8, "epochs": 1, "lr": 1e-3},
        {"batch_size": 8, "epochs": 1, "lr": 2e-3},
        {"batch_size": 16, "epochs": 2, "lr": 2e-3},
    )
    runs = [
        replace(vit, name=f"vit_r{i}", seed=i, recipe_json=json.dumps(r))
        for i, r in enumerate(recipes)
    ] + [replace(vit, name="vit_imported", seed=99, recipe_json="{}")]
    grouped = replace(catalog, checkpoints=others + tuple(runs)).groups("ce_demo")
    labels = [g.label for g in grouped if g.arch == "vit"]
    assert len(set(labels)) == 4, labels
    assert "ViT (batch_size=8, epochs=1, lr=0.001)" in labels
    assert "ViT (batch_size=16, epochs=2)" in labels and "ViT (training not recorded)" in labels


# ---------------------------------------------------------------------------- defaults ---


def test_default_selection_of_the_test_workspace(workspace):
    selection = default_selection(workspace)
    assert selection == Selection(
        dataset="tiny_ce",
        checkpoints=("unet_tiny_s1", "unet_tiny_s2"),
        classes=CE_CLASSES,
        trajectories=(0,),
        t_start=0,
        n_steps=5,  # 6 snapshots < 17: every transition
        responses=("smse", "mass", "energy"),
    )
    request = selection.to_request(workspace)
    assert request.checkpoints == tuple(
        str(checkpoints_dir(workspace).resolve() / n) for n in selection.checkpoints
    )
    assert request.data == str(datasets_dir(workspace).resolve() / "tiny_ce")
    assert request.top_eigenvalue and request.split == "test" and request.rtol is None


def test_default_selection_prefers_ce_demo_and_the_paper_window():
    catalog = synthetic_catalog(snapshots=21, n_test=6)
    selection = default_selection(catalog)
    assert selection.dataset == "ce_demo"
    assert selection.checkpoints == ("unet_s10", "unet_s35", "unet_s42")  # all seeds, by seed
    assert selection.trajectories == (0,)  # 0..min(DEFAULT_BATCHES, n_test) − 1
    assert (selection.t_start, selection.n_steps) == (0, 16)
    entry = catalog.dataset("ns_data")
    assert default_window(entry, 1) == (0, 16)
    few = synthetic_catalog(snapshots=21, n_test=1)
    assert default_selection(few).trajectories == (0,)  # capped by the test split


def test_default_selection_opens_the_data_the_models_were_trained_on():
    """A quick-look subset imported beside the full class (`--limit 200` into ce_peek, as
    the README shows) sorted first by name and became the first page, though every model
    was trained on the other dataset."""
    catalog = synthetic_catalog()
    full, ns = catalog.datasets
    peek = dataclasses.replace(full, name="a_peek", well_name="a_peek")
    full = dataclasses.replace(full, name="pdegym_ce", well_name="pdegym_ce")
    trained = tuple(dataclasses.replace(c, dataset_name="pdegym_ce") for c in catalog.checkpoints)
    catalog = Catalog(catalog.root, True, (peek, full, ns), trained)
    assert catalog.groups("a_peek")  # the models fit the subset too
    assert default_selection(catalog).dataset == "pdegym_ce"


def test_selection_is_canonical_so_one_choice_makes_one_request(workspace):
    a = Selection(
        "tiny_ce", ("unet_tiny_s1",), ("CE-RPUI", "CE-RP"), (0,), 0, 2, responses=("energy", "smse")
    )
    b = Selection(
        "tiny_ce",
        ("unet_tiny_s1",),
        ("CE-RP", "CE-RPUI"),
        (0, 0),
        0,
        2,
        responses=("smse", "energy"),
    )
    assert a == b and a.classes == ("CE-RP", "CE-RPUI") and a.responses == ("smse", "energy")
    assert a.to_request(workspace).to_dict() == b.to_request(workspace).to_dict()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", "../checkpoints/unet_tiny_s1", "outside the workspace"),
        ("checkpoints", ("../../etc",), "outside the workspace"),
    ],
)
def test_requests_never_leave_the_workspace(workspace, field, value, message):
    selection = Selection("tiny_ce", ("unet_tiny_s1",), CE_CLASSES, (0,), 0, 2)
    bad = Selection(**{**selection.__dict__, field: value})
    with pytest.raises(WorkspacePathError, match=message):
        bad.to_request(workspace)


def test_selection_refuses_impossible_settings():
    base = dict(
        dataset="d", checkpoints=("c",), classes=("CE-RP",), trajectories=(0,), t_start=0, n_steps=2
    )
    with pytest.raises(RequestError, match="estimator='newton'"):
        Selection(**base, estimator="newton")
    with pytest.raises(RequestError, match="damping=0"):
        Selection(**base, damping=0.0)
    with pytest.raises(RequestError, match="cg needs a tolerance"):
        Selection(**base, estimator="cg")
    assert Selection(**base, rtol=0.1).rtol is None  # rtol only means something for cg
    with pytest.raises(RequestError, match="depth=17"):
        Selection(**base, estimator="krylov", depth=17)


def test_depth_is_canonical_and_reaches_the_request(workspace):
    """None stands for the estimator's default (one selection per request key, no depth in
    the link); a chosen depth reaches the request, its key, its description and what the
    compute banner says changed; a stored request reads back to the same selection."""
    base = Selection("tiny_ce", ("unet_tiny_s1",), CE_CLASSES, (0,), 0, 2)
    assert base.estimator == "ekfac-krylov" and base.depth is None and base.resolved_depth == 1
    assert replace(base, depth=1) == base and "depth" not in base.to_query()
    assert replace(base, estimator="subspace", depth=4).depth is None  # subspace has none
    assert replace(base, estimator="subspace").resolved_depth is None
    assert replace(base, estimator="krylov", depth=4).depth is None  # krylov's default
    deep = replace(base, depth=4)
    assert deep.to_query()["depth"] == "4"
    request = deep.to_request(workspace)
    assert request.depth == 4 and base.to_request(workspace).depth == 1
    assert request_key(request) != request_key(base.to_request(workspace))
    # the page always says the depth an estimator runs at (it is not carried between them)
    assert "ekfac-krylov depth 4" in describe(deep) and "ekfac-krylov depth 1" in describe(base)
    assert "depth" not in describe(replace(base, estimator="subspace"))
    # counted nouns agree; euclidean, which uses no λ, shows none (a walk-through)
    assert describe(base) == (
        "1 seed × 1 batch (trajectories 0), N = 3 classes × 2 steps = 6, ekfac-krylov depth 1, "
        "λ = 0.0001"
    )
    one = replace(base, classes=base.classes[:1])
    assert "N = 1 class × 2 steps = 2" in describe(one)
    # compare mode: each group's seeds (a walk's 5 against 3 read "5 seeds")
    assert describe(replace(base, compare=("b1", "b2"))).startswith("1 and 2 seeds × 1 batch")
    assert describe(replace(base, compare=("b1",))).startswith("1 seed × 1 batch")
    assert describe(replace(base, estimator="euclidean")).endswith("= 6, euclidean")
    cg = replace(base, estimator="cg", rtol=1.5e-2)  # the tolerance it stopped at, too
    assert describe(cg).endswith("cg depth 4, λ = 0.0001, rtol 0.015"), describe(cg)
    assert differences(base, deep) == ["Krylov depth 1 → 4"]
    assert differences(base, replace(base, estimator="subspace")) == [
        "estimator ekfac-krylov → subspace"
    ]
    catalog = scan_workspace(workspace)
    assert from_request(catalog, request.to_dict()) == deep
    assert from_request(catalog, base.to_request(workspace).to_dict()) == base
    # a deflated-cg record from before the Krylov start (depth None) stands for depth 1, as
    # the request reads it; a depth that is not a whole number is no selection
    old_cg = replace(base, estimator="cg", rtol=0.02).to_request(workspace).to_dict()
    assert from_request(catalog, {**old_cg, "depth": None}).resolved_depth == 1
    assert from_request(catalog, old_cg).resolved_depth == 4
    assert from_request(catalog, {**request.to_dict(), "depth": 2.7}) is None


# ------------------------------------------------------------------------------- URL -----


def test_query_round_trip_is_exact():
    catalog = synthetic_catalog()
    selection = Selection(
        dataset="ce_demo",
        checkpoints=("unet_s10", "unet_s42"),
        classes=("CE-RP", "CE-RPUI"),
        trajectories=(0, 1, 2, 5),
        t_start=3,
        n_steps=7,
        responses=("smse", "mass"),
        estimator="cg",
        damping=3.0000000000000004e-05,
        rtol=0.015,
        compare=("vit_s10",),
    )
    query = selection.to_query()
    assert query["traj"] == "0-2,5" and query["window"] == "3:7"
    decoded, warnings = decode_query(query, catalog)
    assert warnings == []
    assert decoded == selection


def test_a_link_to_a_dataset_the_scan_skipped_says_why_not_that_it_does_not_exist():
    """An unreadable dataset is in the workspace: "no such dataset" sent users looking for
    it; the warning now gives the scan's reason."""
    catalog = replace(
        synthetic_catalog(), problems=("dataset broken: data/test/CE-RP.hdf5: truncated",)
    )
    selection, warnings = decode_query({"data": "broken"}, catalog)
    assert selection.dataset == "ce_demo"
    assert (
        len(warnings) == 1
        and "the workspace's dataset broken: data/test/CE-RP.hdf5: truncated" in warnings[0]
    )
    assert "no such dataset" not in warnings[0]
    outside = "datasets/linked: points outside the workspace; skipped"
    _, warnings = decode_query({"data": "linked"}, replace(catalog, problems=(outside,)))
    assert f"the workspace's {outside}" in warnings[0]


@pytest.mark.parametrize(
    ("key", "value", "why", "field", "expected"),
    [
        ("data", "nope", "no such dataset", "dataset", "ce_demo"),
        ("data", "ns_data", "no checkpoint in the workspace fits", "dataset", "ce_demo"),
        (
            "ckpt",
            "unet_s10,vit_s10",
            "mix model groups",
            "checkpoints",
            ("unet_s10", "unet_s35", "unet_s42"),
        ),
        (
            "ckpt",
            "ghost",
            "not in the workspace",
            "checkpoints",
            ("unet_s10", "unet_s35", "unet_s42"),
        ),
        ("vs", "unet_s10,unet_s35,unet_s42", "repeats the first group", "compare", ()),
        ("classes", "CE-RP", "at least 2 classes", "classes", CE_CLASSES),
        ("classes", "CE-RP,NS-Gauss", "not in the test split", "classes", CE_CLASSES),
        (
            "traj",
            "0-999999999",
            "index 999999999 does not exist",
            "trajectories",
            (0,),
        ),
        ("traj", "two", "not an index or a range", "trajectories", (0,)),
        ("traj", "3-1", "runs backwards", "trajectories", (0,)),
        ("window", "10:20", "needs snapshots 10..30", "n_steps", 16),
        ("window", "0", "expected START:STEPS", "n_steps", 16),
        ("resp", "smse,entropy", "unknown response", "responses", ("smse", "mass", "energy")),
        ("est", "newton", "choose one of subspace, cg, euclidean", "estimator", "ekfac-krylov"),
        ("damping", "nan", "not a finite number", "damping", 1e-4),
        ("damping", "1e300", "λ must lie in", "damping", 1e-4),
        ("device", "tpu", "choose one of auto, cpu, cuda", "device", "auto"),
        ("device", "cuda", "no CUDA GPU is visible", "device", "auto"),
    ],
)
def test_bad_url_values_are_explained_and_replaced(key, value, why, field, expected):
    selection, warnings = decode_query({key: value}, synthetic_catalog(), cuda_available=False)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"URL parameter {key}=") and why in warnings[0]
    assert getattr(selection, field) == expected


def test_absurd_urls_cost_nothing_and_never_raise():
    params = {"traj": "0-" + "9" * 9, "window": "1:" + "9" * 50, "damping": "x" * 5000}
    started = time.perf_counter()
    selection, warnings = decode_query(params, synthetic_catalog())
    assert time.perf_counter() - started < 0.5
    assert len(warnings) == 3 and all(len(w) < 300 for w in warnings)
    assert selection == default_selection(synthetic_catalog())


def test_cg_from_the_url_gets_the_papers_tolerance():
    selection, warnings = decode_query({"est": "cg"}, synthetic_catalog())
    assert warnings == [] and selection.rtol == 1.5e-2  # UNet
    selection, _ = decode_query({"est": "cg", "ckpt": "vit_s10"}, synthetic_catalog())
    assert selection.rtol == 5e-2  # ViT


def test_decode_without_anything_to_show():
    empty = Catalog(Path("/nowhere"), True)
    assert decode_query({}, empty) == (None, [])
    selection, warnings = decode_query({"data": "ce_demo"}, empty)
    assert selection is None and "no dataset with a compatible checkpoint" in warnings[0]


def test_ranges():
    assert format_ranges((7, 0, 1, 2, 3, 9, 10)) == "0-3,7,9-10"
    assert parse_ranges("0-3,7,9-10", 11) == (0, 1, 2, 3, 7, 9, 10)
    with pytest.raises(RequestError, match="index 11 does not exist"):
        parse_ranges("11", 11)


# ---------------------------------------------------------------------------- checks -----


def test_problems_explain_invalid_combinations():
    catalog = synthetic_catalog(snapshots=300)
    base = default_selection(catalog)
    assert problems(base, catalog) == []
    one_class = Selection(**{**base.__dict__, "classes": ("CE-RP",)})
    assert "at least 2 classes" in problems(one_class, catalog)[0]
    no_class = Selection(**{**base.__dict__, "classes": ()})  # one reason, not a data problem
    assert len(problems(no_class, catalog)) == 1, problems(no_class, catalog)
    long = Selection(**{**base.__dict__, "n_steps": 200})
    assert f"2 ≤ N ≤ {MAX_EXAMPLES}" in problems(long, catalog)[0]
    cuda = Selection(**{**base.__dict__, "device": "cuda"})
    assert "no CUDA GPU is visible" in problems(cuda, catalog)[0]
    assert problems(cuda, catalog, cuda_available=True) == []
    none = Selection(**{**base.__dict__, "trajectories": ()})
    assert "no test trajectory selected" in problems(none, catalog)[0]
    mixed = Selection(**{**base.__dict__, "compare": ("unet_s10", "vit_s10")})
    assert problems(mixed, catalog)[0].startswith("compare group: ")


def test_class_order_follows_the_registry():
    assert class_order(["zeta", "CE-RPUI", "CE-RP", "alpha"]) == (
        "CE-RP",
        "CE-RPUI",
        "alpha",
        "zeta",
    )
