"""SAELens SAEs and sparsify coders as mechscope dictionaries: outputs equal the library's own."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae.adapters import AdapterError, SAELensDictionary, SparsifyDictionary, as_dictionary

D_IN, D_SAE = 16, 48


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _saelens(kind: str):
    import sae_lens as sl
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre")
    if kind == "standard":
        sae = sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    elif kind == "topk":
        sae = sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, metadata=meta))
    elif kind == "jumprelu":
        sae = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    elif kind == "gated":
        sae = sl.GatedSAE(sl.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    elif kind == "transcoder":
        sae = sl.Transcoder(sl.TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_IN + 4, metadata=meta,
                                                 apply_b_dec_to_input=False))
    else:
        raise ValueError(kind)
    _randomise(sae)
    if kind == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE) * 0.5)
    return sae


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu", "gated", "transcoder"])
def test_saelens_sae_as_dictionary(kind):
    sae = _saelens(kind)
    d = as_dictionary(sae)
    assert isinstance(d, SAELensDictionary) and d.d_in == D_IN and d.d_dict == D_SAE
    assert d.site_in == "L1.resid_pre"
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_f = sae.encode(x)
        want_x = sae.decode(want_f)
        code = d.encode(x)
        torch.testing.assert_close(code.dense(D_SAE), want_f)
        torch.testing.assert_close(d.decode(code), want_x)
        # the splice identity circuits rely on: decode(code) = dense @ directions + decode(0)
        torch.testing.assert_close(code.dense(D_SAE) @ d.directions + d.b_dec, want_x, atol=1e-5, rtol=1e-5)
    assert d.directions.shape == (D_SAE, d.d_out)
    assert (code.l0() > 0).any() and (code.l0() < D_SAE).all()


def test_skip_transcoders_and_runtime_norms_are_refused():
    import sae_lens as sl

    skip = sl.SkipTranscoder(sl.SkipTranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False))
    with pytest.raises(AdapterError, match="depends on its input"):
        as_dictionary(skip)
    ln = sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm"))
    with pytest.raises(AdapterError, match="layer_norm"):
        as_dictionary(ln)
    with pytest.raises(AdapterError, match="sae_lens.SAE or a sparsify SparseCoder"):
        as_dictionary(torch.nn.Linear(3, 4))


@pytest.mark.parametrize("activation", ["topk", "groupmax"])
def test_sparsify_coder_as_dictionary(activation):
    from sparsify import SparseCoder, SparseCoderConfig

    coder = _randomise(SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=6, activation=activation)))
    d = as_dictionary(coder)
    assert isinstance(d, SparsifyDictionary) and d.d_dict == D_SAE
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = coder.encode(x)
        want = (torch.zeros(32, D_SAE).scatter_add(-1, out.top_indices, out.top_acts)) @ coder.W_dec + coder.b_dec
        code = d.encode(x)
        torch.testing.assert_close(code.values, out.top_acts)
        torch.testing.assert_close(d.decode(code), want)
        torch.testing.assert_close(code.dense(D_SAE) @ d.directions + d.b_dec, want, atol=1e-5, rtol=1e-5)


def test_mechscope_dictionaries_pass_through():
    from mechscope.sae.config import TrainConfig
    from mechscope.sae.factory import build_dictionary

    sae = build_dictionary(TrainConfig(architecture="topk", d_in=D_IN, d_dict=D_SAE, k=4))
    assert as_dictionary(sae) is sae
