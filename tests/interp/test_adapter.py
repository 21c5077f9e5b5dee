"""`Model` accessors against TransformerLens' own values and hook activations, `Model.wrap`,
the BOS rule, and `from_config`'s private random state.

Oracles: every accessor is checked against what the running network computes (hook values), so
a weight read with the wrong layout, a norm applied the wrong way or a key/value head mapped to
the wrong query head fails; the raw TransformerLens attributes are the second oracle.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mechscope.interp.models import Model


def _cache(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return cache


def test_attn_weights_equal_transformer_lens(tiny_model):
    tl = tiny_model.tl
    for L in range(tiny_model.n_layers):
        a = tiny_model.attn(L)
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            torch.testing.assert_close(getattr(a, name), getattr(tl, name)[L], msg=name)
        assert a.attn_scale == pytest.approx(float(tl.blocks[L].attn.attn_scale))
        assert a.n_heads == tiny_model.n_heads
    torch.testing.assert_close(tiny_model.W_E, tl.W_E)
    torch.testing.assert_close(tiny_model.W_U, tl.W_U)
    torch.testing.assert_close(tiny_model.b_U, tl.b_U)


def test_qkv_and_output_reproduce_the_hooks(tiny_model, tokens):
    """q, k, v from ln1(resid_pre) and the weights equal hook_q/k/v (pre-rotary); z W_O + b_O
    equals attn_out; GQA: query head h reads stored key/value head h // kv_group."""
    c = _cache(tiny_model, tokens)
    group = tiny_model.n_heads // tiny_model.n_kv_heads
    for L in range(tiny_model.n_layers):
        a = tiny_model.attn(L)
        assert a.kv_group == group
        x = tiny_model.ln(L)(c[f"blocks.{L}.hook_resid_pre"])
        q = torch.einsum("bpd,hde->bphe", x, a.W_Q) + a.b_Q
        k = torch.einsum("bpd,hde->bphe", x, a.W_K) + a.b_K
        v = torch.einsum("bpd,hde->bphe", x, a.W_V) + a.b_V
        torch.testing.assert_close(q, c[f"blocks.{L}.attn.hook_q"], atol=1e-5, rtol=1e-5)
        for h in range(tiny_model.n_heads):
            kv = a.kv_head(h)
            assert kv == h // group
            torch.testing.assert_close(k[:, :, h], c[f"blocks.{L}.attn.hook_k"][:, :, kv], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v[:, :, h], c[f"blocks.{L}.attn.hook_v"][:, :, kv], atol=1e-5, rtol=1e-5)
        out = torch.einsum("bphe,hed->bpd", c[f"blocks.{L}.attn.hook_z"], a.W_O) + a.b_O
        torch.testing.assert_close(out, c[f"blocks.{L}.hook_attn_out"], atol=1e-5, rtol=1e-5)


def test_scores_from_weights_and_scale(tiny_gpt2, tokens):
    """Without rotary the pre-softmax scores are q k^T / attn_scale on the causal triangle."""
    assert tiny_gpt2.attention_direction == "causal"
    c = _cache(tiny_gpt2, tokens)
    for L in range(tiny_gpt2.n_layers):
        a = tiny_gpt2.attn(L)
        q, k = c[f"blocks.{L}.attn.hook_q"], c[f"blocks.{L}.attn.hook_k"]
        scores = torch.einsum("bihe,bjhe->bhij", q, k) / a.attn_scale
        tri = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
        got = c[f"blocks.{L}.attn.hook_attn_scores"]
        torch.testing.assert_close(scores[..., tri], got[..., tri], atol=1e-5, rtol=1e-5)


def test_norms_equal_the_hooks(tiny_model, tokens):
    c = _cache(tiny_model, tokens)
    kind = "layernorm" if tiny_model is not None and tiny_model.cfg.normalization_type == "LN" else "rmsnorm"
    for L in range(tiny_model.n_layers):
        for which in (1, 2):
            norm = tiny_model.ln(L, which)
            assert norm.kind == kind and norm.centred == (kind == "layernorm")
            x = c[f"blocks.{L}.hook_resid_pre" if which == 1 else f"blocks.{L}.hook_resid_mid"]
            xt, sigma = norm.normalise(x)
            torch.testing.assert_close(xt, c[f"blocks.{L}.ln{which}.hook_normalized"])
            torch.testing.assert_close(sigma, c[f"blocks.{L}.ln{which}.hook_scale"][..., 0])
            # the callable applies the whole layer: the TransformerLens module's own output
            module = getattr(tiny_model.tl.blocks[L], f"ln{which}")
            torch.testing.assert_close(norm(x), module(x))
    final = tiny_model.ln_final
    resid = c[f"blocks.{tiny_model.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(final.normalise(resid)[0], c["ln_final.hook_normalized"])
    logits = tiny_model(tokens)
    torch.testing.assert_close(final(resid) @ tiny_model.W_U + tiny_model.b_U, logits, atol=1e-5, rtol=1e-5)


def test_embeddings_and_positional_scheme(tiny_model, tokens):
    c = _cache(tiny_model, tokens)
    torch.testing.assert_close(tiny_model.W_E[tokens], c["hook_embed"])
    if tiny_model.cfg.positional_embedding_type == "rotary":
        assert tiny_model.positional == "rotary" and tiny_model.W_pos is None
        torch.testing.assert_close(c["blocks.0.hook_resid_pre"], tiny_model.W_E[tokens])
    else:
        assert tiny_model.positional == "standard"
        torch.testing.assert_close(tiny_model.W_pos, tiny_model.tl.W_pos)
        pos = tiny_model.W_pos[: tokens.shape[1]]
        torch.testing.assert_close(c["blocks.0.hook_resid_pre"], tiny_model.W_E[tokens] + pos)
    assert tiny_model.d_head * tiny_model.n_heads == tiny_model.attn(0).W_Q.shape[0] * tiny_model.attn(0).W_Q.shape[2]
    assert tiny_model.dtype == torch.float32 and tiny_model.device.type == "cpu"


def test_no_norm_model_and_bad_arguments():
    m = Model.from_config(dict(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=10,
                               attn_only=True, normalization_type=None, act_fn=None), seed=0)
    x = torch.randn(2, 3, 16)
    assert m.ln(0).kind == "none" and m.ln_final.kind == "none"
    torch.testing.assert_close(m.ln(0)(x), x)
    with pytest.raises(ValueError, match="valid layers 0..0"):
        m.attn(3)
    with pytest.raises(ValueError, match="attention-only"):
        m.ln(0, 2)
    with pytest.raises(ValueError, match="which must be 1"):
        m.ln(0, 3)


def test_run_with_cache_filter_and_early_stop(tiny_gpt2, tokens):
    hook = "blocks.0.hook_resid_post"
    out, cache = tiny_gpt2.run_with_cache(tokens, names_filter=hook, stop_at_layer=1)
    assert set(cache) == {hook}
    torch.testing.assert_close(out, cache[hook])  # stopping at layer 1 returns the stream entering it
    _, full = tiny_gpt2.run_with_cache(tokens)
    torch.testing.assert_close(cache[hook], full[hook])
    torch.testing.assert_close(tiny_gpt2(tokens, stop_at_layer=1), full[hook])


def test_hooks_context_always_removes_its_handles(tiny_gpt2, tokens):
    clean = tiny_gpt2(tokens)

    def count() -> int:
        return sum(len(hp.fwd_hooks) for hp in tiny_gpt2.tl.hook_dict.values())

    before = count()
    with tiny_gpt2.hooks([("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))]):
        changed = tiny_gpt2(tokens)
        assert count() == before + 1
    assert count() == before and not torch.allclose(changed, clean)
    with pytest.raises(KeyError):
        with tiny_gpt2.hooks([("blocks.0.hook_attn_out", lambda act, hook: None)]):
            raise KeyError("inside")
    assert count() == before
    torch.testing.assert_close(tiny_gpt2(tokens), clean)


class _Tok:
    def __init__(self, bos, eos):
        self.bos_token_id, self.eos_token_id = bos, eos


def test_bos_rule(tiny_gpt2):
    from mechscope.interp.tokens import bos_token_id

    assert bos_token_id(_Tok(5, 7)) == 5 and bos_token_id(_Tok(None, 7)) == 7
    assert bos_token_id(_Tok(None, None)) is None and bos_token_id(None) is None
    assert tiny_gpt2.bos_id is None  # no tokenizer, no override
    with pytest.raises(ValueError, match="'tiny-gpt2' has no BOS token.*the probe"):
        tiny_gpt2.require_bos_id("the probe")
    m = Model(tiny_gpt2.tl, "x", bos=3)
    assert m.bos_id == 3 and m.require_bos_id() == 3


def test_wrap_accepts_model_or_hooked_transformer(tiny_gpt2):
    assert Model.wrap(tiny_gpt2) is tiny_gpt2
    w = Model.wrap(tiny_gpt2.tl)
    assert isinstance(w, Model) and w.tl is tiny_gpt2.tl and w.source == "user"
    assert w.name == tiny_gpt2.tl.cfg.model_name
    with pytest.raises(TypeError, match="Model or a transformer_lens HookedTransformer, got builtins.str"):
        Model.wrap("gpt2")


def _rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


@pytest.mark.parametrize("cfg_seed", [None, 3], ids=["seed-arg", "tl-cfg-seed"])
def test_from_config_is_deterministic_and_keeps_global_rng(tiny_model, cfg_seed):
    cfg = {**tiny_model.config_dict(), "seed": cfg_seed}
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    before = _rng_states()
    a = Model.from_config(cfg, seed=7)
    b = Model.from_config(cfg, seed=7)
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert all(np.array_equal(x, y) for x, y in zip(before[2][1:2], after[2][1:2]))
    assert before[2][2:] == after[2][2:]
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if cfg_seed is None:  # a different seed gives different weights (TL's cfg seed wins otherwise)
        c = Model.from_config(cfg, seed=8)
        assert not torch.equal(c.attn(0).W_Q, a.attn(0).W_Q)


def test_only_interp_touches_transformer_lens():
    """The adapter stays the only adapter: no ``.tl`` reach or BOS lookup of its own in
    circuits/, sae/, apps/ (the zoo and interp/ may; imports are tests/test_layering.py's job)."""
    import re
    from pathlib import Path

    import mechscope.interp

    root = Path(mechscope.interp.__file__).resolve().parents[1]
    rules = {r"\.tl\b": "model.tl",
             r"\bbos_token_id\b": "a BOS lookup (use Model.bos_id / interp.tokens.bos_token_id)"}
    found = []
    for pkg in ("circuits", "sae", "apps"):
        for path in sorted((root / pkg).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                for pattern, what in rules.items():
                    if re.search(pattern, code):
                        found.append(f"{path.relative_to(root)}:{n}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
