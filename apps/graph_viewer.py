"""Graph viewer: one Plotly figure for every `Graph` (feature circuits, flow routes, attention SVD).

Layout (one for every method, read from the canonical node fields and the typed `GraphMeta`):
tokens across, layers up. A node at layer ``l`` and position ``p`` sits at ``x = p``,
``y = l + δ`` with ``δ`` its place in the block's forward order: the block's input residual at
the bottom, heads / attention above it, then ``resid_mid``, the MLP, and the block's output
residual on top; features and error terms sit just above the site their dictionary reads. The
embedding is at ``y = -1`` and logits at ``y = meta.n_layers``. Nodes sharing a cell are spread
horizontally; nodes summed over positions (``position=None``) sit in a column left of
position 0. The token axis shows ``meta.prompt_tokens`` of the first prompt.

Edges are drawn with their width growing with ``|w|`` and coloured by sign (blue positive, red
negative). Plotly gives one line width per trace, so edges are bucketed by ``|w|`` into
``n_levels`` geometric levels ``t_0 · r^j`` from the threshold (or smallest ``|w|``) to the
largest; bucket ``j`` is one trace per sign plus a marker trace at the edge midpoints that
carries the hover text. The threshold slider shows the buckets at or above a level, so it is a
pure-Plotly control that works the same in a notebook and in a standalone file.

Routes (Ferrando & Voita 2024, "Information flow routes", as in the LM Transparency Tool): for
each position with a node in the top layer, the dropdown highlights that token's route, the
sub-graph of every node with a path to it.

Feature nodes carry a link (``feature_url``) to their page in a feature browser; clicking such
a node in the standalone HTML opens it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechscope.apps.html import asset, escape, standalone_page, write_text
from mechscope.circuits.graph import Graph, Node
from mechscope.interp.sites import Site

KIND_COLOURS = {"embedding": "#7f8c8d", "head": "#e67e22", "attention": "#e67e22", "mlp": "#27ae60",
                "feature": "#8e44ad", "error": "#95a5a6", "residual": "#34495e", "logit": "#2980b9"}
KIND_DY = {"embedding": 0.0, "head": 0.15, "attention": 0.15, "mlp": 0.6, "logit": 0.0}
SITE_DY = {"resid_pre": 0.0, "v": 0.3, "z": 0.3, "result": 0.3, "attn_out": 0.3, "resid_mid": 0.45,
           "mlp_in": 0.7, "mlp_pre": 0.7, "mlp_post": 0.7, "mlp_out": 0.7, "resid_post": 0.85}
DICT_DY = 0.08  # features / error terms above the state their dictionary reads
POS_COLOUR, NEG_COLOUR, ROUTE_COLOUR = "rgba(41,128,185,{a})", "rgba(192,57,43,{a})", "rgba(241,196,15,0.55)"

FeatureUrl = "str | dict[str, str] | Callable[[Node], str | None] | None"


def _url_fn(feature_url: Any) -> Callable[[Node], str | None]:
    """``feature_url``: a template with ``{index}``, ``{site}``, ``{layer}`` (e.g.
    ``"features/index.html#f{index}"``), a dict site → template, or a callable."""
    if feature_url is None:
        return lambda node: None
    if callable(feature_url):
        return feature_url
    if isinstance(feature_url, dict):
        return lambda n: feature_url[n.site].format(index=n.index, site=n.site, layer=n.layer) \
            if n.kind == "feature" and n.site in feature_url else None
    if isinstance(feature_url, str):
        return lambda n: feature_url.format(index=n.index, site=n.site, layer=n.layer) if n.kind == "feature" else None
    raise ValueError(f"feature_url must be a template string, a dict site -> template or a callable, "
                     f"got {type(feature_url).__name__}")


def node_dy(n: Node) -> float:
    """Height of a node inside its layer (module doc): in ``[0, 1)``."""
    if n.kind in KIND_DY:
        return KIND_DY[n.kind]
    dy = SITE_DY[Site.parse(n.site).kind]
    return dy if n.kind == "residual" else dy + DICT_DY


def layout_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """``(x, y)`` of every node: x = token position (spread within a cell), y = layer + `node_dy`."""
    cells: dict[tuple[float, float], list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        x = -1.5 if n.position is None else float(n.position)
        cells[(x, n.layer + node_dy(n))].append(i)
    xy = {}
    for (x, y), ids in cells.items():
        ids.sort(key=lambda i: (graph.nodes[i].kind, graph.nodes[i].index or 0, i))
        m = len(ids)
        for j, i in enumerate(ids):
            xy[i] = (x + (j - (m - 1) / 2) * min(0.8 / m, 0.25), y)
    return xy


def _levels(weights: list[float], threshold: float | int | None, n_levels: int) -> list[float]:
    mags = [abs(w) for w in weights if w != 0]
    if not mags:
        return [threshold or 0.0]
    lo = threshold if threshold else min(mags)
    hi = max(mags)
    if hi <= lo or n_levels == 1:
        return [lo]
    r = (hi / lo) ** (1 / n_levels)
    return [lo * r ** j for j in range(n_levels)]


def _hover(n: Node) -> str:
    parts = [f"<b>{escape(n.label or n.id)}</b>", f"kind: {n.kind}", f"layer: {n.layer}"]
    parts += [f"position: {n.position}"] if n.position is not None else []
    parts += [f"index: {n.index}"] if n.index is not None else []
    parts += [f"site: {escape(n.site)}"] if n.site else []
    return "<br>".join(parts + [f"score: {n.score:.4g}"])


def _edge_traces(graph: Graph, xy: dict, edges: dict, level: int, width: float, go: Any) -> list:
    traces = []
    for sign, colour in ((1, POS_COLOUR), (-1, NEG_COLOUR)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for (s, t), w in edges.items():
            if (w >= 0) == (sign > 0):
                xs += [xy[s][0], xy[t][0], None]
                ys += [xy[s][1], xy[t][1], None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(width=width, color=colour.format(a=0.35 + 0.5 * width / 6)),
                                 name=f"edges {'+' if sign > 0 else '−'} level {level}"))
    mids = [((xy[s][0] + xy[t][0]) / 2, (xy[s][1] + xy[t][1]) / 2,
             f"{escape(graph.nodes[s].label or s)} → {escape(graph.nodes[t].label or t)}: {w:.4g}")
            for (s, t), w in edges.items()]
    traces.append(go.Scatter(x=[m[0] for m in mids], y=[m[1] for m in mids], text=[m[2] for m in mids],
                             mode="markers", marker=dict(size=6, opacity=0), hoverinfo="text",
                             showlegend=False, name=f"edge hover level {level}"))
    return traces


def ancestors(graph: Graph, sinks: list[str]) -> set[str]:
    """Every node with a directed path into ``sinks`` (the sinks included)."""
    parents: dict[str, list[str]] = defaultdict(list)
    for s, t in graph.edges:
        parents[t].append(s)
    seen, stack = set(sinks), list(sinks)
    while stack:
        for p in parents[stack.pop()]:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def graph_figure(graph: Graph, threshold: float | int | None = None, n_levels: int = 6,
                 feature_url: Any = None, routes: bool = True, title: str | None = None) -> Any:
    """The viewer figure. Traces, in order: route highlights (hidden until chosen), edge buckets
    (3 per level), one node trace per kind (``customdata`` = link or "")."""
    import plotly.graph_objects as go

    if not graph.nodes:
        raise ValueError("the graph has no nodes to draw")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    xy, url = layout_positions(graph), _url_fn(feature_url)
    edges = {e: w for e, w in graph.edges.items() if threshold is None or abs(w) >= threshold}
    levels = _levels(list(edges.values()), threshold, n_levels)
    fig = go.Figure()

    sinks = _route_sinks(graph) if routes else {}
    for pos, ids in sinks.items():
        keep = ancestors(graph, ids)
        route = {e: w for e, w in edges.items() if e[0] in keep and e[1] in keep}
        fig.add_trace(go.Scatter(
            x=sum(([xy[s][0], xy[t][0], None] for s, t in route), []),
            y=sum(([xy[s][1], xy[t][1], None] for s, t in route), []), mode="lines", visible=False,
            line=dict(width=9, color=ROUTE_COLOUR), hoverinfo="skip", showlegend=False, name=f"route {pos}"))
    n_route = len(fig.data)

    buckets: list[dict] = [{} for _ in levels]
    for e, w in edges.items():
        j = max(k for k, t in enumerate(levels) if abs(w) >= t or k == 0)
        buckets[j][e] = w
    for j, bucket in enumerate(buckets):
        fig.add_traces(_edge_traces(graph, xy, bucket, j, 1 + 5 * j / max(len(levels) - 1, 1), go))

    by_kind: dict[str, list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        by_kind[n.kind].append(i)
    top = max((abs(n.score) for n in graph.nodes.values()), default=0.0) or 1.0
    for kind, ids in by_kind.items():
        nodes = [graph.nodes[i] for i in ids]
        fig.add_trace(go.Scatter(
            x=[xy[i][0] for i in ids], y=[xy[i][1] for i in ids], mode="markers", name=kind,
            marker=dict(size=[8 + 14 * abs(n.score) / top for n in nodes], color=KIND_COLOURS[kind],
                        line=dict(width=1, color="white")),
            text=[_hover(n) for n in nodes], hoverinfo="text", customdata=[url(n) or "" for n in nodes]))

    _controls(fig, graph, levels, n_route, sinks)
    _axes(fig, graph, title)
    return fig


def _route_sinks(graph: Graph) -> dict[int, list[str]]:
    """Top-layer nodes grouped by position: the tokens whose routes can be highlighted."""
    top = max(n.layer for n in graph.nodes.values())
    has_parent = {t for _, t in graph.edges}
    sinks: dict[int, list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        if n.layer == top and n.position is not None and i in has_parent:
            sinks[n.position].append(i)
    return dict(sorted(sinks.items()))


def _controls(fig: Any, graph: Graph, levels: list[float], n_route: int, sinks: dict) -> None:
    n_edge = 3 * len(levels)
    edge_ids = list(range(n_route, n_route + n_edge))
    steps = [dict(method="restyle", label=f"{t:.3g}",
                  args=[{"visible": [k // 3 >= j for k in range(n_edge)]}, edge_ids])
             for j, t in enumerate(levels)]
    fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="|edge weight| ≥ "),
                                    pad=dict(t=40), len=0.6, x=0.2)])
    if sinks:
        tokens = _tokens(graph)
        route_ids = list(range(n_route))
        buttons = [dict(method="restyle", label="no route", args=[{"visible": [False] * n_route}, route_ids])]
        for j, pos in enumerate(sinks):
            tok = f" {escape(repr(tokens[pos]))}" if pos < len(tokens) else ""
            buttons.append(dict(method="restyle", label=f"route to {pos}{tok}",
                                args=[{"visible": [k == j for k in range(n_route)]}, route_ids]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.12,
                                            xanchor="left", showactive=True)])


def _tokens(graph: Graph) -> tuple[str, ...]:
    """The tokens on the position axis: the first prompt's (prompts of a graph share positions)."""
    return graph.meta.prompt_tokens[0] if graph.meta.prompt_tokens else ()


def _layer_name(l: int, n_layers: int | None) -> str:
    return "embed" if l == -1 else "logits" if l == n_layers else f"L{l}"


def _axes(fig: Any, graph: Graph, title: str | None) -> None:
    tokens, meta = _tokens(graph), graph.meta
    positions = sorted({n.position for n in graph.nodes.values() if n.position is not None})
    tickvals = ([-1.5] if any(n.position is None for n in graph.nodes.values()) else []) + positions
    ticktext = (["Σ pos"] if tickvals and tickvals[0] == -1.5 else []) + [
        f"{p}: {escape(repr(tokens[p]))}" if p < len(tokens) else str(p) for p in positions]
    n_layers = meta.n_layers
    if n_layers is None:  # hand-built graphs: logits, if any, mark the top
        n_layers = max((n.layer for n in graph.nodes.values() if n.kind == "logit"), default=None)
    layers = sorted({n.layer for n in graph.nodes.values()})
    ylabels = [_layer_name(l, n_layers) for l in layers]
    fig.update_layout(
        title=escape(title or f"{meta.method or 'graph'}: {meta.model}"), hovermode="closest",
        xaxis=dict(tickmode="array", tickvals=tickvals, ticktext=ticktext, title="token position",
                   zeroline=False, showgrid=False),
        yaxis=dict(tickmode="array", tickvals=layers, ticktext=ylabels, title="layer", zeroline=False),
        legend=dict(title="node kind"), margin=dict(l=60, r=20, t=90, b=110), plot_bgcolor="white")


_BODY = ('<p id="summary" class="meta"></p><div id="graph" style="height: 88vh"></div>'
         '<p id="message" class="meta"></p>')


def summary(graph: Graph) -> dict[str, Any]:
    """What the page states about the graph (from `GraphMeta`), shown above the figure."""
    m = graph.meta
    return {"method": m.method, "units": m.units, "model": m.model, "n_layers": m.n_layers,
            "n_prompts": m.n_prompts, "faithfulness": m.faithfulness, "completeness": m.completeness,
            "nodes": len(graph.nodes), "edges": len(graph.edges)}


def write_graph_html(graph: Graph, path: "str | Path", threshold: float | int | None = None,
                     n_levels: int = 6, feature_url: Any = None, routes: bool = True, title: str | None = None) -> Path:
    """Write the viewer as one offline HTML file (plotly.js embedded); returns its path.
    Clicking a node with a link (feature nodes with ``feature_url``) opens the link."""
    fig = graph_figure(graph, threshold, n_levels, feature_url, routes, title)
    data = {"figure": json.loads(fig.to_json()), "summary": summary(graph)}
    page = standalone_page(f"mechscope graph: {title or graph.meta.method or 'graph'}", _BODY, data,
                           [asset("graph.js")], css=asset("common.css"))
    return write_text(path, page)
