"""Dense autograd baseline: the textbook top-k SAE, used as test oracle and benchmark baseline.

Same maths as `mechscope.kernels.reference` but written the obvious way and differentiated by
plain autograd: ``pre = x W_encᵀ + b_enc`` ([n, m], kept for the backward), ``topk``, a dense
``[n, m]`` code by scatter and a dense decoder matmul ``z W_dec + b_dec``. Its backward forms
dense ``[n, m]`` gradients; that is what the sparse paths avoid.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def dense_topk_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "m d_in"],
    b_enc: Float[Tensor, "m"],
    k: int,
    relu: bool = True,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    pre = x @ W_enc.t() + b_enc
    act = torch.relu(pre) if relu else pre
    values, indices = act.topk(k, dim=-1, sorted=True)
    return values, indices


def dense_decode(
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "m d_out"],
    b_dec: Float[Tensor, "d_out"],
) -> Float[Tensor, "n d_out"]:
    z = values.new_zeros(values.shape[0], W_dec.shape[0]).scatter_add(1, indices, values)
    return z @ W_dec + b_dec
