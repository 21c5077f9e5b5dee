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


# the feature browser's own tests: test_browser_in_chromium.py


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
