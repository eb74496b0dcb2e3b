"""The static report (coherence.report and `coherence report`): one self-contained HTML file
from cached results, every influence panel drawn, scores with Q1–Q3, provenance; a clear
sentence when the selection is not computed yet."""

from __future__ import annotations

import html
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from coherence import report as report_module
from coherence.analysis.diagnostics import residual_summary
from coherence.analysis.figures.theme import SCALES, heatmap_scale
from coherence.analysis.figures.validation import score_rows
from coherence.analysis.scores import compute_scores
from coherence.analysis.summaries import class_transfer_matrix
from coherence.analysis.verdict import (
    caveat_line,
    format_score,
    quartile_band,
    result_caveats,
    score_peers,
)
from coherence.cache.jobs import JobRunner
from coherence.cli import app
from coherence.dashboard.selection import default_selection
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.report import (
    ReportError,
    build_report,
    cached_in,
    conservation_pair,
    data_sources,
    group_labels,
    load_groups,
    panel_value_problems,
    report_name,
    scales_from_params,
    sections,
    selection_from_link,
    two_time_view,
)
from coherence.report_panels import clipped_caption, pair_label
from tests.fixtures import COMPARE


def drawn_layout(div: str) -> dict:
    """The layout a report's figure div hands to Plotly.newPlot(id, data, layout, config)."""
    decoder = json.JSONDecoder()
    rest = div[div.index("Plotly.newPlot(") + len("Plotly.newPlot(") :]
    values = []
    for _ in range(3):
        rest = rest.lstrip(" \n,")
        value, end = decoder.raw_decode(rest)
        values.append(value)
        rest = rest[end:]
    return values[2]


@pytest.mark.slow
def test_report_is_self_contained_with_every_panel_scores_and_provenance(workspace):
    catalog = scan_workspace(workspace)
    selection = replace(default_selection(workspace), compare=COMPARE)
    groups = load_groups(workspace, catalog, selection)
    assert [g.label for g in groups] == ["UNet", "ViT"]
    parts = sections(groups, selection)
    titles = [p.title for p in parts]
    assert titles[0].startswith("Two-time influence") and titles[1].startswith("Difference map")
    for needed in ("Class transfer", "Time lag", "Input distance", "Scores"):
        assert needed in titles
    for response in ("mass", "energy"):  # the conservation panel: map and lag curves
        assert f"Influence on {response} vs time lag" in titles
    page = build_report(workspace, catalog, selection, groups=groups).page.decode()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)  # nothing fetched
    assert "Lanczos" not in page  # the demo's top eigenvalues converged
    for g in groups:  # what each verdict rests on, beside it, as the dashboard says it
        care = caveat_line(result_caveats(g.result))
        assert care and f"<small class='care'>{html.escape(care)}</small>" in page
    # each group's distance to the full solve, against its own architecture's tolerance,
    # as the dashboard says above its tabs (the file alone had no word of it)
    for g, arch, rtol in zip(groups, ("unet", "vit"), ("1.5e-2", "5e-2"), strict=True):
        line = residual_summary(g.result.diagnostics, arch=arch)
        assert f"within the paper's rtol {rtol}" in line
        assert f"{g.label}: {html.escape(line)}</p>" in page
    capped = [  # as if Lanczos had stopped at its cap: the page says so, as the CLI does
        replace(
            g,
            result=replace(
                g.result,
                diagnostics=[
                    [{**cell, "top_eigenvalue_bound": 0.5} for cell in row]
                    for row in g.result.diagnostics
                ],
            ),
        )
        for g in groups
    ]
    warned = build_report(workspace, catalog, selection, groups=capped[:1]).page.decode()
    assert "UNet: the top eigenvalue" in warned and "stopped at its step cap" in warned
    assert len(re.findall(r"plotly\.js v\d", page)) == 1  # plotly.js inlined once
    tables = [p for p in parts if p.figure.data[0].type == "table"]
    assert [p.title for p in tables] == ["Scores"]  # an HTML table: its text copies as read
    assert page.count("Plotly.newPlot(") == len(parts) - 1
    scores = {g.label: compute_scores(g.result.H_std[g.result.primary]) for g in groups}
    table = page[page.index("<table class='meta scores'>") :]
    table = table[: table.index("</table>")]
    header, rows = score_rows(scores)
    for cell in [*header, *(c for row in rows for c in row)]:
        assert f">{html.escape(cell)}</t" in table, cell
    for g in groups:
        assert g.key in page  # provenance: cache keys, checkpoints
        for name in g.result.checkpoints:
            assert name in page
        dd = scores[g.label].diagonal_dominance
        peers = score_peers(scores, g.label)["diagonal_dominance"]
        # the median and its band, in the decimals the page uses (2–4: as many as keep the
        # quartiles apart, as wide as the other group's)
        text = format_score(dd, peers)
        assert abs(float(text) - dd.median) <= 0.5 * 10 ** -(len(text.split(".")[1]))
        assert text in page and f"Q1–Q3 {quartile_band(dd, peers)}" in page
    assert "diagonal ridge" in page and "damping λ" in page and "Krylov depth" in page
    # a figure's own title does not repeat its section's heading (the PNG export keeps it)
    for part in (p for p in parts if p not in tables):
        heading = page.index(f"<h2>{html.escape(part.title)}</h2>")
        div = page[heading : page.index("</section>", heading)]
        assert drawn_layout(div)["title"].get("text", "") != part.title, part.title
    assert parts[0].figure.layout.title.text == parts[0].title  # the figure itself unchanged


def test_report_of_a_subset_of_the_cached_view_is_assembled_from_its_units(workspace):
    catalog = scan_workspace(workspace)
    full = default_selection(workspace)
    subset = replace(full, checkpoints=full.checkpoints[:1])  # one seed dropped, as on screen
    runner = JobRunner(workspace)
    key = runner.key(subset.to_request(workspace))
    runner.store.delete(key)  # an earlier test may have assembled it already
    (group,) = load_groups(workspace, catalog, subset)
    assert group.key == key and group.result.checkpoints == full.checkpoints[:1]
    assert runner.store.computations(key) == 0  # no job: the cached units only
    whole = runner.result(runner.key(full.to_request(workspace)))
    np.testing.assert_array_equal(group.result.H["smse"], whole.H["smse"][:1])


def test_the_default_view_stays_on_a_lost_result_whose_units_are_kept(workspace):
    """A result file lost (evicted, deleted, or damaged and so dropped) while its units are
    kept: the first page and a link-less report still open that view, assembled from the
    units, instead of moving to another group whose result is stored."""
    first = default_selection(workspace, cached=cached_in(workspace))
    runner = JobRunner(workspace)
    request = first.to_request(workspace)
    key = runner.key(request)
    runner.store.delete(key)
    try:
        assert runner.status(key).state != "done" and runner.available(request)
        assert default_selection(workspace, cached=cached_in(workspace)) == first
        (group, *_) = load_groups(workspace, scan_workspace(workspace), first)
        assert group.key == key and runner.status(key).state == "done"  # assembled, stored
    finally:
        runner.materialize(request)  # the session's workspace as the other tests expect it
    other = replace(first, damping=first.damping * 7)  # never computed: neither stored nor
    assert not runner.available(other.to_request(workspace))  # assembled


def test_report_of_scores_of_another_map_than_smse_says_so(workspace):
    """The dashboard's note (the scores read the mass map) goes into the report too."""
    catalog = scan_workspace(workspace)
    mass = replace(default_selection(workspace), responses=("mass",))
    page = build_report(workspace, catalog, mass).page.decode()
    assert "the scores read the mass map, not SMSE&#x27;s" in page
    smse = build_report(workspace, catalog, default_selection(workspace)).page.decode()
    assert "the scores read" not in smse


def test_report_draws_the_chosen_colour_scale_and_names_it(workspace):
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    scales = {"two_time": "diverging", "transfer": "auto"}
    parts = sections(groups, selection, scales=scales, distance=None)
    first = parts[0].figure.data[0]
    assert first.zmin == pytest.approx(-first.zmax) and first.zmin < 0
    # each heatmap as its own tab shows it: one scale for all had drawn the class transfer
    # diverging because the two-time tab was (a walk-through)
    (transfer,) = [p.figure.data[0] for p in parts if p.title == "Class transfer"]
    matrix = class_transfer_matrix(groups[0].result.H_std[groups[0].result.primary])
    lo, hi, _ = heatmap_scale("auto", matrix, selection.n_examples)
    assert (transfer.zmin, transfer.zmax) == pytest.approx((lo, hi))
    built = build_report(workspace, catalog, selection, groups=groups, scales=scales)
    page = built.page.decode()
    assert "colour scales of the heatmaps" in page and "two-time: diverging ±" in page
    assert "class transfer: auto" in page
    assert scales_from_params({"zscale_two_time": ["auto"]})[0]["two_time"] == "auto"
    # a repeated key: its last value, as the dashboard reads it (the report drew the first)
    assert scales_from_params({"zscale_two_time": ["auto", "paper"]})[0]["two_time"] == "paper"
    chosen, warnings = scales_from_params({"zscale_transfer": "rainbow", "zscale_mass": "auto"})
    assert chosen == {"two_time": "paper", "transfer": "paper", "mass": "auto", "energy": "paper"}
    assert warnings == ["zscale_transfer='rainbow': not a colour scale (" + ", ".join(SCALES) + ")"]


def test_report_of_an_uncomputed_selection_says_so(workspace):
    catalog = scan_workspace(workspace)
    selection, warnings = selection_from_link("http://host/?est=cg&rtol=0.2", catalog)
    assert not warnings
    with pytest.raises(ReportError, match="not computed yet for UNet"):
        load_groups(workspace, catalog, selection)


def test_a_report_not_computed_yet_gives_the_command_that_computes_it(workspace, tmp_path):
    """The refusal named the options (--classes, --window, …) but not --data or
    --checkpoint (a walkthrough with imported data), then --workspace (pasted outside
    the workspace it looked in ./workspace); it gives the whole command, which computes
    what the report then draws."""
    import shlex

    from tests.fixtures import copy_workspace

    ws = copy_workspace(workspace, tmp_path / "ws")
    out = tmp_path / "r.html"
    base = ["report", "--workspace", str(ws), "--out", str(out), "--param", "est=euclidean"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    (command,) = re.findall(r"`(coherence analyze [^`]*)`", said)
    words = shlex.split(command)[1:]
    assert "--data" in words and "--checkpoint" in words and "--damping" not in words
    assert words[words.index("--workspace") + 1] == str(ws)  # pasted anywhere, it works
    words[words.index("--out") + 1] = str(tmp_path / "result.npz")
    computed = CliRunner().invoke(app, [*words, "--yes"])
    assert computed.exit_code == 0, computed.output
    built = CliRunner().invoke(app, base)
    assert built.exit_code == 0, built.output
    assert out.exists()


@pytest.mark.slow
def test_cli_report_writes_the_file_and_explains_errors(workspace, tmp_path):
    out = tmp_path / "report.html"

    def report(*options: str):
        base = ["report", "--workspace", str(workspace), "--out", str(out)]
        return CliRunner().invoke(app, [*base, *options])

    result = report()
    assert result.exit_code == 0, result.output
    # a suggested command stays on one line (rich broke it at 80 columns off a terminal, so
    # a pasted command or link held line breaks)
    (advice,) = [line for line in result.output.splitlines() if "--keep-epochs" in line]
    assert advice.startswith("Training dynamics: not in this report") and advice.endswith("dyn.")
    page = out.read_text()
    assert "Overview, Rollout, Validation: the dashboard&#x27;s tabs of the data" in page
    selection = default_selection(workspace)
    key = JobRunner(workspace).key(selection.to_request(workspace))
    assert key in page and page.startswith("<!DOCTYPE html>")
    assert report_name(selection).endswith("_report.html")
    assert report_name(selection, ["UNet"]).endswith("_UNet_report.html")  # the group named
    assert report_name(selection, ["UNet", "ViT"]).endswith("_UNet-vs-ViT_report.html")
    result = report("--link", f"http://127.0.0.1:8501/?vs={','.join(COMPARE)}&panel=Scores")
    assert result.exit_code == 0, result.output
    assert "ViT" in out.read_text() and "no parameter" not in result.output
    # a link value the dashboard would replace by its default is refused, with every
    # problem named: the report (the file one sends) showed other weights, classes or
    # models than the link's, and exited 0
    before = out.read_bytes()
    result = report("--link", "?lamda=1e-2&dampng=1e-3")
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "'lamda' is no parameter of a dashboard link (did you mean 'damping'?)" in said
    assert "'dampng' is no parameter of a dashboard link (did you mean 'damping'?)" in said
    assert "no report was written" in said
    # no close spelling: every key a link may hold, the open tab's and the tabs' own too
    # (`tab=nope` was answered with the selection's keys alone), listed once, and `tab`
    # named as the key it means
    result = report("--link", "?tab=Sensitivity&zzq=1&qqz=2")
    said = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "'tab' is no parameter of a dashboard link (did you mean 'panel'?)" in said
    assert "'zzq' is no parameter of a dashboard link; ignored" in said
    assert said.count("panel (the open tab, by its label)") == 1
    assert (
        "Sensitivity: sens_pair" in said and "Training dynamics: dyn_group, dyn_vs_damping" in said
    )
    for bad, says in (
        ("ckpt=foo", "checkpoint(s) foo are not in the workspace (the dashboard would show"),
        ("epoch=7", "epoch='7': no snapshot of that epoch"),
        ("zscale_two_time=rainbow", "not a colour scale"),
        # a tab that does not exist, and an overlay λ the dynamics panel does not offer
        ("panel=Sensitivty", "panel='Sensitivty': no such tab (did you mean 'Sensitivity'?)"),
        ("dyn_vs_damping=7", "dyn_vs_damping='7': not an overlay λ the Training dynamics"),
    ):
        result = report("--param", bad)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and says in said, result.output
        assert "instead" not in said and "Traceback" not in result.output
    assert out.read_bytes() == before  # the last good report stays
    # a link from a GPU session (device=cuda) reads anywhere: the device is no part of a
    # result's key, and the report computes nothing
    result = report("--param", "device=cuda")
    assert result.exit_code == 0, result.output
    # a tab the report does not hold is said (it holds the influence panels and the cached
    # sweeps: tests/dashboard/test_sweep_panels.py); an overlay λ the panel offers is accepted
    result = report("--param", "panel=Validation", "--param", "dyn_vs_damping=0.01")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "opens the Validation panel, which the report" in said
    # Conservation without a mass or energy response (all an NS link can hold): said
    result = report("--param", "panel=Conservation", "--param", "resp=smse")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "the selection has no mass or energy response" in said
    result = report("--param", "zscale_two_time=diverging")
    assert result.exit_code == 0, result.output
    assert "diverging ±" in out.read_text()  # the link's colour scale, in the provenance
    result = report("--param", "est=euclidean")
    assert result.exit_code == 2 and "not computed yet" in result.output
    said = " ".join(result.output.split())  # the selection it looked for, in full
    assert f"classes {','.join(selection.classes)}, window {selection.t_start}:" in said
    assert "euclidean" in said and "responses smse" in said
    assert "Traceback" not in result.output
    result = report("--param", "est")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = report("--link", "not a url at all")  # it printed the default report
    assert result.exit_code == 2 and "no dashboard parameters in it" in result.output
    # refused before the page is built, and without creating anything
    missing = tmp_path / "no_workspace"
    result = CliRunner().invoke(app, ["report", "--workspace", str(missing), "--out", str(out)])
    assert result.exit_code == 2 and "no such directory" in result.output
    assert not missing.exists()
    # named by where it came from: the variable, not a --workspace nobody typed
    from_env = CliRunner().invoke(
        app, ["report", "--out", str(out)], env={"COHERENCE_WORKSPACE": str(missing)}
    )
    said = " ".join(from_env.output.split())
    assert f"COHERENCE_WORKSPACE={missing}: no such directory" in said
    # ... nor over a file that is not a report: --out <checkpoint>/config.json replaced the
    # checkpoint's config with the page
    checkpoint = tmp_path / "unet_s1"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"format": "coherence-checkpoint"}')
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    notes = tmp_path / "notes.html"
    notes.write_text("my own notes, not a page")
    page = tmp_path / "page.html"  # an HTML page of one's own was replaced in silence
    page.write_text("<html><body>my precious notes</body></html>")
    dataset = tmp_path / "ce"
    (dataset / "data" / "valid").mkdir(parents=True)
    (dataset / "data" / "valid" / "CE-RP.hdf5").write_bytes(b"")
    refusals = (
        (tmp_path, "that is a folder"),
        (dataset / "r.html", "ce is a dataset; write the report outside it"),
        (notes / "r.html", "is a file, not a folder"),
        (checkpoint / "config.json", "a report is an HTML file"),
        (checkpoint / "report.html", "unet_s1 is a checkpoint; write the report outside it"),
        (notes, "the file exists and is not a Coherence Explorer report"),
        (page, "the HTML page exists and is not a Coherence Explorer report"),
    )
    for bad, says in refusals:
        result = CliRunner().invoke(
            app,
            ["report", "--workspace", str(workspace), "--out", str(bad)],
            env={"COLUMNS": "300"},
        )
        assert result.exit_code == 2 and says in result.output, result.output
    assert (checkpoint / "config.json").read_text() == '{"format": "coherence-checkpoint"}'
    assert notes.read_text() == "my own notes, not a page"
    assert page.read_text() == "<html><body>my precious notes</body></html>"
    # a missing folder is made, as analyze makes its result's (it was refused)
    nested = tmp_path / "reports" / "today" / "r.html"
    result = CliRunner().invoke(
        app, ["report", "--workspace", str(workspace), "--out", str(nested)]
    )
    assert result.exit_code == 0 and nested.read_text().startswith("<!DOCTYPE html>")
    assert not (checkpoint / "report.html").exists()


def test_report_holds_the_two_time_view_of_its_link(workspace, tmp_path):
    """The report drew the intra-class seed mean only, while its provenance printed a link
    with a class pair and a seed (a walk-through): the link's view is drawn after the mean,
    as the tab draws it, and a pair or seed the tab would not offer is refused."""
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    response, perturbation = selection.classes[1], selection.classes[0]
    seed = selection.checkpoints[1]
    params = {"two_time_pair": f"{response} ← {perturbation}", "two_time_seed": seed}
    assert two_time_view(params, selection) == (params["two_time_pair"], seed)
    parts = sections(groups, selection, distance=None, view=two_time_view(params, selection))
    title = f"Two-time influence (SMSE), response {response} ← perturbation {perturbation}, {seed}"
    assert [p.title for p in parts[:2]] == ["Two-time influence (SMSE), intra-class mean", title]
    result = groups[0].result
    h = result.H_std["smse"]  # [S, B, T, C, T, C]: the pair's block, this seed, batch mean
    r, p = selection.classes.index(response), selection.classes.index(perturbation)
    by_hand = h[result.checkpoints.index(seed), :, :, r, :, p].mean(axis=0)
    np.testing.assert_allclose(parts[1].figure.data[0].z, by_hand, rtol=1e-6)
    page = build_report(workspace, catalog, selection, groups=groups, params=params).page
    assert html.escape(title) in page.decode()
    out = tmp_path / "r.html"
    for bad, says in (
        ("two_time_pair=CE-RP ← CE-NOPE", "two_time_pair='CE-RP ← CE-NOPE': not a class pair"),
        ("two_time_seed=unet_s99", "two_time_seed='unet_s99': not a seed of this selection"),
    ):
        run = CliRunner().invoke(
            app, ["report", "--workspace", str(workspace), "--out", str(out), "--param", bad]
        )
        assert run.exit_code == 2 and says in " ".join(run.output.split()), run.output
    assert not out.exists()


def test_report_holds_the_conservation_pair_of_its_link(workspace, tmp_path):
    """The Conservation tab's class pair (cons_pair) is drawn after each response's
    intra-class mean, as the tab shows it; a pair the tab would not offer is refused."""
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    response, perturbation = selection.classes[0], selection.classes[1]
    params = {"cons_pair": f"{response} ← {perturbation}"}
    assert conservation_pair(params, selection) == params["cons_pair"]
    assert not panel_value_problems(params, selection)
    parts = sections(
        groups, selection, distance=None, conservation_pair=conservation_pair(params, selection)
    )
    titles = [p.title for p in parts]
    r, p = selection.classes.index(response), selection.classes.index(perturbation)
    for name in ("mass", "energy"):
        mean = titles.index(f"Two-time influence ({name}), intra-class mean")
        assert titles[mean + 1] == f"Two-time influence ({name}), {pair_label(params['cons_pair'])}"
        by_hand = groups[0].result.H_std[name][:, :, :, r, :, p].mean(axis=(0, 1))
        figure = parts[mean + 1].figure
        np.testing.assert_allclose(figure.data[0].z, by_hand, rtol=1e-6)
        assert figure.data[0].hovertemplate.count(f"Ĥ_{name}")
    plain = [p.title for p in sections(groups, selection, distance=None)]
    assert len(plain) == len(titles) - 2  # no pair in the link: the means only
    out = tmp_path / "r.html"
    bad = "cons_pair=CE-RP ← CE-NOPE"
    run = CliRunner().invoke(
        app, ["report", "--workspace", str(workspace), "--out", str(out), "--param", bad]
    )
    says = "cons_pair='CE-RP ← CE-NOPE': not a class pair"
    assert run.exit_code == 2 and says in " ".join(run.output.split()), run.output
    assert not out.exists()


def test_report_draws_the_lag_axis_of_its_link(workspace):
    """The Time lag tab's y axis (lag_y) is the report's, also when that tab was closed
    (kept in the session); a value the tab does not offer is refused by name."""
    from coherence.dashboard.panels.scores import report_params
    from coherence.report import lag_axis

    selection = default_selection(workspace)
    groups = load_groups(workspace, scan_workspace(workspace), selection)
    params = report_params({"panel": "Scores"}, {"lag_y": "tails"})
    assert lag_axis(params) == "tails" and not panel_value_problems(params, selection)
    parts = {p.title: p for p in sections(groups, selection, distance=None, lag_axis="tails")}
    assert parts["Time lag"].figure.layout.yaxis.range is not None
    assert parts["Influence on mass vs time lag"].figure.layout.yaxis.range is None  # its own
    plain = {p.title: p for p in sections(groups, selection, distance=None)}
    assert plain["Time lag"].figure.layout.yaxis.range is None
    problems = panel_value_problems({"lag_y": "log"}, selection)
    assert problems == [
        "lag_y='log': not a y axis of the Time lag tab (whole, tails); using whole instead"
    ]
    assert lag_axis({"lag_y": "log"}) == "whole"


def test_compare_mode_reports_the_pair_view_after_the_difference_map_and_no_seed(workspace):
    """In compare mode the tab offers no seed: a link's seed drew the intra-class mean a
    second time, and the pair's view sat between the mean and its difference map (a
    review)."""
    catalog = scan_workspace(workspace)
    selection = selection_from_link(f"?vs={','.join(COMPARE)}", catalog)[0]
    seed = selection.checkpoints[0]
    assert two_time_view({"two_time_seed": seed}, selection) == ("intra", "mean")
    assert not panel_value_problems({"two_time_seed": "anything"}, selection)
    groups = load_groups(workspace, catalog, selection)
    pair = f"{selection.classes[1]} ← {selection.classes[0]}"
    view = two_time_view({"two_time_pair": pair, "two_time_seed": seed}, selection)
    titles = [p.title for p in sections(groups, selection, distance=None, view=view)][:4]
    assert titles[0] == "Two-time influence (SMSE), intra-class mean"
    assert titles[1].startswith("Difference map (SMSE)")
    assert titles[2] == f"Two-time influence (SMSE), {pair_label(pair)}"


@pytest.mark.slow  # 15–25 s: the default suite stays under 10 minutes
def test_report_says_what_it_analysed_and_which_cells_its_maps_clip(workspace, tmp_path):
    """A walk-through: reports at two λ began alike (the selection only in the provenance
    at the foot), maps with cells beyond [0, √N] were clipped without the dashboard's word,
    and the provenance's link row was the link as typed, not the view a --param made."""
    from coherence.analysis.figures import cells_beyond
    from coherence.analysis.summaries import two_time_map

    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    page = build_report(workspace, catalog, selection, groups=groups, distance=None).page.decode()
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert f"λ = {selection.damping:g}" in title and selection.estimator in title
    last = selection.t_start + selection.n_steps
    assert f"window snapshots {selection.t_start}–{last}" in title
    assert html.escape(f"λ = {selection.damping:g}") in page.split("<h2>")[0]  # above it all
    # the clipped cells: counted independently from the map the caption is under
    mean_map = two_time_map(groups[0].result.H_std[groups[0].result.primary])
    lo, hi, _ = heatmap_scale("paper", mean_map[None], selection.n_examples)
    slack = 0.02 * (hi - lo)  # clipped by less than 2% of the range: the same colour
    beyond = int(np.count_nonzero((mean_map < lo - slack) | (mean_map > hi + slack)))
    assert cells_beyond([mean_map], (lo, hi)) == (beyond, mean_map.size)
    two_time = sections(groups, selection, distance=None)[0]
    said = f"{beyond} of {mean_map.size} cells lie beyond the colour range"
    assert (said in two_time.caption) == (beyond > 0)
    mass = -np.abs(mean_map) - 1.0  # a map wholly below [0, √N]: every cell drawn as 0
    caption = clipped_caption([mass], (lo, hi), "zscale_mass")
    every = f"{mean_map.size} of {mean_map.size} cells"
    assert caption.startswith(f" {every} lie beyond the colour range [0, ")
    assert "zscale_mass=auto or diverging" in caption
    assert clipped_caption([np.clip(mean_map, lo, hi)], (lo, hi), "zscale_two_time") == ""
    auto = sections(groups, selection, distance=None, scales={"two_time": "auto"})[0]
    assert "beyond the colour range" not in auto.caption  # the data's own range clips nothing
    # the link row is the view drawn: a --param override (and the selection it makes)
    out = tmp_path / "r.html"
    link = f"http://127.0.0.1:8501/?damping=0.01&ckpt={selection.checkpoints[0]}&lag_y=tails"
    base = ["report", "--workspace", str(workspace), "--out", str(out), "--link", link]
    result = CliRunner().invoke(app, [*base, "--param", f"damping={selection.damping}"])
    assert result.exit_code == 0, result.output  # a cached view's subset: assembled
    found = re.search(r"<th>dashboard link</th><td><a href='(.*?)'>", out.read_text())
    row = html.unescape(found.group(1))
    assert row.startswith("http://127.0.0.1:8501/?") and "damping=0.01" not in row
    assert f"damping={selection.damping}" in row and "lag_y=tails" in row
    assert f"ckpt={selection.checkpoints[0]}&" in row


# ------------------------------------------- a mutation campaign's survivors (report.py) -----


def test_two_groups_of_one_architecture_are_labelled_a_and_b(workspace):
    """Two UNet groups both labelled "UNet": their headline rows and provenance collided."""
    catalog = scan_workspace(workspace)
    selection = replace(
        default_selection(workspace), checkpoints=("unet_tiny_s1",), compare=("unet_tiny_s2",)
    )
    assert group_labels(catalog, selection) == ["UNet (A)", "UNet (B)"]


def test_simulated_data_gets_no_data_source_row(workspace):
    assert data_sources(workspace, default_selection(workspace)) == {}


def test_the_report_carries_the_data_sources_rows(workspace, monkeypatch):
    """Imported data's licence and split rows reach the page (the import tests read
    data_sources directly, never through build_report)."""
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    row = {"data source (CE-RP)": "PDEgym · licence CC-BY-NC-4.0"}
    monkeypatch.setattr(report_module, "data_sources", lambda root, chosen: dict(row))
    page = build_report(workspace, catalog, selection, groups=groups, distance=None).page.decode()
    assert html.escape("licence CC-BY-NC-4.0") in page and "data source (CE-RP)" in page


def test_the_report_provenance_holds_the_dashboard_link(workspace):
    """Only a slow test saw the link row; the default suite could lose it."""
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    groups = load_groups(workspace, catalog, selection)
    link = "http://127.0.0.1:8501/?data=tiny_ce"
    page = build_report(
        workspace, catalog, selection, groups=groups, distance=None, link=link
    ).page.decode()
    assert "<th>dashboard link</th>" in page and html.escape(link) in page
