"""Graph viewer figure: layout, threshold buckets, route highlights, links, escaping."""

from __future__ import annotations

import pytest
import torch

from mechscope.apps.graph_viewer import ancestors, graph_figure, layout_positions, write_graph_html
from mechscope.circuits.graph import Graph, GraphMeta, Node


def small_graph() -> Graph:
    """Embeddings → head → feature → logits over 3 tokens, one token an injection string."""
    toks = ("a", "<script>alert(1)</script>", "c")
    g = Graph(meta=GraphMeta("routes", "share", "m", 2, 1, ("".join(toks),), (toks,)))
    e = [g.add_node(Node("embedding", -1, p, label=t)) for p, t in enumerate(["a", "b", "c"])]
    h = [g.add_node(Node("head", 0, p, index=1, label=f"L0H1@{p}")) for p in range(3)]
    f = g.add_node(Node("feature", 1, 2, index=5, site="L1.resid_post", score=2.0,
                        label='"><img src=x onerror=alert(2)>'))
    lg = [g.add_node(Node("logit", 2, p)) for p in range(3)]
    for s, t, w in [(e[0], h[1], 0.5), (h[1], f, -1.0), (f, lg[2], 2.0), (e[2], lg[2], 0.1),
                    (e[1], lg[1], 0.3), (e[1], h[1], 0.01)]:
        g.add_edge(s, t, w)
    return g


def test_layout_tokens_across_layers_up():
    g = small_graph()
    xy = layout_positions(g)
    for i, n in g.nodes.items():
        assert xy[i][0] == pytest.approx(n.position, abs=0.41)
        assert n.layer <= xy[i][1] < n.layer + 1
    assert xy["embed@0"][1] < xy["L0.H1@0"][1] < xy["L1.resid_post.f5@2"][1] < xy["logit@2"][1]


def test_traces_and_threshold_slider():
    g = small_graph()
    fig = graph_figure(g, n_levels=4, feature_url="fb/index.html#f{index}")
    names = [t.name for t in fig.data]
    routes = [t for t in fig.data if t.name.startswith("route")]
    nodes = {t.name: t for t in fig.data if t.mode == "markers+text"}
    assert set(nodes) == {"embedding", "head", "feature", "logit"}
    assert sum(len(t.x) for t in nodes.values()) == len(g.nodes)
    assert [list(c) for c in nodes["feature"].customdata] == [["L1.resid_post.f5@2", "fb/index.html#f5"]]
    assert {c[1] for c in nodes["head"].customdata} == {""}
    assert [c[0] for t in nodes.values() for c in t.customdata] == list(g.nodes)
    # routes, 3 traces per level, neighbourhood, selection ring, kinds, the token strip's hover
    assert len(names) == len(routes) + 3 * 4 + 1 + 1 + 4 + 1
    assert names[-1] == "tokens" and names[len(routes) + 12:len(routes) + 14] == ["neighbourhood", "selected"]
    # slider step j shows exactly the edges with |w| >= its level: count line segments
    slider = fig.layout.sliders[0]
    for step in slider.steps:
        level = float(step.label)
        visible, ids = step.args[0]["visible"], step.args[1]
        shown = sum(fig.data[i].x.count(None) for i, v in zip(ids, visible) if v and fig.data[i].mode == "lines")
        assert shown == sum(abs(w) >= level * (1 - 1e-3) for w in g.edges.values())
    # positive and negative edges go to differently coloured traces
    neg = [t for t in fig.data if t.name.startswith("edges −") and t.x]
    assert neg and all("192,57,43" in t.line.color for t in neg)


def test_routes_are_ancestors_of_the_selected_token():
    g = small_graph()
    assert ancestors(g, ["logit@2"]) == {"logit@2", "L1.resid_post.f5@2", "L0.H1@1",
                                            "embed@0", "embed@1", "embed@2"}
    fig = graph_figure(g)
    routes = [t for t in fig.data if t.name.startswith("route")]
    assert [t.name for t in routes] == ["route 1", "route 2"]  # position 0 has no incoming edge
    assert routes[1].x.count(None) == 5 and routes[0].x.count(None) == 1
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels[0] == "no route" and "<script>" not in "".join(labels)


def test_escaping_and_errors(tmp_path):
    g = small_graph()
    fig = graph_figure(g, threshold=0.2)
    text = " ".join(str(t.text) for t in fig.data) + " ".join(fig.layout.xaxis.ticktext)
    assert "<img" not in text and "<script>" not in text and "&lt;script&gt;" in text
    assert sum(t.x.count(None) for t in fig.data if t.mode == "lines" and not t.name.startswith("route")) == 4
    path = write_graph_html(g, tmp_path / "g.html", feature_url="fb/index.html#f{index}")
    page = path.read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    with pytest.raises(ValueError, match="no nodes"):
        graph_figure(Graph())
    with pytest.raises(ValueError, match="threshold"):
        graph_figure(g, threshold=-1)
    with pytest.raises(ValueError, match="feature_url"):
        graph_figure(g, feature_url=3)


def test_every_method_is_drawn_with_one_layout(tiny_gpt2, tokens):
    """Feature circuits, routes (positional and aggregated) and attention-SVD graphs of one model:
    every node sits inside its layer's band, every edge points up (information flows from the
    embedding to the logits), and the axes come from the typed metadata."""
    from mechscope.circuits.attribution import Setup, logit_diff
    from mechscope.circuits.feature_circuits import feature_circuit
    from mechscope.circuits.routes_aggregate import aggregate_routes, prompt_routes
    from mechscope.circuits.svd_trace import trace_attention

    model, rows = tiny_gpt2, tokens[:2, :8]
    setup = Setup.build(model, ["L0.z", "L0.mlp_out", "L1.resid_mid", "L1.z", "L1.resid_post"],
                        logit_diff(torch.tensor([1, 2]), torch.tensor([3, 4])), rows)
    routes = prompt_routes(model, list(rows), tau=0.02)
    graphs = [feature_circuit(setup, node_threshold=0.0), routes[0], aggregate_routes(routes, 2),
              trace_attention(model, list(rows), [(1, 0), (1, 1)], firing_threshold=0.1)]
    for g in graphs:
        xy = layout_positions(g)
        for i, n in g.nodes.items():
            assert n.layer <= xy[i][1] < n.layer + 1, (g.meta.method, i)
        for s, t in g.edges:
            assert xy[s][1] < xy[t][1], (g.meta.method, s, t)
        fig = graph_figure(g)
        layers = sorted({n.layer for n in g.nodes.values()})
        names = dict(zip(fig.layout.yaxis.tickvals, fig.layout.yaxis.ticktext))
        assert [names[l] for l in layers] == [{-1: "embed", 2: "logits"}.get(l, f"L{l}") for l in layers]
        assert g.meta.method in fig.layout.title.text and g.meta.model in fig.layout.title.text
    assert {n.kind for g in graphs for n in g.nodes.values()} >= {"embedding", "head", "mlp", "residual", "logit"}


def test_page_is_small_and_shares_plotly(tmp_path):
    """A 10-node page loads plotly.min.js written once beside it, so it weighs kilobytes."""
    g = small_graph()
    assert len(g.nodes) == 10
    a = write_graph_html(g, tmp_path / "a.html")
    b = write_graph_html(g, tmp_path / "b.html")
    assert a.stat().st_size < 60_000 and b.stat().st_size < 60_000, a.stat().st_size
    shared = tmp_path / "plotly.min.js"
    assert shared.stat().st_size > 1_000_000 and 'src="plotly.min.js"' in a.read_text()


def test_default_threshold_keeps_the_strongest_max_edges():
    """The default slider level shows the ``max_edges`` edges of largest |w| (ties stay under)."""
    g = Graph(meta=GraphMeta("x", "u", "m", 2, 0))
    a = [g.add_node(Node("head", 0, p, index=0)) for p in range(20)]
    b = [g.add_node(Node("head", 1, p, index=0)) for p in range(20)]
    weights = torch.randn(400, generator=torch.Generator().manual_seed(0)).tolist()
    weights[0] = weights[1] = sorted(map(abs, weights))[-50]  # a tie at the 50th
    for k, w in enumerate(weights):
        g.add_edge(a[k // 20], b[k % 20], w)
    for max_edges, expect in [(30, 30), (50, 49), (1000, 400)]:
        fig = graph_figure(g, max_edges=max_edges)
        shown = [t for t in fig.data if t.mode == "lines" and t.name.startswith("edges") and t.visible is not False]
        assert sum(t.x.count(None) for t in shown) == expect, max_edges
        cut = sorted(map(abs, weights), reverse=True)[expect - 1]
        assert float(fig.layout.sliders[0].steps[fig.layout.sliders[0].active].label) == pytest.approx(cut, rel=1e-2)


def test_labels_go_to_the_strongest_nodes_and_ticks_cover_the_prompt():
    g = small_graph()
    def labelled(graph):
        fig = graph_figure(graph, n_labels=2)
        return {c[0] for tr in fig.data if tr.mode == "markers+text" for c, t in zip(tr.customdata, tr.text) if t}, fig

    assert "L1.resid_post.f5@2" in labelled(g)[0]  # the only nonzero score
    from dataclasses import replace

    g.nodes["L1.resid_post.f5@2"] = replace(g.nodes["L1.resid_post.f5@2"], score=0.0)
    got, fig = labelled(g)  # all scores 0: the largest summed |w| (3.0 and 2.1)
    assert got == {"L1.resid_post.f5@2", "logit@2"}
    assert list(fig.layout.xaxis.ticktext) == ["a", "&lt;script&gt;alert(1)&lt;/script&gt;", "c"]
    assert list(fig.layout.yaxis.ticktext) == ["embed", "L0", "L1", "logits"]


def test_prompt_views_and_browser_links(tmp_path):
    from mechscope.apps.graph_viewer import browser_links, page_views

    one, two = small_graph(), small_graph()
    agg = Graph.aggregate([one, two])
    agg.per_prompt = [one]
    views, first = page_views(agg)
    assert [v["name"].split(":")[0] for v in views] == ["all prompts (routes)", "prompt 0"] and first == 1
    agg.per_prompt = [one, two]
    assert page_views(agg)[1] == 0  # several prompts: the summary first, a selector for each
    with pytest.raises(ValueError, match="no feature browser"):
        browser_links(tmp_path / "fb", tmp_path / "out" / "g.html")
    (tmp_path / "fb" / "L1.resid_post").mkdir(parents=True)
    (tmp_path / "fb" / "L1.resid_post" / "index.html").write_text("")
    url = browser_links(tmp_path / "fb", tmp_path / "out" / "g.html")
    assert url(one.nodes["L1.resid_post.f5@2"]) == "../fb/L1.resid_post/index.html#f5"
    assert url(one.nodes["L0.H1@1"]) is None
