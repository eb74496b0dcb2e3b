"""Exports: CSVs parse back (csv module) to the exact numbers, HTML is self-contained, npz loads
without pickle, PNG degrades to None without kaleido."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest

from coherence.analysis import exports as E
from coherence.analysis import figures as F
from coherence.analysis.scores import compute_scores
from coherence.analysis.summaries import (
    class_transfer_matrix,
    influence_vs_distance,
    lag_curves,
    rollout_summary,
    training_curves,
    two_time_map,
)
from coherence.errors import RequestError

S, B, T, C = 2, 2, 4, 2
N = T * C


@pytest.fixture(scope="module")
def h_std() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(S, B, T, C, T, C))


def parse(data: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(data.decode())))
    return rows[0], rows[1:]


def column(data: bytes, name: str, kind=float) -> list:
    header, rows = parse(data)
    j = header.index(name)
    return [kind(r[j]) for r in rows]


def test_table_csv_round_trip_exact_with_nan_and_quoting():
    values = np.array([0.1, 1 / 3, np.nan, -2.5e-300, np.inf])
    data = E.table_csv({"name": ["a,b", 'q"x', "c", "d", "e"], "k": np.arange(5), "v": values})
    header, rows = parse(data)
    assert header == ["name", "k", "v"]
    assert [r[0] for r in rows] == ["a,b", 'q"x', "c", "d", "e"]
    assert [int(r[1]) for r in rows] == [0, 1, 2, 3, 4]
    parsed = np.array([float(r[2]) for r in rows])
    np.testing.assert_array_equal(parsed, values)  # repr round-trips; nan == nan here
    with pytest.raises(RequestError, match="one length"):
        E.table_csv({"a": [1, 2], "b": [1.0]})
    with pytest.raises(RequestError, match="at least one column"):
        E.table_csv({})


def test_two_time_csv_long_format(h_std):
    v = two_time_map(h_std)
    times = np.array([0.0, 0.05, 0.1, 0.15])
    data = E.two_time_csv(v, times, steps=[2, 3, 4, 5])
    header, rows = parse(data)
    assert header == ["t_p", "t_r", "step_p", "step_r", "value"]
    assert len(rows) == T * T
    index = {t: i for i, t in enumerate(times)}
    for row in rows:
        t_p, t_r, value = float(row[0]), float(row[1]), float(row[4])
        assert value == v[index[t_r], index[t_p]]  # V rows = response, columns = perturbation
        assert int(row[2]) == index[t_p] + 2 and int(row[3]) == index[t_r] + 2
    with pytest.raises(RequestError, match="T_r, T_p"):
        E.two_time_csv(v[:3], times)


def test_class_matrix_csv(h_std):
    m = class_transfer_matrix(h_std)
    header, rows = parse(E.class_matrix_csv(m, ["RP", "CRP"]))
    assert header == ["response_class", "perturbation_class", "value"]
    names = ["RP", "CRP"]
    got = {(r[0], r[1]): float(r[2]) for r in rows}
    assert got == {(names[i], names[j]): m[i, j] for i in range(C) for j in range(C)}


def test_lag_curves_csv_groups(h_std):
    curves = lag_curves(h_std)
    data = E.lag_curves_csv([("UNet", curves), ("ViT", curves)])
    header, rows = parse(data)
    assert header[:2] == ["group", "lag"] and len(rows) == 2 * (2 * T - 1)
    assert [r[0] for r in rows] == ["UNet"] * (2 * T - 1) + ["ViT"] * (2 * T - 1)
    np.testing.assert_array_equal(column(data, "lag", int)[: 2 * T - 1], curves.lags)
    np.testing.assert_array_equal(column(data, "intra_median")[: 2 * T - 1], curves.intra.median)
    np.testing.assert_array_equal(column(data, "inter_q3")[2 * T - 1 :], curves.inter.q3)


def test_distance_csv(h_std):
    inputs = np.random.default_rng(1).normal(size=(B, N, 2, 3, 3))
    curve = influence_vs_distance(h_std, inputs, bins=6)
    data = E.distance_csv(curve)
    np.testing.assert_array_equal(column(data, "d_center"), curve.centers)
    np.testing.assert_array_equal(column(data, "d_low"), curve.edges[:-2])
    np.testing.assert_array_equal(column(data, "d_high"), curve.edges[2:])
    np.testing.assert_array_equal(column(data, "median"), curve.band.median)
    np.testing.assert_array_equal(column(data, "q1"), curve.band.q1)  # swapped, it passed
    np.testing.assert_array_equal(column(data, "q3"), curve.band.q3)
    assert np.all(curve.band.q1 <= curve.band.q3) and np.any(curve.band.q1 < curve.band.q3)
    np.testing.assert_array_equal(column(data, "seed1_mean"), curve.window_means[1])
    np.testing.assert_array_equal(column(data, "seed0_pairs", int), curve.counts[0])
    seeds = [f"unet_s{i}" for i in range(len(curve.counts))]
    named = E.distance_csv(curve, seeds)
    np.testing.assert_array_equal(column(named, f"{seeds[1]}_mean"), curve.window_means[1])
    with pytest.raises(RequestError, match="seed names"):
        E.distance_csv(curve, seeds[:1])


def test_spectra_and_top_eigenvalue_csv():
    spectra = np.array([[[3.0, 1.0, np.nan], [5.0, 2.0, 0.5]]])  # [S, B, N], NaN-padded
    header, rows = parse(E.spectra_csv({"UNet": spectra, "ViT": [7.0]}))
    assert header == ["group", "series", "index", "eigenvalue"]
    assert rows == [
        ["UNet", "0", "1", "3.0"],
        ["UNet", "0", "2", "1.0"],
        ["UNet", "1", "1", "5.0"],
        ["UNet", "1", "2", "2.0"],
        ["UNet", "1", "3", "0.5"],
        ["UNet", "median", "1", "4.0"],  # the figure's median, to the smaller rank
        ["UNet", "median", "2", "1.5"],
        ["ViT", "0", "1", "7.0"],
    ]
    named = E.spectra_csv({"UNet": spectra}, series_labels={"UNet": ["s10, traj 0", "s10, traj 1"]})
    with pytest.raises(RequestError, match="1 series labels for 2 series"):
        E.spectra_csv({"UNet": spectra}, series_labels={"UNet": ["one"]})
    assert [row[1] for row in parse(named)[1]] == ["s10, traj 0"] * 2 + ["s10, traj 1"] * 3 + [
        "median"
    ] * 2
    data = E.top_eigenvalues_csv({"UNet": np.array([[1.5, np.nan]])})
    assert parse(data)[1] == [["UNet", "0", "1.5"], ["UNet", "1", "nan"]]


def test_training_rollout_scores_and_counterfactual_csv(h_std):
    hist = [
        [{"epoch": e, "train_smse": 1 / (e + s), "valid_smse": 2 / (e + s)} for e in (1, 2, 3)]
        for s in (1, 2, 3)
    ]
    summary = training_curves(hist)
    data = E.training_curves_csv({"UNet": summary})
    np.testing.assert_array_equal(column(data, "epoch", int), [1, 2, 3])
    np.testing.assert_array_equal(column(data, "valid_smse_q1"), summary["valid_smse"]["q1"])

    one = np.random.default_rng(2).uniform(size=(5, 3))
    roll = rollout_summary(one, 2 * one)
    data = E.rollout_csv({"ViT": roll})
    np.testing.assert_array_equal(column(data, "horizon", int), [1, 2, 3])
    np.testing.assert_array_equal(column(data, "rollout_median"), roll["rollout"]["median"])

    scores = compute_scores(h_std)
    data = E.scores_csv({"UNet": scores})
    assert column(data, "score", str) == [s.name for s in scores.as_list()]
    medians = column(data, "median")
    for got, score in zip(medians, scores.as_list(), strict=True):
        assert got == score.median or (math.isnan(got) and math.isnan(score.median))
    assert column(data, "n_valid", int) == [
        int(np.isfinite(s.values).sum()) for s in scores.as_list()
    ]
    # the quartiles and the censored counts (a mutation swapping q1/q3 or zeroing the count
    # passed): a flat map's decay length is censored, a bound in every (seed, batch)
    flat = compute_scores(
        np.ones((3, 2, 5, 2, 5, 2)) + np.arange(3)[:, None, None, None, None, None]
    )
    both = E.scores_csv({"UNet": scores, "flat": flat})
    rows = [s for group in (scores, flat) for s in group.as_list()]
    for name, of in (("q1", lambda s: s.q1), ("q3", lambda s: s.q3)):
        for got, score in zip(column(both, name), rows, strict=True):
            assert got == of(score) or (math.isnan(got) and math.isnan(of(score))), name
    assert column(both, "n_censored", int) == [int(np.sum(s.censored)) for s in rows]
    assert flat.decay_length.censored.all() and max(column(both, "n_censored", int)) == 6
    assert any(s.q1 < s.q3 for s in rows)

    eps = np.array([1e-3, 1e-2])
    header, rows = parse(E.counterfactual_csv(eps, [[0.1, 0.2], [1.0, 2.0]]))
    assert header == ["epsilon", "rel_error_0", "rel_error_1"]
    assert [[float(x) for x in r] for r in rows] == [[1e-3, 0.1, 0.2], [1e-2, 1.0, 2.0]]


def test_figure_html_is_self_contained(h_std):
    v = two_time_map(h_std)
    v[1, 2] = 1.2345678912345
    fig = F.two_time_heatmap(v, [0.0, 0.05, 0.1, 0.15], N, title="marker title 42")
    html = E.figure_html(fig).decode()
    assert len(html) > 1_000_000  # plotly.js (≈ 4.8 MB) is embedded
    assert re.search(r"plotly\.js v\d", html)
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE)  # no external scripts
    assert "marker title 42" in html
    assert "perturbation time t_p" in html
    # the heatmap's z travels base64-encoded (plotly's typed arrays): decode and compare
    match = re.search(r'"z":\{"dtype":"f8","bdata":"([^"]+)","shape":"4, 4"\}', html)
    assert match, "heatmap z not found in the HTML"
    bdata = json.loads(f'"{match.group(1)}"')  # undo the HTML-safe escapes (\\u002f = '/')
    z = np.frombuffer(base64.b64decode(bdata), dtype="<f8").reshape(4, 4)
    np.testing.assert_array_equal(z, v)


def test_figure_png_none_without_kaleido(monkeypatch):
    fig = F.top_eigenvalue_figure({"UNet": [1.0, 2.0]})
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido → ImportError
    assert E.figure_png(fig) is None

    def broken(*args, **kwargs):
        raise RuntimeError("no Chrome found")

    monkeypatch.setitem(sys.modules, "kaleido", types.ModuleType("kaleido"))
    monkeypatch.setattr(type(fig), "to_image", broken)
    assert E.figure_png(fig) is None


def test_panel_npz_round_trip_without_pickle():
    v = np.random.default_rng(3).normal(size=(3, 3))
    data = E.panel_npz({"V": v, "classes": ["RP", "CRP"], "times": [0.0, 0.05, 0.1]})
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["V"], v)
        assert npz["classes"].tolist() == ["RP", "CRP"]
        np.testing.assert_array_equal(npz["times"], [0.0, 0.05, 0.1])


# -------------------------------------------------- issue 16: images, headers, names ------

needs_chrome = pytest.mark.skipif(
    E.image_export_problem() is not None, reason=str(E.image_export_problem())
)
META = {"Title": "Two-time <map>", "Description": "x = t_p; Ĥ on [0, √N]", "cache key": "ab12"}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@needs_chrome
@pytest.mark.slow
def test_png_and_svg_at_publication_resolution_carry_caption_and_provenance():
    fig = F.two_time_heatmap(np.eye(3), [0.0, 0.1, 0.2], 9, title="marker")
    png = E.figure_image(fig, "png", width=400, height=300, scale=2, meta=META)
    assert _png_size(png) == (800, 600)  # width × scale, height × scale
    text = E.png_text(png)
    assert text["Title"] == META["Title"] and text["Description"] == META["Description"]
    assert text["cache key"] == "ab12" and text["Software"] == "Coherence Explorer"
    assert b"pHYs" in png[:200]
    svg = E.figure_image(fig, "svg", width=400, height=300, meta=META).decode()
    assert svg.lstrip().startswith("<svg")
    assert "<title>Two-time &lt;map&gt;</title>" in svg
    assert "x = t_p; Ĥ on [0, √N]" in svg and "ab12" in svg
    assert json.loads(E.sidecar_json(META))["cache key"] == "ab12"


@needs_chrome
def test_choreographers_ignored_message_leaves_no_traceback(caplog):
    """choreographer logs a message it ignores with a traceback ("JSONError decoding
    message. Ignoring"); after an export the serve terminal shows no such line, and the
    pipe's other records still pass."""
    import logging

    fig = F.two_time_heatmap(np.eye(2), [0.0, 0.1], 4, title="quiet")
    E.figure_image(fig, "png", width=200, height=200, scale=1)
    pipe = logging.getLogger(E.CHOREOGRAPHER_PIPE)
    with caplog.at_level(logging.WARNING, logger=E.CHOREOGRAPHER_PIPE):
        try:
            raise ValueError("{bye}")
        except ValueError:
            pipe.exception("JSONError decoding message. Ignoring")
        pipe.error("Error in trying to decode JSON off our read.")
    assert [r.getMessage() for r in caplog.records] == [
        "Error in trying to decode JSON off our read."
    ]


def test_image_export_without_chrome_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    monkeypatch.setattr(E, "DEBIAN_CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    fig = F.top_eigenvalue_figure({"UNet": [1.0, 2.0]})
    if E._kaleido_installed():
        with pytest.raises(E.ExportError, match="apt-get install chromium"):
            E.figure_image(fig, "png")
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(E.ExportError, match="pip install kaleido"):
        E.figure_image(fig, "svg")
    assert E.figure_png(fig) is None


def test_png_text_chunks_round_trip_with_valid_crcs():
    raw = zlib.compress(b"\0\0\0\0")  # one 1×1 RGB row: filter byte + 3 bytes
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + E._chunk(b"IHDR", ihdr) + E._chunk(b"IDAT", raw)
    png += E._chunk(b"IEND", b"")
    out = E.png_with_text(
        png, {"Description": "√N ✓", "provenance": {"λ": 1e-4}, "damping λ": "1e-4"}
    )
    assert E.png_text(out)["Description"] == "√N ✓"
    assert E.png_text(out)["damping lambda"] == "1e-4"  # a Latin-1 keyword, spelled out
    assert E.png_keyword("Ĥ on √N") == "H on square root N"
    assert E.png_keyword("a\x00b\tc") == "a b c"  # no NUL (it ends the keyword) or control
    long = E.png_keyword("x" * 78 + " λ")
    assert len(long) <= 79 and long == long.strip()
    assert json.loads(E.png_text(out)["provenance"]) == {"λ": 1e-4}
    offset = 8
    while offset < len(out):  # every chunk's CRC checks out
        (length,) = struct.unpack(">I", out[offset : offset + 4])
        body = out[offset + 4 : offset + 8 + length]
        (crc,) = struct.unpack(">I", out[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(body) == crc
        offset += 12 + length


def test_csv_parameter_header_and_rounded_times():
    times = np.cumsum([0.0] + [0.1] * 3)  # 0.30000000000000004 as a float sum
    data = E.with_header(
        E.two_time_csv(np.ones((4, 4)), times), {"dataset": "ce", "estimator": "cg"}
    )
    lines = data.decode().splitlines()
    assert lines[:2] == ["# dataset: ce", "# estimator: cg"]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert sorted({r["t_p"] for r in rows}) == ["0.0", "0.1", "0.2", "0.3"]
    # six significant digits kept (three passed), floats in the header as %g, not rounded
    np.testing.assert_array_equal(E.round_times([0.0123456, 1.23456]), [0.0123456, 1.23456])
    assert E.with_header(b"", {"damping": 1e-4}) == b"# damping: 0.0001\n"
    # a value with a line break stays one comment line (a CSV reader took its rest as data)
    assert E.with_header(b"a\n", {"note": "two\nlines"}) == b"# note: two lines\na\n"
    # an epoch of a fractional snapshot stays fractional (int() wrote 0.5 as 0)
    from coherence.analysis.tables import epoch_maps_csv

    data = epoch_maps_csv([np.ones((2, 2)), np.zeros((2, 2))], [0.5, 1.0], [0.0, 0.1])
    assert sorted({r["epoch"] for r in csv.DictReader(io.StringIO(data.decode()))}) == [
        "0.5",
        "1",
    ]


def test_figure_html_title_caption_and_escaped_footer():
    fig = F.top_eigenvalue_figure({"UNet": [1.0, 2.0]})
    page = E.figure_html(
        fig, title="Spectrum <b>", caption="how to read", meta={"dataset": "<img src=x>"}
    ).decode()
    assert "<title>Spectrum &lt;b&gt;</title>" in page and "how to read" in page
    assert "&lt;img src=x&gt;" in page and "<img src=x>" not in page
    assert "Parameters and provenance" in page


def test_exports_and_report_never_import_torch():
    """Downloads and the report read results only: importing them, reading a result's npz
    and writing panel data (npz, CSV) must not pull in torch (seconds and ~1 GB per process)."""
    code = (
        "import sys\n"
        "import coherence.analysis.exports as E, coherence.analysis.results, coherence.report\n"
        "E.panel_npz({'a': [1.0, 2.0], 'names': ['x', 'y']})\n"
        "E.table_csv({'a': [1.0]})\n"
        "print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_meta_table_links_web_addresses_and_escapes_everything():
    table = E.meta_table(
        {
            "dashboard link": "http://host:8501/?data=a&est=b",
            "note": "<script>x</script>",
            "path": "javascript:alert(1)",
        }
    )
    assert "<a href='http://host:8501/?data=a&amp;est=b'>" in table  # clickable, escaped
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "href='javascript" not in table  # only http(s) becomes a link


def test_rank_correlation_csv_holds_every_rho_by_seed_batch_and_row():
    from coherence.analysis.exports import rank_correlation_csv

    rho = np.arange(12.0).reshape(2, 2, 3) / 12
    text = rank_correlation_csv(rho, seeds=["s10", "s35"]).decode().splitlines()
    assert text[0] == "seed,batch,row,spearman_rho" and len(text) == 13
    seed, batch, row, value = text[1 + 7].split(",")  # seed 1, batch 0, row 1
    assert (seed, batch, row) == ("s35", "0", "1") and float(value) == pytest.approx(7 / 12)
    with pytest.raises(RequestError, match=r"expected \[seeds=3, B, N\]"):
        rank_correlation_csv(rho, seeds=["a", "b", "c"])
