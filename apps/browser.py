"""Feature browser: Plotly figures for notebooks and a standalone offline HTML bundle.

The index shows every feature as one point of a single WebGL scatter (``scattergl``):
``x = log10 ρ_i`` (firing density; dead features sit at ``log10(0.5 / N)``, left of every live
one), ``y`` = mean activation when firing, colour by max / mean activation or density. One trace
keeps tens of thousands of points responsive. A feature page shows its top and quantile
contexts with tokens shaded by activation (hover shows the value), the activation histogram,
the direct logit effect of its decoder direction, and its decoder-cosine neighbours
(Bricken et al. 2023, "Towards Monosemanticity", feature visualisations; McDougall's
SAE-Vis layout).

Dead features (never fired on the sampled tokens) have no density to plot: the index counts
them instead of stacking them on one point, the table lists them, and their page says so
instead of drawing empty charts. Each feature gets a first explanation — the tokens it fires on
most among its top contexts (`token_summary`) and the tokens it promotes / suppresses — and a
histogram of its logit effect over the whole vocabulary (sae_vis / Neuronpedia dashboards).

The bundle (`write_feature_browser`) is ``index.html`` (the index columns embedded, a few KB
per thousand features), ``plotly.min.js`` written once next to it, and
``features/chunk_NNNNN.js`` files of ``chunk_size`` cards each, loaded only when a feature of
that chunk is opened (or when text search over contexts is asked for): ``<script>`` elements
work from ``file://`` where ``fetch`` does not, so no server is needed. ``index.html#f123``
opens feature 123 (graph viewers link there). See `mechscope.apps.html` for how model text is
kept inert.

In Jupyter: `index_figure`, `histogram_figure`, `logits_figure` return Plotly figures;
`logit_histogram_figure` too; `FeatureView(card)` displays a whole feature page inline.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechscope.apps.html import (asset, escape, plotly_text, script_json, shared_plotly, standalone_page,
                                 visible_token, write_text)
from mechscope.apps.graph_index import INDEX_JS, prepare_index
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


def token_summary(card: FeatureCard, k: int = 3) -> tuple[tuple[str, int], ...]:
    """The ``k`` most frequent focus tokens of the top contexts, with counts (ties: the one of the
    stronger context first): a first, token-level explanation of what the feature fires on."""
    counts = Counter(ctx.tokens[ctx.max_index] for ctx in card.top_contexts)
    order = {tok: j for j, tok in reversed(list(enumerate(ctx.tokens[ctx.max_index] for ctx in card.top_contexts)))}
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0]]))[:k])


def _quoted(tokens: Sequence[str]) -> str:
    return ", ".join(repr(t) for t in tokens)


def explanation(card: FeatureCard) -> str:
    """One plain-text line: what the feature fires on and which output tokens it pushes."""
    parts = []
    if card.dead:
        parts.append(f"dead: never fired on {card.n_tokens} tokens")
    else:
        parts.append("fires on " + ", ".join(f"{t!r} ×{n}" for t, n in token_summary(card))
                     + f" (of {len(card.top_contexts)} top contexts)")
    if card.top_logits:
        parts.append("promotes " + _quoted([t for t, _ in card.top_logits[:3]]))
        parts.append("suppresses " + _quoted([t for t, _ in card.bottom_logits[:3]]))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# figures (notebooks)
# ---------------------------------------------------------------------------------------------
def index_figure(cards: Sequence[FeatureCard], colour_by: str = "max_activation",
                 hide_dead: bool = False, max_density: float | None = None) -> Any:
    """One ``scattergl`` trace: log density vs mean activation; ``customdata`` = feature index.
    Dead features (if shown) sit at ``log10(0.5 / N)``; the title counts them."""
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
                    colorbar=dict(title=dict(text=COLOUR_BY[colour_by], side="right"))),
        hovertemplate="feature %{customdata}<br>log10 density %{x:.2f}<br>mean act %{y:.3f}<extra></extra>",
    ))
    n_dead = sum(c.dead for c in cards)
    dead_note = f"{n_dead} dead (never fired)" + ("" if hide_dead or not n_dead
                                                  else f", drawn at x = {math.log10(0.5 / max(cards[0].n_tokens, 1)):.1f}")
    fig.update_layout(title=dict(text=f"{len(cards) - n_dead} live features · {dead_note}", x=0.01, font_size=13),
                      xaxis_title="log10 firing density", yaxis_title="mean activation when firing",
                      margin=dict(l=60, r=20, t=60, b=45))
    return fig


def _bars(edges: Sequence[float], counts: Sequence[int]) -> tuple[list[float], list[float]]:
    return ([(edges[j] + edges[j + 1]) / 2 for j in range(len(counts))],
            [edges[j + 1] - edges[j] for j in range(len(counts))])


def histogram_figure(card: FeatureCard) -> Any:
    """Bar chart of the firing-activation histogram (bars span the exact bin edges). A dead
    feature has none: asking for it is an error, not an empty chart."""
    import plotly.graph_objects as go

    if card.dead or not card.hist_counts:
        raise ValueError(f"feature {card.index} never fired on {card.n_tokens} tokens: it has no activation histogram")
    centres, widths = _bars(card.hist_edges, card.hist_counts)
    fig = go.Figure(go.Bar(x=centres, y=list(card.hist_counts), width=widths, marker_color="#e67e22"))
    fig.update_layout(title=dict(text=f"feature {card.index}: activation histogram", x=0.01),
                      xaxis_title="activation", yaxis_title="count", margin=dict(l=50, r=10, t=60, b=40))
    return fig


def logits_figure(card: FeatureCard) -> Any:
    """Horizontal bars: most promoted (blue) and most suppressed (red) output tokens, labelled
    with the token strings exactly (hover adds the token id)."""
    import plotly.graph_objects as go

    rows = list(reversed(card.top_logits)) + list(reversed(card.bottom_logits))
    ids = list(reversed(card.top_logit_ids)) + list(reversed(card.bottom_logit_ids))
    labels = [plotly_text(visible_token(t)) for t, _ in rows]
    hover = [plotly_text(repr(t) + (f" · id {ids[j]}" if ids else "")) for j, (t, _) in enumerate(rows)]
    ys = list(range(len(rows)))
    fig = go.Figure(go.Bar(x=[v for _, v in rows], y=ys, orientation="h", customdata=hover,
                           marker_color=["#2e86de" if v >= 0 else "#c0392b" for _, v in rows],
                           hovertemplate="%{customdata}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=f"feature {card.index}: direct logit effect", x=0.01),
                      yaxis=dict(tickmode="array", tickvals=ys, ticktext=labels, automargin=True),
                      margin=dict(l=20, r=10, t=60, b=40))
    return fig


def logit_histogram_figure(card: FeatureCard) -> Any:
    """Histogram of the direct logit effect ``d_i · W_U`` over the whole vocabulary."""
    import plotly.graph_objects as go

    if not card.logit_hist_counts:
        raise ValueError(f"feature {card.index} has no logit histogram (its dictionary does not write the residual stream)")
    centres, widths = _bars(card.logit_hist_edges, card.logit_hist_counts)
    fig = go.Figure(go.Bar(x=centres, y=list(card.logit_hist_counts), width=widths,
                           marker_color=["#2e86de" if x >= 0 else "#c0392b" for x in centres]))
    fig.update_layout(title=dict(text=f"feature {card.index}: logit effect over the vocabulary", x=0.01),
                      xaxis_title="logit effect", yaxis_title="tokens", margin=dict(l=50, r=10, t=60, b=40))
    return fig


def feature_figures(card: FeatureCard) -> list[Any]:
    """The charts a feature page shows: only those with data (none empty for a dead feature)."""
    figs = [] if card.dead else [histogram_figure(card)]
    if card.top_logits:
        figs.append(logits_figure(card))
    if card.logit_hist_counts:
        figs.append(logit_histogram_figure(card))
    return figs


def contexts_html(card: FeatureCard, quantiles: bool = False) -> str:
    """Escaped HTML of the top (or quantile) contexts, tokens shaded by activation."""
    rows = []
    for ctx in card.quantile_contexts if quantiles else card.top_contexts:
        spans = []
        for j, (tok, a) in enumerate(zip(ctx.tokens, ctx.activations)):
            alpha = max(0.0, min(1.0, a / card.max_activation)) if card.max_activation > 0 else 0.0
            style = f"background-color: rgba(255,120,0,{alpha:.3f})" + ("; outline: 1px solid #b40" if j == ctx.max_index else "")
            tid = f" · id {ctx.ids[j]}" if ctx.ids else ""
            spans.append(f'<span style="{style}" title="{escape(repr(tok))}{tid}: {a:.4g}">{escape(tok)}</span>')
        label = f'<span style="color:#888">q{round(100 * ctx.quantile)} </span>' if ctx.quantile is not None else ""
        rows.append(f'<div style="font-family: monospace; white-space: pre-wrap">{label}{"".join(spans)}</div>')
    return "\n".join(rows) or "<p>This feature never fired.</p>"


class FeatureView:
    """A feature page in a notebook: explanation, stats, contexts, histogram, logits, neighbours.

    ``_repr_html_`` is the text part (works in any HTML front end); in Jupyter,
    ``_ipython_display_`` adds the Plotly figures of `feature_figures`."""

    def __init__(self, card: FeatureCard) -> None:
        self.card = card

    def _repr_html_(self) -> str:
        c = self.card
        head = (f"<h3>Feature {c.index}{' — dead' if c.dead else ''} · {escape(c.dictionary)} @ {escape(c.site)}"
                f" · {escape(c.model)}</h3><p><b>{escape(explanation(c))}</b></p>"
                f"<p>density {c.density:.4g} · mean {c.mean_activation:.4g} · max {c.max_activation:.4g}"
                f" · {c.n_tokens} tokens</p>")
        if c.dead:
            body = (f"<p>This feature never fired on the {c.n_tokens} tokens sampled: no contexts, "
                    "no activation histogram.</p>")
        else:
            body = f"<h4>Top contexts</h4>{contexts_html(c)}"
            if c.quantile_contexts:
                body += f"<h4>Quantile samples</h4>{contexts_html(c, quantiles=True)}"
        neighbours = ", ".join(f"#{i} ({cos:.2f})" for i, cos in c.neighbours)
        tail = f"<p>Neighbours by decoder cosine: {escape(neighbours)}</p>" if neighbours else ""
        return head + body + tail

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        display(HTML(self._repr_html_()))
        for fig in feature_figures(self.card):
            display(fig)


# ---------------------------------------------------------------------------------------------
# the standalone bundle
# ---------------------------------------------------------------------------------------------
_BODY = """
<header><h1>{title}</h1><span class="meta">{meta}</span></header>
<div class="controls">
  <form id="search-form" style="display:inline"><label>feature # <input id="search" type="number" min="0"></label>
  <button type="submit">open</button></form>
  <label>filter <input id="filter" type="search" placeholder="token, text or #id" size="18"></label>
  <label title="also search the text of every top context (loads all feature chunks)">
    <input id="in-contexts" type="checkbox"> search contexts</label>
  <label><input id="hide-dead" type="checkbox"> hide dead</label>
  <label><input id="hide-dense" type="checkbox"> hide dense (density &gt;
    <input id="dense-threshold" type="number" step="any" value="0.1">)</label>
  <label>colour by <select id="colour-by">{options}</select></label>
  <span id="message" class="meta"></span>
</div>
<div class="index-row">
  <div class="index-left"><div id="count" class="meta"></div><div id="index-plot"></div></div>
  <div class="index-right"><div id="table-count" class="meta"></div>
    <div class="table-box"><table id="feature-table"><thead><tr id="table-head"></tr></thead>
    <tbody id="table-body"></tbody></table></div></div>
</div>
<section id="feature" class="hidden">
  <h2 id="f-title"></h2><div id="f-explain" class="explain"></div><div id="f-stats" class="stats"></div>
  <p id="f-dead" class="dead-note hidden"></p>
  <div id="f-live">
    <h3>Top activating contexts</h3><div id="f-top"></div>
    <div id="f-quantile-section"><h3>Quantile samples (uniform over firing tokens, by activation)</h3>
    <div id="f-quantiles"></div></div>
  </div>
  <div class="cols">
    <div id="f-hist-box" class="live-only"><h3>Activation histogram (firing tokens)</h3><div id="f-hist" class="plot-small"></div></div>
    <div id="f-logit-section"><h3>Direct logit effect (decoder · W_U)</h3><div id="f-logits" class="plot-small"></div>
      <table class="logits" id="f-logit-table"></table></div>
    <div id="f-logit-hist-box"><h3>Logit effect over the whole vocabulary</h3><div id="f-logit-hist" class="plot-small"></div></div>
  </div>
  <div id="f-neighbour-section"><h3>Neighbours by decoder cosine</h3><ul id="neighbours"></ul></div>
  <div id="f-graph-section" class="hidden"><h3>Graphs containing this feature</h3><ul id="f-graphs"></ul></div>
</section>
"""


def write_feature_browser(cards: Sequence[FeatureCard], out_dir: "str | Path", title: str | None = None,
                          chunk_size: int = 256, dreams: "Mapping[int, Any] | None" = None) -> Path:
    """Write the offline browser bundle into ``out_dir``; returns the path of ``index.html``.

    ``dreams``: `mechscope.circuits.dream.DreamResult` per feature index, shown on those feature
    pages (see the dreams section below). Open it from disk in any browser: no server, no network."""
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
    title = title or (first.dictionary if first.site in first.dictionary else f"{first.dictionary} @ {first.site}")
    n_dead = sum(c.dead for c in cards)
    meta = f"{first.model} · {len(cards)} features ({n_dead} dead) · {first.n_tokens} tokens"
    data = {
        "meta": {"dictionary": first.dictionary, "site": first.site, "model": first.model,
                 "n_tokens": first.n_tokens, "chunk_size": chunk_size, "chunk_dir": CHUNK_DIR,
                 "graphs": INDEX_JS},
        "index": {**{key: [getattr(c, key) for c in cards] for key in ("density", "mean_activation", "max_activation")},
                  "summary": [token_summary(c) for c in cards],
                  "promotes": [[t for t, _ in c.top_logits[:3]] for c in cards]},
    }
    prepare_index(out, first.site, len(cards))  # graphs.js: graph pages linked from feature pages
    options = "".join(f'<option value="{k}">{escape(v)}</option>' for k, v in COLOUR_BY.items())
    body = _BODY.format(title=escape(title), meta=escape(meta), options=options)
    scripts = [asset("tokens.js"), asset("browser.js")] + _dream_parts(out, dreams, len(cards), data)
    page = standalone_page(f"mechscope features: {title}", body, data, scripts,
                           css=asset("common.css"), plotly_src=shared_plotly(out))
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


# ---------------------------------------------------------------------------------------------
# dreams on feature pages (``mechscope features --dream``): the EPO frontier and the best fluent
# prompts beside the dataset's contexts. Everything lives in `mechscope.apps.dream_view` and
# assets/dream_browser.js; this hook only adds their data and script to the bundle.
# ---------------------------------------------------------------------------------------------
def _dream_parts(out: Path, dreams: "Mapping[int, Any] | None", n_features: int, data: dict) -> list[str]:
    from mechscope.apps.dream_view import write_feature_dreams

    entry = write_feature_dreams(out, dreams or {}, n_features)
    if entry is None:
        return []
    data["dreams"] = entry
    return [asset("dream_browser.js")]
