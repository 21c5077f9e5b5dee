"""Sparse feature circuits (Marks et al. 2024, arXiv:2403.19647): nodes, edges, faithfulness.

Nodes. Every node ``a`` of every site (dictionary features and error terms, heads, components;
see `mechscope.circuits.splice`) is scored against the metric by `attribution.node_scores`
(attribution patching or integrated gradients, towards the setup's reference), averaged over the
prompts and, unless ``per_position``, summed over positions. Nodes with ``|score| >=
node_threshold`` are kept.

Edges. The weight of ``u -> d`` (``u`` at an upstream site ``U``, ``d`` at a downstream site ``D``)
is the effect of ``u`` on ``d`` through direct paths only, weighted by ``d``'s effect on ``m``:

    w(u -> d) = (dm/dd) · (dd/du)|_{sites between U and D held fixed} · delta_u

(Marks et al. eq. 5, ``method="atp"``). It is computed by a forward pass in which ``U``'s
activation is a leaf, the sites strictly between ``U`` and ``D`` are replaced by their (constant)
clean values, and ``D``'s nodes are recomputed from its activation (the dictionary's encoder
included), followed by one backward per kept downstream node. Edges into the metric node (a
``logit`` node) are the same with all later sites held fixed: the direct effect of ``u`` on
``m``. ``delta_u`` is ``a_ref - a_clean`` (``a_clean`` for gradient x activation). With linear
pieces between ``u`` and ``d`` (e.g. an attention-only model without LayerNorm, into the metric)
the weight equals the intervention exactly. Its failure mode: it is linear in ``d`` at the clean
point, so where attention saturates or the reference is far away it can get the sign wrong — on
attn-only-induction every L0H0 -> L1 head edge comes out positive while path patching says
negative (issue 13). It is the cheap option.

``method="ig"`` integrates along the path instead (`path_grads`): ``U`` moves from clean to
reference only inside ``d``'s input (the sites between held clean), ``d`` takes the resulting
value while ``D``'s other nodes stay clean, everything after ``D`` is recomputed, and the real
metric is differentiated at ``steps`` midpoints. The weights of all of ``U``'s nodes into ``d``
then add up to the metric change by path patching ``U`` into ``d`` (the ground truth of
`mechscope.circuits.verify`), up to the midpoint rule; on attn-only-induction the four L0H0 -> L1
edges agree in sign (and within ~15%) with path patching. Under saturation the midpoint rule
needs more steps (the planted induction model: 8 steps err by 0.23, 32 steps by 0.01).

Edges are computed only between site pairs that can interact (`reaches`: no residual site held
in between) and edges of weight exactly 0 are not kept.

Faithfulness and completeness (Marks et al. §3.2), for the setup's ablation: with ``m(C)`` the
metric when every node outside the circuit ``C`` takes its reference value (the nodes of ``C``
recomputed from their modified inputs), ``F(C) = (m(C) - m(empty)) / (m(model) - m(empty))``;
completeness is ``F`` of the complement (0 is best). ``F(full) = 1`` and ``F(empty) = 0`` hold by
construction: the full circuit is the unmodified (spliced) model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool
from torch import Tensor

from mechscope.circuits.attribution import (Setup, as_groups, clean_metric, clean_run, masked_run,
                                            mean_node_scores, metric_of, pieces, reference, run,
                                            run_direct, split_all)
from mechscope.circuits.graph import Graph, GraphMeta, Node, parse_node_id
from mechscope.circuits.splice import SiteNodes, site_rank
from mechscope.interp.sites import RESID_KINDS, Site

Kept = list[tuple[int, int | None]]  # (node index within its site, position or None)


def reduce_scores(scores: Tensor, per_position: bool) -> Tensor:
    """``[b, p, n]`` → mean over prompts → ``[p, n]`` (``per_position``) or summed ``[n]``."""
    s = scores.mean(0)
    return s if per_position else s.sum(0)


def _positions(mean_scores: Tensor, per_position: bool) -> Tensor:
    """``[p, n]`` mean over prompts → itself (``per_position``) or summed ``[n]``."""
    return mean_scores if per_position else mean_scores.sum(0)


def select(score: Tensor, threshold: float) -> Kept:
    """Nodes with ``|score| >= threshold`` as ``(node, position)``."""
    hits = (score.abs() >= threshold).nonzero().tolist()
    return [(h[-1], h[0] if score.ndim == 2 else None) for h in hits]


def metric_node(setup: "Setup | Sequence[Setup]", chunk: int | None = None) -> Node:
    """The metric's node, scored with the clean metric (mean over all prompts)."""
    groups = as_groups(setup)
    m = sum(share * clean_metric(g, chunk) for g, share in groups)
    first = groups[0][0]
    return Node("logit", first.model.n_layers, None, None, getattr(first.metric, "__name__", "metric"),
                None, m)


def site_node(setup: Setup, site: Site, j: int, pos: int | None, score: float) -> Node:
    kind, index, label = setup.nodes[site].describe(j)
    return Node(kind, site.layer, pos, index, label if pos is None else f"{label} @{pos}", str(site), score)


def feature_circuit(setup: "Setup | Sequence[Setup]", method: str = "atp", node_threshold: float = 0.1,
                    edge_threshold: float | None = None, per_position: bool = False,
                    steps: int = 10, edges: bool = True, relative: bool = False,
                    chunk: int | None = None, step_chunk: int | None = None) -> Graph:
    """The sparse feature circuit of ``setup`` (see module doc) as a `Graph`.

    Node scores and edge weights are in units of the metric; with ``relative`` the node
    threshold is a fraction of the largest ``|score|``. ``edge_threshold`` None keeps every
    computed edge; edges are computed only between kept nodes (and into the metric node).
    ``chunk`` / ``step_chunk``: prompts / IG steps per pass (memory bounded by them; the result
    is the same up to float rounding). Prompts of different lengths: one setup per length
    (`attribution.as_groups`); scores and edges are then means over all prompts, and the
    threshold applies to those means."""
    groups = as_groups(setup)
    if per_position and len(groups) > 1:
        raise ValueError("per-position nodes need prompts of one length; got "
                         f"{sorted({g.clean.shape[1] for g, _ in groups})}: trace them summed over positions")
    scores: dict[Site, Tensor] = {}
    for grp, share in groups:
        for s, v in mean_node_scores(grp, method, steps, chunk, step_chunk).items():
            v = share * _positions(v, per_position)
            scores[s] = v if s not in scores else scores[s] + v
    setup, setups = groups[0][0], [g for g, _ in groups]
    if relative:
        top = max(float(v.abs().max()) for v in scores.values())
        node_threshold = node_threshold * top if top > 0 else float("inf")
    g = Graph(meta=GraphMeta.traced(
        setup.model, f"sparse_feature_circuit/{method}", "metric",
        [row for grp in setups for row in grp.clean.tolist()],
        {**setup.params(), "n_prompts": sum(grp.clean.shape[0] for grp in setups),
         "seq_len": sorted({grp.clean.shape[1] for grp in setups}) if len(setups) > 1
         else setup.clean.shape[1], "node_threshold": node_threshold,
         "edge_threshold": edge_threshold, "per_position": per_position,
         "relative_threshold": relative, "steps": steps if method == "ig" else None,
         "chunk": chunk, "step_chunk": step_chunk}))
    out = g.add_node(metric_node(setups, chunk))
    kept = {s: select(scores[s], node_threshold) for s in setup.sites}
    for s, nodes in kept.items():
        for j, p in nodes:
            g.add_node(site_node(setup, s, j, p, float(scores[s][j] if p is None else scores[s][p, j])))
    if edges:
        weights: dict[tuple[str, str | None], float] = {}
        for sub, share in pieces(setups, chunk):
            for (u, d, w) in circuit_edges(sub, kept, per_position, method, steps, step_chunk):
                weights[(u, d)] = weights.get((u, d), 0.0) + share * w  # means over prompts
        for (u, d), w in weights.items():
            if edge_threshold is None or abs(w) >= edge_threshold:
                g.add_edge(u, d if d is not None else out, w)
    return g


def _deltas(setup: Setup, method: str) -> dict[Site, tuple[Tensor, ...]]:
    parts = split_all(setup, clean_run(setup)["acts"])
    if method == "grad_x_act":
        return parts
    ref = reference(setup)
    return {s: tuple(r - p for r, p in zip(ref[s], parts[s])) for s in setup.sites}


def reaches(setup: Setup, up: Site, down: Site | None) -> bool:
    """Whether ``up`` can act on ``down`` (None: the metric) by a path that avoids the setup's
    other sites: no residual-stream site lies strictly between them (holding one at its clean
    value cuts every path, so such edges are 0 by construction and are never computed)."""
    if down is not None and site_rank(up) >= site_rank(down):
        return False
    end = (10 ** 9, 0) if down is None else site_rank(down)
    return not any(s.kind in RESID_KINDS and site_rank(up) < site_rank(s) < end for s in setup.sites)


def circuit_edges(setup: Setup, kept: dict[Site, Kept], per_position: bool,
                  method: str = "atp", steps: int = 10,
                  step_chunk: int | None = None) -> list[tuple[str, str | None, float]]:
    """``(upstream id, downstream id or None for the metric, weight)`` between kept nodes of site
    pairs that can interact (`reaches`); edges of weight exactly 0 (e.g. a later position into an
    earlier one under causal attention) are left out. ``method="ig"``: path-integrated edges
    (`path_grads`, ``step_chunk`` points per pass); otherwise the clean-gradient estimate
    (`direct_grads`)."""
    deltas, out = _deltas(setup, method), []
    downstream: list[Site | None] = [s for s in setup.sites if kept[s]] + [None]
    for d in downstream:
        for u in [u for u in setup.sites if kept[u] and reaches(setup, u, d)]:
            targets = None if d is None else kept[d]
            grads = (path_grads(setup, u, d, targets, steps, step_chunk) if method == "ig"
                     else direct_grads(setup, u, d, targets))
            # into the metric there is one target (None); otherwise one per kept node of d
            for t, grad_u in zip([None] if targets is None else targets, grads):
                sc = SiteNodes.score(setup.nodes[u].grads(grad_u), deltas[u]).mean(0)
                dst = None if t is None else site_node(setup, d, t[0], t[1], 0.0).id
                for j, p in kept[u]:
                    w = float(sc[:, j].sum() if p is None else sc[p, j])
                    if w != 0.0:
                        out.append((site_node(setup, u, j, p, 0.0).id, dst, w))
    return out


def _check_targets(down: Site | None, targets: Kept | None) -> None:
    if (down is None) != (targets is None):
        raise ValueError("targets are the kept nodes of a downstream site: give both down and "
                         f"targets, or neither (the metric); got down={down}, targets={targets}")


def direct_grads(setup: Setup, up: Site, down: Site | None, targets: Kept | None) -> list[Tensor]:
    """AtP edges (Marks et al. eq. 5): for each downstream target, the gradient w.r.t. ``up``'s
    clean activation of ``sum (dm/dd)|_clean · d`` through direct paths (intermediate sites held
    at clean values). ``down=None`` means the metric itself: one gradient, ``targets`` None.

    Cheap (one forward and one backward per target) but linear in ``d``: where ``d``'s effect on
    the metric saturates, or ``u``'s reference is far from its clean value, it can have the wrong
    sign (on attn-only-induction L0H0 -> L1 heads are positive, path patching says negative);
    `path_grads` is the faithful option."""
    _check_targets(down, targets)
    clean = clean_run(setup)
    x_up = clean["acts"][up].clone().requires_grad_()
    with torch.enable_grad():
        res, act_down = run_direct(setup, up, lambda a: x_up, down)
        if down is None:
            values = [metric_of(setup, res).sum()]
        else:
            sn = setup.nodes[down]
            left = SiteNodes.score(sn.grads(clean["grads"][down]), sn.split(act_down))  # [b,p,n]
            values = [left[:, :, j].sum() if p is None else left[:, p, j].sum() for j, p in targets]
        return [_grad(setup, v, x_up) for v in values]


def path_grads(setup: Setup, up: Site, down: Site | None, targets: Kept | None,
               steps: int = 10, step_chunk: int | None = None) -> list[Tensor]:
    """Path-integrated edges: for each downstream target ``d``, the mean over ``steps`` midpoints
    ``alpha`` of the gradient w.r.t. ``x_U`` of

        f_d(alpha) = m(node d := d(x_U(alpha)) by direct paths; D's other nodes clean;
                       everything after D recomputed),   x_U(alpha) = x_U + alpha (x_U' - x_U),

    so ``U`` moves towards its reference only inside ``d``'s input, other paths clean, and the
    metric is the real one (no linearisation in ``d``). By the IG completeness identity the edge
    weights of all of ``U``'s nodes into ``d`` add up to ``f_d(1) - f_d(0)``: the metric change by
    path patching ``U`` into ``d`` (`mechscope.circuits.verify`), up to the midpoint rule. Into
    the metric (``down`` None) ``f(alpha)`` is the metric with every later site held clean.

    Rows of one forward and backward are (target, step) points x prompts; ``step_chunk`` bounds
    the points per pass (``step_chunk // steps`` targets share a pass, or one target's steps are
    split when ``step_chunk < steps``); None: 8 targets with all their steps."""
    _check_targets(down, targets)
    if steps < 1:
        raise ValueError(f"integrated-gradient edges need steps >= 1, got {steps}")
    if step_chunk is not None and step_chunk < 1:
        raise ValueError(f"step_chunk must be >= 1 point per pass, got {step_chunk}")
    todo: list[tuple[int, int | None] | None] = [None] if targets is None else list(targets)
    per = 8 * steps if step_chunk is None else step_chunk
    t_per, s_per = max(1, per // steps), min(steps, per)
    out: list[Tensor] = []
    for i in range(0, len(todo), t_per):
        group, total = todo[i:i + t_per], None
        for first in range(0, steps, s_per):
            g = _path_grad_group(setup, up, down, group, steps, first, min(s_per, steps - first))
            total = g if total is None else total + g
        out += list((total / steps).unbind(0))
    return out


def _path_grad_group(setup: Setup, up: Site, down: Site | None,
                     targets: "list[tuple[int, int | None] | None]", steps: int, first: int,
                     k: int) -> Tensor:
    """The summed gradients of `path_grads` over midpoints ``first .. first + k - 1`` for a few
    targets at once, ``[T, b, ...]``: ``T`` targets x ``k`` points x ``b`` prompts as rows of one
    forward (each target's copy of ``x_U`` only reaches its own metric rows, so one backward
    gives every target's gradient)."""
    clean, T = clean_run(setup), len(targets)
    x0 = clean["acts"][up]
    b, rows = x0.shape[0], T * k
    rep = lambda t: t.repeat(rows, *[1] * (t.ndim - 1))  # noqa: E731
    alpha = ((torch.arange(first, first + k, device=x0.device) + 0.5) / steps).repeat_interleave(b).repeat(T)
    alpha = alpha.view(-1, *[1] * (x0.ndim - 1))
    x1 = setup.nodes[up].merge(reference(setup)[up]).expand_as(x0)
    x_up = (rep(x0) * (1 - alpha) + rep(x1) * alpha).requires_grad_()
    with torch.enable_grad():
        res, act_down = run_direct(setup, up, lambda a: x_up, down, repeat=rows)
        if down is not None:
            sn = setup.nodes[down]
            new, old = sn.split(act_down), tuple(rep(p) for p in split_all(setup, clean["acts"])[down])
            only_d = torch.ones(T, x0.shape[1], sn.n_nodes, dtype=torch.bool, device=x0.device)
            for t, (j, pos) in enumerate(targets):
                only_d[t, slice(None) if pos is None else pos, j] = False
            value = sn.merge(sn.mix(old, new, only_d.repeat_interleave(k * b, 0)))
            del new, old, act_down
            res = run(setup, setup.clean.repeat(rows, 1), {down: lambda a: value})
        m = metric_of(setup, res).sum()
        del res  # the [rows, p, vocab] logits are not needed by the backward
        g = _grad(setup, m, x_up, retain=False)
    return g.view(T, k, *x0.shape).sum(1)


def _grad(setup: Setup, value: Tensor, x: Tensor, retain: bool = True) -> Tensor:
    (g,) = torch.autograd.grad(value, x, retain_graph=retain, allow_unused=True)
    setup._cache["backward"] = setup._cache.get("backward", 0) + 1
    return torch.zeros_like(x) if g is None else g


# -- faithfulness -------------------------------------------------------------------------------
class Faithfulness(NamedTuple):
    faithfulness: float | None  # (m(C) - m(empty)) / (m(model) - m(empty)); None if undefined
    completeness: float | None  # the same for the complement of C (0 is best)
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


def faithfulness(graph: Graph, setup: "Setup | Sequence[Setup]", chunk: int | None = None) -> Faithfulness:
    """Faithfulness and completeness of ``graph``'s nodes for the setup's ablation (over every
    prompt of every group, ``chunk`` prompts per pass). When the metric does not move with every
    node ablated both are undefined: None, with a warning."""
    totals = [0.0, 0.0, 0.0, 0.0]
    for sub, share in pieces(setup, chunk):
        masks = circuit_masks(graph, sub)
        runs = (clean_run(sub)["metric"], masked_run(sub, {s: torch.zeros_like(k) for s, k in masks.items()}),
                masked_run(sub, masks), masked_run(sub, {s: ~k for s, k in masks.items()}))
        totals = [t + share * float(r.mean()) for t, r in zip(totals, runs)]
    m_model, m_empty, m_c, m_comp = totals
    ablation = as_groups(setup)[0][0].ablation
    span = m_model - m_empty
    if abs(span) < 1e-12:
        warnings.warn(f"the metric does not change when every node is ablated ({ablation}): "
                      f"m(model) = m(empty) = {m_model:.6g}; faithfulness is undefined (None)",
                      stacklevel=2)
        return Faithfulness(None, None, m_model, m_empty, m_c, m_comp, ablation)
    return Faithfulness((m_c - m_empty) / span, (m_comp - m_empty) / span, m_model, m_empty, m_c,
                        m_comp, ablation)


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


def trace(setup: "Setup | Sequence[Setup]", **kwargs: Any) -> tuple[Graph, Faithfulness]:
    """`feature_circuit` and its faithfulness, recorded in the graph's metadata (the metric's
    four values under ``meta.details["metric_values"]``); None where it is undefined. The
    faithfulness runs in the same ``chunk`` of prompts as the trace."""
    g = feature_circuit(setup, **kwargs)
    f = faithfulness(g, setup, kwargs.get("chunk"))
    g.meta = replace(g.meta, faithfulness=f.faithfulness, completeness=f.completeness,
                     details={**g.meta.details, "metric_values": {
                         "model": f.m_model, "empty": f.m_empty, "circuit": f.m_circuit,
                         "complement": f.m_complement}})
    return g, f
