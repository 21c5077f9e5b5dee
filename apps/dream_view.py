"""Dreaming results on screen: the (cross-entropy, activation) frontier as a Plotly figure, and an
offline HTML page with the frontier and its prompts, tokens shaded by the target's activation.

`write_feature_dreams` adds dreams to the feature browser (``mechscope features --dream``): one
lazily loaded ``dreams/dream_NNNNN.js`` per dreamed feature, drawn by ``assets/dream_browser.js``
on that feature's page beside the dataset's contexts (frontier with the dataset max marked, best
prompt per λ with per-token shading).

The figure puts cross-entropy (nats per token, lower = more fluent) across and the target's
activation up: every point is a non-dominated prompt of the run, the line is the frontier, and
the ringed points are the best prompts for the population's fluency weights λ. Prompts are model
text: every label is escaped (`mechscope.apps.html`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechscope.apps.html import asset, escape, script_json, shared_plotly, standalone_page, write_text
from mechscope.circuits.dream_result import DreamMember, DreamResult


def _hover(m: DreamMember) -> str:
    lam = "" if m.lam is None else f"<br>λ = {m.lam:.3g}"
    return (f"{escape(repr(m.text))}<br>activation {m.activation:.4g}<br>"
            f"cross-entropy {m.cross_entropy:.3f}{lam}")


def frontier_figure(result: DreamResult, reference: dict[str, float] | None = None) -> Any:
    """Frontier of ``result``; ``reference`` adds horizontal / vertical guides, e.g.
    ``{"dataset max activation": 3.2, "dataset cross-entropy": 4.4}`` (keys ending in
    "cross-entropy" are vertical)."""
    import plotly.graph_objects as go

    fr = result.frontier
    fig = go.Figure(go.Scatter(
        x=[m.cross_entropy for m in fr], y=[m.activation for m in fr], mode="lines+markers",
        name="frontier", line=dict(shape="hv", color="#8e44ad"), marker=dict(size=7),
        hovertext=[_hover(m) for m in fr], hoverinfo="text"))
    chosen = [m for m in result.members]
    fig.add_trace(go.Scatter(
        x=[m.cross_entropy for m in chosen], y=[m.activation for m in chosen], mode="markers",
        name="best for each λ", marker=dict(size=14, symbol="circle-open", color="#e67e22", line=dict(width=2)),
        hovertext=[_hover(m) for m in chosen], hoverinfo="text"))
    for name, value in (reference or {}).items():
        if name.endswith("cross-entropy"):
            fig.add_vline(x=value, line_dash="dot", line_color="#7f8c8d", annotation_text=escape(name))
        else:
            fig.add_hline(y=value, line_dash="dot", line_color="#7f8c8d", annotation_text=escape(name))
    fig.update_layout(title=escape(f"dreaming {result.target} · {result.model}"),
                      xaxis_title="cross-entropy of the prompt (nats / token, lower = more fluent)",
                      yaxis_title="target activation", hovermode="closest", plot_bgcolor="white",
                      margin=dict(l=60, r=20, t=60, b=60))
    return fig


def prompts_html(result: DreamResult) -> str:
    """Escaped HTML table of the frontier, most active first, tokens shaded by activation."""
    top = max((m.activation for m in result.frontier), default=0.0)
    rows = []
    for m in sorted(result.frontier, key=lambda m: -m.activation):
        spans = []
        for tok, a in zip(m.str_tokens, m.per_token):
            alpha = max(0.0, min(1.0, a / top)) if top > 0 and math.isfinite(a) else 0.0
            spans.append(f'<span style="background-color: rgba(255,120,0,{alpha:.3f})" '
                         f'title="{escape(repr(tok))}: {a:.4g}">{escape(tok)}</span>')
        lam = "" if m.lam is None else f"{m.lam:.3g}"
        rows.append(f"<tr><td>{m.activation:.4g}</td><td>{m.cross_entropy:.3f}</td><td>{lam}</td>"
                    f'<td style="font-family: monospace; white-space: pre-wrap">{"".join(spans)}</td></tr>')
    return ("<table><tr><th>activation</th><th>cross-entropy</th><th>λ</th><th>prompt</th></tr>"
            + "\n".join(rows) + "</table>")


def write_dream_html(result: DreamResult, path: "str | Path", reference: dict[str, float] | None = None) -> Path:
    """Offline HTML: the frontier figure and the prompt table (plotly.js written beside it)."""
    fig = frontier_figure(result, reference)
    body = (f'<div id="graph" style="height: 60vh"></div><p id="message" class="meta"></p>'
            f"<h2>Frontier prompts</h2>{prompts_html(result)}"
            f'<p class="meta">{result.evaluated} prompts evaluated in {result.seconds:.1f} s</p>')
    page = standalone_page(f"mechscope dream: {result.target}", body, {"figure": json.loads(fig.to_json())},
                           [asset("figure.js")], css=asset("common.css"),
                           plotly_src=shared_plotly(Path(path).parent))
    return write_text(path, page)


# ---------------------------------------------------------------------------------------------
# dreams in the feature browser
# ---------------------------------------------------------------------------------------------
DREAM_DIR = "dreams"


def pick_dream_features(cards: Sequence[Any], n: int, explicit: Sequence[int] | None = None) -> list[int]:
    """The features ``mechscope features --dream N`` dreams: ``explicit`` when given (any feature,
    dead ones included: a feature that never fired on the text may still be dreamed), else the
    ``n`` live features that fire most often (highest density; ties by index): the features a
    reader meets first, whose dataset contexts are the best comparison."""
    if explicit is not None:
        return check_dream_features(explicit, len(cards))
    if n < 0:
        raise ValueError(f"--dream must be >= 0, got {n}")
    live = sorted((c for c in cards if not c.dead), key=lambda c: (-c.density, c.index))
    return [c.index for c in live[:n]]


def check_dream_features(indices: Sequence[int], d_dict: int) -> list[int]:
    """``indices`` without repeats, or an error naming those out of range."""
    bad = [i for i in indices if not 0 <= i < d_dict]
    if bad or not indices:
        raise ValueError(f"--dream-features {list(bad or indices)}: give feature indices in 0..{d_dict - 1}")
    return list(dict.fromkeys(indices))


def write_feature_dreams(out_dir: "str | Path", dreams: Mapping[int, DreamResult], n_features: int) -> dict | None:
    """Write ``dreams/dream_NNNNN.js`` (one `DreamResult` each) under a feature browser's folder;
    returns the index entry the page reads (``{"features": [...], "dir": "dreams"}``), or None
    when there is nothing to show. Stale dreams of an earlier run are removed."""
    folder = Path(out_dir) / DREAM_DIR
    if folder.exists():
        shutil.rmtree(folder)
    if not dreams:
        return None
    bad = [i for i in dreams if not 0 <= i < n_features]
    if bad:
        raise ValueError(f"dreams for features {bad} but the browser has features 0..{n_features - 1}")
    for i, result in dreams.items():
        write_text(folder / f"dream_{i:05d}.js", f"window.mechscopeDream({int(i)}, {script_json(result.to_json())});\n")
    return {"features": sorted(int(i) for i in dreams), "dir": DREAM_DIR}
