"""Offline HTML: escaping model text, embedding data safely, standalone pages with plotly.js.

Model text (token strings, labels) is data an attacker may control: a vocabulary can hold
``<script>…</script>`` or ``"><img onerror=…>``. Three rules keep it inert:

* data goes into pages as JSON inside ``<script type="application/json">`` with ``<``, ``>``,
  ``&`` and the JS line separators escaped as ``\\uXXXX``, so no string can close the element;
* the page scripts put text into the DOM with ``textContent`` only, and strings handed to Plotly
  (which renders a subset of HTML in labels) are entity-escaped first (`escape`);
* a Content-Security-Policy allows only scripts carrying the page's random nonce (inline event
  handlers never run), no network fetches and no external resources.

Pages are written atomically (temp file + rename).
"""

from __future__ import annotations

import html
import json
import secrets
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
    the element or the statement."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.translate(_JS_UNSAFE)


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped with the installed plotly package (embedded: no network)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def asset(name: str) -> str:
    """A static file from ``mechscope/apps/assets``."""
    return resources.files("mechscope.apps").joinpath("assets", name).read_text(encoding="utf-8")


def csp(nonce: str) -> str:
    # 'unsafe-eval': plotly's WebGL traces (regl) compile shader glue with Function()
    return (f"default-src 'none'; script-src 'nonce-{nonce}' 'unsafe-eval'; "
            "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; worker-src blob:; "
            "connect-src 'none'; base-uri 'none'; form-action 'none'")


def standalone_page(title: str, body: str, data: Any, scripts: list[str], css: str = "",
                    nonce: str | None = None) -> str:
    """A complete HTML document: CSP, plotly.js inline, ``data`` as JSON in
    ``#mechscope-data``, then ``scripts`` (trusted JS source) in nonce-carrying elements.
    ``body`` must already be escaped markup."""
    nonce = nonce or secrets.token_urlsafe(16)
    tags = "\n".join(f'<script nonce="{nonce}">{src}</script>' for src in [plotly_js(), *scripts])
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
