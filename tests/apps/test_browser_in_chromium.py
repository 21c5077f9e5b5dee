"""The feature browser in a real headless Chromium, from disk, network off: what a person sees.

Labels are read back from the rendered DOM (Plotly's tick text), clicks go through real mouse
events, and a screenshot of each page type (index, dense, rare and dead feature) is written to
the test's temp dir. Skipped when chromium is absent (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64

import pytest

from mechscope.apps.browser import token_summary, write_feature_browser
from mechscope.apps.html import visible_token

from .helpers import NASTY
from .test_in_browser import POINT_XY

WAIT = 90  # seconds: generous, the CI machines are shared and sometimes saturated
READY = "document.body && document.body.getAttribute('data-index-ready') === '1'"
TICKS = "Array.from(document.querySelectorAll('#f-logits .ytick text')).map(t => t.textContent)"
# every chart on screen (not inside a hidden box) and how many data points its traces hold
VISIBLE_CHARTS = """Array.from(document.querySelectorAll('.js-plotly-plot')).filter(g => g.offsetParent !== null)
  .map(g => [g.id, g._fullData.reduce((n, t) => n + ((t.x && t.x.length) || 0), 0)])"""


RELAID = """Array.from(document.querySelectorAll('.js-plotly-plot')).filter(g => g.offsetParent !== null)
  .every(g => g._fullLayout && Math.abs(g._fullLayout.width - g.getBoundingClientRect().width) < 2)"""


def visible(t: str) -> str:  # what the labels draw (whitespace made visible; tests/apps/test_tokens.py)
    return visible_token(t)


def _clean(page) -> None:
    assert page.errors() == []
    assert page.dialogs() == []
    assert all(u.startswith("file://") for u in page.requests()), page.requests()


def _open(chrome, index, feature=None):
    page = chrome.page(index.as_uri() + ("" if feature is None else f"#f{feature}"))
    page.wait_for(READY, timeout=WAIT)
    if feature is not None:
        page.wait_for(f"document.getElementById('feature').getAttribute('data-feature') === '{feature}'", timeout=WAIT)
        page.wait_for("document.querySelector('#f-logits .ytick text') !== null", timeout=WAIT)
    return page


def _screenshot(page, path) -> None:
    page.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1,
                                                     "mobile": False})
    shot = page.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    # back to the page's own viewport, and wait until every visible plot has re-laid itself out for
    # it: a click computed from a plot laid out for the screenshot's viewport would miss its point
    page.send("Emulation.clearDeviceMetricsOverride", {})
    page.wait_for(RELAID, timeout=WAIT)


@pytest.fixture(scope="module")
def site(nasty_cards, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    return write_feature_browser(nasty_cards, root / "fb", chunk_size=16), root


def test_index_counts_dead_features_and_a_click_opens_the_right_one(chrome, site, nasty_cards):
    index, root = site
    page = _open(chrome, index)
    assert page.eval("document.getElementById('count').textContent") == \
        "37 of 37 live features plotted · 3 dead (never fired on 128 tokens)"
    assert "40 features (3 dead)" in page.eval("document.querySelector('header .meta').textContent")
    assert page.eval("document.getElementById('index-plot')._fullData[0].customdata.length") == 37
    assert page.eval("document.querySelectorAll('#index-plot canvas').length") >= 1  # WebGL scatter
    assert page.eval("document.querySelectorAll('#table-body tr').length") == 40
    assert page.eval("document.querySelectorAll('#table-body tr.dead').length") == 3
    assert not any("chunk_" in u for u in page.requests())  # feature data loads lazily
    assert any(u.endswith("/fb/plotly.min.js") for u in page.requests())  # the shared asset
    _screenshot(page, root / "index.png")
    x, y, feature = page.eval(POINT_XY % ("index-plot", "", 20))
    page.click(x, y)
    assert page.wait_for("document.getElementById('feature').getAttribute('data-feature')", timeout=WAIT) == str(feature)
    assert page.eval("location.hash") == f"#f{feature}"
    card = nasty_cards[feature]
    page.wait_for("document.querySelectorAll('#feature .js-plotly-plot').length === 3", timeout=WAIT)  # hist, logits, logit hist
    assert page.eval("document.querySelectorAll('#f-top .ctx').length") == len(card.top_contexts)
    assert page.eval("document.querySelectorAll('#neighbours a').length") == len(card.neighbours)
    focus = page.eval("document.querySelector('#f-top .focus').title")
    assert focus.endswith(f"{card.top_contexts[0].activation:.3f}")  # hover shows the value ...
    assert f"id {card.top_contexts[0].ids[card.top_contexts[0].max_index]}" in focus  # ... and the token id
    assert [u.rsplit("/", 1)[-1] for u in page.requests() if "chunk_" in u] == [f"chunk_{feature // 16:05d}.js"]
    _clean(page)


def test_logit_labels_read_exactly_the_token_strings(chrome, site, nasty_cards):
    assert set(NASTY) <= {t for t, _ in nasty_cards[0].top_logits}
    assert "<0xE2>" in {t for t, _ in nasty_cards[1].top_logits}  # the fixture's byte-token feature
    for card in nasty_cards[:2]:
        page = _open(chrome, site[0], card.index)
        rows = list(reversed(card.top_logits)) + list(reversed(card.bottom_logits))
        assert page.eval(TICKS) == [visible(t) for t, _ in rows]  # no &quot;, no &amp;: the string itself
        table = page.eval("Array.from(document.querySelectorAll('#f-logit-table tr td:first-child'))"
                          ".map(t => t.textContent)")
        assert table == [visible(t) for t, _ in card.top_logits + card.bottom_logits]
        _clean(page)
    assert "<0xE2>" in page.eval(TICKS)  # shown as its byte, not as U+FFFD
    k = page.eval(TICKS).index("<0xE2>")
    page.eval(f"Plotly.Fx.hover('f-logits', [{{curveNumber: 0, pointNumber: {k}}}])")
    hover = page.wait_for("document.querySelector('#f-logits .hoverlayer .hovertext text')?.textContent", timeout=WAIT)
    assert hover.startswith('"<0xE2>" · id 159: ')  # the tooltip a person reads, with the token id


def test_dead_feature_page_has_no_empty_charts(chrome, site, nasty_cards):
    dead = next(c for c in nasty_cards if c.dead)
    page = _open(chrome, site[0], dead.index)
    assert page.eval("document.getElementById('f-title').textContent") == f"Feature {dead.index} \u2014 dead"
    assert "never fired on the 128 tokens" in page.eval("document.getElementById('f-dead').textContent")
    assert page.eval("document.getElementById('f-dead').offsetParent !== null")
    for box in ("f-live", "f-hist-box"):  # no contexts heading, no quantile heading, no histogram
        assert page.eval(f"document.getElementById('{box}').offsetParent") is None
    charts = page.eval(VISIBLE_CHARTS)
    assert [c[0] for c in charts] == ["index-plot", "f-logits", "f-logit-hist"]
    assert all(n > 0 for _, n in charts), charts  # every chart on screen has data
    _screenshot(page, site[1] / "dead.png")
    _clean(page)


@pytest.mark.parametrize("which", ["dense", "rare"])
def test_dense_and_rare_feature_pages(chrome, site, nasty_cards, which):
    live = sorted((c for c in nasty_cards if not c.dead), key=lambda c: c.density)
    card = live[-1] if which == "dense" else live[0]
    page = _open(chrome, site[0], card.index)
    page.wait_for("document.querySelectorAll('#feature .js-plotly-plot').length === 3", timeout=WAIT)
    charts = page.eval(VISIBLE_CHARTS)
    assert [c[0] for c in charts] == ["index-plot", "f-hist", "f-logits", "f-logit-hist"]
    assert all(n > 0 for _, n in charts), charts
    assert page.eval("document.getElementById('f-hist')._fullData[0].y.reduce((a, b) => a + b, 0)") == \
        round(card.density * card.n_tokens)  # the histogram counts every firing token once
    explain = page.eval("document.getElementById('f-explain').textContent")
    tok, n = token_summary(card)[0]
    assert f"\u201c{visible(tok)}\u201d \u00d7{n}" in explain
    assert page.eval("document.querySelectorAll('#f-quantiles .ctx').length") == len(card.quantile_contexts)
    _screenshot(page, site[1] / f"{which}.png")
    _clean(page)


def test_table_sorts_filters_searches_contexts_and_opens_features(chrome, site, nasty_cards):
    page = _open(chrome, site[0])
    rows = "Array.from(document.querySelectorAll('#table-body tr')).map(r => +r.getAttribute('data-feature'))"
    page.eval("document.querySelector('#table-head th[data-key=density]').click()")
    assert page.eval(rows)[0] == max(nasty_cards, key=lambda c: c.density).index  # densest first
    page.eval("document.querySelector('#table-head th[data-key=density]').click()")
    assert page.eval(rows)[-1] == max(nasty_cards, key=lambda c: c.density).index  # reversed
    # filter by token: the features whose summary or top promoted tokens hold it
    page.eval("var f = document.getElementById('filter'); f.value = 'alert'; f.dispatchEvent(new Event('input'))")
    want = [c.index for c in nasty_cards if any("alert" in t for t, _ in token_summary(c))
            or any("alert" in t for t, _ in c.top_logits[:3])]
    assert want and sorted(page.eval(rows)) == want
    # text search over top contexts (loads every chunk once)
    ctx = nasty_cards[5].top_contexts[0]
    text = "".join(ctx.tokens[ctx.max_index - 1:ctx.max_index + 1]).lower()
    page.eval(f"var f = document.getElementById('filter'); f.value = {text!r}; f.dispatchEvent(new Event('input'))")
    page.eval("document.getElementById('in-contexts').click()")
    want = sorted({c.index for c in nasty_cards if any(text in "".join(x.tokens).lower() for x in c.top_contexts)}
                  | {c.index for c in nasty_cards if any(text in t.lower() for t, _ in token_summary(c))
                     or any(text in t.lower() for t, _ in c.top_logits[:3])})
    page.wait_for("document.querySelectorAll('#table-body tr').length === %d" % len(want), timeout=WAIT)
    assert 5 in want and sorted(page.eval(rows)) == want
    page.eval("document.querySelector('#table-body tr[data-feature=\"5\"] td').click()")
    page.wait_for("document.getElementById('feature').getAttribute('data-feature') === '5'", timeout=WAIT)
    _clean(page)


def test_injection_strings_stay_text(chrome, site):
    page = _open(chrome, site[0], 0)
    page.eval("document.getElementById('hide-dead').click()")
    assert page.wait_for("document.querySelectorAll('#table-body tr').length === 37", timeout=WAIT)
    top = page.eval("document.getElementById('f-top').textContent")
    table = page.eval("document.getElementById('f-logit-table').textContent")
    for bad in NASTY:
        assert bad in top and bad in table  # shown literally ...
        assert bad in page.eval(TICKS)  # ... also inside Plotly's SVG, as the exact string
    assert page.eval("document.querySelectorAll('img, body script:not([nonce]):not([type])').length") == 0
    page.eval("document.getElementById('search').value = '38'; "
              "document.getElementById('search-form').requestSubmit()")
    page.wait_for("document.getElementById('feature').getAttribute('data-feature') === '38'", timeout=WAIT)
    assert page.eval("document.getElementById('f-title').textContent").endswith("dead")
    _clean(page)  # ... and nothing ran: no dialog, no error
