"""Information flow routes: completeness of the decomposition, shares, routes, aggregation."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.routes import extract_route, flow_contributions, head_terms, readout_direction
from mechscope.circuits.routes_aggregate import aggregate_routes, component_graph, prompt_routes
from mechscope.interp.capture import capture


def _acts(model, tokens):
    kinds = ["resid_pre", "resid_post", "v", "pattern"] + ([] if model.attn_only else ["resid_mid", "mlp_out"])
    acts = capture(model, tokens, [f"L{L}.{k}" for L in range(model.n_layers) for k in kinds])
    return {(s.layer, s.kind): a for s, a in acts.items()}


def test_parts_resum_to_residuals(tiny_model, tokens):
    """resid + sum of (head, source) terms + b_O = m^L, and m^L + MLP = x^{L+1} (GQA included)."""
    get = _acts(tiny_model, tokens)
    n_pos = tokens.shape[1]
    for L in range(tiny_model.n_layers):
        attn = tiny_model.tl.blocks[L].attn
        for b in range(tokens.shape[0]):
            v = get[(L, "v")][b]
            v = v.repeat_interleave(tiny_model.n_heads // v.shape[1], dim=1)
            z = head_terms(get[(L, "pattern")][b], v, attn.W_O, slice(0, n_pos), slice(0, tiny_model.n_heads))
            rebuilt = get[(L, "resid_pre")][b] + z.sum((0, 2)) + attn.b_O
            torch.testing.assert_close(rebuilt, get[(L, "resid_mid")][b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(get[(L, "resid_mid")] + get[(L, "mlp_out")], get[(L, "resid_post")])


def test_shares_sum_to_one_and_match_definition(tiny_model, tokens):
    c = flow_contributions(tiny_model, tokens)
    total = c.attn_heads.sum((-1, -2)) + c.attn_resid + c.attn_bias
    torch.testing.assert_close(total, torch.ones_like(total))
    torch.testing.assert_close(c.mlp + c.mlp_resid, torch.ones_like(c.mlp))
    assert (c.attn_heads >= 0).all() and c.attn_heads[:, :, 3, :, 4:].abs().max() == 0  # causal
    # oracle: the paper's formula written out for one representation, part by part
    get, (L, b, i) = _acts(tiny_model, tokens), (1, 2, 9)
    attn = tiny_model.tl.blocks[L].attn
    v = get[(L, "v")][b].repeat_interleave(tiny_model.n_heads // get[(L, "v")][b].shape[1], dim=1)
    y = get[(L, "resid_mid")][b, i]
    parts = [get[(L, "resid_pre")][b, i], attn.b_O]
    parts += [get[(L, "pattern")][b, h, i, j] * (v[j, h] @ attn.W_O[h])
              for h in range(tiny_model.n_heads) for j in range(tokens.shape[1])]
    prox = torch.stack([(y.abs().sum() - (y - z).abs().sum()).clamp_min(0) for z in parts])
    ref = prox / prox.sum()
    torch.testing.assert_close(c.attn_resid[b, L, i], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c.attn_bias[b, L, i], ref[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c.attn_heads[b, L, i].flatten(), ref[2:], atol=1e-5, rtol=1e-4)


def test_chunking_does_not_change_shares(tiny_gpt2, tokens):
    full = flow_contributions(tiny_gpt2, tokens)
    tiny_chunks = flow_contributions(tiny_gpt2, tokens, chunk_elems=100)
    torch.testing.assert_close(full.attn_heads, tiny_chunks.attn_heads)


def test_signed_shares_are_projections_on_the_readout(tiny_model, tokens):
    c = flow_contributions(tiny_model, tokens, signed=True)
    total = c.attn_heads.abs().sum((-1, -2)) + c.attn_resid.abs() + c.attn_bias.abs()
    torch.testing.assert_close(total, torch.ones_like(total))
    assert (c.attn_heads < 0).any() and (c.attn_heads > 0).any()  # promotion and suppression
    # oracle: the MLP-block shares are <z, u> / sum |<z_k, u>| for the predicted token
    get, (L, b, i) = _acts(tiny_model, tokens), (0, 1, 5)
    u = readout_direction(tiny_model, int(c.target[b]))
    dots = torch.stack([get[(L, "mlp_out")][b, i] @ u, get[(L, "resid_mid")][b, i] @ u])
    torch.testing.assert_close(torch.stack([c.mlp[b, L, i], c.mlp_resid[b, L, i]]), dots / dots.abs().sum())
    # the default target is the model's own prediction at the last position
    assert int(c.target[b]) == int(tiny_model.tl(tokens)[b, -1].argmax())


@pytest.mark.parametrize("view", ["heads", "summed"])
def test_route_is_reached_top_down_with_renormalised_shares(tiny_model, tokens, view):
    c = flow_contributions(tiny_model, tokens)
    g = extract_route(c, index=0, tau=0.04, view=view)
    top = [i for i, n in g.nodes.items() if n.score == 1.0 and n.site and n.site.endswith("resid_post")]
    assert len(top) == 1 and g.nodes[top[0]].position == tokens.shape[1] - 1
    # every node reaches the top
    children = {}
    for s, t in g.edges:
        children.setdefault(s, []).append(t)
    seen, stack = set(), list(top)
    parents = {}
    for s, t in g.edges:
        parents.setdefault(t, []).append(s)
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack += parents.get(x, [])
    assert seen == set(g.nodes)
    # kept edges into a block output are the renormalised shares above tau: they sum to <= 1
    for nid, nd in g.nodes.items():
        if nd.kind == "residual" and nd.site.endswith("resid_mid"):
            into = [w for (s, t), w in g.edges.items() if t == nid]
            assert 0 < sum(into) <= 1 + 1e-5 and min(into) > 0
    with_all = extract_route(c, index=0, tau=0.0, view=view)
    assert len(with_all.nodes) >= len(g.nodes)


def test_route_errors(tiny_gpt2, tokens):
    c = flow_contributions(tiny_gpt2, tokens)
    with pytest.raises(ValueError, match="view"):
        extract_route(c, view="both")
    with pytest.raises(ValueError, match="tau"):
        extract_route(c, tau=1.5)
    with pytest.raises(ValueError, match="position"):
        extract_route(c, position=99)
    with pytest.raises(ValueError, match="pos"):
        flow_contributions(tiny_gpt2, torch.zeros(1, 0, dtype=torch.long))
    one = flow_contributions(tiny_gpt2, tokens[0])  # a single [pos] prompt is a batch of one
    torch.testing.assert_close(one.attn_heads, flow_contributions(tiny_gpt2, tokens[:1]).attn_heads)


def test_batched_routes_equal_single_prompt_routes(tiny_gpt2):
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 100, (n,), generator=gen) for n in (6, 9, 6, 9, 6)]
    batched = prompt_routes(tiny_gpt2, rows, batch_size=2)
    for r, g in zip(rows, batched):
        alone = prompt_routes(tiny_gpt2, [r])[0]
        assert set(alone.edges) == set(g.edges)
        for e, w in alone.edges.items():
            assert abs(w - g.edges[e]) < 1e-5


def test_aggregate_counts_how_often_components_are_on_routes(tiny_gpt2):
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 100, (8,), generator=gen) for _ in range(4)]
    routes = prompt_routes(tiny_gpt2, rows)
    comps = [component_graph(r, tiny_gpt2.n_layers) for r in routes]
    agg = aggregate_routes(routes, tiny_gpt2.n_layers)
    for nid, nd in agg.nodes.items():
        assert nd.score == pytest.approx(sum(nid in g.nodes for g in comps) / len(comps))
    for e, w in agg.edges.items():
        assert w == pytest.approx(sum(e in g.edges for g in comps) / len(comps))
    # a head on a route is a component node, and the head writes into something on the route
    for r, g in zip(routes, comps):
        heads = {(n.layer, n.index) for n in r.nodes.values() if n.kind == "head"}
        assert heads == {(n.layer, n.index) for n in g.nodes.values() if n.kind == "head"}
        for nid, nd in g.nodes.items():
            if nd.kind != "logit":
                assert g.children(nid), f"{nid} writes to nothing on the route"
