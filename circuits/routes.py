"""Information flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically
Interpreting Language Models at Scale", arXiv:2403.00824).

One forward pass decomposes every residual update into its parts. With ``x^L_i`` the residual
stream entering block ``L`` at position ``i`` and ``m^L_i`` the stream after its attention:

    m^L_i     = x^L_i + sum_h sum_j A^{L,h}[i, j] (v^{L,h}_j W_O^{L,h}) + b_O^L
    x^{L+1}_i = m^L_i + MLP^L(m^L_i)

(attention-only models have no MLP: ``x^{L+1}_i = m^L_i``; ``j <= i`` under causal attention,
every ``j`` under bidirectional attention, `Model.attention_direction`). The parts of ``y = m^L_i`` are the
residual ``x^L_i``, one term per (head ``h``, source ``j``) and the output bias; the parts of
``y = x^{L+1}_i`` are ``m^L_i`` and the MLP output. The parts re-sum to ``y`` exactly.

Proximity importance (the paper's eq. 3) of a part ``z`` of ``y`` with parts ``{z_k}``::

    prox(z, y) = max(||y||_1 - ||y - z||_1, 0),     w(z) = prox(z, y) / sum_k prox(z_k, y)

so the shares of each representation's parts sum to 1. A part that points away from ``y`` or is
tiny gets no share; a part close to ``y`` gets most of it.

Signed variant (beyond the paper). With ``u`` the read-out direction of the prediction, i.e. the
logit of the predicted (or given) token ``t`` as a linear function of the final residual before
its normalisation scale — ``u = P (g * W_U[:, t])`` with ``g`` the final norm's weight and ``P``
the mean-centring projection for LayerNorm (identity for RMSNorm / no norm) — the signed share is

    s(z) = <z, u> / sum_k |<z_k, u>|,

so ``sum_k |s(z_k)| = 1``, positive parts promote ``t`` and negative parts suppress it. The same
``u`` is used at every layer and position (a logit-lens reading of each update).

Routes. Parts with ``|w| < tau`` (default 0.04) are dropped and the kept shares of each node are
renormalised to sum to 1 (in absolute value); the route is the subgraph reached top-down from the
final residual of the prediction position. Node scores are the flow from the prediction: 1 at the
top, ``flow(parent) += flow(child) * w'`` down each kept edge.

Limitation: inert writers. The shares measure how much of a residual update a part makes up, not
what it does downstream. A component that is active but writes only to directions nothing later
reads (an inert writer: its ablation changes nothing) still makes up a large share and is kept;
in a model with inert writers the routes contain all of them (the LM Transparency Tool's routes
too). `mechscope.circuits.routes_causal.causal_filter` (``mechscope routes --causal-filter TOL``)
keeps a route edge only if removing it by path patching moves the metric by more than TOL.

Graph. Node ids are canonical (`mechscope.circuits.graph`): ``x^0_i`` is ``embed@i``, ``x^L_i``
is ``L{L}.resid_pre@i`` (``L{n-1}.resid_post@i`` on top), ``m^L_i`` is ``L{L}.resid_mid@i``, heads are
``L{L}.H{h}@i`` and MLPs ``L{L}.mlp@i``. ``meta.parameters`` holds tau, view, signed and the
traced position; ``meta.details`` the model's ``prediction`` and the signed measure's ``target``
(token ids; -1 when not signed).

Two views of attention edges. ``view="heads"`` keeps heads apart: ``x^L_j -> head(L,h)@i ->
m^L_i`` with weights ``w'(h, j)`` and ``sum_j w'(h, j)``. ``view="summed"`` is the LM Transparency
Tool's view (Tufanov et al. 2024): one edge ``x^L_j -> m^L_i`` with ``sum_h w(h, j)``, thresholded
after summing.

Memory: the (head, source) terms of a layer are ``[pos, heads, pos, d_model]``; they are built in
chunks of destinations and heads of at most ``chunk_elems`` numbers and reduced to norms at once,
so long inputs never hold them all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechscope.circuits.graph import Graph, GraphMeta, Node, head_label, mlp_label
from mechscope.interp.capture import hooks_for
from mechscope.interp.models import Model
from mechscope.interp.sites import Site

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

VIEWS = ("heads", "summed")
DEFAULT_TAU = 0.04
DEFAULT_CHUNK = 1 << 22


@dataclass(frozen=True)
class FlowContributions:
    """Shares of every part of every residual update, for a batch of equal-length prompts.

    ``attn_heads[b, L, i, h, j]`` is the share of head ``h``'s term from source ``j`` in
    ``m^L_i``; ``attn_resid``/``attn_bias`` the shares of ``x^L_i`` and ``b_O``; ``mlp`` and
    ``mlp_resid`` the shares of the MLP output and ``m^L_i`` in ``x^{L+1}_i`` (for attention-only
    models ``mlp`` is 0 and ``mlp_resid`` 1: the block is the identity). ``signed`` says which
    measure (module doc); ``target`` is the token whose read-out direction the signed measure
    used (-1 rows where not signed).
    """

    tokens: Int[Tensor, "batch pos"]
    attn_heads: Float[Tensor, "batch layer pos head src"]
    attn_resid: Float[Tensor, "batch layer pos"]
    attn_bias: Float[Tensor, "batch layer pos"]
    mlp: Float[Tensor, "batch layer pos"]
    mlp_resid: Float[Tensor, "batch layer pos"]
    prediction: Int[Tensor, "batch"]
    target: Int[Tensor, "batch"]
    signed: bool
    attn_only: bool

    @property
    def n_layers(self) -> int:
        return self.attn_heads.shape[1]


# -- the decomposition ------------------------------------------------------------------------------
def head_terms(pattern: Float[Tensor, "head dst src"], v: Float[Tensor, "src head d_head"],
               W_O: Float[Tensor, "head d_head d_model"], dst: slice, heads: slice, causal: bool = True
               ) -> Float[Tensor, "head_chunk dst_chunk src_upto_dst d_model"]:
    """The terms ``A[h, i, j] (v_j W_O^h)`` for a chunk of heads and destinations (sources up
    to the last destination of the chunk under causal attention: the rest are masked; every
    source under bidirectional attention)."""
    stop = dst.stop if causal else pattern.shape[-1]
    vo = torch.einsum("jhe,hed->hjd", v[:stop, heads], W_O[heads])
    return pattern[heads, dst, :stop, None] * vo[:, None]


def _proximity(y: Tensor, z: Tensor, y_norm: Tensor) -> Tensor:
    return (y_norm - (y - z).abs().sum(-1)).clamp_min(0)


def _attn_head_scores(y: Tensor, pattern: Tensor, v: Tensor, W_O: Tensor, u: Tensor | None,
                      chunk_elems: int, causal: bool = True) -> Float[Tensor, "pos head src"]:
    """Unnormalised proximity (or signed projection) of every (head, source) term of ``y``."""
    n_pos, d = y.shape
    n_heads = pattern.shape[0]
    if u is not None:  # projections need no d_model terms: <A v W_O, u> = A <v W_O, u>
        vo_u = torch.einsum("jhe,hed,d->hj", v, W_O, u)
        return (pattern * vo_u[:, None, :]).permute(1, 0, 2)
    out = y.new_zeros(n_pos, n_heads, n_pos)
    y_norm = y.abs().sum(-1)
    hg = max(1, min(n_heads, chunk_elems // max(1, n_pos * n_pos * d)))
    for h0 in range(0, n_heads, hg):
        hs = slice(h0, min(n_heads, h0 + hg))
        ic = max(1, chunk_elems // max(1, (hs.stop - h0) * n_pos * d))
        for i0 in range(0, n_pos, ic):
            ds = slice(i0, min(n_pos, i0 + ic))
            z = head_terms(pattern, v, W_O, ds, hs, causal)
            prox = _proximity(y[ds][None, :, None], z, y_norm[ds][None, :, None])
            out[ds, hs, : z.shape[2]] = prox.permute(1, 0, 2)
    return out


def _score(y: Tensor, z: Tensor, u: Tensor | None) -> Tensor:
    if u is not None:
        return z @ u
    return _proximity(y, z, y.abs().sum(-1))


def _normalise(parts: list[Tensor], signed: bool) -> list[Tensor]:
    """Divide each part's score by the sum over parts (of |score| when signed), per position."""
    total = sum((p.abs() if signed else p).reshape(p.shape[0], -1).sum(1) for p in parts)
    total = total.clamp_min(torch.finfo(total.dtype).tiny)
    return [p / total.view(-1, *([1] * (p.ndim - 1))) for p in parts]


def readout_direction(model: "ModelLike", token: int) -> Float[Tensor, "d_model"]:
    """``u`` of the signed measure: the token's unembedding seen through the final norm."""
    model = Model.wrap(model)
    norm = model.ln_final
    u = model.W_U[:, token].detach().clone()
    if norm.w is not None:
        u = u * norm.w.detach()
    if norm.centred:
        u = u - u.mean()
    return u


def flow_contributions(model: "ModelLike", tokens: Int[Tensor, "batch pos"] | Int[Tensor, "pos"],
                       signed: bool = False, target: Int[Tensor, "batch"] | None = None,
                       chunk_elems: int = DEFAULT_CHUNK) -> FlowContributions:
    """Shares of all parts of all residual updates from one forward pass (module doc).

    ``target`` (signed only): the token per prompt whose read-out direction is used; default the
    model's prediction at the last position.
    """
    model = Model.wrap(model)
    _check_model(model)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 1, got shape {tuple(tokens.shape)}")
    n, attn_only = model.n_layers, model.attn_only
    kinds = ["resid_pre", "resid_post", "v", "pattern"] + ([] if attn_only else ["resid_mid", "mlp_out"])
    get: dict[tuple[int, str], Tensor] = {}

    def saver(site: Site):
        return lambda act: get.__setitem__((site.layer, site.kind), act)

    sites = [model.site(f"L{L}.{k}") for L in range(n) for k in kinds]
    with torch.no_grad():
        with hooks_for(model, {s: saver(s) for s in sites}):  # one forward pass: logits and parts
            logits = model(tokens.to(model.device))
        prediction = logits[:, -1].argmax(-1).cpu()
        if signed:
            target = prediction if target is None else torch.as_tensor(target).view(-1)
            if target.shape[0] != tokens.shape[0]:
                raise ValueError(f"target needs one token per prompt ({tokens.shape[0]}), got {target.shape[0]}")
        out = {k: [] for k in ("heads", "resid", "bias", "mlp", "mlp_resid")}
        for b in range(tokens.shape[0]):
            u = readout_direction(model, int(target[b])) if signed else None
            per = [_layer_shares(model, get, L, b, u, chunk_elems) for L in range(n)]
            for k in out:
                out[k].append(torch.stack([p[k] for p in per]))
    tgt = target.cpu() if signed else torch.full((tokens.shape[0],), -1)
    return FlowContributions(tokens.cpu(), *(torch.stack(out[k]).cpu() for k in out),
                             prediction, tgt, signed, attn_only)


def _layer_shares(model: "Model", get: dict, L: int, b: int, u: Tensor | None,
                  chunk_elems: int) -> dict[str, Tensor]:
    attn_only = model.attn_only
    x = get[(L, "resid_pre")][b]
    m = get[(L, "resid_post" if attn_only else "resid_mid")][b]
    v = get[(L, "v")][b]
    if v.shape[1] != model.n_heads:  # grouped-query attention: each key/value head serves a group
        v = v.repeat_interleave(model.n_heads // v.shape[1], dim=1)
    attn = model.attn(L)
    W_O, b_O = attn.W_O, attn.b_O
    causal = model.attention_direction == "causal"
    heads = _attn_head_scores(m, get[(L, "pattern")][b], v, W_O, u, chunk_elems, causal)
    resid, bias = _score(m, x, u), _score(m, b_O.expand_as(m), u)
    heads, resid, bias = _normalise([heads, resid, bias], u is not None)
    if attn_only:
        mlp, mlp_resid = torch.zeros_like(resid), torch.ones_like(resid)
    else:
        post, mlp_out = get[(L, "resid_post")][b], get[(L, "mlp_out")][b]
        mlp, mlp_resid = _normalise([_score(post, mlp_out, u), _score(post, m, u)], u is not None)
    return {"heads": heads, "resid": resid, "bias": bias, "mlp": mlp, "mlp_resid": mlp_resid}


def _check_model(model: "Model") -> None:
    if model.parallel_blocks:
        raise ValueError("flow routes need sequential blocks; parallel attention/MLP models "
                         "(GPT-J, NeoX) are not supported")


# -- routes -----------------------------------------------------------------------------------------
def x_node(L: int, i: int, n_layers: int, label: str = "") -> Node:
    """``x^L_i``: the embedding (L = 0), a block's input, or the final residual (L = n_layers)."""
    if L == 0:
        return Node("embedding", -1, i, label=label)
    if L == n_layers:
        return Node("residual", n_layers - 1, i, label=label, site=f"L{n_layers - 1}.resid_post")
    return Node("residual", L, i, label=label, site=f"L{L}.resid_pre")


def mid_node(L: int, i: int, n_layers: int, attn_only: bool) -> Node:
    """``m^L_i``; in attention-only models it is ``x^{L+1}_i``."""
    if attn_only:
        return x_node(L + 1, i, n_layers)
    return Node("residual", L, i, site=f"L{L}.resid_mid")


def _kept(w: Tensor, tau: float) -> Tensor:
    """Shares with |w| >= tau, renormalised to sum 1 in absolute value (0 elsewhere)."""
    keep = torch.where(w.abs() >= tau, w, torch.zeros_like(w))
    total = keep.abs().sum()
    return keep / total if total > 0 else keep


def extract_route(c: FlowContributions, index: int = 0, position: int = -1, tau: float = DEFAULT_TAU,
                  view: str = "heads", str_tokens: list[str] | None = None,
                  model_name: str = "") -> Graph:
    """The route of prompt ``index`` from the final residual at ``position`` (module doc)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
    if not 0 <= tau < 1:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    n, n_pos = c.n_layers, c.tokens.shape[1]
    if not -n_pos <= position < n_pos:
        raise ValueError(f"position {position} out of range for a prompt of {n_pos} tokens")
    position %= n_pos
    labels = str_tokens or [f"<{int(t)}>" for t in c.tokens[index]]
    g = Graph(meta=GraphMeta(
        "information_flow_routes", "signed projection share" if c.signed else "proximity share",
        model_name, n, 1, ("".join(labels),), (tuple(labels),),
        {"tau": tau, "view": view, "signed": c.signed, "renormalised": True, "position": position},
        details={"prediction": int(c.prediction[index]), "target": int(c.target[index])}))
    flow: dict[str, float] = {}

    def edge(src: Node, dst: Node, w: float, src_flow: float) -> None:
        if src.id not in g.nodes:
            g.add_node(src)
        g.add_edge(src.id, dst.id, w, accumulate=True)
        flow[src.id] = flow.get(src.id, 0.0) + src_flow

    top = g.add_node(x_node(n, position, n, labels[position]))
    flow[top] = 1.0
    frontier = {position}  # positions of x^{L+1} on the route, processed top-down
    for L in reversed(range(n)):
        mids = set()
        for i in sorted(frontier):
            if c.attn_only:
                mids.add(i)
                continue
            dst = x_node(L + 1, i, n, labels[i])
            f = flow[dst.id]
            mid = mid_node(L, i, n, False)
            ws = _kept(torch.stack([c.mlp_resid[index, L, i], c.mlp[index, L, i]]), tau)
            if ws[0] != 0:
                edge(mid, dst, float(ws[0]), f * abs(float(ws[0])))
                mids.add(i)
            if ws[1] != 0:
                mlp = Node("mlp", L, i, label=mlp_label(L))
                edge(mlp, dst, float(ws[1]), f * abs(float(ws[1])))
                edge(mid, mlp, float(ws[1]), f * abs(float(ws[1])))
                mids.add(i)
        frontier = set()
        for i in sorted(mids):
            frontier |= _expand_attention(c, g, index, L, i, tau, view, labels, flow, edge)
    for nid, f in flow.items():
        g.nodes[nid] = replace(g.nodes[nid], score=float(f))
    return g


def _expand_attention(c: FlowContributions, g: Graph, b: int, L: int, i: int, tau: float, view: str,
                      labels: list[str], flow: dict, edge) -> set[int]:
    """Add the kept attention-block parts of ``m^L_i``; returns the source positions reached."""
    n = c.n_layers
    mid = mid_node(L, i, n, c.attn_only)
    if mid.id not in g.nodes:
        g.add_node(mid)
    f = flow.get(mid.id, 0.0)
    heads = c.attn_heads[b, L, i]  # [head, src]
    flat = heads.sum(0) if view == "summed" else heads.flatten()
    ws = _kept(torch.cat([c.attn_resid[b, L, i, None], flat, c.attn_bias[b, L, i, None]]), tau)
    reached = set()
    if ws[0] != 0:
        edge(x_node(L, i, n, labels[i]), mid, float(ws[0]), f * abs(float(ws[0])))
        reached.add(i)
    terms = ws[1:-1]
    if view == "summed":
        for j in terms.nonzero().flatten().tolist():
            edge(x_node(L, j, n, labels[j]), mid, float(terms[j]), f * abs(float(terms[j])))
            reached.add(j)
        return reached
    terms = terms.view(heads.shape)
    for h in terms.abs().sum(1).nonzero().flatten().tolist():
        head = Node("head", L, i, index=h, label=head_label(L, h))
        edge(head, mid, float(terms[h].sum()), f * float(terms[h].abs().sum()))
        for j in terms[h].nonzero().flatten().tolist():
            edge(x_node(L, j, n, labels[j]), head, float(terms[h, j]), f * abs(float(terms[h, j])))
            reached.add(j)
    return reached
