"""Routes and inert writers: without the causal filter the inert head is on every route, with it
it is dropped and the planted path stays; the filter's effects are real ablations. Routes under
bidirectional attention see later sources."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits import planted as P
from mechscope.circuits.routes import extract_route, flow_contributions
from mechscope.circuits.routes_aggregate import prompt_routes
from mechscope.circuits.routes_causal import causal_filter
from mechscope.circuits.verify import components
from mechscope.interp.intervene import ablate

HEADS = {"head", "mlp"}


@pytest.fixture(scope="module")
def inert():
    return P.task("inert", n_prompts=3)


def test_routes_keep_the_inert_writer_and_the_filter_drops_it(inert):
    t = inert
    for route, row in zip(prompt_routes(t.model, t.clean), t.clean):
        assert components(route, HEADS) == {"L0.H1", "L0.H3", "L1.H2"}  # the documented limitation
        kept = causal_filter(t.model, route, row, tol=0.1)
        assert components(kept, HEADS) == {"L0.H1", "L1.H2"}
        effects = kept.meta.details["causal_effects"]
        inert_edges = [k for k in effects if "L0.H3" in k]
        assert inert_edges and all(effects[k] == 0.0 for k in inert_edges)  # exactly: nothing reads it
        assert kept.meta.parameters["causal_filter"] == 0.1
        # the real path: embedding at position 1 -> L0.H1 -> L1.H2 -> the top, every edge reached
        assert ("embed@1", "L0.H1@7") in kept.edges and ("L1.H2@7", "L1.resid_post@7") in kept.edges
        assert set(kept.edges) <= set(route.edges)
        # oracle: a head's write edge is that head zero-ablated at its position
        token = route.meta.details["prediction"]
        with torch.no_grad():
            clean = t.model(row[None])[0, -1, token]
            with ablate(t.model, "L0.z.H1", "zero", positions=[7]):
                ablated = t.model(row[None])[0, -1, token]
        assert effects["L0.H1@7->L1.resid_pre@7"] == pytest.approx(float(ablated - clean), abs=1e-4)


def test_filter_errors(inert):
    t = inert
    c = flow_contributions(t.model, t.clean[:1])
    with pytest.raises(ValueError, match="'heads' view"):
        causal_filter(t.model, extract_route(c, view="summed"), t.clean[0], 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        causal_filter(t.model, extract_route(c), t.clean[0], -1.0)
    with pytest.raises(ValueError, match="unknown reference"):
        causal_filter(t.model, extract_route(c), t.clean[0], 0.1, reference="resample")


def test_routes_see_later_sources_under_bidirectional_attention():
    t = P.task("bidirectional", n_prompts=2)
    c = flow_contributions(t.model, t.clean)
    total = c.attn_heads.sum((-1, -2)) + c.attn_resid + c.attn_bias
    torch.testing.assert_close(total, torch.ones_like(total))
    assert c.attn_heads[:, 0, 1, 1, -1].min() > 0.1  # L0.H1 at position 1 reads the last token
    route = extract_route(c, 0, position=1)
    assert components(route, HEADS) >= {"L0.H1", "L1.H2"}
    assert ("embed@7", "L0.H1@1") in route.edges
    kept = causal_filter(t.model, route, t.clean[0], tol=0.1)
    assert components(kept, HEADS) == {"L0.H1", "L1.H2"}


def test_routes_cli_causal_filter(inert):
    from mechscope.apps.commands.routes import routes_cli

    model = inert.model  # no tokenizer: letters a.. map to token ids 1..
    model.to_tokens = lambda text, prepend_bos=True: torch.tensor([[0] + [ord(ch) - 96 for ch in text]])
    model.to_str_tokens = lambda toks: [str(int(x)) for x in toks]
    try:
        plain = routes_cli(model, ["cabdefg", "dbcaefg"])
        kept = routes_cli(model, ["cabdefg", "dbcaefg"], causal_filter=0.1)
    finally:
        del model.to_tokens, model.to_str_tokens
    assert "L0.H3" in plain.nodes and "L0.H3" not in kept.nodes
    assert {"L0.H1", "L1.H2"} <= set(kept.nodes)
