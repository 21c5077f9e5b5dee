"""Verification: rank correlation, scoring against known circuits, interventions, `trace` files."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.circuits.feature_circuits import feature_circuit
from mechscope.circuits.graph import Graph, Node
from mechscope.circuits.known import planted_copy_model, planted_setup
from mechscope.circuits.verify import score_against, sign_agreement, spearman, verify_edges


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
    # it writes only the stash, which the unembedding never reads: its direct edge is exactly 0,
    # and 0-weight edges are not kept
    assert ("L0.H1", "logit") not in g.edges
    assert edge[("L0.H1", "L1.H2")] == pytest.approx(g.edges[("L0.H1", "L1.H2")], rel=1e-3)
    assert v.node_max_error < 1e-3 and v.edge_max_error < 1e-3


def test_sign_agreement_and_explained():
    from mechscope.circuits.verify import explained, sign_agreement

    assert sign_agreement([1.0, -2.0, 0.0, 3.0], [2.0, -1.0, 0.0, -1.0]) == 0.75
    assert explained([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert explained([0.0, 0.0], [1.0, 2.0]) == 0.0
    assert explained([2.0, 0.0], [1.0, 0.0]) == pytest.approx(0.0)
    assert explained([1.0], [0.0]) != explained([1.0], [0.0])  # nan: nothing to explain


def test_induction_edges_agree_in_sign_with_path_patching():
    # issue 13: on attn-only-induction, L0H0 (mean-ablated) path-patched into each L1 head's
    # q/k/v inputs lowers the metric; the edges must say so, and verify must show it
    from mechscope.circuits.known import induction_setup
    from mechscope.interp.intervene import path_patch
    from mechscope.interp.models import load_model

    model = load_model("attn-only-induction")
    setup = induction_setup(model, n_prompts=8)
    g = feature_circuit(setup, method="ig", node_threshold=0.0, steps=8)
    v = verify_edges(g, setup)
    edge = dict(zip(v.edge_ids, v.edge_effect))
    clean = float(setup.metric(model(setup.clean)).mean())
    for h in range(4):
        e = ("L0.H0", f"L1.H{h}")
        logits = path_patch(model, setup.clean, "L0.z.H0", [f"L1.q.H{h}", f"L1.k.H{h}", f"L1.v.H{h}"], "mean")
        real = float(setup.metric(logits).mean()) - clean
        assert edge[e] == pytest.approx(real, abs=1e-4)  # verify's effect is interp's path patching
        assert real < -0.3 and g.edges[e] < 0  # the issue measured -0.74 / -0.36 / -0.57 / -0.61
        assert g.edges[e] == pytest.approx(real, rel=0.25)
    atp = feature_circuit(setup, method="atp", node_threshold=0.0)
    ig_sign = sign_agreement([g.edges[e] for e in v.edge_ids], v.edge_effect)
    assert ig_sign > 0.8 and verify_edges(atp, setup).edge_sign_agreement <= ig_sign
