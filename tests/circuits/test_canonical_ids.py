"""One model traced by feature circuits (head sites), information flow routes and attention-SVD:
the same head has the same node id in every graph, every graph's JSON has the same metadata, and
a node of any method's graph is found again by the interventions of `verify`."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from mechscope.circuits.attribution import Setup, clean_run, masked_run
from mechscope.circuits.feature_circuits import full_graph, trace
from mechscope.circuits.graph import Graph, GraphMeta, Node, node_id, without_position
from mechscope.circuits.routes_aggregate import aggregate_routes, prompt_routes
from mechscope.circuits.svd_trace import trace_attention, trace_prompt
from mechscope.circuits.verify import score_against, verify_nodes

from .helpers import attn_only_model, ld, toks


@pytest.fixture(scope="module")
def traced():
    model = attn_only_model()
    tokens = toks(2, 8)
    setup = Setup.build(model, ["L0.z", "L1.z"], ld(2), tokens, ablation="mean")
    fc, _ = trace(setup, node_threshold=0.0)
    routes = prompt_routes(model, list(tokens), tau=0.0)
    heads = [(1, h) for h in range(model.n_heads)]
    graphs = {
        "feature_circuit": fc, "full": full_graph(setup), "route": routes[0],
        "routes_aggregated": aggregate_routes(routes, model.n_layers),
        "attention_svd": trace_prompt(model, tokens[0], heads, firing_threshold=0.05, skip_bos=False,
                                      candidates="all"),
        "attention_svd_aggregated": trace_attention(model, list(tokens), heads, firing_threshold=0.05,
                                                    skip_bos=False),
    }
    return model, tokens, setup, graphs


def _heads(g: Graph) -> dict[str, Node]:
    return {i: n for i, n in g.nodes.items() if n.kind == "head"}


def test_the_same_head_has_the_same_id_in_every_method(traced):
    model, tokens, _, graphs = traced
    every = {f"L{L}.H{h}" for L in range(model.n_layers) for h in range(model.n_heads)}
    for name in ("feature_circuit", "full", "routes_aggregated"):
        assert set(_heads(graphs[name])) == every, name  # all heads kept: threshold / tau 0
    # attention-SVD keeps the heads that carry the traced heads' signal: the traced ones and some
    # of layer 0; each is the string the other methods use for that head
    svd = set(_heads(graphs["attention_svd"]))
    assert {f"L1.H{h}" for h in range(model.n_heads)} <= svd <= every and any(i.startswith("L0.") for i in svd)
    # per position, routes name the head at a token: dropping the position gives the same id
    route = _heads(graphs["route"])
    assert {without_position(i) for i in route} == every
    for i, n in route.items():
        assert i == f"L{n.layer}.H{n.index}@{n.position}" == node_id("head", n.layer, n.index, position=n.position)
    # and the head nodes of every method agree on what the id says
    for g in graphs.values():
        for i, n in _heads(g).items():
            assert without_position(i) == f"L{n.layer}.H{n.index}"
    # the embedding too: one id for the whole embedding (routes), its parts apart (attention-SVD)
    assert "embed" in graphs["routes_aggregated"].nodes and "embed@0" in graphs["route"].nodes
    assert {"embed.tok", "embed.pos"} & set(graphs["attention_svd"].nodes)


def test_every_tracer_writes_the_same_metadata(traced):
    model, tokens, _, graphs = traced
    keys = {f.name for f in fields(GraphMeta)}
    node_keys = {"id"} | {f.name for f in fields(Node) if f.init}
    for name, g in graphs.items():
        d = g.to_dict()
        assert d["version"] == 2 and set(d["meta"]) == keys, name
        assert all(set(n) == node_keys for n in d["nodes"]), name
        m = g.meta
        assert m.n_layers == model.n_layers and m.model == model.name and m.method and m.units, name
        assert m.n_prompts == len(m.prompts) == len(m.prompt_tokens), name
        assert all(len(row) == tokens.shape[1] and all(isinstance(t, str) for t in row)
                   for row in m.prompt_tokens), name
        assert Graph.from_dict(d).meta == m, name
    strs = tuple(model.to_str_tokens(tokens[0]))
    assert graphs["feature_circuit"].meta.prompt_tokens[0] == graphs["route"].meta.prompt_tokens[0] == strs
    assert graphs["attention_svd"].meta.prompt_tokens == (strs,)
    for name in ("feature_circuit", "routes_aggregated", "attention_svd_aggregated"):
        assert graphs[name].meta.n_prompts == 2, name
    assert graphs["routes_aggregated"].meta.aggregated.graphs == 2
    assert graphs["routes_aggregated"].meta.details == {}  # one prompt's prediction is not the aggregate's
    assert len(graphs["attention_svd_aggregated"].meta.details["firings"]) == 2
    assert graphs["feature_circuit"].meta.faithfulness is not None


def test_any_methods_head_is_checked_by_the_same_intervention(traced):
    """`verify` reads the canonical id, so a head found by attention-SVD or by routes is ablated
    at the setup's head site: the effect equals ablating that head's node by hand."""
    _, _, setup, graphs = traced
    svd, route = graphs["attention_svd"], graphs["route"]
    picked = sorted(_heads(svd))[:2] + [i for i in sorted(_heads(route)) if i.startswith("L1.")][:1]
    sub = Graph()
    for i in picked:
        sub.add_node((svd if i in svd.nodes else route).nodes[i])
    ids, effects = verify_nodes(sub, setup)
    m0 = clean_run(setup)["metric"]
    b, p = setup.clean.shape
    for nid, eff in zip(ids, effects):
        layer, head = int(nid[1]), int(nid.split(".H")[1].split("@")[0])
        pos = int(nid.split("@")[1]) if "@" in nid else None
        keep = {s: torch.ones(b, p, sn.n_nodes, dtype=torch.bool) for s, sn in setup.nodes.items()}
        site = next(s for s in setup.sites if s.layer == layer)
        keep[site][:, slice(None) if pos is None else pos, head] = False
        assert eff == pytest.approx(float((masked_run(setup, keep) - m0).mean()), abs=1e-6)
    # and known circuits are scored against any method's graph by the same ids
    s = score_against(graphs["routes_aggregated"], [("head", 1, 0), "L0.H2"])
    assert s.missed == [] and s.found == ["L0.H2", "L1.H0"]
