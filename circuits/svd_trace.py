"""Recursive attention-SVD tracing: the head-communication graph (Franco & Crovella 2024, §4), on
the query, key and value sides.

Start from chosen heads and destination positions (all by default). For every firing of a head
— destination ``i``, source ``j`` with attention weight ``A[i, j] >= firing_threshold`` (the BOS
sink excluded by default; ``j <= i`` under causal attention, any ``j`` under the model's
bidirectional attention) — `decompose_firing` splits it among the upstream parts on three
channels:

* ``q``: the destination side of the sparse QK signal (parts of the residual at ``i``),
* ``k``: the source side of the signal (parts at ``j``),
* ``v``: the head's output at ``i`` sent through source ``j``, read through its OV circuit
  (parts at ``j``, weighted by ``A[i, j]``).

On each channel the candidates, sorted by contribution, are kept up to the shortest prefix that
carries ``share`` (default 70%) of the total. ``candidates="heads"`` (the default, as the
reference code): only attention heads compete, and the total is the heads' sum; ``"all"``: the
token and position embeddings (``embed.tok``, ``embed.pos``) and MLPs compete too, against the
whole side (biases included). Each kept upstream head is traced in turn at the position it was
read from (``i`` for q, ``j`` for k and v), up to ``max_depth`` levels; embeddings and MLPs are
not traced further. Each (head, destination) is traced once per prompt.

Units (`UNITS`; also in ``meta.details["units"]``). A channel's weight is a signed,
dimensionless share, the mean over the target head's traced firings (0 where the part was not
kept): ``q`` / ``k`` — the part's contribution to the firing's sparse signal divided by the signal
(per firing, all parts and the head's bias sum to 1 on each side); ``v`` — the part's projection
on the head's output at ``i`` over ``|o_i|^2`` through source ``j`` (over all parts and sources
the shares of one destination sum to 1). A share above 1 means other parts write against it.
``meta.details["channels"]`` keeps every edge's channels (``{"src->dst": {"q": w, "k": w, "v": w}}``,
the keys of `mechscope.circuits.edges`); the graph edge's weight is its strongest channel (the
channel share of largest magnitude), never a sum of channels. The per-firing 70% rule keeps small
tails (with heads-only candidates, when embeddings carry a side, the heads left compete for a
small remainder), so edges whose strongest mean share is below ``min_share`` (default 0.05) are
dropped, and with them every node no longer upstream of a starting head; `trace_attention`
applies it once, to the shares averaged over prompts. ``meta.details["firings"]`` counts
the traced firings of each head and ``meta.details["check"]`` is the `ReconstructionCheck` over
them (a list per prompt of firings, one check over all, after `trace_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import Tensor

from mechscope.circuits.attention_svd import (FiringDecomposition, Part, activations, check_supported,
                                              decompose_firing, qk_svd, value_read)
from mechscope.circuits.attention_svd_checks import ReconstructionCheck
from mechscope.circuits.graph import Graph, GraphMeta, Node, head_label, mlp_label, node_id
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

CHANNELS = ("q", "k", "v")
CANDIDATES = ("heads", "all")
UNITS = {
    "q": "share of the firing's sparse QK signal carried on the destination (query) side",
    "k": "share of the firing's sparse QK signal carried on the source (key) side",
    "v": "share of the head's output at the destination (projection over |o|^2) sent through the "
         "firing's source via the OV circuit",
}
GRAPH_UNITS = ("signed share per channel (q, k, v; meta.details['units']), mean over the target "
               "head's traced firings; edge weight = the channel of largest |share|")


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


def _selected(fd: FiringDecomposition, candidates: str, share: float) -> dict[str, list[tuple[int, float]]]:
    """Per channel, the kept parts of one firing and their shares (module doc)."""
    heads_only = candidates == "heads"
    cand = [k for k, p in enumerate(fd.parts) if _node(p) is not None and (p[0] == "head" or not heads_only)]
    sig = fd.signal_total
    out = {}
    for ch, contrib, norm in (("q", fd.query, sig), ("k", fd.key, sig), ("v", fd.value, 1.0)):
        sub = contrib[cand]
        total = float(sub.sum()) if heads_only else float(contrib.sum())
        out[ch] = [(cand[k], float(sub[k]) / norm) for k in kept_parts(sub, total, share)] if norm > 0 else []
    return out


def _check_args(model: Model, n_pos: int, heads: Sequence[tuple[int, int]], positions: Sequence[int] | None,
                firing_threshold: float, share: float, candidates: str, min_share: float) -> list[int]:
    if not 0 < share <= 1 or not 0 <= firing_threshold <= 1:
        raise ValueError(f"need 0 < share <= 1 and 0 <= firing_threshold <= 1, got {share}, {firing_threshold}")
    if not min_share >= 0:
        raise ValueError(f"min_share must be >= 0, got {min_share}")
    if candidates not in CANDIDATES:
        raise ValueError(f"candidates {candidates!r}; valid: {', '.join(CANDIDATES)}")
    if not heads:
        raise ValueError("no heads to trace")
    for L, h in heads:
        if not (0 <= L < model.n_layers and 0 <= h < model.n_heads):
            raise ValueError(f"no head {head_label(L, h)}: valid layers 0..{model.n_layers - 1}, "
                             f"heads 0..{model.n_heads - 1}")
    if positions is None:
        return list(range(n_pos))
    bad = [p for p in positions if not -n_pos <= p < n_pos]
    if bad:
        raise ValueError(f"positions {bad} are outside this prompt of {n_pos} tokens: valid "
                         f"0..{n_pos - 1} (or -{n_pos}..-1 from the end)")
    return sorted({p % n_pos for p in positions})


def trace_prompt(model: "ModelLike", tokens: Tensor, heads: Sequence[tuple[int, int]],
                 positions: Sequence[int] | None = None, firing_threshold: float = 0.3,
                 share: float = 0.7, signal_share: float | None = 1.0, max_depth: int | None = None,
                 skip_bos: bool = True, candidates: str = "heads", min_share: float = 0.05,
                 tolerance: float = 1e-3) -> Graph:
    """Head-communication graph of one prompt (module doc). ``positions``: the destinations to
    trace the starting heads at (negative counts from the end; default all); ``min_share``: the
    smallest mean channel share an edge needs to stay in the graph; ``tolerance``: of
    the `ReconstructionCheck` recorded in ``meta.details["check"]`` (not enforced here: call
    ``ReconstructionCheck.from_dict(g.meta.details["check"]).require()``)."""
    model = Model.wrap(model)
    check_supported(model)
    tokens = tokens.view(-1)
    n_pos = tokens.numel()
    starts = _check_args(model, n_pos, heads, positions, firing_threshold, share, candidates, min_share)
    both_ways = model.attention_direction == "bidirectional"  # keys after i too
    acts = activations(model, tokens, max(L for L, _ in heads))
    g = Graph(meta=GraphMeta.traced(
        model, "attention_svd", GRAPH_UNITS, [tokens.tolist()],
        {"firing_threshold": firing_threshold, "share": share, "signal_share": signal_share,
         "max_depth": max_depth, "skip_bos": skip_bos, "candidates": candidates, "min_share": min_share,
         "heads": [head_label(L, h) for L, h in heads], "positions": starts,
         "attention_direction": model.attention_direction, "tolerance": tolerance}))
    channels: dict[str, dict[str, float]] = {}
    n_firings: dict[str, int] = {}
    decs, firings, seen = {}, [], set()
    queue = [(L, h, i, 0) for L, h in heads for i in starts]
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
        if (L, h) not in decs:
            decs[(L, h)] = qk_svd(model, L, h)
        vread = value_read(model, acts, L, h, i)
        for j in srcs:
            fd = decompose_firing(model, acts, decs[(L, h)], i, j, signal_share, vread)
            firings.append(fd)
            n_firings[target] = n_firings.get(target, 0) + 1
            for ch, kept in _selected(fd, candidates, share).items():
                for k, w in kept:
                    src = _add_channel(g, channels, _node(fd.parts[k]), target, ch, w)
                    if src.kind == "head" and (max_depth is None or depth + 1 < max_depth):
                        queue.append((src.layer, src.index, i if ch == "q" else j, depth + 1))
    for key, acc in channels.items():
        n = n_firings[key.split("->")[1]]
        for ch in CHANNELS:
            acc[ch] /= n
    channels = _set_edges(g, channels, min_share, heads)
    g.meta = replace(g.meta, details={"channels": channels, "firings": n_firings, "units": dict(UNITS),
                                      "check": ReconstructionCheck.of(firings, tolerance).to_dict()})
    return g


def _add_channel(g: Graph, channels: dict[str, dict[str, float]], src: Node, target: str, channel: str,
                 w: float) -> Node:
    """Add ``w`` to the ``channel`` of edge ``src -> target`` (adding the node)."""
    if src.id not in g.nodes:
        g.add_node(replace(src, score=1.0))
    channels.setdefault(f"{src.id}->{target}", dict.fromkeys(CHANNELS, 0.0))[channel] += w
    return src


def _set_edges(g: Graph, channels: dict[str, dict[str, float]], min_share: float,
               starts: Sequence[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Graph edges from channels, each weighing its strongest channel; edges below ``min_share``
    dropped, then every node not upstream of a starting head by kept edges (module doc).
    Returns the kept edges' channels."""
    strongest = {tuple(k.split("->")): max(acc.values(), key=abs) for k, acc in channels.items()}
    live = {(s, t): w for (s, t), w in strongest.items() if abs(w) >= min_share}
    keep = {node_id("head", L, h) for L, h in starts}
    grew = True
    while grew:
        grew = False
        for s, t in live:
            if t in keep and s not in keep:
                keep.add(s)
                grew = True
    g.nodes = {i: n for i, n in g.nodes.items() if i in keep}
    g.edges = {}
    for (s, t), w in live.items():
        if t in keep:
            g.add_edge(s, t, w)
    return {f"{s}->{t}": channels[f"{s}->{t}"] for s, t in g.edges}


def trace_attention(model: "ModelLike", prompts: Sequence[Tensor], heads: Sequence[tuple[int, int]],
                    **kwargs) -> Graph:
    """`trace_prompt` on every prompt, averaged with `Graph.aggregate`: channels averaged over
    prompts (0 where an edge is absent), edge weights re-derived from them, the check combined."""
    model = Model.wrap(model)
    min_share = kwargs.pop("min_share", 0.05)
    graphs = [trace_prompt(model, p, heads, min_share=0.0, **kwargs) for p in prompts]  # pruned once, below
    if not graphs:
        raise ValueError("no prompts given")
    agg = Graph.aggregate(graphs, reduce="mean")
    channels: dict[str, dict[str, float]] = {}
    for g in graphs:
        for e, cw in g.meta.details["channels"].items():
            acc = channels.setdefault(e, dict.fromkeys(CHANNELS, 0.0))
            for ch, w in cw.items():
                acc[ch] += w / len(graphs)
    channels = _set_edges(agg, channels, min_share, heads)
    check = ReconstructionCheck.combine([ReconstructionCheck.from_dict(g.meta.details["check"]) for g in graphs])
    agg.meta = replace(agg.meta, parameters={**agg.meta.parameters, "min_share": min_share},
                       details={"channels": channels, "units": dict(UNITS),
                                          "firings": [g.meta.details["firings"] for g in graphs],
                                          "check": check.to_dict()})
    return agg


def sources(g: Graph, head: tuple[int, int], channel: str, min_share: float = 0.0,
            heads_only: bool = True) -> dict[str, float]:
    """Upstream nodes whose ``channel`` share into ``head`` exceeds ``min_share``, by id."""
    if channel not in CHANNELS:
        raise ValueError(f"channel {channel!r}; valid: {', '.join(CHANNELS)}")
    tid = node_id("head", head[0], head[1])
    out = {}
    for e, cw in g.meta.details["channels"].items():
        s, t = e.split("->")
        if t == tid and cw[channel] > min_share and (g.nodes[s].kind == "head" or not heads_only):
            out[s] = cw[channel]
    return out


def key_sources(g: Graph, head: tuple[int, int], min_share: float = 0.0) -> set[tuple[int, int]]:
    """Upstream heads whose key-side share into ``head`` exceeds ``min_share``."""
    return {(g.nodes[s].layer, g.nodes[s].index) for s in sources(g, head, "k", min_share)}


__all__ = ["CANDIDATES", "CHANNELS", "UNITS", "trace_prompt", "trace_attention", "sources", "key_sources",
           "kept_parts"]
