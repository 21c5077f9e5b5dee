"""Recursive attention-SVD tracing: the head-communication graph (Franco & Crovella 2024, §4).

Start from chosen heads (and optionally chosen destination positions). For every firing of a head
— destination ``i``, source ``j`` with attention weight ``A[i, j] >= firing_threshold`` (the BOS
sink excluded by default; ``j <= i`` under causal attention, any ``j`` under the model's
bidirectional attention) — `decompose_firing` splits its sparse signal among the upstream parts
on the destination (query) side at ``i`` and the source (key) side at ``j``. On each side, the
parts sorted by contribution, the shortest prefix carrying ``share`` (default 70%) of the signal
is kept; each kept upstream head ``(l, c)`` becomes an edge ``head(l, c) -> head(L, h)`` and is
traced in turn at the position it was read from (``i`` or ``j``), up to ``max_depth`` levels.
Each (head, destination) is traced once per prompt.

Edge weight: the mean over the target head's traced firings of the part's share of the signal
(0 for firings where it was not kept), per prompt; `Graph.aggregate` then averages over prompts.
``meta.details["sides"]`` splits each edge's weight (keyed ``"source->target"``) into its query- and
key-side shares; ``meta.details["firings"]`` counts the traced firings of each head (a list, one
per prompt, after `trace_attention`). Embeddings (token ``embed.tok`` and position ``embed.pos``
apart) and MLPs that carry the signal appear as source nodes (they are not traced further).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import Tensor

from mechscope.circuits.attention_svd import (Part, activations, check_supported, decompose_firing,
                                              qk_svd)
from mechscope.circuits.graph import Graph, GraphMeta, Node, head_label, mlp_label, node_id
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike


def kept_parts(contrib: Tensor, total: float, share: float) -> list[int]:
    """Indices of the fewest parts (largest first) whose contributions reach ``share * total``."""
    if total <= 0:
        return []
    order = contrib.argsort(descending=True).tolist()
    kept, acc = [], 0.0
    for k in order:
        if acc >= share * total or contrib[k] <= 0:
            break
        kept.append(k)
        acc += float(contrib[k])
    return kept


_EMBED_PARTS = {"embed": "embed.tok", "pos_embed": "embed.pos"}


def _node(part: Part) -> Node | None:
    if part[0] == "head":
        return Node("head", part[1], None, part[2], label=head_label(part[1], part[2]))
    if part[0] in _EMBED_PARTS:
        return Node("embedding", -1, None, label=part[0], site=_EMBED_PARTS[part[0]])
    if part[0] == "mlp":
        return Node("mlp", part[1], None, label=mlp_label(part[1]))
    return None  # biases carry signal but are not components


def trace_prompt(model: "ModelLike", tokens: Tensor, heads: Sequence[tuple[int, int]],
                 positions: Sequence[int] | None = None, firing_threshold: float = 0.3,
                 share: float = 0.7, signal_share: float = 1.0, max_depth: int | None = None,
                 skip_bos: bool = True) -> Graph:
    """Head-communication graph of one prompt (module doc)."""
    model = Model.wrap(model)
    check_supported(model)
    if not 0 < share <= 1 or not 0 <= firing_threshold <= 1:
        raise ValueError(f"need 0 < share <= 1 and 0 <= firing_threshold <= 1, got {share}, {firing_threshold}")
    tokens = tokens.view(-1)
    n_pos = tokens.numel()
    both_ways = model.attention_direction == "bidirectional"  # keys after i too
    acts = activations(model, tokens, max(L for L, _ in heads))
    decs: dict[tuple[int, int], object] = {}
    g = Graph(meta=GraphMeta.traced(
        model, "attention_svd", "mean share of the firing's sparse signal", [tokens.tolist()],
        {"firing_threshold": firing_threshold, "share": share, "signal_share": signal_share,
         "max_depth": max_depth, "skip_bos": skip_bos, "heads": [head_label(L, h) for L, h in heads]}))
    sides: dict[str, dict[str, float]] = {}
    n_firings: dict[str, int] = {}
    queue = [(L, h, i, 0) for L, h in heads for i in (positions if positions is not None else range(n_pos))]
    seen = set()
    while queue:
        L, h, i, depth = queue.pop(0)
        if (L, h, i) in seen:
            continue
        seen.add((L, h, i))
        target = g.add_node(Node("head", L, None, h, label=head_label(L, h), score=1.0))
        pattern = acts[(L, "pattern")][h, i]
        srcs = [j for j in range(n_pos if both_ways else i + 1)
                if pattern[j] >= firing_threshold and not (skip_bos and j == 0)]
        if not srcs:
            continue
        dec = decs.setdefault((L, h), qk_svd(model, L, h))
        for j in srcs:
            fd = decompose_firing(model, acts, dec, i, j, signal_share)
            total = fd.signal_total
            n_firings[target] = n_firings.get(target, 0) + 1
            for side, pos, contrib in (("query", i, fd.query), ("key", j, fd.key)):
                for k in kept_parts(contrib, total, share):
                    src = _node(fd.parts[k])
                    if src is None:
                        continue
                    if src.id not in g.nodes:
                        g.add_node(replace(src, score=1.0))
                    w = float(contrib[k]) / total
                    g.add_edge(src.id, target, w, accumulate=True)
                    key = f"{src.id}->{target}"
                    sides.setdefault(key, {"query": 0.0, "key": 0.0})[side] += w
                    if src.kind == "head" and (max_depth is None or depth + 1 < max_depth):
                        queue.append((src.layer, src.index, pos, depth + 1))
    for (s, t), w in list(g.edges.items()):
        g.edges[(s, t)] = w / n_firings[t]
        for side in sides[f"{s}->{t}"]:
            sides[f"{s}->{t}"][side] /= n_firings[t]
    g.meta = replace(g.meta, details={"sides": sides, "firings": n_firings})
    return g


def trace_attention(model: "ModelLike", prompts: Sequence[Tensor], heads: Sequence[tuple[int, int]],
                    **kwargs) -> Graph:
    """`trace_prompt` on every prompt, averaged with `Graph.aggregate` (sides averaged too)."""
    model = Model.wrap(model)
    graphs = [trace_prompt(model, p, heads, **kwargs) for p in prompts]
    if not graphs:
        raise ValueError("no prompts given")
    agg = Graph.aggregate(graphs, reduce="mean")
    sides: dict[str, dict[str, float]] = {}
    for g in graphs:
        for e, sw in g.meta.details["sides"].items():
            acc = sides.setdefault(e, {"query": 0.0, "key": 0.0})
            for side, w in sw.items():
                acc[side] += w / len(graphs)
    agg.meta = replace(agg.meta, details={"sides": sides,
                                          "firings": [g.meta.details["firings"] for g in graphs]})
    return agg


def key_sources(g: Graph, head: tuple[int, int], min_share: float = 0.0) -> set[tuple[int, int]]:
    """Upstream heads whose key-side share into ``head`` exceeds ``min_share``."""
    tid = node_id("head", head[0], head[1])
    out = set()
    for e, sw in g.meta.details["sides"].items():
        s, t = e.split("->")
        if t == tid and sw["key"] > min_share and g.nodes[s].kind == "head":
            out.add((g.nodes[s].layer, g.nodes[s].index))
    return out




__all__ = ["trace_prompt", "trace_attention", "key_sources", "kept_parts"]
