"""Three sparse primitives over a k-sparse code, in eager PyTorch (the CPU path).

A code ``(w, idx)`` with ``w, idx : [n, k]`` stands for the sparse matrix
``S [n, m]`` with ``S[r, idx[r, j]] += w[r, j]``. Everything the top-k encoder and the sparse
decoder need, forward and backward, is one of three products with ``S``; none of them forms
``S`` densely, so their cost is O(n·k·d), never O(n·m·d):

* ``bag_matmul(idx, w, W)    = S @ W``        ``[n, d]``  (x_hat = z W_dec; grad_x = g_z W_enc)
* ``bag_gather_dot(idx, W, y) = <y[r], W[idx[r, j]]>``  ``[n, k]``  (grad of the k values)
* ``bag_scatter(idx, w, y, m) = S.T @ y``     ``[m, d]``  (grad_W_dec, grad_W_enc)

``bag_matmul`` is ``torch.nn.functional.embedding_bag`` (mode ``sum`` with per-sample weights).
``bag_scatter`` is the same operator run on the transposed code: sort the n·k entries by latent,
so that each latent becomes a bag of the rows that selected it, and embedding-bag ``y``; that
is a CSR sparse-dense product and runs ~30x faster here than an ``index_add_`` of the n·k
outer products (which would also allocate ``[n·k, d]``). ``bag_gather_dot`` is the
per-sample-weight gradient of embedding-bag, which ATen computes without the ``[n, k, d]``
gather; a chunked ``bmm`` is the fallback should that private operator ever disappear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

_GATHER_CHUNK = 1 << 22  # elements of the [rows, k, d] gather per chunk in the fallback


def bag_matmul(
    idx: Int[Tensor, "n k"], w: Float[Tensor, "n k"], W: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    """``out[r] = sum_j w[r, j] * W[idx[r, j]]``."""
    if idx.shape[0] == 0:
        return W.new_zeros(0, W.shape[1])
    return F.embedding_bag(idx, W, mode="sum", per_sample_weights=w)


def bag_gather_dot(
    idx: Int[Tensor, "n k"], W: Float[Tensor, "m d"], y: Float[Tensor, "n d"]
) -> Float[Tensor, "n k"]:
    """``out[r, j] = <y[r], W[idx[r, j]]>``."""
    n, k = idx.shape
    if n == 0:
        return W.new_zeros(n, k)
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is None:
        return gather_dot_chunked(idx, W, y)
    flat = idx.reshape(-1)
    offsets = torch.arange(0, n * k, k, device=idx.device)
    offset2bag = torch.arange(n, device=idx.device).repeat_interleave(k)
    return op(y.contiguous(), W, flat, offsets, offset2bag, 0, -1).view(n, k)


def gather_dot_chunked(
    idx: Int[Tensor, "n k"], W: Float[Tensor, "m d"], y: Float[Tensor, "n d"]
) -> Float[Tensor, "n k"]:
    """`bag_gather_dot` by gathering ``W[idx]`` in row chunks and ``bmm`` (the fallback)."""
    n, k = idx.shape
    out = W.new_empty(n, k)
    rows = max(1, _GATHER_CHUNK // max(1, k * W.shape[1]))
    for s in range(0, n, rows):
        out[s : s + rows] = torch.bmm(W[idx[s : s + rows]], y[s : s + rows, :, None])[..., 0]
    return out


def bag_scatter(
    idx: Int[Tensor, "n k"], w: Float[Tensor, "n k"], y: Float[Tensor, "n d"], m: int
) -> Float[Tensor, "m d"]:
    """``out = S.T @ y``, i.e. ``out[idx[r, j]] += w[r, j] * y[r]``; rows nobody chose are 0."""
    n, k = idx.shape
    if n == 0:
        return y.new_zeros(m, y.shape[1])
    flat = idx.reshape(-1)
    # int32 keys sort ~2x faster than int64 on CPU (measured single-threaded here)
    order = (flat.to(torch.int32) if m < 2**31 else flat).argsort()
    rows = torch.div(order, k, rounding_mode="floor")
    offsets = torch.zeros(m, dtype=torch.long, device=idx.device)
    offsets[1:] = torch.bincount(flat, minlength=m)[:-1].cumsum(0)
    return F.embedding_bag(
        rows, y, offsets, mode="sum", per_sample_weights=w.reshape(-1)[order].to(y.dtype)
    )


def bag_bias_grad(idx: Int[Tensor, "n k"], w: Float[Tensor, "n k"], m: int) -> Float[Tensor, "m"]:
    """``out[i] = sum of w[r, j] over the (r, j) with idx[r, j] == i``."""
    return w.new_zeros(m).index_add_(0, idx.reshape(-1), w.reshape(-1))
