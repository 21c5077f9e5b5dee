"""Graph: building, pruning, aggregation and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from mechscope.circuits.graph import Graph, Node


def _toy() -> Graph:
    g = Graph(metadata={"method": "toy", "model": "m", "prompt_tokens": ["a", "b"]})
    emb = g.add_node(Node("embedding", -1, 0, label="a", score=1.0))
    h = g.add_node(Node("head", 0, 1, index=2, label="L0H2", score=0.5))
    f = g.add_node(Node("feature", 1, 1, index=7, site="L1.resid_post", score=-0.2))
    out = g.add_node(Node("logit", 2, 1, index=3, label="b", score=1.0))
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
    assert back.nodes == g.nodes and back.edges == g.edges and back.metadata == g.metadata


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
        _toy().add_edge("head/L9", "logit/L2/3@1", 1.0)


def test_prune_and_subgraph():
    g = _toy()
    p = g.prune(edge_threshold=0.5)
    assert set(p.edges) == {("embedding/L-1@0", "head/L0/2@1"), ("embedding/L-1@0", "logit/L2/3@1")}
    assert "feature/L1.resid_post/7@1" not in p.nodes
    p = g.prune(node_threshold=0.4)
    assert "feature/L1.resid_post/7@1" not in p.nodes and len(p.edges) == 2
    c = g.prune_cumulative(0.8)  # 0.9 + 0.6 of 1.85 total reaches 81%
    assert len(c.edges) == 2
    assert g.parents("logit/L2/3@1") == {"feature/L1.resid_post/7@1": 0.05, "embedding/L-1@0": 0.6}


def test_aggregate_means_and_counts():
    a, b = _toy(), _toy()
    b.nodes.pop("feature/L1.resid_post/7@1")
    b.edges = {e: w for e, w in b.edges.items() if "feature" not in e[0] + e[1]}
    m = Graph.aggregate([a, b])
    assert m.edges[("embedding/L-1@0", "head/L0/2@1")] == pytest.approx(0.9)
    assert m.edges[("head/L0/2@1", "feature/L1.resid_post/7@1")] == pytest.approx(-0.15)
    assert m.metadata["counts"]["feature/L1.resid_post/7@1"] == 1
    assert m.nodes["head/L0/2@1"].score == pytest.approx(0.5)


def test_networkx():
    nx = pytest.importorskip("networkx")
    d = _toy().to_networkx()
    assert isinstance(d, nx.DiGraph) and d.number_of_edges() == 4
    assert nx.is_directed_acyclic_graph(d)
