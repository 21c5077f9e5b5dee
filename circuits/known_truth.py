"""Scoring every tracing method against planted circuits: precision, recall and sign agreement
with path patching, at each method's default settings (the known-truth tests and their table).

For a planted task (`mechscope.circuits.planted`) and a method, `evaluate` traces the circuit with
the method's defaults and returns a `Row`: precision and recall of the graph's components (heads,
MLPs; positions dropped) against the planted circuit (`verify.score_against`), and the share of
the graph's edges whose weight has the sign of the real metric change when that edge alone is
removed by path patching (None where the method's edge weights carry no sign, e.g. routes'
shares, or where the graph has no edges to check):

* ``atp`` / ``ig`` — sparse feature circuits over every layer's heads (and MLPs): node scores and
  edges (`feature_circuits.feature_circuit`, default threshold 0.1 absolute), edges checked by
  `verify.verify_edges` (path patching over the setup's sites);
* ``eap`` / ``eap-ig`` — `edges.edge_circuit` (default: edges with |score| >= 0.1 of the largest
  on complete paths), each kept q / k / v / MLP-input / logit channel checked by
  `interp.intervene.path_patch` of its sender into that receiver, the corrupted prompt as
  reference;
* ``routes`` / ``routes+causal`` — each prompt's route at the metric's position (tau 0.04) and
  the same after `routes_causal.causal_filter` (tol 0.1); precision and recall averaged over
  prompts;
* ``attention-svd`` — `svd_trace.trace_attention` from the planted circuit's last head (defaults).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from mechscope.circuits.planted import Task, sites
from mechscope.circuits.verify import score_against, sign_agreement

METHODS = ("atp", "ig", "eap", "eap-ig", "routes", "routes+causal", "attention-svd")


class Row(NamedTuple):
    task: str
    method: str
    precision: float
    recall: float
    sign_agreement: float | None  # share of edges agreeing in sign with path patching
    found: tuple[str, ...]


def _feature_circuit(t: Task, method: str) -> tuple[Any, float | None]:
    from mechscope.circuits.attribution import Setup
    from mechscope.circuits.feature_circuits import feature_circuit
    from mechscope.circuits.verify import verify_edges

    setup = Setup.build(t.model, sites(t.model), t.metric, t.clean, patch=t.patch)
    g = feature_circuit(setup, method=method)
    v = verify_edges(g, setup)
    return g, (v.edge_sign_agreement if v.edge_ids else None)


def _edge_patch(u: str, v: str, channel: str) -> tuple[str, str]:
    """Sender site and receiver of a component-graph edge (`edges._ends` names)."""
    sender = ("L0.resid_pre" if u == "embed" else f"{u.split('.')[0]}.mlp_out" if u.endswith(".mlp")
              else f"{u.split('.')[0]}.z.{u.split('.')[1]}")
    if channel == "out":
        return sender, "logits"
    if channel == "in":
        return sender, f"{v.split('.')[0]}.mlp_in"
    layer, head = v.split(".")
    return sender, f"{layer}.{channel.split(':')[0]}.{head}"


def _edges(t: Task, method: str) -> tuple[Any, float | None]:
    from mechscope.circuits.edges import EdgeTask, edge_circuit
    from mechscope.interp.intervene import path_patch

    g = edge_circuit(EdgeTask(t.model, t.clean, t.metric, "patch", t.patch), method)
    with torch.no_grad():
        m0 = float(t.metric(t.model(t.clean)).mean())
    scores, effects = [], []
    for key, chans in g.meta.details["channels"].items():
        u, v = key.split("->")
        for channel, score in chans.items():
            sender, receiver = _edge_patch(u, v, channel)
            with torch.no_grad():
                logits = path_patch(t.model, t.clean, sender, [receiver], ref_tokens=t.patch)
            scores.append(score)
            effects.append(float(t.metric(logits).mean()) - m0)
    return g, (sign_agreement(scores, effects) if scores else None)


def _routes(t: Task, causal: bool) -> list[Any]:
    from mechscope.circuits.routes_aggregate import prompt_routes
    from mechscope.circuits.routes_causal import causal_filter

    position = getattr(t.metric, "position", -1)
    routes = prompt_routes(t.model, t.clean, position=position)
    if causal:
        routes = [causal_filter(t.model, r, row, 0.1) for r, row in zip(routes, t.clean)]
    return routes


def evaluate(name: str, t: Task, method: str) -> Row:
    """Trace ``t`` with ``method`` at its defaults and score it (module doc)."""
    known = t.known.components
    if method in ("atp", "ig"):
        g, sign = _feature_circuit(t, method)
    elif method in ("eap", "eap-ig"):
        g, sign = _edges(t, method)
    elif method in ("routes", "routes+causal"):
        scores = [score_against(r, known) for r in _routes(t, method == "routes+causal")]
        found = sorted({c for s in scores for c in s.found + s.extra})
        return Row(name, method, sum(s.precision for s in scores) / len(scores),
                   sum(s.recall for s in scores) / len(scores), None, tuple(found))
    elif method == "attention-svd":
        from mechscope.circuits.svd_trace import trace_attention

        last = max((c for c in known if c[0] == "head"), key=lambda c: c[1])
        g, sign = trace_attention(t.model, list(t.clean), [(last[1], last[2])]), None
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    s = score_against(g, known)
    return Row(name, method, s.precision, s.recall, sign, tuple(sorted(s.found + s.extra)))
