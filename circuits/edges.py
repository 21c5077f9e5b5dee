"""Edge-level circuits: EAP and EAP-IG over the component graph, and an edge-masked forward pass.

The model is a DAG of senders ``u`` (embedding, heads, MLPs) and receivers ``r`` (each head's
q / k / v input, each MLP's input, the logits; `mechscope.interp.components`). A receiver's input
is ``x_r = sum_{u -> r} o_u + const``, so an edge is one term of that sum.

* **Edge-masked forward** (ACDC-style; Conmy et al. 2023, arXiv:2304.14997): for a set ``E`` of
  kept edges, every receiver reads ``x_r - sum_{u -> r not in E} (o_u - o'_u)`` where ``o_u`` is
  the sender's output *in this forward pass* and ``o'_u`` its reference output (a corrupted
  prompt's, the mean over prompts and positions, or 0). With every edge kept this is the clean
  model; with none, every receiver reads its reference input, so the output is the corrupted run.
  Faithfulness of ``E``: ``(m(E) - m(none)) / (m(all) - m(none))``.
* **EAP** (Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery",
  arXiv:2310.10348): ``s(u -> r) = (o'_u - o_u) · dm/dx_r`` at the clean run, the first-order
  change of the metric when the edge is removed.
* **EAP-IG** (Hanna et al. 2024, "Have Faith in Faithfulness", arXiv:2403.17806): the same with
  ``dm/dx_r`` averaged over ``steps`` inputs on the straight line from the reference embedding to
  the clean one (midpoints ``alpha_k = (k + 1/2)/steps``; the paper's "EAP-IG-inputs"), which
  stays informative where attention saturates and the clean gradient vanishes.

EAP is first order: where the metric saturates at the clean run (``planted-saturated`` in
`mechscope.circuits.planted`: ``p(a) ~ 1``) every score is ~0 (< 1e-4 while the real effects are
~-20). The default threshold is relative to the largest score, so the ranking can survive (it
does there: P = R = 1), but the scores explain none of the effect; EAP-IG's do.

Scores are in units of the metric (mean over prompts, summed over positions); negative means
removing the edge lowers the metric. `edge_circuit` keeps the strongest edges (top ``n`` or a
threshold) and then only those on a complete path from the embedding to the logits, and returns
the one `Graph` type, with the faithfulness of the kept edge set in its metadata.
Node ids are the canonical component ids (``embed``, ``L1.H2``, ``L1.mlp``, ``logit``).

Scale and prompt lengths: every function takes one task or one task per prompt length
(`tasks`), and ``chunk`` prompts (``step_chunk`` EAP-IG steps) per pass. Scores, metrics and
faithfulness are means over all prompts, so memory is bounded by the chunk sizes, not by the
number of prompts or steps, and a ``mean`` reference is pooled over every prompt and position of
every group (`pooled_mean`). Chunked results equal unchunked ones up to float rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.circuits.attribution import frozen
from mechscope.circuits.graph import Graph, GraphMeta, Node
from mechscope.interp.components import ComponentGraph, component_hooks

Metric = Callable[[Tensor], Tensor]  # logits [b, pos, vocab] -> [b]
REFERENCES = ("patch", "mean", "zero")
METHODS = ("eap", "eap-ig")


@dataclass(frozen=True, eq=False)
class EdgeTask:
    """Model, clean prompts, metric and the reference (``patch`` prompts, ``mean`` or ``zero``)."""

    model: Any
    clean: Int[Tensor, "b p"]
    metric: Metric
    reference: str = "patch"
    patch: Int[Tensor, "b p"] | None = None
    mean: Float[Tensor, "1 1 S d"] | None = None  # a ``mean`` reference pooled over a larger set

    def __post_init__(self) -> None:
        from mechscope.interp.models import Model

        object.__setattr__(self, "model", Model.wrap(self.model))  # a HookedTransformer too
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown reference {self.reference!r}; valid: {', '.join(REFERENCES)}")
        if (self.reference == "patch") != (self.patch is not None):
            raise ValueError("reference 'patch' needs corrupted prompts `patch` (and only it uses them)")
        if self.patch is not None and self.patch.shape != self.clean.shape:
            raise ValueError(f"patch prompts have shape {list(self.patch.shape)}, clean "
                             f"{list(self.clean.shape)}: contrastive pairs must match token for token")

    @property
    def graph(self) -> ComponentGraph:
        return ComponentGraph.of(self.model)

    @property
    def n_prompts(self) -> int:
        return int(self.clean.shape[0])

    def select(self, rows: "slice | Tensor") -> "EdgeTask":
        """The same problem for a subset of the prompts (the metric restricted by its
        ``select(rows)``, as the metrics of `mechscope.circuits.attribution` are); a ``mean``
        reference stays that of the whole task."""
        if not hasattr(self.metric, "select"):
            raise ValueError(f"metric {getattr(self.metric, '__name__', self.metric)!r} has no "
                             f"`select(rows)`: chunking over prompts needs a metric that can be "
                             f"restricted to a subset of prompts (see attribution.logit_diff)")
        rows = torch.arange(self.n_prompts)[rows]
        mean = (self.mean if self.mean is not None else pooled_mean([self])) if self.reference == "mean" else None
        return replace(self, clean=self.clean[rows], metric=self.metric.select(rows),
                       patch=None if self.patch is None else self.patch[rows], mean=mean)


def tasks(task: "EdgeTask | Sequence[EdgeTask]") -> list[EdgeTask]:
    """One edge problem over prompts of different lengths, as one task per length, checked to
    share the model and reference; a ``mean`` reference is pooled over all of them."""
    group = [task] if isinstance(task, EdgeTask) else list(task)
    if not group:
        raise ValueError("no edge tasks given")
    first = group[0]
    for t in group[1:]:
        if t.model is not first.model or t.reference != first.reference:
            raise ValueError(f"edge tasks of one circuit must share the model and the reference; got "
                             f"{first.reference!r} and {t.reference!r}")
    if first.reference == "mean" and not (first.mean is not None and all(t.mean is first.mean for t in group)):
        mean = pooled_mean(group)
        group = [replace(t, mean=mean) for t in group]
    return group


def pieces(task: "EdgeTask | Sequence[EdgeTask]", chunk: int | None = None
           ) -> Iterator[tuple[EdgeTask, float]]:
    """``(sub-task, its share of all prompts)`` for chunks of at most ``chunk`` prompts of every
    group, made one at a time."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk size must be >= 1 prompt, got {chunk}")
    group = tasks(task)
    total = sum(t.n_prompts for t in group)
    for t in group:
        b = t.n_prompts
        size = b if chunk is None else chunk
        for i in range(0, b, size):
            yield (t if size >= b else t.select(slice(i, min(i + size, b)))), min(size, b - i) / total


def pooled_mean(group: Sequence[EdgeTask], chunk: int = 16) -> Float[Tensor, "1 1 S d"]:
    """Every sender's mean output over every prompt and position of ``group`` (``chunk``
    prompts per forward)."""
    total, n = None, 0
    for t in group:
        for i in range(0, t.n_prompts, chunk):
            out = sender_outputs(t, t.clean[i:i + chunk]).sum((0, 1), keepdim=True)
            total = out if total is None else total + out
        n += t.clean.numel()
    return total / n


def _metric(task: EdgeTask, logits: Tensor) -> Tensor:
    """Metric per row of ``K`` stacked copies of the prompts."""
    return torch.cat([task.metric(c) for c in logits.split(task.clean.shape[0])])


def sender_outputs(task: EdgeTask, tokens: Tensor) -> Float[Tensor, "b p S d"]:
    """Every sender's output on ``tokens`` (a plain forward)."""
    g, outs = task.graph, {}
    with torch.no_grad(), component_hooks(task.model, g, lambda i, o: outs.__setitem__(i.start, o),
                                          lambda i, x: x):
        task.model(tokens)
    return torch.cat([outs[k] for k in sorted(outs)], 2)


def reference_outputs(task: EdgeTask) -> Float[Tensor, "b p S d"]:
    if task.reference == "patch":
        return sender_outputs(task, task.patch)
    if task.reference == "mean" and task.mean is not None:
        b, p = task.clean.shape
        return task.mean.expand(b, p, *task.mean.shape[2:])
    clean = sender_outputs(task, task.clean)
    if task.reference == "zero":
        return torch.zeros_like(clean)
    return clean.mean((0, 1), keepdim=True).expand_as(clean)


def masked_metric(task: EdgeTask, keep: Bool[Tensor, "S R"], ref: Tensor | None = None) -> Float[Tensor, "b"]:
    """The metric of the edge-masked forward (module doc): edges where ``keep`` is False carry
    their sender's reference output instead of its output in this pass."""
    g = task.graph
    if keep.shape != g.upstream.shape:
        raise ValueError(f"edge mask has shape {list(keep.shape)}, the model has "
                         f"{list(g.upstream.shape)} (senders x receivers)")
    ref = reference_outputs(task) if ref is None else ref
    cut = (~keep.bool() & g.upstream).to(ref.dtype)
    diff = torch.zeros_like(ref)

    def on_send(idx: slice, out: Tensor) -> None:
        diff[:, :, idx] = out - ref[:, :, idx]

    def on_receive(idx: slice, x: Tensor) -> Tensor:
        return x - torch.einsum("bpsd,sr->bprd", diff, cut[:, idx])

    with torch.no_grad(), component_hooks(task.model, g, on_send, on_receive):
        return task.metric(task.model(task.clean))


def receiver_grads(task: EdgeTask, steps: int | None = None, step_chunk: int | None = None
                   ) -> Float[Tensor, "b p R d"]:
    """``dm/dx_r`` for every receiver: at the clean run (``steps`` None), or averaged over the
    midpoints of the straight line from the reference embedding to the clean one (``step_chunk``
    midpoints per pass, all by default)."""
    if step_chunk is not None and step_chunk < 1:
        raise ValueError(f"step_chunk must be >= 1 step per pass, got {step_chunk}")
    emb_clean = sender_outputs(task, task.clean)[:, :, 0]
    emb_ref = reference_outputs(task)[:, :, 0] if steps else None
    k = steps or 1
    per, total = k if step_chunk is None else min(step_chunk, k), None
    for first in range(0, k, per):
        g = _receiver_grad_sum(task, emb_clean, emb_ref, k, first, min(per, k - first))
        total = g if total is None else total + g
    return total / k


def _receiver_grad_sum(task: EdgeTask, emb_clean: Tensor, emb_ref: Tensor | None, steps: int,
                       first: int, k: int) -> Tensor:
    """Receiver gradients summed over midpoints ``first .. first + k - 1`` (one pass of ``k x b``
    rows); at the clean embedding when ``emb_ref`` is None."""
    g, b = task.graph, task.clean.shape[0]
    if emb_ref is None:
        path = emb_clean
    else:
        alpha = ((torch.arange(first, first + k, device=emb_clean.device) + 0.5) / steps)
        alpha = alpha.repeat_interleave(b)[:, None, None]
        path = emb_ref.repeat(k, 1, 1) + alpha * (emb_clean - emb_ref).repeat(k, 1, 1)
    path = path.detach().requires_grad_()
    inputs: dict[int, Tensor] = {}

    def on_receive(idx: slice, x: Tensor) -> Tensor:
        inputs[idx.start] = x
        return x

    with torch.enable_grad(), frozen(task.model), component_hooks(task.model, g, lambda i, o: None,
                                                                  on_receive, embed=lambda a: path):
        m = _metric(task, task.model(task.clean.repeat(k, 1)))
        keys = sorted(inputs)
        grads = torch.autograd.grad(m.sum(), [inputs[i] for i in keys], allow_unused=True)
    full = torch.cat([torch.zeros_like(inputs[i]) if gr is None else gr for i, gr in zip(keys, grads)], 2)
    return full.view(k, b, *full.shape[1:]).sum(0)


def edge_scores(task: "EdgeTask | Sequence[EdgeTask]", method: str = "eap-ig", steps: int = 10,
                chunk: int | None = None, step_chunk: int | None = None) -> Float[Tensor, "S R"]:
    """EAP / EAP-IG score of every edge (module doc), mean over all prompts of every task;
    0 where no edge exists. ``chunk`` prompts and ``step_chunk`` steps per pass."""
    if method not in METHODS:
        raise ValueError(f"unknown edge method {method!r}; valid: {', '.join(METHODS)}")
    if method == "eap-ig" and steps < 1:
        raise ValueError(f"EAP-IG needs steps >= 1, got {steps}")
    group, scores = tasks(task), None
    for sub, share in pieces(group, chunk):
        delta = reference_outputs(sub) - sender_outputs(sub, sub.clean)
        grads = receiver_grads(sub, steps if method == "eap-ig" else None, step_chunk)
        part = torch.einsum("bpsd,bprd->sr", delta, grads) * (share / sub.n_prompts)
        scores = part if scores is None else scores + part
        del delta, grads
    return scores * group[0].graph.upstream


# -- selecting a circuit --------------------------------------------------------------------------
def _owner(g: ComponentGraph, r: int) -> int | None:
    """The sender index of the component that receiver ``r`` feeds (None for the logits)."""
    name = g.receivers[r]
    if name == "logits":
        return None
    parts = name.split(".")
    layer = int(parts[0][1:])
    if parts[1] == "mlp":
        return g.mlp(layer)
    h = int(parts[1].lstrip("KVH"))
    if parts[1].startswith("KV"):  # a key / value head feeds its group's query heads: the first
        h = h * (g.n_heads // g.n_kv_heads)
    return g.heads(layer).start + h


def on_complete_paths(g: ComponentGraph, keep: Bool[Tensor, "S R"]) -> Bool[Tensor, "S R"]:
    """The edges of ``keep`` that lie on a path embedding -> ... -> logits of kept edges."""
    keep = keep.bool() & g.upstream
    S, R = keep.shape
    owner = [_owner(g, r) for r in range(R)]
    group = max(1, g.n_heads // g.n_kv_heads)
    feeds: dict[int, list[int]] = {s: [] for s in range(S)}  # sender -> its own receivers
    for r, o in enumerate(owner):
        if o is None:
            continue
        if ".KV" in g.receivers[r]:
            feeds.update({o + i: feeds[o + i] + [r] for i in range(group)})
        else:
            feeds[o].append(r)
    alive = torch.zeros(S, dtype=torch.bool)
    alive[0] = True
    for s in range(1, S):  # senders are in forward order
        alive[s] = any(bool((keep[:, r] & alive).any()) for r in feeds[s])
    useful = torch.zeros(R, dtype=torch.bool)
    useful[g.logits] = True
    for s in reversed(range(S)):
        if (keep[s] & useful).any():
            for r in feeds[s]:
                useful[r] = True
    return keep & alive[:, None] & useful[None, :]


def select_edges(scores: Tensor, top_n: int | None = None, threshold: float | None = None,
                 relative: bool = True) -> Bool[Tensor, "S R"]:
    """The ``top_n`` edges by ``|score|``, or those with ``|score| >= threshold`` (a fraction of
    the largest ``|score|`` when ``relative``); exactly-zero scores are never kept."""
    if (top_n is None) == (threshold is None):
        raise ValueError("give exactly one of top_n (edges to keep) or threshold")
    mag = scores.abs()
    if top_n is not None:
        keep = torch.zeros_like(mag, dtype=torch.bool)
        keep.view(-1)[mag.view(-1).topk(min(top_n, mag.numel())).indices] = True
    else:
        cut = threshold * float(mag.max()) if relative else threshold
        keep = mag >= cut
    return keep & (mag > 0)


def masked_metrics(task: "EdgeTask | Sequence[EdgeTask]", keeps: Sequence[Tensor],
                   chunk: int | None = None) -> list[float]:
    """The edge-masked metric (`masked_metric`) of each edge set in ``keeps``, mean over all
    prompts of every task, ``chunk`` prompts per pass."""
    out = [0.0] * len(keeps)
    for sub, share in pieces(task, chunk):
        ref = reference_outputs(sub)
        for i, keep in enumerate(keeps):
            out[i] += share * float(masked_metric(sub, keep, ref).mean())
    return out


def faithfulness(task: "EdgeTask | Sequence[EdgeTask]", keep: Bool[Tensor, "S R"],
                 chunk: int | None = None) -> float | None:
    """``(m(E) - m(none)) / (m(all) - m(none))`` by edge-masked forwards, each ``m`` a mean over
    all prompts; None, with a warning, when the reference does not move the metric (undefined)."""
    group = tasks(task)
    g = group[0].graph
    m_all, m_none, m_keep = masked_metrics(group, [g.upstream, torch.zeros_like(g.upstream), keep], chunk)
    span = m_all - m_none
    if abs(span) < 1e-12:
        warnings.warn(f"the metric does not change when every edge is removed ({group[0].reference}): "
                      f"m(all) = m(none) = {m_all:.6g}; faithfulness is undefined (None)", stacklevel=2)
        return None
    return (m_keep - m_none) / span


def _component(g: ComponentGraph, name: str) -> Node:
    """The graph node of a sender or receiver. Receivers are nodes of the component they feed (a
    head's q / k / v inputs are that head), so node ids stay canonical; a key / value head of
    grouped-query attention is drawn as the first query head it feeds."""
    if name == "embed":
        return Node("embedding", -1, label="embed")
    if name == "logits":
        return Node("logit", g.n_layers, label="logits")
    parts = name.split(".")
    layer = int(parts[0][1:])
    if parts[1] == "mlp":
        return Node("mlp", layer, label=f"MLP{layer}")
    h = int(parts[1].lstrip("KVH"))
    if parts[1].startswith("KV"):
        h *= g.n_heads // g.n_kv_heads
    return Node("head", layer, None, h, f"L{layer}H{h}")


def _ends(g: ComponentGraph, s: int, r: int) -> tuple[Node, Node, str]:
    """Sender node, receiver node and the edge's channel: ``q`` / ``k`` / ``v`` (``k:KV0`` for a
    key / value head), ``in`` for an MLP's input, ``out`` for the logits."""
    name = g.receivers[r]
    parts = name.split(".")
    channel = ("out" if name == "logits" else "in" if parts[1] == "mlp"
               else parts[2] + (f":{parts[1]}" if parts[1].startswith("KV") else ""))
    return _component(g, g.senders[s]), _component(g, name), channel


def edge_circuit(task: "EdgeTask | Sequence[EdgeTask]", method: str = "eap-ig", steps: int = 10,
                 top_n: int | None = None, threshold: float | None = 0.1, relative: bool = True,
                 chunk: int | None = None, step_chunk: int | None = None) -> Graph:
    """The edge-level circuit (module doc) as a `Graph` over components (``embedding``, ``head``,
    ``mlp``, ``logit`` nodes). An edge ``u -> head`` stands for the kept q / k / v input edges
    between them and weighs their summed scores; ``meta.details["channels"]`` keeps each one
    (``{"u->v": {"q": score, "v": score}}``; ``in`` for an MLP's input, ``out`` for the logits),
    so `edge_mask` rebuilds the exact edge set. ``meta.faithfulness`` is that of the kept edge
    set (edge-masked forwards; None with a warning when undefined). Prompts of several lengths:
    one task per length; scores, the threshold and faithfulness are over all prompts."""
    if top_n is not None:
        threshold = None
    group = tasks(task)
    first, g = group[0], group[0].graph
    scores = edge_scores(group, method, steps, chunk, step_chunk)
    keep = on_complete_paths(g, select_edges(scores, top_n, threshold, relative))
    lengths = sorted({int(t.clean.shape[1]) for t in group})
    channels: dict[str, dict[str, float]] = {}
    out = Graph(meta=GraphMeta.traced(
        first.model, f"edges/{method}", "metric", [row for t in group for row in t.clean.tolist()],
        {"reference": first.reference, "metric": getattr(first.metric, "__name__", "custom"),
         "steps": steps if method == "eap-ig" else None, "top_n": top_n, "threshold": threshold,
         "relative_threshold": relative, "seq_len": lengths[0] if len(lengths) == 1 else lengths,
         "chunk": chunk, "step_chunk": step_chunk},
        faithfulness=faithfulness(group, keep, chunk),
        details={"channels": channels, "n_edges_total": g.n_edges, "n_edges_kept": int(keep.sum())}))
    for s, r in keep.nonzero().tolist():
        u, v, channel = _ends(g, s, r)
        uid, vid = out.add_node(u), out.add_node(v)
        out.add_edge(uid, vid, float(scores[s, r]), accumulate=True)
        channels.setdefault(f"{uid}->{vid}", {})[channel] = float(scores[s, r])
    return out


def edge_mask(g: ComponentGraph, graph: Graph, channels: dict[str, dict[str, float]] | None = None
              ) -> Bool[Tensor, "S R"]:
    """The edge set of a `Graph` from `edge_circuit` as a ``[senders, receivers]`` mask
    (``channels``: its ``meta.details["channels"]``, read from the graph when not given)."""
    channels = graph.meta.details["channels"] if channels is None else channels
    where = {}
    for s in range(len(g.senders)):
        for r in range(len(g.receivers)):
            if g.upstream[s, r]:
                u, v, channel = _ends(g, s, r)
                where[(u.id, v.id, channel)] = (s, r)
    keep = torch.zeros_like(g.upstream)
    for (u, v) in graph.edges:
        for channel in channels.get(f"{u}->{v}", {}):
            if (u, v, channel) not in where:
                raise ValueError(f"edge {u} -> {v} ({channel}) is not an edge of this model's "
                                 f"component graph")
            keep[where[(u, v, channel)]] = True
    return keep
