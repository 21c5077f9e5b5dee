"""Offline HTML: escaping model text, embedding data safely, standalone pages with plotly.js.

plotly.js (~4.7 MB) is written once per output folder as ``plotly.min.js`` (`write_plotly_js`)
and pages load it with ``<script src>`` (works from ``file://``: no server, no network), so a
page of a few features or nodes weighs kilobytes. `standalone_page` still inlines it when no
``plotly_src`` is given (single-file pages).

Model text (token strings, labels) is data an attacker may control: a vocabulary can hold
``<script>…</script>`` or ``"><img onerror=…>``. Three rules keep it inert:

* data goes into pages as JSON inside ``<script type="application/json">`` with ``<``, ``>``,
  ``&`` and the JS line separators escaped as ``\\uXXXX``, so no string can close the element;
* the page scripts put text into the DOM with ``textContent`` only. Strings handed to Plotly as
  labels go through `plotly_text`: Plotly decodes ``&amp; &lt; &gt;`` but not ``&quot;``, so a
  label escaped for HTML would be shown with literal ``&quot;`` in it;
* a Content-Security-Policy allows only scripts carrying the page's random nonce (inline event
  handlers never run), no network fetches and no external resources.

Pages are written atomically (temp file + rename).
"""

from __future__ import annotations

import html
import json
import math
import re
import secrets
import unicodedata
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mechscope import files

_JS_UNSAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                            "\u2029": "\\u2029"})


def escape(text: Any) -> str:
    """HTML-escape ``text`` (quotes too), for markup and for Plotly labels."""
    return html.escape(str(text), quote=True)


def script_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element or a JS file: no character of it can end
    the element or the statement. Non-finite floats (NaN, ±inf: a diverged dictionary, a 0/0
    statistic) become ``null``: bare ``NaN`` is not JSON and ``JSON.parse`` rejects the page."""
    text = json.dumps(finite_or_null(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.translate(_JS_UNSAFE)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (also in nested dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


_PLOTLY_UNSAFE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def plotly_text(text: Any) -> str:
    """``text`` as a Plotly label, shown exactly as written and never parsed as markup.

    Plotly parses a small HTML subset in labels and decodes only ``&amp; &lt; &gt;`` (and
    numeric) entities — not ``&quot;`` or ``&#39;`` — so exactly those three are escaped."""
    return str(text).translate(_PLOTLY_UNSAFE)


_EDGE_SPACES = re.compile(r"\A +| +\Z| {2,}")
_MARKS = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}  # ↵ ⇥ ␍
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def visible_token(token: str) -> str:
    """A token as a label shows it (ticks, token strips, chips): whitespace made visible.

    SVG and HTML collapse or trim spaces, so a token ``" "`` would be a blank tick and ``" the"``
    would read ``"the"``. Leading and trailing spaces and runs of two or more become ``␣``;
    newline, tab and carriage return become ``↵ ⇥ ␍``; any other space, control or format
    character (no-break space, zero-width space, ...) becomes ``<U+00A0>`` (like byte tokens'
    ``<0xE2>``). Single spaces between other characters stay. The raw string goes in the hover.
    ``assets/tokens.js`` is the same rule for the pages (a test runs both on the same strings)."""
    token = _EDGE_SPACES.sub(lambda m: "\u2423" * len(m.group()), str(token))
    return "".join(_MARKS.get(c) or (f"<U+{ord(c):04X}>" if c != " " and unicodedata.category(c) in _INVISIBLE
                                     else c) for c in token)


PLOTLY_ASSET = "plotly.min.js"


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped with the installed plotly package (embedded: no network)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_plotly_js(folder: "str | Path") -> Path:
    """Write plotly.js as ``folder/plotly.min.js`` once (skipped when an identical copy is there);
    pages in ``folder`` reference it with ``standalone_page(..., plotly_src=PLOTLY_ASSET)``."""
    path = Path(folder) / PLOTLY_ASSET
    src = plotly_js()
    if path.exists() and path.stat().st_size == len(src.encode("utf-8")) and path.read_text(encoding="utf-8") == src:
        return path
    return files.write_text(path, src)


def shared_plotly(folder: "str | Path") -> str:
    """`write_plotly_js` into ``folder`` and return the ``plotly_src`` for pages written there:
    ``standalone_page(..., plotly_src=shared_plotly(page_path.parent))``."""
    write_plotly_js(folder)
    return PLOTLY_ASSET


def asset(name: str) -> str:
    """A static file from ``mechscope/apps/assets``."""
    return resources.files("mechscope.apps").joinpath("assets", name).read_text(encoding="utf-8")


def csp(nonce: str) -> str:
    # 'unsafe-eval': plotly's WebGL traces (regl) compile shader glue with Function()
    return (f"default-src 'none'; script-src 'nonce-{nonce}' 'unsafe-eval'; "
            "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; worker-src blob:; "
            "connect-src 'none'; base-uri 'none'; form-action 'none'")


def standalone_page(title: str, body: str, data: Any, scripts: list[str], css: str = "",
                    nonce: str | None = None, plotly_src: str | None = None) -> str:
    """A complete HTML document: CSP, plotly.js, ``data`` as JSON in ``#mechscope-data``, then
    ``scripts`` (trusted JS source) in nonce-carrying elements. ``body`` must already be escaped
    markup. plotly.js is inlined unless ``plotly_src`` names the file `write_plotly_js` wrote
    (a path relative to the page)."""
    nonce = nonce or secrets.token_urlsafe(16)
    plotly = (f'<script nonce="{nonce}" src="{escape(plotly_src)}"></script>' if plotly_src
              else f'<script nonce="{nonce}">{plotly_js()}</script>')
    tags = "\n".join([plotly, *(f'<script nonce="{nonce}">{src}</script>' for src in scripts)])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp(nonce)}">\n'
        f'<meta name="mechscope-nonce" content="{nonce}">\n'
        f"<title>{escape(title)}</title>\n<style>{css}</style></head>\n<body>\n{body}\n"
        f'<script type="application/json" id="mechscope-data">{script_json(data)}</script>\n'
        f"{tags}\n</body></html>\n"
    )


def write_text(path: "str | Path", text: str) -> Path:
    """Write ``text`` to ``path`` atomically, creating parent folders."""
    return files.write_text(path, text)
