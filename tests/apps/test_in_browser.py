"""The generated HTML in a real headless Chromium, from disk, with the network off.

Skipped when chromium is absent (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import pytest

from mechscope.apps.browser import write_feature_browser
from mechscope.apps.graph_viewer import write_graph_html

from .helpers import NASTY
from .test_graph_viewer import small_graph

POINT_XY = """(function (i) {
  var gd = document.getElementById(%r), L = gd._fullLayout, r = gd.getBoundingClientRect();
  var t = gd._fullData.filter(function (d) { return d.name === %r || d.type === 'scattergl'; })[0];
  return [r.left + L._size.l + L.xaxis.l2p(t.x[i]), r.top + L._size.t + L.yaxis.l2p(t.y[i]), t.customdata[i]];
})(%d)"""


def _clean(page) -> None:
    assert page.errors() == []
    assert page.dialogs() == []
    assert all(u.startswith("file://") for u in page.requests()), page.requests()


@pytest.fixture(scope="module")
def bundle(nasty_cards, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    index = write_feature_browser(nasty_cards, root / "fb", chunk_size=16)
    graph = write_graph_html(small_graph(), root / "graph.html", feature_url="fb/index.html#f{index}")
    return index, graph


def test_feature_browser_renders_and_opens_a_clicked_feature(chrome, bundle, nasty_cards):
    page = chrome.page(bundle[0].as_uri())
    page.wait_for("document.body && document.body.getAttribute('data-index-ready') === '1'")
    assert page.eval("document.querySelectorAll('.js-plotly-plot').length") == 1
    assert page.eval("document.querySelectorAll('#index-plot canvas').length") >= 1  # WebGL scatter
    assert page.eval("document.getElementById('count').textContent") == "40 of 40 features shown"
    assert not any("chunk_" in u for u in page.requests())  # feature data loads lazily
    x, y, feature = page.eval(POINT_XY % ("index-plot", "", 20))
    page.click(x, y)
    assert page.wait_for("document.getElementById('feature').getAttribute('data-feature')") == str(feature)
    assert page.eval("location.hash") == f"#f{feature}"
    page.wait_for("document.querySelectorAll('.js-plotly-plot').length === 3")  # + histogram, logits
    card = nasty_cards[feature]
    assert page.eval("document.querySelectorAll('#f-top .ctx').length") == len(card.top_contexts)
    assert page.eval("document.querySelectorAll('#neighbours a').length") == len(card.neighbours)
    focus = page.eval("document.querySelector('#f-top .focus').title")
    assert focus.endswith(f"{card.top_contexts[0].activation:.3f}")  # hover shows the value
    assert [u.rsplit("/", 1)[-1] for u in page.requests() if "chunk_" in u] == [f"chunk_{feature // 16:05d}.js"]
    _clean(page)


def test_filters_search_and_injection_strings_stay_text(chrome, bundle):
    page = chrome.page(bundle[0].as_uri() + "#f0")
    page.wait_for("document.getElementById('feature').getAttribute('data-feature') === '0'")
    page.eval("document.getElementById('hide-dead').click()")
    assert page.wait_for("document.getElementById('count').textContent") == "37 of 40 features shown"
    top = page.eval("document.getElementById('f-top').textContent")
    table = page.eval("document.getElementById('f-logit-table').textContent")
    for bad in NASTY:
        assert bad in top and bad in table  # shown literally ...
    assert page.eval("document.querySelectorAll('img, body script:not([nonce]):not([type])').length") == 0
    ticks = page.eval("Array.from(document.querySelectorAll('#f-logits .ytick text')).map(t => t.textContent)")
    assert any("<script>alert(1)</script>" in t for t in ticks)  # ... also inside Plotly's SVG
    page.eval("document.getElementById('search').value = '38'; "
              "document.getElementById('search-form').requestSubmit()")
    page.wait_for("document.getElementById('feature').getAttribute('data-feature') === '38'")
    assert page.eval("document.getElementById('f-top').textContent") == "This feature never fired."
    _clean(page)  # ... and nothing ran: no dialog, no error


def test_graph_viewer_renders_and_links_to_feature_pages(chrome, bundle):
    g = small_graph()
    page = chrome.page(bundle[1].as_uri())
    page.wait_for("document.body && document.body.getAttribute('data-graph-ready') === '1'")
    assert page.eval("document.querySelectorAll('.js-plotly-plot').length") == 1
    # node markers + one hover marker per edge (all edges shown at the lowest threshold)
    assert page.eval("document.querySelectorAll('#graph .scatterlayer .point').length") == len(g.nodes) + len(g.edges)
    assert page.eval("document.querySelectorAll('#graph .slider-container').length") == 1
    # the summary line is read from the graph's typed metadata
    assert page.eval("document.getElementById('summary').textContent") == (
        f"routes · model m · 2 layers · 1 prompt · {len(g.nodes)} nodes, {len(g.edges)} edges · weights in share")
    assert page.eval("document.querySelector('#graph .xtick:nth-of-type(2) text').textContent").endswith(
        "'<script>alert(1)</script>'")
    _clean(page)
    x, y, url = page.eval(POINT_XY % ("graph", "feature", 0))
    assert url == "fb/index.html#f5"
    page.click(x, y)
    page.wait_for("location.pathname.endsWith('/fb/index.html') && "
                  "document.getElementById('feature') && "
                  "document.getElementById('feature').getAttribute('data-feature') === '5'")
    _clean(page)
