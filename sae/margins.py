"""Firing margins: how far each latent of a dictionary is from firing, in activation units.

A sparse code is flat where a latent is off: a top-k latent outside the k largest, a JumpReLU
latent under its threshold, a ReLU latent with negative pre-activation all have activation 0 and
zero gradient. Searches that climb a feature's activation (fluent dreaming,
`mechscope.circuits.dream`) need a signal there; the margin ``m_i(x)`` is a continuous function
of the input that is ``> 0`` exactly where latent ``i`` fires. With pre-activations
``z = (x̃ − b_dec) W_encᵀ + b_enc`` on the normalised input ``x̃ = s_in x``:

* top-k (Gao et al. 2024):  ``m_i = z_i − max(τ_i, 0)``, ``τ_i`` the k-th largest of ``z_j, j ≠ i``
  (``i`` fires iff it beats the k-th largest of the others and survives the ReLU);
* batch-top-k / Matryoshka at inference (a JumpReLU with one global θ over the 4k best
  candidates): ``m_i = z_i − max(τ_i, θ, 0)``, ``τ_i`` over the candidate count;
* JumpReLU (Rajamanoharan et al. 2024): ``m_i = z_i − θ_i``;
* ReLU: ``m_i = z_i``;  gated (Rajamanoharan et al. 2024a): ``min(π_gate, π_mag)`` (the code is
  ``1[π_gate > 0] relu(π_mag)``).

Where the latent fires its activation is ``z_i`` (top-k, JumpReLU, ReLU), so ``m_i <= f_i`` there
and both rise with ``z_i``. Dictionaries with no such encoder (matching pursuit, codebooks,
adapted SAELens / sparsify objects) have no margin: `firing_margin` returns None.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def has_firing_margin(dictionary: Any) -> bool:
    """Whether `firing_margin` knows this dictionary's encoder."""
    return _kind(dictionary) is not None


def firing_margin(dictionary: Any, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_dict"] | None:
    """``m [n, d_dict]``, ``> 0`` exactly where a latent fires on raw input ``x`` (module doc);
    None for dictionaries without a thresholded linear encoder. Differentiable in ``x``."""
    kind = _kind(dictionary)
    if kind is None:
        return None
    x = x * dictionary.scale_in.to(x)
    if kind == "gated":  # fires where the gate is open and the magnitude positive
        gate, mag = dictionary._paths(x)
        return torch.minimum(gate, mag)
    z = dictionary.pre_activations(x)
    if kind == "relu":
        return z
    if kind == "jumprelu":
        return z - dictionary.threshold.to(z)
    if kind == "topk":
        return z - _kth_of_others(z, dictionary.cfg.k).clamp_min(0)
    floor = dictionary.threshold.to(z).clamp_min(0)  # batch-top-k: global θ over max_per_row candidates
    return z - torch.maximum(_kth_of_others(z, dictionary.max_per_row), floor)


def _kth_of_others(z: Tensor, k: int) -> Tensor:
    """``τ[n, i]``: the k-th largest of row ``n`` without entry ``i`` (−inf when fewer than k)."""
    d = z.shape[-1]
    if k >= d:
        return torch.full_like(z, float("-inf"))
    top = z.topk(k + 1, dim=-1).values  # the k-th and (k+1)-th largest
    kth, next_ = top[..., k - 1:k], top[..., k:k + 1]
    # a latent at or above the k-th largest is itself among the k: the k-th of the others is the (k+1)-th
    return torch.where(z >= kth, next_, kth)


def _kind(dictionary: Any) -> str | None:
    from mechscope.sae.gated import GatedSAE
    from mechscope.sae.jumprelu import JumpReluSAE
    from mechscope.sae.relu import ReluSAE
    from mechscope.sae.topk import BatchTopKSAE, TopKSAE

    for cls, kind in ((BatchTopKSAE, "batchtopk"), (TopKSAE, "topk"), (JumpReluSAE, "jumprelu"),
                      (GatedSAE, "gated"), (ReluSAE, "relu")):
        if isinstance(dictionary, cls):
            return kind
    return None
