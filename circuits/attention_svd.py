"""Attention-SVD decomposition (Franco & Crovella 2024, "Sparse Attention Decomposition Applied to
Circuit Tracing", arXiv:2410.00340).

Attention score of head ``(L, h)`` from destination ``i`` to source ``j`` (pre-softmax, scale
included), with ``x~`` the normalised layer-norm input (``(x - mean)/sigma`` for LayerNorm,
``x/rms`` for RMSNorm, ``x`` without norm) and the norm's weight and bias folded into the
query/key weights (``W' = diag(g) W``, ``b' = b + beta W``):

    s_ij = (x~_i W_Q' + b_Q')(x~_j W_K' + b_K')^T / c = a_i Omega a_j^T,   a = [x~, 1],

    Omega = [[W_Q' W_K'^T, W_Q' b_K'^T], [b_Q' W_K'^T, b_Q' . b_K']] / c = U diag(S) V^T

(``Omega = Q_a K_a^T`` with ``Q_a = [W_Q'; b_Q']``, ``K_a = [W_K'; b_K']`` of shape
``[d_model + 1, d_head]``, so rank <= d_head; computed exactly from their thin QR factors). Hence ``s_ij = sum_k S_k (a_i . u_k)(a_j . v_k)``: one term per singular
component. The *sparse signal* of a firing is the smallest set of components that carries the
score: terms sorted in decreasing order, the shortest prefix whose sum reaches ``share * s_ij``
(``share`` = 1 by default; a firing with ``s_ij <= 0`` has no positive signal to carry and gets
its positive terms).

Upstream contributions. The residual at a position is a sum of parts (token and position
embeddings, each earlier head's output ``z W_O``, each attention bias ``b_O``, each MLP output).
With the normalisation scale ``sigma`` of that position frozen, ``a . u = sum_parts (P u~)/sigma +
u[d]`` with ``u~ = u[:d]`` (mean-centred for LayerNorm) — exact, so each part's share of the
signal on the destination side is ``sum_{k in signal} S_k (P_i . u~_k / sigma_i)(a_j . v_k)`` and on
the source side ``sum_k S_k (a_i . u_k)(P_j . v~_k / sigma_j)``; both sides sum to the signal.

OV side: ``W_OV = W_V W_O`` (``d_model x d_model``) per head; its top right singular vectors
(what the head writes) are read through the unembedding as the tokens they promote / suppress.

Causal check: projecting the signal's singular subspace (source-side ``v~_k`` or destination-side
``u~_k``) out of an upstream head's output at the token, in a real forward pass, should lower the
downstream score more than projecting out random subspaces of the same dimension.

Only learned absolute positions are supported: with rotary embeddings the bilinear form depends
on ``i - j`` and there is no single ``Omega``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.circuits.node_ids import head_label
from mechscope.interp.capture import capture, hooks_for
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

Part = tuple  # ("embed",) ("pos_embed",) ("head", l, h) ("attn_bias", l) ("mlp", l) ("qk_bias",)


@dataclass(frozen=True)
class QKDecomposition:
    """``Omega = U diag(S) V^T`` of head ``(layer, head)``, ``[d_model + 1]``-dimensional vectors."""

    layer: int
    head: int
    U: Float[Tensor, "d_aug rank"]
    S: Float[Tensor, "rank"]
    V: Float[Tensor, "d_aug rank"]
    centred: bool  # LayerNorm input: directions act on mean-centred residuals

    def directions(self, side: str) -> Float[Tensor, "rank d_model"]:
        """Residual-space directions read by each component (``u~_k`` or ``v~_k``)."""
        if side not in ("query", "key"):
            raise ValueError(f"side must be 'query' or 'key', got {side!r}")
        d = (self.U if side == "query" else self.V)[:-1].T
        return d - d.mean(-1, keepdim=True) if self.centred else d


@dataclass(frozen=True)
class FiringDecomposition:
    """One firing ``(dst, src)`` of a head: SVD terms, sparse signal, upstream contributions."""

    layer: int
    head: int
    dst: int
    src: int
    score: float
    terms: Float[Tensor, "rank"]
    signal: Bool[Tensor, "rank"]
    parts: list[Part]
    query: Float[Tensor, "n_parts"]  # destination-side contribution of each part to the signal
    key: Float[Tensor, "n_parts"]  # source-side contribution

    @property
    def signal_total(self) -> float:
        return float(self.terms[self.signal].sum())


def check_supported(model: "ModelLike") -> None:
    model = Model.wrap(model)
    if model.positional != "standard":
        raise ValueError(
            f"attention-SVD needs learned absolute positions (positional_embedding_type "
            f"'standard'); this model uses {model.positional!r}, whose "
            f"query-key form depends on the offset i - j")
    if model.parallel_blocks:
        raise ValueError("attention-SVD needs sequential blocks; parallel attention/MLP is not supported")


def _check_head(model: "Model", layer: int, head: int) -> None:
    if not (0 <= layer < model.n_layers and 0 <= head < model.n_heads):
        raise ValueError(f"no head {head_label(layer, head)}: valid layers 0..{model.n_layers - 1}, "
                         f"heads 0..{model.n_heads - 1}")


def qk_svd(model: "ModelLike", layer: int, head: int) -> QKDecomposition:
    """SVD of the augmented, norm-folded query-key matrix of a head (module doc)."""
    model = Model.wrap(model)
    check_supported(model)
    _check_head(model, layer, head)
    attn, ln1 = model.attn(layer), model.ln(layer)
    g, beta = ln1.w, ln1.b

    def augmented(W: Tensor, b: Tensor) -> Tensor:
        W, b = W.detach().double(), b.detach().double()
        if beta is not None:
            b = b + beta.detach().double() @ W
        if g is not None:
            W = g.detach().double()[:, None] * W
        return torch.cat([W, b[None]], 0)  # [d+1, d_head]

    qa = augmented(attn.W_Q[head], attn.b_Q[head])
    ka = augmented(attn.W_K[head], attn.b_K[head])
    q1, r1 = torch.linalg.qr(qa)
    q2, r2 = torch.linalg.qr(ka)
    um, s, vmt = torch.linalg.svd(r1 @ r2.T / float(attn.attn_scale))
    dtype = attn.W_Q.dtype
    return QKDecomposition(layer, head, (q1 @ um).to(dtype), s.to(dtype), (q2 @ vmt.T).to(dtype), ln1.centred)


def normalised(model: "ModelLike", resid: Float[Tensor, "... d_model"], layer: int = 0
               ) -> tuple[Float[Tensor, "... d_model"], Float[Tensor, "..."]]:
    """``(x~, sigma)``: block ``layer``'s attention norm input before its weight and bias, and
    its scale."""
    return Model.wrap(model).ln(layer).normalise(resid)


def augment(x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_aug"]:
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def firing_terms(dec: QKDecomposition, a_dst: Float[Tensor, "... d_aug"], a_src: Float[Tensor, "... d_aug"]
                 ) -> Float[Tensor, "... rank"]:
    """``S_k (a_dst . u_k)(a_src . v_k)``; they sum to the attention score."""
    return dec.S * (a_dst @ dec.U) * (a_src @ dec.V)


def sparse_signal(terms: Float[Tensor, "rank"], score: float, share: float = 1.0) -> Bool[Tensor, "rank"]:
    """The fewest components (largest terms first) whose sum reaches ``share * score``."""
    if not 0 < share <= 1:
        raise ValueError(f"signal share must be in (0, 1], got {share}")
    order = terms.argsort(descending=True)
    mask = torch.zeros_like(terms, dtype=torch.bool)
    if score <= 0:
        return terms > 0
    hit = (terms[order].cumsum(0) >= share * score).nonzero()
    if len(hit) == 0:  # rounding: the positive terms are the whole signal
        return terms > 0
    mask[order[: int(hit[0]) + 1]] = True
    return mask


def activations(model: "ModelLike", tokens: Int[Tensor, "pos"], up_to: int) -> dict:
    """The activations the decomposition reads, for blocks ``0..up_to``."""
    model = Model.wrap(model)
    kinds = ["resid_pre", "z", "pattern", "scores"] + ([] if model.attn_only else ["mlp_out"])
    with torch.no_grad():
        acts = capture(model, tokens.view(1, -1), [f"L{L}.{k}" for L in range(up_to + 1) for k in kinds])
    return {(s.layer, s.kind): a[0] for s, a in acts.items()} | {"tokens": tokens.view(-1)}


def upstream_parts(model: "ModelLike", acts: dict, layer: int, pos: int
                   ) -> tuple[list[Part], Float[Tensor, "n d_model"]]:
    """The parts that sum to the residual entering block ``layer`` at ``pos``."""
    model = Model.wrap(model)
    check_supported(model)
    names: list[Part] = [("embed",), ("pos_embed",)]
    vecs = [model.W_E[acts["tokens"][pos]], model.W_pos[pos]]
    for l in range(layer):
        attn = model.attn(l)
        for h in range(model.n_heads):
            names.append(("head", l, h))
            vecs.append(acts[(l, "z")][pos, h] @ attn.W_O[h])
        names.append(("attn_bias", l))
        vecs.append(attn.b_O)
        if not model.attn_only:
            names.append(("mlp", l))
            vecs.append(acts[(l, "mlp_out")][pos])
    return names, torch.stack(vecs).detach()


def decompose_firing(model: "ModelLike", acts: dict, dec: QKDecomposition, dst: int, src: int,
                     share: float = 1.0) -> FiringDecomposition:
    """SVD terms, sparse signal and per-part contributions of one firing (module doc)."""
    model = Model.wrap(model)
    L = dec.layer
    x = acts[(L, "resid_pre")]
    xt_i, sig_i = normalised(model, x[dst], L)
    xt_j, sig_j = normalised(model, x[src], L)
    a_i, a_j = augment(xt_i), augment(xt_j)
    proj_i, proj_j = a_i @ dec.U, a_j @ dec.V
    terms = dec.S * proj_i * proj_j
    score = float(acts[(L, "scores")][dec.head, dst, src])
    signal = sparse_signal(terms, score, share)
    sq = dec.S * proj_j * signal  # weight of each component's destination-side reading
    sk = dec.S * proj_i * signal
    names, P_i = upstream_parts(model, acts, L, dst)
    _, P_j = upstream_parts(model, acts, L, src)
    query = torch.cat([P_i @ dec.directions("query").T @ sq / sig_i, (dec.U[-1] * sq).sum()[None]])
    key = torch.cat([P_j @ dec.directions("key").T @ sk / sig_j, (dec.V[-1] * sk).sum()[None]])
    return FiringDecomposition(L, dec.head, dst, src, score, terms.detach(), signal, names + [("qk_bias",)],
                               query.detach(), key.detach())


# -- OV side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OVDecomposition:
    """Top singular directions of ``W_V W_O`` and the tokens each output direction promotes
    (largest ``v_k W_U``) and suppresses (smallest)."""

    layer: int
    head: int
    S: Float[Tensor, "k"]
    inputs: Float[Tensor, "k d_model"]
    outputs: Float[Tensor, "k d_model"]
    promoted: list[list[tuple[int, str, float]]]
    suppressed: list[list[tuple[int, str, float]]]


def ov_svd(model: "ModelLike", layer: int, head: int, k: int = 4,
           top_tokens: int = 8) -> OVDecomposition:
    """OV-circuit SVD of a head, its output directions read through the unembedding."""
    model = Model.wrap(model)
    _check_head(model, layer, head)
    attn = model.attn(layer)
    w_ov = (attn.W_V[head] @ attn.W_O[head]).detach().double()
    u, s, vt = torch.linalg.svd(w_ov)
    k = min(k, attn.W_V.shape[-1])
    # orient each pair so the output direction's largest unembedding read is positive
    W_U = model.W_U.detach().double()
    reads = vt[:k] @ W_U
    flip = torch.where(reads.max(-1).values >= -reads.min(-1).values, 1.0, -1.0).to(reads)
    u, vt, reads = u[:, :k] * flip, vt[:k] * flip[:, None], reads * flip[:, None]

    def tokens(vals: Tensor, idx: Tensor) -> list[tuple[int, str, float]]:
        strs = model.to_str_tokens(idx)
        return [(int(t), s_, float(v)) for t, s_, v in zip(idx, strs, vals)]

    n = min(top_tokens, W_U.shape[1])
    top = [tokens(*reads[r].topk(n)) for r in range(k)]
    bottom = [tokens(*(-reads[r]).topk(n)) for r in range(k)]
    dtype = attn.W_V.dtype
    return OVDecomposition(layer, head, s[:k].to(dtype), u.T.to(dtype), vt.to(dtype), top, bottom)


# -- causal check -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectionCheck:
    """Drop of the downstream score when a subspace is projected out of an upstream output."""

    score: float
    dim: int
    drop_selected: float
    drop_random: Float[Tensor, "n_random"]

    @property
    def beats_random(self) -> float:
        """Fraction of random subspaces whose drop is smaller than the selected one's."""
        return float((self.drop_random < self.drop_selected).float().mean())


def projection_check(model: "ModelLike", tokens: Int[Tensor, "pos"], layer: int, head: int, dst: int, src: int,
                     upstream: tuple[int, int], side: str = "key", n_random: int = 16, seed: int = 0,
                     share: float = 1.0) -> ProjectionCheck:
    """Project the firing's signal subspace (``side`` directions) out of upstream head
    ``(l, h)``'s output at ``src`` (key side) or ``dst`` (query side) and re-run the model."""
    model = Model.wrap(model)
    check_supported(model)
    l_up, h_up = upstream
    if not l_up < layer:
        raise ValueError(f"upstream head {head_label(l_up, h_up)} must be in an earlier layer than L{layer}")
    dec = qk_svd(model, layer, head)
    fd = decompose_firing(model, activations(model, tokens, layer), dec, dst, src, share)
    basis = torch.linalg.qr(dec.directions(side)[fd.signal].T)[0]
    gen = torch.Generator().manual_seed(seed)
    at = src if side == "key" else dst
    run = lambda b: _score_with_projection(model, tokens, layer, head, dst, src, l_up, h_up, at, b)  # noqa: E731
    base = run(None)
    rand = [run(torch.linalg.qr(torch.randn(basis.shape, generator=gen, dtype=basis.dtype))[0])
            for _ in range(n_random)]
    return ProjectionCheck(base, basis.shape[1], base - run(basis), base - torch.tensor(rand))


def _score_with_projection(model: "Model", tokens: Tensor, layer: int, head: int, dst: int, src: int,
                           l_up: int, h_up: int, at: int, basis: Tensor | None) -> float:
    store: dict[str, Any] = {}

    def project(out: Tensor) -> Tensor | None:
        if basis is None:
            return None  # the same hook path as the intervened runs, unchanged
        out = out.clone()
        o = out[:, at]
        out[:, at] = o - (o @ basis) @ basis.T
        return out

    def save(scores: Tensor) -> None:
        store["s"] = float(scores[0, dst, src])

    sites = {model.site(f"L{l_up}.result.H{h_up}"): project, model.site(f"L{layer}.scores.H{head}"): save}
    with torch.no_grad(), hooks_for(model, sites):
        model(tokens.view(1, -1).to(model.device), stop_at_layer=layer + 1)
    return store["s"]
