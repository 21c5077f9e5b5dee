"""Typed views of a transformer's weights: one attention layer (`AttnWeights`) and one
normalisation layer (`Norm`), as `mechscope.interp.models.Model` hands them out.

Attention of layer ``L``, head ``h`` (Vaswani et al. 2017), on the normalised residual
``x~ = norm(x)`` (``[pos, d_model]``):

    q = x~ W_Q[h] + b_Q[h],  k = x~ W_K[h] + b_K[h],  v = x~ W_V[h] + b_V[h]     ([pos, d_head])
    scores = q k^T / attn_scale  (causal mask; rotary models rotate q and k first)
    attn_out = sum_h softmax(scores) v W_O[h] + b_O                              ([pos, d_model])

Grouped-query attention (Ainslie et al. 2023, "GQA") stores ``n_kv_heads < n_heads`` key/value
heads; query head ``h`` reads key/value head ``h // kv_group`` with ``kv_group = n_heads //
n_kv_heads`` (TransformerLens' ``repeat_interleave``). `AttnWeights` always has one entry per
*query* head, the key/value weights repeated accordingly, so ``W_K[h]`` is what head ``h`` uses.

Normalisation (``sigma`` is the per-position scale TransformerLens hooks as ``hook_scale``, ``x~``
what it hooks as ``hook_normalized``):

    LayerNorm (Ba et al. 2016):    x~ = (x - mean(x)) / sigma,  sigma = sqrt(mean((x - mean x)^2) + eps)
    RMSNorm (Zhang & Sennrich 2019): x~ = x / sigma,            sigma = sqrt(mean(x^2) + eps)
    y = x~ * w + b    (w, b: None when folded into the next layer, b always None for RMSNorm)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

NORM_KINDS = ("layernorm", "rmsnorm", "none")


@dataclass(frozen=True)
class AttnWeights:
    """One attention layer, per query head (module doc).

    For models without grouped-query attention every field is the model's own parameter, so an
    in-place edit under ``torch.no_grad()`` changes the model; with grouped-query attention
    ``W_K``, ``W_V``, ``b_K``, ``b_V`` are repeated copies (edit the key/value heads through the
    model's module instead).
    """

    layer: int
    W_Q: Float[Tensor, "head d_model d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    W_V: Float[Tensor, "head d_model d_head"]
    W_O: Float[Tensor, "head d_head d_model"]
    b_Q: Float[Tensor, "head d_head"]
    b_K: Float[Tensor, "head d_head"]
    b_V: Float[Tensor, "head d_head"]
    b_O: Float[Tensor, "d_model"]
    attn_scale: float  # scores are divided by it (sqrt(d_head), times layer + 1 where configured)
    kv_group: int  # query heads per key/value head: head h reads key/value head h // kv_group

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    def kv_head(self, head: int) -> int:
        """The stored key/value head that query head ``head`` reads."""
        return head // self.kv_group


@dataclass(frozen=True)
class Norm:
    """A normalisation layer: ``kind`` (one of `NORM_KINDS`), its weight ``w`` and bias ``b``
    (None when absent or folded), and ``eps`` (module doc). Calling it applies the layer."""

    kind: str
    w: Float[Tensor, "d_model"] | None
    b: Float[Tensor, "d_model"] | None
    eps: float

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ValueError(f"unknown norm kind {self.kind!r}; valid: {', '.join(NORM_KINDS)}")

    @property
    def centred(self) -> bool:
        """LayerNorm reads only the mean-centred part of its input."""
        return self.kind == "layernorm"

    def normalise(self, x: Float[Tensor, "*batch d_model"]
                  ) -> tuple[Float[Tensor, "*batch d_model"], Float[Tensor, "*batch"]]:
        """``(x~, sigma)``: the input before the weight and bias, and its scale."""
        if self.kind == "none":
            return x, torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
        dtype = x.dtype
        if dtype not in (torch.float32, torch.float64):  # as TransformerLens: reduce in fp32
            x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        sigma = (x.pow(2).mean(-1) + self.eps).sqrt()
        return (x / sigma[..., None]).to(dtype), sigma.to(dtype)

    def __call__(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        y = self.normalise(x)[0]
        if self.w is not None:
            y = y * self.w
        if self.b is not None:
            y = y + self.b
        return y
