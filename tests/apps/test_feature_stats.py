"""Streaming feature statistics against brute-force references over all activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechscope.sae.cards import FeatureCard, load_cards, save_cards
from mechscope.sae.features import (FeatureStats, compute_feature_cards, decoder_neighbours, logit_effects,
                                   logit_histograms)

from .helpers import TinySAE


def _synthetic(seed=0, b=4, n=10, D=5, batches=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        acts = torch.randn(b, n, D, generator=g).mul(torch.arange(1, D + 1) ** 2).relu()
        acts[..., -1] = 0  # a dead feature
        out.append((torch.randint(0, 50, (b, n), generator=g), acts))
    return out


def test_stats_match_brute_force():
    data = _synthetic()
    stats = FeatureStats(5, n_top=4, n_samples=1000, left=2, right=1, n_bins=16)
    for toks, acts in data:
        stats.update(toks, acts)
    every = torch.cat([a.reshape(-1, 5) for _, a in data])
    assert stats.n_tokens == every.shape[0]
    torch.testing.assert_close(stats.density(), (every > 0).float().mean(0))
    torch.testing.assert_close(stats.max, every.max(0).values)
    fired = every > 0
    for i in range(4):
        vals = every[fired[:, i], i].numpy()
        assert stats.mean()[i].item() == pytest.approx(vals.mean(), rel=1e-5)
        edges, counts = stats.histogram(i)
        ref, _ = np.histogram(vals, bins=np.array(edges))
        assert counts == ref.tolist() and sum(counts) == len(vals)
        assert edges[-1] >= vals.max() and math.log2(edges[-1] * 16 / (len(edges) - 1)) % 1 == 0
        # top contexts: the 4 largest values, with their windows
        torch.testing.assert_close(stats.top[0][:, i], every[:, i].topk(4).values)
        # n_samples exceeds the firing count: the sample is every firing value
        got = stats.sample[0][:, i]
        assert int(torch.isfinite(got).sum()) == len(vals)
        assert sorted(stats.sample[2][torch.isfinite(got), i, 2].tolist()) == pytest.approx(sorted(vals.tolist()))
    assert stats.histogram(4) == ([], []) and stats.density()[4] == 0


def test_top_context_windows_are_the_right_tokens():
    data = _synthetic(b=2, n=8, batches=2)
    stats = FeatureStats(5, n_top=3, n_samples=0, left=3, right=2)
    for toks, acts in data:
        stats.update(toks, acts)
    toks = torch.cat([t for t, _ in data])
    acts = torch.cat([a for _, a in data])
    for i in range(4):
        for r in range(3):
            v = stats.top[0][r, i]
            s, p = (acts[..., i] == v).nonzero()[0].tolist()
            for w, off in enumerate(range(-3, 3)):
                q = p + off
                want_tok = toks[s, q].item() if 0 <= q < 8 else -1
                assert stats.top[1][r, i, w].item() == want_tok
                if 0 <= q < 8:
                    assert stats.top[2][r, i, w].item() == acts[s, q, i].item()


def test_sample_is_uniform_over_firing_events():
    """Bottom-k sampling: each of 40 equally likely events is kept with probability 10/40."""
    hits = torch.zeros(40)
    acts = torch.arange(1, 41, dtype=torch.float32).reshape(4, 10, 1)
    for seed in range(300):
        st = FeatureStats(1, n_top=1, n_samples=10, seed=seed)
        st.update(torch.zeros(2, 10, dtype=torch.long), acts[:2])
        st.update(torch.zeros(2, 10, dtype=torch.long), acts[2:])
        hits[st.sample[2][:, 0, st.left].long() - 1] += 1
    freq = hits / 300
    assert (freq - 0.25).abs().max() < 0.1  # binomial sd ≈ 0.025


def test_keep_mask_and_bad_input():
    stats = FeatureStats(2)
    acts = torch.ones(1, 4, 2)
    stats.update(torch.zeros(1, 4, dtype=torch.long), acts, torch.tensor([[False, True, True, True]]))
    assert stats.n_tokens == 3 and stats.count.tolist() == [3, 3]
    with pytest.raises(ValueError, match="expected tokens"):
        stats.update(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, 3))
    with pytest.raises(ValueError, match="n_top"):
        FeatureStats(2, n_top=0)


def test_decoder_statistics_against_dense_reference():
    g = torch.Generator().manual_seed(1)
    dirs, W_U = torch.randn(7, 6, generator=g), torch.randn(6, 11, generator=g)
    tv, ti, bv, bi = logit_effects(dirs, W_U, 3, chunk=2)
    full = dirs @ W_U
    torch.testing.assert_close(tv, full.topk(3, 1).values)
    torch.testing.assert_close(bv, full.sort(1).values[:, :3])
    assert (full.gather(1, ti) == tv).all() and (full.gather(1, bi) == bv).all()
    cos, idx = decoder_neighbours(dirs, 2, chunk=3)
    u = torch.nn.functional.normalize(dirs, dim=1)
    ref = (u @ u.T).fill_diagonal_(-2).topk(2, 1)
    torch.testing.assert_close(cos, ref.values)
    assert (idx == ref.indices).all()
    # our message, or jaxtyping's (a TypeError) under run-time shape checking: both name d_model
    with pytest.raises((ValueError, TypeError), match="d_model"):
        logit_effects(dirs, torch.randn(5, 3), 2)


def test_cards_from_model_match_capture(tiny_gpt2, tmp_path):
    from mechscope.interp.capture import capture

    sae = TinySAE(32, 12, seed=0, bias=-0.2)
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, 100, (16,), generator=g) for _ in range(5)]
    cards = compute_feature_cards(tiny_gpt2, sae, "L1.resid_post", iter(windows), n_tokens=70,
                                  batch_size=2, n_top=3, n_samples=4, left=4, right=1,
                                  dictionary_name="tiny")
    toks = torch.stack(windows).reshape(-1)[:70]
    x = capture(tiny_gpt2, torch.stack(windows), "L1.resid_post")[tiny_gpt2.site("L1.resid_post")]
    f = sae.pre(x.reshape(-1, 32))[:70]
    assert len(cards) == 12 and cards[0].n_tokens == 70
    for c in cards:
        col = f[:, c.index]
        assert c.density == pytest.approx((col > 0).float().mean().item())
        assert c.max_activation == pytest.approx(col.max().item(), rel=1e-5)
        if c.top_contexts:
            top = c.top_contexts[0]
            assert top.activation == pytest.approx(col.max().item(), rel=1e-5)
            pos = int(col.argmax())
            assert top.tokens[top.max_index] == f"<{int(toks[pos])}>"  # no tokenizer: ids shown
            assert sum(c.hist_counts) == int((col > 0).sum())
            qs = [q.quantile for q in c.quantile_contexts]
            assert qs == sorted(qs, reverse=True)
        assert c.site == "L1.resid_post" and c.model == "tiny-gpt2" and c.dictionary == "tiny"
        eff = sae.W_dec[c.index] @ tiny_gpt2.tl.W_U
        assert c.top_logits[0][1] == pytest.approx(eff.max().item(), rel=1e-4)
        assert c.top_logits[0][0] == f"<{int(eff.argmax())}>"
        assert c.top_logit_ids[0] == int(eff.argmax()) and len(c.bottom_logit_ids) == len(c.bottom_logits)
        assert sum(c.logit_hist_counts) == tiny_gpt2.tl.W_U.shape[1]  # every vocabulary token counted once
        for ctx in c.top_contexts:
            assert [f"<{t}>" for t in ctx.ids] == list(ctx.tokens)  # ids travel with the strings
    back = load_cards(save_cards(cards, tmp_path / "cards.json"))
    assert back == cards
    with pytest.raises(ValueError, match="unknown FeatureCard field"):
        FeatureCard.from_dict({**cards[0].to_dict(), "bogus": 1})


def test_site_width_mismatch_is_a_clear_error(tiny_gpt2):
    with pytest.raises(ValueError, match="d_in=16"):
        compute_feature_cards(tiny_gpt2, TinySAE(16, 4), "L0.resid_post", [torch.zeros(8, dtype=torch.long)], 8)


def test_logit_histograms_match_numpy():
    g = torch.Generator().manual_seed(2)
    dirs, W_U = torch.randn(5, 6, generator=g), torch.randn(6, 40, generator=g)
    edges, counts = logit_histograms(dirs, W_U, 8, chunk=2)
    full = (dirs @ W_U).numpy()
    for i in range(5):
        ref_counts, ref_edges = np.histogram(full[i], bins=8)  # numpy: last bin closed, like ours
        np.testing.assert_allclose(edges[i].numpy(), ref_edges, rtol=1e-5, atol=1e-6)
        assert counts[i].tolist() == ref_counts.tolist()
