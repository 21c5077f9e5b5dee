"""Model loading, sites, capture and interventions against TransformerLens and transformers."""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.capture import capture
from mechscope.interp.intervene import ablate, patch, splice
from mechscope.interp.models import ModelSpecError, load_model
from mechscope.interp.sites import Site, SiteError, list_sites


def test_residual_stream_identity_every_layer(tiny_model, tokens):
    sites = [f"L{layer}.{k}" for layer in range(tiny_model.n_layers)
             for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")]
    acts = capture(tiny_model, tokens, sites)
    for layer in range(tiny_model.n_layers):
        a = {k: acts[Site(layer, k)] for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")}
        torch.testing.assert_close(a["resid_mid"], a["resid_pre"] + a["attn_out"])
        torch.testing.assert_close(a["resid_post"], a["resid_pre"] + a["attn_out"] + a["mlp_out"])
        if layer + 1 < tiny_model.n_layers:
            torch.testing.assert_close(acts[Site(layer + 1, "resid_pre")], a["resid_post"])


def test_capture_equals_run_with_cache(tiny_model, tokens):
    sites = ["L0.resid_post", "L1.attn_out", "L1.z", "L0.z.H2", "L1.pattern.H1", "L0.mlp_post", "L1.mlp_in"]
    acts = capture(tiny_model, tokens, sites)
    _, cache = tiny_model.tl.run_with_cache(tokens)
    for s in sites:
        site = Site.parse(s)
        if site.kind == "mlp_in":  # off by default in TL: it is the LN2 input == resid_mid
            ref = cache[Site(site.layer, "resid_mid").hook_name]
        else:
            ref = site.select(cache[site.hook_name])
        torch.testing.assert_close(acts[site], ref, msg=s)
    assert not tiny_model.tl.cfg.use_hook_mlp_in  # flag restored


def test_capture_stops_early(tiny_gpt2, tokens):
    seen = []
    handles = [blk.register_forward_pre_hook(lambda m, i, n=n: seen.append(n))
               for n, blk in enumerate(tiny_gpt2.tl.blocks)]
    unembed = tiny_gpt2.tl.unembed.register_forward_hook(lambda m, i, o: seen.append("unembed"))
    _, cache = tiny_gpt2.tl.run_with_cache(tokens)
    seen.clear()
    try:
        for site, blocks in (("L0.resid_post", [0]), ("L0.attn_out", [0]), ("L1.resid_pre", [0, 1]),
                             ("L1.z.H1", [0, 1]), ("L1.resid_post", [0, 1])):
            got = capture(tiny_gpt2, tokens, site)
            s = Site.parse(site)
            torch.testing.assert_close(got[s], s.select(cache[s.hook_name]))
            # the blocks started; the unembedding never runs
            assert seen == blocks, site
            seen.clear()
    finally:
        for h in handles + [unembed]:
            h.remove()


def _n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in model.tl.hook_dict.values())


def test_hooks_removed_after_exception(tiny_gpt2, tokens):
    before = _n_hooks(tiny_gpt2)

    def boom(act):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with splice(tiny_gpt2, {"L0.attn_out": boom}):
            tiny_gpt2(tokens)
    assert _n_hooks(tiny_gpt2) == before
    with pytest.raises(RuntimeError):
        with patch(tiny_gpt2, {"L0.resid_post": torch.zeros(32)}):
            raise RuntimeError("user error inside the block")
    assert _n_hooks(tiny_gpt2) == before
    clean = tiny_gpt2(tokens)
    torch.testing.assert_close(tiny_gpt2(tokens), clean)


def test_interventions_change_what_they_should(tiny_gpt2, tokens):
    clean = tiny_gpt2(tokens)
    with ablate(tiny_gpt2, "L1.mlp_out", "zero"):
        acts = capture(tiny_gpt2, tokens, ["L1.mlp_out", "L1.resid_post", "L1.resid_mid"])
    assert acts[Site(1, "mlp_out")].abs().max() == 0
    torch.testing.assert_close(acts[Site(1, "resid_post")], acts[Site(1, "resid_mid")])
    # splicing the identity changes nothing; patching a site with its own clean value neither
    with splice(tiny_gpt2, {"L0.resid_post": lambda x: x}):
        torch.testing.assert_close(tiny_gpt2(tokens), clean)
    own = capture(tiny_gpt2, tokens, "L0.z")[Site(0, "z")]
    with patch(tiny_gpt2, {"L0.z": own}):
        torch.testing.assert_close(tiny_gpt2(tokens), clean)
    # zero-ablating one head equals zeroing its slice of z by hand
    with ablate(tiny_gpt2, "L0.z.H1"):
        ablated = tiny_gpt2(tokens)
    manual = own.clone()
    manual[:, :, 1] = 0
    with patch(tiny_gpt2, {"L0.z": manual}):
        torch.testing.assert_close(tiny_gpt2(tokens), ablated)
    # mean ablation with given means; only at chosen positions
    with ablate(tiny_gpt2, "L0.attn_out", "mean", means={"L0.attn_out": torch.ones(32)}, positions=[3]):
        got = capture(tiny_gpt2, tokens, "L0.attn_out")[Site(0, "attn_out")]
    assert torch.all(got[:, 3] == 1)
    ref = capture(tiny_gpt2, tokens, "L0.attn_out")[Site(0, "attn_out")]
    torch.testing.assert_close(got[:, :3], ref[:, :3])
    with pytest.raises(ValueError, match="valid: zero, mean"):
        with ablate(tiny_gpt2, "L0.attn_out", "resample"):
            pass


def test_bad_sites_name_the_valid_ones(tiny_gpt2):
    with pytest.raises(SiteError, match="valid layers 0..1"):
        tiny_gpt2.site("L5.resid_post")
    with pytest.raises(SiteError, match="resid_pre, resid_mid"):
        tiny_gpt2.site("L0.residual")
    with pytest.raises(SiteError, match="valid heads 0..3"):
        tiny_gpt2.site("L0.z.H9")
    with pytest.raises(SiteError, match="has no heads"):
        Site(0, "resid_post", 1)
    assert str(Site.parse("L1.z.H2")) == "L1.z.H2" and Site.parse("L1.z.H2").hook_name == "blocks.1.attn.hook_z"
    sites = tiny_gpt2.sites()
    assert Site(1, "resid_post") in sites and Site(2, "resid_post") not in sites
    assert Site(0, "z", 3) in tiny_gpt2.sites(per_head=True) and Site(0, "z", 3) not in sites
    assert all(s.kind not in ("mlp_out", "resid_mid") for s in list_sites(2, attn_only=True))


def test_bad_spec_lists_the_zoo(tmp_path):
    from mechscope.interp import zoo

    with pytest.raises(ModelSpecError) as err:
        load_model(str(tmp_path / "missing-folder"))
    assert all(name in str(err.value) for name in zoo.names())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="config.json"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_hf_folder_logits_match_transformers(which, hf_gpt2_dir, hf_llama_dir):
    from transformers import AutoModelForCausalLM

    path = hf_gpt2_dir if which == "gpt2" else hf_llama_dir
    model = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    toks = torch.randint(0, 120, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(toks).logits
        got = model(toks)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # folded LayerNorm keeps log-probs
    folded = load_model(path, fold_ln=True)
    with torch.no_grad():
        torch.testing.assert_close(folded(toks).log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=1e-4)
