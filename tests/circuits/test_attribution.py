"""Attribution primitives: splice identities, exactness on linear pieces, IG completeness, errors."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.attribution import (Setup, clean_run, logit_diff, logprob, masked_run,
                                            next_token_logprob, node_scores, reference)
from mechscope.interp.sites import SiteError

from .helpers import TinyDict, attn_only_model, ld, toks


@pytest.fixture(scope="module")
def attn_only():
    return attn_only_model()


def test_metrics_match_direct_computation():
    logits = torch.randn(2, 5, 7)
    tok = torch.randint(0, 7, (2, 5))
    assert torch.allclose(logit_diff(torch.tensor([1, 2]), torch.tensor([3, 4]))(logits),
                          logits[:, -1, [1, 2]].diag() - logits[:, -1, [3, 4]].diag())
    lp = logits.log_softmax(-1)
    assert torch.allclose(logprob(torch.tensor([0, 6]), position=2)(logits), lp[[0, 1], 2, [0, 6]])
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 3:] = True
    want = torch.stack([lp[i, 2:4].gather(-1, tok[i, 3:5, None])[:, 0].mean() for i in range(2)])
    assert torch.allclose(next_token_logprob(tok, mask)(logits), want)


def test_splice_is_identity_and_grads_are_adjoint(tiny_gpt2, tokens):
    setup = Setup.build(tiny_gpt2, {"L0.resid_post": TinyDict(32, 24, k=5), "L1.z": None,
                                    "L1.mlp_out": None}, ld(), tokens)
    acts = clean_run(setup)["acts"]
    for site, sn in setup.nodes.items():
        x = acts[site]
        parts = sn.split(x)
        assert torch.allclose(sn.merge(parts), x, atol=1e-5)
        # <g, d merge> == <grads(g), d parts> for any direction in parts space
        g = torch.randn_like(x)
        dparts = tuple(torch.randn_like(p) for p in parts)
        lhs = (g * (sn.merge(tuple(p + d for p, d in zip(parts, dparts))) - sn.merge(parts))).sum()
        rhs = sum((a * d).sum() for a, d in zip(sn.grads(g), dparts))
        assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-3)
    assert setup.nodes[setup.sites[0]].n_nodes == 25  # 24 features + the error node


def test_attribution_patching_is_exact_on_linear_pieces(attn_only):
    # no LayerNorm, last layer, linear metric: m is affine in L1.attn_out, so first order is exact
    setup = Setup.build(attn_only, {"L1.attn_out": TinyDict(32, 16, seed=3)}, ld(), toks(),
                        ablation="zero")
    site = setup.sites[0]
    score = node_scores(setup, "atp")[site]  # [b, p, n]
    m0 = clean_run(setup)["metric"]
    for j in (0, 5, 16):  # two features and the error node
        keep = torch.ones(8, 17, dtype=torch.bool)
        keep[:, j] = False
        effect = masked_run(setup, {site: keep}) - m0
        assert torch.allclose(score[:, :, j].sum(1), effect, atol=1e-4), j


def test_zero_ablation_patching_is_minus_grad_x_act(tiny_gpt2, tokens):
    setup = Setup.build(tiny_gpt2, {"L0.mlp_out": TinyDict(32, 20), "L1.z": None}, ld(), tokens,
                        ablation="zero")
    atp, gxa = node_scores(setup, "atp"), node_scores(setup, "grad_x_act")
    for s in setup.sites:
        assert torch.allclose(atp[s], -gxa[s], atol=1e-6)


def test_integrated_gradients_complete(tiny_model, tokens):
    # completeness: summed over a site's nodes, IG -> m(site at reference) - m(clean)
    patch = toks(p=16, seed=7, vocab=100)
    setup = Setup.build(tiny_model, {"L0.z": None, "L1.resid_mid": TinyDict(32, 16, seed=2)},
                        ld(), tokens, patch=patch)
    ig = node_scores(setup, "ig", steps=16)
    m0 = clean_run(setup)["metric"]
    for s, sn in setup.nodes.items():
        full = masked_run(setup, {s: torch.zeros(sn.n_nodes, dtype=torch.bool)}) - m0
        total = ig[s].sum((1, 2))
        assert torch.allclose(total, full, atol=2e-3 + 1e-2 * full.abs().max()), (s, total, full)


def test_references_by_ablation(tiny_gpt2, tokens):
    sites = {"L0.attn_out": TinyDict(32, 8)}
    mean = reference(Setup.build(tiny_gpt2, sites, ld(), tokens, ablation="mean"))
    res = reference(Setup.build(tiny_gpt2, sites, ld(), tokens, ablation="resample"))
    s = next(iter(mean))
    clean = Setup.build(tiny_gpt2, sites, ld(), tokens)
    parts = clean.nodes[s].split(clean_run(clean)["acts"][s])
    assert torch.allclose(mean[s][0][0, 0], parts[0].mean((0, 1)), atol=1e-6)
    assert torch.allclose(res[s][1][1], parts[1][0], atol=1e-6)


def test_bad_inputs_give_clear_errors(tiny_gpt2, attn_only, tokens):
    with pytest.raises(SiteError, match="valid"):
        Setup.build(tiny_gpt2, ["L7.resid_post"], ld(), tokens)
    with pytest.raises(SiteError, match="valid kinds"):
        Setup.build(attn_only, ["L0.mlp_out"], ld(), toks())
    with pytest.raises(ValueError, match="width 32"):
        Setup.build(tiny_gpt2, {"L0.resid_post": TinyDict(16, 8)}, ld(), tokens)
    with pytest.raises(ValueError, match="not a sum"):
        Setup.build(tiny_gpt2, ["L0.pattern"], ld(), tokens)
    with pytest.raises(ValueError, match="unknown ablation"):
        Setup.build(tiny_gpt2, ["L0.z"], ld(), tokens, ablation="noise")
    with pytest.raises(ValueError, match="match token for token"):
        Setup.build(tiny_gpt2, ["L0.z"], ld(), tokens, patch=tokens[:, :4])
    with pytest.raises(TypeError, match="Dictionary"):
        Setup.build(tiny_gpt2, {"L0.resid_post": object()}, ld(), tokens)
    with pytest.raises(ValueError, match="unknown attribution method"):
        node_scores(Setup.build(tiny_gpt2, ["L0.z"], ld(), tokens), "shapley")
