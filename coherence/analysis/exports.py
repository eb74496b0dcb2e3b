"""Downloads: figures as self-contained HTML, PNG and SVG (kaleido + a system Chromium) with
their caption and provenance inside, panel data as CSV/npz (written in
``coherence.analysis.tables``, re-exported here so the dashboard has one import).

Pure bytes in memory, no files: the dashboard hands them to st.download_button and tests
parse them back. Imports neither torch nor streamlit.

kaleido (pinned in pyproject.toml) drives a Chrome through choreographer, which looks at the
``BROWSER_PATH`` environment variable first: ``chrome_path`` points it at Debian's
``/usr/bin/chromium`` (package ``chromium``), and never lets kaleido download a browser.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import unicodedata
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import plotly.graph_objects as go

from coherence.analysis.tables import (
    as_text,
    class_matrix_csv,
    counterfactual_csv,
    distance_csv,
    lag_curves_csv,
    panel_npz,
    rank_correlation_csv,
    rollout_csv,
    round_times,
    scores_csv,
    spectra_csv,
    table_csv,
    top_eigenvalues_csv,
    training_curves_csv,
    two_time_csv,
    with_header,
)
from coherence.errors import CoherenceError, RequestError

__all__ = [  # the figure exports below and the tables re-exported from tables.py
    "CHROME_CANDIDATES",
    "DEBIAN_CHROMIUM",
    "HTML_CONFIG",
    "PAGE_STYLE",
    "PUBLICATION_DPI",
    "PUBLICATION_SCALE",
    "PUBLICATION_WIDTH",
    "SOFTWARE",
    "ExportError",
    "as_text",
    "chrome_path",
    "class_matrix_csv",
    "counterfactual_csv",
    "distance_csv",
    "figure_html",
    "figure_image",
    "figure_png",
    "image_export_problem",
    "lag_curves_csv",
    "meta_table",
    "panel_npz",
    "png_text",
    "png_with_text",
    "rank_correlation_csv",
    "rollout_csv",
    "round_times",
    "scores_csv",
    "sidecar_json",
    "spectra_csv",
    "svg_with_metadata",
    "table_csv",
    "top_eigenvalues_csv",
    "training_curves_csv",
    "two_time_csv",
    "with_header",
]

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
    """An HTML table of key → value (every value escaped; an http(s) address as a link):
    the footer of an HTML export."""

    def cell(value: Any) -> str:
        text = html.escape(as_text(value))
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return f"<a href='{html.escape(value, quote=True)}'>{text}</a>"
        return text

    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in meta.items()
    )
    return f"<table class='meta'><caption>{html.escape(heading)}</caption>{rows}</table>"


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


class _QuietIgnoredMessages(logging.Filter):
    """Drops choreographer's "JSONError decoding message. Ignoring", which it logs with a
    traceback for a browser message it then ignores (seen once per dashboard session in a
    walk-through: a traceback in the serve terminal after a PNG that downloaded fine)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("JSONError decoding message")


IGNORED_MESSAGES = _QuietIgnoredMessages()
CHOREOGRAPHER_PIPE = "choreographer.channels.pipe"  # the logger that reports them


def figure_image(
    fig: go.Figure,
    fmt: str = "png",
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """PNG or SVG bytes of ``fig`` at publication resolution, with ``meta`` (caption,
    provenance) embedded: PNG text chunks (iTXt) plus a 300 dpi pHYs chunk, SVG <title>,
    <desc> and <metadata>. Raises ExportError (one sentence) when it cannot render here.

    Default size: the figure's own layout width (a square map with its colour bar, drawn
    without blank bands) or PUBLICATION_WIDTH, scaled so a PNG is always 3000 px wide."""
    width = width or fig.layout.width or PUBLICATION_WIDTH
    if scale is None:
        scale = PUBLICATION_WIDTH * PUBLICATION_SCALE / width
    if fmt not in ("png", "svg"):
        raise RequestError(f"format={fmt!r}: choose png or svg")
    problem = image_export_problem()
    if problem is not None:
        raise ExportError(problem)
    browser = chrome_path()
    os.environ["BROWSER_PATH"] = str(browser)  # choreographer reads it; no download
    # the module first: it makes its logger (logistro's class); asked before, logging makes
    # a plain one, which choreographer's debug2 calls then fail on
    importlib.import_module(CHOREOGRAPHER_PIPE)
    logging.getLogger(CHOREOGRAPHER_PIPE).addFilter(IGNORED_MESSAGES)  # once: a set
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
        keyword = png_keyword(str(key)).encode("latin-1")
        chunks.append(_chunk(b"iTXt", keyword + b"\0\0\0\0\0" + text.encode()))
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def png_keyword(key: str) -> str:
    """A PNG text keyword (Latin-1 only, 1–79 characters, PNG spec 11.3.4) naming ``key``:
    characters outside Latin-1 are spelled out (λ → lambda, √ → square root) instead of
    becoming '?', so 'damping λ' stays readable in any PNG tool."""

    def printable(c: str) -> bool:  # the keyword's character set: Latin-1 32–126, 161–255
        return 32 <= ord(c) <= 126 or 161 <= ord(c) <= 255

    spelled = []
    for ch in key:
        if printable(ch):
            spelled.append(ch)
            continue
        base = unicodedata.normalize("NFKD", ch)[0]  # Ĥ → H (the accent dropped)
        if printable(base):
            spelled.append(base)
            continue
        name = unicodedata.name(ch, "").lower().removeprefix("greek small letter ")
        spelled.append(f" {'lambda' if name == 'lamda' else name} ")  # controls: a space
    # no leading, trailing or consecutive spaces, 1–79 characters
    return " ".join("".join(spelled).split())[:79].strip() or "key"


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
