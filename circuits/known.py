"""Known circuits as data, and the toy tasks whose ground truth they are.

* ``attn-only-induction`` (the zoo model): repeated random segments ``[BOS] + x + x``; the
  circuit is the previous-token head(s) of layer 0 and the induction head(s) of layer 1, read
  from the score tables of the model's zoo card (Elhage et al. 2021, Olsson et al. 2022). The
  card also names one head of each kind (the argmax); the seed-0 build has one previous-token
  head but four layer-1 heads with near-equal induction scores (0.72-0.74) that back each other
  up (the card's ablations: one of them costs 0.04-0.06 nats on repeats, all four 5.4 nats), so
  the scores, not the argmax, are the ground truth.
* ``planted-copy``: a 2-layer attention-only model (no LayerNorm) whose weights are written by
  hand, with one mechanism planted among small random distractor heads. Prompts are
  ``[BOS, a, x_2 ... x_n]`` and the model must predict ``a`` at the last position:

  - head ``(0, 1)`` attends from every position to position 1 (constant query ``b_Q`` against
    a key that reads position 1's one-hot positional embedding) and its OV circuit copies the
    token subspace into a "stash" subspace;
  - head ``(1, 2)`` attends to its own position (positional query and key) and its OV circuit
    copies the stash back into the token subspace, which the unembedding reads.

  The metric is ``logit[a] - logit[b]`` with the contrastive prompt ``[BOS, b, x_2 ...]``. The
  planted circuit is ``{(head, 0, 1), (head, 1, 2)}`` with the V-composition edge between them;
  every other head has weights of scale ``distractor`` and no systematic role.
* ``planted-induction``: the same residual layout with an induction circuit written by hand
  (Elhage et al. 2021): head ``(0, 0)`` attends from ``i`` to ``i - 1`` (query reads position
  ``p`` as ``e_p``, key reads position ``p`` as ``e_{p+1}``) and copies that token into the stash;
  head ``(1, 1)`` matches the current token (query) against the stashed previous token (key),
  K-composition, and copies the attended token into the logits. On ``[BOS] + x + x`` it predicts
  the second copy; the known circuit is ``{(head, 0, 0), (head, 1, 1)}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechscope.circuits.attribution import Setup, logit_diff, next_token_logprob
from mechscope.circuits.graph import node_id
from mechscope.interp.models import Model

INDUCTION_MODEL = "attn-only-induction"


@dataclass(frozen=True)
class KnownCircuit:
    name: str
    components: tuple[tuple[str, int, int | None], ...]  # (node kind, layer, index)
    source: str

    def __post_init__(self) -> None:
        self.node_ids  # noqa: B018 - every component must name a real node

    @property
    def node_ids(self) -> tuple[str, ...]:
        """The components as canonical node ids (``L1.H3``), as graphs of every method name them."""
        return tuple(node_id(kind, layer, index) for kind, layer, index in self.components)


def _find(card: Any, key: str) -> Any:
    if isinstance(card, dict):
        if key in card:
            return card[key]
        for v in card.values():
            hit = _find(v, key)
            if hit is not None:
                return hit
    return None


def induction_circuit(card: dict | None = None, min_score: float = 0.5) -> KnownCircuit:
    """The induction circuit recorded on the zoo card: every layer-0 head whose previous-token
    score and every layer-1 head whose induction score is at least ``min_score`` (the card's
    score tables), or, for a card without the tables, the single heads it names."""
    if card is None:
        from mechscope.interp import zoo

        card = zoo.card(INDUCTION_MODEL)
    prev, ind = _find(card, "prev_token_scores"), _find(card, "induction_scores")
    if prev is not None and ind is not None:
        heads = [("head", 0, h) for h, v in enumerate(prev[0]) if v >= min_score]
        heads += [("head", 1, h) for h, v in enumerate(ind[1]) if v >= min_score]
        if heads:
            return KnownCircuit("induction", tuple(heads), f"zoo card of {INDUCTION_MODEL}: "
                                f"previous-token / induction score >= {min_score}")
    prev, ind = _find(card, "prev_token_head"), _find(card, "induction_head")
    if prev is None or ind is None:
        raise ValueError(f"the {INDUCTION_MODEL} card records neither head scores nor "
                         f"'prev_token_head' / 'induction_head'")
    heads = (("head", int(prev[0]), int(prev[1])), ("head", int(ind[0]), int(ind[1])))
    return KnownCircuit("induction", heads, f"zoo card of {INDUCTION_MODEL}: named heads")


def induction_setup(model: "Model | Any", n_prompts: int = 8, period: int = 12, ablation: str = "mean",
                    sites: Any = ("L0.z", "L1.z"), seed: int = 0) -> Setup:
    """``[BOS] + x + x`` prompts; metric: mean log-prob of the next token over the second copy."""
    from mechscope.interp.zoo.induction import repeated_batch

    model = Model.wrap(model)
    bos = model.require_bos_id("the induction prompts [BOS] + x + x")
    gen = torch.Generator().manual_seed(seed)
    tokens, mask = repeated_batch(n_prompts, 2 * period + 1, model.d_vocab, period, period, bos, gen)
    return Setup.build(model, sites, next_token_logprob(tokens, mask), tokens, ablation=ablation)


# -- the planted-copy toy model -----------------------------------------------------------------
PLANTED = KnownCircuit("planted-copy", (("head", 0, 1), ("head", 1, 2)), "planted by construction")
_V, _CTX = 16, 16  # vocabulary and context; residual = tokens | positions | stash | spare


def planted_copy_model(seed: int = 0, distractor: float = 0.05, sharpness: float = 10.0,
                       **config: Any) -> Any:
    """The ``planted-copy`` model (see module doc); token 0 is BOS. ``config``: overrides of the
    TransformerLens config (e.g. ``attention_dir``, or MLPs for `mechscope.circuits.planted`)."""
    cfg = {**dict(n_layers=2, d_model=64, d_head=16, n_heads=4, n_ctx=_CTX, d_vocab=_V, attn_only=True,
                  normalization_type=None, act_fn=None, positional_embedding_type="standard"), **config}
    model = Model.from_config(cfg, name="planted-copy", seed=seed)
    model.bos = 0
    gen = torch.Generator().manual_seed(seed)
    tok, pos, stash = slice(0, _V), slice(_V, _V + _CTX), slice(_V + _CTX, 2 * _V + _CTX)
    eye, s = torch.eye(16), sharpness
    with torch.no_grad():
        for p in model.module.parameters():
            p.copy_(distractor * torch.randn(p.shape, generator=gen))
        model.W_E.zero_()
        model.W_E[:, tok] = eye
        model.W_pos.zero_()
        model.W_pos[:, pos] = eye
        model.W_U.zero_()
        model.W_U[tok, :] = eye
        model.b_U.zero_()
        a0, a1 = model.attn(0), model.attn(1)  # the parameters themselves (no grouped-query heads)
        for a, h in ((a0, 1), (a1, 2)):
            for w in (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V):
                w[h].zero_()
        a0.b_Q[1, 0] = s                       # constant query ...
        a0.W_K[1, _V + 1, 0] = s               # ... matching only position 1's key
        a0.W_V[1, tok] = eye
        a0.W_O[1][:, stash] = eye              # token -> stash
        a1.W_Q[2, pos] = s * eye               # positional query and key: attend to self
        a1.W_K[2, pos] = s * eye
        a1.W_V[2, stash] = eye
        a1.W_O[2][:, tok] = 5 * eye            # stash -> logits
    return model


PLANTED_INDUCTION = KnownCircuit("planted-induction", (("head", 0, 0), ("head", 1, 1)),
                                 "planted by construction")


def planted_induction_model(seed: int = 0, distractor: float = 0.05, sharpness: float = 10.0) -> Any:
    """The ``planted-induction`` model (see module doc); use `induction_setup` with period <= 7."""
    model = planted_copy_model(seed, distractor, sharpness)  # embeddings, unembedding, distractors
    model.name = "planted-induction"
    s = sharpness
    tok, pos, stash = slice(0, _V), slice(_V, _V + _CTX), slice(_V + _CTX, 2 * _V + _CTX)
    eye, shift = torch.eye(16), torch.eye(16).roll(1, dims=1)  # shift: e_p -> e_{p+1}
    with torch.no_grad():
        a0, a1 = model.attn(0), model.attn(1)
        for a in (a0, a1):  # undo the planted-copy heads: back to distractors
            for w in (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V):
                w.copy_(distractor * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed + 1)))
        for a, h in ((a0, 0), (a1, 1)):
            for w in (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V):
                w[h].zero_()
        a0.W_Q[0, pos] = s * eye               # previous-token head
        a0.W_K[0, pos] = s * shift
        a0.W_K[0, _V + _CTX - 1] = 0           # the last position has no successor
        a0.W_V[0, tok] = eye
        a0.W_O[0][:, stash] = eye
        a1.W_Q[1, tok] = s * eye               # induction head: current token vs stashed previous
        a1.W_K[1, stash] = s * eye
        a1.W_V[1, tok] = eye
        a1.W_O[1][:, tok] = 5 * eye
    return model


def planted_setup(model: "Model | Any", n_prompts: int = 8, length: int = 8, seed: int = 0,
                  ablation: str = "patch", sites: Any = ("L0.z", "L1.z")) -> Setup:
    """Contrastive ``[BOS, a, ...]`` vs ``[BOS, b, ...]``; metric ``logit[a] - logit[b]`` at the end."""
    model = Model.wrap(model)
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, _V, (n_prompts, length), generator=gen)
    clean[:, 0] = model.require_bos_id("the planted prompts [BOS, a, ...]")
    a = clean[:, 1].clone()
    b = (a - 1 + torch.randint(1, _V - 1, (n_prompts,), generator=gen)) % (_V - 1) + 1
    patch = clean.clone()
    patch[:, 1] = b
    return Setup.build(model, sites, logit_diff(a, b), clean, ablation=ablation,
                       patch=patch if ablation == "patch" else None)
