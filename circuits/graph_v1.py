"""Reading graph files of format version 1 (mechscope before `GraphMeta` and canonical ids).

Version 1 wrote node ids as ``kind/site-or-layer/index@position`` (``head/L0.z/1``,
``head/L0/1@5``, ``embedding/embed``) and a free ``metadata`` dict whose keys differed by method
(``parameters`` vs ``params``; ``prompt_tokens`` as ids or strings; per-prompt routes nested as
whole graph dicts under ``routes``). `convert` rewrites such a file into the version-2 dict:
every node's canonical id is rebuilt from its stored fields (kind, layer, position, index, site),
every id in edges, counts and attention-SVD ``sides`` / ``firings`` is mapped through that table,
and the metadata is sorted into `GraphMeta` fields. What version 1 never recorded stays empty
(``n_layers`` is taken from a logit node when there is one; token ids become ``<id>`` strings).
A file that cannot be mapped (e.g. two version-1 nodes that are one component) is refused with
a message that says so; re-trace it with this version then.
"""

from __future__ import annotations

from typing import Any

from mechscope.circuits.graph import FORMAT_VERSION, Node

_PARAMS = ("parameters", "params")
_MOVED_TO_PARAMETERS = ("position",)
_DETAILS = ("prediction", "target", "sides", "firings")


class GraphV1Error(ValueError):
    """A version-1 graph file that cannot be converted."""


def _refuse(why: str) -> GraphV1Error:
    return GraphV1Error(f"cannot convert this version-1 graph file: {why}. Re-trace the graph with "
                        f"this mechscope (it writes version {FORMAT_VERSION}).")


def _node(raw: dict[str, Any], method: str) -> Node:
    fields = {k: raw.get(k) for k in ("kind", "layer", "position", "index", "site")}
    fields.update(label=raw.get("label") or "", score=float(raw.get("score") or 0.0))
    if fields["kind"] == "embedding":  # v1: "embed" was the whole embedding, except in attention-SVD
        part = fields["site"] or "embed"
        fields["site"] = {"pos_embed": "embed.pos"}.get(part, "embed.tok" if method == "attention_svd" else part)
    if fields["kind"] == "logit":
        fields["site"] = None
    try:
        return Node(**fields)
    except ValueError as exc:
        raise _refuse(f"node {raw.get('id')!r}: {exc}") from exc


def _tokens(value: Any) -> list[list[str]]:
    if not value:
        return []
    rows = value if isinstance(value[0], list) else [value]
    return [[f"<{t}>" if isinstance(t, int) else str(t) for t in row] for row in rows]


def _meta(md: dict[str, Any], ids: dict[str, str], nodes: list[Node]) -> dict[str, Any]:
    toks = _tokens(md.get("prompt_tokens"))
    prompts = [str(p) for p in md.get("prompts", [])]
    params = dict(next((md[k] for k in _PARAMS if k in md), {}))
    params.update({k: md[k] for k in _MOVED_TO_PARAMETERS if k in md})
    n_prompts = max(len(prompts), len(toks), int(md.get("aggregated") or 0),
                    int(params.get("n_prompts") or 0), 1)
    if toks and len(toks) != n_prompts:  # v1 kept the tokens of the first prompt only
        toks = []
    faith = md.get("faithfulness")
    logits = [n.layer for n in nodes if n.kind == "logit"]
    details = {k: md[k] for k in _DETAILS if k in md}
    if md.get("aggregated") and "sides" not in details:  # v1 kept the first prompt's results
        details = {}
    if "sides" in details:
        details["sides"] = {_edge_key(k, ids): v for k, v in details["sides"].items()}
    if "firings" in details:
        fir = details["firings"]
        details["firings"] = ([{ids[k]: v for k, v in f.items()} for f in fir] if isinstance(fir, list)
                              else {ids[k]: v for k, v in fir.items()})
    pruned = md.get("pruned")
    if pruned is not None:
        pruned = {"node_threshold": pruned.get("node_threshold"), "edge_threshold": pruned.get("edge_threshold"),
                  "cumulative_fraction": pruned.get("cumulative_fraction")}
    aggregated = None
    if md.get("aggregated"):
        aggregated = {"graphs": int(md["aggregated"]), "reduce": md.get("reduce", "mean"),
                      "counts": {ids[k]: v for k, v in md.get("counts", {}).items()}}
    return {
        "method": str(md.get("method", "")), "units": str(md.get("units", "")),
        "model": str(md.get("model", "")), "n_layers": logits[0] if logits else None,
        "n_prompts": n_prompts, "prompts": prompts if len(prompts) == n_prompts else [],
        "prompt_tokens": toks, "parameters": params,
        "faithfulness": faith.get("faithfulness") if isinstance(faith, dict) else faith,
        "completeness": faith.get("completeness") if isinstance(faith, dict) else None,
        "pruned": pruned, "aggregated": aggregated, "details": details,
    }


def _edge_key(key: str, ids: dict[str, str]) -> str:
    s, _, t = key.partition("->")
    return f"{ids[s]}->{ids[t]}"


def convert(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 graph dict as a version-2 one (module doc)."""
    if data.get("version") != 1:
        raise ValueError(f"convert reads version-1 graphs, got version {data.get('version')!r}")
    md = dict(data.get("metadata", {}))
    method = str(md.get("method", ""))
    ids: dict[str, str] = {}
    nodes: list[Node] = []
    for raw in data.get("nodes", []):
        node = _node(raw, method)
        old = raw.get("id")
        if node.id in ids.values():
            raise _refuse(f"nodes {[k for k, v in ids.items() if v == node.id][0]!r} and {old!r} are "
                          f"the same component {node.id!r} under canonical ids")
        ids[old] = node.id
        nodes.append(node)
    try:
        edges = [{"source": ids[e["source"]], "target": ids[e["target"]], "weight": e["weight"]}
                 for e in data.get("edges", [])]
        meta = _meta(md, ids, nodes)
    except KeyError as exc:
        raise _refuse(f"it names node {exc.args[0]!r}, which is not in its node list") from exc
    return {"format": "mechscope.graph", "version": FORMAT_VERSION, "meta": meta,
            "nodes": [n.to_dict() for n in nodes],
            "edges": edges, "per_prompt": [convert(r) for r in md.get("routes", [])]}
