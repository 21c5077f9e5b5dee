"""The browser's data path writes strict JSON: NaN / ±inf (a diverged dictionary, a 0/0 statistic)
become null where data is serialised (`apps.html.script_json`), never bare ``NaN``."""

from __future__ import annotations

import dataclasses
import json
import math
import re

from mechscope.apps.browser import write_feature_browser
from mechscope.apps.html import finite_or_null, script_json


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_everywhere():
    data = {"a": math.nan, "b": [math.inf, -math.inf, 1.5, (2.0, math.nan)], "c": {"d": "NaN", "e": 0}}
    assert _strict(script_json(data)) == {"a": None, "b": [None, None, 1.5, [2.0, None]],
                                          "c": {"d": "NaN", "e": 0}}
    assert finite_or_null(data["c"]) == data["c"]  # strings and ints pass through untouched


def test_a_browser_of_cards_with_nan_parses_strictly(nasty_cards, tmp_path):
    bad = dataclasses.replace(nasty_cards[2], mean_activation=math.nan, max_activation=math.inf,
                              top_logits=(("x", math.nan),) + nasty_cards[2].top_logits[1:])
    cards = [*nasty_cards[:2], bad, *nasty_cards[3:]]
    index = write_feature_browser(cards, tmp_path / "fb", chunk_size=16)
    body = (tmp_path / "fb" / "features" / "chunk_00000.js").read_text()
    chunk = _strict(re.match(r"window\.mechscopeChunk\(0, (.*)\);\s*$", body, re.S).group(1))
    assert chunk[2]["mean_activation"] is None and chunk[2]["max_activation"] is None
    assert chunk[2]["top_logits"][0] == ["x", None] and chunk[1] == _strict(script_json(
        json.loads(json.dumps(dataclasses.asdict(nasty_cards[1])))))
    page = index.read_text()
    data = re.search(r'<script type="application/json" id="mechscope-data">(.*?)</script>', page, re.S).group(1)
    _strict(data)
    assert "NaN" not in data and "Infinity" not in data
