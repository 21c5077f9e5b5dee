"""Feature browser: Plotly figures for notebooks and a standalone offline HTML bundle.

The index shows every feature as one point of a single WebGL scatter (``scattergl``):
``x = log10 ρ_i`` (firing density; dead features sit at ``log10(0.5 / N)``, left of every live
one), ``y`` = mean activation when firing, colour by max / mean activation or density. One trace
keeps tens of thousands of points responsive. A feature page shows its top and quantile
contexts with tokens shaded by activation (hover shows the value), the activation histogram,
the direct logit effect of its decoder direction, and its decoder-cosine neighbours
(Bricken et al. 2023, "Towards Monosemanticity", feature visualisations; McDougall's
SAE-Vis layout).

The bundle (`write_feature_browser`) is ``index.html`` (plotly.js and the index columns
embedded) plus ``features/chunk_NNNNN.js`` files of ``chunk_size`` cards each, loaded only when
a feature of that chunk is opened: ``<script>`` elements work from ``file://`` where ``fetch``
does not, so no server is needed. ``index.html#f123`` opens feature 123 (graph viewers link
there). See `mechscope.apps.html` for how model text is kept inert.

In Jupyter: `index_figure`, `histogram_figure`, `logits_figure` return Plotly figures;
`FeatureView(card)` displays a whole feature page inline.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechscope.apps.html import asset, escape, script_json, standalone_page, write_text
from mechscope.sae.cards import FeatureCard

COLOUR_BY = {"max_activation": "max activation", "mean_activation": "mean activation",
             "density": "log10 density"}
CHUNK_DIR = "features"


def _check(cards: Sequence[FeatureCard]) -> list[FeatureCard]:
    cards = list(cards)
    if not cards:
        raise ValueError("no feature cards given")
    if [c.index for c in cards] != list(range(len(cards))):
        raise ValueError("cards must be one per feature, in order 0..d_dict-1 "
                         "(sort them by .index and include every feature)")
    return cards


def _log_density(card: FeatureCard) -> float:
    return math.log10(card.density) if card.density > 0 else math.log10(0.5 / max(card.n_tokens, 1))


# ---------------------------------------------------------------------------------------------
# figures (notebooks)
# ---------------------------------------------------------------------------------------------
def index_figure(cards: Sequence[FeatureCard], colour_by: str = "max_activation",
                 hide_dead: bool = False, max_density: float | None = None) -> Any:
    """One ``scattergl`` trace: log density vs mean activation; ``customdata`` = feature index."""
    import plotly.graph_objects as go

    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {', '.join(COLOUR_BY)}, got {colour_by!r}")
    shown = [c for c in cards if not (hide_dead and c.dead)
             and not (max_density is not None and c.density > max_density)]
    colour = [_log_density(c) if colour_by == "density" else getattr(c, colour_by) for c in shown]
    fig = go.Figure(go.Scattergl(
        x=[_log_density(c) for c in shown], y=[c.mean_activation for c in shown],
        customdata=[c.index for c in shown], mode="markers",
        marker=dict(size=6, color=colour, colorscale="Viridis", showscale=True,
                    colorbar=dict(title=COLOUR_BY[colour_by])),
        hovertemplate="feature %{customdata}<br>log10 density %{x:.2f}<br>mean act %{y:.3f}<extra></extra>",
    ))
    fig.update_layout(xaxis_title="log10 firing density", yaxis_title="mean activation when firing",
                      margin=dict(l=60, r=20, t=30, b=45))
    return fig


def histogram_figure(card: FeatureCard) -> Any:
    """Bar chart of the firing-activation histogram (bars span the exact bin edges)."""
    import plotly.graph_objects as go

    e = card.hist_edges
    centres = [(e[j] + e[j + 1]) / 2 for j in range(len(card.hist_counts))]
    widths = [e[j + 1] - e[j] for j in range(len(card.hist_counts))]
    fig = go.Figure(go.Bar(x=centres, y=list(card.hist_counts), width=widths, marker_color="#e67e22"))
    fig.update_layout(title=f"feature {card.index}: activation histogram", xaxis_title="activation",
                      yaxis_title="count", margin=dict(l=50, r=10, t=40, b=40))
    return fig


def logits_figure(card: FeatureCard) -> Any:
    """Horizontal bars: most promoted (blue) and most suppressed (red) output tokens."""
    import plotly.graph_objects as go

    rows = list(reversed(card.top_logits)) + list(reversed(card.bottom_logits))
    labels = [escape(repr(t)) for t, _ in rows]
    ys = list(range(len(rows)))
    fig = go.Figure(go.Bar(x=[v for _, v in rows], y=ys, orientation="h", customdata=labels,
                           marker_color=["#2e86de" if v >= 0 else "#c0392b" for _, v in rows],
                           hovertemplate="%{customdata}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=f"feature {card.index}: direct logit effect",
                      yaxis=dict(tickmode="array", tickvals=ys, ticktext=labels, automargin=True),
                      margin=dict(l=140, r=10, t=40, b=40))
    return fig


def contexts_html(card: FeatureCard, quantiles: bool = False) -> str:
    """Escaped HTML of the top (or quantile) contexts, tokens shaded by activation."""
    rows = []
    for ctx in card.quantile_contexts if quantiles else card.top_contexts:
        spans = []
        for j, (tok, a) in enumerate(zip(ctx.tokens, ctx.activations)):
            alpha = max(0.0, min(1.0, a / card.max_activation)) if card.max_activation > 0 else 0.0
            style = f"background-color: rgba(255,120,0,{alpha:.3f})" + ("; outline: 1px solid #b40" if j == ctx.max_index else "")
            spans.append(f'<span style="{style}" title="{escape(repr(tok))}: {a:.4g}">{escape(tok)}</span>')
        label = f'<span style="color:#888">q{round(100 * ctx.quantile)} </span>' if ctx.quantile is not None else ""
        rows.append(f'<div style="font-family: monospace; white-space: pre-wrap">{label}{"".join(spans)}</div>')
    return "\n".join(rows) or "<p>This feature never fired.</p>"


class FeatureView:
    """A feature page in a notebook: stats, contexts, histogram, logits, neighbours."""

    def __init__(self, card: FeatureCard) -> None:
        self.card = card

    def _repr_html_(self) -> str:
        c = self.card
        neighbours = ", ".join(f"#{i} ({cos:.2f})" for i, cos in c.neighbours)
        return (f"<h3>Feature {c.index} · {escape(c.dictionary)} @ {escape(c.site)} · {escape(c.model)}</h3>"
                f"<p>density {c.density:.4g} · mean {c.mean_activation:.4g} · max {c.max_activation:.4g}"
                f" · {c.n_tokens} tokens</p><h4>Top contexts</h4>{contexts_html(c)}"
                f"<h4>Quantile samples</h4>{contexts_html(c, quantiles=True)}"
                f"<p>Neighbours by decoder cosine: {escape(neighbours)}</p>")

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        display(HTML(self._repr_html_()))
        display(histogram_figure(self.card))
        if self.card.top_logits:
            display(logits_figure(self.card))


# ---------------------------------------------------------------------------------------------
# the standalone bundle
# ---------------------------------------------------------------------------------------------
_BODY = """
<header><h1>{title}</h1><span class="meta">{meta}</span></header>
<div class="controls">
  <form id="search-form" style="display:inline"><label>feature # <input id="search" type="number" min="0"></label>
  <button type="submit">open</button></form>
  <label><input id="hide-dead" type="checkbox"> hide dead</label>
  <label><input id="hide-dense" type="checkbox"> hide dense (density &gt;
    <input id="dense-threshold" type="number" step="any" value="0.1">)</label>
  <label>colour by <select id="colour-by">{options}</select></label>
  <span id="count" class="meta"></span> <span id="message" class="meta"></span>
</div>
<div id="index-plot"></div>
<section id="feature" class="hidden">
  <h2 id="f-title"></h2><div id="f-stats" class="stats"></div>
  <h3>Top activating contexts</h3><div id="f-top"></div>
  <h3>Quantile samples</h3><div id="f-quantiles"></div>
  <div class="cols"><div><div id="f-hist" class="plot-small"></div></div>
  <div><div id="f-logits" class="plot-small"></div><table class="logits" id="f-logit-table"></table></div></div>
  <h3>Neighbours by decoder cosine</h3><div id="neighbours"></div>
</section>
"""


def write_feature_browser(cards: Sequence[FeatureCard], out_dir: "str | Path", title: str | None = None,
                          chunk_size: int = 256) -> Path:
    """Write the offline browser bundle into ``out_dir``; returns the path of ``index.html``.

    Open it from disk in any browser: no server, no network."""
    cards = _check(cards)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out_dir)
    chunk_dir = out / CHUNK_DIR
    if chunk_dir.exists():
        shutil.rmtree(chunk_dir)  # stale chunks of a larger dictionary would be served otherwise
    for c in range(0, len(cards), chunk_size):
        payload = [card.to_dict() for card in cards[c:c + chunk_size]]
        write_text(chunk_dir / f"chunk_{c // chunk_size:05d}.js",
                   f"window.mechscopeChunk({c // chunk_size}, {script_json(payload)});\n")
    first = cards[0]
    title = title or f"{first.dictionary} @ {first.site}"
    meta = f"{first.model} · {len(cards)} features · {first.n_tokens} tokens"
    data = {
        "meta": {"dictionary": first.dictionary, "site": first.site, "model": first.model,
                 "n_tokens": first.n_tokens, "chunk_size": chunk_size, "chunk_dir": CHUNK_DIR},
        "index": {key: [getattr(c, key) for c in cards]
                  for key in ("density", "mean_activation", "max_activation")},
    }
    options = "".join(f'<option value="{k}">{escape(v)}</option>' for k, v in COLOUR_BY.items())
    body = _BODY.format(title=escape(title), meta=escape(meta), options=options)
    page = standalone_page(f"mechscope features: {title}", body, data, [asset("browser.js")],
                           css=asset("common.css"))
    return write_text(out / "index.html", page)


def build_feature_browser(model: Any, dictionary: Any, site: Any, token_stream: Any, n_tokens: int,
                          out_dir: "str | Path", *, title: str | None = None, chunk_size: int = 256,
                          **card_kwargs: Any) -> Path:
    """`compute_feature_cards` → ``out_dir/cards.json`` → `write_feature_browser`; returns the
    path of ``index.html`` (what ``mechscope features`` and ``mechscope demo`` print)."""
    from mechscope.sae.cards import save_cards
    from mechscope.sae.features import compute_feature_cards

    cards = compute_feature_cards(model, dictionary, site, token_stream, n_tokens, **card_kwargs)
    save_cards(cards, Path(out_dir) / "cards.json")
    return write_feature_browser(cards, out_dir, title=title, chunk_size=chunk_size)
