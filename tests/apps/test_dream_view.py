"""Dream view: the frontier figure and the offline page, with model text escaped."""

from __future__ import annotations

from mechscope.apps.dream_view import frontier_figure, write_dream_html
from mechscope.circuits.dream_result import DreamMember, DreamResult

EVIL = "<script>alert(1)</script>"


def result() -> DreamResult:
    m = [DreamMember((1, 2), "a b", ("a", " b"), 0.5, 2.0, (0.1, 0.5), 5.0),
         DreamMember((3, 4), EVIL, (EVIL, "x"), 2.0, 6.0, (2.0, -0.3), None),
         DreamMember((5, 6), "c d", ("c", " d"), 3.0, 9.0, (0.0, 3.0), 0.1)]
    return DreamResult("L0.resid_post.f3 (max over positions)", "m", {"steps": 3}, (0.1, 5.0),
                       tuple(m), (m[2], m[0]), 12, 0.5)


def test_frontier_figure_plots_the_frontier_and_the_chosen_prompts():
    fig = frontier_figure(result(), reference={"held-out max": 2.5, "held-out cross-entropy": 4.0})
    frontier, chosen = fig.data[0], fig.data[1]
    assert list(frontier.x) == [2.0, 6.0, 9.0] and list(frontier.y) == [0.5, 2.0, 3.0]
    assert list(chosen.x) == [9.0, 2.0]
    assert all(EVIL not in h for h in frontier.hovertext)
    assert any("&lt;script&gt;" in h for h in frontier.hovertext)
    assert {s.x0 for s in fig.layout.shapes if s.x0 == s.x1} == {4.0}


def test_page_is_offline_and_escaped(tmp_path):
    path = write_dream_html(result(), tmp_path / "dream.html")
    html = path.read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Content-Security-Policy" in html and "https://" not in html.split("<script", 1)[0]
    assert html.count("<tr>") == 4  # header + 3 frontier prompts


# -- dreams in the feature browser -------------------------------------------------------------
def test_pick_dream_features_most_frequent_live_or_explicit(nasty_cards):
    import pytest

    from mechscope.apps.dream_view import pick_dream_features

    picked = pick_dream_features(nasty_cards, 5)
    live = [c for c in nasty_cards if not c.dead]
    assert len(picked) == 5 and all(not nasty_cards[i].dead for i in picked)
    assert min(nasty_cards[i].density for i in picked) >= max(
        c.density for c in live if c.index not in picked)  # no live feature left out fires more often
    assert pick_dream_features(nasty_cards, 1000) == [c.index for c in sorted(live, key=lambda c: (-c.density, c.index))]
    dead = next(c.index for c in nasty_cards if c.dead)
    assert pick_dream_features(nasty_cards, 5, [dead, 3, dead]) == [dead, 3]  # explicit: as given
    with pytest.raises(ValueError, match="0..39"):
        pick_dream_features(nasty_cards, 0, [40])


def test_write_feature_dreams_files_and_stale_ones(tmp_path):
    import pytest

    from mechscope.apps.dream_view import write_feature_dreams

    (tmp_path / "dreams").mkdir()
    (tmp_path / "dreams" / "dream_00009.js").write_text("stale")
    entry = write_feature_dreams(tmp_path, {3: result()}, 10)
    assert entry == {"features": [3], "dir": "dreams"}
    assert sorted(p.name for p in (tmp_path / "dreams").iterdir()) == ["dream_00003.js"]
    body = (tmp_path / "dreams" / "dream_00003.js").read_text()
    assert body.startswith("window.mechscopeDream(3, ") and "</script" not in body.lower()
    assert write_feature_dreams(tmp_path, {}, 10) is None and not (tmp_path / "dreams").exists()
    with pytest.raises(ValueError, match="0..9"):
        write_feature_dreams(tmp_path, {12: result()}, 10)
