"""Information flow routes over a dataset: batching and head / MLP / edge frequencies.

Ferrando & Voita (2024, §5-6) analyse which components are on the routes of many predictions;
the LM Transparency Tool shows one prompt at a time. Here each prompt's route (`routes.py`) is
reduced to a position-free *component graph*: nodes are the embedding, heads ``(L, h)``, MLPs
``L`` and the prediction (a ``logit`` node); ``u -> v`` is an edge when the route carries ``u``'s
output into ``v``'s input through residual-stream nodes only (``u`` writes a residual state
that ``v`` reads, possibly via skip connections). Averaging these 0/1 graphs over prompts
(`Graph.aggregate`) gives, for every node and edge, the fraction of routes it is on. Node ids are
canonical (``embed``, ``L1.H3``, ``L0.mlp``, ``logit``), the same as other methods give the same
components.

Prompts of equal length share one batched forward pass; different lengths go in separate
batches (no padding, so positions and attention are exactly those of each prompt alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.circuits.graph import Graph, Node, head_label, mlp_label
from mechscope.circuits.routes import DEFAULT_TAU, extract_route, flow_contributions
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

COMPONENT_KINDS = ("embedding", "head", "mlp")


def prompt_routes(model: "ModelLike", prompts: "Sequence[Tensor] | Tensor", tau: float = DEFAULT_TAU,
                  view: str = "heads", signed: bool = False, batch_size: int = 16,
                  position: int = -1) -> list[Graph]:
    """The route of every prompt (token ids, ``[pos]`` each or a ``[batch, pos]`` tensor), in
    input order; equal-length prompts share forward passes of up to ``batch_size``."""
    model = Model.wrap(model)
    rows = list(prompts) if not isinstance(prompts, Tensor) or prompts.ndim == 2 else [prompts]
    if not rows:
        raise ValueError("no prompts given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_len: dict[int, list[int]] = {}
    for k, r in enumerate(rows):
        by_len.setdefault(int(torch.as_tensor(r).numel()), []).append(k)
    out: list[Graph | None] = [None] * len(rows)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            toks = torch.stack([torch.as_tensor(rows[k]).view(-1) for k in chunk])
            c = flow_contributions(model, toks, signed=signed)
            for b, k in enumerate(chunk):
                out[k] = extract_route(c, b, position, tau, view, model.to_str_tokens(toks[b]), model.name)
    return out  # type: ignore[return-value]


def _component(nd: Node, n_layers: int) -> Node | None:
    if nd.kind == "head":
        return Node("head", nd.layer, None, nd.index, label=head_label(nd.layer, nd.index), score=1.0)
    if nd.kind == "mlp":
        return Node("mlp", nd.layer, None, label=mlp_label(nd.layer), score=1.0)
    if nd.kind == "embedding":
        return Node("embedding", -1, None, label="embedding", score=1.0)
    return None


def component_graph(route: Graph, n_layers: int) -> Graph:
    """Position-free 0/1 graph of the components on one route (module doc)."""
    parents: dict[str, list[str]] = {}
    for s, t in route.edges:
        parents.setdefault(t, []).append(s)
    memo: dict[str, set[str]] = {}

    def writers(rid: str) -> set[str]:
        """Components whose output reaches residual node ``rid`` through residual nodes only."""
        if rid not in memo:
            found: set[str] = set()
            for p in parents.get(rid, []):
                kind = route.nodes[p].kind
                found |= writers(p) if kind == "residual" else {p}
            memo[rid] = found
        return memo[rid]

    g = Graph(meta=replace(route.meta, method="information_flow_routes/components",
                           units="on the route (1) or not (0)"))
    logit = g.add_node(Node("logit", n_layers, None, label="prediction", score=1.0))
    tops = [i for i, nd in route.nodes.items() if nd.kind == "residual" and i not in
            {s for s, _ in route.edges}]
    readers = [(logit, w) for top in tops for w in writers(top)]
    for vid, vnd in route.nodes.items():
        comp = _component(vnd, n_layers)
        if comp is None or vnd.kind == "embedding":
            continue
        for p in parents.get(vid, []):
            srcs = writers(p) if route.nodes[p].kind == "residual" else {p}
            readers += [(comp.id, w) for w in srcs]
        g.add_node(comp)
    for dst, src in readers:
        comp = _component(route.nodes[src], n_layers)
        if comp is not None:
            g.add_node(comp)
            g.add_edge(comp.id, dst, 1.0)
    return g


def aggregate_routes(routes: Sequence[Graph], n_layers: int) -> Graph:
    """Fraction of routes each embedding / head / MLP / component edge is on (module doc)."""
    if not routes:
        raise ValueError("no routes to aggregate")
    agg = Graph.aggregate([component_graph(r, n_layers) for r in routes], reduce="mean")
    agg.meta = replace(agg.meta, units="fraction of routes")
    return agg
