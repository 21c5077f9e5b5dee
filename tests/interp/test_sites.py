"""Sites from TransformerLens hook names and back, and key/value heads under grouped-query attention."""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.capture import capture
from mechscope.interp.sites import ALL_KINDS, HEAD_KINDS, Site, SiteError


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hook_names_round_trip(kind):
    site = Site(3, kind)
    assert Site.parse(site.hook_name) == site
    assert Site.parse(f"  {site.hook_name} ") == site


def test_unknown_hook_names_say_what_is_valid():
    for bad in ("blocks.3.hook_nope", "hook_embed", "blocks.x.hook_resid_post", "ln_final.hook_normalized"):
        with pytest.raises(SiteError, match="hook name of a block"):
            Site.parse(bad)
    with pytest.raises(SiteError, match="got int"):
        Site.parse(3)


def test_capture_by_hook_name_reads_the_hook(tiny_gpt2, tokens):
    by_hook = capture(tiny_gpt2, tokens, ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"])
    _, cache = tiny_gpt2.tl.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"])
    assert torch.equal(by_hook[Site(1, "resid_pre")], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(by_hook[Site(0, "z")], cache["blocks.0.attn.hook_z"])


def test_gqa_key_value_heads(tiny_llama, tokens):
    assert tiny_llama.n_heads == 4 and tiny_llama.n_kv_heads == 2
    assert tiny_llama.site("L1.k.H1") == Site(1, "k", 1)
    assert tiny_llama.site("L1.q.H3") == Site(1, "q", 3)
    for bad in ("L1.k.H2", "L0.v.H3"):
        with pytest.raises(SiteError, match="valid key/value heads 0..1"):
            tiny_llama.site(bad)
    per_head = tiny_llama.sites(per_head=True)
    assert {s.head for s in per_head if s.kind == "k" and s.layer == 0} == {None, 0, 1}
    assert {s.head for s in per_head if s.kind == "q" and s.layer == 0} == {None, 0, 1, 2, 3}
    # the KV head's slice is what TransformerLens' hook holds for that KV head
    got = capture(tiny_llama, tokens, ["L1.v.H1"])[Site(1, "v", 1)]
    _, cache = tiny_llama.tl.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_v"])
    assert cache["blocks.1.attn.hook_v"].shape[2] == 2
    assert torch.equal(got, cache["blocks.1.attn.hook_v"][:, :, 1])


def test_every_listed_site_validates(tiny_llama, tiny_gpt2):
    for model in (tiny_llama, tiny_gpt2):
        for site in model.sites(per_head=True):
            assert model.site(str(site)) == site
            if site.kind in HEAD_KINDS and site.head is None:
                assert model.site(site.hook_name) == site
