"""Codebook bottlenecks in a model: identities, selection, gradients, init, files, Dictionary view."""

from __future__ import annotations

import copy

import pytest
import torch

from mechscope.interp.capture import capture, hooks_for
from mechscope.sae.codebook import nearest_codes, spherical_kmeans
from mechscope.sae.codebook_features.model import CodebookModel, CodebookSpec
from mechscope.interp.models import Model
from mechscope.sae.dictionary import Dictionary

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
           act_fn="gelu_new", normalization_type="LN")


@pytest.fixture(scope="module")
def model():
    return Model.from_config(CFG, name="tiny", seed=0)


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))


def _exact_codebook(cbm: CodebookModel, model: Model, tokens: torch.Tensor) -> None:
    """Codes = the distinct activations of ``tokens`` at each site (k = 1, no quantisation error)."""
    for name, b in cbm.named_bottlenecks():
        act = capture(model, tokens, b.site)[b.site]
        rows = b._rows(act)
        for g, cb in enumerate(b.codebooks):
            x = rows[:, :, g].reshape(-1, rows.shape[-1])
            cb.init_from_data(x, x)
            uniq = torch.unique(x, dim=0) * cb.scale_in
            assert len(uniq) <= cbm.spec.n_codes
            pad = uniq[torch.arange(cbm.spec.n_codes) % len(uniq)]  # duplicates tie exactly
            with torch.no_grad():
                cb.W_dec.copy_(pad)


@pytest.mark.parametrize("site,groups", [("L0.attn_out", 1), ("L1.mlp_out", 1), ("L1.z", 4),
                                         ("L0.z", 2), ("L1.resid_pre", 1)])
def test_exact_codebook_reproduces_logits(model, tokens, site, groups):
    cbm = CodebookModel(model, CodebookSpec(sites=(site,), n_codes=40, k=1, head_groups=groups))
    _exact_codebook(cbm, model, tokens)
    base = model(tokens)
    torch.testing.assert_close(cbm(tokens), base, atol=1e-5, rtol=1e-5)
    with cbm.disabled():
        torch.testing.assert_close(cbm(tokens), base)


def test_k_equal_C_with_codes_summing_to_a_constant_activation(model, tokens):
    # W_V = 0 in layer 0 makes attn_out the constant b_O: k = C codes that sum to it are exact
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.attn(0).W_V.zero_()
        m.attn(0).b_O.copy_(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    cbm = CodebookModel(m, CodebookSpec(sites=("L0.attn_out",), n_codes=6, k=6))
    cbm.init_codebooks(tokens)
    cb = cbm.bottleneck("L0.attn_out").codebooks[0]
    target = m.attn(0).b_O.detach() * cb.scale_in
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    w[-1] = target - w[:-1].sum(0)
    with torch.no_grad():
        cb.W_dec.copy_(w)
    torch.testing.assert_close(cbm(tokens), m(tokens), atol=1e-5, rtol=1e-5)


def test_nearest_codes_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x, codes = torch.randn(50, 8, generator=g), torch.randn(20, 8, generator=g) * 3
    got = nearest_codes(x, codes, 4)
    for i in range(50):
        cos = [float(x[i] @ c / (x[i].norm() * c.norm())) for c in codes]
        want = sorted(range(20), key=lambda j: -cos[j])[:4]
        assert got[i].tolist() == want
    forced = nearest_codes(x, codes, 4, forced=torch.tensor([[7]]).expand(50, 1))
    assert (forced[:, 0] == 7).all()
    rest = [[j for j in r if j != 7][:3] for r in nearest_codes(x, codes, 5).tolist()]
    assert forced[:, 1:].tolist() == rest


def test_bottleneck_selects_k_nearest_and_sums_them(model, tokens):
    cbm = CodebookModel(model, CodebookSpec(sites=("L1.mlp_out",), n_codes=16, k=3))
    cbm.init_codebooks(tokens)
    b = cbm.bottleneck("L1.mlp_out")
    cb = b.codebooks[0]
    act = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    out = b(act)
    x = act.reshape(-1, 32) * cb.scale_in
    sims = (x / x.norm(dim=-1, keepdim=True)) @ (cb.W_dec / cb.W_dec.norm(dim=-1, keepdim=True)).T
    want = sims.topk(3).indices
    assert torch.equal(b.last_codes[0].reshape(-1, 3).sort(1).values, want.sort(1).values)
    torch.testing.assert_close(out.reshape(-1, 32), cb.W_dec[want].sum(1) / cb.scale_out)


def test_straight_through_gradients(model, tokens):
    cbm = CodebookModel(copy.deepcopy(model), CodebookSpec(sites=("L1.mlp_out",), n_codes=16, k=2))
    cbm.init_codebooks(tokens)
    b = cbm.bottleneck("L1.mlp_out")
    cb = b.codebooks[0]
    act = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4), requires_grad=True)
    w = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(5))
    (b(act) * w).sum().backward()
    torch.testing.assert_close(act.grad, w)  # identity to the input
    idx = b.last_codes[0].reshape(-1, 2)
    want = torch.zeros_like(cb.W_dec).index_add_(0, idx.flatten(), w.reshape(-1, 32).repeat_interleave(2, 0))
    torch.testing.assert_close(cb.W_dec.grad, want / cb.scale_out)  # codes: the rows that chose them
    # in the model, the LM loss reaches layers upstream of the bottleneck and the codes
    cbm.train()
    logits = cbm(tokens)
    (logits.logsumexp(-1).mean() + cbm.aux_loss()).backward()
    assert cbm.network.blocks[0].attn.W_Q.grad.abs().sum() > 0
    assert cbm.network.blocks[1].mlp.W_in.grad.abs().sum() > 0
    assert cb.W_dec.grad.abs().sum() > 0


def test_aux_terms_and_dead_code_replacement(model, tokens):
    cbm = CodebookModel(copy.deepcopy(model), CodebookSpec(sites=("L0.mlp_out",), n_codes=64, k=1,
                                                           dead_tokens=10))
    cbm.init_codebooks(tokens)
    cb = cbm.bottleneck("L0.mlp_out").codebooks[0]
    with torch.no_grad():
        cb.W_dec[5] = -cb.W_dec.mean(0) * 100  # far from every activation: never selected
    cbm.train()
    cbm(tokens)
    terms = cbm.bottleneck("L0.mlp_out").aux_terms
    assert terms["codebook"] > 0 and torch.allclose(terms["codebook"], terms["commitment"])
    before = cb.W_dec.detach().clone()
    fired = torch.zeros(64, dtype=torch.bool)
    fired[cbm.bottleneck("L0.mlp_out").last_codes[0].flatten()] = True
    assert not fired[5]
    replaced = cbm.after_step(torch.Generator().manual_seed(0))
    assert replaced == int((~fired).sum())
    x = cbm.bottleneck("L0.mlp_out").last_inputs[0]
    # a replaced code is an activation of the last batch (divided by k = 1)
    assert (cb.W_dec[5] - x).norm(dim=-1).min() < 1e-5
    assert torch.equal(cb.W_dec[fired], before[fired])


def test_spherical_kmeans_recovers_planted_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 4
    x = centres.repeat(40, 1) + 0.05 * torch.randn(200, 16, generator=g)
    got = spherical_kmeans(x, 5, iters=20, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(centres, got)
    assert dist.min(1).values.max() < 0.1  # each planted centre has a code at it


def test_forcing_codes_at_positions(model, tokens):
    cbm = CodebookModel(model, CodebookSpec(sites=("L0.attn_out", "L1.z"), n_codes=16, k=2, head_groups=2))
    cbm.init_codebooks(tokens)
    free = cbm.codes(tokens)
    with cbm.forcing({"L0.attn_out": [9], "L1.z": [[3], [4]]}, positions=[-1, 2]):
        forced = cbm.codes(tokens)
    assert (forced["L0.attn_out"][:, [-1, 2], 0, 0] == 9).all()
    assert (forced["L1.z"][:, [-1, 2], 0, 0] == 3).all() and (forced["L1.z"][:, [-1, 2], 1, 0] == 4).all()
    assert torch.equal(forced["L0.attn_out"][:, :2], free["L0.attn_out"][:, :2])
    assert torch.equal(cbm.codes(tokens)["L0.attn_out"], free["L0.attn_out"])  # undone on exit
    with pytest.raises(ValueError, match="codebook sites: L0.attn_out, L1.z"):
        with cbm.forcing({"L1.mlp_out": [1]}):
            pass
    with pytest.raises(ValueError, match="must be 1..k=2 indices"):
        with cbm.forcing({"L0.attn_out": [99]}):
            pass


def test_save_load_roundtrip(model, tokens, tmp_path):
    cbm = CodebookModel(copy.deepcopy(model), CodebookSpec(sites=("L0.mlp_out", "L1.z"), n_codes=8, k=2,
                                                           head_groups=4))
    cbm.init_codebooks(tokens)
    cbm.save(tmp_path / "cb", extra={"note": "x"})
    back = CodebookModel.load(tmp_path / "cb")
    assert back.spec == cbm.spec and back.extra == {"note": "x"}
    torch.testing.assert_close(back(tokens), cbm.eval()(tokens))
    for a, b in zip(back.codes(tokens).values(), cbm.codes(tokens).values()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == [
        "codebook_model.json", "codebooks.safetensors", "model.safetensors"]


def test_codebooks_are_dictionaries(model, tokens):
    cbm = CodebookModel(model, CodebookSpec(sites=("L0.mlp_out", "L1.z"), n_codes=8, k=2, head_groups=4))
    cbm.init_codebooks(tokens)
    dicts = cbm.dictionaries()
    assert list(dicts) == ["L0.mlp_out", "L1.z.H0", "L1.z.H1", "L1.z.H2", "L1.z.H3"]
    codes = cbm.codes(tokens)
    b = cbm.bottleneck("L0.mlp_out")
    act = capture(model, tokens, b.site)[b.site]
    d = dicts["L0.mlp_out"]
    assert isinstance(d, Dictionary) and (d.d_in, d.d_dict) == (32, 8)
    code = d.encode(act.reshape(-1, 32))
    assert torch.equal(code.indices.sort(1).values, codes["L0.mlp_out"][:, :, 0].reshape(-1, 2).sort(1).values)
    torch.testing.assert_close(d.decode(code), code.dense(8) @ d.directions)
    torch.testing.assert_close(d.decode(code).view(3, 12, 32), b(act))
    head = dicts["L1.z.H2"]
    with hooks_for(model, {b.site: b}):  # the L0 bottleneck is upstream of L1.z
        z = capture(model, tokens, "L1.z.H2")[model.site("L1.z.H2")]
    assert torch.equal(head.encode(z.reshape(-1, 8)).indices.sort(1).values,
                       codes["L1.z"][:, :, 2].reshape(-1, 2).sort(1).values)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(sites=()), "sites is empty"),
    (dict(sites=("L0.pattern",)), "not supported; kinds"),
    (dict(sites=("L0.z.H1",)), "use head_groups"),
    (dict(sites=("L0.mlp_out",), k=5, n_codes=4), "k=5 must be <= n_codes=4"),
    (dict(sites=("L0.mlp_out", "L0.mlp_out")), "duplicates"),
])
def test_spec_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        CodebookSpec(**kwargs)


def test_spec_checked_against_model(model):
    with pytest.raises(ValueError, match="head_groups=3 must divide n_heads=4"):
        CodebookModel(model, CodebookSpec(sites=("L0.z",), head_groups=3))
    with pytest.raises(ValueError, match="valid"):
        CodebookModel(model, CodebookSpec(sites=("L7.mlp_out",)))
    with pytest.raises(ValueError, match="unknown codebook field"):
        CodebookSpec.from_dict({"sites": ["L0.mlp_out"], "codes": 3})
