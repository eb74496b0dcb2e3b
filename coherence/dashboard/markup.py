"""Text from outside the code (URL values, names read from disk, error messages that quote
them) made safe for Streamlit's markdown.

Streamlit renders markdown in st.markdown, st.caption, st.info/warning/error, subheaders,
widget labels, help tooltips and progress texts. A value such as ``![x](https://evil/x.png)``
in a URL parameter would otherwise make every visitor's browser fetch from that server, and
``[x](https://evil)`` would render a clickable link. The rule: every such text passes
through ``literal`` (or ``code``) where it is interpolated into markdown; constant prose
written here may use markdown freely. No text from outside reaches HTML: markdown is never
rendered with ``unsafe_allow_html``, and the two ``st.html`` blocks (the page's style sheet,
the tour's cookie) are constants.
"""

from __future__ import annotations

import re
import string
import unicodedata

# CommonMark lets a backslash escape every ASCII punctuation character, and an escaped one is
# always shown as itself: so escaping all of them leaves nothing that can start a link, an
# image, an autolink (``<…>``, and GFM's bare ``https://`` and ``www.`` need ``:`` or ``.``),
# emphasis, a heading, a table, math (``$``) or Streamlit's ``:color[…]`` directives.
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
# Line breaks would start new blocks (headings, lists, link definitions); bidirectional
# overrides can make a name read as something else.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def _one_line(text: object) -> str:
    chars = []
    for ch in str(text):
        if ch in _BIDI:
            continue
        chars.append(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch)
    return "".join(chars)


def literal(text: object) -> str:
    """Markdown that Streamlit shows as exactly ``text`` (on one line): every ASCII
    punctuation character backslash-escaped, control characters as spaces."""
    return _PUNCTUATION.sub(r"\\\1", _one_line(text))


def code(text: object) -> str:
    """``text`` as an inline code span (paths, keys, commands): nothing inside a code span is
    markdown, and the fence is longer than any run of backticks in the text."""
    line = _one_line(text)
    runs = [len(r) for r in re.findall("`+", line)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") or not line.strip() else ""
    return f"{fence}{pad}{line}{pad}{fence}"
