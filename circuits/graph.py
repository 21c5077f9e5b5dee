"""`Graph`: the one value every tracing method returns and every viewer draws.

Nodes are model components at a layer and (optionally) a token position: the token embedding,
attention heads, MLPs, dictionary features and their error terms, residual-stream states and
output logits. A directed edge ``u -> v`` with weight ``w`` says "u contributes w to v" in the
method's own units (attribution, proximity share, signal share, ...); ``metadata["method"]``
names the method and its units. Node scores (e.g. a node's attribution to the metric) live on
the nodes.

Layer convention: the embedding is layer ``-1``; block ``L`` components are layer ``L``;
logits are layer ``n_layers``. Positions are token indices of the prompt, or ``None`` for a node
summed over positions.

JSON form (``FORMAT_VERSION``)::

    {"format": "mechscope.graph", "version": 1, "metadata": {...},
     "nodes": [{"id", "kind", "layer", "position", "index", "label", "site", "score"}, ...],
     "edges": [{"source", "target", "weight"}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from mechscope.files import write_json

FORMAT_VERSION = 1
NODE_KINDS = ("embedding", "head", "mlp", "attention", "feature", "error", "residual", "logit")


@dataclass(frozen=True)
class Node:
    """A component at (layer, position); ``index`` is the head / feature / token id."""

    kind: str
    layer: int
    position: int | None = None
    index: int | None = None
    label: str = ""
    site: str | None = None
    score: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}; valid: {', '.join(NODE_KINDS)}")

    @property
    def id(self) -> str:
        """Stable identity (label and score excluded): ``kind/layer/site/index@position``."""
        where = f"{self.site}" if self.site else f"L{self.layer}"
        idx = "" if self.index is None else f"/{self.index}"
        pos = "" if self.position is None else f"@{self.position}"
        return f"{self.kind}/{where}{idx}{pos}"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    weight: float


@dataclass
class Graph:
    """Nodes by id, weighted directed edges, and metadata (method, model, prompt tokens, params)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------------------
    def add_node(self, node: Node) -> str:
        """Add (or replace the score/label of) a node; returns its id."""
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
                     dict(self.metadata))

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
        g.metadata["pruned"] = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
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
        g.metadata["pruned"] = {"cumulative_fraction": fraction}
        return g

    @staticmethod
    def aggregate(graphs: Iterable["Graph"], reduce: str = "mean") -> "Graph":
        """Combine graphs over prompts: node scores and edge weights summed or averaged (an
        absent node/edge counts as 0); ``metadata["counts"]`` says in how many graphs each
        node appeared."""
        graphs = list(graphs)
        if not graphs:
            raise ValueError("aggregate needs at least one graph")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        scale = 1.0 / len(graphs) if reduce == "mean" else 1.0
        out, counts = Graph(metadata=dict(graphs[0].metadata)), {}
        for g in graphs:
            for i, n in g.nodes.items():
                prev = out.nodes.get(i)
                out.nodes[i] = replace(n, score=(prev.score if prev else 0.0) + scale * n.score)
                counts[i] = counts.get(i, 0) + 1
            for e, w in g.edges.items():
                out.edges[e] = out.edges.get(e, 0.0) + scale * w
        out.metadata.update(aggregated=len(graphs), reduce=reduce, counts=counts)
        out.metadata.pop("prompt_tokens", None)
        return out

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "mechscope.graph", "version": FORMAT_VERSION, "metadata": self.metadata,
            "nodes": [{"id": i, **asdict(n)} for i, n in self.nodes.items()],
            "edges": [{"source": s, "target": t, "weight": w} for (s, t), w in self.edges.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Graph":
        if data.get("format") != "mechscope.graph":
            raise ValueError("not a mechscope graph (missing 'format': 'mechscope.graph')")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"graph format version {data.get('version')!r} is not supported; "
                             f"this mechscope reads version {FORMAT_VERSION}")
        g = cls(metadata=dict(data.get("metadata", {})))
        for raw in data["nodes"]:
            raw = dict(raw)
            raw.pop("id", None)
            g.add_node(Node(**raw))
        for e in data["edges"]:
            g.add_edge(e["source"], e["target"], e["weight"])
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
        """A ``networkx.DiGraph`` (node attributes from `Node`, edge attribute ``weight``)."""
        try:
            import networkx as nx
        except ImportError as exc:
            raise ImportError("to_networkx needs networkx: pip install networkx") from exc
        g = nx.DiGraph(**self.metadata)
        for i, n in self.nodes.items():
            g.add_node(i, **asdict(n))
        for (s, t), w in self.edges.items():
            g.add_edge(s, t, weight=w)
        return g

    def __repr__(self) -> str:
        return (f"Graph({len(self.nodes)} nodes, {len(self.edges)} edges, "
                f"method={self.metadata.get('method')!r})")
