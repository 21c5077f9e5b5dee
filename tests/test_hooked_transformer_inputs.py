"""Every public entry point that takes a model accepts a user's bare ``HookedTransformer``.

Oracle: the same network passed as the bare TransformerLens object and as a mechscope `Model`
gives identical results (capture, interventions, flow routes, attribution, feature statistics).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechscope.interp.capture import capture
from mechscope.interp.intervene import ablate, patch, splice
from mechscope.kernels.code import SparseCode


@pytest.fixture
def bare(tiny_gpt2):
    from transformer_lens import HookedTransformer

    assert isinstance(tiny_gpt2.tl, HookedTransformer)
    return tiny_gpt2.tl


def test_capture_and_interventions(tiny_gpt2, bare, tokens):
    sites = ["L0.resid_post", "L1.z.H2", "L1.mlp_in", "L0.result"]
    ours, theirs = capture(tiny_gpt2, tokens, sites), capture(bare, tokens, sites)
    assert ours.keys() == theirs.keys()
    for s in ours:
        torch.testing.assert_close(theirs[s], ours[s])
    with ablate(bare, "L1.mlp_out"):
        a = bare(tokens)
    with ablate(tiny_gpt2, "L1.mlp_out"):
        b = tiny_gpt2(tokens)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, tiny_gpt2(tokens))
    with patch(bare, {"L0.attn_out": torch.zeros(32)}), splice(bare, {"L1.attn_out": lambda x: 2 * x}):
        c = bare(tokens)
    with patch(tiny_gpt2, {"L0.attn_out": torch.zeros(32)}), splice(tiny_gpt2, {"L1.attn_out": lambda x: 2 * x}):
        d = tiny_gpt2(tokens)
    torch.testing.assert_close(c, d)


def test_prompt_routes(tiny_gpt2, bare, tokens):
    from mechscope.circuits.routes_aggregate import prompt_routes

    ours, theirs = prompt_routes(tiny_gpt2, tokens[:2]), prompt_routes(bare, tokens[:2])
    assert len(ours) == len(theirs) == 2
    for g, h in zip(ours, theirs):
        assert g.edges.keys() == h.edges.keys()
        assert all(g.edges[e] == pytest.approx(h.edges[e]) for e in g.edges)
        assert {n: g.nodes[n].score for n in g.nodes} == pytest.approx({n: h.nodes[n].score for n in h.nodes})


def test_attribution_setup(tiny_gpt2, bare, tokens):
    from mechscope.circuits.attribution import Setup, logprob, node_scores

    metric = logprob(tokens[:, -1])
    ours = node_scores(Setup.build(tiny_gpt2, ["L0.z", "L1.mlp_out"], metric, tokens), "atp")
    setup = Setup.build(bare, ["L0.z", "L1.mlp_out"], metric, tokens)
    assert setup.model.tl is bare
    theirs = node_scores(setup, "atp")
    for s in ours:
        torch.testing.assert_close(theirs[s], ours[s])


class _ReLUDict:
    def __init__(self, d_in: int, d_dict: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.d_in, self.d_out, self.d_dict = d_in, d_in, d_dict
        self.W_enc = torch.randn(d_dict, d_in, generator=g) / d_in ** 0.5
        self.directions = torch.randn(d_dict, d_in, generator=g)

    def encode(self, x: torch.Tensor) -> SparseCode:
        return SparseCode.from_dense(torch.relu(x @ self.W_enc.T - 0.2), k=self.d_dict)


def test_feature_statistics(tiny_gpt2, bare):
    from mechscope.sae.features import accumulate_feature_stats, compute_feature_cards

    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, 100, (16,), generator=g) for _ in range(4)]
    d = _ReLUDict(32, 8)
    a = accumulate_feature_stats(tiny_gpt2, d, "L1.resid_post", iter(windows), n_tokens=60, batch_size=2)
    b = accumulate_feature_stats(bare, d, "L1.resid_post", iter(windows), n_tokens=60, batch_size=2)
    assert a.n_tokens == b.n_tokens == 60
    torch.testing.assert_close(a.density(), b.density())
    torch.testing.assert_close(a.max, b.max)
    kw = dict(n_tokens=60, batch_size=2, n_top=3, n_samples=4)
    ours = compute_feature_cards(tiny_gpt2, d, "L1.resid_post", iter(windows), **kw)
    theirs = compute_feature_cards(bare, d, "L1.resid_post", iter(windows), **kw)
    assert [dataclasses.replace(c, model="") for c in ours] == [dataclasses.replace(c, model="") for c in theirs]
    assert ours[0].top_logits  # the unembedding was read through the adapter
