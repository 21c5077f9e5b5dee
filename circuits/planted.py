"""Planted models whose circuits are exact, for known-truth tests of every tracing method.

All share the residual layout of ``planted-copy`` (`mechscope.circuits.known`): tokens ``0:16``
(one-hot, read by the unembedding), positions ``16:32``, a "stash" ``32:48`` and spare dimensions
``48:64``; token 0 is BOS, prompts are ``[BOS, a, x_2 ... x_n]``, the metric is ``logit[a] -
logit[b]`` against the contrastive prompt with ``a`` replaced by ``b``, and every head that is
not planted carries random weights of scale ``distractor``.

* ``planted-inert`` — planted-copy plus an **inert writer**: head ``L0.H3`` attends uniformly,
  reads the token subspace and writes it, 5x, into the spare dimensions, which nothing reads
  (their rows of every later W_Q / W_K / W_V and of W_U are 0). It is active and large, and its
  every causal effect is exactly 0. Known circuit ``{L0.H1, L1.H2}``; ``L0.H3`` tests precision.
* ``planted-saturated`` — planted-copy with the copy head writing 20x (not 5x) into the logits and
  the metric ``log p(a)``: ``p(a) ~ 1 - 15 e^-20``, so the metric's gradient at the clean run is
  ~1e-8 while patching ``a -> b`` moves it by ~-20. First-order attribution (AtP, EAP) sees
  nothing; integrated gradients and path patching see the circuit ``{L0.H1, L1.H2}``.
* ``planted-bidirectional`` — bidirectional attention: head ``L0.H1`` attends from every
  position to the **last** position and stashes its token; ``L1.H2`` copies the stash into the
  logits; the metric is read at **position 1** (earlier than the source, impossible under causal
  attention): ``[BOS, x_1 ... x_{n-2}, a]``, ``logit[a] - logit[b]`` at position 1. Circuit
  ``{L0.H1, L1.H2}``.
* ``planted-mlp`` — an MLP-mediated path: ``L0.H1`` stashes ``a`` as in planted-copy, and MLP 0
  (ReLU, hidden units ``0:16`` = the stash) writes it 5x into the token subspace; no head reads the
  stash. Circuit ``{L0.H1, L0.mlp}`` with the edge ``L0.H1 -> L0.mlp -> logits``; layer 1 (heads
  and MLP) is distractors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechscope.circuits.known import PLANTED, KnownCircuit, planted_copy_model, planted_setup
from mechscope.circuits.metrics import Metric, logit_diff, logprob

_V, _CTX = 16, 16
TOK, POS, STASH, SPARE = slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)

INERT = KnownCircuit("planted-inert", PLANTED.components, "planted by construction")
INERT_WRITER = "L0.H3"
SATURATED = KnownCircuit("planted-saturated", PLANTED.components, "planted by construction")
BIDIRECTIONAL = KnownCircuit("planted-bidirectional", PLANTED.components, "planted by construction")
MLP_PATH = KnownCircuit("planted-mlp", (("head", 0, 1), ("mlp", 0, None)), "planted by construction")


class Task(NamedTuple):
    """A planted model's prompts: clean, contrastive (``patch``) and the metric."""

    model: Any
    clean: Tensor
    patch: Tensor
    metric: Metric
    known: KnownCircuit


def _clear_head(a: Any, h: int) -> None:
    for w in (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V):
        w[h].zero_()


def inert_model(seed: int = 0, distractor: float = 0.05) -> Any:
    """``planted-inert`` (module doc)."""
    model = planted_copy_model(seed, distractor)
    model.name = "planted-inert"
    with torch.no_grad():
        a0, a1 = model.attn(0), model.attn(1)
        _clear_head(a0, 3)
        a0.W_V[3, TOK] = torch.eye(16)
        a0.W_O[3][:, SPARE] = 5 * torch.eye(16)
        for w in (a1.W_Q, a1.W_K, a1.W_V):  # nothing downstream reads the spare dimensions
            w[:, SPARE] = 0
    return model


def saturated_model(seed: int = 0, distractor: float = 0.05) -> Any:
    """``planted-saturated`` (module doc)."""
    model = planted_copy_model(seed, distractor)
    model.name = "planted-saturated"
    with torch.no_grad():
        model.attn(1).W_O[2][:, TOK] *= 4
    return model


def bidirectional_model(seed: int = 0, distractor: float = 0.05, length: int = 8,
                        sharpness: float = 10.0) -> Any:
    """``planted-bidirectional`` (module doc) for prompts of ``length`` tokens."""
    model = planted_copy_model(seed, distractor, sharpness, attention_dir="bidirectional")
    model.name = "planted-bidirectional"
    with torch.no_grad():
        a0 = model.attn(0)
        a0.W_K[1, _V + 1, 0] = 0
        a0.W_K[1, _V + length - 1, 0] = sharpness  # the constant query matches the last position
    return model


def mlp_model(seed: int = 0, distractor: float = 0.05) -> Any:
    """``planted-mlp`` (module doc)."""
    model = planted_copy_model(seed, distractor, attn_only=False, d_mlp=32, act_fn="relu")
    model.name = "planted-mlp"
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        a1 = model.attn(1)
        for w in (a1.W_Q, a1.W_K, a1.W_V, a1.W_O, a1.b_Q, a1.b_K, a1.b_V):  # head 2: a distractor
            w[2].copy_(distractor * torch.randn(w[2].shape, generator=gen))
        for w in (a1.W_Q, a1.W_K, a1.W_V):  # no head reads the stash: the path is the MLP's
            w[:, STASH] = 0
        W_in, b_in, W_out = model.W_in(0), model.b_in(0), model.W_out(0)
        W_in[:, :16] = 0
        W_in[STASH, :16] = torch.eye(16)
        b_in[:16] = 0
        W_out[:16] = 0
        W_out[:16, TOK] = 5 * torch.eye(16)
        model.W_in(1)[STASH] = 0  # nor does the distractor MLP
    return model


# -- tasks --------------------------------------------------------------------------------------
def _pairs(n: int, length: int, seed: int, where: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, _V, (n, length), generator=gen)
    clean[:, 0] = 0
    a = clean[:, where].clone()
    b = (a - 1 + torch.randint(1, _V - 1, (n,), generator=gen)) % (_V - 1) + 1
    patch = clean.clone()
    patch[:, where] = b
    return clean, patch, a, b


def task(name: str, n_prompts: int = 8, length: int = 8, seed: int = 0) -> Task:
    """The model and prompts of a planted model by name: ``copy``, ``inert``, ``saturated``,
    ``bidirectional``, ``mlp``."""
    if name == "bidirectional":
        clean, patch, a, b = _pairs(n_prompts, length, seed, length - 1)
        return Task(bidirectional_model(length=length), clean, patch, logit_diff(a, b, position=1),
                    BIDIRECTIONAL)
    makers = {"copy": (planted_copy_model, PLANTED), "inert": (inert_model, INERT),
              "saturated": (saturated_model, SATURATED), "mlp": (mlp_model, MLP_PATH)}
    if name not in makers:
        raise ValueError(f"unknown planted task {name!r}; valid: {', '.join([*makers, 'bidirectional'])}")
    make, known = makers[name]
    s = planted_setup(make(), n_prompts=n_prompts, length=length, seed=seed)
    a, b = s.clean[:, 1], s.patch[:, 1]
    metric = logprob(a) if name == "saturated" else logit_diff(a, b)
    return Task(s.model, s.clean, s.patch, metric, known)


def sites(model: Any) -> list[str]:
    """Every layer's heads (``z``) and, with MLPs, ``mlp_out``: one node per component."""
    out = []
    for layer in range(model.n_layers):
        out.append(f"L{layer}.z")
        if not model.attn_only:
            out.append(f"L{layer}.mlp_out")
    return out
