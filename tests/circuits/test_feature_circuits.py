"""Sparse feature circuits: edges vs interventions, faithfulness by construction, known circuits."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.attribution import Setup, logit_diff
from mechscope.circuits.feature_circuits import (circuit_edges, faithfulness, feature_circuit, full_graph,
                                                reaches, site_node, trace)
from mechscope.circuits.graph import Graph
from mechscope.circuits.known import (PLANTED, PLANTED_INDUCTION, induction_circuit, induction_setup,
                                      planted_copy_model, planted_induction_model, planted_setup)
from mechscope.circuits.verify import path_effects, score_against, verify_edges
from mechscope.interp.models import load_model

from .helpers import TinyDict, attn_only_model, ld, toks


@pytest.fixture(scope="module")
def linear_setup():
    # attention-only, no LayerNorm: L0.attn_out -> L1.resid_pre is the identity and everything
    # into the (linear) metric with L1 held fixed is linear, so those edges must be exact
    model = attn_only_model()
    return Setup.build(model, {"L0.attn_out": TinyDict(32, 12, seed=1), "L1.resid_pre": None,
                               "L1.attn_out": TinyDict(32, 12, seed=2)}, ld(), toks(), ablation="mean")


def test_edges_agree_with_interventions_on_linear_pieces(linear_setup):
    g = feature_circuit(linear_setup, node_threshold=0.0)
    v = verify_edges(g, linear_setup)
    # into the (linear) metric with L1 held fixed everything is linear: AtP edges are exact
    exact = [(a, b) for e, a, b in zip(v.edge_ids, v.edge_attribution, v.edge_effect) if e[1] == "logit"]
    assert len(exact) > 10
    for a, b in exact:
        assert a == pytest.approx(b, abs=1e-4)
    # L1 nodes: the metric is affine in them, so node attribution is the intervention
    last = [(a, b) for i, a, b in zip(v.node_ids, v.node_attribution, v.node_effect) if "L1.attn_out" in i]
    assert len(last) == 13 and all(a == pytest.approx(b, abs=1e-4) for a, b in last)
    # edges through attention and the ReLU encoders are only first-order estimates under a large
    # (mean) ablation; they still rank broadly like the interventions
    assert v.summary()["edge_rank_corr"] > 0.5
    assert v.edge_sign_agreement > 0.8


def test_ig_edges_are_complete_for_path_patching(linear_setup):
    # path-integrated edges: the weights of all of U's nodes into d add up to the metric change
    # when all of U is path-patched into d alone (a real intervention, `path_effects`)
    setup = linear_setup
    U, D = setup.sites[0], setup.sites[1]  # L0.attn_out (dictionary) -> L1.resid_pre
    kept = {s: [(j, None) for j in range(setup.nodes[s].n_nodes)] for s in setup.sites}
    edges = circuit_edges(setup, kept, per_position=False, method="ig", steps=16)
    everything = torch.zeros(1, setup.clean.shape[1], setup.nodes[U].n_nodes, dtype=torch.bool)
    real = path_effects(setup, U, D, everything, kept[D])[0]
    assert real.abs().max() > 1e-3
    for k, (j, _) in enumerate(kept[D]):
        dst = site_node(setup, D, j, None, 0.0).id
        into = [w for u, d, w in edges if d == dst and u.startswith("L0.attn_out.")]
        assert sum(into) == pytest.approx(float(real[k]), abs=2e-3 * float(real.abs().max()) + 1e-6)
    # L0.attn_out reaches L1.attn_out only through L1.resid_pre, which the setup holds: no edges
    # are computed for that pair (they would be 0 by construction), and none of weight 0 are kept
    assert reaches(setup, U, D) and not reaches(setup, U, setup.sites[2])
    assert not [e for e in edges if e[0].startswith("L0.attn_out.")
                and e[1] is not None and "L1.attn_out" in e[1]]
    assert all(w != 0.0 for _, _, w in edges)


def test_faithfulness_of_full_and_empty_graphs(tiny_gpt2, tokens):
    setup = Setup.build(tiny_gpt2, {"L0.resid_post": TinyDict(32, 16), "L1.z": None,
                                    "L1.mlp_out": TinyDict(32, 16, seed=4)}, ld(), tokens, ablation="mean")
    for per_position in (False, True):
        full = faithfulness(full_graph(setup, per_position), setup)
        assert full.faithfulness == pytest.approx(1.0, abs=1e-4)
        assert full.completeness == pytest.approx(0.0, abs=1e-6)
    empty = faithfulness(Graph(), setup)
    assert empty.faithfulness == 0.0 and empty.completeness == pytest.approx(1.0, abs=1e-4)
    assert empty.ablation == "mean"


def test_per_position_scores_sum_to_summed_scores(tiny_gpt2, tokens):
    setup = Setup.build(tiny_gpt2, {"L1.resid_pre": TinyDict(32, 8)}, ld(), tokens, ablation="zero")
    per = feature_circuit(setup, node_threshold=0.0, per_position=True, edges=False)
    summed = feature_circuit(setup, node_threshold=0.0, edges=False)
    for nid, node in summed.nodes.items():
        if node.kind == "logit":
            continue
        parts = [n.score for n in per.nodes.values() if n.site == node.site and n.index == node.index
                 and n.kind == node.kind]
        assert len(parts) == 16 and sum(parts) == pytest.approx(node.score, abs=1e-5)


def test_aggregation_over_prompts_is_the_mean(tiny_gpt2, tokens):
    sites = {"L0.mlp_out": TinyDict(32, 8)}
    batch = feature_circuit(Setup.build(tiny_gpt2, sites, ld(), tokens, ablation="zero"),
                            node_threshold=0.0, edges=False)
    single = [feature_circuit(Setup.build(tiny_gpt2, sites, logit_diff(torch.tensor([i + 1]), torch.tensor([10 + i])),
                                          tokens[i:i + 1], ablation="zero"), node_threshold=0.0, edges=False)
              for i in range(3)]
    agg = Graph.aggregate(single)
    for nid, node in batch.nodes.items():
        if node.kind != "logit":
            assert agg.nodes[nid].score == pytest.approx(node.score, abs=1e-5)


def test_planted_circuit_recovered_and_verified():
    setup = planted_setup(planted_copy_model(), n_prompts=4)
    for method in ("atp", "ig"):
        g, f = trace(setup, method=method, node_threshold=0.2, relative=True, steps=4)
        s = score_against(g, PLANTED.components)
        assert (s.precision, s.recall) == (1.0, 1.0), s
        assert f.faithfulness > 0.95 and abs(f.completeness) < 0.05
        # the V-composition edge of the planted mechanism
        assert abs(g.edges[("L0.H1", "L1.H2")]) > 1.0
    v = verify_edges(g, setup)
    assert v.node_rank_corr > 0.99 and v.edge_max_error < 0.05


def test_graph_json_round_trip(tmp_path, linear_setup):
    g, f = trace(linear_setup, node_threshold=0.01, edge_threshold=1e-3)
    back = Graph.load(g.save(tmp_path / "graph.json"))
    assert back.nodes == g.nodes and back.edges == g.edges
    assert back.meta == g.meta and back.meta.parameters["ablation"] == "mean"
    assert (back.meta.faithfulness, back.meta.completeness) == (f.faithfulness, f.completeness)
    assert back.meta.method == "sparse_feature_circuit/atp"


def test_graph_from_another_setup_is_refused(linear_setup, tiny_gpt2, tokens):
    other = Setup.build(tiny_gpt2, ["L0.z"], ld(), tokens)
    g = feature_circuit(other, node_threshold=0.0, edges=False)
    with pytest.raises(ValueError, match="not one of the setup's sites"):
        faithfulness(g, linear_setup)


def test_induction_circuit_at_head_level():
    # ground truth from the zoo card's head scores; IG because the heads' attention saturates
    model = load_model("attn-only-induction")
    known = induction_circuit(model.card or None)
    assert {l for _, l, _ in known.components} == {0, 1}
    setup = induction_setup(model, n_prompts=8)
    g = feature_circuit(setup, method="ig", node_threshold=0.1, relative=True, steps=8)
    s = score_against(g, known.components)
    assert (s.precision, s.recall) == (1.0, 1.0), (s, {i: n.score for i, n in g.nodes.items()})
    prev = [f"L0.H{h}" for _, l, h in known.components if l == 0]
    ind = [f"L1.H{h}" for _, l, h in known.components if l == 1]
    assert all((p, i) in g.edges for p in prev for i in ind)  # K-composition shows as direct edges
    assert faithfulness(g, setup).faithfulness > 0.8


def test_planted_induction_needs_integrated_gradients():
    # hand-written previous-token head (0,0) and induction head (1,1); their attention saturates,
    # so the clean gradient misses the previous-token head while IG and interventions agree
    setup = induction_setup(planted_induction_model(), n_prompts=4, period=7)
    g, f = trace(setup, method="ig", node_threshold=0.2, relative=True, steps=32)
    s = score_against(g, PLANTED_INDUCTION.components)
    assert (s.precision, s.recall) == (1.0, 1.0), s
    assert f.faithfulness == pytest.approx(1.0, abs=0.05)
    v = verify_edges(g, setup)
    # saturated attention: the midpoint rule needs more steps than elsewhere (8 steps: error 0.23)
    assert v.node_max_error < 0.05 and v.edge_max_error < 0.05 and v.edge_sign_agreement == 1.0
    assert ("L0.H0", "L1.H1") in g.edges  # K-composition
    atp = feature_circuit(setup, method="atp", node_threshold=0.0, edges=False)
    assert abs(atp.nodes["L0.H0"].score) < 0.2 < abs(g.nodes["L0.H0"].score)
