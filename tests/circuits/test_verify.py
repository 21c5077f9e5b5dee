"""Verification: rank correlation, scoring against known circuits, interventions, `trace` files."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.circuits.feature_circuits import feature_circuit
from mechscope.circuits.graph import Graph, Node
from mechscope.circuits.known import planted_copy_model, planted_setup
from mechscope.circuits.trace_cli import trace_cli
from mechscope.circuits.verify import format_verify, score_against, spearman, verify_edges


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
    assert s.extra == [("head", 1, 0)] and s.missed == []
    s = score_against(_graph([(0, 1)]), [Node("head", 0, None, 1), Node("head", 1, None, 3)])
    assert (s.precision, s.recall) == (1.0, 0.5) and s.missed == [("head", 1, 3)]
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
    assert eff["head/L0.z/1"] < -5
    assert abs(edge[("head/L0.z/1", "logit/L2")]) < 1e-4
    assert edge[("head/L0.z/1", "head/L1.z/2")] == pytest.approx(g.edges[("head/L0.z/1", "head/L1.z/2")], rel=1e-3)
    assert v.node_max_error < 1e-3 and v.edge_max_error < 1e-3


def test_format_verify_lists_every_row():
    row = {"task": "t", "method": "atp", "ablation": "mean", "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
           "faithfulness": 0.9, "completeness": 0.1, "node_rank_corr": 1.0, "edge_rank_corr": 0.5,
           "nodes": 2, "edges": 3, "found": ["L0H1"], "missed": ["L1H3"], "extra": []}
    text = format_verify([row, {**row, "task": "u"}])
    assert "precision" in text and "0.667" in text and "missed ['L1H3']" in text and "u/atp" in text


@pytest.fixture(scope="module")
def induction_model():
    from mechscope.interp.models import load_model

    return load_model("attn-only-induction")


def test_trace_cli_from_files(tmp_path, induction_model):
    from mechscope.sae.config import TrainConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    sae = build_dictionary(TrainConfig(architecture="topk", d_in=64, d_dict=32, k=4, site_in="L0.attn_out"))
    save_dictionary(sae, tmp_path / "dicts" / "L0.attn_out")
    (tmp_path / "prompts.txt").write_text("abcdefabcdef\nqwerty qwerty\n")
    out = tmp_path / "graph.json"
    g = trace_cli(induction_model, tmp_path / "prompts.txt", out, dictionaries=tmp_path / "dicts",
                  sites=["L1.z"], metric="next_token", node_threshold=0.0, edge_threshold=None)
    back = Graph.load(out)
    assert back.nodes == g.nodes and len(g.edges) > 0
    kinds = {n.kind for n in g.nodes.values()}
    assert {"feature", "error", "head", "logit"} <= kinds
    assert g.metadata["parameters"]["dictionaries"]["L0.attn_out"].startswith("TopKSAE")

    recs = [{"prompt": "abcabc", "patch": "abdabd", "target": "c", "foil": "d"},
            {"prompt": "xyzxyz", "patch": "xywxyw", "target": "z", "foil": "w"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    g2 = trace_cli(induction_model, tmp_path / "pairs.jsonl", sites=["L0.z", "L1.z"], metric="jsonl",
                   node_threshold=0.0)
    assert g2.metadata["parameters"]["ablation"] == "patch"
    assert g2.metadata["parameters"]["metric"] == "logit_diff"


def test_trace_cli_bad_inputs(tmp_path, induction_model):
    (tmp_path / "p.txt").write_text("abcabc\n")
    (tmp_path / "dicts" / "resid").mkdir(parents=True)
    with pytest.raises(ValueError, match="named by their site"):
        trace_cli(induction_model, tmp_path / "p.txt", dictionaries=tmp_path / "dicts")
    with pytest.raises(ValueError, match="unknown metric"):
        trace_cli(induction_model, tmp_path / "p.txt", sites=["L0.z"], metric="kl")
    with pytest.raises(ValueError, match="one token"):
        trace_cli(induction_model, tmp_path / "p.txt", sites=["L0.z"], metric="logprob:abc")
