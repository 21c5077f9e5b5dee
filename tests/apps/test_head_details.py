"""Head detail panels for every graph type with head nodes (apps/head_details.py): attention
patterns are the model's (rows are causal distributions, equal to TransformerLens' pattern hook),
top output tokens are the head's direct logit effect read through an independent path (the
``hook_result`` per-head output times ``W_U``, averaged by hand), stored bounded in size, and
carried by each view of the page."""

from __future__ import annotations

import pytest
import torch

from mechscope.apps.graph_viewer import page_views
from mechscope.apps.head_details import head_details, view_heads, with_head_details
from mechscope.circuits.known import induction_setup


@pytest.fixture(scope="module")
def rows(induction_model):
    clean = induction_setup(induction_model, n_prompts=3).clean
    return [clean[0], clean[1], clean[2][:-3]]  # two lengths


def _result(model, row, layer):
    """Per-head outputs ``[pos, head, d_model]`` from TransformerLens' own result hook."""
    with model.optional_hook_points(["result"]):
        _, cache = model.run_with_cache(row.view(1, -1), names_filter=[f"blocks.{layer}.attn.hook_result"])
    return cache[f"blocks.{layer}.attn.hook_result"][0]  # z_h W_O[h], no bias


def _top_ids(model, logits, k=5):
    return model.to_str_tokens(logits.topk(k).indices.tolist()), logits.topk(k).values


def test_routes_over_several_prompts(induction_model, rows):
    from mechscope.circuits.routes_aggregate import aggregate_routes, prompt_routes

    model = induction_model
    routes = prompt_routes(model, rows)
    agg = aggregate_routes(routes, model.n_layers)
    agg.per_prompt = list(routes)
    g = with_head_details(agg, model, rows)
    top = head_details(g)
    heads = {i.split("@")[0] for i, n in g.nodes.items() if n.kind == "head"}
    assert heads and set(top["attention"]) == heads
    for h, patterns in top["attention"].items():
        assert len(patterns) == 3  # one per prompt (within the budget)
        for k, pat in enumerate(patterns):
            a = torch.tensor(pat)
            assert a.shape == (len(rows[k]), len(rows[k]))
            assert torch.allclose(a.sum(-1), torch.ones(len(rows[k])), atol=5e-3) and a.triu(1).abs().max() == 0
            layer, head = int(h[1]), int(h.split("H")[1])
            _, cache = model.run_with_cache(rows[k].view(1, -1), names_filter=[f"blocks.{layer}.attn.hook_pattern"])
            assert torch.allclose(a, cache[f"blocks.{layer}.attn.hook_pattern"][0, head], atol=6e-4)
    # summed head nodes: tokens of the mean output over every position of every prompt
    for i, got in top["top_tokens"].items():
        n = g.nodes[i]
        outs = torch.cat([_result(model, r, n.layer)[:, n.index] for r in rows])
        want, vals = _top_ids(model, outs.mean(0) @ model.W_U)
        assert [t for t, _ in got] == want and torch.allclose(torch.tensor([v for _, v in got]), vals, atol=1e-3)
    assert top["n_prompts"] == 3
    # each prompt's route: its own positional tokens; the page view of prompt k has pattern k only
    for k, sub in enumerate(g.per_prompt):
        mine = head_details(sub)["top_tokens"]
        assert mine and all(sub.nodes[i].position is not None for i in mine)
        for i, got in mine.items():
            n = sub.nodes[i]
            want, _ = _top_ids(model, _result(model, rows[k], n.layer)[n.position, n.index] @ model.W_U)
            assert [t for t, _ in got] == want
        v = view_heads(g, sub, k)
        assert all(p == [top["attention"][h][k]] for h, p in v["attention"].items())
    views, _ = page_views(g)
    assert [len(v["prompt_tokens"]) for v in views] == [3, 1, 1, 1]
    assert views[2]["prompt_tokens"] == [list(g.meta.prompt_tokens[1])]


def test_budget_bounds_the_patterns(induction_model, rows):
    from mechscope.circuits.routes_aggregate import prompt_routes

    g = prompt_routes(induction_model, [rows[0]])[0]
    n_heads = len({(n.layer, n.index) for n in g.nodes.values() if n.kind == "head"})
    small = with_head_details(g, induction_model, [rows[0]], budget=1, max_len=8)
    assert all(len(p) == 1 and len(p[0]) == 8 and len(p[0][0]) == 8 for p in head_details(small)["attention"].values())
    assert n_heads == len(head_details(small)["attention"])


def test_attention_svd_and_trace_graphs_get_head_details(induction_model, rows):
    from mechscope.circuits.attribution import Setup
    from mechscope.circuits.feature_circuits import trace
    from mechscope.circuits.svd_trace import trace_attention

    model = induction_model
    same = rows[:2]
    svd = with_head_details(trace_attention(model, same, [(1, 0)]), model, same)
    setup = induction_setup(model, n_prompts=2)
    circuit, _ = trace(Setup.build(model, {"L0.z": None, "L1.z": None}, setup.metric, setup.clean, ablation="mean"),
                       method="atp", node_threshold=0.05, relative=True, per_position=True)
    circuit = with_head_details(circuit, model, list(setup.clean))
    for g, n_prompts in ((svd, 2), (circuit, 2)):
        d = head_details(g)
        heads = [n for n in g.nodes.values() if n.kind == "head"]
        assert heads and {i for i in d["top_tokens"]} == {n.id for n in heads}
        assert all(len(p) == n_prompts for p in d["attention"].values())
    # a positional node of a two-prompt trace: the mean of the head's output at that position
    n = next(n for n in circuit.nodes.values() if n.kind == "head" and n.position is not None)
    outs = torch.stack([_result(model, r, n.layer)[n.position, n.index] for r in setup.clean])
    want, _ = _top_ids(model, outs.mean(0) @ model.W_U)
    assert [t for t, _ in head_details(circuit)["top_tokens"][n.id]] == want


def test_old_single_prompt_layout_is_read():
    from mechscope.circuits.graph import Graph, GraphMeta

    g = Graph(meta=GraphMeta("routes", details={"heads": {"L0.H1": {"attention": [[1.0]]},
                                                          "L0.H1@0": {"top_tokens": [["a", 1.0]]}}}))
    assert head_details(g) == {"attention": {"L0.H1": [[[1.0]]]}, "top_tokens": {"L0.H1@0": [["a", 1.0]]},
                               "n_prompts": 1}
