"""Causal verification of traced graphs: interventions per node and edge, and known circuits.

`verify_edges(graph, setup)` measures what each kept node and edge really does:

* node ``a``: ``m(a := a_ref) - m(clean)``, every other node recomputed (full downstream effect),
  mean over prompts — what attribution patching / IG estimate to first order;
* edge ``u -> d``: path patching (Wang et al. 2022, arXiv:2211.00593; Goldowsky-Dill et al.
  2023, arXiv:2304.05969) over the setup's sites: ``u := u_ref`` at its site ``U``, the sites
  strictly between ``U`` and ``D`` held at their clean values, ``D``'s activation recomputed from
  that (so ``u``'s change reaches ``D`` by direct paths only, as in the edge's definition); then
  only node ``d`` of ``D`` takes its new value — ``D``'s other nodes keep their clean values —
  and everything downstream of ``D`` is recomputed: ``m(u -> d patched) - m(clean)``, mean over
  prompts. Into the metric node the edge is ``u``'s direct effect (every later site held clean).
  For heads at ``z`` sites this is `mechscope.interp.intervene.path_patch` of ``u`` into the
  ``q`` / ``k`` / ``v`` inputs of head ``d``. No gradient enters: a linearised quantity never
  checks itself.

Agreement (`Verification`): sign agreement (the share of nodes / edges whose attribution has the
sign of the real effect), the Spearman rank correlation between attributions and effects
(Pearson correlation of ranks, ties averaged), the share of the effect explained
(``1 - sum (a - e)^2 / sum e^2``) and the largest absolute difference. Interventions are
batched: ``K`` nodes (or upstream nodes of one site pair) run as ``K`` copies of the prompts in one
forward pass; prompts run ``chunk`` at a time (every effect is a mean over prompts, so chunks
add up to the batch and memory does not grow with the number of prompts), and one setup per
prompt length gives effects over prompts of several lengths.

`score_against(graph, known)` compares the set of components a graph keeps with a known circuit
given as data (canonical node ids or ``(kind, layer, index)`` triples; positions ignored):
precision ``|G∩K|/|G|``, recall ``|G∩K|/|K|``, F1 — over the node kinds the known circuit names.
Components are compared by canonical id, so a graph of any method (feature circuits, routes,
attention-SVD) can be scored, and, where its nodes are the setup's, verified by intervention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechscope.circuits.attribution import (Setup, as_groups, clean_run, masked_run, metric_of,
                                            pieces, reference, run, run_direct, split_all)
from mechscope.circuits.feature_circuits import locate
from mechscope.circuits.graph import Graph, Node, head_label, node_id, parse_node_id, without_position
from mechscope.interp.sites import Site

Component = tuple[str, int, "int | None"]  # (node kind, layer, index) of a known circuit


def spearman(a: Iterable[float | int], b: Iterable[float | int]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 2 points."""
    x, y = torch.tensor(list(a), dtype=torch.float64), torch.tensor(list(b), dtype=torch.float64)
    if x.numel() != y.numel():
        raise ValueError(f"need equal lengths, got {x.numel()} and {y.numel()}")
    if x.numel() < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.norm() * ry.norm()).item()
    return float((rx @ ry).item() / den) if den > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    for v in x.unique():  # average the ranks of ties
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def sign_agreement(attribution: Iterable[float], effect: Iterable[float], tol: float = 1e-6) -> float:
    """Share of items whose attribution has the sign of the effect (effects within ``tol`` of 0
    count as agreeing with an attribution within ``tol`` of 0); nan when empty."""
    pairs = list(zip(attribution, effect))
    if not pairs:
        return float("nan")
    sign = lambda v: 0 if abs(v) <= tol else (1 if v > 0 else -1)  # noqa: E731
    return sum(sign(a) == sign(e) for a, e in pairs) / len(pairs)


def explained(attribution: Iterable[float], effect: Iterable[float]) -> float:
    """``1 - sum (a - e)^2 / sum e^2``: the share of the real effects the attribution explains
    (1 when equal, 0 for all-zero attributions, negative when worse than that); nan when every
    effect is 0."""
    a = torch.tensor(list(attribution), dtype=torch.float64)
    e = torch.tensor(list(effect), dtype=torch.float64)
    den = float((e * e).sum())
    return 1.0 - float(((a - e) ** 2).sum()) / den if den > 0 else float("nan")


@dataclass
class Verification:
    """Attribution vs intervention, for nodes and edges (ids in graph order)."""

    node_ids: list[str]
    node_attribution: list[float]
    node_effect: list[float]
    edge_ids: list[tuple[str, str]]
    edge_attribution: list[float]
    edge_effect: list[float]

    @property
    def node_rank_corr(self) -> float:
        return spearman(self.node_attribution, self.node_effect)

    @property
    def edge_rank_corr(self) -> float:
        return spearman(self.edge_attribution, self.edge_effect)

    @property
    def node_max_error(self) -> float:
        return max((abs(a - b) for a, b in zip(self.node_attribution, self.node_effect)), default=0.0)

    @property
    def edge_max_error(self) -> float:
        return max((abs(a - b) for a, b in zip(self.edge_attribution, self.edge_effect)), default=0.0)

    @property
    def node_sign_agreement(self) -> float:
        return sign_agreement(self.node_attribution, self.node_effect)

    @property
    def edge_sign_agreement(self) -> float:
        return sign_agreement(self.edge_attribution, self.edge_effect)

    @property
    def node_explained(self) -> float:
        return explained(self.node_attribution, self.node_effect)

    @property
    def edge_explained(self) -> float:
        return explained(self.edge_attribution, self.edge_effect)

    def summary(self) -> dict[str, float | int]:
        return {"nodes": len(self.node_ids), "node_sign_agreement": self.node_sign_agreement,
                "node_rank_corr": self.node_rank_corr, "node_explained": self.node_explained,
                "node_max_error": self.node_max_error, "edges": len(self.edge_ids),
                "edge_sign_agreement": self.edge_sign_agreement,
                "edge_rank_corr": self.edge_rank_corr, "edge_explained": self.edge_explained,
                "edge_max_error": self.edge_max_error}


def _locate(graph: Graph, setup: Setup, nid: str) -> tuple[Site, int, int | None]:
    if nid not in graph.nodes:
        raise KeyError(f"{nid!r} is not a node of this graph")
    return locate(setup, nid)


def _one_off(setup: Setup, site: Site, targets: list[tuple[int, int | None]]) -> Tensor:
    """``[K, p, n]`` keep mask of ``site``: copy k drops node ``targets[k]`` only."""
    keep = torch.ones(len(targets), setup.clean.shape[1], setup.nodes[site].n_nodes, dtype=torch.bool)
    for k, (j, pos) in enumerate(targets):
        keep[k, slice(None) if pos is None else pos, j] = False
    return keep


def verify_nodes(graph: Graph, setup: "Setup | Sequence[Setup]", per_pass: int = 32,
                 chunk: int | None = None) -> tuple[list[str], list[float]]:
    """Real effect of setting each graph node to its reference value, mean over prompts
    (``per_pass`` nodes x ``chunk`` prompts per forward)."""
    ids = [i for i, n in graph.nodes.items() if n.kind != "logit"]
    first = as_groups(setup)[0][0]
    where = {nid: _locate(graph, first, nid) for nid in ids}
    effects = dict.fromkeys(ids, 0.0)
    for sub, share in pieces(setup, chunk):
        m0, (b, p) = clean_run(sub)["metric"], sub.clean.shape
        for start in range(0, len(ids), per_pass):
            part = ids[start:start + per_pass]
            keep = {s: torch.ones(len(part) * b, p, sn.n_nodes, dtype=torch.bool) for s, sn in sub.nodes.items()}
            for k, nid in enumerate(part):
                s, j, pos = where[nid]
                keep[s][k * b:(k + 1) * b, slice(None) if pos is None else pos, j] = False
            m = masked_run(sub, keep, repeat=len(part)).view(len(part), b)
            for k, nid in enumerate(part):
                effects[nid] += share * float((m[k] - m0).mean())
    return ids, [effects[i] for i in ids]


def verify_edge_group(setup: "Setup | Sequence[Setup]", up: Site, down: Site | None,
                      ups: list[tuple[int, int | None]], downs: list[tuple[int, int | None]],
                      chunk: int | None = None) -> Tensor:
    """``[len(ups), len(downs)]`` real metric changes by path patching ``u -> d`` (module doc)."""
    total = None
    for sub, share in pieces(setup, chunk):
        eff = share * _path_effects(sub, up, down, _one_off(sub, up, ups), downs)
        total = eff if total is None else total + eff
    return total


def path_effects(setup: "Setup | Sequence[Setup]", up: Site, down: Site | None,
                 keep: Bool[Tensor, "K ..."], downs: list[tuple[int, int | None]],
                 chunk: int | None = None) -> Float[Tensor, "K d"]:
    """Metric change, mean over prompts, by path patching: for each of ``K`` masks, ``up``'s
    nodes where ``keep`` is False take their reference values, and that change reaches each
    downstream node ``(j, position or None)`` of ``down`` only (module doc); ``down`` None: the
    metric, one column. ``keep``: ``[K, n]`` (every position: any prompt length) or
    ``[K, p, n]``; ``chunk`` prompts per pass."""
    total = None
    for sub, share in pieces(setup, chunk):
        eff = share * _path_effects(sub, up, down, keep, downs)
        total = eff if total is None else total + eff
    return total


def _path_effects(setup: Setup, up: Site, down: Site | None, keep: Tensor,
                  downs: list[tuple[int, int | None]]) -> Tensor:
    """`path_effects` for one batch."""
    clean, ref, K = clean_run(setup), reference(setup), keep.shape[0]
    b = setup.clean.shape[0]
    if keep.ndim == 2:
        keep = keep[:, None].expand(K, setup.clean.shape[1], keep.shape[1])
    rep = lambda t: t.repeat(K, *[1] * (t.ndim - 1))  # noqa: E731
    sn_u, mask = setup.nodes[up], keep.repeat_interleave(b, 0)
    ref_u = tuple(rep(r) for r in ref[up])
    ablate_up = lambda a: sn_u.merge(sn_u.mix(sn_u.split(a), ref_u, mask))  # noqa: E731
    m0 = rep(clean["metric"])
    with torch.no_grad():
        out, act_down = run_direct(setup, up, ablate_up, down, repeat=K)
        if down is None:  # into the metric: the direct effect, later sites held clean
            return (metric_of(setup, out) - m0).view(K, b).mean(1)[:, None]
        sn_d = setup.nodes[down]
        new = sn_d.split(act_down)
        old = tuple(rep(p) for p in split_all(setup, clean["acts"])[down])
        cols = []
        for j, pos in downs:  # d takes its path-patched value, D's other nodes stay clean
            only_d = torch.ones(setup.clean.shape[1], sn_d.n_nodes, dtype=torch.bool)
            only_d[slice(None) if pos is None else pos, j] = False
            value = sn_d.merge(sn_d.mix(old, new, only_d))
            logits = run(setup, setup.clean.repeat(K, 1), {down: lambda a, v=value: v})
            cols.append((metric_of(setup, logits) - m0).view(K, b).mean(1))
    return torch.stack(cols, 1)


def verify_edges(graph: Graph, setup: "Setup | Sequence[Setup]", chunk: int | None = None) -> Verification:
    """Intervene on every node and edge of ``graph`` (traced with ``setup``: one setup, or one
    per prompt length) and compare; ``chunk`` prompts per pass."""
    first = as_groups(setup)[0][0]
    node_ids, node_eff = verify_nodes(graph, setup, chunk=chunk)
    groups: dict[tuple[Site, Site | None], list[tuple[str, str]]] = {}
    for (src, dst) in graph.edges:
        u = _locate(graph, first, src)[0]
        d = None if graph.nodes[dst].kind == "logit" else _locate(graph, first, dst)[0]
        groups.setdefault((u, d), []).append((src, dst))
    edge_ids, edge_eff = [], []
    for (u, d), pairs in groups.items():
        srcs = list(dict.fromkeys(s for s, _ in pairs))
        dsts = list(dict.fromkeys(t for _, t in pairs))
        ups = [_locate(graph, first, s)[1:] for s in srcs]
        downs = [(0, None)] if d is None else [_locate(graph, first, t)[1:] for t in dsts]
        eff = verify_edge_group(setup, u, d, ups, downs, chunk)
        for s, t in pairs:
            edge_ids.append((s, t))
            edge_eff.append(float(eff[srcs.index(s), 0 if d is None else dsts.index(t)]))
    return Verification(node_ids, [graph.nodes[i].score for i in node_ids], node_eff,
                        edge_ids, [graph.edges[e] for e in edge_ids], edge_eff)


# -- known circuits -----------------------------------------------------------------------------
class Score(NamedTuple):
    precision: float
    recall: float
    f1: float
    found: list[str]  # canonical component ids, sorted
    missed: list[str]
    extra: list[str]


def components(graph: Graph, kinds: Iterable[str] | None = None) -> set[str]:
    """The graph's components as canonical ids without positions (``L0.H1``, ``L2.mlp``, ...),
    logits excluded; only those of ``kinds`` when given."""
    kinds = None if kinds is None else set(kinds)
    return {without_position(i) for i, n in graph.nodes.items()
            if n.kind != "logit" and (kinds is None or n.kind in kinds)}


def component_id(c: "Component | Node | str") -> str:
    """A known-circuit entry as a position-free canonical id: a node id (``"L1.H3"``,
    ``"L0.resid_post.f7"``), a `Node`, or a ``(kind, layer, index)`` triple (heads, MLPs,
    attention, the embedding)."""
    if isinstance(c, str):
        return without_position(c)
    if isinstance(c, Node):
        return without_position(c.id)
    kind, layer, index = c
    try:
        return node_id(str(kind), int(layer), None if index is None else int(index))
    except ValueError as exc:
        raise ValueError(f"known component {tuple(c)}: {exc}; give its node id instead, e.g. "
                         f"'L0.resid_post.f7'") from exc


def score_against(graph: Graph, known: Iterable[Component | Node | str]) -> Score:
    """Precision / recall / F1 of ``graph``'s components against a known circuit (canonical ids
    compared with positions dropped, over the node kinds the known circuit names)."""
    truth = {component_id(k) for k in known}
    if not truth:
        raise ValueError("the known circuit is empty: give node ids ('L1.H3') or (kind, layer, "
                         "index) triples, e.g. ('head', 1, 3)")
    pred = components(graph, {parse_node_id(t).kind for t in truth})
    tp = pred & truth
    p = len(tp) / len(pred) if pred else 0.0
    r = len(tp) / len(truth)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return Score(p, r, f1, sorted(tp), sorted(truth - pred), sorted(pred - truth))


def _label(cid: str) -> str:
    k = parse_node_id(cid)
    return head_label(k.layer, k.index) if k.kind == "head" else cid


# -- `mechscope verify` -------------------------------------------------------------------------
def verify_task(task: str, setup: Setup, known: Iterable[Component], method: str,
                threshold: float = 0.1) -> dict[str, object]:
    """Trace one task (nodes kept at ``threshold`` x the largest |score|), score it against the
    known circuit, and check it by intervention."""
    from mechscope.circuits.feature_circuits import faithfulness, feature_circuit

    g = feature_circuit(setup, method=method, node_threshold=threshold, relative=True)
    sc, f, v = score_against(g, known), faithfulness(g, setup), verify_edges(g, setup)
    return {"task": task, "method": method, "ablation": setup.ablation, "precision": sc.precision,
            "recall": sc.recall, "f1": sc.f1, "faithfulness": f.faithfulness,
            "completeness": f.completeness, "node_rank_corr": v.node_rank_corr,
            "edge_rank_corr": v.edge_rank_corr, "edge_sign_agreement": v.edge_sign_agreement,
            "edge_explained": v.edge_explained, "nodes": len(v.node_ids), "edges": len(v.edge_ids),
            "found": [_label(c) for c in sc.found], "missed": [_label(c) for c in sc.missed],
            "extra": [_label(c) for c in sc.extra]}
