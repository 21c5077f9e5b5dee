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

What a person sees: the whole prompt as a token strip along x (token strings, every position),
every layer ticked, the labels of the ``n_labels`` strongest nodes (by ``|score|``, or by the
``|weight|`` of their edges where scores are all 0), and by default only the ``max_edges``
strongest edges (the slider goes down to every edge). The standalone page adds what Plotly
alone cannot: hovering a node highlights its neighbourhood; clicking one opens a detail panel
(its contributions in and out; for feature nodes a link to the feature's page in a browser,
``feature_url``; for heads the attention pattern on each stored prompt and the top output
tokens, when ``meta.details["heads"]`` carries them, see `mechscope.apps.head_details`); graphs with ``per_prompt`` graphs
get a prompt selector (a single prompt's positional route opens first).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechscope.apps.html import asset, plotly_text, shared_plotly, standalone_page, visible_token, write_text
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


def browser_folder(browser: "str | Path", n: Node) -> Path | None:
    """The feature browser folder under ``browser`` that holds feature node ``n``'s page:
    ``browser/<site>/`` (one browser per dictionary, named like the dictionaries folder) or else
    ``browser/`` itself, when its recorded site and size admit the node (`graph_index.belongs`)."""
    from mechscope.apps.graph_index import belongs, read_index

    if n.kind != "feature":
        return None
    root = Path(browser)
    for folder in (root / str(n.site), root):
        if (folder / "index.html").is_file():
            return folder if belongs(n, read_index(folder)) else None
    return None


def browser_links(browser: "str | Path", page: "str | Path") -> Callable[[Node], str | None]:
    """``feature_url`` for a page at ``page`` linking feature nodes into the feature browser(s)
    under ``browser`` (``mechscope features --out``), see `browser_folder`; links are relative,
    so the two folders can move together."""
    root = Path(browser)
    if not (root / "index.html").is_file() and not any(root.glob("*/index.html")):
        raise ValueError(f"--browser {root}: no feature browser there (expected {root}/index.html or "
                         f"{root}/<site>/index.html, as written by mechscope features --out)")
    here = Path(page).resolve().parent

    def url(n: Node) -> str | None:
        folder = browser_folder(root, n)
        if folder is None:
            return None
        return f"{Path(os.path.relpath((folder / 'index.html').resolve(), here)).as_posix()}#f{n.index}"
    return url


def record_in_browsers(browser: "str | Path", page: "str | Path", graph: Graph) -> list[Path]:
    """After writing ``page`` with `browser_links`: add it to the graph index of every browser
    folder its feature nodes link into (`graph_index.record_graph`); returns those folders."""
    from mechscope.apps.graph_index import record_graph

    folders: dict[Path, list[Node]] = defaultdict(list)
    for n in graph.nodes.values():
        folder = browser_folder(browser, n)
        if folder is not None:
            folders[folder].append(n)
    for folder, nodes in folders.items():
        record_graph(folder, page, graph, nodes)
    return list(folders)


def node_dy(n: Node) -> float:
    """Height of a node inside its layer (module doc): in ``[0, 1)``."""
    if n.kind in KIND_DY:
        return KIND_DY[n.kind]
    dy = SITE_DY[Site.parse(n.site).kind]
    return dy if n.kind == "residual" else dy + DICT_DY


def layout_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """``(x, y)`` of every node: x = token position (spread within a cell), y = layer + `node_dy`.
    A graph summed over positions throughout has no token axis: its layers' nodes are spread
    one unit apart around x = 0."""
    summed = all(n.position is None for n in graph.nodes.values())
    cells: dict[tuple[float, float], list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        x = (0.0 if summed else -1.5) if n.position is None else float(n.position)
        cells[(x, n.layer + node_dy(n))].append(i)
    xy = {}
    for (x, y), ids in cells.items():
        ids.sort(key=lambda i: (graph.nodes[i].kind, graph.nodes[i].index or 0, i))
        m = len(ids)
        step = 1.0 if summed else min(0.8 / m, 0.25)
        for j, i in enumerate(ids):
            xy[i] = (x + (j - (m - 1) / 2) * step, y)
    return xy


MAX_EDGES, N_LABELS, MAX_PROMPTS = 200, 12, 32


def _levels(weights: list[float], threshold: float | int | None, n_levels: int,
            max_edges: int | None) -> tuple[list[float], int]:
    """Geometric ``|w|`` levels from the threshold (or smallest ``|w|``) to the largest, plus the
    level that shows at most ``max_edges`` edges; returns (levels, index of the default level)."""
    mags = sorted((abs(w) for w in weights if w != 0), reverse=True)
    if not mags:
        return [threshold or 0.0], 0
    lo = threshold if threshold else mags[-1]
    hi = mags[0]
    levels = [lo] if hi <= lo or n_levels == 1 else [lo * (hi / lo) ** (j / n_levels) for j in range(n_levels)]
    if max_edges is None or len([w for w in weights if abs(w) >= levels[0]]) <= max_edges:
        return levels, 0
    cut = mags[max_edges - 1]
    if sum(m >= cut for m in mags) > max_edges:  # ties at the cut: stay at or under max_edges
        cut = math.nextafter(cut, math.inf)
    levels = sorted({*(t for t in levels if t < cut), cut})
    return levels, levels.index(cut)


def _hover(n: Node, tokens: tuple[str, ...] = ()) -> str:
    parts = [f"<b>{plotly_text(n.label or n.id)}</b>", f"id: {plotly_text(n.id)}", f"kind: {n.kind}",
             f"layer: {n.layer}"]
    if n.position is not None:
        tok = f" {plotly_text(repr(tokens[n.position]))}" if n.position < len(tokens) else ""
        parts.append(f"position: {n.position}{tok}")
    parts += [f"site: {plotly_text(n.site)}"] if n.site else []
    return "<br>".join(parts + [f"score: {n.score:.4g}", "click for details"])


def _edge_traces(graph: Graph, xy: dict, edges: dict, level: int, width: float, visible: bool, go: Any) -> list:
    traces = []
    for sign, colour in ((1, POS_COLOUR), (-1, NEG_COLOUR)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for (s, t), w in edges.items():
            if (w >= 0) == (sign > 0):
                xs += [xy[s][0], xy[t][0], None]
                ys += [xy[s][1], xy[t][1], None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, visible=visible,
                                 line=dict(width=width, color=colour.format(a=0.35 + 0.5 * width / 6)),
                                 name=f"edges {'+' if sign > 0 else '−'} level {level}"))
    name = lambda i: plotly_text(graph.nodes[i].label or i)  # noqa: E731
    mids = [((xy[s][0] + xy[t][0]) / 2, (xy[s][1] + xy[t][1]) / 2, f"{name(s)} → {name(t)}: {w:.4g}")
            for (s, t), w in edges.items()]
    traces.append(go.Scatter(x=[m[0] for m in mids], y=[m[1] for m in mids], text=[m[2] for m in mids],
                             mode="markers", marker=dict(size=6, opacity=0), hoverinfo="text", visible=visible,
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


def strength(graph: Graph) -> dict[str, float]:
    """How strong each node is: ``|score|``, or (graphs whose scores are all 0, e.g. routes) the
    summed ``|weight|`` of its edges."""
    if any(n.score for n in graph.nodes.values()):
        return {i: abs(n.score) for i, n in graph.nodes.items()}
    out = dict.fromkeys(graph.nodes, 0.0)
    for (s, t), w in graph.edges.items():
        out[s] += abs(w)
        out[t] += abs(w)
    return out


def graph_figure(graph: Graph, threshold: float | int | None = None, n_levels: int = 6,
                 feature_url: Any = None, routes: bool = True, title: str | None = None,
                 max_edges: int | None = MAX_EDGES, n_labels: int = N_LABELS) -> Any:
    """The viewer figure. Traces, in order: route highlights (hidden until chosen), edge buckets
    (3 per level; those under the default level hidden), the neighbourhood highlight (empty: the
    page fills it on hover), one node trace per kind (``customdata`` = ``[id, link or ""]``)."""
    import plotly.graph_objects as go

    if not graph.nodes:
        raise ValueError("the graph has no nodes to draw")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if max_edges is not None and max_edges < 1:
        raise ValueError(f"max_edges must be >= 1 (or None for every edge), got {max_edges}")
    xy, url = layout_positions(graph), _url_fn(feature_url)
    # an edge of weight exactly 0 carries nothing: not drawn (the detail panel still lists it)
    edges = {e: w for e, w in graph.edges.items() if w != 0 and (threshold is None or abs(w) >= threshold)}
    levels, active = _levels(list(edges.values()), threshold, n_levels, max_edges)
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
        fig.add_traces(_edge_traces(graph, xy, bucket, j, 1 + 5 * j / max(len(levels) - 1, 1), j >= active, go))
    fig.add_trace(go.Scatter(x=[], y=[], mode="lines", hoverinfo="skip", showlegend=False, name="neighbourhood",
                             line=dict(width=3, color="rgba(230,126,34,0.9)")))
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers", hoverinfo="skip", showlegend=False, name="selected",
                             marker=dict(size=28, symbol="circle-open", color="#111", line=dict(width=3))))

    by_kind: dict[str, list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        by_kind[n.kind].append(i)
    power = strength(graph)
    top = max(power.values(), default=0.0) or 1.0
    labelled = _labelled(graph, power, n_labels)
    for kind, ids in by_kind.items():
        nodes = [graph.nodes[i] for i in ids]
        fig.add_trace(go.Scatter(
            x=[xy[i][0] for i in ids], y=[xy[i][1] for i in ids], mode="markers+text", name=kind,
            marker=dict(size=[8 + 14 * power[i] / top for i in ids], color=KIND_COLOURS[kind],
                        line=dict(width=1, color="white")),
            text=[plotly_text(_short(n)) if n.id in labelled else "" for n in nodes], textposition=["top center" if n.kind in ("feature", "error") else "middle right" for n in nodes],
            textfont=dict(size=10, shadow="1px 1px 2px white, -1px -1px 2px white, 1px -1px 2px white, -1px 1px 2px white"), cliponaxis=False, hovertext=[_hover(n, _tokens(graph)) for n in nodes], hoverinfo="text",
            customdata=[[n.id, url(n) or ""] for n in nodes]))

    _token_hover(fig, graph)
    _controls(fig, graph, levels, active, n_route, sinks)
    _axes(fig, graph, title)
    return fig


def _token_hover(fig: Any, graph: Graph) -> None:
    """Invisible markers along the token strip: hovering a token shows its raw string (the tick
    shows `visible_token`, e.g. ``␣the`` for ``" the"``)."""
    import plotly.graph_objects as go

    tokens = _tokens(graph)
    if not tokens or all(n.position is None for n in graph.nodes.values()):
        return
    bottom = _layers(graph)[0][0] - 0.25
    fig.add_trace(go.Scatter(x=list(range(len(tokens))), y=[bottom] * len(tokens), mode="markers", name="tokens",
                             marker=dict(size=10, opacity=0), showlegend=False, hoverinfo="text",
                             hovertext=[f"token {p}: {plotly_text(repr(t))}" for p, t in enumerate(tokens)]))


def _labelled(graph: Graph, power: dict[str, float], n_labels: int) -> set[str]:
    """The ``n_labels`` strongest nodes, at most one per half layer and position so labels do
    not print over each other. Residual states and embeddings are named by their row already
    (and dominate routes by weight): they are labelled only in graphs that hold nothing else
    (the token / positional parts of an embedding, ``embed.tok`` / ``embed.pos``, are)."""
    plain = [i for i, n in graph.nodes.items() if n.kind == "residual" or _short(n) == "embed"]
    pool = [i for i in power if i not in set(plain)] or list(power)
    out, cells = set(), set()
    for i in sorted(pool, key=lambda i: -power[i]):
        n = graph.nodes[i]
        cell = (n.layer, node_dy(n) >= 0.5, n.position if n.position is not None else i)
        if len(out) < n_labels and cell not in cells:
            out.add(i)
            cells.add(cell)
    return out


def _short(n: Node) -> str:
    """A node's visible label: the canonical id without its position (the strip shows that); a
    feature is ``f<index>`` (its row names the site), an error term ``err``."""
    if n.kind == "feature":
        return f"f{n.index}"
    if n.kind == "error":
        return "err"
    return n.id.rsplit("@", 1)[0] if n.position is not None else n.id


def _route_sinks(graph: Graph) -> dict[int, list[str]]:
    """Top-layer nodes grouped by position: the tokens whose routes can be highlighted."""
    top = max(n.layer for n in graph.nodes.values())
    has_parent = {t for _, t in graph.edges}
    sinks: dict[int, list[str]] = defaultdict(list)
    for i, n in graph.nodes.items():
        if n.layer == top and n.position is not None and i in has_parent:
            sinks[n.position].append(i)
    return dict(sorted(sinks.items()))


def _controls(fig: Any, graph: Graph, levels: list[float], active: int, n_route: int, sinks: dict) -> None:
    n_edge = 3 * len(levels)
    edge_ids = list(range(n_route, n_route + n_edge))
    steps = [dict(method="restyle", label=f"{t:.3g}",
                  args=[{"visible": [k // 3 >= j for k in range(n_edge)]}, edge_ids])
             for j, t in enumerate(levels)]
    fig.update_layout(sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix="|edge weight| ≥ "),
                                    pad=dict(t=60), len=0.6, x=0.2)])
    if sinks:
        tokens = _tokens(graph)
        route_ids = list(range(n_route))
        buttons = [dict(method="restyle", label="no route", args=[{"visible": [False] * n_route}, route_ids])]
        for j, pos in enumerate(sinks):
            tok = f" {plotly_text(repr(tokens[pos]))}" if pos < len(tokens) else ""
            buttons.append(dict(method="restyle", label=f"route to {pos}{tok}",
                                args=[{"visible": [k == j for k in range(n_route)]}, route_ids]))
        # right-aligned on the row under the title: it never covers the title (left-aligned)
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, y=1.01, xanchor="right",
                                            yanchor="bottom", showactive=True)])


def _tokens(graph: Graph) -> tuple[str, ...]:
    """The tokens on the position axis: the first prompt's (prompts of a graph share positions)."""
    return graph.meta.prompt_tokens[0] if graph.meta.prompt_tokens else ()


def _layer_name(l: int, n_layers: int | None) -> str:
    return "embed" if l == -1 else "logits" if l == n_layers else f"L{l}"


def _layers(graph: Graph) -> tuple[list[int], int | None]:
    """The layers on the y axis (every block, embed and logits where the depth is known) and the
    depth (``meta.n_layers``, or for hand-built graphs the logits' layer)."""
    n_layers = graph.meta.n_layers
    if n_layers is None:  # hand-built graphs: logits, if any, mark the top
        n_layers = max((n.layer for n in graph.nodes.values() if n.kind == "logit"), default=None)
    used = {n.layer for n in graph.nodes.values()}
    return sorted(used | (set(range(-1, n_layers + 1)) if n_layers is not None else set())), n_layers


def _axes(fig: Any, graph: Graph, title: str | None) -> None:
    tokens, meta = _tokens(graph), graph.meta
    positions = sorted({n.position for n in graph.nodes.values() if n.position is not None} | set(range(len(tokens))))
    summed = any(n.position is None for n in graph.nodes.values())
    if all(n.position is None for n in graph.nodes.values()):  # no token axis (`layout_positions`)
        xaxis = dict(showticklabels=False, title="components, summed over token positions", zeroline=False,
                     showgrid=False)
    else:
        tickvals = ([-1.5] if summed else []) + positions
        ticktext = (["Σ pos"] if summed else []) + [
            plotly_text(visible_token(tokens[p])) if p < len(tokens) else str(p) for p in positions]
        xaxis = dict(tickmode="array", tickvals=tickvals, ticktext=ticktext, title="token", zeroline=False,
                     showgrid=True, gridcolor="#f2f2f2", tickangle=-45 if len(tickvals) > 12 else 0,
                     range=[tickvals[0] - 0.7, tickvals[-1] + 0.7])
    layers, n_layers = _layers(graph)
    fig.update_layout(
        title=dict(text=plotly_text(title or f"{meta.method or 'graph'}: {meta.model}"), x=0.01, xanchor="left",
                   yref="container", y=0.99, yanchor="top"),
        hovermode="closest", plot_bgcolor="white",
        xaxis=xaxis,
        yaxis=dict(tickmode="array", tickvals=layers, ticktext=[_layer_name(l, n_layers) for l in layers],
                   title="layer", zeroline=False, range=[min(layers) - 0.3, max(layers) + 1.1]),
        legend=dict(orientation="h", x=0.0, y=1.01, xanchor="left", yanchor="bottom"),
        margin=dict(l=60, r=20, t=80, b=120))


# -- the standalone page ---------------------------------------------------------------------------
_BODY = ('<p id="summary" class="meta"></p>'
         '<div id="prompt-row" class="controls hidden"><label>prompt <select id="prompt"></select></label></div>'
         '<div class="graph-row"><div id="graph"></div>'
         '<aside id="detail"><button id="detail-close" type="button">×</button>'
         '<div id="detail-body"></div></aside></div>'
         '<p id="message" class="meta"></p>')


def summary(graph: Graph) -> dict[str, Any]:
    """What the page states about the graph (from `GraphMeta`), shown above the figure."""
    m = graph.meta
    return {"method": m.method, "units": m.units, "model": m.model, "n_layers": m.n_layers,
            "n_prompts": m.n_prompts, "faithfulness": m.faithfulness, "completeness": m.completeness,
            "nodes": len(graph.nodes), "edges": len(graph.edges)}


def _view(graph: Graph, name: str, url: Callable[[Node], str | None], heads: dict[str, Any],
          **kw: Any) -> dict[str, Any]:
    """One selectable view of the page: the figure and what the detail panel reads (``heads``:
    `head_details.view_heads`; patterns come with the token strings of their prompts)."""
    fig = graph_figure(graph, feature_url=url, **kw)
    nodes = {i: {**n.to_dict(), "url": url(n) or ""} for i, n in graph.nodes.items()}
    n_att = max((len(p) for p in heads.get("attention", {}).values()), default=0)
    return {"name": name, "figure": json.loads(fig.to_json()), "summary": summary(graph), "nodes": nodes,
            "edges": [[s, t, w] for (s, t), w in graph.edges.items()], "heads": heads,
            "tokens": list(_tokens(graph)), "prompt_tokens": [list(t) for t in graph.meta.prompt_tokens[:n_att]],
            "units": graph.meta.units}


def page_views(graph: Graph, feature_url: Any = None, **kw: Any) -> tuple[list[dict[str, Any]], int]:
    """The graph and (up to ``MAX_PROMPTS``) of its ``per_prompt`` graphs; the view shown first is
    the single prompt's positional graph when there is one prompt, else the graph itself."""
    from mechscope.apps.head_details import view_heads

    url = _url_fn(feature_url)
    views = [_view(graph, f"all prompts ({graph.meta.method or 'graph'})", url, view_heads(graph, graph, None), **kw)]
    prompts = graph.meta.prompts
    for k, g in enumerate(graph.per_prompt[:MAX_PROMPTS]):
        text = prompts[k] if k < len(prompts) else (g.meta.prompts[0] if g.meta.prompts else "")
        views.append(_view(g, f"prompt {k}: {text[:60]}", url, view_heads(graph, g, k), **kw))
    return views, 1 if len(graph.per_prompt) == 1 else 0


def write_graph_html(graph: Graph, path: "str | Path", threshold: float | int | None = None,
                     n_levels: int = 6, feature_url: Any = None, routes: bool = True, title: str | None = None,
                     max_edges: int | None = MAX_EDGES) -> Path:
    """Write the viewer as an offline HTML page (plotly.js shared as ``plotly.min.js`` next to it);
    returns its path. Clicking a node opens its detail panel (module doc)."""
    views, first = page_views(graph, feature_url, threshold=threshold, n_levels=n_levels, routes=routes,
                              title=title, max_edges=max_edges)
    page = standalone_page(f"mechscope graph: {title or graph.meta.method or 'graph'}", _BODY,
                           {"views": views, "first": first}, [asset("tokens.js"), asset("graph.js")], css=asset("common.css"),
                           plotly_src=shared_plotly(Path(path).parent))
    return write_text(path, page)
