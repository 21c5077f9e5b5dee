"""`Graph`: the one value every tracing method returns and every viewer draws.

Nodes are model components at a layer and (optionally) a token position: the token embedding,
attention heads, MLPs, dictionary features and their error terms, residual-stream states and
output logits. A directed edge ``u -> v`` with weight ``w`` says "u contributes w to v" in the
method's own units (attribution, proximity share, signal share, ...); ``meta.method`` and
``meta.units`` name them. Node scores (e.g. a node's attribution to the metric) live on the nodes.

Layer convention: the embedding is layer ``-1``; block ``L`` components are layer ``L``;
logits are layer ``n_layers``. Positions are token indices of the prompt, or ``None`` for a node
summed over positions.

Canonical node ids (`mechscope.circuits.node_ids`, re-exported here) name the component, not the
method that found it (``L3.H5@7``, ``L3.mlp``, ``L3.resid_post.f812@7``, ``embed@7``,
``logit."Romeo"@7``), so graphs of different methods can be compared node by node.

JSON form (``FORMAT_VERSION`` 2; version-1 files are converted on load, see `graph_v1`)::

    {"format": "mechscope.graph", "version": 2, "meta": {GraphMeta fields},
     "nodes": [{"id", "kind", "layer", "position", "index", "label", "site", "score", "token"}],
     "edges": [{"source", "target", "weight"}], "per_prompt": [graph, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.records import checked_fields
from mechscope.circuits.node_ids import (EMBED_PARTS, NODE_KINDS, NodeKey, head_label, mlp_label,
                                         node_id, parse_head, parse_node_id, without_position)
from mechscope.files import write_json

if TYPE_CHECKING:
    from mechscope.interp.models import Model

FORMAT_VERSION = 2
__all__ = ["EMBED_PARTS", "FORMAT_VERSION", "NODE_KINDS", "Aggregation", "Edge", "Graph", "GraphMeta",
           "Node", "NodeKey", "Pruning", "head_label", "mlp_label", "node_id", "parse_head",
           "parse_node_id", "without_position"]


# -- nodes, edges ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """A component at (layer, position); ``index`` is the head / feature / token id, ``site`` the
    site it was read at (feature circuits map nodes back to sites through it), ``token`` the
    token string of a logit node. ``id`` is the canonical id (module doc), checked on creation."""

    kind: str
    layer: int
    position: int | None = None
    index: int | None = None
    label: str = ""
    site: str | None = None
    score: float = 0.0
    token: str | None = None
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "embedding" and self.site is None:
            object.__setattr__(self, "site", "embed")  # one spelling of the whole embedding
        object.__setattr__(self, "id", node_id(self.kind, self.layer, self.index, self.site,
                                               self.position, self.token))

    def to_dict(self) -> dict[str, Any]:
        """``{"id", kind, layer, position, index, label, site, score, token}`` (the JSON form)."""
        return {"id": self.id, **{f.name: getattr(self, f.name) for f in fields(Node) if f.init}}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    weight: float


# -- metadata --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pruning:
    """How a graph was pruned (`Graph.prune`, `Graph.prune_cumulative`)."""

    node_threshold: float | None = None
    edge_threshold: float | None = None
    cumulative_fraction: float | None = None


@dataclass(frozen=True)
class Aggregation:
    """How a graph combines others (`Graph.aggregate`)."""

    graphs: int  # how many graphs were combined
    reduce: str  # "mean" or "sum"
    counts: dict[str, int] = field(default_factory=dict)  # node id -> graphs it appeared in


@dataclass(frozen=True)
class GraphMeta:
    """What a graph is. Every tracer fills every field it knows (the JSON always has them all)."""

    method: str = ""  # e.g. "sparse_feature_circuit/atp", "information_flow_routes", "attention_svd"
    units: str = ""  # units of edge weights and node scores
    model: str = ""  # model name
    n_layers: int | None = None  # blocks of the model: logits sit at layer n_layers
    n_prompts: int = 0  # prompts the graph was traced on (summed when aggregated)
    prompts: tuple[str, ...] = ()  # each prompt's text (token strings joined, unless given as text)
    prompt_tokens: tuple[tuple[str, ...], ...] = ()  # each prompt's tokens, as strings
    parameters: dict[str, Any] = field(default_factory=dict)  # the method's settings
    faithfulness: float | None = None  # (m(C) - m(empty)) / (m(model) - m(empty)), when measured
    completeness: float | None = None  # the same for the complement of the circuit
    pruned: Pruning | None = None
    aggregated: Aggregation | None = None
    details: dict[str, Any] = field(default_factory=dict)  # method-specific results (its module doc)

    def __post_init__(self) -> None:
        # tuples whatever sequences were given, so that equal metadata compares equal
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "prompt_tokens", tuple(tuple(row) for row in self.prompt_tokens))
        for name in ("prompts", "prompt_tokens"):
            got = len(getattr(self, name))
            if got and got != self.n_prompts:
                raise ValueError(f"GraphMeta has {got} {name} for n_prompts={self.n_prompts}")

    @classmethod
    def traced(cls, model: "Model", method: str, units: str, tokens: "Sequence[Sequence[int]]",
               parameters: dict[str, Any], **more: Any) -> "GraphMeta":
        """The metadata of a graph traced on ``model`` from token-id rows ``tokens``."""
        strs = [tuple(model.to_str_tokens(row)) for row in tokens]
        return cls(method, units, getattr(model, "name", "") or "", model.n_layers, len(strs),
                   tuple("".join(s) for s in strs), tuple(strs), dict(parameters), **more)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphMeta":
        d = checked_fields(cls, data, "graph metadata")
        d["prompts"] = tuple(d.get("prompts", ()))
        d["prompt_tokens"] = tuple(tuple(row) for row in d.get("prompt_tokens", ()))
        if d.get("pruned") is not None:
            d["pruned"] = Pruning(**d["pruned"])
        if d.get("aggregated") is not None:
            d["aggregated"] = Aggregation(**d["aggregated"])
        return cls(**d)


# -- the graph -------------------------------------------------------------------------------------
@dataclass
class Graph:
    """Nodes by id, weighted directed edges, typed metadata and, for graphs that summarise
    several prompts, the graph of each prompt (``per_prompt``, e.g. each prompt's route)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], float] = field(default_factory=dict)
    meta: GraphMeta = field(default_factory=GraphMeta)
    per_prompt: list["Graph"] = field(default_factory=list)

    # -- building ---------------------------------------------------------------------------------
    def add_node(self, node: Node) -> str:
        """Add (or replace the score/label of) a node; returns its id. Two different components
        with one id (e.g. head L0.H1 read at sites L0.z and L0.result) are an error."""
        old = self.nodes.get(node.id)
        if old is not None and old.site != node.site:
            raise ValueError(f"node {node.id} is already in the graph from site {old.site!r}; "
                             f"site {node.site!r} gives the same component: trace one of them")
        self.nodes[node.id] = node
        return node.id

    def add_edge(self, source: "str | Node", target: "str | Node", weight: float, accumulate: bool = False) -> None:
        s = source.id if isinstance(source, Node) else source
        t = target.id if isinstance(target, Node) else target
        for end in (s, t):
            if end not in self.nodes:
                raise KeyError(f"edge endpoint {end!r} is not a node of this graph")
        self.edges[(s, t)] = float(weight) + (self.edges.get((s, t), 0.0) if accumulate else 0.0)

    def edge_list(self) -> list[Edge]:
        return [Edge(s, t, w) for (s, t), w in self.edges.items()]

    def parents(self, node_id: str) -> dict[str, float]:
        return {s: w for (s, t), w in self.edges.items() if t == node_id}

    def children(self, node_id: str) -> dict[str, float]:
        return {t: w for (s, t), w in self.edges.items() if s == node_id}

    # -- pruning and subgraphs --------------------------------------------------------------------
    def subgraph(self, node_ids: Iterable[str]) -> "Graph":
        keep = set(node_ids)
        missing = keep - set(self.nodes)
        if missing:
            raise KeyError(f"not nodes of this graph: {sorted(missing)[:5]}")
        return Graph({i: n for i, n in self.nodes.items() if i in keep},
                     {e: w for e, w in self.edges.items() if e[0] in keep and e[1] in keep},
                     self.meta, list(self.per_prompt))

    def prune(self, node_threshold: float | None = None, edge_threshold: float | None = None,
              keep: Iterable[str] = ()) -> "Graph":
        """Drop nodes with ``|score| < node_threshold`` (except ``keep``) and edges with
        ``|weight| < edge_threshold``; nodes left with no edge (except ``keep``) are dropped when
        an edge threshold is given."""
        keep = set(keep)
        nodes = {i for i, n in self.nodes.items()
                 if i in keep or node_threshold is None or abs(n.score) >= node_threshold}
        g = self.subgraph(nodes)
        if edge_threshold is not None:
            g.edges = {e: w for e, w in g.edges.items() if abs(w) >= edge_threshold}
            touched = {x for e in g.edges for x in e} | keep
            g = g.subgraph(i for i in g.nodes if i in touched)
        g.meta = replace(g.meta, pruned=Pruning(node_threshold, edge_threshold))
        return g

    def prune_cumulative(self, fraction: float, keep: Iterable[str] = ()) -> "Graph":
        """Keep the fewest edges, by |weight|, that carry ``fraction`` of the total |weight|."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        ranked = sorted(self.edges.items(), key=lambda kv: -abs(kv[1]))
        total = sum(abs(w) for _, w in ranked)
        kept, acc = {}, 0.0
        for e, w in ranked:
            if total and acc >= fraction * total:
                break
            kept[e] = w
            acc += abs(w)
        touched = {x for e in kept for x in e} | set(keep)
        g = self.subgraph(i for i in self.nodes if i in touched)
        g.edges = {e: w for e, w in kept.items()}
        g.meta = replace(g.meta, pruned=Pruning(cumulative_fraction=fraction))
        return g

    @staticmethod
    def aggregate(graphs: Iterable["Graph"], reduce: str = "mean") -> "Graph":
        """Combine graphs over prompts: node scores and edge weights summed or averaged (an
        absent node/edge counts as 0); ``meta.aggregated.counts`` says in how many graphs each
        node appeared. Prompts add up; what was measured per graph (faithfulness, the method's
        ``details``) does not carry over: a method that combines its details sets them."""
        graphs = list(graphs)
        if not graphs:
            raise ValueError("aggregate needs at least one graph")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        scale = 1.0 / len(graphs) if reduce == "mean" else 1.0
        out, counts = Graph(), {}
        for g in graphs:
            for i, n in g.nodes.items():
                prev = out.nodes.get(i)
                out.nodes[i] = replace(n, score=(prev.score if prev else 0.0) + scale * n.score)
                counts[i] = counts.get(i, 0) + 1
            for e, w in g.edges.items():
                out.edges[e] = out.edges.get(e, 0.0) + scale * w
        metas = [g.meta for g in graphs]
        out.meta = replace(
            metas[0], n_prompts=sum(m.n_prompts for m in metas), faithfulness=None, completeness=None,
            details={},
            prompts=sum((m.prompts for m in metas), ()) if all(m.prompts for m in metas) else (),
            prompt_tokens=sum((m.prompt_tokens for m in metas), ()) if all(m.prompt_tokens for m in metas) else (),
            aggregated=Aggregation(len(graphs), reduce, counts))
        return out

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "mechscope.graph", "version": FORMAT_VERSION, "meta": self.meta.to_dict(),
            "nodes": [n.to_dict() for n in self.nodes.values()],
            "edges": [{"source": s, "target": t, "weight": w} for (s, t), w in self.edges.items()],
            "per_prompt": [g.to_dict() for g in self.per_prompt],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Graph":
        if not isinstance(data, dict) or data.get("format") != "mechscope.graph":
            raise ValueError("not a mechscope graph (missing 'format': 'mechscope.graph')")
        if data.get("version") == 1:
            from mechscope.circuits.graph_v1 import convert

            data = convert(data)
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"graph format version {data.get('version')!r} is not supported; "
                             f"this mechscope reads version {FORMAT_VERSION} (and converts version 1)")
        g = cls(meta=GraphMeta.from_dict(data.get("meta", {})))
        for raw in data["nodes"]:
            raw = dict(raw)
            given = raw.pop("id", None)
            node = Node(**raw)
            if given is not None and given != node.id:
                raise ValueError(f"node id {given!r} does not match its fields (canonical id {node.id!r})")
            g.add_node(node)
        for e in data["edges"]:
            g.add_edge(e["source"], e["target"], e["weight"])
        g.per_prompt = [cls.from_dict(p) for p in data.get("per_prompt", [])]
        return g

    def save(self, path: "str | Path") -> Path:
        """Write JSON atomically (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: "str | Path") -> "Graph":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` (graph attributes from `GraphMeta`, node attributes from
        `Node`, edge attribute ``weight``)."""
        try:
            import networkx as nx
        except ImportError as exc:
            raise ImportError("to_networkx needs networkx: pip install networkx") from exc
        g = nx.DiGraph(**self.meta.to_dict())
        for i, n in self.nodes.items():
            g.add_node(i, **{k: v for k, v in n.to_dict().items() if k != "id"})
        for (s, t), w in self.edges.items():
            g.add_edge(s, t, weight=w)
        return g

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, {len(self.edges)} edges, method={self.meta.method!r})"
