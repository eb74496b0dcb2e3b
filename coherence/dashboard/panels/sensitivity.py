"""Panel 'Sensitivity' (METHOD.md §7): the scores against the damping λ per estimator, the
paper's setting marked, and how far two estimators agree (per-row rank correlation of Ĥ,
difference of the two-time maps): does a conclusion depend on the solver?"""

from __future__ import annotations

from functools import partial

import streamlit as st

from coherence.analysis.exports import rank_correlation_csv, two_time_csv, with_header
from coherence.analysis.figures.dynamics import agreement_figure, sensitivity_figure
from coherence.dashboard import compute, loaders, panel_links, sweep_views, sweeps
from coherence.dashboard.markup import literal
from coherence.dashboard.panels import sweep_jobs
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    csv_file,
    downloads,
    how_to_read,
    widget_value,
)
from coherence.dashboard.panels.dynamics import trends_csv
from coherence.errors import CoherenceError
from coherence.wording import plural


def sensitivity(ctx: PanelContext) -> None:
    st.caption(how_to_read(sensitivity_figure))
    root = str(ctx.root)
    runner = loaders.job_runner(root)
    ctx = sweep_jobs.filled_view(  # every cached setting counts: the panel draws them all
        ctx,
        lambda s: sweeps.sensitivity_points(ctx.root, s, runner, include_on_demand=True)[0],
        key="sens",
        what=("sweep setting", "sweep settings"),
    )
    with_cg = st.toggle(
        "Include the on-demand settings: cg (the paper's CG and rtol, 1.5e-2 and 5e-2, from a "
        "Krylov start), "
        "krylov, ekfac-krylov at depth 4, ekfac and the subspace (span(G) alone) at energy "
        "thresholds 1 − 1e-4, 1 − 1e-2 and 1 − 1e-6",
        key="sens_cg",
        help="Conjugate gradients on the full system needs many JVP + VJP per column on a "
        "trained model (its iteration cap is reported); krylov costs several times the "
        "default, and so does ekfac-krylov at depth 4 (closer to the full solve, its mass "
        "and energy maps most); so they are computed only on demand (ekfac and subspace "
        "are cheaper but further from the full solve). cg starts from the krylov solution: "
        "where that already meets rtol it runs no iteration (`coherence analyze --cg-start "
        "cold` gives the paper's own iterate).",
    )
    # every setting's cache is looked up: an on-demand one computed earlier (or by a study)
    # is drawn whether or not the toggle asks to compute the missing ones
    every, problems = sweeps.sensitivity_points(
        ctx.root, ctx.selection, runner, include_on_demand=True
    )
    for problem in problems:
        st.warning(literal(problem), icon=":material/warning:")
    if not every:
        return
    every_state = sweep_jobs.statuses(root, every)
    asked = [i for i, p in enumerate(every) if with_cg or not p.on_demand]
    if with_cg:  # the full grid is days of work: let the user pick a slice of it
        asked = _picked(ctx, every, asked)
    # a running job stays in the count (its progress shown, the page rerun when it ends)
    # even when a picker no longer holds its setting
    asked = sorted(set(asked) | {i for i, s in enumerate(every_state) if s.active})
    points, states = [every[i] for i in asked], [every_state[i] for i in asked]
    sweep_jobs.status_bar(
        root, points, states, key="sens", what=("sweep setting", "sweep settings"), stale=ctx.stale
    )
    done = [p for p, s in zip(every, every_state, strict=True) if s.state == "done"]
    counted = {p.key for p in points}
    extra = sum(1 for p in done if p.key not in counted)
    if extra:
        which = "the pickers above decide" if with_cg else "the toggle above decides"
        st.caption(
            f"Also drawn: {plural(extra, 'cached setting')} outside the sweep counted above "
            f"({which} only which missing settings the button computes)."
        )
    if len(done) <= len(ctx.selection.groups):
        sweep_jobs.elsewhere(
            ctx,
            lambda s: sweeps.sensitivity_points(ctx.root, s, runner)[0],
            "Sensitivity",
        )
    if not done:
        st.info(
            "No setting of the sweep is cached yet: compute them with the button above.",
            icon=":material/hourglass_empty:",
        )
        return
    labels = compute.group_labels(ctx.catalog, ctx.selection)
    bad = sweep_jobs.unconverged_points(root, done)  # warned, then ringed on the chart
    sweep_jobs.warn_unconverged(
        bad, len(done), partial(sweep_views.setting_point_name, labels), "sweep settings"
    )
    response = ctx.selection.responses[0]
    lines = sweep_views.sensitivity_lines(
        done,
        labels,
        ctx.selection.groups,
        lambda p: sweep_jobs.scores(root, p, response),
        compare=ctx.compare,
    )
    figure = sweep_views.sensitivity_chart(
        lines,
        bad,
        labels,
        selected_damping=ctx.selection.damping,
        compare=ctx.compare,
        title=f"{ctx.instead}: scores against λ" if ctx.instead else "Scores against λ",
    )
    chart(figure, key="chart_sensitivity")
    # the files hold the sweep, not the sidebar's one estimator and λ
    meta = sweep_views.sweep_meta(ctx.meta(), done, labels, "λ") | sweep_views.sweep_settings_meta(
        lines, ctx.selection.estimator, ctx.selection.damping
    )
    stem = ctx.stem("sensitivity")
    downloads(
        "sensitivity",
        stem,
        figure=figure,
        files=[
            csv_file(
                "Data (CSV)",
                f"{stem}.csv",
                lambda: with_header(trends_csv(lines.trends, "damping", lines.members), meta),
            )
        ],
        caption=how_to_read(sensitivity_figure),
        meta=meta,
    )
    _cg_report(root, done)
    _agreement(ctx, labels, done)


def _picked(ctx: PanelContext, every, asked: list[int]) -> list[int]:
    """The indices of ``asked`` whose estimator setting and λ the user kept in two pickers
    (default: all), so that one setting (cg at the paper's λ, say) is computed without the
    rest of a grid of days."""
    names = list(dict.fromkeys(every[i].series for i in asked))
    values = [f"{x:g}" for x in sorted({every[i].x for i in asked})]
    left, right = st.columns(2)
    series = left.multiselect(
        "Estimator settings to compute",
        names,
        default=names,
        key="sens_pick_series",
        help="The button below computes the missing settings among these (and the λ values "
        "beside); cached settings are drawn whatever is picked.",
    )
    dampings = right.multiselect(
        "λ values to compute",
        values,
        default=values,
        key="sens_pick_damping",
        help="euclidean ignores λ: it is computed once, at the paper's λ.",
    )
    if not series or not dampings:
        st.caption("Nothing to compute: pick at least one estimator setting and one λ value above.")
    return [i for i in asked if every[i].series in series and f"{every[i].x:g}" in dampings]


def _cg_report(root: str, done) -> None:
    """The cg iteration cap and how many columns reached rtol, per setting."""
    lines = sweep_views.cg_lines(done, lambda p: sweep_jobs.result(root, p))
    if lines:
        st.markdown("**cg convergence**\n" + "\n".join(f"- {literal(line)}" for line in lines))


def _agreement(ctx: PanelContext, labels: list[str], done) -> None:
    """Two estimators at the same λ and group: rank correlation and map difference."""
    st.subheader("Agreement between estimators", anchor=False)
    st.caption(how_to_read(agreement_figure))
    damping = ctx.selection.damping
    candidates, options = sweep_views.agreement_pairs(done, damping)
    if not options:
        # no pair here: a pair chosen in another view (another group's sweep shown instead)
        # would stay in the link, which the report then refuses
        panel_links.forget("sens_pair")
        st.info(
            f"Needs two estimators cached at λ = {damping:g} for one group (e.g. ekfac-krylov and "
            "euclidean): compute the sweep above."
        )
        return
    names = [sweep_views.pair_name(pair, labels, ctx.compare) for pair in options]
    slot = st.container()
    chosen = widget_value("sens_pair", names)
    pair = options[names.index(chosen)]
    g, a, b = pair
    try:
        read = sweep_views.pair_agreement(
            candidates, pair, lambda p: sweep_jobs.result(str(ctx.root), p)
        )
    except CoherenceError as error:
        st.warning(literal(error))
        return
    if read is None:
        return
    found, first = read
    figure = agreement_figure(
        found,
        (a, b),
        times=first.times,
        damping=damping,
        group=labels[g] if ctx.compare else ctx.instead,
        color_index=g if ctx.compare else 0,
    )
    chart(figure, key="chart_agreement")
    slot.selectbox("Compare", names, key="sens_pair")
    view = ctx.with_choices(estimators=f"{a}-vs-{b}", group=labels[g] if ctx.compare else None)
    summary = {
        "compared": f"{a} vs {b}",
        "damping λ": f"{damping:g}",
        "median per-row Spearman": f"{found.median_correlation:.4f}",
        "Pearson over all entries": f"{found.pearson:.4f}",
        "max |ΔĤ|": f"{found.max_difference:.4g}",
        "max |Ĥ| of the two maps": f"{found.scale:.4g}",
        f"cache key of {a}": candidates[g][a].key,
        f"cache key of {b}": candidates[g][b].key,
        "value": f"two-time map of {a} minus that of {b} (ΔĤ)",
    }
    meta, stem = view.meta() | summary, view.stem("agreement")
    downloads(
        "agreement",
        stem,
        figure=figure,
        caption=how_to_read(agreement_figure),
        meta=meta,
        files=[
            csv_file(
                "Data (CSV)",
                f"{stem}.csv",
                lambda: with_header(two_time_csv(found.map_difference, first.times), meta),
            ),
            csv_file(
                "Row correlations (CSV)",
                f"{stem}_rows.csv",
                lambda: with_header(
                    rank_correlation_csv(found.rank_correlation, seeds=first.checkpoints),
                    meta | {"value": f"per-row Spearman ρ of Ĥ, {a} vs {b}"},
                ),
            ),
        ],
    )
    st.caption(
        f"{sweep_views.agreement_text(found, damping)} The data CSV holds the difference map, "
        "the row correlations CSV every ρ of the histogram."
    )
