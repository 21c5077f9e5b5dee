"""Feature pages link to the graphs that contain them (apps/graph_index.py): the index written by
``--browser`` and by ``mechscope features --graphs``, kept across browser rewrites, refused for a
dictionary of another site; and in Chromium, clicking a feature page's link opens the graph page
with that node selected (detail panel open, node ringed)."""

from __future__ import annotations

import json

from mechscope.apps.browser import write_feature_browser
from mechscope.apps.graph_index import index_graphs, read_index
from mechscope.apps.graph_viewer import browser_links, record_in_browsers, write_graph_html
from mechscope.circuits.graph import Graph, GraphMeta, Node

from .test_in_browser import WAIT, _clean

READY = "document.body && document.body.getAttribute('data-index-ready') === '1'"


def feature_graph(site: str = "L0.resid_post", features=(5, 7)) -> Graph:
    """embed → features (two positions each) → logit, at the browser's site."""
    toks = ("a", " b", "c")
    g = Graph(meta=GraphMeta("sparse_feature_circuit/atp", "metric", "tiny-nasty", 2, 1, ("a bc",), (toks,)))
    for p in range(3):
        g.add_node(Node("embedding", -1, p))
    g.add_node(Node("logit", 2, 2))
    for j, f in enumerate(features):
        for p in (1, 2):
            i = g.add_node(Node("feature", position=p, index=f, site=site, layer=int(site[1]), score=(1.0 + j) * p))
            g.add_edge(f"embed@{p}", i, 0.5)
            g.add_edge(i, "logit@2", 1.0 + j)
    return g


def _write(g: Graph, browser, page):
    write_graph_html(g, page, feature_url=browser_links(browser, page))
    return record_in_browsers(browser, page, g)


def test_index_of_graphs_written_with_browser(nasty_cards, tmp_path):
    fb = tmp_path / "fb"
    write_feature_browser(nasty_cards, fb, chunk_size=16)
    assert read_index(fb) == {"site": "L0.resid_post", "d_dict": 40, "graphs": {}}
    assert _write(feature_graph(), fb, tmp_path / "g" / "one.html") == [fb]
    idx = read_index(fb)
    assert list(idx["graphs"]) == ["../g/one.html"]  # relative: the folders move together
    assert idx["graphs"]["../g/one.html"]["features"] == {
        "5": [["L0.resid_post.f5@2", 2.0], ["L0.resid_post.f5@1", 1.0]],
        "7": [["L0.resid_post.f7@2", 4.0], ["L0.resid_post.f7@1", 2.0]]}
    js = (fb / "graphs.js").read_text()
    assert js.startswith("window.mechscopeGraphs(") and json.loads(js[len("window.mechscopeGraphs("):-3]) == idx
    # another site's features (or indices past d_dict) are not this browser's: no link, no entry
    assert _write(feature_graph("L1.resid_post"), fb, tmp_path / "g" / "other.html") == []
    assert _write(feature_graph(features=(40,)), fb, tmp_path / "g" / "past.html") == []
    assert browser_links(fb, tmp_path / "g" / "x.html")(Node("feature", 0, 1, index=40, site="L0.resid_post")) is None
    # rewriting the browser keeps the entry; a deleted page drops it
    write_feature_browser(nasty_cards, fb, chunk_size=16)
    assert list(read_index(fb)["graphs"]) == ["../g/one.html"]
    (tmp_path / "g" / "one.html").unlink()
    write_feature_browser(nasty_cards, fb, chunk_size=16)
    assert read_index(fb)["graphs"] == {}


def test_features_graphs_option_indexes_graph_files(nasty_cards, tmp_path):
    fb = tmp_path / "fb"
    write_feature_browser(nasty_cards, fb, chunk_size=16)
    (tmp_path / "runs").mkdir()
    feature_graph().save(tmp_path / "runs" / "a.json")
    feature_graph("L1.resid_post").save(tmp_path / "runs" / "b.json")  # another dictionary's graph
    (tmp_path / "runs" / "results.json").write_text('{"fvu": 0.1}')  # not a graph
    linked, skipped = index_graphs(fb, str(tmp_path / "runs"))
    assert linked == [tmp_path / "runs" / "a.html"] and skipped == [tmp_path / "runs" / "results.json"]
    assert (tmp_path / "runs" / "a.html").is_file() and not (tmp_path / "runs" / "b.html").exists()
    assert set(read_index(fb)["graphs"]["../runs/a.html"]["features"]) == {"5", "7"}
    assert index_graphs(fb, str(tmp_path / "runs" / "a.*"))[0] == linked  # a glob works too


def test_feature_page_link_opens_the_graph_with_the_node_selected(chrome, nasty_cards, tmp_path):
    fb = tmp_path / "fb"
    index = write_feature_browser(nasty_cards, fb, chunk_size=16)
    g = feature_graph()
    _write(g, fb, tmp_path / "g" / "one.html")
    page = chrome.page(index.as_uri() + "#f7")
    page.wait_for(READY, timeout=WAIT)
    page.wait_for("document.querySelectorAll('#f-graphs li').length === 1", timeout=WAIT)
    links = page.eval("Array.from(document.querySelectorAll('#f-graphs a')).map(a => [a.textContent, a.getAttribute('href')])")
    assert links == [["one.html", "../g/one.html#node=L0.resid_post.f7%402"],
                     ["@2 (4.000)", "../g/one.html#node=L0.resid_post.f7%402"],
                     ["@1 (2.000)", "../g/one.html#node=L0.resid_post.f7%401"]]
    _clean(page)
    page.eval("document.querySelectorAll('#f-graphs a')[2].click()")  # the weaker node, @1
    page.wait_for("location.pathname.endsWith('/g/one.html') && document.body.getAttribute('data-graph-ready') === '1'",
                  timeout=WAIT)
    page.wait_for("document.getElementById('detail').getAttribute('data-node') === 'L0.resid_post.f7@1'", timeout=WAIT)
    assert page.eval("document.querySelector('#detail .node-id').textContent") == "L0.resid_post.f7@1"
    ring = page.eval("(function () { var gd = document.getElementById('graph');"
                     " var s = gd._fullData.filter(t => t.name === 'selected')[0];"
                     " var f = gd._fullData.filter(t => t.name === 'feature')[0];"
                     " var i = f.customdata.findIndex(c => c[0] === 'L0.resid_post.f7@1');"
                     " return [s.x, s.y, [f.x[i]], [f.y[i]]]; })()")
    assert ring[0] == ring[2] and ring[1] == ring[3]  # the ring sits on that node
    # and its panel links back to the feature page
    assert page.eval("document.querySelector('#detail .feature-link').getAttribute('href')") == "../fb/index.html#f7"
    _clean(page)
    # a graph page without the browser: no feature page section on a feature without graphs
    page = chrome.page(index.as_uri() + "#f6")
    page.wait_for("document.getElementById('feature').getAttribute('data-feature') === '6'", timeout=WAIT)
    assert page.eval("document.getElementById('f-graph-section').offsetParent") is None
    _clean(page)
