"""Eager PyTorch reference of the top-k encoder and the sparse decoder: the specification.

Top-k SAE (Makhzani & Frey 2013, "k-Sparse Autoencoders"; Gao et al. 2024, "Scaling and
evaluating sparse autoencoders"), with ``W_enc [m, d_in]``, ``W_dec [m, d_out]``:

    pre   = x W_encᵀ + b_enc                         [n, m]
    act   = relu(pre)          (or pre itself when relu=False)
    (v, I) = topk_k(act)        per row, sorted descending, I int64      [n, k]
    x̂[r]  = Σ_j v[r, j] · W_dec[I[r, j]] + b_dec

Gradients. The selection I is piecewise constant, so it carries no gradient; only the k selected
pre-activations do. With ``g = ∂L/∂v ⊙ relu'(pre[r, I])`` ([n, k], relu' = 1[v > 0]) and S the
sparse matrix with ``S[r, I[r, j]] = g[r, j]``:

    ∂L/∂x     = S W_enc        = Σ_j g[r, j] W_enc[I[r, j]]     (embedding-bag)
    ∂L/∂W_enc = Sᵀ x           (only the selected rows are non-zero)
    ∂L/∂b_enc = Sᵀ 1           (index_add)

and for the decoder with upstream ``h = ∂L/∂x̂``:

    ∂L/∂v[r, j] = <h[r], W_dec[I[r, j]]>,  ∂L/∂W_dec = Vᵀ h (V[r, I[r, j]] = v[r, j]),  ∂L/∂b_dec = Σ_r h[r]

The forward spends one dense matmul and one ``torch.topk``; every other step, forward and
backward, is one of the O(n·k·d) primitives of `sparse_ops`, so no dense ``[n, m]`` gradient
and no dense decoder matmul is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mechscope.kernels.sparse_ops import bag_bias_grad, bag_gather_dot, bag_matmul, bag_scatter


class TopKEncodeRef(torch.autograd.Function):
    """Dense ``addmm`` + ``topk`` forward; backward over the k selected latents only."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool):
        pre = torch.addmm(b_enc, x, W_enc.t())
        if relu:
            pre.relu_()  # pre is not saved, so in-place is safe and saves an [n, m] buffer
        values, indices = pre.topk(k, dim=-1, largest=True, sorted=True)
        del pre
        ctx.relu = relu
        ctx.d_sae = W_enc.shape[0]
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    @once_differentiable
    def backward(ctx, g_values: Tensor, _g_indices):
        x, W_enc, values, indices = ctx.saved_tensors
        g = g_values * (values > 0) if ctx.relu else g_values
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = bag_matmul(indices, g, W_enc) if need_x else None
        grad_w = bag_scatter(indices, g, x, ctx.d_sae) if need_w else None
        grad_b = bag_bias_grad(indices, g, ctx.d_sae) if need_b else None
        return grad_x, grad_w, grad_b, None, None


class SparseDecodeRef(torch.autograd.Function):
    """Embedding-bag decode; backward touches only the selected rows of ``W_dec``."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
        out = bag_matmul(indices, values.to(W_dec.dtype), W_dec) + b_dec
        ctx.save_for_backward(values, indices, W_dec)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        need_v, _, need_w, need_b = ctx.needs_input_grad
        grad_v = bag_gather_dot(indices, W_dec, grad_out).to(values.dtype) if need_v else None
        grad_w = bag_scatter(indices, values, grad_out, W_dec.shape[0]) if need_w else None
        grad_b = grad_out.sum(0) if need_b else None
        return grad_v, None, grad_w, grad_b


def topk_encode_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool = True):
    """(values, indices) of the reference encoder; inputs are assumed validated."""
    return TopKEncodeRef.apply(x, W_enc, b_enc, k, relu)


def sparse_decode_reference(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
    """x_hat of the reference decoder; inputs are assumed validated."""
    return SparseDecodeRef.apply(values, indices, W_dec, b_dec)
