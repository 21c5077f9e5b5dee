"""The graph viewer in a real headless Chromium, from disk, with the network off: what a person sees.

Tick labels are read back from the rendered DOM, clicks go through real mouse events, and a
screenshot of a positional route graph, a feature circuit and an attention-SVD graph is written
to the test's temp dir. Skipped when chromium is absent (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64

import pytest
import torch

from mechscope.apps.browser import write_feature_browser
from mechscope.apps.graph_viewer import write_graph_html
from mechscope.apps.html import visible_token
from mechscope.circuits.graph import Graph, GraphMeta, Node

from .test_graph_viewer import small_graph

WAIT = 90  # seconds: the CI machines are shared and sometimes saturated
READY = "document.body && document.body.getAttribute('data-graph-ready') === '1'"
POINT_XY = """(function (i) {
  var gd = document.getElementById(%r), L = gd._fullLayout, r = gd.getBoundingClientRect();
  var t = gd._fullData.filter(function (d) { return d.name === %r || d.type === 'scattergl'; })[0];
  return [r.left + L._size.l + L.xaxis.l2p(t.x[i]), r.top + L._size.t + L.yaxis.l2p(t.y[i]), t.customdata[i]];
})(%d)"""
XTICKS = "Array.from(document.querySelectorAll('#graph .xtick text')).map(t => t.textContent)"
YTICKS = "Array.from(document.querySelectorAll('#graph .ytick text')).map(t => t.textContent)"
# edge segments drawn now: line traces that are visible (routes and the hover highlight aside)
EDGES_SHOWN = """document.getElementById('graph')._fullData.filter(t => t.visible === true && t.mode === 'lines'
  && t.name.startsWith('edges')).reduce((n, t) => n + t.x.filter(v => v === null).length, 0)"""
RECT = "(function (s) { var r = document.querySelector(s).getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })(%r)"


def _clean(page) -> None:
    assert page.errors() == []
    assert page.dialogs() == []
    # no network: files, and the images Plotly draws heatmaps into (data: URLs)
    assert all(u.startswith(("file://", "data:image/")) for u in page.requests()), page.requests()


def _screenshot(page, path) -> None:
    page.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1,
                                                     "mobile": False})
    page.eval("window.dispatchEvent(new Event('resize'))")
    page.wait_for("new Promise(r => setTimeout(() => r(true), 500))", timeout=WAIT)
    shot = page.send("Page.captureScreenshot", {"format": "png"})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one


def _open(chrome, path):
    page = chrome.page(path.as_uri())
    page.wait_for(READY, timeout=WAIT)
    return page


def _click_node(page, trace: str, i: int) -> str:
    x, y, (node, _) = page.eval(POINT_XY % ("graph", trace, i))
    page.click(x, y)
    page.wait_for(f"document.getElementById('detail').getAttribute('data-node') === {node!r}", timeout=WAIT)
    return node


@pytest.fixture(scope="module")
def bundle(nasty_cards, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    index = write_feature_browser(nasty_cards, root / "fb", chunk_size=16)
    graph = write_graph_html(small_graph(), root / "graph.html", feature_url="fb/index.html#f{index}")
    return index, graph


def test_graph_viewer_labels_detail_panel_and_feature_link(chrome, bundle):
    g = small_graph()
    page = _open(chrome, bundle[1])
    assert page.eval("document.querySelectorAll('#graph.js-plotly-plot').length") == 1
    assert any(u.endswith("/plotly.min.js") for u in page.requests())  # the shared asset, not inlined
    # node markers + one hover marker per edge (6 edges: all shown by default) + one per token of the strip
    assert page.eval("document.querySelectorAll('#graph .scatterlayer .point').length") == \
        len(g.nodes) + len(g.edges) + len(g.meta.prompt_tokens[0])
    assert page.eval(EDGES_SHOWN) == len(g.edges)
    assert page.eval("document.getElementById('summary').textContent") == (
        f"routes · model m · 2 layers · 1 prompt · {len(g.nodes)} nodes, {len(g.edges)} edges · weights in share")
    # the token strip: every position, the token strings exactly (the injection string as text)
    assert page.eval(XTICKS) == list(g.meta.prompt_tokens[0])
    assert page.eval(YTICKS) == ["embed", "L0", "L1", "logits"]
    # the strongest nodes carry visible labels
    labels = page.eval("Array.from(document.querySelectorAll('#graph .textpoint text')).map(t => t.textContent)")
    assert "f5" in labels and "L0.H1" in labels
    _clean(page)
    # a click on the feature node opens its panel: id, contributions, the browser link
    assert _click_node(page, "feature", 0) == "L1.resid_post.f5@2"
    assert page.eval("document.querySelector('#detail .node-id').textContent") == "L1.resid_post.f5@2"
    assert page.eval("document.querySelector('#detail h2').textContent") == '"><img src=x onerror=alert(2)>'
    contrib = page.eval("Array.from(document.querySelectorAll('#detail table.contrib tr')).map(r => r.textContent)")
    assert contrib == ["L0.H1@1-1.00", "logit@22.00"]  # in: the head; out: the logit
    # hovering a node fades the nodes outside its neighbourhood
    x, y, _ = page.eval(POINT_XY % ("graph", "head", 1))
    page.send("Input.dispatchMouseEvent", {"x": x, "y": y, "type": "mouseMoved", "button": "none"})
    page.wait_for("document.getElementById('graph')._fullData.some(t => t.name === 'neighbourhood' && t.x.length === 9)",
                  timeout=WAIT)  # its 3 edges: embed@0, embed@1 in, the feature out
    faded = page.eval("document.getElementById('graph')._fullData.filter(t => t.name === 'logit')[0].marker.opacity")
    assert faded == [0.15, 0.15, 0.15]
    _clean(page)
    page.eval("document.querySelector('#detail .feature-link').click()")
    page.wait_for("location.pathname.endsWith('/fb/index.html') && "
                  "document.getElementById('feature') && "
                  "document.getElementById('feature').getAttribute('data-feature') === '5'", timeout=WAIT)
    _clean(page)


def test_default_view_shows_the_top_200_edges_and_the_title_is_clear(chrome, tmp_path):
    toks = tuple(f"t{p}" for p in range(10))
    g = Graph(meta=GraphMeta("routes", "share", "m", 3, 1, ("".join(toks),), (toks,)))
    ids = [[g.add_node(Node("head", layer, p, index=0)) for p in range(10)] for layer in range(3)]
    gen = torch.Generator().manual_seed(0)
    for layer in range(2):
        for a in ids[layer]:
            for b in ids[layer + 1]:
                g.add_edge(a, b, float(torch.randn((), generator=gen)))
    g.add_node(Node("logit", 3, 9))
    g.add_edge(ids[2][9], "logit@9", 1.0)  # a route to highlight: the dropdown is drawn
    page = _open(chrome, write_graph_html(g, tmp_path / "dense.html"))
    assert len(g.edges) == 201
    assert page.eval(EDGES_SHOWN) == 200
    title, menu = page.eval(RECT % "#graph .gtitle"), page.eval(RECT % "#graph .updatemenu-container")
    assert title[2] < menu[0] or menu[1] >= title[3]  # the route dropdown never covers the title
    _clean(page)


@pytest.fixture(scope="module")
def induction_graphs(induction_model):
    from mechscope.circuits.attribution import Setup
    from mechscope.circuits.feature_circuits import trace
    from mechscope.circuits.known import induction_setup

    from ..circuits.helpers import TinyDict
    from mechscope.circuits.routes_aggregate import prompt_routes
    from mechscope.circuits.svd_trace import trace_attention

    setup = induction_setup(induction_model, n_prompts=2)
    sites = {"L0.z": None, "L0.resid_post": TinyDict(induction_model.d_model, 64, k=8), "L1.z": None}
    with_features = Setup.build(induction_model, sites, setup.metric, setup.clean, ablation="mean")
    circuit, _ = trace(with_features, method="atp", node_threshold=0.05, relative=True, per_position=True)
    rows = list(setup.clean[:2])
    route = prompt_routes(induction_model, rows)[0]
    svd = trace_attention(induction_model, rows, [(1, 0)])
    return {"route": route, "circuit": circuit, "svd": svd}


@pytest.mark.parametrize("kind", ["route", "circuit", "svd"])
def test_each_method_renders_readably(chrome, induction_graphs, tmp_path, kind):
    g = induction_graphs[kind]
    page = _open(chrome, write_graph_html(g, tmp_path / f"{kind}.html"))
    if any(n.position is not None for n in g.nodes.values()):  # the token strip, every position
        assert page.eval(XTICKS)[-len(g.meta.prompt_tokens[0]):] == [visible_token(t) for t in g.meta.prompt_tokens[0]]
    else:  # summed over positions: no token axis
        assert page.eval(XTICKS) == []
    n_layers = g.meta.n_layers
    assert page.eval(YTICKS) == ["embed", *(f"L{l}" for l in range(n_layers)), "logits"]
    assert page.eval(EDGES_SHOWN) == min(200, sum(w != 0 for w in g.edges.values()))
    _screenshot(page, tmp_path / f"{kind}.png")
    trace = g.nodes[max(g.nodes, key=lambda i: abs(g.nodes[i].score))].kind
    node = _click_node(page, trace, 0)
    assert node in g.nodes
    _clean(page)


def test_head_panel_shows_attention_pattern_and_top_tokens(chrome, induction_model, tmp_path):
    """Routes over two prompts with their heads' details (apps/head_details.py, checked against
    the model there): clicking a head on the aggregated view draws its pattern on the first
    prompt, a selector switches to the second; a prompt's own view shows its pattern and the
    head's top tokens at that position."""
    from mechscope.apps.head_details import head_details, with_head_details
    from mechscope.circuits.known import induction_setup
    from mechscope.circuits.routes_aggregate import aggregate_routes, prompt_routes

    clean = induction_setup(induction_model, n_prompts=2).clean
    rows = [clean[0], clean[1][:-4]]
    routes = prompt_routes(induction_model, rows)
    agg = aggregate_routes(routes, induction_model.n_layers)
    agg.per_prompt = list(routes)
    g = with_head_details(agg, induction_model, rows)
    page = _open(chrome, write_graph_html(g, tmp_path / "routes.html"))
    assert page.eval("document.getElementById('prompt').value") == "0"  # the aggregated view first
    node = _click_node(page, "head", 0)
    page.wait_for("document.querySelector('#detail .plot-attn .heatmaplayer') !== null", timeout=WAIT)
    assert page.eval("document.querySelector('#detail .plot-attn')._fullData[0].z.length") == len(rows[0])
    assert page.eval("document.querySelectorAll('#detail select.attn-prompt option').length") == 2
    page.eval("var s = document.querySelector('#detail select.attn-prompt'); s.value = '1'; s.dispatchEvent(new Event('change'))")
    page.wait_for(f"document.querySelector('#detail .plot-attn')._fullData[0].z.length === {len(rows[1])}", timeout=WAIT)
    assert page.eval("document.querySelectorAll('#detail td.tok').length") == len(head_details(g)["top_tokens"][node])
    _screenshot(page, tmp_path / "routes_head_panel.png")
    _clean(page)
    # the second prompt's own route: its pattern only, and the head's top tokens at its position
    page.eval("var s = document.getElementById('prompt'); s.value = '2'; s.dispatchEvent(new Event('change'))")
    page.wait_for("document.getElementById('summary').textContent.indexOf('1 prompt') >= 0", timeout=WAIT)
    node = _click_node(page, "head", 0)
    page.wait_for("document.querySelector('#detail .plot-attn .heatmaplayer') !== null", timeout=WAIT)
    assert page.eval("document.querySelector('#detail .plot-attn')._fullData[0].z.length") == len(rows[1])
    assert page.eval("document.querySelector('#detail select.attn-prompt')") is None
    assert page.eval("document.querySelectorAll('#detail td.tok').length") == 5
    _clean(page)
