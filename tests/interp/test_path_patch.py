"""Path patching against oracles: every reader = ablation, no reader = clean, exact additivity on
a linear (frozen-attention, LayerNorm-free) model, and the planted model's single path."""

from __future__ import annotations

import pytest
import torch

from mechscope.interp.capture import capture
from mechscope.interp.intervene import ablate, patch, path_patch, route, write_delta
from mechscope.interp.models import Model

LINEAR = dict(n_layers=3, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=50, attn_only=True,
              normalization_type=None, act_fn=None)


def _readers(model, sender):
    """Every input downstream of ``sender`` (its layer's MLP for attention senders)."""
    s = model.site(sender)
    out = ["logits"]
    first = s.layer + (0 if s.kind == "resid_pre" else 1)
    for layer in range(first, model.n_layers):
        out += [f"L{layer}.q", f"L{layer}.k", f"L{layer}.v"]
    if not model.attn_only:
        mlp_from = s.layer + (1 if s.kind in ("mlp_out", "mlp_post") else 0)
        out += [f"L{layer}.mlp_in" for layer in range(mlp_from, model.n_layers)]
    return out


@pytest.mark.parametrize("sender", ["L0.z.H1", "L0.mlp_out", "L0.resid_pre", "L1.z"])
def test_all_readers_is_ablation_and_none_is_clean(tiny_model, tokens, sender):
    m = tiny_model
    clean = m(tokens)
    with ablate(m, sender, "mean"):
        ablated = m(tokens)
    assert (ablated - clean).abs().max() > 1e-3  # the sender matters
    full = path_patch(m, tokens, sender, _readers(m, sender), "mean")
    torch.testing.assert_close(full, ablated, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(path_patch(m, tokens, sender, [], "mean"), clean, atol=1e-5, rtol=1e-5)


def test_patch_prompts_and_positions(tiny_gpt2, tokens):
    m, corrupt = tiny_gpt2, tokens.roll(1, dims=0)
    ref = capture(m, corrupt, ["L0.z"])[m.site("L0.z")][:, :, 2]
    with patch(m, {"L0.z.H2": ref}):
        patched = m(tokens)
    got = path_patch(m, tokens, "L0.z.H2", _readers(m, "L0.z.H2"), ref_tokens=corrupt)
    torch.testing.assert_close(got, patched, atol=2e-5, rtol=1e-4)
    with patch(m, {"L0.z.H2": ref}, positions=[3, 5]):
        patched = m(tokens)
    got = path_patch(m, tokens, "L0.z.H2", _readers(m, "L0.z.H2"), ref_tokens=corrupt, positions=[3, 5])
    torch.testing.assert_close(got, patched, atol=2e-5, rtol=1e-4)


def test_additive_on_a_linear_model(tokens):
    # no LayerNorm, attention patterns frozen at their clean values: the logits are linear in
    # every residual write, so the effects of disjoint receiver sets add up exactly
    m = Model.from_config(LINEAR, name="linear", seed=3)
    toks = tokens % 50
    pats = capture(m, toks, [f"L{layer}.pattern" for layer in range(3)])
    frozen = {s: v for s, v in pats.items()}

    def effect(receivers):
        with patch(m, frozen):
            return path_patch(m, toks, "L0.z.H0", receivers, "zero") - m(toks)

    groups = [["L1.v.H0"], ["L1.v.H1", "L1.v.H3"], ["L1.v.H2"], ["L2.v"], ["logits"],
              ["L1.q", "L1.k", "L2.q", "L2.k"]]
    parts = [effect(g) for g in groups]
    total = effect([r for g in groups for r in g])
    torch.testing.assert_close(sum(parts), total, atol=1e-5, rtol=1e-5)
    assert parts[-1].abs().max() < 1e-6  # frozen patterns: queries and keys carry nothing
    assert min(p.abs().max() for p in parts[:-1]) > 1e-4
    with patch(m, frozen):  # every reader of the sender: the ablation
        clean = m(toks)
        with ablate(m, "L0.z.H0", "zero"):
            torch.testing.assert_close(clean + total, m(toks), atol=1e-5, rtol=1e-5)


def test_the_planted_single_path():
    # planted-copy: head L0H1 reaches the logits only through L1H2's values (known.py)
    from mechscope.circuits.known import planted_copy_model, planted_setup

    m = planted_copy_model()
    s = planted_setup(m, n_prompts=6)
    met = lambda logits: float(s.metric(logits.detach()).mean())  # noqa: E731
    clean = met(m(s.clean))
    pp = lambda r: met(path_patch(m, s.clean, "L0.z.H1", r, ref_tokens=s.patch)) - clean  # noqa: E731
    with patch(m, {"L0.z.H1": capture(m, s.patch, ["L0.z.H1"])[m.site("L0.z.H1")]}):
        full = met(m(s.clean)) - clean
    assert full < -5
    assert pp(["L1.v.H2"]) == pytest.approx(full, rel=0.02)
    assert abs(pp(["logits"])) < 1e-5  # it writes the stash, which the unembedding never reads
    assert abs(pp(["L1.q.H2", "L1.k.H2"])) < 0.05 * abs(full)
    assert abs(pp(["L1.v.H0", "L1.v.H1", "L1.v.H3"])) < 0.05 * abs(full)


def test_route_and_write_delta_errors(tiny_gpt2, tokens):
    m = tiny_gpt2
    with pytest.raises(ValueError, match="before sender"):
        path_patch(m, tokens, "L1.z.H0", ["L1.q.H0"])
    with pytest.raises(ValueError, match="valid receivers"):
        path_patch(m, tokens, "L0.z.H0", ["L1.z.H0"])
    with pytest.raises(ValueError, match="sender kinds"):
        write_delta(m, m.site("L0.q"), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="valid: 'zero', 'mean'"):
        path_patch(m, tokens, "L0.z.H0", ["logits"], reference="median")
    # flags are restored: afterwards the model runs without split q/k/v inputs
    with route(m, torch.zeros(3, 16, 32), ["L1.q.H0", "L1.mlp_in"]):
        assert m.tl.cfg.use_split_qkv_input
    assert not m.tl.cfg.use_split_qkv_input and not m.tl.cfg.use_hook_mlp_in
