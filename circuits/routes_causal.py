"""A causal filter for information flow routes: keep a route edge only if removing it moves the
metric.

Why. Routes (`mechscope.circuits.routes`, Ferrando & Voita 2024) rank the parts of each residual
update by how much of the update they make up, not by what they do downstream: a component that
is active but writes only to directions nothing downstream reads (an *inert writer*) makes up a
large share of the update and is on the route, though ablating it changes nothing. In a model with
inert writers the routes select all of them (precision suffers; the LM Transparency Tool shows
the same routes). Ferrando & Voita note the measure is about the residual stream's composition,
not causal effect.

The filter. For every edge of a route (heads view) an ablation by path patching
(`mechscope.interp.intervene.path_patch`; Wang et al. 2022, Goldowsky-Dill et al. 2023), with the
sender set to its reference (``"zero"`` by default, or ``"mean"`` over the prompt's positions):

* ``head(L,h)@i -> m^L_i`` (the head's write at ``i``): sender ``L{L}.z.H{h}`` at position ``i``
  into every reader downstream (later heads' q / k / v inputs, MLP inputs, the logits) — the
  head's output at ``i`` removed from the residual stream;
* ``mlp(L)@i -> x^{L+1}_i``: the same for ``L{L}.mlp_out``;
* ``x^L_j -> head(L,h)@i`` (the head reads source ``j``): sender ``x^L_j`` (``L{L}.resid_pre`` at
  ``j``) into that head's key and value inputs only (under grouped-query attention: its key /
  value head, shared with its group);
* ``m^L_i -> mlp(L)@i``: sender ``L{L}.resid_mid`` at ``i`` into ``L{L}.mlp_in``.

With ``e`` the metric change (patched minus clean), the edge is kept when ``|e| > tol``; residual
(skip) edges are kept. Then only what is still reached top-down from the route's top node stays.
The metric defaults to the logit, at the route's position, of the token the route explains (its
signed target, else the model's prediction); any `circuits.metrics` metric can be given. Each
tested edge's ``e`` is recorded in ``meta.details["causal_effects"]`` and ``tol`` / the reference
in ``meta.parameters``. Cost: two forward passes per tested edge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mechscope.circuits.graph import Graph, Node
from mechscope.interp.intervene import path_patch
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

REFERENCES = ("zero", "mean")


def readers(model: Model, layer: int, after_mlp: bool) -> list[str]:
    """Every receiver downstream of a write at ``layer`` (after its attention, or its MLP)."""
    out = ["logits"]
    for L in range(layer + 1, model.n_layers):
        out += [f"L{L}.q", f"L{L}.k", f"L{L}.v"]
    if not model.attn_only:
        out += [f"L{L}.mlp_in" for L in range(layer + (1 if after_mlp else 0), model.n_layers)]
    return out


def _x_site(node: Node) -> str:
    """The site of a residual node ``x^L_j`` (the embedding is ``L0.resid_pre``)."""
    return "L0.resid_pre" if node.kind == "embedding" else str(node.site)


def edge_patch(model: Model, src: Node, dst: Node) -> tuple[str, list[str], int] | None:
    """``(sender, receivers, position)`` of the path patch that removes route edge ``src ->
    dst`` (module doc); None for residual (skip) edges, which the filter keeps."""
    if src.kind == "head":
        return f"L{src.layer}.z.H{src.index}", readers(model, src.layer, False), int(src.position)
    if src.kind == "mlp":
        return f"L{src.layer}.mlp_out", readers(model, src.layer, True), int(src.position)
    if dst.kind == "head":
        kv = dst.index // max(1, model.n_heads // model.n_kv_heads)
        return _x_site(src), [f"L{dst.layer}.k.H{kv}", f"L{dst.layer}.v.H{kv}"], int(src.position)
    if dst.kind == "mlp":
        return f"L{dst.layer}.resid_mid", [f"L{dst.layer}.mlp_in"], int(src.position)
    return None


def _default_metric(route: Graph) -> Callable[[Tensor], Tensor]:
    d, pos = route.meta.details, int(route.meta.parameters["position"])
    token = int(d["target"]) if route.meta.parameters.get("signed") else int(d["prediction"])
    return lambda logits: logits[:, pos, token]


def causal_filter(model: "ModelLike", route: Graph, tokens: Int[Tensor, "pos"], tol: float,
                  metric: Callable[[Tensor], Tensor] | None = None, reference: str = "zero") -> Graph:
    """``route`` (one prompt's route, heads view, from `routes.extract_route`) without the edges
    whose removal by path patching moves the metric by at most ``tol`` (module doc)."""
    model = Model.wrap(model)
    if route.meta.parameters.get("view") != "heads":
        raise ValueError("the causal filter needs routes in the 'heads' view (each edge one "
                         f"component's read or write); got view {route.meta.parameters.get('view')!r}")
    if tol < 0:
        raise ValueError(f"the causal filter's tolerance must be >= 0, got {tol}")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; valid: {', '.join(REFERENCES)}")
    tokens = torch.as_tensor(tokens).view(1, -1).to(model.device)
    metric = metric or _default_metric(route)
    with torch.no_grad():
        m0 = float(metric(model(tokens)).mean())
        effects: dict[str, float] = {}
        kept: dict[tuple[str, str], float] = {}
        for (s, t), w in route.edges.items():
            spec = edge_patch(model, route.nodes[s], route.nodes[t])
            if spec is None:
                kept[(s, t)] = w
                continue
            sender, receivers, pos = spec
            logits = path_patch(model, tokens, sender, receivers, reference, positions=[pos])
            e = float(metric(logits).mean()) - m0
            effects[f"{s}->{t}"] = e
            if abs(e) > tol:
                kept[(s, t)] = w
    return _reached(route, kept, effects, tol, reference)


def _reached(route: Graph, kept: dict[tuple[str, str], float], effects: dict[str, float],
             tol: float, reference: str) -> Graph:
    """The route restricted to ``kept`` edges and to what its top node still reaches."""
    top = _top(route)
    reach, frontier = {top}, [top]
    while frontier:
        node = frontier.pop()
        for (s, t) in kept:
            if t == node and s not in reach:
                reach.add(s)
                frontier.append(s)
    meta = replace(route.meta, parameters={**route.meta.parameters, "causal_filter": tol,
                                           "causal_reference": reference},
                   details={**route.meta.details, "causal_effects": effects})
    return Graph({i: n for i, n in route.nodes.items() if i in reach},
                 {e: w for e, w in kept.items() if e[0] in reach and e[1] in reach}, meta)


def _top(route: Graph) -> str:
    """The route's top node: the final residual at the traced position (no outgoing edges)."""
    sources = {s for s, _ in route.edges}
    tops = [i for i in route.nodes if i not in sources]
    if len(tops) != 1:
        raise ValueError(f"a route has one top node (the final residual); this graph has {tops[:4]}")
    return tops[0]
