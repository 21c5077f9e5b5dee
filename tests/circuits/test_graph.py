"""Graph: building, pruning, aggregation and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from mechscope.circuits.graph import Graph, GraphMeta, Node


def _toy() -> Graph:
    g = Graph(meta=GraphMeta("toy", "u", "m", 2, 1, ("ab",), (("a", "b"),)))
    emb = g.add_node(Node("embedding", -1, 0, label="a", score=1.0))
    h = g.add_node(Node("head", 0, 1, index=2, label="L0H2", score=0.5))
    f = g.add_node(Node("feature", 1, 1, index=7, site="L1.resid_post", score=-0.2))
    out = g.add_node(Node("logit", 2, 1, index=3, label="b", score=1.0, token="b"))
    g.add_edge(emb, h, 0.9)
    g.add_edge(h, f, -0.3)
    g.add_edge(f, out, 0.05)
    g.add_edge(emb, out, 0.6)
    return g


def test_json_round_trip(tmp_path):
    g = _toy()
    path = g.save(tmp_path / "g.json")
    back = Graph.load(path)
    assert back.to_dict() == g.to_dict()
    assert back.nodes == g.nodes and back.edges == g.edges and back.meta == g.meta


def test_bad_files_and_nodes(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        Graph.load(tmp_path / "bad.json")
    data = _toy().to_dict()
    data["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99"):
        Graph.load(tmp_path / "v.json")
    with pytest.raises(ValueError, match="valid: embedding"):
        Node("neuron", 0)
    with pytest.raises(KeyError, match="not a node"):
        _toy().add_edge("L9.H0", 'logit."b"@1', 1.0)


def test_prune_and_subgraph():
    g = _toy()
    p = g.prune(edge_threshold=0.5)
    assert set(p.edges) == {("embed@0", "L0.H2@1"), ("embed@0", 'logit."b"@1')}
    assert "L1.resid_post.f7@1" not in p.nodes
    p = g.prune(node_threshold=0.4)
    assert "L1.resid_post.f7@1" not in p.nodes and len(p.edges) == 2
    c = g.prune_cumulative(0.8)  # 0.9 + 0.6 of 1.85 total reaches 81%
    assert len(c.edges) == 2
    assert g.parents('logit."b"@1') == {"L1.resid_post.f7@1": 0.05, "embed@0": 0.6}


def test_aggregate_means_and_counts():
    a, b = _toy(), _toy()
    b.nodes.pop("L1.resid_post.f7@1")
    b.edges = {e: w for e, w in b.edges.items() if "L1.resid_post.f7@1" not in e}
    m = Graph.aggregate([a, b])
    assert m.edges[("embed@0", "L0.H2@1")] == pytest.approx(0.9)
    assert m.edges[("L0.H2@1", "L1.resid_post.f7@1")] == pytest.approx(-0.15)
    assert m.meta.aggregated.counts["L1.resid_post.f7@1"] == 1
    assert m.nodes["L0.H2@1"].score == pytest.approx(0.5)


def test_networkx():
    nx = pytest.importorskip("networkx")
    d = _toy().to_networkx()
    assert isinstance(d, nx.DiGraph) and d.number_of_edges() == 4
    assert nx.is_directed_acyclic_graph(d)
