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
