"""Downloads: figures as self-contained HTML, PNG and SVG (kaleido + a system Chromium) with
their caption and provenance inside, panel data as CSV/npz.

Pure bytes in memory, no files: the dashboard hands them to st.download_button and tests
parse them back. CSVs are long-format tables written with the csv module (no pandas), one
row per plotted number, optionally after '# key: value' parameter lines (read them with
pandas' ``comment='#'``); floats use repr(), which round-trips exactly (NaN → 'nan'); times
are rounded to 6 significant digits (0.05, not 0.05000000000000001).

kaleido (pinned in pyproject.toml) drives a Chrome through choreographer, which looks at the
``BROWSER_PATH`` environment variable first: ``chrome_path`` points it at Debian's
``/usr/bin/chromium`` (package ``chromium``), and never lets kaleido download a browser.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import math
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import plotly.graph_objects as go

from coherence.analysis.figures.influence import LagGroups, lag_groups
from coherence.analysis.figures.validation import score_rows
from coherence.analysis.scores import Scores
from coherence.analysis.summaries import DistanceCurve, to_numpy
from coherence.errors import CoherenceError, RequestError

HTML_CONFIG = {"displaylogo": False, "responsive": True}
PUBLICATION_WIDTH = 1000  # CSS pixels of the layout (fonts sized for it) …
PUBLICATION_SCALE = 3  # … rendered at 3×: 3000 px wide, 300 dpi at 10 inches
PUBLICATION_DPI = 300
CHROME_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
SOFTWARE = "Coherence Explorer"


class ExportError(CoherenceError):
    """A figure cannot be rendered to PNG or SVG here (no kaleido, no Chrome): says the fix."""


# --------------------------------------------------------------------------- figures ------


def figure_html(
    fig: go.Figure, *, title: str = "", caption: str = "", meta: Mapping[str, Any] | None = None
) -> bytes:
    """A standalone HTML page with plotly.js embedded (≈ 4.8 MB): opens offline, as the
    users' network may be closed as ours is; a CDN link would leave a blank page there.

    ``title`` heads the page (and names the browser tab), ``caption`` says how to read the
    figure, ``meta`` (parameters, provenance) becomes a footer table.
    """
    body = fig.to_html(include_plotlyjs=True, full_html=False, config=HTML_CONFIG)
    name = title or (fig.layout.title.text or "") or SOFTWARE
    parts = [f"<h1>{html.escape(name)}</h1>"] if title else []
    if caption:
        parts.append(f"<p class='caption'>{html.escape(caption)}</p>")
    parts.append(body)
    if meta:
        parts.append(meta_table(meta))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}</title><style>{PAGE_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    return page.encode()


PAGE_STYLE = (
    "body{font-family:Inter,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;"
    "color:#222;padding:0 16px}h1{font-size:22px}h2{font-size:18px;margin-top:32px}"
    ".caption{color:#555;max-width:900px}table.meta{border-collapse:collapse;font-size:13px;"
    "margin-top:16px}table.meta td,table.meta th{border:1px solid #ddd;padding:3px 8px;"
    "text-align:left;vertical-align:top}table.meta th{background:#f6f6f6}"
)


def meta_table(meta: Mapping[str, Any], *, heading: str = "Parameters and provenance") -> str:
    """An HTML table of key → value (every value escaped): the footer of an HTML export."""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>"
        for k, v in meta.items()
    )
    return f"<table class='meta'><caption>{html.escape(heading)}</caption>{rows}</table>"


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ------------------------------------------------------------------ PNG and SVG -------


def chrome_path() -> str | None:
    """The Chrome kaleido will drive: ``BROWSER_PATH`` when it names a file, else Debian's
    /usr/bin/chromium, else a Chrome/Chromium on PATH; None when there is none."""
    configured = os.environ.get("BROWSER_PATH")
    if configured and Path(configured).is_file():
        return configured
    if DEBIAN_CHROMIUM.is_file():
        return str(DEBIAN_CHROMIUM)
    return next((p for p in map(shutil.which, CHROME_CANDIDATES) if p), None)


def image_export_problem() -> str | None:
    """Why PNG/SVG export cannot work here (one sentence with the fix), or None. Cheap: it
    neither imports kaleido nor starts a browser, so the dashboard may ask on every run."""
    if not _kaleido_installed():
        return (
            "PNG and SVG export needs the Python package kaleido (pip install kaleido, "
            "pinned in pyproject.toml); HTML and CSV downloads work without it"
        )
    if chrome_path() is None:
        return (
            "PNG and SVG export needs a Chrome or Chromium for kaleido to drive, and none was "
            "found: install Debian's package (apt-get install chromium) or set BROWSER_PATH "
            "to a Chrome executable; HTML and CSV downloads work without it"
        )
    return None


def _kaleido_installed() -> bool:
    if "kaleido" in sys.modules:  # imported already (or blocked: None)
        return sys.modules["kaleido"] is not None
    return importlib.util.find_spec("kaleido") is not None


def figure_image(
    fig: go.Figure,
    fmt: str = "png",
    *,
    width: int = PUBLICATION_WIDTH,
    height: int | None = None,
    scale: float = PUBLICATION_SCALE,
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """PNG or SVG bytes of ``fig`` at publication resolution, with ``meta`` (caption,
    provenance) embedded: PNG text chunks (iTXt) plus a 300 dpi pHYs chunk, SVG <title>,
    <desc> and <metadata>. Raises ExportError (one sentence) when it cannot render here."""
    if fmt not in ("png", "svg"):
        raise RequestError(f"format={fmt!r}: choose png or svg")
    problem = image_export_problem()
    if problem is not None:
        raise ExportError(problem)
    browser = chrome_path()
    os.environ["BROWSER_PATH"] = str(browser)  # choreographer reads it; no download
    size = {"width": width, "height": height or fig.layout.height or 500}
    try:
        data = fig.to_image(format=fmt, scale=scale if fmt == "png" else 1, **size)
    except Exception as error:  # kaleido and choreographer raise their own types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"could not render the figure as {fmt.upper()} with kaleido and {browser} "
            f"({first}); check that this Chrome starts (apt-get install chromium)"
        ) from None
    meta = dict(meta or {})
    return png_with_text(data, meta) if fmt == "png" else svg_with_metadata(data, meta)


def png_with_text(png: bytes, meta: Mapping[str, Any], *, dpi: int = PUBLICATION_DPI) -> bytes:
    """``png`` with one UTF-8 iTXt chunk per ``meta`` entry (values as text, mappings as
    JSON) and a pHYs chunk of ``dpi``, inserted after IHDR."""
    signature, ihdr_end = png[:8], 8 + 8 + 13 + 4  # length, type, 13 data bytes, CRC
    if signature != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ExportError("kaleido returned something that is not a PNG image")
    per_metre = round(dpi / 0.0254)
    chunks = [_chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))]
    for key, value in {"Software": SOFTWARE, **meta}.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        keyword = str(key).encode("latin-1", "replace")[:79]
        chunks.append(_chunk(b"iTXt", keyword + b"\0\0\0\0\0" + text.encode()))
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def png_text(png: bytes) -> dict[str, str]:
    """The iTXt entries of a PNG (what ``png_with_text`` wrote): for tests and tools."""
    out, offset = {}, 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        if kind == b"iTXt":
            keyword, _, rest = data.partition(b"\0")
            out[keyword.decode("latin-1")] = rest[4:].decode()  # flag, method, 2 empty fields
        offset += 12 + length
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def svg_with_metadata(svg: bytes, meta: Mapping[str, Any]) -> bytes:
    """``svg`` with <title> (meta 'Title'), <desc> (meta 'Description') and the whole of
    ``meta`` as JSON in <metadata>, right after the opening <svg> tag."""
    text = svg.decode()
    start = text.find("<svg")
    end = text.find(">", start)
    if start < 0 or end < 0:
        raise ExportError("kaleido returned something that is not an SVG image")
    inserted = (
        f"<title>{escape(str(meta.get('Title', '')))}</title>"
        f"<desc>{escape(str(meta.get('Description', '')))}</desc>"
        f"<metadata>{escape(json.dumps({'Software': SOFTWARE, **meta}, default=str))}"
        "</metadata>"
    )
    return (text[: end + 1] + inserted + text[end + 1 :]).encode()


def sidecar_json(meta: Mapping[str, Any]) -> bytes:
    """The caption and provenance of an exported figure as a JSON sidecar file."""
    return (json.dumps({"Software": SOFTWARE, **meta}, indent=2, default=str) + "\n").encode()


def figure_png(fig: go.Figure, *, width: int = 1000, height: int | None = None) -> bytes | None:
    """PNG bytes at scale 1 through kaleido, or None when kaleido or a Chrome is missing
    (the quiet variant of ``figure_image`` for callers that just skip the PNG)."""
    try:
        return figure_image(fig, "png", width=width, height=height, scale=1)
    except ExportError:
        return None


# ------------------------------------------------------------------------------ csv -------


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else str(float(value))
    return value


def with_header(data: bytes, params: Mapping[str, Any]) -> bytes:
    """CSV bytes preceded by one '# key: value' line per parameter (pandas: comment='#')."""
    lines = "".join(f"# {k}: {_text(v)}".replace("\n", " ") + "\n" for k, v in params.items())
    return lines.encode() + data


def round_times(times: Any) -> np.ndarray:
    """Times to 6 significant digits: 0.05 instead of the float sum 0.05000000000000001."""
    return np.array([float(f"{float(t):.6g}") for t in np.ravel(times)])


def table_csv(columns: Mapping[str, Any]) -> bytes:
    """CSV bytes of equal-length named columns (header row first), UTF-8, '\\n' line ends."""
    if not columns:
        raise RequestError("table_csv: pass at least one column {name: values}")
    data = {
        str(k): np.asarray(to_numpy(v) if hasattr(v, "detach") else v) for k, v in columns.items()
    }
    lengths = {k: (v.shape[0] if v.ndim else 1) for k, v in data.items()}
    if any(v.ndim > 1 for v in data.values()) or len(set(lengths.values())) != 1:
        raise RequestError(
            f"table_csv: columns must be 1-D and of one length; got lengths {lengths} and "
            f"shapes { {k: v.shape for k, v in data.items()} }"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(data))
    for row in zip(*(np.atleast_1d(v).tolist() for v in data.values()), strict=True):
        writer.writerow([_cell(x) for x in row])
    return buffer.getvalue().encode()


def two_time_csv(V: Any, times: Any, *, steps: Any = None) -> bytes:
    """Long format of V [T_r, T_p]: t_p, t_r, value (plus step_p, step_r with ``steps``)."""
    v, t = to_numpy(V), to_numpy(times)
    if v.shape != (len(t), len(t)):
        raise RequestError(f"V has shape {v.shape}; expected [T_r, T_p] = {(len(t), len(t))}")
    r, p = np.meshgrid(np.arange(len(t)), np.arange(len(t)), indexing="ij")  # (T_r, T_p)
    rounded = round_times(t)
    columns: dict[str, Any] = {"t_p": rounded[p.ravel()], "t_r": rounded[r.ravel()]}
    if steps is not None:
        k = np.asarray(steps)
        if k.shape != t.shape:
            raise RequestError(f"steps has shape {k.shape}; give one step per time ({len(t)})")
        columns |= {"step_p": k[p.ravel()], "step_r": k[r.ravel()]}
    return table_csv(columns | {"value": v.ravel()})


def class_matrix_csv(M: Any, classes: Sequence[str]) -> bytes:
    """Long format of M [C_r, C_p]: response_class, perturbation_class, value."""
    m, names = to_numpy(M), np.asarray([str(c) for c in classes])
    if m.shape != (len(names), len(names)):
        raise RequestError(f"M has shape {m.shape} for {len(names)} classes; M is [C_r, C_p]")
    r, p = np.meshgrid(np.arange(len(names)), np.arange(len(names)), indexing="ij")
    return table_csv(
        {
            "response_class": names[r.ravel()],
            "perturbation_class": names[p.ravel()],
            "value": m.ravel(),
        }
    )


def lag_curves_csv(lag_curves: LagGroups, *, label: str = "") -> bytes:
    """group, lag, then median/q1/q3 of the intra- and inter-class curves (NaN if C = 1)."""
    groups = lag_groups(lag_curves, label)
    columns: dict[str, list[Any]] = {"group": [], "lag": []}
    for kind in ("intra", "inter"):
        for q in ("median", "q1", "q3"):
            columns[f"{kind}_{q}"] = []
    for name, curves in groups:
        columns["group"] += [name] * len(curves.lags)
        columns["lag"] += list(curves.lags)
        for kind in ("intra", "inter"):
            band = getattr(curves, kind)
            for q in ("median", "q1", "q3"):
                columns[f"{kind}_{q}"] += list(getattr(band, q))
    return table_csv(columns)


def distance_csv(curve: DistanceCurve) -> bytes:
    """One row per window: centre, window edges, smoothed median/q1/q3, then per seed i the
    window mean, smoothed value and pair count (seed{i}_mean, seed{i}_smoothed, seed{i}_pairs)."""
    k = len(curve.centers)
    columns: dict[str, Any] = {
        "d_center": curve.centers,
        "d_low": curve.edges[:k],
        "d_high": curve.edges[2 : k + 2],
        "median": curve.band.median,
        "q1": curve.band.q1,
        "q3": curve.band.q3,
    }
    for i in range(len(curve.window_means)):
        columns[f"seed{i}_mean"] = curve.window_means[i]
        columns[f"seed{i}_smoothed"] = curve.smoothed[i]
        columns[f"seed{i}_pairs"] = curve.counts[i]
    return table_csv(columns)


def spectra_csv(spectra: Mapping[str, Any]) -> bytes:
    """Long format of {label: eigenvalues [k] or [..., N]}: group, series, index, eigenvalue.

    ``series`` numbers the flattened leading (seed, batch) positions; NaN padding is dropped.
    """
    columns: dict[str, list[Any]] = {"group": [], "series": [], "index": [], "eigenvalue": []}
    for name, values in spectra.items():
        rows = to_numpy(values)
        rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
        for j, row in enumerate(rows):
            for k, value in enumerate(row, start=1):
                if np.isnan(value):
                    continue
                columns["group"].append(str(name))
                columns["series"].append(j)
                columns["index"].append(k)
                columns["eigenvalue"].append(value)
    return table_csv(columns)


def top_eigenvalues_csv(groups: Mapping[str, Any]) -> bytes:
    """group, sample (flattened (seed, batch) position), top_eigenvalue; NaN kept."""
    columns: dict[str, list[Any]] = {"group": [], "sample": [], "top_eigenvalue": []}
    for name, values in groups.items():
        flat = to_numpy(values).ravel()
        columns["group"] += [str(name)] * len(flat)
        columns["sample"] += list(range(len(flat)))
        columns["top_eigenvalue"] += list(flat)
    return table_csv(columns)


def _band_rows(
    by_group: Mapping[str, Mapping[str, Any]], axis: str, keys: Sequence[str], x_name: str
) -> bytes:
    columns: dict[str, list[Any]] = {"group": [], x_name: []}
    for key in keys:
        for q in ("median", "q1", "q3"):
            columns[f"{key}_{q}"] = []
    for name, summary in by_group.items():
        x = np.asarray(summary[axis])  # keeps integer epochs and horizons integer
        columns["group"] += [str(name)] * len(x)
        columns[x_name] += list(x)
        for key in keys:
            for q in ("median", "q1", "q3"):
                columns[f"{key}_{q}"] += list(to_numpy(summary[key][q]))
    return table_csv(columns)


def training_curves_csv(curves_by_group: Mapping[str, Mapping[str, Any]]) -> bytes:
    """group, epoch, valid_smse_{median,q1,q3}, train_smse_{median,q1,q3}."""
    return _band_rows(curves_by_group, "epochs", ("valid_smse", "train_smse"), "epoch")


def rollout_csv(summary_by_group: Mapping[str, Mapping[str, Any]]) -> bytes:
    """group, horizon, one_step_{median,q1,q3}, rollout_{median,q1,q3}."""
    return _band_rows(summary_by_group, "horizons", ("one_step", "rollout"), "horizon")


def scores_csv(scores_by_group: Mapping[str, Scores]) -> bytes:
    """group, score, median, q1, q3, n_valid, n_censored, definition (one row per pair)."""
    score_rows(scores_by_group)  # same validation as the table
    columns: dict[str, list[Any]] = {
        k: [] for k in ("group", "score", "median", "q1", "q3", "n_valid", "n_censored")
    }
    columns["definition"] = []
    for group, scores in scores_by_group.items():
        for score in scores.as_list():
            columns["group"].append(str(group))
            columns["score"].append(score.name)
            columns["median"].append(score.median)
            columns["q1"].append(score.q1)
            columns["q3"].append(score.q3)
            columns["n_valid"].append(int(np.isfinite(score.values).sum()))
            columns["n_censored"].append(int(np.sum(score.censored)))
            columns["definition"].append(score.definition)
    return table_csv(columns)


def counterfactual_csv(epsilons: Any, rel_errors: Any) -> bytes:
    """epsilon, then the relative error (one column, or rel_error_{j} per trailing entry)."""
    eps, errors = to_numpy(epsilons), to_numpy(rel_errors)
    if errors.shape[:1] != eps.shape:
        raise RequestError(f"rel_errors has shape {errors.shape}; its rows index {eps.shape} ε")
    rows = errors.reshape(len(eps), -1)
    if rows.shape[1] == 1:
        return table_csv({"epsilon": eps, "rel_error": rows[:, 0]})
    return table_csv(
        {"epsilon": eps} | {f"rel_error_{j}": rows[:, j] for j in range(rows.shape[1])}
    )


# ------------------------------------------------------------------------------ npz -------


def panel_npz(arrays: Mapping[str, Any]) -> bytes:
    """Compressed npz bytes of named arrays, via results.npz_bytes (the result-file writer).

    Strings become fixed-width unicode, so np.load never needs pickle. Imported lazily:
    results.py pulls in the torch pipeline, which a CSV download does not need.
    """
    from coherence.analysis.results import npz_bytes

    converted = {}
    for key, value in arrays.items():
        a = to_numpy(value) if hasattr(value, "detach") else np.asarray(value)
        if a.dtype == object:
            a = a.astype(str)
        converted[str(key)] = a
    return npz_bytes(converted)
