"""Hostile input (issue 13): crafted links and planted workspace entries.

Markdown in a URL value or a directory name must be shown, never rendered (an image would be
fetched by every visitor's browser); a link of path traversal, absolute paths, encodings,
huge or non-finite numbers, very long or odd unicode values, or repeated keys gets a warning
and the default selection, and opens no file outside the workspace; a planted checkpoint or a
link that leaves the workspace cannot take over the default view.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from coherence.dashboard.markup import code, literal
from coherence.dashboard.selection import decode_query, default_selection
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.workspace import checkpoints_dir, datasets_dir

from .test_app import assert_clean, open_app, texts

IMAGE = "![i](https://evil.example/p.png)"
LINK = "[l](https://evil.example/)"
HOSTILE = IMAGE + LINK
# the ten parameters of the issue, plus rtol
URL_KEYS = ("data", "ckpt", "classes", "vs", "resp", "est", "traj", "window", "damping", "device")
MARKDOWN_FIELDS = {"body", "label", "help", "text"}  # what Streamlit renders as markdown
_COMMONMARK = MarkdownIt("commonmark").disable("text_join")  # keep escapes apart
_BARE_LINK = re.compile(r"https?:|www\.", re.IGNORECASE)  # GFM autolink literals


def rendered_constructs(markdown: str) -> list[str]:
    """Links, images and raw HTML a CommonMark parser finds in ``markdown``, plus GFM's bare
    https:// or www. autolinks (Streamlit renders GFM)."""
    found, plain = [], []
    for token in _COMMONMARK.parse(markdown):
        for child in token.children or ():
            if child.type in ("image", "link_open", "html_inline"):
                found.append(f"{child.type} {child.attrs}")
            # an escape or a code span breaks a bare link: only plain text runs can hold one
            plain.append(child.content if child.type == "text" else "\0")
        if token.type == "html_block":
            found.append("html_block")
    found += [f"bare link {m.group()!r}" for m in _BARE_LINK.finditer("".join(plain))]
    return found


def markdown_texts(at: AppTest) -> list[str]:
    """Every string of the page that Streamlit renders as markdown (bodies, labels, help
    tooltips, progress texts, expander labels), main area and sidebar."""
    out: list[str] = []

    def strings(message) -> None:
        for descriptor, value in message.ListFields():
            if descriptor.type == descriptor.TYPE_MESSAGE:
                for item in value if descriptor.is_repeated else [value]:
                    strings(item)
            elif descriptor.name in MARKDOWN_FIELDS and isinstance(value, str):
                out.append(value)

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "ListFields"):
            strings(proto)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def assert_nothing_rendered(at: AppTest) -> None:
    bad = {text: rendered_constructs(text) for text in markdown_texts(at)}
    bad = {text: found for text, found in bad.items() if found}
    assert not bad, bad


# ----------------------------------------------------------------------- escaping -----


@pytest.mark.parametrize(
    "text",
    [HOSTILE, "<https://evil.example>", "www.evil.example", "`a` **b** # c", "x\n[d]: http://e"],
)
def test_literal_and_code_show_text_and_render_nothing(text):
    for markdown in (literal(text), code(text)):
        assert rendered_constructs(markdown) == []
        html = _COMMONMARK.renderInline(markdown)
        assert "<a" not in html and "<img" not in html and "<em" not in html
    one_line = text.replace("\n", " ")
    # what the visitor reads is the text itself (CommonMark's definition of an escape)
    assert re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", literal(text)) == one_line
    assert f"<code>{one_line.strip()}</code>" in _COMMONMARK.renderInline(
        code(text)
    ).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_markdown_in_every_url_parameter_is_shown_not_rendered(workspace, monkeypatch):
    params = {key: HOSTILE for key in URL_KEYS} | {"rtol": HOSTILE}
    at = open_app(workspace, monkeypatch, params)
    assert not at.exception, texts(at.exception)
    warnings = texts(at.warning)
    for key in (*URL_KEYS, "rtol"):
        assert f"URL parameter {key}=" in warnings, key
    assert IMAGE in warnings  # shown to the visitor as text
    assert_nothing_rendered(at)
    assert "cached result" in texts(at.caption)  # the default view
    expected = default_selection(workspace).to_query()
    assert {k: at.query_params[k] for k in expected} == expected
