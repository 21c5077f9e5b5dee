"""Attention-SVD decomposition (Franco & Crovella 2024, "Sparse Attention Decomposition Applied to
Circuit Tracing", arXiv:2410.00340), with the value side added.

Attention score of head ``(L, h)`` from destination ``i`` to source ``j`` (pre-softmax, scale
included), with ``x~`` the normalised layer-norm input (``(x - mean)/sigma`` for LayerNorm,
``x/rms`` for RMSNorm, ``x`` without norm) and the norm's weight and bias folded into the
query/key/value weights (``W' = diag(g) W``, ``b' = b + beta W``):

    s_ij = (x~_i W_Q' + b_Q')(x~_j W_K' + b_K')^T / c = a_i Omega a_j^T,   a = [x~, 1],

    Omega = [[W_Q' W_K'^T, W_Q' b_K'^T], [b_Q' W_K'^T, b_Q' . b_K']] / c = U diag(S) V^T

(``Omega = Q_a K_a^T`` with ``Q_a = [W_Q'; b_Q'] / c``, ``K_a = [W_K'; b_K']`` of shape
``[d_model + 1, d_head]``, so rank <= d_head; computed exactly from their thin QR factors). Hence
``s_ij = sum_k S_k (a_i . u_k)(a_j . v_k)``: one term per singular component. The *sparse
signal* of a firing is the smallest set of components that carries the score: terms sorted in
decreasing order, the shortest prefix whose sum reaches ``share * s_ij`` (``share`` = 1 by
default; None keeps every component; a firing with ``s_ij <= 0`` has no positive signal to carry
and gets its positive terms).

Upstream contributions, query and key sides. The residual at a position is a sum of parts (token
and position embeddings, each earlier head's output ``z W_O``, each attention bias ``b_O``, each
MLP output). With the normalisation scale ``sigma`` of that position frozen, ``a . u = sum_parts
(P u~)/sigma + u[d]`` with ``u~ = u[:d]`` (mean-centred for LayerNorm) — exact, so each part's
contribution to the signal on the destination (query) side is ``sum_{k in signal} S_k (P_i . u~_k /
sigma_i)(a_j . v_k)`` and on the source (key) side ``sum_k S_k (a_i . u_k)(P_j . v~_k / sigma_j)``;
on each side the parts and the head's own bias (`BIAS`) sum to the signal. Units: attention-score
units (the pre-softmax logit); divided by the signal they are shares that sum to 1 per side.

Value side. The head's output at ``i`` (without ``b_O``) is ``o_i = sum_j A_ij (x~_j W_V' + b_V')
W_O``, so a part ``P`` at source ``j`` sends ``A_ij (P~_j / sigma_j) W_V' W_O`` into it (``P~``
mean-centred for LayerNorm). Its *value share* is that vector's projection on the output,
``A_ij (P~_j / sigma_j) . w``, ``w = W_V' W_O o_i / |o_i|^2``; over every source and part (and
the value bias) the shares sum to 1 exactly, and over the parts at one source ``j`` to
``A_ij (v_j W_O) . o_i / |o_i|^2``, that source's share of the output (`value_contributions`
ranks all of them). Dimensionless, signed: a part that writes against the head's output has a
negative share, and the others then add up to more than 1.

Reconstruction ("projection") check, as the reference code checks that the SVD terms add up to
the attention score: for every decomposed firing, (1) ``sum_k`` terms vs the score read from the
model's own forward pass, (2) the score of ``a_i``, ``a_j`` projected on the signal's singular
subspaces (``P_U a_i``, ``P_V a_j``, scored through ``Q_a K_a^T`` from the weights) vs the signal,
(3) each side's parts vs what they split (the value side against the model's own values).
`attention_svd_checks.ReconstructionCheck` reports the worst of each; a model whose scores are
not this bilinear form (soft-capped scores, ALiBi, ...) fails it.

OV side: ``W_OV = W_V W_O`` (``d_model x d_model``) per head; its top right singular vectors
(what the head writes) are read through the unembedding as the tokens they promote / suppress.

Causal check (`attention_svd_checks.projection_check`): projecting the signal's singular subspace
(source-side ``v~_k`` or destination-side ``u~_k``) out of an upstream head's output at the token,
in a real forward pass, should lower the downstream score more than projecting out random
subspaces of the same dimension.

Only learned absolute positions are supported: with rotary embeddings the bilinear form depends
on ``i - j`` and there is no single ``Omega``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechscope.circuits.node_ids import head_label
from mechscope.interp.capture import capture
from mechscope.interp.models import Model

if TYPE_CHECKING:
    from mechscope.interp.models import ModelLike

Part = tuple  # ("embed",) ("pos_embed",) ("head", l, h) ("attn_bias", l) ("mlp", l) ("bias",)
BIAS: Part = ("bias",)  # the traced head's own biases (b_Q / b_K / b_V, the norm's bias folded in)


@dataclass(frozen=True)
class QKDecomposition:
    """``Omega = U diag(S) V^T = Qa Ka^T`` of head ``(layer, head)``, ``[d_model + 1]``-dimensional
    vectors; ``Qa`` (scale folded in) and ``Ka`` are the augmented, norm-folded weights."""

    layer: int
    head: int
    U: Float[Tensor, "d_aug rank"]
    S: Float[Tensor, "rank"]
    V: Float[Tensor, "d_aug rank"]
    centred: bool  # LayerNorm input: directions act on mean-centred residuals
    Qa: Float[Tensor, "d_aug d_head"]
    Ka: Float[Tensor, "d_aug d_head"]

    def directions(self, side: str) -> Float[Tensor, "rank d_model"]:
        """Residual-space directions read by each component (``u~_k`` or ``v~_k``)."""
        if side not in ("query", "key"):
            raise ValueError(f"side must be 'query' or 'key', got {side!r}")
        d = (self.U if side == "query" else self.V)[:-1].T
        return d - d.mean(-1, keepdim=True) if self.centred else d

    def score(self, a_dst: Float[Tensor, "... d_aug"], a_src: Float[Tensor, "... d_aug"]) -> Float[Tensor, "..."]:
        """``a_dst Omega a_src^T`` from the weights (not from the SVD)."""
        return ((a_dst @ self.Qa) * (a_src @ self.Ka)).sum(-1)


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


def _folded(model: "Model", layer: int, W: Tensor, b: Tensor) -> Float[Tensor, "d_aug d_head"]:
    """``[diag(g) W; b + beta W]`` in float64: block ``layer``'s attention norm folded in."""
    ln1 = model.ln(layer)
    W, b = W.detach().double(), b.detach().double()
    if ln1.b is not None:
        b = b + ln1.b.detach().double() @ W
    if ln1.w is not None:
        W = ln1.w.detach().double()[:, None] * W
    return torch.cat([W, b[None]], 0)


def qk_svd(model: "ModelLike", layer: int, head: int) -> QKDecomposition:
    """SVD of the augmented, norm-folded query-key matrix of a head (module doc)."""
    model = Model.wrap(model)
    check_supported(model)
    _check_head(model, layer, head)
    attn = model.attn(layer)
    qa = _folded(model, layer, attn.W_Q[head], attn.b_Q[head]) / float(attn.attn_scale)
    ka = _folded(model, layer, attn.W_K[head], attn.b_K[head])
    q1, r1 = torch.linalg.qr(qa)
    q2, r2 = torch.linalg.qr(ka)
    um, s, vmt = torch.linalg.svd(r1 @ r2.T)
    dtype = attn.W_Q.dtype
    return QKDecomposition(layer, head, (q1 @ um).to(dtype), s.to(dtype), (q2 @ vmt.T).to(dtype),
                           model.ln(layer).centred, qa.to(dtype), ka.to(dtype))


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


def sparse_signal(terms: Float[Tensor, "rank"], score: float, share: float | None = 1.0) -> Bool[Tensor, "rank"]:
    """The fewest components (largest terms first) whose sum reaches ``share * score``; every
    component when ``share`` is None."""
    if share is None:
        return torch.ones_like(terms, dtype=torch.bool)
    if not 0 < share <= 1:
        raise ValueError(f"signal share must be in (0, 1] (or None: every component), got {share}")
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
    kinds = ["resid_pre", "z", "v", "pattern", "scores"] + ([] if model.attn_only else ["mlp_out"])
    with torch.no_grad():
        acts = capture(model, tokens.view(1, -1), [f"L{L}.{k}" for L in range(up_to + 1) for k in kinds])
    return {(s.layer, s.kind): a[0] for s, a in acts.items()} | {"tokens": tokens.view(-1).to(model.device)}


def upstream_parts(model: "ModelLike", acts: dict, layer: int, pos: int
                   ) -> tuple[list[Part], Float[Tensor, "n d_model"]]:
    """The parts that sum to the residual entering block ``layer`` at ``pos``."""
    names, table = _parts_table(Model.wrap(model), acts, layer)
    return names, table[pos]


def _parts_table(model: "Model", acts: dict, layer: int) -> tuple[list[Part], Float[Tensor, "pos n d_model"]]:
    """Every position's parts at once, kept in ``acts`` (a trace decomposes many firings of one
    prompt: one batched computation instead of one per firing)."""
    if ("parts", layer) in acts:
        return acts[("parts", layer)]
    check_supported(model)
    tokens = acts["tokens"]
    names: list[Part] = [("embed",), ("pos_embed",)]
    vecs = [model.W_E[tokens], model.W_pos[: tokens.numel()]]
    for l in range(layer):
        attn = model.attn(l)
        for h in range(model.n_heads):
            names.append(("head", l, h))
            vecs.append(acts[(l, "z")][:, h] @ attn.W_O[h])
        names.append(("attn_bias", l))
        vecs.append(attn.b_O.expand_as(vecs[0]))
        if not model.attn_only:
            names.append(("mlp", l))
            vecs.append(acts[(l, "mlp_out")])
    acts[("parts", layer)] = names, torch.stack(vecs, 1).detach()
    return acts[("parts", layer)]


def _inputs(model: "Model", acts: dict, layer: int) -> tuple[Float[Tensor, "pos d_aug"], Float[Tensor, "pos"]]:
    """``(a, sigma)`` of every position of block ``layer``'s attention input, kept in ``acts``."""
    if ("inputs", layer) not in acts:
        xt, sigma = normalised(model, acts[(layer, "resid_pre")], layer)
        acts[("inputs", layer)] = augment(xt), sigma
    return acts[("inputs", layer)]


# -- value side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValueRead:
    """How head ``(layer, head)``'s output at ``dst`` reads its sources (module doc): a part ``P``
    at source ``j`` has value share ``pattern[j] * (P . w) / sigma_j``, the value bias
    ``pattern[j] * bias``."""

    layer: int
    head: int
    dst: int
    output: Float[Tensor, "d_model"]  # o = z[dst] W_O (without b_O)
    w: Float[Tensor, "d_model"]  # W_V' W_O o / |o|^2, mean-centred under LayerNorm
    bias: float  # b_V' W_O o / |o|^2
    pattern: Float[Tensor, "src"]  # A[dst, :]


def value_read(model: "ModelLike", acts: dict, layer: int, head: int, dst: int) -> ValueRead:
    model = Model.wrap(model)
    _check_head(model, layer, head)
    attn = model.attn(layer)
    W_O = attn.W_O[head].detach().double()
    out = acts[(layer, "z")][dst, head].double() @ W_O
    norm2 = float(out @ out)
    va = _folded(model, layer, attn.W_V[head], attn.b_V[head])  # [d+1, d_head]
    read = va @ (W_O @ out) / norm2 if norm2 > 0 else va.new_zeros(va.shape[0])
    w = read[:-1] - read[:-1].mean() if model.ln(layer).centred else read[:-1]
    dtype = attn.W_V.dtype
    return ValueRead(layer, head, dst, out.to(dtype), w.to(dtype), float(read[-1]),
                     acts[(layer, "pattern")][head, dst].detach())


def value_contributions(model: "ModelLike", acts: dict, layer: int, head: int, dst: int
                        ) -> tuple[list[Part], Float[Tensor, "src n_parts"]]:
    """Every upstream part's value share at every source (the last column: the value bias);
    the whole table sums to 1 (module doc). Rank parts by a row (one source) or a column sum."""
    model = Model.wrap(model)
    vr = value_read(model, acts, layer, head, dst)
    _, sigma = _inputs(model, acts, layer)
    names, P = _parts_table(model, acts, layer)
    table = torch.cat([P @ vr.w / sigma[:, None], torch.full_like(P[:, :1, 0], vr.bias)], 1)
    return list(names) + [BIAS], table * vr.pattern[:, None]


# -- one firing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FiringDecomposition:
    """One firing ``(dst, src)`` of a head: SVD terms, sparse signal, upstream contributions on
    the query, key and value sides (module doc), and what the reconstruction check compares.

    ``query`` / ``key``: each part's contribution to the signal, attention-score units (they sum
    to `signal_total`); ``value``: each part's value share through this source (they sum to
    `value_direct`, this source's share of the head's output)."""

    layer: int
    head: int
    dst: int
    src: int
    score: float  # s_ij read from the model's forward pass
    attention: float  # A_ij
    terms: Float[Tensor, "rank"]
    signal: Bool[Tensor, "rank"]
    parts: list[Part]
    query: Float[Tensor, "n_parts"]
    key: Float[Tensor, "n_parts"]
    value: Float[Tensor, "n_parts"]
    sparse_score: float  # score of the inputs projected on the signal's singular subspaces
    value_direct: float  # A_ij (v_j W_O) . o_i / |o_i|^2 from the model's own values

    @property
    def signal_total(self) -> float:
        return float(self.terms[self.signal].sum())

    @property
    def errors(self) -> tuple[float, float, float]:
        """Relative errors ``(score, sparse, split)`` of the reconstruction check (module doc)."""
        rel = lambda got, ref: abs(got - ref) / (1 + abs(ref))  # noqa: E731
        sig = self.signal_total
        split = max(rel(float(self.query.sum()), sig), rel(float(self.key.sum()), sig),
                    rel(float(self.value.sum()), self.value_direct))
        return rel(float(self.terms.sum()), self.score), rel(self.sparse_score, sig), split


def decompose_firing(model: "ModelLike", acts: dict, dec: QKDecomposition, dst: int, src: int,
                     share: float | None = 1.0, vread: ValueRead | None = None) -> FiringDecomposition:
    """SVD terms, sparse signal and per-part query / key / value contributions of one firing
    (module doc); ``vread``: the head's `value_read` at ``dst`` when already computed."""
    model = Model.wrap(model)
    L, h = dec.layer, dec.head
    a, sigma = _inputs(model, acts, L)
    a_i, a_j, sig_i, sig_j = a[dst], a[src], sigma[dst], sigma[src]
    proj_i, proj_j = a_i @ dec.U, a_j @ dec.V
    terms = dec.S * proj_i * proj_j
    score = float(acts[(L, "scores")][h, dst, src])
    signal = sparse_signal(terms, score, share)
    sq = dec.S * proj_j * signal  # weight of each component's destination-side reading
    sk = dec.S * proj_i * signal
    names, P = _parts_table(model, acts, L)
    P_i, P_j = P[dst], P[src]
    # matrix-vector products only: tiny matrix products stall on busy intra-op threads
    query = torch.cat([P_i @ (dec.directions("query").T @ sq) / sig_i, (dec.U[-1] * sq).sum()[None]])
    key = torch.cat([P_j @ (dec.directions("key").T @ sk) / sig_j, (dec.V[-1] * sk).sum()[None]])
    U_s, V_s = dec.U[:, signal], dec.V[:, signal]
    sparse = float(dec.score(U_s @ (U_s.T @ a_i), V_s @ (V_s.T @ a_j)))
    vr = vread if vread is not None else value_read(model, acts, L, h, dst)
    A = float(vr.pattern[src])
    value = torch.cat([P_j @ vr.w / sig_j, P_j.new_tensor([vr.bias])]) * A
    v = acts[(L, "v")][src]
    v = v[h if v.shape[0] == model.n_heads else model.attn(L).kv_head(h)]
    out = vr.output.double()
    norm2 = float(out @ out)
    direct = A * float((v.double() @ model.attn(L).W_O[h].detach().double()) @ out) / norm2 if norm2 > 0 else 0.0
    return FiringDecomposition(L, h, dst, src, score, A, terms.detach(), signal, names + [BIAS],
                               query.detach(), key.detach(), value.detach(), sparse, direct)


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
