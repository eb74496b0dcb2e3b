"""Pure figure builders (data → plotly go.Figure) shared by the dashboard, downloads and tests.

No streamlit, no I/O. Each builder's docstring starts with how to read the figure (the app
shows it as the panel caption). Modules: theme (colours, ranges, layout), influence (§6.1–6.4),
models (§6.5, 6.7), fields (snapshots, prediction vs truth), validation (§7), compare.
"""

from __future__ import annotations

from coherence.analysis.figures.compare import side_by_side
from coherence.analysis.figures.fields import field_viewer, input_pair_figure, snapshot_animation
from coherence.analysis.figures.influence import (
    LAG_AXES,
    class_transfer_heatmap,
    difference_heatmap,
    distance_figure,
    lag_curves_figure,
    two_time_heatmap,
    with_cell_marked,
    with_click_targets,
)
from coherence.analysis.figures.models import (
    rollout_figure,
    subspace_spectrum_figure,
    top_eigenvalue_figure,
    training_curves_figure,
)
from coherence.analysis.figures.theme import (
    COLORSCALE,
    DIVERGING,
    FIELD_COLORSCALE,
    SCALES,
    cells_beyond,
    clipped_text,
    heatmap_scale,
    influence_range,
    log_axis,
    number_label,
    shared_zrange,
)
from coherence.analysis.figures.validation import (
    counterfactual_figures,
    score_rows,
    score_title,
    scores_table,
)

__all__ = [
    "COLORSCALE",
    "DIVERGING",
    "FIELD_COLORSCALE",
    "LAG_AXES",
    "SCALES",
    "cells_beyond",
    "class_transfer_heatmap",
    "clipped_text",
    "counterfactual_figures",
    "difference_heatmap",
    "distance_figure",
    "field_viewer",
    "heatmap_scale",
    "influence_range",
    "input_pair_figure",
    "lag_curves_figure",
    "log_axis",
    "number_label",
    "rollout_figure",
    "score_rows",
    "score_title",
    "scores_table",
    "shared_zrange",
    "side_by_side",
    "snapshot_animation",
    "subspace_spectrum_figure",
    "top_eigenvalue_figure",
    "training_curves_figure",
    "two_time_heatmap",
    "with_cell_marked",
    "with_click_targets",
]
