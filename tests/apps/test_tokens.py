"""Whitespace tokens are visible in labels: the rule (`apps.html.visible_token`) on known strings,
the page's copy of it (assets/tokens.js) equal to it in Chromium, and the tick labels and token
strip of a graph page, read back from the rendered DOM, equal to the expected visible strings."""

from __future__ import annotations

import json

import pytest

from mechscope.apps.graph_viewer import write_graph_html
from mechscope.apps.html import visible_token
from mechscope.circuits.graph import Graph, GraphMeta, Node

from .test_in_browser import READY, WAIT, XTICKS, _clean

# token -> what a person must read on a tick, written out by hand (the oracle)
EXPECTED = {
    " ": "\u2423", "  ": "\u2423\u2423", "\n": "\u21b5", "\n\n": "\u21b5\u21b5", "\t": "\u21e5", "\r\n": "\u240d\u21b5",
    " the": "\u2423the", "the ": "the\u2423", " \n": "\u2423\u21b5", "a b": "a b", "a  b": "a\u2423\u2423b",
    "\u00a0": "<U+00A0>", "x\u200b": "x<U+200B>", "\x00": "<U+0000>", "<0xE2>": "<0xE2>",
    "Romeo": "Romeo", "\u00e9t\u00e9": "\u00e9t\u00e9", "\U0001f600": "\U0001f600",
}


@pytest.mark.parametrize("token", list(EXPECTED))
def test_visible_token_on_known_strings(token):
    assert visible_token(token) == EXPECTED[token]


def _graph(tokens: tuple[str, ...]) -> Graph:
    g = Graph(meta=GraphMeta("routes", "share", "m", 1, 1, ("".join(tokens),), (tokens,)))
    for p in range(len(tokens)):
        g.add_node(Node("embedding", -1, p))
        g.add_node(Node("head", 0, p, index=0))
        g.add_edge(f"embed@{p}", f"L0.H0@{p}", 1.0 + p)
    return g


def test_graph_token_strip_shows_whitespace_tokens(chrome, tmp_path):
    tokens = tuple(EXPECTED)
    page = chrome.page(write_graph_html(_graph(tokens), tmp_path / "ws.html").as_uri())
    page.wait_for(READY, timeout=WAIT)
    assert page.eval(XTICKS) == [EXPECTED[t] for t in tokens]  # what the SVG shows, nothing blank
    # the page's own rule (tokens.js) agrees with the Python one on every string
    assert page.eval(f"{json.dumps(tokens)}.map(window.mechscopeVisible)") == [EXPECTED[t] for t in tokens]
    # hovering the strip gives the raw string
    strip = page.eval("document.getElementById('graph')._fullData.filter(t => t.name === 'tokens')[0].hovertext")
    assert strip == [f"token {p}: {repr(t).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}"
                     for p, t in enumerate(tokens)]
    _clean(page)


def test_feature_page_logit_ticks_and_chips_show_whitespace_tokens(chrome, nasty_cards, tmp_path):
    import dataclasses

    from mechscope.apps.browser import write_feature_browser

    top = ((" ", 3.0), ("\n", 2.5), (" the", 2.0), ("\t", 1.5), ("  ", 1.0))
    card = dataclasses.replace(nasty_cards[3], top_logits=top, top_logit_ids=(1, 2, 3, 4, 5))
    cards = [*nasty_cards[:3], card, *nasty_cards[4:]]
    index = write_feature_browser(cards, tmp_path / "fb", chunk_size=16)
    page = chrome.page(index.as_uri() + "#f3")
    page.wait_for("document.querySelector('#f-logits .ytick text') !== null", timeout=WAIT)
    ticks = page.eval("Array.from(document.querySelectorAll('#f-logits .ytick text')).map(t => t.textContent)")
    assert ticks[:len(top)] == [EXPECTED[t] for t, _ in reversed(top)]  # rows 0..4: the promoted tokens, reversed
    chips = page.eval("Array.from(document.querySelectorAll('#f-explain .chip')).map(c => [c.textContent, c.title])")
    assert [c[0] for c in chips[:5]] == [EXPECTED[t] for t, _ in top]
    assert chips[0][1].startswith('" " · id 1')  # the raw string in the hover
    _clean(page)
