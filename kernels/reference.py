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

The forward spends one dense matmul and one ``torch.topk``, both by row blocks so the ``[n, m]``
pre-activations are never held at once (ranking ``pre`` and clipping the k winners at 0 selects
the same values as ranking ``relu(pre)``); every other step, forward and
backward, is one of the O(n·k·d) primitives of `sparse_ops`, so no dense ``[n, m]`` gradient
and no dense decoder matmul is ever formed.

The autograd Functions are built by `topk_encode_function` / `sparse_decode_function` from their
primitives, so the Triton path (`triton_encode`, `triton_decode`) runs this same backward on its
own kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mechscope.kernels.sparse_ops import bag_bias_grad, bag_gather_dot, bag_matmul, bag_scatter

# pre-activations per row block of the forward (8 MiB in fp32): fits a CPU's L2/L3
_BLOCK_ELEMENTS = 1 << 21


def _topk_blocked(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool):
    """Dense ``addmm`` + ``topk`` by row blocks: (values, indices) of the encoder forward."""
    n, m = x.shape[0], W_enc.shape[0]
    values = x.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)
    # Row blocks whose pre-activations stay in cache between the matmul and the top-k:
    # the full [n, m] matrix would be a fresh allocation (page faults) written to memory and
    # read back, which costs a large fraction of the matmul itself on CPU.
    rows = max(1, min(n, _BLOCK_ELEMENTS // m))
    buf = x.new_empty(rows, m)
    W_t = W_enc.t()
    for s in range(0, n, rows):
        e = min(n, s + rows)
        pre = torch.addmm(b_enc, x[s:e], W_t, out=buf[: e - s])
        torch.topk(pre, k, dim=-1, largest=True, sorted=True, out=(values[s:e], indices[s:e]))
    if relu:
        # relu is monotone, so top-k of relu(pre) is relu of top-k(pre): one [n, k] pass
        # instead of one over [n, m]; latents clipped to 0 are valid picks among the ties at 0
        values.clamp_min_(0)
    return values, indices


def topk_encode_function(
    name: str, select: Callable, bag_matmul: Callable, bag_scatter: Callable
) -> type[torch.autograd.Function]:
    """The top-k encoder as an autograd Function, for one set of primitives.

    Forward: ``select(x, W_enc, b_enc, k, relu) -> (values, indices int64)``. Backward: the
    gradients of the module doc, with ``bag_matmul(idx, w, W)`` for ``S W`` and
    ``bag_scatter(idx, w, y, m)`` for ``Sᵀ y`` (eager here, Triton in `triton_encode`).
    """

    class TopKEncode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool):
            values, indices = select(x, W_enc, b_enc, k, relu)
            ctx.relu = relu
            ctx.save_for_backward(x, W_enc, values, indices)
            ctx.mark_non_differentiable(indices)
            return values, indices

        @staticmethod
        @once_differentiable
        def backward(ctx, g_values: Tensor, _g_indices):
            x, W_enc, values, indices = ctx.saved_tensors
            g = g_values * (values > 0) if ctx.relu else g_values
            d_sae = W_enc.shape[0]
            need_x, need_w, need_b = ctx.needs_input_grad[:3]
            grad_x = bag_matmul(indices, g, W_enc) if need_x else None
            grad_w = bag_scatter(indices, g, x, d_sae) if need_w else None
            grad_b = bag_bias_grad(indices, g, d_sae) if need_b else None
            return grad_x, grad_w, grad_b, None, None

    TopKEncode.__name__ = TopKEncode.__qualname__ = name
    return TopKEncode


def sparse_decode_function(
    name: str, decode: Callable, gather_dot: Callable, bag_scatter: Callable
) -> type[torch.autograd.Function]:
    """The sparse decoder as an autograd Function, for one set of primitives.

    Forward: ``decode(values, indices, W_dec, b_dec) -> x_hat``. Backward: the gradients of the
    module doc, with ``gather_dot(idx, W, y)`` for ``<y[r], W[idx[r, j]]>`` and
    ``bag_scatter(idx, w, y, m)`` for ``Vᵀ h``; only the selected rows of ``W_dec`` are touched.
    """

    class SparseDecode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
            ctx.save_for_backward(values, indices, W_dec)
            return decode(values, indices, W_dec, b_dec)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_out: Tensor):
            values, indices, W_dec = ctx.saved_tensors
            need_v, _, need_w, need_b = ctx.needs_input_grad
            grad_v = gather_dot(indices, W_dec, grad_out).to(values.dtype) if need_v else None
            grad_w = bag_scatter(indices, values, grad_out, W_dec.shape[0]) if need_w else None
            grad_b = grad_out.sum(0) if need_b else None
            return grad_v, None, grad_w, grad_b

    SparseDecode.__name__ = SparseDecode.__qualname__ = name
    return SparseDecode


def _decode_eager(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    return bag_matmul(indices, values.to(W_dec.dtype), W_dec) + b_dec


TopKEncodeRef = topk_encode_function("TopKEncodeRef", _topk_blocked, bag_matmul, bag_scatter)
SparseDecodeRef = sparse_decode_function(
    "SparseDecodeRef", _decode_eager, bag_gather_dot, bag_scatter)


def topk_encode_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, relu: bool = True):
    """(values, indices) of the reference encoder; inputs are assumed validated."""
    return TopKEncodeRef.apply(x, W_enc, b_enc, k, relu)


def sparse_decode_reference(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
    """x_hat of the reference decoder; inputs are assumed validated."""
    return SparseDecodeRef.apply(values, indices, W_dec, b_dec)
