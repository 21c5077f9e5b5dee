"""Sparse feature circuits (Marks et al. 2024, arXiv:2403.19647): nodes, edges, faithfulness.

Nodes. Every node ``a`` of every site (dictionary features and error terms, heads, components;
see `mechscope.circuits.splice`) is scored against the metric by `attribution.node_scores`
(attribution patching or integrated gradients, towards the setup's reference), averaged over the
prompts and, unless ``per_position``, summed over positions. Nodes with ``|score| >=
node_threshold`` are kept.

Edges. The weight of ``u -> d`` (``u`` at an upstream site ``U``, ``d`` at a downstream site ``D``)
is the effect of ``u`` on ``d`` through direct paths only, weighted by ``d``'s effect on ``m``:

    w(u -> d) = (dm/dd) · (dd/du)|_{sites between U and D held fixed} · delta_u

(Marks et al. eq. 5). It is computed by a forward pass in which ``U``'s activation is a leaf, the
sites strictly between ``U`` and ``D`` are replaced by their (constant) clean values, and ``D``'s
nodes are recomputed from its activation (the dictionary's encoder included), followed by one
backward per kept downstream node. Edges into the metric node (a ``logit`` node) are the same
with all later sites held fixed: the direct effect of ``u`` on ``m``. ``delta_u`` is
``a_ref - a_clean`` (``a_clean`` for gradient x activation). With linear pieces between ``u`` and
``d`` (e.g. an attention-only model without LayerNorm, into the metric) the weight equals the
intervention exactly. With ``method="ig"`` the Jacobian ``dd/du`` is averaged over ``steps``
midpoints of ``U``'s straight path from clean to reference (the left factor stays the clean
``dm/dd``), so the weights of all of ``U``'s nodes into ``d`` add up to the change of
``(dm/dd) · d`` when ``U`` is patched; this matters where attention saturates and the clean
gradient vanishes (first-order attribution patching then misses heads whose real effect is
large; Kramár et al. 2024, "AtP*", arXiv:2403.00745).

Faithfulness and completeness (Marks et al. §3.2), for the setup's ablation: with ``m(C)`` the
metric when every node outside the circuit ``C`` takes its reference value (the nodes of ``C``
recomputed from their modified inputs), ``F(C) = (m(C) - m(empty)) / (m(model) - m(empty))``;
completeness is ``F`` of the complement (0 is best). ``F(full) = 1`` and ``F(empty) = 0`` hold by
construction: the full circuit is the unmodified (spliced) model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool
from torch import Tensor

from mechscope.circuits.attribution import (Setup, clean_run, masked_run, metric_of, node_scores,
                                            reference, run_direct, split_all)
from mechscope.circuits.graph import Graph, GraphMeta, Node, parse_node_id
from mechscope.circuits.splice import SiteNodes, site_rank
from mechscope.interp.sites import Site

Kept = list[tuple[int, int | None]]  # (node index within its site, position or None)


def reduce_scores(scores: Tensor, per_position: bool) -> Tensor:
    """``[b, p, n]`` → mean over prompts → ``[p, n]`` (``per_position``) or summed ``[n]``."""
    s = scores.mean(0)
    return s if per_position else s.sum(0)


def select(score: Tensor, threshold: float) -> Kept:
    """Nodes with ``|score| >= threshold`` as ``(node, position)``."""
    hits = (score.abs() >= threshold).nonzero().tolist()
    return [(h[-1], h[0] if score.ndim == 2 else None) for h in hits]


def metric_node(setup: Setup) -> Node:
    m = clean_run(setup)["metric"].mean().item()
    return Node("logit", setup.model.n_layers, None, None, getattr(setup.metric, "__name__", "metric"),
                None, m)


def site_node(setup: Setup, site: Site, j: int, pos: int | None, score: float) -> Node:
    kind, index, label = setup.nodes[site].describe(j)
    return Node(kind, site.layer, pos, index, label if pos is None else f"{label} @{pos}", str(site), score)


def feature_circuit(setup: Setup, method: str = "atp", node_threshold: float = 0.1,
                    edge_threshold: float | None = None, per_position: bool = False,
                    steps: int = 10, edges: bool = True, relative: bool = False) -> Graph:
    """The sparse feature circuit of ``setup`` (see module doc) as a `Graph`.

    Node scores and edge weights are in units of the metric; with ``relative`` the node
    threshold is a fraction of the largest ``|score|``. ``edge_threshold`` None keeps every
    computed edge; edges are computed only between kept nodes (and into the metric node)."""
    scores = {s: reduce_scores(v, per_position) for s, v in node_scores(setup, method, steps).items()}
    if relative:
        top = max(float(v.abs().max()) for v in scores.values())
        node_threshold = node_threshold * top if top > 0 else float("inf")
    g = Graph(meta=GraphMeta.traced(
        setup.model, f"sparse_feature_circuit/{method}", "metric", setup.clean.tolist(),
        {**setup.params(), "node_threshold": node_threshold, "edge_threshold": edge_threshold,
         "per_position": per_position, "relative_threshold": relative,
         "steps": steps if method == "ig" else None}))
    out = g.add_node(metric_node(setup))
    kept = {s: select(scores[s], node_threshold) for s in setup.sites}
    for s, nodes in kept.items():
        for j, p in nodes:
            g.add_node(site_node(setup, s, j, p, float(scores[s][j] if p is None else scores[s][p, j])))
    if edges:
        for (u, d, w) in circuit_edges(setup, kept, per_position, method, steps):
            if edge_threshold is None or abs(w) >= edge_threshold:
                g.add_edge(u, d if d is not None else out, w)
    return g


def _deltas(setup: Setup, method: str) -> dict[Site, tuple[Tensor, ...]]:
    parts = split_all(setup, clean_run(setup)["acts"])
    if method == "grad_x_act":
        return parts
    ref = reference(setup)
    return {s: tuple(r - p for r, p in zip(ref[s], parts[s])) for s in setup.sites}


def circuit_edges(setup: Setup, kept: dict[Site, Kept], per_position: bool,
                  method: str = "atp", steps: int = 10) -> list[tuple[str, str | None, float]]:
    """``(upstream id, downstream id or None for the metric, weight)`` between kept nodes;
    with ``method="ig"`` the upstream Jacobian is averaged over ``steps`` points of the path."""
    steps = steps if method == "ig" else None
    deltas, out = _deltas(setup, method), []
    downstream: list[Site | None] = [s for s in setup.sites if kept[s]] + [None]
    for d in downstream:
        ups = [u for u in setup.sites if kept[u] and (d is None or site_rank(u) < site_rank(d))]
        for u in ups:
            grads = direct_grads(setup, u, d, None if d is None else kept[d], steps)
            # into the metric there is one target (None); otherwise one per kept node of d
            targets: list[tuple[int, int | None] | None] = [None] if d is None else list(kept[d])
            for t, grad_u in zip(targets, grads):
                sc = SiteNodes.score(setup.nodes[u].grads(grad_u), deltas[u]).mean(0)
                dst = None if d is None or t is None else site_node(setup, d, t[0], t[1], 0.0).id
                for j, p in kept[u]:
                    w = float(sc[:, j].sum() if p is None else sc[p, j])
                    out.append((site_node(setup, u, j, p, 0.0).id, dst, w))
    return out


def direct_grads(setup: Setup, up: Site, down: Site | None, targets: Kept | None,
                 steps: int | None = None) -> list[Tensor]:
    """For each downstream target, the gradient w.r.t. ``up``'s activation of
    ``sum (dm/dd)|_clean · d`` through direct paths (intermediate sites held at clean values);
    with ``steps``, averaged along ``up``'s straight path from clean to reference (IG edges).
    ``down=None`` means the metric itself: one gradient, and ``targets`` must be None."""
    if (down is None) != (targets is None):
        raise ValueError("targets are the kept nodes of a downstream site: give both down and "
                         f"targets, or neither (the metric); got down={down}, targets={targets}")
    clean = clean_run(setup)
    x0 = clean["acts"][up]
    k = steps or 1
    rep = lambda t: t.repeat(k, *[1] * (t.ndim - 1))  # noqa: E731
    if steps:
        alpha = ((torch.arange(k) + 0.5) / k).repeat_interleave(x0.shape[0]).view(-1, *[1] * (x0.ndim - 1))
        x1 = setup.nodes[up].merge(reference(setup)[up]).expand_as(x0)
        x_up = (rep(x0) * (1 - alpha) + rep(x1) * alpha).requires_grad_()
    else:
        x_up = x0.clone().requires_grad_()
    with torch.enable_grad():
        res, act_down = run_direct(setup, up, lambda a: x_up, down, repeat=k)
        if down is None:
            values = [metric_of(setup, res).sum()]
        else:
            sn = setup.nodes[down]
            left = SiteNodes.score(sn.grads(rep(clean["grads"][down])), sn.split(act_down))  # [kb,p,n]
            values = [left[:, :, j].sum() if p is None else left[:, p, j].sum() for j, p in targets]
        grads = []
        for v in values:
            (gr,) = torch.autograd.grad(v, x_up, retain_graph=True, allow_unused=True)
            setup._cache["backward"] = setup._cache.get("backward", 0) + 1
            gr = torch.zeros_like(x_up) if gr is None else gr
            grads.append(gr.view(k, *x0.shape).mean(0))
    return grads


# -- faithfulness -------------------------------------------------------------------------------
class Faithfulness(NamedTuple):
    faithfulness: float  # (m(C) - m(empty)) / (m(model) - m(empty))
    completeness: float  # the same for the complement of C (0 is best)
    m_model: float
    m_empty: float
    m_circuit: float
    m_complement: float
    ablation: str


def locate(setup: Setup, nid: str) -> tuple[Site, int, int | None]:
    """``(site, node index, position)`` of the node with canonical id ``nid`` in ``setup``,
    whichever method traced it (a head ``L0.H1`` is found at the setup's per-head site of
    layer 0)."""
    key = parse_node_id(nid)
    for s, sn in setup.nodes.items():
        j = sn.index_of(key)
        if j is not None:
            return s, j, key.position
    raise ValueError(f"graph node {nid} is not one of the setup's sites' nodes (sites "
                     f"{[str(s) for s in setup.sites]}); use the setup the graph was traced with")


def circuit_masks(graph: Graph, setup: Setup) -> dict[Site, Bool[Tensor, "p n"]]:
    """Per-site ``[p, n]`` masks of the graph's nodes (a summed node covers every position)."""
    p = setup.clean.shape[1]
    masks = {s: torch.zeros(p, sn.n_nodes, dtype=torch.bool) for s, sn in setup.nodes.items()}
    for nid, n in graph.nodes.items():
        if n.kind == "logit":
            continue
        s, j, pos = locate(setup, nid)
        masks[s][slice(None) if pos is None else pos, j] = True
    return masks


def faithfulness(graph: Graph, setup: Setup) -> Faithfulness:
    """Faithfulness and completeness of ``graph``'s nodes for the setup's ablation."""
    masks = circuit_masks(graph, setup)
    m_model = clean_run(setup)["metric"].mean().item()
    m_empty = masked_run(setup, {s: torch.zeros_like(k) for s, k in masks.items()}).mean().item()
    m_c = masked_run(setup, masks).mean().item()
    m_comp = masked_run(setup, {s: ~k for s, k in masks.items()}).mean().item()
    span = m_model - m_empty
    if abs(span) < 1e-12:
        raise ValueError(f"the metric does not change when every node is ablated ({setup.ablation}): "
                         f"m(model) = m(empty) = {m_model:.6g}; faithfulness is undefined")
    return Faithfulness((m_c - m_empty) / span, (m_comp - m_empty) / span, m_model, m_empty, m_c,
                        m_comp, setup.ablation)


def full_graph(setup: Setup, per_position: bool = False) -> Graph:
    """Every node of every site (scores 0), for checks of faithfulness by construction."""
    g = Graph(meta=GraphMeta.traced(setup.model, "full", "none (every node, scores 0)",
                                    setup.clean.tolist(), setup.params()))
    positions = range(setup.clean.shape[1]) if per_position else [None]
    for s, sn in setup.nodes.items():
        for j in range(sn.n_nodes):
            for p in positions:
                g.add_node(site_node(setup, s, j, p, 0.0))
    return g


def trace(setup: Setup, **kwargs: Any) -> tuple[Graph, Faithfulness]:
    """`feature_circuit` and its faithfulness, recorded in the graph's metadata (the metric's
    four values under ``meta.details["metric_values"]``)."""
    g = feature_circuit(setup, **kwargs)
    f = faithfulness(g, setup)
    g.meta = replace(g.meta, faithfulness=f.faithfulness, completeness=f.completeness,
                     details={**g.meta.details, "metric_values": {
                         "model": f.m_model, "empty": f.m_empty, "circuit": f.m_circuit,
                         "complement": f.m_complement}})
    return g, f
