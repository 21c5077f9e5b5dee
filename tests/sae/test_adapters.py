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
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary

    sae = build_dictionary(TopKConfig(d_in=D_IN, d_dict=D_SAE, k=4))
    assert as_dictionary(sae) is sae


PRETRAINED = r'''
import sys, torch
from pathlib import Path
import sae_lens as sl
from sae_lens.saes.sae import SAEMetadata

# a stand-in for the hub: SAELens' own files for one SAE of a real release, in the HF cache layout
cache, rev = Path(sys.argv[1]), "a" * 40
repo = cache / "models--jbloom--GPT2-Small-SAEs-Reformatted"
torch.manual_seed(0)
sae = sl.StandardSAE(sl.StandardSAEConfig(d_in=768, d_sae=64, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")))
with torch.no_grad():
    sae.W_enc.normal_()
    sae.b_enc.normal_()
sae.save_model(repo / "snapshots" / rev / "blocks.0.hook_resid_pre")
(repo / "refs").mkdir(parents=True)
(repo / "refs" / "main").write_text(rev)

from mechscope.sae.adapters import load_pretrained
d = load_pretrained("sae_lens:gpt2-small-res-jb/blocks.0.hook_resid_pre")
x = torch.randn(8, 768)
with torch.no_grad():
    assert torch.allclose(d.encode(x).dense(64), sae.encode(x))
print(d.site_in, d.d_dict)
try:
    load_pretrained("sae_lens:gpt2-small-res-jb/blocks.99.hook_resid_pre")
except ValueError as e:
    print("refused:", "blocks.99" in str(e))
'''


def test_pretrained_release_through_saelens_loader_offline(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PRETRAINED, str(tmp_path / "hub")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["L0.resid_pre", "64", "refused:", "True"]


def test_bad_pretrained_specs_say_the_form():
    from mechscope.sae.adapters import parse_saelens_spec

    assert parse_saelens_spec("sae_lens:gemma-scope-2b-pt-res/layer_0/width_16k/average_l0_105") == (
        "gemma-scope-2b-pt-res", "layer_0/width_16k/average_l0_105")
    for bad in ("sae_lens:", "sae_lens:release", "sae_lens:/id"):
        with pytest.raises(ValueError, match="RELEASE/SAE_ID"):
            parse_saelens_spec(bad)
