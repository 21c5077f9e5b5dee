"""Hand-written attention-only models (no LayerNorm) whose query / key / value sources are known
exactly, for the attention-SVD tests.

Residual layout (d_model 64): token one-hots | position one-hots | A | B (16 dims each); token 0
is BOS. Layer 0:

* ``L0H0`` previous-token head: attends ``i -> i - 1`` and copies that token into ``A``;
* ``L0H1`` attends to its own position and copies the current token into ``B``;
* ``L0H2`` (with ``negative`` > 0) attends like ``L0H0`` and writes ``-negative`` times the same
  token into ``A`` (so ``A`` holds ``(1 - negative)`` of the previous token);
* ``L0H3`` is silent.

Layer 1 (causal):

* ``L1H0`` induction head: query reads ``B`` (only ``L0H1`` writes it), key reads ``A`` (only
  ``L0H0`` / ``L0H2``), value reads the token embedding. So its q source is ``L0H1`` (share 1),
  its k sources ``L0H0`` (``1 / (1 - negative)``) and ``L0H2`` (``-negative / (1 - negative)``),
  its v source ``embed.tok``;
* ``L1H1`` attends to its own position (positional query and key) and its value reads ``A``: v
  sources ``L0H0`` and ``L0H2`` with the same shares times the attention weight, q / k sources
  ``embed.pos``.

`planted_lookahead` is bidirectional: ``L0H0`` copies each position's one-hot into ``A``
(self-attention) and ``L1H0`` attends ``i -> i + 1`` reading the key from ``A``, so every firing
looks forward (``j > i``) and its k source is ``L0H0``.
"""

from __future__ import annotations

import torch

from mechscope.interp.models import Model

V = CTX = 16
TOK, POS, A, B = slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)


def _blank(name: str, attention_dir: str = "causal") -> Model:
    cfg = dict(n_layers=2, d_model=64, d_head=16, n_heads=4, n_ctx=CTX, d_vocab=V, attn_only=True,
               normalization_type=None, act_fn=None, positional_embedding_type="standard",
               attention_dir=attention_dir)
    model = Model.from_config(cfg, name=name, seed=0)
    model.bos = 0
    eye = torch.eye(16)
    with torch.no_grad():
        for p in model.module.parameters():
            p.zero_()
        model.W_E[:, TOK] = eye
        model.W_pos[:, POS] = eye
        model.W_U[TOK, :] = eye
    return model


def planted_qkv(negative: float = 0.0, s: float = 10.0) -> Model:
    """The causal model of the module doc."""
    model = _blank("planted-qkv")
    eye, shift = torch.eye(16), torch.eye(16).roll(1, dims=1)  # shift: e_p -> e_{p+1}
    spread = torch.diag(torch.linspace(0.8, 1.2, 16))  # distinct singular values
    with torch.no_grad():
        a0, a1 = model.attn(0), model.attn(1)
        for h, sign, into in ((0, 1.0, A), (1, 1.0, B), (2, -negative, A)):
            a0.W_Q[h, POS] = s * eye
            a0.W_K[h, POS] = s * (shift if h != 1 else eye)
            a0.W_V[h, TOK] = eye
            a0.W_O[h][:, into] = sign * eye
        a1.W_Q[0, B] = s * spread
        a1.W_K[0, A] = s * eye
        a1.W_V[0, TOK] = eye
        a1.W_O[0][:, TOK] = eye
        a1.W_Q[1, POS] = s * eye
        a1.W_K[1, POS] = s * eye
        a1.W_V[1, A] = eye
        a1.W_O[1][:, TOK] = eye
    return model


def planted_lookahead(s: float = 10.0) -> Model:
    """The bidirectional model of the module doc."""
    model = _blank("planted-lookahead", "bidirectional")
    eye, shift = torch.eye(16), torch.eye(16).roll(1, dims=1)
    with torch.no_grad():
        a0, a1 = model.attn(0), model.attn(1)
        a0.W_Q[0, POS] = s * eye
        a0.W_K[0, POS] = s * eye
        a0.W_V[0, POS] = eye
        a0.W_O[0][:, A] = eye
        a1.W_Q[0, POS] = s * shift  # query of i reads e_{i+1} ...
        a1.W_K[0, A] = s * eye      # ... against the position L0H0 copied into A at j
        a1.W_V[0, TOK] = eye
        a1.W_O[0][:, TOK] = eye
    return model


def repeated(period: int = 6, seed: int = 0) -> torch.Tensor:
    """``[BOS] + x + x`` with ``x`` distinct non-BOS tokens."""
    x = torch.randperm(V - 1, generator=torch.Generator().manual_seed(seed))[:period] + 1
    return torch.cat([torch.tensor([0]), x, x])
