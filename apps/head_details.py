"""What the graph viewer's head panel shows, computed when a graph is written.

For every head node of a graph (any method: routes, trace with head sites, edges, attention-SVD)
and the graph's prompts, stored in ``meta.details["heads"]`` (so the graph JSON carries them too):

* ``attention``: per head (position-free id ``L1.H3``) its attention pattern ``A[q][k]`` on each
  of the first prompts, rounded to 3 decimals;
* ``top_tokens``: per head node the ``k`` tokens its output promotes most directly,
  ``z̄ · W_O[h] · W_U`` (the direct path, final norm not applied, as in logit lens), where ``z̄``
  is the head's ``z`` at the node's position averaged over the prompts that have it, or for a node
  summed over positions averaged over every position of every prompt;
* ``n_prompts``: how many prompts the averages used.

Size is bounded: at most ``max_prompts`` prompts are run (one forward pass each, up to the
last head layer), and patterns are kept for as many of the first prompts as fit in
``budget`` numbers (at least one prompt, truncated to the first ``max_len`` positions). A graph's
``per_prompt`` graphs (each prompt's route) get their own ``top_tokens``; their patterns are
the parent's (`view_heads`), so they are stored once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mechscope.circuits.graph import Graph, Node, without_position
from mechscope.interp.sites import Site

MAX_PROMPTS, MAX_LEN, BUDGET, TOP_K = 64, 64, 120_000, 5


def _rows_in_order(model: Any, rows: Sequence[Any], graph: Graph) -> list[Any]:
    """``rows`` (token-id rows) in the order of ``graph.meta.prompt_tokens`` where each can be
    matched by its token strings (tracers may regroup prompts, e.g. by length), else as given."""
    strs = [tuple(model.to_str_tokens(r)) for r in rows]
    want = graph.meta.prompt_tokens
    if not want or sorted(want) != sorted(strs):
        return list(rows)
    free = list(range(len(rows)))
    out = []
    for toks in want:
        j = next(j for j in free if strs[j] == toks)
        free.remove(j)
        out.append(rows[j])
    return out


def _heads(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes.values() if n.kind == "head" and n.index is not None]


def _top(model: Any, z_mean: Any, layer: int, head: int, k: int) -> list[list[Any]]:
    logits = z_mean @ model.attn(layer).W_O[head] @ model.W_U
    top = logits.topk(min(k, logits.numel()))
    return [[t, round(float(v), 4)] for t, v in zip(model.to_str_tokens(top.indices.tolist()), top.values)]


def compute(model: Any, rows: Sequence[Any], graphs: Sequence[Graph], k: int = TOP_K,
            max_prompts: int = MAX_PROMPTS, max_len: int = MAX_LEN, budget: int = BUDGET) -> list[dict[str, Any]]:
    """The ``heads`` details of each graph in ``graphs`` (the first is the parent, traced on all
    ``rows``; the others each on one row, ``rows[j - 1]``): see the module doc."""
    import torch

    heads = sorted({(n.layer, n.index) for g in graphs for n in _heads(g)})
    if not heads:
        return [{} for _ in graphs]
    rows = [torch.as_tensor(r).view(-1) for r in rows[:max_prompts]]
    hooks = {(l, kind): Site.parse(f"L{l}.{kind}").hook_name for l, _ in heads for kind in ("pattern", "z")}
    per_pattern = sum(min(len(r), max_len) ** 2 for r in rows[:1]) * len(heads)
    n_att = max(1, min(len(rows), budget // max(per_pattern, 1)))
    attention: dict[str, list] = {f"L{l}.H{h}": [] for l, h in heads}
    sums: dict[tuple, list] = {}  # (prompt or None, layer, head, position or None) -> [z sum, count]
    with torch.no_grad():
        for j, row in enumerate(rows):
            _, cache = model.run_with_cache(row.view(1, -1), names_filter=list(hooks.values()),
                                            stop_at_layer=max(l for l, _ in heads) + 1)
            for l, h in heads:
                if j < n_att:
                    a = cache[hooks[(l, "pattern")]][0, h, :max_len, :max_len].float()
                    attention[f"L{l}.H{h}"].append(a.round(decimals=3).tolist())
                z = cache[hooks[(l, "z")]][0, :, h].float()
                for key in ((None, l, h, None), (j, l, h, None)):
                    acc = sums.setdefault(key, [0.0, 0])
                    acc[0], acc[1] = acc[0] + z.sum(0), acc[1] + z.shape[0]
                for p in range(z.shape[0]):
                    for key in ((None, l, h, p), (j, l, h, p)):
                        acc = sums.setdefault(key, [0.0, 0])
                        acc[0], acc[1] = acc[0] + z[p], acc[1] + 1
        out = []
        for gi, g in enumerate(graphs):
            prompt = None if gi == 0 else gi - 1
            tops = {}
            for n in _heads(g):
                acc = sums.get((prompt, n.layer, n.index, n.position))
                if acc is not None and acc[1]:
                    tops[n.id] = _top(model, acc[0] / acc[1], n.layer, n.index, k)
            details: dict[str, Any] = {"top_tokens": tops, "n_prompts": len(rows) if gi == 0 else 1}
            if gi == 0:
                details["attention"] = {without_position(n.id): attention[without_position(n.id)] for n in _heads(g)}
            out.append(details)
    return out


def with_head_details(graph: Graph, model: Any, rows: Sequence[Any], k: int = TOP_K, **bounds: Any) -> Graph:
    """``graph`` (and its ``per_prompt`` graphs) with ``meta.details["heads"]`` filled from its
    prompts ``rows`` (token-id rows, one per prompt; a single 1-D row for one prompt)."""
    import torch

    if isinstance(rows, torch.Tensor) and rows.dim() == 1:
        rows = [rows]
    rows = _rows_in_order(model, list(rows), graph)
    parts = [graph, *graph.per_prompt[:len(rows)]]
    details = compute(model, rows, parts, k, **bounds)
    done = [Graph(g.nodes, g.edges, replace(g.meta, details={**g.meta.details, "heads": d}) if d else g.meta,
                  g.per_prompt) for g, d in zip(parts, details)]
    return Graph(done[0].nodes, done[0].edges, done[0].meta, done[1:] + graph.per_prompt[len(rows):])


def head_details(graph: Graph) -> dict[str, Any]:
    """``meta.details["heads"]`` as ``{"attention": {head: [pattern per prompt]}, "top_tokens":
    {node id: [[token, logit], ...]}}``; graphs written before this layout (one prompt, per node
    id ``{"attention", "top_tokens"}``) are read too."""
    raw = graph.meta.details.get("heads", {}) if isinstance(graph.meta.details, dict) else {}
    if not isinstance(raw, dict):
        return {}
    if "top_tokens" in raw or "attention" in raw:
        return {"attention": raw.get("attention", {}), "top_tokens": raw.get("top_tokens", {}),
                "n_prompts": raw.get("n_prompts", 1)}
    att, top = {}, {}
    for i, v in raw.items():  # the single-prompt layout
        if isinstance(v, dict):
            if "attention" in v:
                att[i.split("@")[0]] = [v["attention"]]
            if "top_tokens" in v:
                top[i] = v["top_tokens"]
    return {"attention": att, "top_tokens": top, "n_prompts": 1}


def view_heads(parent: Graph, graph: Graph, prompt: int | None) -> dict[str, Any]:
    """What one page view's head panel reads: the graph's own top tokens, and the attention
    patterns of the parent (all its stored prompts; for one prompt's view, that prompt's)."""
    own, mine = head_details(parent), head_details(graph)
    att = own["attention"]
    if prompt is not None:
        att = {h: [p[prompt]] for h, p in att.items() if prompt < len(p)}
    return {"attention": att, "top_tokens": mine["top_tokens"] or (own["top_tokens"] if graph is parent else {}),
            "n_prompts": mine.get("n_prompts", 1)}
