"""The sensitivity sweep's settings and points as the panel draws them: which λ each line
spans, which settings wait to be asked for, how lines are named (pure, on the synthetic
catalog and a runner that keys a request by its settings: no files read)."""

from __future__ import annotations

from dataclasses import replace

from coherence.dashboard import sweeps
from coherence.dashboard.selection import default_selection

from .test_selection import synthetic_catalog


class KeyRunner:
    """A JobRunner's ``key`` without the files: the request's settings."""

    def key(self, request) -> str:
        return repr(request)


def test_the_default_sweep_spans_the_grid_and_the_selections_own_lambda():
    selection = replace(default_selection(synthetic_catalog()), damping=3e-4)
    rows = sweeps.sensitivity_settings(selection)
    main = sorted(c.damping for label, c, _ in rows if label == selection.estimator)
    assert main == sorted((*sweeps.DAMPING_GRID, 3e-4))
    assert sweeps.DAMPING_GRID == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    # euclidean ignores λ: one point, at the paper's λ, drawn as a flat line
    assert [c.damping for label, c, _ in rows if label == "euclidean"] == [sweeps.PAPER_DAMPING]
    # the on-demand settings wait to be asked for
    assert {label for label, _, _ in rows} == {selection.estimator, "euclidean"}


def test_only_euclidean_ignores_damping():
    assert sweeps.ignores_damping("euclidean")
    assert not any(
        sweeps.ignores_damping(e) for e in ("ekfac-krylov", "subspace", "cg", "krylov", "ekfac")
    )


def test_the_on_demand_points_are_marked_and_carry_their_own_settings():
    catalog = synthetic_catalog()
    selection = default_selection(catalog)
    points, problems = sweeps.sensitivity_points(
        "/nowhere", selection, KeyRunner(), dampings=(1e-3,), include_on_demand=True
    )
    assert problems == []
    by_label = {}
    for point in points:
        by_label.setdefault(point.series, []).append(point)
    assert not any(p.on_demand for p in by_label[selection.estimator])
    assert all(p.on_demand for p in by_label["subspace energy 1 − 1e-2"])
    assert [p.uses_damping for p in by_label["euclidean"]] == [False]
    thresholds = {
        label: {p.request.energy_threshold for p in by_label[label]}
        for label in ("subspace energy 1 − 1e-2", "subspace energy 1 − 1e-6")
    }
    assert thresholds == {
        "subspace energy 1 − 1e-2": {1 - 1e-2},
        "subspace energy 1 − 1e-6": {1 - 1e-6},
    }
    assert len({p.key for p in points}) == len(points)  # each point its own cache entry
    assert {p.request.rtol for p in by_label["cg rtol 1.5e-2"]} == {1.5e-2}


def test_a_compare_group_gets_its_own_points():
    catalog = synthetic_catalog()
    selection = replace(default_selection(catalog), compare=("vit_s10",))
    points, _ = sweeps.sensitivity_points("/nowhere", selection, KeyRunner(), dampings=(1e-3,))
    assert {p.group for p in points} == {0, 1}
    assert len([p for p in points if p.group == 1]) == len([p for p in points if p.group == 0])


def test_a_setting_that_cannot_be_requested_is_said_once():
    catalog = synthetic_catalog()
    selection = replace(default_selection(catalog), compare=("vit_s10",))
    points, problems = sweeps.sensitivity_points(
        "/nowhere", replace(selection, dataset="../outside"), KeyRunner()
    )
    assert points == [] and len(problems) == 1 and "outside the workspace" in problems[0]


def test_seeds_without_a_training_history_have_no_dynamics_point(tmp_path):
    """No history.json and no snapshot: no epoch to draw (not the weights as an 'epoch 0')."""
    from coherence.workspace import checkpoints_dir

    for name in ("a", "b"):
        (checkpoints_dir(tmp_path) / name).mkdir(parents=True)
    assert sweeps.group_epochs(tmp_path, ("a", "b")) == {}
