"""Test helpers for tests/circuits: a tiny attention-only model, a random dictionary, prompts and a
logit-difference metric."""

from __future__ import annotations

import torch

from mechscope.circuits.attribution import logit_diff
from mechscope.interp.models import Model
from mechscope.kernels.code import SparseCode

ATTN_ONLY = dict(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=50, attn_only=True,
                 normalization_type=None, act_fn=None)


def attn_only_model() -> Model:
    """2-layer attention-only model without LayerNorm (its paths are linear up to attention)."""
    return Model.from_config(ATTN_ONLY, name="attn-only", seed=1)


class TinyDict:
    """A random ReLU (or top-k) dictionary implementing the Dictionary protocol."""

    def __init__(self, d: int, n: int, seed: int = 0, k: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.d_dict, self.k = d, n, k
        self.W_enc = torch.randn(n, d, generator=g) / d ** 0.5
        self.b_enc = torch.randn(n, generator=g) * 0.1
        self.W_dec = torch.randn(n, d, generator=g) / d ** 0.5
        self.b_dec = torch.randn(d, generator=g) * 0.1

    def encode(self, x):
        pre = (x @ self.W_enc.T + self.b_enc).relu()
        if self.k is None:
            return SparseCode(pre, torch.arange(self.d_dict).expand_as(pre))
        return SparseCode(*pre.topk(self.k, dim=-1))

    def decode(self, code):
        return code.dense(self.d_dict) @ self.W_dec + self.b_dec

    @property
    def directions(self):
        return self.W_dec


def toks(b=3, p=8, vocab=50, seed=0):
    return torch.randint(0, vocab, (b, p), generator=torch.Generator().manual_seed(seed))


def ld(b=3):
    return logit_diff(torch.arange(1, b + 1), torch.arange(10, 10 + b))
