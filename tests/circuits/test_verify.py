"""Verification: rank correlation, scoring against known circuits, interventions, `trace` files."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.circuits.feature_circuits import feature_circuit
from mechscope.circuits.graph import Graph, Node
from mechscope.circuits.known import planted_copy_model, planted_setup
from mechscope.circuits.verify import score_against, spearman, verify_edges


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=g).tolist()  # many ties
    b = (torch.tensor(a) + torch.randn(40, generator=g) * 2).tolist()
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        spearman([1, 2], [1])


def _graph(heads):
    g = Graph()
    g.add_node(Node("logit", 2))
    for layer, h in heads:
        g.add_node(Node("head", layer, None, h, site=f"L{layer}.z", score=1.0))
    g.add_node(Node("feature", 0, 3, 7, site="L0.attn_out"))  # not a head: ignored at head level
    return g


def test_score_against_known_circuit():
    s = score_against(_graph([(0, 1), (1, 3), (1, 0)]), [("head", 0, 1), ("head", 1, 3)])
    assert (s.precision, s.recall, s.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert s.extra == ["L1.H0"] and s.missed == []
    s = score_against(_graph([(0, 1)]), [Node("head", 0, None, 1), Node("head", 1, None, 3)])
    assert (s.precision, s.recall) == (1.0, 0.5) and s.missed == ["L1.H3"]
    assert score_against(_graph([]), [("head", 0, 1)]).f1 == 0.0
    with pytest.raises(ValueError, match="empty"):
        score_against(_graph([]), [])


def test_edges_are_direct_effects_nodes_total_effects():
    # in the planted model head (0,1) acts on the metric only through head (1,2): its node effect
    # is large, its direct edge into the metric is zero, and the interventions agree
    setup = planted_setup(planted_copy_model(), n_prompts=4)
    g = feature_circuit(setup, node_threshold=0.2, relative=True)
    v = verify_edges(g, setup)
    eff = dict(zip(v.node_ids, v.node_effect))
    edge = dict(zip(v.edge_ids, v.edge_effect))
    assert eff["L0.H1"] < -5
    assert abs(edge[("L0.H1", "logit")]) < 1e-4
    assert edge[("L0.H1", "L1.H2")] == pytest.approx(g.edges[("L0.H1", "L1.H2")], rel=1e-3)
    assert v.node_max_error < 1e-3 and v.edge_max_error < 1e-3
