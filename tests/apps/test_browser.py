"""Feature-browser builders and the offline bundle (no browser needed)."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re

import pytest

from mechscope.apps.browser import (FeatureView, contexts_html, explanation, feature_figures, histogram_figure,
                                    index_figure, logit_histogram_figure, logits_figure, token_summary,
                                    write_feature_browser)
from mechscope.apps.html import script_json
from mechscope.sae.cards import FeatureCard

from .helpers import NASTY


def test_cards_carry_the_injection_tokens(nasty_cards):
    """The fixture is a real attack surface: the strings reach contexts and top logits."""
    assert len(nasty_cards) == 40 and sum(c.dead for c in nasty_cards) == 3
    toks = {t for c in nasty_cards for ctx in c.top_contexts for t in ctx.tokens}
    assert set(NASTY) <= toks
    assert {t for t, _ in nasty_cards[0].top_logits[:2]} == set(NASTY)


def test_index_figure_one_webgl_trace(nasty_cards):
    fig = index_figure(nasty_cards)
    assert [t.type for t in fig.data] == ["scattergl"]
    assert list(fig.data[0].customdata) == list(range(40))
    live = index_figure(nasty_cards, hide_dead=True, colour_by="density")
    assert len(live.data[0].x) == 37 and min(live.data[0].x) > min(fig.data[0].x)
    sparse = index_figure(nasty_cards, max_density=0.05)
    assert all(nasty_cards[i].density <= 0.05 for i in sparse.data[0].customdata)
    with pytest.raises(ValueError, match="colour_by must be one of"):
        index_figure(nasty_cards, colour_by="nope")


def test_feature_figures(nasty_cards):
    card = next(c for c in nasty_cards if not c.dead)
    h = histogram_figure(card)
    assert [t.type for t in h.data] == ["bar"] and list(h.data[0].y) == list(card.hist_counts)
    assert sum(h.data[0].width) == pytest.approx(card.hist_edges[-1] - card.hist_edges[0])
    lg = logits_figure(nasty_cards[0])
    assert len(lg.data[0].x) == 10 and list(lg.data[0].x[:5]) == sorted(v for _, v in nasty_cards[0].top_logits)
    assert not any("<script>" in t for t in lg.layout.yaxis.ticktext)
    # Plotly decodes &amp; &lt; &gt; (only): after that decoding each label IS the token string
    rows = list(reversed(nasty_cards[0].top_logits)) + list(reversed(nasty_cards[0].bottom_logits))
    assert [html.unescape(t) for t in lg.layout.yaxis.ticktext] == [t for t, _ in rows]
    assert not any("&quot;" in t or "&#" in t for t in lg.layout.yaxis.ticktext)
    lh = logit_histogram_figure(card)
    assert sum(lh.data[0].y) == sum(card.logit_hist_counts) > 0


def test_dead_feature_gets_no_empty_chart(nasty_cards):
    dead = nasty_cards[-1]
    assert dead.dead and sum(dead.hist_counts) == 0
    with pytest.raises(ValueError, match="never fired"):
        histogram_figure(dead)
    figs = feature_figures(dead)
    assert [f.layout.title.text.split(": ")[1] for f in figs] == ["direct logit effect", "logit effect over the vocabulary"]
    assert all(len(f.data[0].x) > 0 for f in figs)
    page = FeatureView(dead)._repr_html_()
    assert "dead" in page and "never fired on the 128 tokens" in page
    assert "Top contexts" not in page and "Quantile samples" not in page
    assert explanation(dead).startswith("dead: never fired on 128 tokens")
    idx = index_figure(nasty_cards)
    assert idx.layout.title.text.startswith("37 live features · 3 dead (never fired)")


def test_token_summary_counts_focus_tokens(nasty_cards):
    for card in nasty_cards:
        focus = [c.tokens[c.max_index] for c in card.top_contexts]
        summary = token_summary(card, k=10)
        assert sum(n for _, n in summary) == len(focus) or len(summary) == 10
        assert all(focus.count(t) == n for t, n in summary)
        assert [n for _, n in summary] == sorted((n for _, n in summary), reverse=True)


def test_html_fragments_escape_model_text(nasty_cards):
    html = contexts_html(nasty_cards[0]) + FeatureView(nasty_cards[0])._repr_html_()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert contexts_html(nasty_cards[-1]) == "<p>This feature never fired.</p>"


def test_script_json_cannot_close_a_script():
    text = script_json({"t": "</script><script>alert(1)</script>", "u": "\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script>", "u": "\u2028&"}


def test_bundle_layout(nasty_cards, tmp_path):
    index = write_feature_browser(nasty_cards, tmp_path / "fb", chunk_size=16)
    assert index == tmp_path / "fb" / "index.html"
    chunks = sorted(p.name for p in (tmp_path / "fb" / "features").iterdir())
    assert chunks == ["chunk_00000.js", "chunk_00001.js", "chunk_00002.js"]
    page = index.read_text()
    assert "Content-Security-Policy" in page and "https://" not in page.split("</title>")[0]
    for path in [index, *(tmp_path / "fb" / "features").iterdir()]:
        text = path.read_text()
        for bad in NASTY:
            assert bad not in text, f"raw injection string in {path.name}"
    # the chunk files hold the cards: parse one back
    body = (tmp_path / "fb" / "features" / "chunk_00001.js").read_text()
    cards = json.loads(re.match(r"window\.mechscopeChunk\(1, (.*)\);\s*$", body, re.S).group(1))
    assert [c["index"] for c in cards] == list(range(16, 32)) and FeatureCard.from_dict(cards[0]) == nasty_cards[16]
    # plotly.js once, next to the page: the index itself stays small
    assert (tmp_path / "fb" / "plotly.min.js").stat().st_size > 1_000_000
    assert len(page) < 60_000 and "plotly.min.js" in page
    # rewriting a smaller dictionary leaves no stale chunks behind
    write_feature_browser(nasty_cards[:5], tmp_path / "fb", chunk_size=16)
    assert sorted(p.name for p in (tmp_path / "fb" / "features").iterdir()) == ["chunk_00000.js"]


def test_bundle_rejects_bad_cards(nasty_cards, tmp_path):
    with pytest.raises(ValueError, match="no feature cards"):
        write_feature_browser([], tmp_path)
    with pytest.raises(ValueError, match="one per feature"):
        write_feature_browser([dataclasses.replace(nasty_cards[1], index=7)], tmp_path)
    with pytest.raises(ValueError, match="chunk_size"):
        write_feature_browser(nasty_cards, tmp_path, chunk_size=0)


def test_build_feature_browser_end_to_end(tiny_gpt2, tmp_path):
    import torch

    from mechscope.apps.browser import build_feature_browser
    from mechscope.sae.cards import load_cards

    from .helpers import TinySAE

    windows = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(0))
    index = build_feature_browser(tiny_gpt2, TinySAE(32, 6), "L0.resid_post", [windows], 48, tmp_path / "fb",
                                  n_top=2, n_samples=2)
    cards = load_cards(tmp_path / "fb" / "cards.json")
    assert index.exists() and len(cards) == 6 and cards[0].n_tokens == 48


def test_bundle_is_readable_by_others(nasty_cards, tmp_path):
    """Under the usual umask 022 every file is 0644 and every folder 0755 (a web server or a
    colleague can read the browser)."""
    old = os.umask(0o022)
    try:
        write_feature_browser(nasty_cards, tmp_path / "fb", chunk_size=16)
    finally:
        os.umask(old)
    paths = [tmp_path / "fb", *(tmp_path / "fb").rglob("*")]
    assert len(paths) >= 6
    for p in paths:
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p
