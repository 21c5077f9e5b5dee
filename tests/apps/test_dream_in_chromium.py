"""``mechscope features --dream`` in a real headless Chromium: the feature page shows the EPO
frontier (with the dataset's max marked) and the dreamed prompts, whose text is the decoded prompt.
Skipped when chromium is absent (Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import json

import pytest

from mechscope.apps.browser import write_feature_browser
from mechscope.apps.cli import main
from mechscope.circuits.dream_result import DreamMember, DreamResult

from .helpers import NASTY
from .test_browser_in_chromium import WAIT, _clean, _open, _screenshot, visible

BUDGET = ["--dream-steps", "3", "--dream-population", "3", "--dream-children", "4", "--dream-length", "5"]
PROMPTS = "Array.from(document.querySelectorAll('#f-dream-prompts .dream-prompt'))"


def _dreamed(page, feature):
    page.wait_for(f"document.getElementById('f-dream').getAttribute('data-dream') === '{feature}'", timeout=WAIT)


@pytest.fixture(scope="module")
def dreamed_browser(tmp_path_factory):
    from mechscope.sae.config import TopKConfig
    from mechscope.sae.factory import build_dictionary
    from mechscope.sae.io import save_dictionary

    root = tmp_path_factory.mktemp("dreams")
    sae = build_dictionary(TopKConfig(d_in=128, d_dict=24, k=4, site_in="L1.resid_post"))
    folder = save_dictionary(sae, root / "sae")
    assert main(["features", str(folder), "--out", str(root / "fb"), "--tokens", "256", "--n-ctx", "32",
                 "--dream", "2", *BUDGET]) == 0
    return root / "fb"


def test_feature_page_shows_the_frontier_and_the_decoded_prompts(chrome, dreamed_browser):
    from mechscope.interp.models import load_model
    from mechscope.sae.cards import load_cards

    cards = load_cards(dreamed_browser / "cards.json")
    dreams = {int(i): DreamResult.from_json(r)
              for i, r in json.loads((dreamed_browser / "dreams.json").read_text())["dreams"].items()}
    live = sorted((c for c in cards if not c.dead), key=lambda c: (-c.density, c.index))
    assert sorted(dreams) == sorted(c.index for c in live[:2])  # --dream 2: the two most frequent
    tok = load_model("gpt2-shakespeare").tokenizer
    for feature, result in dreams.items():
        page = _open(chrome, dreamed_browser / "index.html", feature)
        _dreamed(page, feature)
        plot = "document.getElementById('f-dream-plot')"
        assert page.eval(f"{plot}._fullData[0].x") == pytest.approx([m.cross_entropy for m in result.frontier])
        assert page.eval(f"{plot}._fullData[0].y") == pytest.approx([m.activation for m in result.frontier])
        assert page.eval(f"{plot}._fullLayout.shapes[0].y0") == pytest.approx(cards[feature].max_activation)
        assert page.eval(f"{plot}.offsetParent !== null")
        # the prompts: the best one per fluency weight, most active first, text = the decoded prompt
        rows = page.eval(f"{PROMPTS}.map(r => [r.getAttribute('data-text'), "
                         "Array.from(r.querySelectorAll('.tok')).map(s => s.textContent).join('')])")
        best = sorted({m.tokens: m for m in result.members}.values(), key=lambda m: -m.activation)
        assert len(rows) == len(best) >= 1
        for (text, shown), m in zip(rows, best):
            assert text == tok.decode(list(m.tokens))  # decoded here, independently of the run
            assert "".join(m.str_tokens) == text  # the token strip spells the same text ...
            assert shown == "".join(visible(t) for t in m.str_tokens)  # ... shown like the top contexts
        acts = page.eval(f"{PROMPTS}[0].querySelectorAll('.tok').length")
        assert acts == len(best[0].tokens)
        # the dreams sit right after the dataset's top contexts
        assert page.eval("document.getElementById('f-top').nextElementSibling.id") == "f-dream"
        _screenshot(page, dreamed_browser / f"dream_{feature}.png")
        _clean(page)
    # a feature that was not dreamed shows no dream section
    other = next(c.index for c in cards if c.index not in dreams)
    page = _open(chrome, dreamed_browser / "index.html", other)
    page.wait_for("document.getElementById('f-dream').classList.contains('hidden')", timeout=WAIT)
    _clean(page)


EVIL = NASTY[0]


def test_dreams_of_a_dead_feature_and_model_text_stay_inert(chrome, nasty_cards, tmp_path):
    dead = next(c for c in nasty_cards if c.dead)
    m = [DreamMember((1, 2), EVIL + "x", (EVIL, "x"), 0.7, 3.0, (0.1, 0.7), 1.0),
         DreamMember((3, 4), "a\nb", ("a\n", "b"), 1.5, 5.0, (1.5, float("nan")), 0.1)]
    result = DreamResult("f", "m", {"steps": 1, "population": 2, "children": 1, "surrogate_used": True},
                         (0.1, 1.0), tuple(m), (m[1], m[0]), 9, 0.2)
    index = write_feature_browser(nasty_cards, tmp_path / "fb", chunk_size=16, dreams={dead.index: result})
    page = _open(chrome, index, dead.index)
    _dreamed(page, dead.index)
    assert page.eval("document.getElementById('f-dead').nextElementSibling.id") == "f-dream"
    assert page.eval("document.getElementById('f-dream').offsetParent !== null")
    assert page.eval(f"{PROMPTS}.map(r => r.getAttribute('data-text'))") == ["a\nb", EVIL + "x"]
    assert page.eval(f"{PROMPTS}[1].querySelector('.tok').textContent") == EVIL  # text, not markup
    assert page.eval("document.getElementById('f-dream-plot')._fullLayout.shapes.length") == 0  # no dataset max
    _clean(page)


def test_dream_page_draws_the_frontier_and_lists_the_prompts(chrome, tmp_path):
    """The `mechscope dream` page (dream.html): the frontier is drawn (points = the result's
    cross-entropy / activation), the prompt table shows each prompt's text, no console errors."""
    from mechscope.apps.dream_view import write_dream_html

    evil = "<script>alert(1)</script>"
    members = (DreamMember((1, 2), "a b", ("a", " b"), 0.5, 2.0, (0.1, 0.5), 5.0),
               DreamMember((3, 4), evil, (evil, "x"), 2.0, 6.0, (2.0, -0.3), None))
    result = DreamResult("L0.resid_post.f3 (max over positions)", "m", {"steps": 3}, (0.1, 5.0),
                         members, (members[1], members[0]), 12, 0.5)
    path = write_dream_html(result, tmp_path / "dream.html", {"held-out max": 1.5})
    page = chrome.page(path.as_uri())
    page.wait_for("document.body.getAttribute('data-graph-ready') === '1'", timeout=WAIT)
    _clean(page)
    frontier = page.eval("(function () { var t = document.getElementById('graph')._fullData[0];"
                         " return [Array.from(t.x), Array.from(t.y)]; })()")
    assert frontier == [[2.0, 6.0], [0.5, 2.0]]
    cells = page.eval("Array.from(document.querySelectorAll('table tr td:last-child')).map(td => td.textContent)")
    assert sorted(cells) == sorted(["a b", evil + "x"])  # model text shown as text, never run
    _screenshot(page, tmp_path / "dream.png")
